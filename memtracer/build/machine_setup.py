"""What build.py does inside the project's environment, once memtracer.build.bootstrap has installed the
Debian packages and memtracer.environment the Python ones: build every part, from lists.

Every step checks first and does nothing when its result is already there, so a second run is quick.
"""
import bz2
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ..errors import BuildError
from ..layout import (ANALYSIS_TOOLS_DIR, BUILD_DIR, DEFAULT_GUEST_IMAGE, DEFAULT_GUEST_RAM_MB, DEFAULT_QEMU_DIR,
                     DEFAULT_SNAPSHOT, GUEST_IMAGE_DIR, GUEST_PROGRAMS_DIR, GUEST_RUNNER, REPO_DIR)
from ..qemu.machine import MachineProfile
from .bootstrap import MIN_QEMU_MAJOR, dpkg_version, run, step
from .builtin_image import build_smp_guest_image, make_into_place, out_of_date
from .guest_image import SSH_KEY, build_disk_image


CFLAGS = ["-O2", "-Wall", "-Wextra", "-Werror"]

# (output name, source, extra flags): what build.py compiles.
PLUGINS = [("libgmbeoo.so", "qemu_patches/gmbeoo.c")]
ANALYSIS_TOOLS = [(name, f"analysis_tools/{name}.c")
                  for name in ("count", "record", "dump", "export", "pages", "cachesim", "reuse", "sharing")]
PLUGIN_HEADERS = ["qemu_patches/gmbe_record.h", "qemu_patches/gmbe_ring.h", "qemu_patches/gmbe_trace_file.h",
                  "to_run_on_guest/memory_tracer_markers.h"]
ANALYSIS_TOOL_HEADERS = PLUGIN_HEADERS + [
    os.path.relpath(p, REPO_DIR) for p in sorted(glob.glob(str(REPO_DIR / "analysis_tools" / "*.h")))]
GUEST_PROGRAMS = [(Path(p).stem, os.path.relpath(p, REPO_DIR))
                  for p in sorted(glob.glob(str(REPO_DIR / "to_run_on_guest" / "programs" / "*.c")))]

RUNNER_SOURCE = "to_run_on_guest/runner.c"
GUEST_IMAGE_SOURCES = [REPO_DIR / "to_run_on_guest" / "image" / name
                       for name in ("init", "syslinux.cfg", "bench_in_guest.sh")]

QEMU_SOURCE_DIR = BUILD_DIR / "qemu-src"
QEMU_BUILD_DIR = BUILD_DIR / "qemu-build"
QEMU_PATCHES_DIR = REPO_DIR / "qemu_patches"
PATCHED_SUFFIX = "-gmbeoo"
# What build.py builds of QEMU: the two x86_64 emulators, nothing else.
QEMU_TARGETS = {"qemu-system-x86_64": "x86_64-softmmu", "qemu-x86_64": "x86_64-linux-user"}
# Debian's firmware (its "+ds" source has none): the very ROMs of Debian's own QEMU, so a snapshot
# saved by either loads in the other.
QEMU_FIRMWARE_PATH = "/usr/share/qemu:/usr/share/seabios:/usr/lib/ipxe/qemu"
# Link-time optimization lets the compiler inline across QEMU's files (the translator's passes, the
# guest TLB's slow path, the look-up of the next block): full-system sort ran 5% faster untraced and
# 6% faster sampled, and the build on 2 cores takes no longer.
QEMU_CONFIGURE = [f"--target-list={','.join(QEMU_TARGETS.values())}", "--enable-plugins", "--enable-slirp",
                  "--enable-lto", "--disable-docs", "--disable-tools", "--disable-werror", "--disable-download",
                  "--disable-rust", "--disable-install-blobs", f"--firmwarepath={QEMU_FIRMWARE_PATH}"]


# ----------------------------------------------------------------- QEMU and its source

def check_qemu_version():
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        raise BuildError("qemu-system-x86_64 is not installed (package qemu-system-x86 from bookworm-backports).")
    first_line = run([qemu, "--version"]).splitlines()[0]
    match = re.search(r"version (\d+)\.(\d+)\.(\d+)", first_line)
    if not match or int(match.group(1)) < MIN_QEMU_MAJOR:
        raise BuildError(f"QEMU >= {MIN_QEMU_MAJOR} is needed, but {qemu} is {first_line!r}; "
                         "install qemu-system-x86 from bookworm-backports.")
    return ".".join(match.groups())


def qemu_source_tree(qemu_version):
    """The upstream source of the installed QEMU version, from Debian's source package."""
    tree = QEMU_SOURCE_DIR / f"qemu-{qemu_version}"
    if (tree / "include" / "qemu" / "qemu-plugin.h").exists():
        return tree
    QEMU_SOURCE_DIR.mkdir(parents=True, exist_ok=True)
    tarball = _download_qemu_source(qemu_version)
    step(f"QEMU source: extracting {tarball.name}")
    run(["tar", "-xf", str(tarball), "-C", str(QEMU_SOURCE_DIR)])
    extracted = [Path(p) for p in glob.glob(str(QEMU_SOURCE_DIR / "qemu-*"))
                 if Path(p).is_dir() and not p.endswith(PATCHED_SUFFIX)]
    for candidate in extracted:
        if (candidate / "VERSION").read_text().strip() == qemu_version and candidate != tree:
            candidate.rename(tree)
    if not tree.exists():
        raise BuildError(f"{tarball} did not contain QEMU {qemu_version}'s source.")
    return tree


def _download_qemu_source(qemu_version):
    pattern = str(QEMU_SOURCE_DIR / f"qemu_{qemu_version}*.orig.tar.*")
    if not glob.glob(pattern):
        # The exact version's .dsc may be gone while its upstream tarball remains: take the tarball.
        step(f"QEMU source: downloading the source package of {dpkg_version('qemu-system-x86')}")
        subprocess.run(["apt-get", "source", "--download-only", f"qemu={dpkg_version('qemu-system-x86')}"],
                       cwd=QEMU_SOURCE_DIR, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    found = glob.glob(pattern)
    if not found:
        raise BuildError(f"could not download QEMU {qemu_version}'s source with `apt-get source` "
                         "(is the deb-src entry for bookworm-backports in place? build.py adds it as root).")
    return Path(found[0])


def qemu_patches():
    return sorted(QEMU_PATCHES_DIR.glob("*.patch"))


def patched_source_tree(tree):
    """A copy of Debian's QEMU source with qemu_patches/*.patch applied; made again when a patch
    changes (files keep their times, so the build redoes only what a patch touched)."""
    patched = tree.with_name(tree.name + PATCHED_SUFFIX)
    stamp = patched / ".memory_tracer-patches"
    applied = "".join(f"{p.name} {hashlib.sha256(p.read_bytes()).hexdigest()}\n" for p in qemu_patches())
    if stamp.exists() and stamp.read_text() == applied:
        return patched
    step(f"QEMU source: applying {', '.join(p.name for p in qemu_patches())}")
    shutil.rmtree(patched, ignore_errors=True)
    shutil.copytree(tree, patched, symlinks=True)
    for patch in qemu_patches():
        run(["patch", "-p1", "--batch", "--forward", "--quiet", "-i", str(patch)], cwd=patched)
    # The x86 targets make meson unpack EDK2 firmware from .bz2 files the "+ds" source lacks; empty
    # ones satisfy it (the guest's firmware is Debian's, QEMU_FIRMWARE_PATH).
    pc_bios = patched / "pc-bios"
    for image in re.findall(r"'(edk2-[^']+\.fd)'", (pc_bios / "meson.build").read_text()):
        if not (pc_bios / f"{image}.bz2").exists():
            (pc_bios / f"{image}.bz2").write_bytes(bz2.compress(b""))
    stamp.write_text(applied)
    return patched


def build_patched_qemu(source):
    """qemu-system-x86_64 and qemu-x86_64 from the patched source, with plugins (Debian's
    qemu-x86_64 cannot load them, and neither of Debian's writes records inline)."""
    settings = json.dumps([str(source), QEMU_CONFIGURE])
    stamp = QEMU_BUILD_DIR / "configured-with"
    if not (stamp.exists() and stamp.read_text() == settings):
        shutil.rmtree(QEMU_BUILD_DIR, ignore_errors=True)
        QEMU_BUILD_DIR.mkdir(parents=True)
        step("QEMU with GMBEOO's patches: configuring (about 25 s)")
        run([str(source / "configure"), f"--python={sys.executable}", *QEMU_CONFIGURE], cwd=QEMU_BUILD_DIR)
        stamp.write_text(settings)
    binaries = [QEMU_BUILD_DIR / name for name in QEMU_TARGETS]
    # ninja decides (a dry run cannot: QEMU's version header is regenerated every time, a no-op).
    built_before = [b.stat().st_mtime_ns if b.exists() else None for b in binaries]
    started = time.monotonic()
    if None in built_before:
        step("QEMU with GMBEOO's patches: compiling qemu-system-x86_64 and qemu-x86_64 "
             "(about 6 minutes on 2 cores)")
    run_with_progress(["ninja", *QEMU_TARGETS], QEMU_BUILD_DIR, "QEMU with GMBEOO's patches")
    if [b.stat().st_mtime_ns for b in binaries] == built_before:
        step("QEMU with GMBEOO's patches: up to date")
    else:
        minutes, seconds = divmod(round(time.monotonic() - started), 60)
        step(f"QEMU with GMBEOO's patches: built in {minutes} min {seconds} s")
    return binaries


PROGRESS_FROM_STEPS = 100     # a build this long is worth a line every tenth of the way


def run_with_progress(command, cwd, what):
    """ninja, saying how far it is every tenth of the way; its last lines when it fails."""
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               errors="replace")
    tail, shown = [], 0
    for line in process.stdout:
        tail = (tail + [line.rstrip()])[-15:]
        progress = re.match(r"\[(\d+)/(\d+)\]", line)
        if progress and int(progress.group(2)) >= PROGRESS_FROM_STEPS and \
                int(progress.group(1)) * 10 // int(progress.group(2)) > shown:
            shown = int(progress.group(1)) * 10 // int(progress.group(2))
            step(f"{what}: {shown * 10}% ({progress.group(1)}/{progress.group(2)} steps)")
    if process.wait() != 0:
        raise BuildError(f"`{' '.join(command)}` failed (exit code {process.returncode}):\n" + "\n".join(tail))


# ----------------------------------------------------------------- compiling the project's C

def compile_c(output, source, flags, headers=(), libs=()):
    output = Path(output)
    sources = [REPO_DIR / source, *[REPO_DIR / h for h in headers]]
    if not out_of_date(output, sources):
        return False
    output.parent.mkdir(parents=True, exist_ok=True)
    run(["gcc", *CFLAGS, *flags, "-o", str(output), str(REPO_DIR / source), *libs])
    return True


def glib_cflags():
    return run(["pkg-config", "--cflags", "glib-2.0"]).split()


def build_plugins(tree):
    flags = ["-shared", "-fPIC", "-Wno-unused-parameter", f"-I{tree / 'include' / 'qemu'}",
             f"-I{REPO_DIR / 'qemu_patches'}", f"-I{REPO_DIR / 'to_run_on_guest'}", *glib_cflags(), "-lpthread"]
    for name, source in PLUGINS:
        built = compile_c(DEFAULT_QEMU_DIR / name, source, flags, PLUGIN_HEADERS)
        step(f"plugin {name}: {'compiled' if built else 'up to date'}")


def build_analysis_tools():
    flags = [f"-I{REPO_DIR / 'qemu_patches'}", f"-I{REPO_DIR / 'analysis_tools'}",
             f'-DGMBE_PLOT_SCRIPT="{REPO_DIR / "analysis_tools" / "plot.py"}"',
             f'-DGMBE_PARQUET_EXPORT_SCRIPT="{REPO_DIR / "analysis_tools" / "python" / "export_parquet.py"}"']
    built = [name for name, source in ANALYSIS_TOOLS
             if compile_c(ANALYSIS_TOOLS_DIR / name, source, flags, ANALYSIS_TOOL_HEADERS, libs=["-lzstd"])]
    step(f"analysis tools: {', '.join(built) + ' compiled' if built else 'up to date'}")


def build_guest_programs():
    # Static, so the same binary runs under qemu-x86_64 and in a minimal guest.
    for name, source in GUEST_PROGRAMS:
        compile_c(GUEST_PROGRAMS_DIR / name, source,
                  ["-static", "-O1", "-pthread", "-mcx16", f"-I{REPO_DIR / 'to_run_on_guest'}"],
                  ["to_run_on_guest/memory_tracer_markers.h"])
    step(f"guest programs: {', '.join(n for n, _ in GUEST_PROGRAMS)}")
    built = compile_c(GUEST_RUNNER, RUNNER_SOURCE, [f"-I{REPO_DIR / 'to_run_on_guest'}", "-static"],
                      ["to_run_on_guest/guest_channel.h"], libs=["-lz"])
    step(f"guest runner: {'compiled' if built else 'up to date'}")


def guest_program_paths():
    return [GUEST_PROGRAMS_DIR / name for name, _ in GUEST_PROGRAMS]


def guest_image_up_to_date(qemu_version):
    sidecar = MachineProfile.sidecar_path(DEFAULT_GUEST_IMAGE)
    if not DEFAULT_GUEST_IMAGE.exists() or not sidecar.exists():
        return False
    # The sidecar, not the image: QEMU touches the image file whenever it runs on it.
    if out_of_date(sidecar, [GUEST_RUNNER, *GUEST_IMAGE_SOURCES, *guest_program_paths(), SSH_KEY,
                             Path(__file__).with_name("guest_image.py")]):
        return False
    saved = json.loads(sidecar.read_text())
    return saved.get("qemu_version") == qemu_version and saved.get("snapshot") == DEFAULT_SNAPSHOT


def build_guest_image(qemu_version, remake=False):
    """The built-in image with its snapshot."""
    if not remake and guest_image_up_to_date(qemu_version):
        step(f"guest image: up to date ({DEFAULT_GUEST_IMAGE})")
        return
    GUEST_IMAGE_DIR.mkdir(parents=True, exist_ok=True)

    def make_disk(fresh):
        build_disk_image(DEFAULT_QEMU_DIR / "qemu-img", GUEST_RUNNER, fresh,
                         lambda message: step(f"guest image: {message}"), guest_program_paths())
        step(f"guest image: booting it once and saving the snapshot {DEFAULT_SNAPSHOT!r} "
             f"({DEFAULT_GUEST_RAM_MB} MiB RAM)")
    make_into_place(DEFAULT_GUEST_IMAGE, make_disk)
    size_mb = DEFAULT_GUEST_IMAGE.stat().st_size / 1e6
    step(f"guest image: {DEFAULT_GUEST_IMAGE} ({size_mb:.0f} MB)")


def lay_out_qemu_dir(qemu_binaries, qemu_version, tree):
    DEFAULT_QEMU_DIR.mkdir(parents=True, exist_ok=True)
    img = DEFAULT_QEMU_DIR / "qemu-img"          # Debian's: images need no patch
    if not img.is_symlink():
        img.symlink_to(shutil.which("qemu-img"))
    for binary in qemu_binaries:
        laid_out = DEFAULT_QEMU_DIR / binary.name
        if laid_out.is_symlink() or out_of_date(laid_out, [binary]):
            laid_out.unlink(missing_ok=True)
            shutil.copy2(binary, laid_out)
    header = (tree / "include" / "qemu" / "qemu-plugin.h").read_text()
    api = re.search(r"#define QEMU_PLUGIN_VERSION (\d+)", header).group(1)
    versions = {"qemu_version": qemu_version, "debian_package": dpkg_version("qemu-system-x86"),
                "plugin_api_version": int(api), "qemu_source": tree.name,
                "qemu_patches": [p.name for p in qemu_patches()]}
    (DEFAULT_QEMU_DIR / "VERSION.json").write_text(json.dumps(versions, indent=2) + "\n")
    step(f"qemu_with_GMBEOO: {DEFAULT_QEMU_DIR}")


def build_everything(remake_guest_image=False, smp_counts=()):
    qemu_version = check_qemu_version()
    tree = patched_source_tree(qemu_source_tree(qemu_version))
    qemu_binaries = build_patched_qemu(tree)
    build_plugins(tree)
    build_analysis_tools()
    build_guest_programs()
    lay_out_qemu_dir(qemu_binaries, qemu_version, tree)
    build_guest_image(qemu_version, remake_guest_image)
    for smp in smp_counts:
        if smp != 1:
            build_smp_guest_image(smp)


def run_tests(pytest_args):
    step("running the tests")
    return subprocess.call([sys.executable, "-m", "pytest", str(REPO_DIR / "tests"), *pytest_args],
                           cwd=REPO_DIR)
