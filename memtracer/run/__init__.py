"""One run of memory_tracer: the trace window, the two kinds of run, the workload's protocol, the monitor, the report."""
