"""Who reads the trace: an analysis tool we start (through a FIFO, or a shared-memory ring), or a
reader the user runs on their own FIFO."""
import contextlib
import logging
import os
import time

from ..echo import CHILD_OUTPUT
from ..errors import AnalysisToolError, TraceFifoError
from ..lifetime import ring_directory
from .fifo import TraceFifo
from .shm_ring import RING_ENV, ShmRing, create_ring
from .tool_process import ToolProcess
from .trace_file import TraceHeader

log = logging.getLogger(__name__)

# How long a reader may take for each step of the protocol; MEMORY_TRACER_TOOL_TIMEOUT (seconds)
# replaces them all, e.g. for a tool that loads a large input first, or to fail fast.
_OVERRIDE = float(os.environ.get("MEMORY_TRACER_TOOL_TIMEOUT", "0")) or None
READY_TIMEOUT_SECONDS = _OVERRIDE or 60      # starting a tool
OPEN_FIFO_TIMEOUT_SECONDS = _OVERRIDE or 30  # from `Ready to analyze` (or the start) to opening the FIFO
DRAIN_TIMEOUT_SECONDS = _OVERRIDE or 600     # a slow reader finishing the last pipe-full
OUTPUT_TIMEOUT_SECONDS = _OVERRIDE or 120    # from SIGUSR1 to the end marker
STALL_TIMEOUT_SECONDS = _OVERRIDE or 600     # a reader that takes no record while some wait for it
EXIT_NOTICE_SECONDS = 1                      # for the end of a tool's output to follow its death


def make_consumer(request, private_dir):
    """The consumer a traced run's request asks for."""
    if request.analysis_tool_path:
        record_size = request.settings.record_size
        transport = (RingTransport(record_size, ring_directory(private_dir)) if request.shared_memory_ring
                     else NegotiatedTransport(private_dir, record_size))
        return ToolConsumer(request.analysis_tool_path, transport, request.verbose,
                            request.analysis_tool_args, request.settings)
    if request.trace_dir:
        return TraceDirConsumer(request.trace_dir)
    return UserFifoConsumer(request.trace_fifo_path)


class FifoTransport:
    """The original's way: a FIFO in the run's private directory."""

    name = "the trace FIFO"
    environment = {}

    def __init__(self, private_dir):
        self.fifo = TraceFifo.create(private_dir)
        self.path = self.fifo.path
        self.plugin_argument = f"trace_fifo_path={self.path}"

    def tool_ready(self, tool):
        self.fifo.open_writer(OPEN_FIFO_TIMEOUT_SECONDS, tool.is_alive, "the analysis tool")
        log.debug("trace FIFO %s open, pipe size %d", self.path, self.fifo.pipe_size())

    def check(self, reader_name):
        self.fifo.check_reader(reader_name)

    def unread_bytes(self):
        return self.fifo.pending_bytes()

    def wait_until_drained(self, tool):
        self.fifo.wait_until_drained(tool.is_alive, DRAIN_TIMEOUT_SECONDS, "the analysis tool")

    def close(self):
        self.fifo.close()


class RingTransport:
    """--shared_memory_ring: a ring in the run's private 0700 directory for rings
    (lifetime.ring_directory: in /dev/shm, memory, never written back to a disk); the tool maps it
    when it starts."""

    name = "the shared-memory ring"
    environment = {}

    def __init__(self, record_size, directory):
        self.record_size = record_size
        self.path = os.path.join(directory, "trace.ring")
        create_ring(self.path, record_size=record_size)
        self.ring = ShmRing(self.path)
        self.plugin_argument = f"trace_shm_path={self.path}"

    def tool_ready(self, tool):
        pass

    def check(self, reader_name):
        pass   # a tool that stops taking records from the ring stalls it: the window sees that

    def unread_bytes(self):
        return self.ring.pending() * self.record_size

    def wait_until_drained(self, tool):
        deadline = time.monotonic() + DRAIN_TIMEOUT_SECONDS
        while self.ring.pending():
            tool.check_alive()
            if time.monotonic() > deadline:
                raise AnalysisToolError(f"the analysis tool left {self.ring.pending()} records in the "
                                        f"shared-memory ring for {DRAIN_TIMEOUT_SECONDS} s.")
            time.sleep(0.001)

    def close(self):
        if self.ring.closed:   # closed before: let go already
            return
        self.ring.abandon()
        self.ring.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


class NegotiatedTransport:
    """An analysis tool's default: the FIFO of the original protocol in its argv[1], and beside it a
    shared-memory ring (its path in RING_ENV). A tool that can read the ring (those of
    analysis_tools/ and of the Python API) attaches to it before `Ready to analyze`; the plugin then
    writes there and nobody opens the FIFO. Any other tool reads the FIFO, as the original says."""

    def __init__(self, private_dir, record_size):
        self.fifo = FifoTransport(private_dir)
        self.ring = RingTransport(record_size, ring_directory(private_dir))
        self.path = self.fifo.path
        self.plugin_argument = f"{self.fifo.plugin_argument},{self.ring.plugin_argument}"
        self.environment = {RING_ENV: self.ring.path}
        self.chosen = self.fifo

    @property
    def name(self):
        return self.chosen.name

    def tool_ready(self, tool):
        self.chosen = self.ring if self.ring.ring.attached else self.fifo
        log.debug("the analysis tool reads %s", self.chosen.name)
        self.chosen.tool_ready(tool)

    def check(self, reader_name):
        self.chosen.check(reader_name)

    def unread_bytes(self):
        return self.chosen.unread_bytes()

    def wait_until_drained(self, tool):
        self.chosen.wait_until_drained(tool)

    def close(self):
        self.fifo.close()
        self.ring.close()


class ToolConsumer:
    """An analysis tool (--analysis_tool_path) reading the FIFO or the ring memory_tracer made."""

    def __init__(self, tool_path, transport, verbose, tool_args, settings):
        self.tool_path = tool_path
        self.name = f"the analysis tool {tool_path}"
        self.transport = transport
        self.plugin_argument = transport.plugin_argument
        self.verbose = verbose
        self.tool_args = list(tool_args)
        self.settings = settings
        self.tool = None

    def start(self, info_words):
        self.tool = ToolProcess(self.tool_path, self.transport.path, info_words,
                                 echo_to=CHILD_OUTPUT if self.verbose else None, extra_args=self.tool_args,
                                 environment=dict(os.environ, **self.settings.tool_variables(),
                                                  **self.transport.environment))
        self.tool.start(READY_TIMEOUT_SECONDS)
        self.transport.tool_ready(self.tool)

    def check(self):
        """Raise if the tool died or closed its FIFO: the trace would have nowhere to go."""
        self.tool.check_alive()
        try:
            self.transport.check(self.name)
        except TraceFifoError:
            self.tool.wait_for_exit(EXIT_NOTICE_SECONDS)   # a tool that died closed its FIFO too:
            self.tool.check_alive()                        # then its death, and its words, explain
            raise

    def unread_bytes(self):
        """What was handed over and the tool has not taken yet."""
        return self.transport.unread_bytes()

    def finish(self):
        """After every record is handed over: wait until the tool took them, then ask for its output."""
        self.transport.wait_until_drained(self.tool)
        return self.tool.collect_output(OUTPUT_TIMEOUT_SECONDS)

    def trace_files(self):
        return None

    def close(self):
        if self.tool is not None:
            self.tool.stop()
        self.transport.close()


class TraceDirConsumer:
    """--trace_files_per_vcpu: the plugin writes DIR/vcpuN.gmbe itself; nothing to start or feed."""

    def __init__(self, directory):
        self.directory = directory
        self.name = f"the trace files in {directory}"
        self.plugin_argument = f"trace_dir={directory}"

    def start(self, info_words):
        pass

    def check(self):
        pass

    def unread_bytes(self):
        return 0   # no reader: the plugin writes the files itself

    def finish(self):
        return None

    def trace_files(self):
        """(path, record count) of each vCPU's file, once the plugin has completed them."""
        files = []
        for name in sorted(os.listdir(self.directory), key=lambda n: (len(n), n)):
            if name.startswith("vcpu") and name.endswith(".gmbe"):
                path = os.path.join(self.directory, name)
                with open(path, "rb") as f:
                    header = TraceHeader.read(f)
                files.append((path, header.record_count if header else 0))
        return files

    def close(self):
        pass


class UserFifoConsumer:
    """A reader the user runs on their own FIFO (--trace_fifo_path)."""

    name = "the reader of trace_fifo_path"

    def __init__(self, fifo_path):
        self.fifo = TraceFifo.given_by_user(fifo_path)

    @property
    def plugin_argument(self):
        return f"trace_fifo_path={self.fifo.path}"

    def start(self, info_words):
        self.fifo.open_writer(OPEN_FIFO_TIMEOUT_SECONDS, reader_name=self.name)

    def check(self):
        self.fifo.check_reader(self.name)

    def unread_bytes(self):
        return self.fifo.pending_bytes()

    def finish(self):
        self.fifo.wait_until_drained(lambda: True, DRAIN_TIMEOUT_SECONDS, self.name)
        return None

    def trace_files(self):
        return None

    def close(self):
        self.fifo.close()
