"""Runs an analysis tool by the original memory_tracer.py's protocol: argv[1] the trace FIFO, argv[2:] the
workload info words; it prints `Ready to analyze`, reads the FIFO, and on SIGUSR1 prints its
results between the markers.

The tool runs on a pty, so a C tool's stdio is line-buffered as it was under the original; a
thread keeps reading the pty so a chatty tool never blocks on a full terminal buffer."""
import logging
import signal
import threading

import pexpect

from ..errors import AnalysisToolError, with_last_output
from ..lifetime import ending_with_us
from ..protocol import TOOL_OUTPUT_BEGIN, TOOL_OUTPUT_END, TOOL_READY


log = logging.getLogger(__name__)


def describe_exit(child):
    if child.signalstatus is not None:
        return f"killed by {signal.Signals(child.signalstatus).name}"
    return f"exit code {child.exitstatus}"


class ToolProcess:
    """The analysis tool of a run, as a process on a pty."""
    def __init__(self, path, fifo_path, info_words, echo_to=None, extra_args=(), environment=None):
        # The tool's own options go after the info words: argv[2:] still starts with the info.
        self.argv = [str(path), str(fifo_path), *info_words, *extra_args]
        self.environment = environment
        self.echo_to = echo_to
        self.child = None
        self._reader = None
        self._output = None
        self._error = None
        self._last_output = ""   # what a tool that failed printed last (it says why, usually)

    def start(self, ready_timeout):
        log.debug("analysis tool: %s", " ".join(self.argv))
        spawned = ending_with_us(self.argv)
        self.child = pexpect.spawn(spawned[0], spawned[1:], echo=False, encoding="utf-8",
                                   codec_errors="replace", timeout=None, env=self.environment)
        self.child.logfile_read = self.echo_to
        index = self.child.expect_exact([TOOL_READY, pexpect.EOF, pexpect.TIMEOUT], timeout=ready_timeout)
        if index == 1:
            self.child.wait()
            raise AnalysisToolError(with_last_output(f"the analysis tool {self.argv[0]} exited "
                                                     f"({describe_exit(self.child)}) before printing {TOOL_READY!r}",
                                                     self.child.before))
        if index == 2:
            raise AnalysisToolError(f"the analysis tool {self.argv[0]} did not print {TOOL_READY!r} "
                                    f"within {ready_timeout:g} s.")
        self._reader = threading.Thread(target=self._read_until_output, daemon=True)
        self._reader.start()
        return self

    def _read_until_output(self):
        try:
            if self.child.expect_exact([TOOL_OUTPUT_BEGIN, pexpect.EOF]) == 1:
                self._error = f"exited ({self._exit_description()}) before printing {TOOL_OUTPUT_BEGIN!r}"
                self._last_output = self.child.before
                return
            if self.child.expect_exact([TOOL_OUTPUT_END, pexpect.EOF]) == 1:
                self._error = f"exited ({self._exit_description()}) before printing {TOOL_OUTPUT_END!r}"
                self._last_output = self.child.before
                return
            self._output = self.child.before.replace("\r\n", "\n").strip()
        except Exception as exc:  # reported by the thread that waits for the output
            self._error = f"could not be read: {exc}"

    def _exit_description(self):
        self.child.wait()
        return describe_exit(self.child)

    def is_alive(self):
        # While the reader thread runs, only it may touch the child (waitpid must not race).
        if self._reader is not None and self._reader.is_alive():
            return True
        return self._output is not None and self.child.isalive()

    def wait_for_exit(self, timeout):
        """Up to timeout seconds for the tool's terminal to close (it exited)."""
        self._reader.join(timeout)

    def check_alive(self):
        if not self.is_alive():
            self._reader.join(timeout=1)
            raise AnalysisToolError(with_last_output(f"the analysis tool {self.argv[0]} {self._error or 'exited'} "
                                                     "while the trace was being written", self._last_output))

    def collect_output(self, timeout):
        """Signal the tool that the trace is complete and return the text between its markers."""
        if self.is_alive():
            self.child.kill(signal.SIGUSR1)
        self._reader.join(timeout)
        if self._reader.is_alive():
            raise AnalysisToolError(f"the analysis tool {self.argv[0]} did not print {TOOL_OUTPUT_END!r} "
                                    f"within {timeout:g} s of SIGUSR1.")
        if self._output is None:
            raise AnalysisToolError(with_last_output(f"the analysis tool {self.argv[0]} {self._error}",
                                                     self._last_output))
        return self._output

    def stop(self):
        """Let the tool exit after its output; end it if it lingers, or at once when the run ends
        before the tool gave its output."""
        if self.child is None:
            return
        if self.child.isalive() and self._output is not None:
            try:
                self.child.expect(pexpect.EOF, timeout=2)
            except (pexpect.TIMEOUT, OSError):
                pass
        if self.child.isalive():
            self.child.terminate(force=True)
        self.child.close(force=True)
