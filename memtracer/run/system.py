"""A full-system run: load the snapshot, hand the workload to the guest runner, open the trace window
exactly where the workload says, deliver every record, and shut QEMU down.

The window: the workload (or the runner, for a wrapped one) prints `Ready to trace`; the VM is
paused (QMP `stop`) while the plugin is enabled, resumed, and then Enter is delivered. At `Stop
tracing` (or at --timeout) the VM is paused again while the plugin stops and flushes.
"""
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

from ..build.builtin_image import build_smp_guest_image
from ..echo import CHILD_OUTPUT
from ..errors import BadInputError, QemuError, WorkloadError
from ..lifetime import private_directory
from ..qemu.guest_channel import GuestChannel
from ..qemu.machine import CONTROL_SOCKET, MachineProfile, QemuMachine, has_display
from ..qemu.plugin_control import ControlChannel
from ..trace.consumer import make_consumer
from .monitor import MonitorTracing, monitor_session
from .placement import REQUEST_TIMEOUT_SECONDS, place_workload
from .progress import Progress
from .window import RunResult, TraceWindow, exited_within, plugin_argument
from .workload import ProtocolSession

log = logging.getLogger(__name__)

RUNNER_ANSWER_TIMEOUT_SECONDS = 30
OTHER_PORT_PATIENCE_SECONDS = 5    # for a faster port that may not be there, before the serial one
# Run through the runner once before the workload (SystemRun._warm_up): a program every Linux has.
WARM_UP_PROGRAM = "/bin/true"
WARM_UP_TIMEOUT_SECONDS = 30


@dataclass
class GuestTarget:
    """Where the workload runs: an image, its snapshot, and how QEMU must be started for it."""
    image_path: str
    snapshot: str
    ram_mb: int
    workload_path_on_host: str = None
    workload_path_on_guest: str = None
    workload_args: tuple = ()
    graphic: bool = False
    keep_qemu: bool = False
    smp: int = 1
    make_builtin_image: bool = False    # the built-in image for smp vCPUs, made on demand
    private_copy: bool = False
    ssh_key: str = None                 # send the workload with SFTP (ssh_transport.py)
    ssh_user: str = "root"
    workload_files: str = None          # with ssh_key: copied to the guest's ~/workload


def check_image(qemu_img, image_path, snapshot):
    """Fail fast, in the user's terms, on an image that is not qcow2 or lacks the snapshot."""
    result = subprocess.run([str(qemu_img), "info", "-U", "--output=json", image_path],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        reason = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "unreadable"
        raise BadInputError(f"guest_image_path must be a qcow2 image, but {image_path} isn't ({reason}).")
    info = json.loads(result.stdout)
    if info.get("format") != "qcow2":
        raise BadInputError(f"guest_image_path must be a qcow2 image, but {image_path} is {info.get('format')}.")
    snapshots = [s for s in info.get("snapshots", []) if s.get("vm-state-size", 0) > 0]
    names = [s["name"] for s in snapshots]
    if snapshot not in names:
        have = ", ".join(names) if names else "none"
        raise BadInputError(f"snapshot_name must be a snapshot (with VM state) of {image_path}, but "
                            f"{snapshot} isn't (its snapshots: {have}).")


class SystemRun:
    """Use as a context manager: everything it starts is stopped and removed on exit."""

    def __init__(self, request, qemu_dir, target):
        self.request = request
        self.qemu_dir = qemu_dir
        self.target = target
        self.result = RunResult()
        self.progress = Progress(request.verbose)
        self._cleanup = ExitStack()
        self.private_dir = None
        self.machine = None
        self.channel = None
        self.ports = []            # every runner port opened (the channel is one of them)
        self.consumer = None
        self.control = None
        self.process = None
        self.timings = {}

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc_info):
        self.progress.stop()
        if exc_type is not None:
            # First of all: a vCPU stuck writing for a consumer that stopped reading is freed, so
            # that the workload can be killed and QEMU can quit at once.
            self._close_consumer()
        self._cleanup.close()
        return False

    def _close_consumer(self):
        consumer, self.consumer = self.consumer, None
        if consumer is not None:
            consumer.close()

    # ------------------------------------------------------------------ the run

    def trace(self):
        self._prepare()
        with self._ending_qemu_explains("ended before the workload was ready to trace"):
            process = self._start_workload()
            # Our stdin goes on to the workload, unless it is the monitor's (--dont_exit_qemu_when_done).
            session = ProtocolSession(process, send_input=None if self.target.keep_qemu else process.send_input)
            self.progress.phase("waiting for the workload's `Ready to trace`")
            self.result.workload_info = session.read_info()
        if self.consumer is not None:
            self.progress.phase("starting the analysis tool" if self.request.analysis_tool_path
                                else "waiting for the reader of trace_fifo_path")
        window = self.window_for(self.consumer)
        window.open(self.info_words())
        window.start_clock(session.release())
        self.progress.phase("the workload runs" + (" (traced)" if self.request.traced else ""))
        stopped = window.wait(lambda poll: self._stopped(session, poll), self.request.timeout,
                              on_tick=lambda: self._still_running(window))
        window.stop_clock(self.result)

        def after_recording():
            if not stopped:
                self.process.kill_workload()
            if self.consumer is not None:
                self.progress.phase("delivering the last records and collecting the analysis output")
        window.close(self.result, after_recording)
        if stopped:
            self.result.workload_problem = session.finish()
        else:
            self.result.notes.append(f"the workload was stopped after --timeout {self.request.timeout:g} s.")
            session.finish()
        self.progress.stop()
        return self.result

    def _start_workload(self):
        """QEMU loaded, the runner reached, the workload placed and started: its process."""
        started = time.monotonic()
        self._start_qemu()
        self.timings["loadvm"] = time.monotonic() - started
        self.channel = self._reach_runner()
        self.timings["runner_answered"] = time.monotonic() - started
        if not self.request.follow_protocol:
            self._warm_up()
            self.timings["warmed_up"] = time.monotonic() - started
        placing = time.monotonic()
        workload_path = place_workload(self.target, self.channel, self.machine, self.progress)
        if self.target.workload_path_on_host is not None or self.target.workload_files is not None:
            self.timings["transfer"] = time.monotonic() - placing
        self.process = self.channel.run([workload_path, *self.target.workload_args],
                                        wrap=not self.request.follow_protocol, timeout=REQUEST_TIMEOUT_SECONDS)
        self._cleanup.callback(self.process.close)
        if self.request.verbose:
            self.process.logfile_read = CHILD_OUTPUT   # the workload's own output, as in user mode
        self.timings["workload_started"] = time.monotonic() - started
        log.debug("timings (s after starting QEMU): %s",
                  " ".join(f"{k}={v:.3f}" for k, v in self.timings.items()))
        return self.process

    def info_words(self):
        return self.result.workload_info.split()

    def window_for(self, consumer):
        """A trace window whose recording is switched on and off with the VM paused, so that the
        switch falls between two guest instructions on every vCPU."""
        if self.control is None:
            return TraceWindow(None)

        def begin_recording(check):
            with self.machine.paused():
                self.control.enable(check)

        def end_recording(check):
            with self.machine.paused():
                return self.control.end_window(check)
        return TraceWindow(consumer, begin_recording, end_recording, self.control.counters, self.request.lossless)

    def new_window(self):
        """A window after the workload's own (the monitor's trace_start): a fresh consumer at the
        same place (the plugin reopens its trace there), the last one's FIFO or ring made way for."""
        self.consumer.close()
        self.consumer = make_consumer(self.request, self.private_dir)
        return self.window_for(self.consumer)

    def hand_over(self):
        """--dont_exit_qemu_when_done: the user gets QEMU's monitor until they quit it."""
        monitor_session(self.machine, MonitorTracing(self) if self.control is not None else None)

    # ------------------------------------------------------------------ steps

    def _prepare(self):
        self.private_dir = self._cleanup.enter_context(private_directory())
        self.image = self.target.image_path
        if self.target.make_builtin_image:
            build_smp_guest_image(self.target.smp, progress=self.progress.phase)
        check_image(self.qemu_dir.qemu_img, self.image, self.target.snapshot)
        self.profile = MachineProfile.for_image(self.image, self.target.ram_mb, self.target.smp)
        if self.target.private_copy:
            self.progress.phase("copying the image for a private run")
            self.image = os.path.join(self.private_dir, os.path.basename(self.image))
            try:
                shutil.copyfile(self.target.image_path, self.image)
            except OSError as exc:
                size_mb = os.path.getsize(self.target.image_path) / 1e6
                raise BadInputError(f"--run_on_private_copy: copying {self.target.image_path} ({size_mb:.0f} MB) into "
                                    f"{tempfile.gettempdir()} failed ({exc.strerror}); free some space there or set "
                                    "TMPDIR to a directory with room.") from None
        if self.request.traced:
            self.consumer = make_consumer(self.request, self.private_dir)
            self._cleanup.callback(self._close_consumer)   # the last one, after trace_start

    def _plugin_argument(self):
        if not self.request.traced:
            # Untraced runs measure QEMU itself (or with a plugin of the user's, for comparisons).
            return self.request.other_plugin
        return plugin_argument(self.qemu_dir.plugin, self.consumer, self.request.settings,
                               CONTROL_SOCKET, enabled=False)   # relative to QEMU's directory

    def _start_qemu(self):
        self.machine = QemuMachine(self.qemu_dir.qemu_system, self.image, self.profile, self.target.snapshot,
                                   plugin=self._plugin_argument(), graphic=self.target.graphic,
                                   known_as=self.target.image_path, parent_dir=self.private_dir)
        self._cleanup.callback(self.machine.shut_down)
        self.progress.phase(f"loading the snapshot {self.target.snapshot!r}")
        self.machine.launch()
        if self.target.graphic and not has_display():
            self.progress.note(f"no DISPLAY here: QEMU's screen is on VNC at {self.machine.paths.vnc} while "
                               f"the run lasts (e.g. `vncviewer {self.machine.paths.vnc}`)")
        if self.request.traced:
            self.control = ControlChannel(self.machine.paths.control)
            self.control.connect(self.machine.is_alive)
            self._cleanup.callback(self.control.close)

    def _warm_up(self):
        """Runs WARM_UP_PROGRAM as a wrapped workload will run, before its window, which opens
        before the runner starts it. QEMU translates the guest's code afresh after loading a
        snapshot, and the runner's first process since then runs the guest kernel's code for a
        terminal, fork, exec and exit for the first time: some 10,000 blocks to translate, which
        began the window (55 ms of a 185 ms full-system mem_loop window). Translated here, they are
        ready for the workload. (A workload that follows the protocol itself is started before its
        window anyway.) A guest without the program only loses the head start."""
        self.progress.phase("starting a first process in the guest")
        started = time.monotonic()
        try:
            warm_up = self.channel.run([WARM_UP_PROGRAM], wrap=False, timeout=REQUEST_TIMEOUT_SECONDS)
        except WorkloadError as refused:
            log.debug("warm-up: %s not run: %s", WARM_UP_PROGRAM, refused)
            return
        try:
            status = warm_up.wait(WARM_UP_TIMEOUT_SECONDS)
        finally:
            warm_up.close()
        log.debug("warm-up: %s exited with %s after %.0f ms", WARM_UP_PROGRAM, status,
                  (time.monotonic() - started) * 1000)

    def _reach_runner(self):
        """The fastest port whose runner answers: virtio-serial when the image has it, else serial."""
        ports = self.machine.runner_ports()
        for socket_path, name in ports:
            channel = GuestChannel(socket_path, name)
            self.ports.append(channel)
            self._cleanup.callback(channel.close)
            channel.connect(self.machine.is_alive, RUNNER_ANSWER_TIMEOUT_SECONDS)
            patience = RUNNER_ANSWER_TIMEOUT_SECONDS if name == ports[-1][1] else OTHER_PORT_PATIENCE_SECONDS
            if self.machine.reach_runner(channel, time.monotonic() + patience):
                log.debug("the runner answered on the %s", name)
                return channel
            log.debug("no answer on the %s", name)
        raise QemuError(f"the guest runner did not answer within {RUNNER_ANSWER_TIMEOUT_SECONDS} s of loading "
                        f"the snapshot {self.target.snapshot!r}: is the runner running in that snapshot? "
                        "(see the README: preparing your own image)")

    def _stopped(self, session, poll):
        """Whether the workload said `Stop tracing` within poll seconds."""
        with self._ending_qemu_explains("ended while the workload ran"):
            return session.wait_for_stop(timeout=poll)

    @contextmanager
    def _ending_qemu_explains(self, what):
        """A guest port that closes because QEMU ended is QEMU's failure, told with its reason (a
        request sent meanwhile fails with a broken pipe). Only then is QEMU given time to end: a
        workload that failed on a live QEMU is told at once. A port that closed under a QEMU still
        running after that is told as such, with QEMU's own word on it."""
        try:
            yield
        except (WorkloadError, OSError) as error:
            qemu = self.machine and self.machine.process     # none yet: QEMU did not start
            if qemu is not None and self._port_closed(error):
                if exited_within(qemu, 2):
                    raise self.machine.failure(what) from None
                told = error if isinstance(error, WorkloadError) else \
                    f"the guest runner's port broke under a request ({error.strerror or error})"
                said = self.machine.chardev_said()
                raise WorkloadError(f"{told}, and QEMU still ran 2 s later"
                                    + (f" (its log: {said})" if said else "")) from None
            raise

    def _port_closed(self, error):
        """Whether a runner port closed, as QEMU's end closes them: its reader saw the end, or the
        error is a send that broke."""
        return isinstance(error, (BrokenPipeError, ConnectionResetError)) or \
            any(port.closed.is_set() for port in self.ports)

    def _still_running(self, window):
        if not self.machine.is_alive():
            raise self.machine.failure("ended while the workload ran")
        self.progress.update(f"the workload runs{' (traced)' if self.request.traced else ''}: "
                             f"{window.elapsed():.0f} s")
