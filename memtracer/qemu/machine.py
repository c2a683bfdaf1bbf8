"""QEMU full-system: the one command line used both to save a snapshot and to load it, and the
running machine, controlled through QMP on a unix socket in the run's private directory.

loadvm fails unless RAM size, machine type, default devices and -smp match what savevm saw, so
both go through `qemu_command`, and what an image was saved with is written beside it
(`<image>.memory_tracer.json`, see MachineProfile).
"""
import contextlib
import functools
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from qemu.qmp import QMPError
from qemu.qmp.legacy import QEMUMonitorProtocol

from ..errors import BadInputError, QemuError
from ..layout import DEFAULT_GUEST_RAM_MB
from ..lifetime import ending_with_us

log = logging.getLogger(__name__)

PINNED_MACHINE = "pc-i440fx-10.0"   # `-machine pc` follows the QEMU version; a snapshot does not
VIRTIO_PORT_NAME = "org.memory_tracer.0"
QMP_TIMEOUT_SECONDS = 60
# Quitting: QEMU answers `quit` at once unless a vCPU is stuck (e.g. in the plugin, waiting for a
# reader that stopped reading); then it is killed, so that Ctrl-C ends any run within seconds.
QUIT_ANSWER_TIMEOUT_SECONDS = 3
SHUTDOWN_TIMEOUT_SECONDS = 5


@dataclass
class MachineProfile:
    """What must be the same when saving and loading a snapshot."""
    ram_mb: int = DEFAULT_GUEST_RAM_MB
    machine: str = "pc"
    smp: int = 1
    virtio_serial: bool = False           # the runner's fast port (the built-in image has it)
    nic_model: str = None                 # the user network's card; None: QEMU's default card
    qemu_version: str = None              # what saved the snapshot, for the error messages
    snapshot: str = None

    @staticmethod
    def sidecar_path(image_path):
        return Path(str(image_path) + ".memory_tracer.json")

    @classmethod
    def for_image(cls, image_path, ram_mb, smp=1):
        """The profile written beside the image, or the original's defaults for an image without one."""
        sidecar = cls.sidecar_path(image_path)
        if not sidecar.exists():
            return cls(ram_mb=ram_mb, smp=smp)
        try:
            saved = json.loads(sidecar.read_text())
            profile = cls(**{k: v for k, v in saved.items() if k in cls.__dataclass_fields__})
        except (ValueError, TypeError) as exc:
            raise BadInputError(f"{sidecar} is not a memory_tracer image description ({exc}); "
                                "remove it or remake the image.") from None
        if profile.ram_mb != ram_mb:
            raise BadInputError(f"guest_RAM_in_MBs must be the RAM size the snapshot was saved with, "
                                f"{profile.ram_mb} (see {sidecar}), but {ram_mb} isn't.")
        if profile.smp != smp:
            raise BadInputError(f"smp must be the vCPU count the snapshot was saved with, {profile.smp} "
                                f"(see {sidecar}), but {smp} isn't; save a snapshot for {smp} vCPUs with "
                                f"`python3 -m memtracer.snapshot {image_path} --smp {smp}`.")
        return profile

    def save_beside(self, image_path, command):
        data = asdict(self)
        data["command"] = command
        self.sidecar_path(image_path).write_text(json.dumps(data, indent=2) + "\n")


class MachinePaths:
    """The sockets of one QEMU, all in one private 0700 directory.

    A unix socket's path is limited to 107 bytes and TMPDIR may be deep, so QEMU runs in the
    directory and names its sockets relatively; we reach them through /proc/self/fd/N/ when the
    full path would be too long."""

    MAX_SOCKET_PATH = 100

    def __init__(self, directory):
        self.directory = str(directory)
        self._dir_fd = None

    def host_path(self, name):
        full = os.path.join(self.directory, name)
        if len(full.encode()) <= self.MAX_SOCKET_PATH:
            return full
        if self._dir_fd is None:
            self._dir_fd = os.open(self.directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        return f"/proc/self/fd/{self._dir_fd}/{name}"

    def close(self):
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None

    qmp = property(lambda self: self.host_path(QMP_SOCKET))
    monitor = property(lambda self: self.host_path(MONITOR_SOCKET))
    serial = property(lambda self: self.host_path(SERIAL_SOCKET))
    virtio_port = property(lambda self: self.host_path(VIRTIO_PORT_SOCKET))
    control = property(lambda self: self.host_path(CONTROL_SOCKET))
    vnc = property(lambda self: os.path.join(self.directory, VNC_SOCKET))
    log = property(lambda self: os.path.join(self.directory, "qemu.log"))


# Relative to QEMU's working directory, the private directory.
QMP_SOCKET, MONITOR_SOCKET, SERIAL_SOCKET = "qmp.sock", "monitor.sock", "serial.sock"
VIRTIO_PORT_SOCKET, CONTROL_SOCKET = "virtio-port.sock", "control.sock"
VNC_SOCKET = "vnc.sock"


def has_display():
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def display_arguments(graphic):
    """-nographic's counterpart (--dont_use_nographic): QEMU's screen in a window where there is a
    display, else (a headless server) on VNC through a unix socket in the private directory."""
    if not graphic:
        return ["-display", "none"]
    return [] if has_display() else ["-display", f"vnc=unix:{VNC_SOCKET}"]


WINDOW_BACKENDS = ("gtk", "sdl")


@functools.lru_cache(maxsize=None)
def has_window_backend(qemu_binary):
    listed = subprocess.run([str(qemu_binary), "-display", "help"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True).stdout.split()
    return any(backend in listed for backend in WINDOW_BACKENDS)


def qemu_for(qemu_binary, graphic):
    """The QEMU to run: build.py's, except for a window on a display, which it cannot open (its
    build needs no GUI libraries); Debian's can, and loads the same snapshots and the plugin (which
    records through its callback there: slower, as a run on screen can afford)."""
    if graphic and has_display() and not has_window_backend(qemu_binary):
        debian = shutil.which("qemu-system-x86_64", path="/usr/bin")
        if debian is not None:
            return debian
    return qemu_binary


# QEMU's own account of a socket chardev that disconnects (the end of its stream, a read or a write
# error): trace events that fire only then, printed into its log. A runner port that closes under
# a running QEMU is told with it (QemuMachine.chardev_said); the log shown to the user leaves them out.
CHARDEV_TRACE_PREFIX = "chr_socket_"
CHARDEV_TRACE_EVENTS = CHARDEV_TRACE_PREFIX + "*"
CHARDEV_TRACE_LINE = re.compile(rf"^{CHARDEV_TRACE_PREFIX}\w+ (?P<said>.*)$")


def _socket_chardev(name, path):
    return ["-chardev", f"socket,id={name},path={path},server=on,wait=off"]


def qemu_command(qemu_binary, image_path, profile, loadvm=None, plugin=None, graphic=False):
    """The command line for savevm and loadvm alike: only `loadvm`, `plugin` and `graphic` vary,
    none of which is part of the saved state. QEMU runs in the private directory (MachinePaths)."""
    command = [str(qemu_for(qemu_binary, graphic)),
               "-machine", profile.machine, "-m", str(profile.ram_mb), "-smp", str(profile.smp),
               # -hda, spelled out: the image keeps its internal snapshots only as a writable qcow2
               "-drive", f"file={image_path},format=qcow2,if=ide,index=0,media=disk",
               *_socket_chardev("mt_serial", SERIAL_SOCKET), "-serial", "chardev:mt_serial",
               *_socket_chardev("mt_qmp", QMP_SOCKET), "-mon", "chardev=mt_qmp,mode=control",
               *_socket_chardev("mt_monitor", MONITOR_SOCKET), "-mon", "chardev=mt_monitor,mode=readline",
               "-trace", CHARDEV_TRACE_EVENTS]
    if profile.virtio_serial:
        command += ["-device", "virtio-serial-pci,id=mt_virtio_serial",
                    *_socket_chardev("mt_port", VIRTIO_PORT_SOCKET),
                    "-device", f"virtserialport,bus=mt_virtio_serial.0,chardev=mt_port,name={VIRTIO_PORT_NAME}"]
    if profile.nic_model:
        # Port forwards are added at run time (hostfwd_add): they are not part of the saved state.
        # IPv4 only (SSH needs no more): QEMU's router otherwise advertises an IPv6 prefix to every
        # resumed guest, which then sets up addresses and routes, inside the trace window or not
        # depending on the run (some 2,000 blocks of kernel code in a full-system mem_loop window).
        command += ["-nic", f"user,model={profile.nic_model},ipv6=off"]
    command += display_arguments(graphic)
    if plugin is not None:
        command += ["-plugin", plugin]
    if loadvm is not None:
        command += ["-loadvm", loadvm]
    return command


# What QEMU says when loadvm cannot work, and what the user should do about it.
LOAD_ERRORS = [
    (r"Size mismatch: pc\.ram|Length mismatch: pc\.ram",
     "the snapshot {snapshot!r} was saved with another RAM size; pass --guest_RAM_in_MBs with "
     "the size it was saved with"),
    (r"Snapshot '.*' does not exist|Could not find snapshot|snapshot .* not found",
     "snapshot_name {snapshot!r} is not a snapshot of {image} (list them with `qemu-img snapshot -l`)"),
    (r"Failed to get .* lock|Is another process using the image",
     "{image} is in use by another QEMU (another memory_tracer run?); wait for it to end, or pass "
     "--run_on_private_copy to run on a private copy of the image"),
    (r"Unknown ramblock|Unknown savevm section|Missing section footer|error while loading state|"
     r"Machine type received is|load of migration failed",
     "the snapshot {snapshot!r} was saved with another QEMU configuration (machine type, devices "
     "or -smp){saved_with}; remake it with this QEMU (for the built-in image: `python3 build.py "
     "--remake_guest_image`)"),
    (r"unsupported machine type|Invalid machine type|machine type '.*' not found",
     "the snapshot {snapshot!r} was saved with a machine type this QEMU does not have{saved_with}; "
     "remake it with this QEMU (for the built-in image: `python3 build.py --remake_guest_image`)"),
    (r"gtk initialization failed|Could not initialize SDL|Failed to open display|cannot open display",
     "--dont_use_nographic: QEMU could not open a window on this DISPLAY; unset DISPLAY to have its "
     "screen on VNC instead, or run without --dont_use_nographic"),
    (r"Could not open .*Permission denied",
     "guest_image_path {image} cannot be opened for writing by this user (QEMU: Permission denied); run as "
     "the image's owner, or pass --run_on_private_copy (a private copy needs only to read it)"),
    (r"Image is not in qcow2 format|Could not open|not in qcow2 format|Invalid argument",
     "guest_image_path {image} cannot be opened as a qcow2 image"),
]


def explain_qemu_failure(log_text, image, snapshot, profile):
    saved_with = f" (it was saved by QEMU {profile.qemu_version} with -machine {profile.machine})" \
        if profile.qemu_version else ""
    for pattern, message in LOAD_ERRORS:
        if re.search(pattern, log_text):
            return message.format(image=image, snapshot=snapshot, saved_with=saved_with)
    return None


class QemuMachine:
    """A qemu-system-x86_64 of ours, from its command line to its shutdown, driven through QMP.

    Nothing happens until launch(): it makes a private 0700 directory (QMP, monitor, serial,
    virtio and control sockets, the log), builds the one command line and starts QEMU there.
    shut_down() quits it (QMP `quit`, then a kill) and removes the directory; use the machine as
    a context manager so that this happens whatever goes wrong."""

    def __init__(self, qemu_binary, image, profile, snapshot, loadvm=True, plugin=None, graphic=False,
                 known_as=None, parent_dir=None):
        self.qemu_binary = qemu_binary
        self.image = image
        self.known_as = known_as or image   # the image's name in messages: the user's, not a private copy
        self.profile = profile
        self.snapshot = snapshot
        self.loadvm = loadvm
        self.plugin = plugin
        self.graphic = graphic
        self.command = None
        self.paths = None
        self.process = None
        self.qmp = None
        self._log = None
        self._directory = None
        # Where the private directory goes: a run passes its own, so that a signal landing
        # between making the directory and noting it cannot leave it behind.
        self.parent_dir = parent_dir

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.shut_down()
        return False

    def launch(self):
        self._directory = tempfile.TemporaryDirectory(prefix="qemu-", dir=self.parent_dir)
        os.chmod(self._directory.name, 0o700)
        self.paths = MachinePaths(self._directory.name)
        self.command = qemu_command(self.qemu_binary, os.path.abspath(self.image), self.profile,
                                    loadvm=self.snapshot if self.loadvm else None, plugin=self.plugin,
                                    graphic=self.graphic)
        log.debug("QEMU: %s", " ".join(self.command))
        self._log = open(self.paths.log, "wb")
        self.process = subprocess.Popen(ending_with_us(self.command), stdin=subprocess.DEVNULL, stdout=self._log,
                                        stderr=subprocess.STDOUT, start_new_session=True,
                                        cwd=self.paths.directory)
        self.qmp = self._connect_qmp()
        return self

    def runner_ports(self):
        """(socket, name) of each port the guest runner listens on, the fastest first."""
        ports = [(self.paths.serial, "serial port")]
        if self.profile.virtio_serial:
            ports.insert(0, (self.paths.virtio_port, "virtio-serial port"))
        return ports

    def reach_runner(self, channel, deadline, waiting=lambda elapsed: None):
        """Ping the guest runner on channel until it answers (True) or the deadline passes (False);
        QEMU ending meanwhile is an error. waiting(seconds) is told how long it has been."""
        started = time.monotonic()
        while not channel.ping(timeout=0.2):
            if not self.is_alive():
                raise self.failure("ended before the guest runner answered")
            if time.monotonic() > deadline:
                return False
            waiting(time.monotonic() - started)
        return True

    def is_alive(self):
        return self.process is not None and self.process.poll() is None

    def log_text(self):
        """What QEMU printed, without its chardevs' trace lines (CHARDEV_TRACE_EVENTS)."""
        return "".join(line for line in self._log_lines() if not CHARDEV_TRACE_LINE.match(line))

    def chardev_said(self):
        """QEMU's last word on a chardev's connection other than that it disconnected, without
        pointers (e.g. `chardev socket recv end-of-file (mt_port)`); None when it said none."""
        said = [m["said"] for m in map(CHARDEV_TRACE_LINE.match, self._log_lines())
                if m and not m["said"].startswith("chardev socket disconnect")]
        return re.sub(r" 0x[0-9a-f]+ ", " ", said[-1]) if said else None

    def _log_lines(self):
        try:
            return Path(self.paths.log).read_text(errors="replace").splitlines(keepends=True)
        except OSError:
            return []

    def failure(self, what):
        """A QemuError for QEMU having ended, with the reason in the user's terms when known."""
        if self.process is not None:
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        text = self.log_text()
        explained = explain_qemu_failure(text, self.known_as, self.snapshot, self.profile)
        if explained:
            return QemuError(explained)
        return QemuError(f"QEMU {what}", self.command, self.process and self.process.returncode, text)

    def _connect_qmp(self):
        """Connect once QEMU listens; the greeting comes once -loadvm is done."""
        deadline = time.monotonic() + QMP_TIMEOUT_SECONDS
        while not os.path.exists(self.paths.qmp):
            if not self.is_alive():
                raise self.failure("ended while starting") from None
            if time.monotonic() > deadline:
                raise QemuError(f"QEMU did not open its QMP socket within {QMP_TIMEOUT_SECONDS} s",
                                self.command, None, self.log_text())
            time.sleep(0.01)
        while True:
            qmp = QEMUMonitorProtocol(self.paths.qmp)
            try:
                qmp.connect(negotiate=True)
                qmp.settimeout(QMP_TIMEOUT_SECONDS)
                return qmp
            except KeyboardInterrupt:
                # Ctrl-C or SIGTERM in the handshake: closed now, rather than by the garbage
                # collector at exit, whose try fails loudly after our last line.
                with contextlib.suppress(Exception):
                    qmp.close()
                raise
            except (OSError, QMPError) as exc:
                qmp.close()
                if not self.is_alive():
                    raise self.failure("ended while starting") from None
                if time.monotonic() > deadline:
                    raise QemuError(f"QEMU's QMP socket did not answer within {QMP_TIMEOUT_SECONDS} s "
                                    f"({exc})", self.command, None, self.log_text()) from None
                time.sleep(0.02)

    def command_qmp(self, name, **arguments):
        try:
            return self.qmp.cmd(name, **arguments)
        except (OSError, QMPError, EOFError) as exc:
            if not self.is_alive():
                raise self.failure(f"ended during {name}") from None
            raise QemuError(f"QMP {name} failed: {exc}", self.command, None, self.log_text()) from None

    @contextmanager
    def paused(self):
        """The VM stopped (QMP `stop`) for the duration, resumed whatever happens."""
        self.command_qmp("stop")
        try:
            yield
        finally:
            self.command_qmp("cont")

    def human_command(self, line):
        return self.command_qmp("human-monitor-command", **{"command-line": line})

    def save_snapshot(self, name):
        """savevm through the human monitor: QMP's snapshot-save job needs node names."""
        output = self.human_command(f"savevm {name}")
        if output.strip():
            raise QemuError(f"savevm {name} failed: {output.strip()}")

    def _quit_through_qmp(self):
        if self.qmp is None:
            return False
        try:
            self.qmp.settimeout(QUIT_ANSWER_TIMEOUT_SECONDS)
            self.qmp.cmd("quit")
        except (OSError, QMPError, EOFError):
            pass   # QEMU may close the socket before it answers, or be stuck: it is killed then
        return True

    def shut_down(self):
        """Quit cleanly (QEMU flushes the image and the plugin its trace); kill if it hangs; then
        remove the private directory."""
        if self.process is None:
            self._remove_directory()
            return
        if self.is_alive() and not self._quit_through_qmp():
            self.process.terminate()   # no QMP yet (still loading): QEMU also quits on SIGTERM
        try:
            self.process.wait(timeout=SHUTDOWN_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            log.debug("QEMU did not quit within %d s: killing it", SHUTDOWN_TIMEOUT_SECONDS)
            self.process.kill()
            self.process.wait()
        if self.qmp is not None:
            try:
                self.qmp.close()
            except (OSError, QMPError, EOFError):
                pass   # QEMU closed its end first
            self.qmp = None
        self._log.close()
        self.process = None
        self._remove_directory()

    def _remove_directory(self):
        if self.paths is not None:
            self.paths.close()
        if self._directory is not None:
            self._directory.cleanup()
            self._directory = None
