"""What build.py does on the standard library alone, before the project's environment exists:
the Debian packages (as root, or the exact commands for root), and the two helpers that every
build step uses to say what it does and to run a command."""
import os
import re
import subprocess
import sys
from pathlib import Path

from ..errors import BuildError

MIN_QEMU_MAJOR = 10

APT_SOURCES_FILE = Path("/etc/apt/sources.list.d/memory-tracer.sources")
# bookworm-backports has QEMU 10; its source package gives the matching plugin header and the
# source of qemu-x86_64 (Debian's is static and cannot load plugins). trixie's source is the
# fallback for when the exact version's tarball is gone.
APT_SOURCES = """\
Types: deb deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""
BACKPORTS_PACKAGES = ["qemu-system-x86", "qemu-user", "qemu-utils"]
BUILD_PACKAGES = ["gcc", "libc6-dev", "make", "ninja-build", "pkg-config", "libglib2.0-dev",
                  "xz-utils", "dpkg-dev", "zlib1g-dev", "libzstd-dev",
                  # QEMU patched and built from Debian's source: the patch, user networking, VNC
                  "patch", "libslirp-dev", "libpixman-1-dev",
                  # the project's own Python environment, and cffi's kernels compiled in it
                  "python3-venv", "python3-dev",
                  # the built-in guest image: a FAT boot disk made without loop mounts
                  "mtools", "dosfstools", "syslinux", "syslinux-common",
                  # its SSH server (memory_tracer --ssh_key)
                  "dropbear-bin", "openssh-sftp-server"]


def step(message):
    print(f"==> {message}", file=sys.stderr, flush=True)


def run(command, **kwargs):
    """Run a command; on failure raise BuildError with its last lines of output."""
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace", **kwargs)
    if result.returncode != 0:
        tail = "\n".join(result.stdout.strip().splitlines()[-15:])
        raise BuildError(f"`{' '.join(map(str, command))}` failed (exit code {result.returncode}):\n{tail}")
    return result.stdout


def installed_versions(packages):
    """{package: version} of those installed, in one dpkg-query call."""
    result = subprocess.run(["dpkg-query", "-W", "-f=${Package}|${Status}|${Version}\n", *packages],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    versions = {}
    for line in result.stdout.splitlines():
        package, status, version = line.split("|")
        if status.endswith(" installed"):
            versions[package.split(":")[0]] = version
    return versions


def dpkg_version(package):
    return installed_versions([package]).get(package)


def upstream_major(debian_version):
    match = re.match(r"(?:\d+:)?(\d+)\.", debian_version or "")
    return int(match.group(1)) if match else 0


def missing_packages():
    versions = installed_versions(BUILD_PACKAGES + BACKPORTS_PACKAGES)
    missing = [p for p in BUILD_PACKAGES if p not in versions]
    return missing + [p for p in BACKPORTS_PACKAGES if upstream_major(versions.get(p)) < MIN_QEMU_MAJOR]


def root_commands():
    return [
        f"cat > {APT_SOURCES_FILE} <<'EOF'\n{APT_SOURCES}EOF",
        "apt-get update",
        "apt-get install -y -t bookworm-backports " + " ".join(BACKPORTS_PACKAGES),
        "apt-get install -y " + " ".join(BUILD_PACKAGES),
    ]


def install_debian_packages():
    missing = missing_packages()
    sources_ready = APT_SOURCES_FILE.exists() and APT_SOURCES_FILE.read_text() == APT_SOURCES
    if not missing and sources_ready:
        step("Debian packages: already installed")
        return
    if os.geteuid() != 0:
        raise BuildError("build.py needs root to install Debian packages (" + " ".join(missing or ["deb-src"])
                         + "). Run it as root, or run these as root first:\n" + "\n".join(root_commands()))
    step("Debian packages: adding bookworm-backports and the deb-src entries")
    APT_SOURCES_FILE.write_text(APT_SOURCES)
    run(["apt-get", "update", "-q"])
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    step("Debian packages: installing " + " ".join(BACKPORTS_PACKAGES + BUILD_PACKAGES))
    run(["apt-get", "install", "-y", "-q", "-t", "bookworm-backports", *BACKPORTS_PACKAGES], env=env)
    run(["apt-get", "install", "-y", "-q", *BUILD_PACKAGES], env=env)
