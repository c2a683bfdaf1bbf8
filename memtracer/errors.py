"""The one exception tree of memory_tracer: each error carries what the user needs to act."""


def with_last_output(sentence, output):
    """sentence, then the last line a program printed, the likeliest to say why it failed (e.g. the
    dynamic loader's `error while loading shared libraries: ...`, or a tool's `No space left on
    device`), as one line."""
    lines = [line.strip() for line in (output or "").replace("\r\n", "\n").splitlines() if line.strip()]
    return sentence + (f"; its last output: {lines[-1]!r}." if lines else ".")


class MemoryTracerError(Exception):
    """Base of every error memory_tracer reports; its str() is the one line the user sees."""


class BadInputError(MemoryTracerError):
    """A command-line value is not what was expected."""


class BuildError(MemoryTracerError):
    """Setting up the machine or compiling a part failed."""


class QemuError(MemoryTracerError):
    """QEMU failed to start or died; carries its command line, exit code and log tail."""

    def __init__(self, message, command=None, exit_code=None, log_tail=""):
        details = []
        if exit_code is not None:
            details.append(f"exit code {exit_code}")
        if log_tail.strip():
            details.append("last output: " + " | ".join(log_tail.strip().splitlines()[-3:]))
        super().__init__(message + (f" ({'; '.join(details)})" if details else ""))
        self.command = command
        self.exit_code = exit_code
        self.log_tail = log_tail


class ControlChannelError(MemoryTracerError):
    """The plugin's control channel refused a command or went away."""


class WorkloadError(MemoryTracerError):
    """The workload did not follow the protocol (markers, exit)."""


class AnalysisToolError(MemoryTracerError):
    """The analysis tool did not follow the protocol or died."""


class ConsumerStalled(MemoryTracerError):
    """The consumer of the trace stopped taking records while the plugin had some for it."""


class TraceFifoError(MemoryTracerError):
    """The trace FIFO could not be opened or nobody read it."""


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP: unwinds like Ctrl-C (a KeyboardInterrupt, so that no library that catches
    Exception, asyncio's event loop included, can swallow it), with its own message."""
