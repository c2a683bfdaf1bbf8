"""Where build.py puts things, and the qemu_with_GMBEOO directory memory_tracer.py points at."""
from pathlib import Path

from .errors import BadInputError

REPO_DIR = Path(__file__).resolve().parent.parent
BUILD_DIR = REPO_DIR / "build"
DEFAULT_QEMU_DIR = BUILD_DIR / "qemu_with_GMBEOO"
ANALYSIS_TOOLS_DIR = BUILD_DIR / "analysis_tools"
GUEST_PROGRAMS_DIR = BUILD_DIR / "guest_programs"
GUEST_RUNNER = GUEST_PROGRAMS_DIR / "runner"
GUEST_IMAGE_DIR = BUILD_DIR / "guest_image"
DEFAULT_GUEST_IMAGE = GUEST_IMAGE_DIR / "memory_tracer_guest.qcow2"
DEFAULT_SNAPSHOT = "ready_for_memory_tracer"
DEFAULT_GUEST_RAM_MB = 2560
MAX_SMP = 64     # the sharing tool's vCPU masks; QEMU's pc machine takes up to 255


def builtin_guest_image(smp=1):
    """The built-in image whose snapshot was saved with `smp` vCPUs (loadvm needs the same -smp):
    build.py --smp N makes it, and memory_tracer --smp N on the built-in image makes it on demand."""
    return DEFAULT_GUEST_IMAGE if smp == 1 else GUEST_IMAGE_DIR / f"memory_tracer_guest_smp{smp}.qcow2"


class QemuDir:
    """The directory laid out by build.py: QEMU binaries, the GMBEOO plugin, a version file."""

    def __init__(self, path):
        self.path = Path(path).resolve()

    qemu_system = property(lambda self: self.path / "qemu-system-x86_64")
    qemu_user = property(lambda self: self.path / "qemu-x86_64")
    qemu_img = property(lambda self: self.path / "qemu-img")
    plugin = property(lambda self: self.path / "libgmbeoo.so")
    version_file = property(lambda self: self.path / "VERSION.json")

    def require(self, *binaries):
        """Raise a clear error unless the named parts were built."""
        for name in binaries + ("plugin",):
            part = getattr(self, name)
            if not part.exists():
                raise BadInputError(f"{part} is missing; run `python3 build.py` first "
                                    f"(qemu_with_GMBEOO_path is {self.path}).")
        return self
