"""Make a guest image ready for memory_tracer: boot it with memory_tracer's own QEMU command line,
wait until the guest runner answers, and `savevm` (what the original's step 6 did by hand).

build.py uses this for the built-in image; for an image of your own (with the runner set to start
at boot, see the README):

    python3 -m memtracer.snapshot IMAGE [--snapshot_name NAME] [--guest_RAM_in_MBs N] [--virtio_serial] [--smp N]
"""
import argparse
import os
import subprocess
import sys
import time
from contextlib import ExitStack

from .environment import use_project_environment

use_project_environment()   # `python3 -m memtracer.snapshot` with any python3 runs inside build/venv

from .errors import Interrupted, MemoryTracerError, QemuError  # noqa: E402
from .interrupts import ending_signals_unwind  # noqa: E402
from .layout import MAX_SMP, DEFAULT_GUEST_RAM_MB, DEFAULT_QEMU_DIR, DEFAULT_SNAPSHOT, QemuDir  # noqa: E402
from .lifetime import private_directory  # noqa: E402
from .qemu.guest_channel import GuestChannel  # noqa: E402
from .qemu.machine import PINNED_MACHINE, VIRTIO_PORT_NAME, MachineProfile, QemuMachine  # noqa: E402

PROGRAM = "memtracer.snapshot"
BOOT_TIMEOUT_SECONDS = 300
SETTLE_SECONDS = 1.0   # let the guest finish what it does right after boot, as the original advised


def qemu_version(qemu_binary):
    first = subprocess.run([str(qemu_binary), "--version"], stdout=subprocess.PIPE, text=True).stdout
    return first.split("version ")[1].split()[0] if "version " in first else "unknown"


def save_ready_snapshot(image_path, qemu_dir, snapshot_name=DEFAULT_SNAPSHOT, ram_mb=DEFAULT_GUEST_RAM_MB,
                        virtio_serial=False, machine=PINNED_MACHINE, progress=lambda message: None,
                        boot_timeout=BOOT_TIMEOUT_SECONDS, smp=1, nic_model=None):
    """Boot image_path, wait for its runner on every port it should have, savevm, describe it beside."""
    profile = MachineProfile(ram_mb=ram_mb, machine=machine, virtio_serial=virtio_serial, smp=smp, nic_model=nic_model,
                             qemu_version=qemu_version(qemu_dir.qemu_system), snapshot=snapshot_name)
    with private_directory() as private_dir, \
            QemuMachine(qemu_dir.qemu_system, image_path, profile, snapshot_name, loadvm=False,
                        parent_dir=private_dir) as qemu, \
            ExitStack() as channels:
        qemu.launch()
        deadline = time.monotonic() + boot_timeout
        for socket_path, name in qemu.runner_ports():
            channel = GuestChannel(socket_path, name)
            channels.callback(channel.close)
            channel.connect(qemu.is_alive, boot_timeout)
            if not qemu.reach_runner(channel, deadline, lambda elapsed: progress(f"booting the guest ({elapsed:.0f} s)")):
                raise QemuError(f"the guest runner did not answer on the {name} within {boot_timeout:.0f} s of "
                                "booting", qemu.command, None, qemu.log_text())
        time.sleep(SETTLE_SECONDS)
        progress(f"saving the snapshot {snapshot_name!r}")
        qemu.save_snapshot(snapshot_name)
        command = qemu.command
    profile.save_beside(image_path, [a.replace(os.path.abspath(image_path), "<image>") for a in command])
    return profile


def main(argv=None):
    parser = argparse.ArgumentParser(prog=f"python3 -m {PROGRAM}", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image", help="qcow2 image whose guest starts the runner at boot")
    parser.add_argument("--snapshot_name", default=DEFAULT_SNAPSHOT)
    parser.add_argument("--guest_RAM_in_MBs", type=int, default=DEFAULT_GUEST_RAM_MB)
    parser.add_argument("--virtio_serial", action="store_true",
                        help=f"give the guest the virtio-serial port {VIRTIO_PORT_NAME} (fast transfers)")
    parser.add_argument("--qemu_with_GMBEOO_path", default=str(DEFAULT_QEMU_DIR))
    parser.add_argument("--boot_timeout", type=float, default=BOOT_TIMEOUT_SECONDS)
    parser.add_argument("--smp", type=int, default=1, help="vCPUs (memory_tracer --smp must then be the same)")
    parser.add_argument("--nic_model", help="the network card of QEMU's user network (e.g. virtio-net-pci); "
                                            "default: QEMU's default card")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.image):
        print(f"image must be a file path, but {args.image} isn't.", file=sys.stderr)
        return 1
    if not 1 <= args.smp <= MAX_SMP:
        print(f"smp must be in range [1, {MAX_SMP}], but {args.smp} isn't.", file=sys.stderr)
        return 1
    try:
        with ending_signals_unwind(PROGRAM):
            qemu_dir = QemuDir(args.qemu_with_GMBEOO_path).require("qemu_system")
            save_ready_snapshot(args.image, qemu_dir, args.snapshot_name, args.guest_RAM_in_MBs,
                                args.virtio_serial, progress=lambda m: print(m, file=sys.stderr),
                                boot_timeout=args.boot_timeout, smp=args.smp, nic_model=args.nic_model)
    except MemoryTracerError as exc:
        print(exc, file=sys.stderr)
        return 1
    except Interrupted as exc:
        print(exc, file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"{PROGRAM}: interrupted.", file=sys.stderr)
        return 130
    print(f"saved snapshot {args.snapshot_name!r} in {args.image}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
