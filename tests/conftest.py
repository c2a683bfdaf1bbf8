"""Shared helpers: run the real memory_tracer.py, parse its sections, and check nothing is left behind."""
import fcntl
import hashlib
import os
import subprocess
import threading
import sys
from pathlib import Path

import pytest

from memtracer.run.report import DURATION, parse_report
from memtracer.trace.fifo import F_GETPIPE_SZ

REPO = Path(__file__).resolve().parent.parent
BUILD = REPO / "build"
TOOLS = BUILD / "analysis_tools"
PROGRAMS = BUILD / "guest_programs"
QEMU_DIR = BUILD / "qemu_with_GMBEOO"
TEST_TOOLS = Path(__file__).resolve().parent / "tools"
GUEST_IMAGE = BUILD / "guest_image" / "memory_tracer_guest.qcow2"
SNAPSHOT = "ready_for_memory_tracer"



# Two tiers. A test that runs memory_tracer (it takes the tracer or private_tmp fixture) or QEMU
# itself (marked `qemu`) is end-to-end; every other one is in the fast tier, which
# `pytest -m fast tests` runs alone, in seconds.
END_TO_END_FIXTURES = {"tracer", "private_tmp"}


def pytest_configure(config):
    config.addinivalue_line("markers", "qemu: the test runs QEMU itself (the end-to-end tier)")
    config.addinivalue_line("markers", "fast: the fast tier, no QEMU (given to every test that needs none)")


def pytest_collection_modifyitems(items):
    for item in items:
        if not (END_TO_END_FIXTURES & set(item.fixturenames) or item.get_closest_marker("qemu")):
            item.add_marker(pytest.mark.fast)


def pytest_sessionstart(session):
    # Tests never skip for a missing build: CI builds first, and a missing part is a failure.
    for part in (QEMU_DIR / "qemu-x86_64", QEMU_DIR / "libgmbeoo.so", TOOLS / "count",
                 PROGRAMS / "known_accesses", GUEST_IMAGE):
        if not part.exists():
            pytest.exit(f"{part} is missing: run `python3 build.py` first.", returncode=1)


def parse_sections(stdout):
    """stdout of memory_tracer.py as {section: text}; the duration under 'tracing_duration'."""
    sections = {}
    for header, value in parse_report(stdout).items():
        if header == DURATION:
            sections["tracing_duration"] = value
        else:
            sections[header[:-1]] = "\n".join(value)
    return sections


def analysis_counts(stdout):
    """The count tool's `name: value` lines, as ints."""
    lines = parse_sections(stdout)["analysis output"].splitlines()
    return {name: int(value) for name, _, value in (line.partition(": ") for line in lines)}


def trace_info(stdout):
    info = {}
    for line in parse_sections(stdout).get("trace info", "").splitlines():
        name, _, value = line.rpartition(": ")
        info[name.replace("ATTENTION: ", "").split(" (")[0]] = int(value)
    return info


def promised_counts(stdout):
    """known_accesses' own word: `kind=N` lines of its workload info."""
    info = parse_sections(stdout)["workload info"].splitlines()
    return {k: int(v) for k, _, v in (line.partition("=") for line in info) if k != "range"}


def buffer_range(stdout):
    line = parse_sections(stdout)["workload info"].splitlines()[0]
    start, end = line.partition("=")[2].split("-")
    return int(start, 16), int(end, 16)


class FifoReader(threading.Thread):
    """A reader of our own on a --trace_fifo_path FIFO; notes the pipe size it saw mid-stream."""

    def __init__(self, path):
        super().__init__(daemon=True)
        self.path = path
        self.data = bytearray()
        self.pipe_size_while_tracing = None

    def run(self):
        fd = os.open(self.path, os.O_RDONLY)
        while chunk := os.read(fd, 1 << 20):
            if self.pipe_size_while_tracing is None:
                self.pipe_size_while_tracing = fcntl.fcntl(fd, F_GETPIPE_SZ)
            self.data += chunk
        os.close(fd)


def trace_into_fifo_reader(tracer, tmp_path, run_args):
    """memory_tracer.py with --trace_fifo_path on a FIFO of our own, read by a FifoReader."""
    fifo = tmp_path / "trace.fifo"
    os.mkfifo(fifo)
    reader = FifoReader(fifo)
    reader.start()
    run = tracer(*run_args, "--trace_fifo_path", fifo, "--print_trace_info")
    reader.join(timeout=30)
    return run, reader


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """A TMPDIR of the test's own: afterwards it must hold nothing memory_tracer made."""
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    yield tmp
    leftovers = list(tmp.iterdir())
    assert leftovers == [], f"memory_tracer left {leftovers} behind"


@pytest.fixture
def tracer(private_tmp):
    """Run memory_tracer.py for real; returns the CompletedProcess."""
    def run(*args, timeout=300, env=None, **kwargs):
        env = dict(env or os.environ, TMPDIR=str(private_tmp))
        return subprocess.run([sys.executable, str(REPO / "memory_tracer.py"), *map(str, args)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              timeout=timeout, env=env, **kwargs)
    return run


def mappings_of(pid):
    """The process's memory mappings (/proc/PID/smaps), each as (the fields of its first line: range,
    permissions, offset, device, inode and maybe a path; its resident bytes; its VmFlags)."""
    mappings = []
    with open(f"/proc/{pid}/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if "-" in fields[0] and len(fields) >= 5:      # a mapping's first line
                mappings.append([fields, 0, []])
            elif mappings and fields[0] == "Rss:":
                mappings[-1][1] = int(fields[1]) * 1024
            elif mappings and fields[0] == "VmFlags:":
                mappings[-1][2] = fields[1:]
    return [tuple(m) for m in mappings]


def address_range(fields):
    """(start, end) of a mapping, from the fields of its first line in smaps."""
    start, end = (int(x, 16) for x in fields[0].split("-"))
    return start, end


def code_buffer_resident_bytes(pid):
    """Resident bytes of the process's largest read-write-execute mapping: QEMU's code buffer."""
    code = []
    for fields, resident, _ in mappings_of(pid):
        if fields[1] == "rwxp":
            start, end = address_range(fields)
            code.append((end - start, resident))
    return max(code)[1] if code else 0


def executable(path, text):
    """A script written at path and made executable (a workload, a tool); returns the path."""
    path.write_text(text)
    path.chmod(0o755)
    return path


def user_mode(*args):
    return ["--user_mode", *args]


def system(*args, image=GUEST_IMAGE):
    """A full-system run on the built-in image."""
    return [image, SNAPSHOT, QEMU_DIR, *args]


def image_fingerprint(image):
    """The image's bytes and its snapshots: equal before and after means the run changed nothing."""
    snapshots = subprocess.run([QEMU_DIR / "qemu-img", "snapshot", "-l", "-U", image],
                               stdout=subprocess.PIPE, text=True, check=True).stdout
    return hashlib.sha256(image.read_bytes()).hexdigest(), snapshots


def processes_mentioning(text):
    """PIDs whose command line contains text (QEMU, tools and helpers carry the private dir in theirs)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if text.encode() in f.read():
                    found.append(pid)
        except OSError:
            pass
    return found
