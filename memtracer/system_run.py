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
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass

from .consumer import make_consumer
from .errors import BadInputError, QemuError, WorkloadError
from .guest_channel import GuestChannel
from .host_run import RunResult
from .machine_setup import build_smp_guest_image
from .monitor import monitor_session
from .report import format_report
from .plugin_control import ControlChannel
from .progress import Progress
from .qemu_machine import CONTROL_SOCKET, MachinePaths, MachineProfile, QemuMachine, has_display, qemu_command
from .workload import ProtocolSession

log = logging.getLogger(__name__)

RUNNER_ANSWER_TIMEOUT_SECONDS = 30
CONTROL_CONNECT_TIMEOUT_SECONDS = 30
REQUEST_TIMEOUT_SECONDS = 30
SERIAL_BYTES_PER_SECOND = 20_000   # pessimistic, for the transfer's timeout only
FINISH_GRACE_SECONDS = 10          # after `Stop tracing`, for the workload to exit by itself


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
        self.paths = None
        self.machine = None
        self.channel = None
        self.consumer = None
        self.control = None
        self.process = None
        self.timings = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.progress.stop()
        self._cleanup.close()
        return False

    # ------------------------------------------------------------------ the run

    def trace(self):
        self._prepare()
        started = time.monotonic()
        self._start_qemu()
        self.timings["loadvm"] = time.monotonic() - started
        self.channel = self._reach_runner()
        self.timings["runner_answered"] = time.monotonic() - started
        workload_path = self._place_workload()
        self.process = self.channel.run([workload_path, *self.target.workload_args],
                                        wrap=not self.request.follow_protocol, timeout=REQUEST_TIMEOUT_SECONDS)
        self._cleanup.callback(self.process.close)
        if self.request.verbose:
            self.process.logfile_read = sys.stderr   # the workload's own output, as in user mode
        self.timings["workload_started"] = time.monotonic() - started
        log.debug("timings (s after starting QEMU): %s",
                  " ".join(f"{k}={v:.3f}" for k, v in self.timings.items()))
        session = ProtocolSession(self.process)
        self.progress.phase("waiting for the workload's `Ready to trace`")
        self.result.workload_info = session.read_info()
        if self.consumer is not None:
            self.progress.phase("starting the analysis tool" if self.request.analysis_tool_path
                                else "waiting for the reader of trace_fifo_path")
            self.consumer.start(info_words=self.result.workload_info.split())
        self.open_window(self.consumer)
        start = session.release()
        self.progress.phase("the workload runs" + (" (traced)" if self.request.traced else ""))
        stopped = self._wait_for_stop(session)
        self.result.duration_ms = int((time.monotonic() - start) * 1000)
        self.close_window(self.consumer, self.result)
        if not stopped:
            self.result.notes.append(f"the workload was stopped after --timeout {self.request.timeout:g} s.")
            self.process.kill_workload()
        if self.consumer is not None:
            self.progress.phase("delivering the last records and collecting the analysis output")
            self.result.analysis_output = self.consumer.finish()
        self._finish_workload(session, stopped)
        self.progress.stop()
        return self.result

    def hand_over(self):
        """--dont_exit_qemu_when_done: the user gets QEMU's monitor until they quit it."""
        monitor_session(self.machine, HostTracing(self) if self.control is not None else None)

    # ------------------------------------------------------------------ steps

    def _prepare(self):
        private_dir = self._cleanup.enter_context(tempfile.TemporaryDirectory(prefix="memory_tracer-"))
        os.chmod(private_dir, 0o700)
        self.paths = MachinePaths(private_dir)
        self.image = self.target.image_path
        if self.target.make_builtin_image:
            build_smp_guest_image(self.target.smp, progress=self.progress.phase)
        check_image(self.qemu_dir.qemu_img, self.image, self.target.snapshot)
        self.profile = MachineProfile.for_image(self.image, self.target.ram_mb, self.target.smp)
        if self.target.private_copy:
            self.progress.phase("copying the image for a private run")
            self.image = os.path.join(private_dir, os.path.basename(self.image))
            shutil.copyfile(self.target.image_path, self.image)
        if self.request.traced:
            self.consumer = make_consumer(self.request, private_dir)
            self._cleanup.callback(self.consumer.close)

    def _plugin_argument(self):
        if not self.request.traced:
            # Untraced runs measure QEMU itself (or with a plugin of the user's, for comparisons).
            return self.request.other_plugin
        return ",".join([str(self.qemu_dir.plugin),
                         self.consumer.plugin_argument,
                         f"control_socket_path={CONTROL_SOCKET}",   # relative to QEMU's directory
                         "enabled=off", *self.request.settings.plugin_args()])

    def _start_qemu(self):
        command = qemu_command(self.qemu_dir.qemu_system, os.path.abspath(self.image), self.profile,
                               loadvm=self.target.snapshot, plugin=self._plugin_argument(),
                               graphic=self.target.graphic)
        self.machine = QemuMachine(command, self.paths, self.target.image_path, self.target.snapshot, self.profile)
        self._cleanup.callback(self.machine.shut_down)
        self.progress.phase(f"loading the snapshot {self.target.snapshot!r}")
        self.machine.start()
        if self.target.graphic and not has_display():
            self.progress.note(f"no DISPLAY here: QEMU's screen is on VNC at {self.paths.vnc} while the run "
                               f"lasts (e.g. `vncviewer {self.paths.vnc}`)")
        if self.request.traced:
            self.control = ControlChannel(self.paths.control)
            self.control.connect(CONTROL_CONNECT_TIMEOUT_SECONDS, self.machine.is_alive)
            self._cleanup.callback(self.control.close)

    def _reach_runner(self):
        """The fastest port whose runner answers: virtio-serial when the image has it, else serial."""
        ports = [(self.paths.serial, "serial port")]
        if self.profile.virtio_serial:
            ports.insert(0, (self.paths.virtio_port, "virtio-serial port"))
        for socket_path, name in ports:
            channel = GuestChannel(socket_path, name)
            self._cleanup.callback(channel.close)
            channel.connect(self.machine.is_alive, RUNNER_ANSWER_TIMEOUT_SECONDS)
            deadline = time.monotonic() + (5 if name != ports[-1][1] else RUNNER_ANSWER_TIMEOUT_SECONDS)
            while time.monotonic() < deadline:
                if channel.ping(timeout=0.2):
                    log.debug("the runner answered on the %s", name)
                    return channel
                if not self.machine.is_alive():
                    raise self.machine.failure("ended after loading the snapshot")
            log.debug("no answer on the %s", name)
        raise QemuError(f"the guest runner did not answer within {RUNNER_ANSWER_TIMEOUT_SECONDS} s of loading "
                        f"the snapshot {self.target.snapshot!r}: is the runner running in that snapshot? "
                        "(see the README: preparing your own image)")

    def _place_workload(self):
        if self.target.ssh_key is not None:
            return self._place_workload_with_sftp()
        if self.target.workload_path_on_guest is not None:
            return self.target.workload_path_on_guest
        with open(self.target.workload_path_on_host, "rb") as f:
            data = f.read()
        serial = self.channel.name == "serial port"
        size_kb = len(data) / 1000
        self.progress.phase(f"sending the workload ({size_kb:.0f} KB) over the {self.channel.name}")
        started = time.monotonic()

        def show(sent, total):
            self.progress.update(f"sending the workload over the {self.channel.name}: "
                                 f"{100 * sent // max(total, 1)}% of {total / 1000:.0f} KB")
        timeout = REQUEST_TIMEOUT_SECONDS + len(data) / SERIAL_BYTES_PER_SECOND
        path = self.channel.send_workload(data, compress=serial, timeout=timeout, progress=show)
        self.timings["transfer"] = time.monotonic() - started
        log.debug("sent %d bytes over the %s in %.3f s", len(data), self.channel.name, self.timings["transfer"])
        return path

    def _place_workload_with_sftp(self):
        from .ssh_transport import SshTransport   # here: importing paramiko costs every run ~0.1 s
        self.progress.phase("connecting to the guest's SSH server")
        started = time.monotonic()
        ssh = SshTransport(self.machine, self.target.ssh_key, self.target.ssh_user).connect()
        self._cleanup.callback(ssh.close)
        if self.target.workload_files is not None:
            self.progress.phase("sending the workload files with SFTP")
            placed = ssh.send(self.target.workload_files, "workload")
            log.debug("workload files: %s -> %s", self.target.workload_files, placed)
        path = self.target.workload_path_on_guest
        if self.target.workload_path_on_host is not None:
            self.progress.phase("sending the workload with SFTP")
            path = ssh.send(self.target.workload_path_on_host, "workload_runner")
        self.timings["transfer"] = time.monotonic() - started
        log.debug("SFTP transfer took %.3f s; the workload is %s on the guest", self.timings["transfer"], path)
        ssh.close()
        return path

    def open_window(self, consumer):
        if self.control is None:
            return
        with self.machine.paused():
            self.control.enable(consumer.check)

    def _wait_for_stop(self, session):
        """Wait for `Stop tracing`, keeping an eye on the consumer; False when --timeout passed."""
        deadline = None if self.request.timeout is None else time.monotonic() + self.request.timeout
        while True:
            try:
                if session.wait_for_stop(timeout=0.2):
                    return True
            except WorkloadError:
                if self._qemu_ended_within(2):   # the guest's ports closed because QEMU ended
                    raise self.machine.failure("ended while the workload ran") from None
                raise
            if self.consumer is not None:
                self.consumer.check()
            if not self.machine.is_alive():
                raise self.machine.failure("ended while the workload ran")
            self.progress.update(f"the workload runs{' (traced)' if self.request.traced else ''}: "
                                 f"{self.progress.elapsed():.0f} s")
            if deadline is not None and time.monotonic() >= deadline:
                return False

    def _qemu_ended_within(self, seconds):
        try:
            self.machine.process.wait(timeout=seconds)
            return True
        except subprocess.TimeoutExpired:
            return False

    def close_window(self, consumer, result):
        """Every record of the window delivered to consumer, the trace closed (ready to reopen for
        trace_start); the counters and trace files go into result."""
        if self.control is None:
            return
        with self.machine.paused():
            result.counters = self.control.end_window(consumer.check)
        result.trace_files = consumer.trace_files()

    def _finish_workload(self, session, stopped):
        problem = session.finish(FINISH_GRACE_SECONDS)
        if stopped:
            self.result.workload_problem = problem


class HostTracing:
    """trace_start / trace_stop / trace_status from the monitor, after the workload's own window.

    Each window gets a fresh consumer at the same place (the plugin reopens its trace there):
    the analysis tool started again with the same arguments, or the user's FIFO reopened."""

    def __init__(self, run):
        self.run = run
        self.consumer = None
        self.started = None

    @property
    def active(self):
        return self.consumer is not None

    def start(self):
        if self.active:
            return "trace_start: tracing is already on (trace_stop ends it)."
        run = self.run
        run.consumer.close()   # the workload's window is over: its FIFO or ring makes way
        self.consumer = make_consumer(run.request, run.paths.directory)
        try:
            self.consumer.start(info_words=run.result.workload_info.split())
            run.open_window(self.consumer)
        except BaseException:
            self.consumer.close()
            self.consumer = None
            raise
        self.started = time.monotonic()
        return "tracing started"

    def stop(self):
        if not self.active:
            return "trace_stop: tracing is off (trace_start starts it)."
        run = self.run
        result = RunResult(workload_info=run.result.workload_info)
        result.duration_ms = int((time.monotonic() - self.started) * 1000)
        try:
            run.close_window(self.consumer, result)
            result.analysis_output = self.consumer.finish()
        finally:
            self.consumer.close()
            self.consumer = None
        return format_report(result, print_trace_info=True).rstrip("\n")

    def status(self):
        counters = self.run.control.counters()
        lines = [f"tracing: {'on' if counters.get('tracing') else 'off'}"
                 + ("" if self.active or counters.get("window_open") else " (no trace window: trace_start opens one)")]
        if self.active:
            lines.append(f"window open for: {time.monotonic() - self.started:.1f} s")
            lines += [f"{name}: {value}" for name, value in counters.items() if name not in ("tracing", "window_open")]
        return "\n".join(lines)
