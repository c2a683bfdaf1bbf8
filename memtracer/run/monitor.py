"""--dont_exit_qemu_when_done: after the report, the user talks to QEMU's monitor until they `quit`.

Lines go to QEMU's human monitor (through QMP's human-monitor-command, so its answers come back
whole), except memory_tracer's own commands, which control tracing while the guest runs
(start and stop tracing from the monitor):

    trace_start    open a new trace window: a fresh analysis tool (or your FIFO) gets the records
    trace_stop     close it: deliver every record, print the analysis output and the trace info
    trace_status   whether records are being written, and the counters of the open window
"""
import sys

from ..errors import MemoryTracerError
from .report import format_report
from .window import RunResult

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


class MonitorTracing:
    """trace_start / trace_stop / trace_status, after the workload's own window: each window gets
    a fresh consumer (the analysis tool started again with the same arguments, or the user's FIFO
    reopened) from the run, and closes as every window does."""

    def __init__(self, run):
        self.run = run
        self.window = None

    @property
    def active(self):
        return self.window is not None

    def start(self):
        if self.active:
            return "trace_start: tracing is already on (trace_stop ends it)."
        window = self.run.new_window()
        try:
            window.open(self.run.info_words())
        except BaseException:
            window.consumer.close()
            raise
        window.start_clock()
        self.window = window
        return "tracing started"

    def stop(self):
        if not self.active:
            return "trace_stop: tracing is off (trace_start starts it)."
        result = RunResult(workload_info=self.run.result.workload_info)
        window, self.window = self.window, None
        window.stop_clock(result)
        try:
            window.close(result)
        finally:
            window.consumer.close()
        report = format_report(result, print_trace_info=True).rstrip("\n")
        return report + (f"\nmemory_tracer.py: {result.trace_problem}" if result.trace_problem else "")

    def status(self):
        counters = self.run.control.counters()
        lines = [f"tracing: {'on' if counters.get('tracing') else 'off'}"
                 + ("" if self.active or counters.get("window_open") else " (no trace window: trace_start opens one)")]
        if self.active:
            lines.append(f"window open for: {self.window.elapsed():.1f} s")
            lines += [f"{name}: {value}" for name, value in counters.items() if name not in ("tracing", "window_open")]
        return "\n".join(lines)
