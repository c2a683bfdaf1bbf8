"""An image prepared the way a user prepares their own (README: "Your own guest image"), unlike the
built-in one: the runner installed under another name and started by the image's own init, a
serial port only (no virtio-serial), 512 MiB of RAM, a compressed qcow2, and the snapshot saved
by hand with the original's command line (`-m 512 -hda IMAGE`), so no description beside it."""
import subprocess
import time

import pytest
from qemu.qmp.legacy import QEMUMonitorProtocol

from conftest import (GUEST_IMAGE, PROGRAMS, QEMU_DIR, SNAPSHOT, TOOLS, analysis_counts, image_fingerprint,
                      processes_mentioning, promised_counts)
from memtracer.qemu.guest_channel import GuestChannel
from memtracer.build.guest_image import make_boot_disk, make_initramfs, unpack_busybox, unpack_kernel
from memtracer.layout import GUEST_RUNNER

pytestmark = pytest.mark.qemu   # QEMU itself, without memory_tracer

OWN_INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /usr/local/bin /root/work
mount -t devpts devpts /dev/pts
cp /bin/runner /usr/local/bin/memory_tracer_runner
rm /bin/runner
while true; do /usr/local/bin/memory_tracer_runner /root/work; done
"""
RAM_MB = 512


def save_snapshot_by_hand(image, work):
    """What the original's setup step 6 did: boot, wait for the runner, `savevm` in the monitor."""
    qemu = subprocess.Popen([QEMU_DIR / "qemu-system-x86_64", "-m", str(RAM_MB), "-hda", image,
                             "-display", "none", "-serial", "unix:serial.sock,server=on,wait=off",
                             "-qmp", "unix:qmp.sock,server=on,wait=off"], cwd=work,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    channel = GuestChannel(str(work / "serial.sock"), "serial port")
    try:
        channel.connect(lambda: qemu.poll() is None, 30)
        deadline = time.monotonic() + 120
        while not channel.ping(timeout=0.5):
            assert time.monotonic() < deadline, "the runner of the own image never answered"
        monitor = QEMUMonitorProtocol(str(work / "qmp.sock"))
        monitor.connect()
        assert monitor.cmd("human-monitor-command", **{"command-line": f"savevm {SNAPSHOT}"}) == ""
        try:
            monitor.cmd("quit")
            monitor.close()
        except EOFError:
            pass   # QEMU may close the socket before answering `quit`
    finally:
        channel.close()
        qemu.wait(timeout=30)


@pytest.fixture(scope="module")
def builtin_image_before():
    """The built-in image as it was before this module's own image was made and run."""
    return image_fingerprint(GUEST_IMAGE)


@pytest.fixture(scope="module")
def own_image(tmp_path_factory, builtin_image_before):
    work = tmp_path_factory.mktemp("own_image")
    _, vmlinuz, _ = unpack_kernel(work)
    initrd = make_initramfs(unpack_busybox(work), GUEST_RUNNER, {}, OWN_INIT)
    raw = work / "disk.raw"
    make_boot_disk(raw, vmlinuz, initrd, work)
    image = work / "own.qcow2"
    subprocess.run([QEMU_DIR / "qemu-img", "convert", "-c", "-O", "qcow2", raw, image], check=True)
    save_snapshot_by_hand(image, work)
    return image


def test_own_serial_only_image_traces_exactly(tracer, own_image):
    assert not own_image.with_name(own_image.name + ".memory_tracer.json").exists()
    run = tracer(own_image, SNAPSHOT, QEMU_DIR, "--guest_RAM_in_MBs", RAM_MB,
                 "--workload_path_on_host", PROGRAMS / "known_accesses",
                 "--dont_add_communications_with_host_to_workload",
                 "--analysis_tool_path", TOOLS / "count", "-v")
    assert run.returncode == 0, run.stderr
    assert "over the serial port" in run.stderr   # the runner answered on the only port there is
    counts = analysis_counts(run.stdout)
    for kind, n in promised_counts(run.stdout).items():
        assert n <= counts[f"range_{kind}"] <= n + 2, kind


def test_own_image_with_the_wrong_ram_size_says_what_to_pass(tracer, own_image):
    run = tracer(own_image, SNAPSHOT, QEMU_DIR, "--workload_path_on_guest", "/bin/true", "--dont_trace")
    assert run.returncode == 1
    assert run.stderr.strip() == (f"the snapshot {SNAPSHOT!r} was saved with another RAM size; pass "
                                  "--guest_RAM_in_MBs with the size it was saved with")


def test_own_image_with_another_vcpu_count_says_so(tracer, own_image):
    run = tracer(own_image, SNAPSHOT, QEMU_DIR, "--guest_RAM_in_MBs", RAM_MB, "--smp", "2",
                 "--workload_path_on_guest", "/bin/true", "--dont_trace")
    assert run.returncode == 1
    assert len(run.stderr.strip().splitlines()) == 1
    assert "saved with another QEMU configuration (machine type, devices or -smp)" in run.stderr
    assert processes_mentioning("qemu-system-x86_64") == []


def test_builtin_image_is_not_touched_by_own_image_runs(own_image, builtin_image_before):
    # Last in this module: after the own image was made, snapshotted and run several times.
    assert own_image.parent != GUEST_IMAGE.parent
    assert image_fingerprint(GUEST_IMAGE) == builtin_image_before
