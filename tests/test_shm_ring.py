"""The shared-memory ring between the plugin and the Python API: head and tail are read and
written whole, never torn, while the other side moves them (fast tier); and the multi-vCPU ring
run that once gave wrong contents, repeated under load (end to end)."""
import os
import subprocess
import sys

import pytest

from conftest import PROGRAMS, REPO, TEST_TOOLS, TOOLS, analysis_counts, system
from memtracer.trace.shm_ring import HEAD_OFFSET, ShmRing, create_ring

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
