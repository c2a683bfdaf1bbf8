"""What holds alike in user mode and in full system, run in both: sampling exactly as the
original's formula says, --timeout, a crashing workload, the info words reaching the tool, and the
accesses that QEMU's helpers make in blocks."""
import subprocess
import time

import pytest

from conftest import PROGRAMS, TEST_TOOLS, TOOLS, analysis_counts, parse_sections, system, trace_info, user_mode
from memtracer.record import access_sizes, is_store
from memtracer.run.window import window_in_log
from memtracer.trace.trace_file import read_batches

MODES = {"user": user_mode, "system": system}
COUNT = TOOLS / "count"
MEM_LOOP = PROGRAMS / "mem_loop"
PROTOCOL = "--dont_add_communications_with_host_to_workload"


@pytest.fixture(params=MODES)
def traced(request, tracer):
    """run(*args) in the mode, to the C count with the trace info: (run, counts, trace info)."""
    def run(*args):
        result = tracer(*MODES[request.param](*args, "--analysis_tool_path", COUNT, "--print_trace_info"))
        assert result.returncode == 0, result.stderr
        return result, analysis_counts(result.stdout), trace_info(result.stdout)
    return run


@pytest.mark.parametrize("block,ratio,expected", [(0, 64, 1), (3, 61, 8)])
def test_sampling_edge_cases_are_exact(traced, block, ratio, expected):
    _, counts, info = traced("--workload_path_on_host", MEM_LOOP, "--workload_args", "64 1",
                             "--log_of_GMBE_block_len", block, "--log_of_GMBE_tracing_ratio", ratio)
    assert counts["num_of_records"] == info["num_of_events_written_to_trace_buf"] == expected
    assert info["num_of_GMBE_events_since_enabling_GMBEOO"] > 10000


def test_sampling_one_block_in_sixteen(traced):
    _, counts, info = traced("--workload_path_on_host", MEM_LOOP, "--workload_args", "256 1",
                             "--log_of_GMBE_block_len", 3, "--log_of_GMBE_tracing_ratio", 4)
    events = info["num_of_GMBE_events_since_enabling_GMBEOO"]
    # Blocks of 8 traced, 120 skipped: exactly this many of the first `events` indices.
    full, rest = divmod(events, 128)
    assert counts["num_of_records"] == info["num_of_events_written_to_trace_buf"] == full * 8 + min(rest, 8)
    assert info["actual_tracing_ratio"] in (15, 16)


def test_sampling_with_long_gaps_is_exact(traced):
    """Blocks of 16 traced, 16368 skipped: the vCPU runs blocks that only count accesses through the
    gaps (the patched QEMU's counting translation), and still keeps exactly the formula's events."""
    _, counts, info = traced("--workload_path_on_host", MEM_LOOP, "--workload_args", "4096 2",
                             "--log_of_GMBE_block_len", 4, "--log_of_GMBE_tracing_ratio", 10)
    full, rest = divmod(info["num_of_GMBE_events_since_enabling_GMBEOO"], 16384)
    assert counts["num_of_records"] == info["num_of_events_written_to_trace_buf"] == full * 16 + min(rest, 16)
    assert full > 30 and "num_of_dropped_events" not in info


def test_timeout_stops_the_workload_and_keeps_its_records(traced):
    run, counts, info = traced("--workload_path_on_host", PROGRAMS / "spin_forever", "--timeout", 2)
    assert "--timeout 2 s" in run.stderr
    assert parse_sections(run.stdout)["tracing_duration"] >= 2000
    assert counts["num_of_records"] > 0
    assert counts["num_of_records"] == info["num_of_events_written_to_trace_buf"]


def test_timeout_stops_a_workload_that_spins_without_touching_memory(traced, tmp_path):
    """A loop of one block without accesses: a block that writes records may leave its exit check
    to its room check, which this one would never fail; it must keep its own, or neither the
    guest's timer (for the runner to end the workload) nor QMP's stop reaches the vCPU."""
    source = tmp_path / "register_spin.c"
    source.write_text("int main(void)\n{\n    for (;;) {\n    }\n}\n")
    program = tmp_path / "register_spin"
    subprocess.run(["gcc", "-O1", "-static", "-o", program, source], check=True)
    run, counts, info = traced("--workload_path_on_host", program, "--timeout", 2)
    assert "--timeout 2 s" in run.stderr
    assert counts["num_of_records"] == info["num_of_events_written_to_trace_buf"]


@pytest.mark.parametrize("mode", MODES)
def test_verbose_log_gives_the_window_on_the_monotonic_clock(tracer, mode):
    """-v logs the trace window's ends on the host's CLOCK_MONOTONIC, by which bench/profile.py keeps
    perf's samples of the window alone: within the run, and as long as the duration printed."""
    before = time.monotonic()
    run = tracer(*MODES[mode]("--workload_path_on_host", MEM_LOOP, "--workload_args", "4096 2", "--dont_trace", "-v"))
    after = time.monotonic()
    window = window_in_log(run.stderr)
    assert run.returncode == 0 and window, run.stderr
    start, end = window
    assert before < start < end < after
    assert abs((end - start) * 1000 - parse_sections(run.stdout)["tracing_duration"]) <= 1


@pytest.mark.parametrize("mode", MODES)
def test_crashing_workload_is_reported_after_its_trace(tracer, mode):
    run = tracer(*MODES[mode]("--workload_path_on_host", PROGRAMS / "crash_after_work",
                              "--analysis_tool_path", COUNT, "--strict_exit_status"))
    assert run.returncode == 3
    assert "killed by SIGSEGV" in run.stderr
    assert analysis_counts(run.stdout)["stores"] >= 4096


@pytest.mark.parametrize("mode", MODES)
def test_info_words_reach_the_analysis_tool_as_argv(tracer, mode):
    run = tracer(*MODES[mode]("--workload_path_on_host", PROGRAMS / "known_accesses", PROTOCOL,
                              "--analysis_tool_path", TEST_TOOLS / "echo_args.py"))
    assert run.returncode == 0, run.stderr
    sections = parse_sections(run.stdout)
    assert sections["analysis output"].split() == sections["workload info"].split()
    assert len(sections["workload info"].split()) == 14


def global_address(program, name):
    """Where a global of a static, position-dependent program lies: the same in every run."""
    symbols = subprocess.run(["nm", program], capture_output=True, text=True, check=True).stdout
    return next(int(address, 16) for address, _, symbol in map(str.split, symbols.splitlines()) if symbol == name)


@pytest.mark.parametrize("mode", MODES)
def test_accesses_that_helpers_make_in_blocks_are_traced(tracer, tmp_path, mode):
    """fxsave, fxrstor and the x87's 80-bit fldt and fstpt reach guest memory from QEMU's helpers,
    a block at a time, not through the generated code's accesses: every one of them is traced."""
    program, rounds, trace = PROGRAMS / "helper_paths", 20, tmp_path / "helpers.gmbe"
    run = tracer(*MODES[mode]("--workload_path_on_host", program, "--workload_args", rounds,
                              "--analysis_tool_path", TOOLS / "record", "--analysis_tool_args", f"--output {trace}"))
    assert run.returncode == 0, run.stderr
    xmm_area = global_address(program, "fx_area") + 160      # fxsave's layout: XMM0-15 at 160..415
    extended = global_address(program, "extended")
    seen = {}
    for batch in read_batches(trace):
        for what, address, end, size in [("xmm", xmm_area, xmm_area + 256, 8), ("mantissa", extended, extended + 8, 8),
                                         ("exponent", extended + 8, extended + 10, 2)]:
            mine = batch[(batch["virt_addr"] >= address) & (batch["virt_addr"] < end) & (access_sizes(batch) == size)]
            stores = int(is_store(mine).sum())
            seen[what, "store"] = seen.get((what, "store"), 0) + stores
            seen[what, "load"] = seen.get((what, "load"), 0) + len(mine) - stores
    # Each round: fxsave stores the 16 XMM registers as 32 quadwords and fxrstor loads them back;
    # fldt loads a quadword and a word, and fstpt stores them.
    assert seen == {("xmm", "store"): 32 * rounds, ("xmm", "load"): 32 * rounds,
                    ("mantissa", "store"): rounds, ("mantissa", "load"): rounds,
                    ("exponent", "store"): rounds, ("exponent", "load"): rounds}
