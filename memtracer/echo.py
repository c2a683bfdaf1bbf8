"""memory_tracer's stderr, shared by the output it echoes of its children (the analysis tool's and
the workload's, with -v) and by its own messages. A child's output can stop in mid-line: a tool
stopped half-way through a line, or a line end still on its way through the terminal when the run
was interrupted. memory_tracer's next message must still start a line of its own: scripts read the
last line of stderr for the reason a run ended."""
import sys
import threading


class ChildOutput:
    """Where a child's output is echoed (pexpect's logfile_read, or written at once): stderr,
    remembering whether the child left a line open."""
    def __init__(self):
        self._lock = threading.Lock()   # the tool's output comes from a reader thread
        self._line_open = False

    def write(self, text):
        with self._lock:
            sys.stderr.write(text)
            if text:
                self._line_open = not text.endswith("\n")

    def flush(self):
        sys.stderr.flush()

    def end_line(self):
        with self._lock:
            if self._line_open:
                sys.stderr.write("\n")
                self._line_open = False


CHILD_OUTPUT = ChildOutput()


def say(message):
    """A message of memory_tracer's own, on stderr, on a line of its own."""
    CHILD_OUTPUT.end_line()
    print(message, file=sys.stderr)
