"""The built-in guest image's snapshots: made under a temporary name and moved into place, for one
vCPU by build.py and for N vCPUs on demand (memory_tracer --smp N on the built-in image)."""
import fcntl
import json
from pathlib import Path

from ..errors import BadInputError
from ..layout import (DEFAULT_GUEST_IMAGE, DEFAULT_GUEST_RAM_MB, DEFAULT_QEMU_DIR, DEFAULT_SNAPSHOT, GUEST_IMAGE_DIR,
                     QemuDir, builtin_guest_image)
from ..qemu.machine import MachineProfile
from ..snapshot import save_ready_snapshot
from .bootstrap import run, step

BUILTIN_NIC_MODEL = "virtio-net-pci"   # the cloud kernel drives virtio-net, not the default e1000


def out_of_date(target, sources):
    if not target.exists():
        return True
    return any(Path(s).stat().st_mtime > target.stat().st_mtime for s in sources)


def make_into_place(image, make_disk, smp=1):
    """A built-in image made under a temporary name: make_disk(fresh) writes the disk, one boot
    saves its snapshot for smp vCPUs, then it and its description move into place. Whatever
    happens, the temporary files do not stay."""
    fresh = image.with_name(f"making_{image.name}")
    fresh_sidecar = MachineProfile.sidecar_path(fresh)
    try:
        make_disk(fresh)
        save_ready_snapshot(fresh, QemuDir(DEFAULT_QEMU_DIR), DEFAULT_SNAPSHOT, DEFAULT_GUEST_RAM_MB,
                            virtio_serial=True, smp=smp, nic_model=BUILTIN_NIC_MODEL)
        fresh.rename(image)
        fresh_sidecar.rename(MachineProfile.sidecar_path(image))
    finally:
        fresh.unlink(missing_ok=True)
        fresh_sidecar.unlink(missing_ok=True)


def smp_image_up_to_date(image, smp):
    sidecar = MachineProfile.sidecar_path(image)
    return (image.exists() and sidecar.exists()
            and not out_of_date(sidecar, [MachineProfile.sidecar_path(DEFAULT_GUEST_IMAGE)])
            and json.loads(sidecar.read_text()).get("smp") == smp)


def build_smp_guest_image(smp, progress=step):
    """The built-in image saved with `smp` vCPUs: the disk of the one-vCPU image without its
    snapshot (qemu-img convert drops it), booted once with -smp and saved."""
    image = builtin_guest_image(smp)
    if smp_image_up_to_date(image, smp):
        progress(f"guest image for {smp} vCPUs: up to date ({image})")
        return image
    lock_path = GUEST_IMAGE_DIR / f".making_smp{smp}.lock"
    try:
        lock = open(lock_path, "w")
    except PermissionError:
        raise BadInputError(f"the built-in image for {smp} vCPUs is not made yet, and this user may not make it "
                            f"({lock_path}: Permission denied); run `python3 build.py --smp {smp}` as the owner "
                            f"of {GUEST_IMAGE_DIR}.") from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)   # two runs asking at once: the second waits, then finds it made
        if not smp_image_up_to_date(image, smp):
            def make_disk(fresh):
                run([str(DEFAULT_QEMU_DIR / "qemu-img"), "convert", "-O", "qcow2", str(DEFAULT_GUEST_IMAGE), str(fresh)])
                progress(f"guest image for {smp} vCPUs: booting it once and saving the snapshot {DEFAULT_SNAPSHOT!r}")
            make_into_place(image, make_disk, smp)
    progress(f"guest image for {smp} vCPUs: {image}")
    return image
