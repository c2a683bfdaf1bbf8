"""--dont_exit_qemu_when_done: after the report, the user talks to QEMU's monitor until they `quit`.

Lines go to QEMU's human monitor (through QMP's human-monitor-command, so its answers come back
whole), except memory_tracer's own commands, which control tracing while the guest runs
(start and stop tracing from the monitor):

    trace_start    open a new trace window: a fresh analysis tool (or your FIFO) gets the records
    trace_stop     close it: deliver every record, print the analysis output and the trace info
    trace_status   whether records are being written, and the counters of the open window
"""
import sys

from .errors import MemoryTracerError

PROMPT = "(qemu) "
HELP = """\
trace_start  -- memory_tracer: start tracing (a new trace window, a fresh analysis tool)
trace_stop   -- memory_tracer: stop tracing, deliver every record, print the analysis output
trace_status -- memory_tracer: is tracing on, and the counters of the open window"""


def monitor_session(machine, tracing, stdin=sys.stdin, stdout=sys.stdout):
    """Until `quit` (or the end of input, or QEMU ending): one line in, its answer out."""
    interactive = stdin.isatty()
    print("memory_tracer.py: QEMU keeps running; its monitor follows (type `quit` to end it, "
          "`trace_start`, `trace_stop` and `trace_status` control tracing).", file=sys.stderr, flush=True)
    while machine.is_alive():
        if interactive:
            stdout.write(PROMPT)
            stdout.flush()
        line = stdin.readline()
        if not line or line.strip() in ("quit", "q"):
            break
        answer = answer_line(line.strip(), machine, tracing)
        if answer:
            stdout.write(answer.rstrip("\n") + "\n")
            stdout.flush()
    if tracing is not None and tracing.active:
        stdout.write(tracing.stop() + "\n")   # a window left open still gets its report
        stdout.flush()


def answer_line(line, machine, tracing):
    if not line:
        return ""
    command = line.split()[0]
    if command in ("trace_start", "trace_stop", "trace_status"):
        if tracing is None:
            return f"{command}: tracing is not available in this run (it was started with --dont_trace)."
        try:
            return getattr(tracing, command[len("trace_"):])()
        except MemoryTracerError as exc:
            return f"{command}: {exc}"
    answer = machine.human_command(line)
    if command in ("help", "?"):
        answer = answer.rstrip("\n") + "\n" + HELP
    return answer
