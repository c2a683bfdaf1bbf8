"""Progress on stderr while QEMU loads and the workload runs: a live line (rich) on a terminal,
nothing when stderr is not one (CI, scripts), and plain log lines with --verbose."""
import logging
import sys
import time

from rich.console import Console

log = logging.getLogger(__name__)


class Progress:
    def __init__(self, verbose):
        self.verbose = verbose
        self.console = Console(stderr=True)
        self.live = sys.stderr.isatty() and not verbose
        self._status = None
        self._phase_started = time.monotonic()

    def phase(self, message):
        """A new phase: replaces the live line (or logs it)."""
        self._phase_started = time.monotonic()
        if self.verbose:
            log.debug("%s", message)
        if not self.live:
            return
        if self._status is None:
            self._status = self.console.status(message, spinner="dots")
            self._status.start()
        else:
            self._status.update(message)

    def note(self, message):
        """A line the user must see, whatever stderr is (above the live line on a terminal)."""
        self.console.print(f"memory_tracer.py: {message}", markup=False, highlight=False, soft_wrap=True)

    def update(self, message):
        """New text for the current phase, shown only on a terminal."""
        if self._status is not None:
            self._status.update(message)

    def elapsed(self):
        return time.monotonic() - self._phase_started

    def stop(self):
        if self._status is not None:
            self._status.stop()
            self._status = None
