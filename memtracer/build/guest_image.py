"""The built-in guest image, made from Debian packages with no manual step and no root-only tools
(no loop mounts): Debian's cloud kernel, a busybox initramfs whose init runs the guest runner, a
FAT file system filled with mtools and made bootable with syslinux, converted to qcow2, booted
once and saved with `savevm` (see snapshot.py)."""
import gzip
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

from ..errors import BuildError
from ..layout import GUEST_IMAGE_DIR, REPO_DIR

KERNEL_PACKAGE = "linux-image-cloud-amd64"
BUSYBOX_PACKAGE = "busybox-static"
# virtio-serial is modular in the cloud kernel; busybox insmod loads these in this order.
VIRTIO_MODULES = ["virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev",
                  "virtio_pci", "virtio_console",
                  # the network, for the SSH server (the cloud kernel has no e1000: a virtio-net NIC)
                  "failover", "net_failover", "virtio_net"]
FAT_SIZE_KIB = 64 * 1024
# Real programs from Debian packages, copied into the guest with their libraries: the benchmark's,
# and bash, since workloads are often bash scripts (the original's guests had it).
GUEST_DEBIAN_PROGRAMS = ["gzip", "xz", "sort", "bash"]
# Where scripts look for them, besides their path here (busybox's /bin has no bash).
GUEST_PROGRAM_LINKS = {"/bin/bash": "bash"}
# The SSH server (dropbear, with OpenSSH's sftp-server) that memory_tracer --ssh_key reaches.
GUEST_SSH_PROGRAMS = ["dropbear", "dropbearkey", "/usr/lib/openssh/sftp-server"]
DROPBEAR_SFTP_SERVER = "/usr/lib/sftp-server"   # where Debian's dropbear runs it from
SSH_KEY = GUEST_IMAGE_DIR / "id_memory_tracer"   # its public half is root's authorized key
IMAGE_FILES = REPO_DIR / "to_run_on_guest" / "image"


def run(command, **kwargs):
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace", **kwargs)
    if result.returncode != 0:
        raise BuildError(f"`{' '.join(map(str, command))}` failed (exit code {result.returncode}): "
                         + " | ".join(result.stdout.strip().splitlines()[-5:]))
    return result.stdout


# ----------------------------------------------------------------- Debian packages, unpacked

def download_package(name, directory):
    """`apt-get download` into directory (no install, no root); returns the .deb."""
    run(["apt-get", "download", "-q", name], cwd=directory)
    debs = sorted(Path(directory).glob(f"{name}_*.deb"))
    if not debs:
        raise BuildError(f"apt-get download {name} gave no .deb")
    return debs[-1]


def unpack_kernel(work):
    """The cloud kernel's vmlinuz and the virtio modules; the metapackage names the real package."""
    meta = download_package(KERNEL_PACKAGE, work)
    depends = run(["dpkg-deb", "-f", str(meta), "Depends"])
    package = next(d.split()[0] for d in depends.split(",") if d.strip().startswith("linux-image-"))
    deb = download_package(package, work)
    root = work / "kernel"
    run(["dpkg-deb", "-x", str(deb), str(root)])
    vmlinuz = next(root.glob("boot/vmlinuz-*"))
    modules = {}
    for name in VIRTIO_MODULES:
        found = list(root.glob(f"lib/modules/*/kernel/**/{name}.ko"))
        if not found:
            raise BuildError(f"{deb.name} has no {name}.ko (is it still a module in this kernel?)")
        modules[name] = found[0]
    return package, vmlinuz, modules


def unpack_busybox(work):
    deb = download_package(BUSYBOX_PACKAGE, work)
    root = work / "busybox"
    run(["dpkg-deb", "-x", str(deb), str(root)])
    return root / "bin" / "busybox"


# ----------------------------------------------------------------- initramfs

def _newc_entry(name, mode, data=b"", rdev=(0, 0)):
    """One entry of a cpio "newc" archive (what the kernel unpacks as initramfs)."""
    name_bytes = name.encode() + b"\0"
    fields = [0, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name_bytes), 0]
    header = b"070701" + b"".join(b"%08X" % f for f in fields)
    pad = lambda n: b"\0" * (-n % 4)
    return header + name_bytes + pad(len(header) + len(name_bytes)) + data + pad(len(data))


def make_initramfs(busybox, runner, modules, init_text=None, extra_files=None, text_files=None):
    """gzip'd newc cpio, written in Python so /dev/console can be a device node without root.
    extra_files: {path in the guest: path on the host}; text_files: {path in the guest: (mode, text)}."""
    init = init_text.encode() if init_text is not None else (IMAGE_FILES / "init").read_bytes()
    files = {"init": (0o755, init), "bin/busybox": (0o755, Path(busybox).read_bytes()),
             "bin/runner": (0o755, Path(runner).read_bytes())}
    for name, path in modules.items():
        files[f"lib/modules/{name}.ko"] = (0o644, path.read_bytes())
    for guest_path, host_path in (extra_files or {}).items():
        files[guest_path.lstrip("/")] = (os.stat(host_path).st_mode & 0o777, Path(host_path).read_bytes())
    for guest_path, (mode, text) in (text_files or {}).items():
        files[guest_path.lstrip("/")] = (mode, text.encode())
    directories = {"dev", "proc", "sys", "tmp"}
    for name in files:
        parts = name.split("/")[:-1]
        directories.update("/".join(parts[:i + 1]) for i in range(len(parts)))
    entries = [_newc_entry(d, stat.S_IFDIR | 0o755) for d in sorted(directories)]   # parents first
    entries.append(_newc_entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)))
    entries += [_newc_entry(name, stat.S_IFREG | mode, data) for name, (mode, data) in files.items()]
    entries.append(_newc_entry("TRAILER!!!", 0))
    return gzip.compress(b"".join(entries), 6, mtime=0)


def debian_programs_with_libraries(programs):
    """{path: path} for programs of this host and the shared libraries they load (ldd), so the
    busybox guest runs them as they are: real programs from Debian packages, for the benchmark."""
    files = {}
    for program in programs:
        real = program if os.path.isabs(program) else shutil.which(program)
        if real is not None and not os.path.exists(real):
            real = None
        if real is None:
            raise BuildError(f"{program} is not installed on this host (it goes into the guest image)")
        files[real] = os.path.realpath(real)
        for line in run(["ldd", real]).splitlines():
            # "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
            path = line.split("=>")[-1].split("(")[0].strip()
            if path.startswith("/"):
                files[path] = os.path.realpath(path)
    return files


def ssh_key_pair():
    """The key memory_tracer --ssh_key uses with the built-in image (made once, 0600): the private
    half stays in build/, the public half becomes root's authorized key in the guest."""
    if not SSH_KEY.exists():
        import paramiko   # only the image build needs it here
        SSH_KEY.parent.mkdir(parents=True, exist_ok=True)
        key = paramiko.ECDSAKey.generate(bits=256)
        fd = os.open(SSH_KEY, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            key.write_private_key(f)
        Path(str(SSH_KEY) + ".pub").write_text(f"{key.get_name()} {key.get_base64()} memory_tracer\n")
    return Path(str(SSH_KEY) + ".pub").read_text()


def ssh_server_files():
    """What dropbear needs in the busybox guest: root's account and authorized key."""
    return {"/etc/passwd": (0o644, "root:x:0:0:root:/root:/bin/sh\n"),
            "/etc/group": (0o644, "root:x:0:\n"),
            "/etc/shells": (0o644, "/bin/sh\n"),
            "/root/.ssh/authorized_keys": (0o600, ssh_key_pair())}


# ----------------------------------------------------------------- the bootable disk

def make_boot_disk(raw_path, vmlinuz, initrd_bytes, work):
    """A FAT file system in a file, filled by mtools and made bootable by syslinux (mtools-based)."""
    initrd = work / "initrd.gz"
    initrd.write_bytes(initrd_bytes)
    run(["mkfs.fat", "-C", "-n", "MEMTRACER", str(raw_path), str(FAT_SIZE_KIB)])
    run(["syslinux", "--install", str(raw_path)])
    shutil.copy(vmlinuz, work / "vmlinuz")
    shutil.copy(IMAGE_FILES / "syslinux.cfg", work / "syslinux.cfg")
    run(["mcopy", "-i", str(raw_path), str(work / "vmlinuz"), str(initrd), str(work / "syslinux.cfg"), "::"])


def build_disk_image(qemu_img, runner, destination, progress, guest_programs=()):
    """Makes destination (qcow2, not yet snapshotted); returns the kernel package's name.
    guest_programs (static, of to_run_on_guest/) go to /usr/local/bin, with the Debian programs
    of GUEST_DEBIAN_PROGRAMS and their libraries at the paths they have here."""
    with tempfile.TemporaryDirectory(prefix="memory_tracer-image-", dir=GUEST_IMAGE_DIR) as tmp:
        work = Path(tmp)
        progress("downloading the cloud kernel and busybox-static (apt-get download)")
        kernel_package, vmlinuz, modules = unpack_kernel(work)
        busybox = unpack_busybox(work)
        progress(f"making the initramfs and the boot disk ({kernel_package})")
        extra = debian_programs_with_libraries(GUEST_DEBIAN_PROGRAMS + GUEST_SSH_PROGRAMS)
        extra.update({guest: os.path.realpath(shutil.which(name)) for guest, name in GUEST_PROGRAM_LINKS.items()})
        extra.update({f"/usr/local/bin/{Path(p).name}": p for p in guest_programs})
        extra["/usr/local/bin/bench_in_guest.sh"] = IMAGE_FILES / "bench_in_guest.sh"
        extra[DROPBEAR_SFTP_SERVER] = "/usr/lib/openssh/sftp-server"
        initrd = make_initramfs(busybox, runner, modules, extra_files=extra, text_files=ssh_server_files())
        raw = work / "disk.raw"
        make_boot_disk(raw, vmlinuz, initrd, work)
        run([str(qemu_img), "convert", "-f", "raw", "-O", "qcow2", str(raw), str(destination)])
    return kernel_package
