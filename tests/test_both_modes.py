"""What holds alike in user mode and in full system, run in both: sampling exactly as the
original's formula says, --timeout, a crashing workload, and the info words reaching the tool."""
import pytest

from conftest import PROGRAMS, TEST_TOOLS, TOOLS, analysis_counts, parse_sections, system, trace_info, user_mode

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


def test_timeout_stops_the_workload_and_keeps_its_records(traced):
    run, counts, info = traced("--workload_path_on_host", PROGRAMS / "spin_forever", "--timeout", 2)
    assert "--timeout 2 s" in run.stderr
    assert parse_sections(run.stdout)["tracing_duration"] >= 2000
    assert counts["num_of_records"] > 0
    assert counts["num_of_records"] == info["num_of_events_written_to_trace_buf"]


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
