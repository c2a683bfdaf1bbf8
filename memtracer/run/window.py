"""One run, whatever its kind: what was asked (RunRequest), what came of it (RunResult), and the
trace window (TraceWindow), the one place where the consumer starts, the plugin records, the
workload's time is taken, liveness is watched, and every record is delivered and analysed before
the window closes. host_run.py (user mode, native), system_run.py (full system) and the monitor's
trace_start / trace_stop all open and close their windows through it."""
import logging
import os
import re
import select
import subprocess
import time
from dataclasses import dataclass, field

from ..errors import ConsumerStalled, ControlChannelError
from ..trace.consumer import STALL_TIMEOUT_SECONDS
from ..trace_settings import TraceSettings

# The plugin arguments a run adds to those of its settings: where records go, how it is driven.
RUN_PLUGIN_KEYS = ("trace_fifo_path", "trace_shm_path", "trace_dir", "control_socket_path", "counters_path",
                   "enabled")
POLL_SECONDS = 0.2   # how often a waiting run checks on the consumer and QEMU

log = logging.getLogger(__name__)
# The window's ends in the verbose log, on the host's CLOCK_MONOTONIC: what `perf record -k
# CLOCK_MONOTONIC` stamps its samples with, so that bench/profile.py keeps the window's alone.
WINDOW_LOG_PREFIX = "trace window on CLOCK_MONOTONIC: "
WINDOW_LOG = re.compile(re.escape(WINDOW_LOG_PREFIX) + r"([\d.]+) to ([\d.]+) s")


def window_in_log(text):
    """The (start, end) that a verbose log logged for the trace window, or None."""
    logged = WINDOW_LOG.search(text)
    return (float(logged.group(1)), float(logged.group(2))) if logged else None


def exited_within(process, seconds):
    """Whether the process (a Popen) exits within the seconds; told the moment it exits (through a
    pidfd: Popen.wait(timeout) sleeps in steps of up to 50 ms, which a duration would show)."""
    if process.poll() is not None:
        return True
    try:
        pidfd = os.pidfd_open(process.pid)
    except OSError:       # gone already, or a kernel without pidfds
        try:
            process.wait(timeout=seconds)
            return True
        except subprocess.TimeoutExpired:
            return False
    try:
        select.select([pidfd], [], [], seconds)
    finally:
        os.close(pidfd)
    return process.poll() is not None


@dataclass
class RunRequest:
    workload_argv: list                # None in full system (the guest's path is in GuestTarget)
    follow_protocol: bool = False
    timeout: float = None
    analysis_tool_path: str = None
    analysis_tool_args: list = field(default_factory=list)
    shared_memory_ring: bool = False
    other_plugin: str = None           # --dont_trace --qemu_plugin: another TCG plugin, for comparisons
    trace_fifo_path: str = None
    trace_dir: str = None              # --trace_files_per_vcpu
    traced: bool = True
    native: bool = False
    settings: TraceSettings = field(default_factory=TraceSettings)
    verbose: bool = False

    @property
    def lossless(self):
        return not self.settings.drop_when_trace_fifo_full


@dataclass
class RunResult:
    workload_info: str = ""
    duration_ms: int = 0
    analysis_output: str = None
    counters: dict = None
    workload_problem: str = None   # a crash or non-zero exit, reported after the results
    trace_problem: str = None      # records that did not reach the consumer: the run failed
    trace_files: list = None       # --trace_files_per_vcpu: (path, records) of each file
    notes: list = field(default_factory=list)


def plugin_argument(plugin_path, consumer, settings, control_socket, enabled, counters_path=None):
    """The one -plugin argument of GMBEOO: where records go, its control channel, the settings."""
    parts = [str(plugin_path), consumer.plugin_argument, f"control_socket_path={control_socket}",
             f"enabled={'on' if enabled else 'off'}"]
    if counters_path is not None:
        parts.append(f"counters_path={counters_path}")
    return ",".join(parts + settings.plugin_args())


class TraceWindow:
    """A trace window: opened once the workload is ready, timed from its release, closed when it
    says `Stop tracing` (or exits, or --timeout passes).

    begin_recording(check) and end_recording(check) -> counters are how this kind of run drives
    its plugin (through the control channel, the VM paused in full system; or, where the plugin
    records from QEMU's start and writes its counters at exit, not at all for the beginning).
    plugin_counters() (the control channel's `counters`) lets a lossless window see a consumer
    that stopped taking records. Without a consumer (an untraced run) only the time is taken."""

    def __init__(self, consumer, begin_recording=None, end_recording=None, plugin_counters=None, lossless=True):
        self.consumer = consumer
        self.lossless = lossless
        self._begin_recording = begin_recording
        self._end_recording = end_recording
        self._plugin_counters = plugin_counters
        self._started = None
        self._last_delivery = None          # (records handed over, bytes unread) at the last look
        self._last_delivery_change = None   # and when that last changed

    def open(self, info_words):
        """The consumer ready for records (a tool started with the info words), then recording."""
        if self.consumer is None:
            return
        self.consumer.start(info_words)
        if self._begin_recording is not None:
            self._begin_recording(self.check)

    def start_clock(self, at=None):
        """The workload is released now (or was, at `at`: time.monotonic())."""
        self._started = time.monotonic() if at is None else at

    def elapsed(self):
        return time.monotonic() - self._started

    def wait(self, finished, timeout=None, on_tick=lambda: None):
        """Until finished(POLL_SECONDS) says the workload is done, checking between polls that the
        consumer lives (a dead tool fails the run at once) and calling on_tick (QEMU's liveness,
        progress). False when timeout seconds since the release passed first."""
        while not finished(POLL_SECONDS):
            self.check()
            self._check_delivery()
            on_tick()
            if timeout is not None and self.elapsed() >= timeout:
                return False
        return True

    def check(self):
        if self.consumer is not None:
            self.consumer.check()

    def _check_delivery(self):
        """In a lossless window the guest waits for a slow consumer. One that leaves what it was
        handed unread, while the plugin hands it nothing more, for STALL_TIMEOUT_SECONDS, has
        stopped reading and fails the run (an idle guest leaves nothing unread: never a stall)."""
        if self.consumer is None or self._plugin_counters is None or not self.lossless:
            return
        try:
            handed_over = self._plugin_counters()["num_of_events_written_to_trace_file"]
        except ControlChannelError:
            return   # QEMU is just ending (a wrapped workload's exit): nothing to wait for any more
        unread = self.consumer.unread_bytes()
        now = time.monotonic()
        if not unread or (handed_over, unread) != self._last_delivery:
            self._last_delivery, self._last_delivery_change = (handed_over, unread), now
        elif now - self._last_delivery_change >= STALL_TIMEOUT_SECONDS:
            raise ConsumerStalled(f"{self.consumer.name} took nothing for {STALL_TIMEOUT_SECONDS:g} s while the "
                                  f"plugin had records for it ({handed_over} handed over, {unread} bytes of them "
                                  "unread): it stopped reading.")

    def stop_clock(self, result):
        """tracing_duration_in_milliseconds: from the release to now; its ends go to the verbose log."""
        now = time.monotonic()
        result.duration_ms = int((now - self._started) * 1000)
        log.debug("%s%.6f to %.6f s", WINDOW_LOG_PREFIX, self._started, now)

    def close(self, result, after_recording=lambda: None):
        """Recording ended, every record delivered and analysed: the counters, trace files and
        analysis output go into result. after_recording runs in between (e.g. ending a workload
        that --timeout stopped)."""
        if self.consumer is None:
            after_recording()
            return
        result.counters = self._end_recording(self.check)
        result.trace_files = self.consumer.trace_files()
        after_recording()
        result.analysis_output = self.consumer.finish()
        self._account_for_every_record(result)
        children = result.counters.get("num_of_untraced_children", 0)
        if children:
            result.notes.append(f"the workload forked {children} child process{'es' if children > 1 else ''} while "
                                "it was traced; in --user_mode only the process memory_tracer started is traced "
                                "(its children ran untraced; full-system mode traces every process).")

    def _account_for_every_record(self, result):
        """Every record the plugin wrote reached the consumer, or the result says how many did not
        and where they were lost (dropped on request is a note; anything else fails the run)."""
        counters = result.counters
        written = counters["num_of_events_written_to_trace_buf"]
        lost = written - counters["num_of_events_written_to_trace_file"]   # still waiting counts as lost
        problems = []
        if result.trace_files is not None:
            held = sum(records for _, records in result.trace_files)
            if held < written:
                problems.append(f"the trace files hold {held} of the {written} records written "
                                f"({written - held} lost: is the disk full?)")
        elif lost > 0:
            problems.append(f"{lost} of the {written} records written never reached {self.consumer.name}")
        dropped = counters["num_of_dropped_events"]
        if dropped and self.lossless:
            problems.append(f"{dropped} records were dropped")
        elif dropped:
            result.notes.append(f"{dropped} records were dropped because {self.consumer.name} read more slowly "
                                "than the guest wrote (--drop_when_trace_fifo_full).")
        if problems:
            result.trace_problem = "; ".join(problems) + ": the trace is incomplete."
