"""The shared-memory ring between the plugin and the Python API: head and tail are read and written
whole, never torn, while the other side moves them, and the reader's pages are made when it maps the
ring (fast tier); the multi-vCPU ring run that once gave wrong contents, repeated under load; a tool
that sleeps while the ring is idle (end to end)."""
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import PROGRAMS, QEMU_DIR, REPO, TEST_TOOLS, TOOLS, analysis_counts, system
from memtracer.qemu.plugin_control import parse_counters
from memtracer.record import RECORD_FORMATS
from memtracer.trace.shm_ring import HEAD_OFFSET, RING_BYTES, ShmRing, ShmRingReader, create_ring

# Flips the ring's head between two values that differ in every byte, as fast as it can.
FLIPPER = r"""
#include <fcntl.h>
#include <stdint.h>
#include <sys/mman.h>
#include <unistd.h>
int main(int argc, char **argv)
{
    int fd = open(argv[1], O_RDWR);
    volatile uint64_t *head = (volatile uint64_t *)((char *)mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) + %d);
    for (long i = 0; i < 400000000L; i++) {
        *head = 0x00ffffffffffffffULL;
        *head = 0x0100000000000000ULL;
    }
    return 0;
}
"""
FLIPPED = {0x00ffffffffffffff, 0x0100000000000000}


def test_a_ring_holds_as_many_bytes_of_records_in_every_format(tmp_path):
    """The hand-over's cost goes with the bytes that cross between the cores, not the records."""
    for name, record_size in RECORD_FORMATS.items():
        create_ring(tmp_path / name, record_size=record_size)
        with ShmRing(tmp_path / name) as ring:
            assert ring.capacity * record_size == RING_BYTES, name
            assert ring.records.nbytes == RING_BYTES, name


def test_the_python_reader_takes_its_page_faults_when_it_maps_the_ring_not_while_reading(tmp_path):
    """Else the reader's first lap over the ring faults on every page while the vCPU waits."""
    create_ring(tmp_path / "trace.ring")
    with ShmRingReader(tmp_path / "trace.ring") as ring:
        ring.records[:1].view("u8").sum()   # NumPy's own first faults (its code, its buffers) before
        faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        ring.records.view("u8").sum()
        # a few of NumPy's own at most: the ring's 4 MiB would take 64 or more
        assert resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before < 8


def test_head_is_never_read_torn(tmp_path):
    source = tmp_path / "flipper.c"
    source.write_text(FLIPPER % HEAD_OFFSET)
    subprocess.run(["gcc", "-O2", "-o", tmp_path / "flipper", source], check=True)
    path = tmp_path / "trace.ring"
    create_ring(path, capacity=1024)
    flipper = subprocess.Popen([tmp_path / "flipper", path])
    try:
        with ShmRing(path) as ring:
            seen = {ring.head for _ in range(300_000)}
    finally:
        flipper.kill()
        flipper.wait()
    assert seen <= FLIPPED | {0}, sorted(hex(v) for v in seen - FLIPPED)[:5]
    assert FLIPPED <= seen   # the flipper did run while we read


def test_four_vcpus_through_the_ring_to_python_are_exact_under_load(tracer):
    # 4 threads x 2,000,000 increments at CPL 3, read by the Python API's count.py through the
    # ring, with the host's cores busy: a torn head once made 1 run in 3 count millions wrong.
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count())]
    try:
        for attempt in range(12):
            run = tracer(*system("--smp", "4", "--workload_path_on_host", PROGRAMS / "four_counters",
                                 "--shared_memory_ring", "--analysis_tool_path",
                                 REPO / "analysis_tools" / "python" / "count.py"))
            assert run.returncode == 0, run.stderr
            assert analysis_counts(run.stdout)["cpl_3"] >= 4 * 2_000_000 * 2, attempt   # a load and a store each
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()


@pytest.mark.parametrize("mode", ["user", "system"])
def test_our_tools_take_the_ring_and_others_the_fifo(tracer, mode):
    """By default memory_tracer offers the ring beside the FIFO: the tools of analysis_tools/ (C)
    and of the Python API attach to it; a tool that only knows the original protocol reads the FIFO.
    Every way gives the same counts of known_accesses' buffer."""
    where = {"user": lambda *a: ["--user_mode", *a], "system": system}[mode]
    readers = {}
    for tool in (TOOLS / "count", REPO / "analysis_tools" / "python" / "count.py", TEST_TOOLS / "slow_count.py"):
        run = tracer(*where("--workload_path_on_host", PROGRAMS / "known_accesses",
                            "--dont_add_communications_with_host_to_workload", "--analysis_tool_path", tool,
                            "--print_trace_info", "-v"))
        assert run.returncode == 0, run.stderr
        readers[tool.name] = run.stderr.split("the analysis tool reads ")[1].split("\n")[0]
        if tool.name != "slow_count.py":
            assert analysis_counts(run.stdout)["range_records"] == 1391
    assert readers == {"count": "the shared-memory ring", "count.py": "the shared-memory ring",
                       "slow_count.py": "the trace FIFO"}


def voluntary_switches(pid):
    """How many times the process has gone to sleep of its own accord (each poll or wait)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("\nvoluntary_ctxt_switches:")[1].split()[0])


@pytest.mark.qemu
@pytest.mark.parametrize("tool", [TOOLS / "count", REPO / "analysis_tools" / "python" / "count.py"],
                         ids=["C", "Python"])
def test_a_tool_sleeps_while_the_ring_is_idle_and_is_woken_when_records_come(tmp_path, tool):
    """QEMU stopped mid-stream for a second: the tool empties the ring, then sleeps (polling, it
    woke some 5,000 times a second). Then QEMU goes on: its records after that are many times what
    the ring holds, so the plugin waits for room, and the run ends only if it woke the C tool
    (the Python one also wakes every 50 ms by itself); every record reaches the tool."""
    ring, counters = tmp_path / "trace.ring", tmp_path / "counters"
    create_ring(ring)
    reader = subprocess.Popen([tool, ring], stdout=subprocess.PIPE, text=True)
    plugin = f"{QEMU_DIR / 'libgmbeoo.so'},trace_shm_path={ring},counters_path={counters}"
    qemu = None
    try:
        assert reader.stdout.readline().strip() == "Ready to analyze"
        qemu = subprocess.Popen([QEMU_DIR / "qemu-x86_64", "-plugin", plugin, PROGRAMS / "mem_loop", "32768", "2"],
                                stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        with ShmRing(ring) as view:
            while view.tail < 1_000_000:
                assert qemu.poll() is None and time.monotonic() < deadline, "the tool did not take 1 M records"
                time.sleep(0.01)
        qemu.send_signal(signal.SIGSTOP)
        time.sleep(0.2)
        before = voluntary_switches(reader.pid)
        time.sleep(1)
        idle_wakeups = voluntary_switches(reader.pid) - before
        qemu.send_signal(signal.SIGCONT)
        assert qemu.wait(timeout=120) == 0
        reader.send_signal(signal.SIGUSR1)
        report, _ = reader.communicate(timeout=60)
    finally:
        for process in (qemu, reader):
            if process:
                process.kill()
                process.wait()
    assert idle_wakeups < 100
    written = parse_counters(counters.read_text())["num_of_events_written_to_trace_buf"]
    assert written > 10_000_000
    assert f"\nnum_of_records: {written}\n" in report
