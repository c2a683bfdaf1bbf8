"""Who reads the trace: an analysis tool we start, or a reader the user runs on their own FIFO."""
import logging
import os
import sys

from .analysis_tool import AnalysisTool
from .trace_fifo import TraceFifo

log = logging.getLogger(__name__)

READY_TIMEOUT_SECONDS = 60      # starting a tool (it may load large inputs first)
OPEN_FIFO_TIMEOUT_SECONDS = 30  # from `Ready to analyze` (or the start) to opening the FIFO
DRAIN_TIMEOUT_SECONDS = 600     # a slow reader finishing the last pipe-full
OUTPUT_TIMEOUT_SECONDS = 120    # from SIGUSR1 to the end marker


def tool_environment(settings):
    """What was filtered and sampled, for tools that record it (the `record` tool's header)."""
    environment = dict(os.environ)
    if settings is not None:
        environment.update(GMBE_TRACE_ONLY_CPL3=str(int(settings.trace_only_CPL3_code_GMBE)),
                           GMBE_LOG_OF_BLOCK_LEN=str(settings.log_of_GMBE_block_len),
                           GMBE_LOG_OF_TRACING_RATIO=str(settings.log_of_GMBE_tracing_ratio))
    return environment


class ToolConsumer:
    """An analysis tool (--analysis_tool_path) reading the FIFO memory_tracer made."""

    def __init__(self, tool_path, private_dir, verbose, tool_args=(), settings=None):
        self.tool_path = tool_path
        self.fifo = TraceFifo.create(private_dir)
        self.verbose = verbose
        self.tool_args = list(tool_args)
        self.settings = settings
        self.tool = None

    def start(self, info_words):
        self.tool = AnalysisTool(self.tool_path, self.fifo.path, info_words,
                                 echo_to=sys.stderr if self.verbose else None, extra_args=self.tool_args,
                                 environment=tool_environment(self.settings))
        self.tool.start(READY_TIMEOUT_SECONDS)
        self.fifo.open_writer(OPEN_FIFO_TIMEOUT_SECONDS, self.tool.is_alive, "the analysis tool")
        log.debug("trace FIFO %s open, pipe size %d", self.fifo.path, self.fifo.pipe_size())

    def check(self):
        """Raise if the tool died: the trace would have nowhere to go."""
        self.tool.check_alive()

    def finish(self):
        """After every record is in the FIFO: wait until the tool read them, then ask for its output."""
        self.fifo.wait_until_drained(self.tool.is_alive, DRAIN_TIMEOUT_SECONDS, "the analysis tool")
        return self.tool.collect_output(OUTPUT_TIMEOUT_SECONDS)

    def close(self):
        if self.tool is not None:
            self.tool.stop()
        self.fifo.close()


class UserFifoConsumer:
    """A reader the user runs on their own FIFO (--trace_fifo_path)."""

    def __init__(self, fifo_path):
        self.fifo = TraceFifo.given_by_user(fifo_path)

    def start(self, info_words):
        self.fifo.open_writer(OPEN_FIFO_TIMEOUT_SECONDS, reader_name="the reader of trace_fifo_path")

    def check(self):
        pass

    def finish(self):
        self.fifo.wait_until_drained(lambda: True, DRAIN_TIMEOUT_SECONDS, "the reader of trace_fifo_path")
        return None

    def close(self):
        self.fifo.close()
