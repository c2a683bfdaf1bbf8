"""The original memory_tracer.py's two text protocols, each line declared once (the C side's copies,
in analysis_tools/gmbe_reader.h and to_run_on_guest/runner.c, are held equal by the tests).

The analysis tool prints TOOL_READY, reads the trace, and on SIGUSR1 prints its report between
TOOL_OUTPUT_BEGIN and TOOL_OUTPUT_END. The workload prints its info between WORKLOAD_INFO_BEGIN and
WORKLOAD_INFO_END, then WORKLOAD_READY, waits for Enter, runs, and prints WORKLOAD_STOP."""

TOOL_READY = "Ready to analyze"
TOOL_OUTPUT_BEGIN = "-----begin analysis output-----"
TOOL_OUTPUT_END = "-----end analysis output-----"

WORKLOAD_INFO_BEGIN = "-----begin workload info-----"
WORKLOAD_INFO_END = "-----end workload info-----"
WORKLOAD_READY = "Ready to trace. Press enter to continue"
WORKLOAD_STOP = "Stop tracing"
