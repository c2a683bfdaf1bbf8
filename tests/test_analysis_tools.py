"""The analysis tools on synthetic traces with known answers, the trace file round trip, the export
formats line by line, the Python API against the C count, and the tools under memory_tracer."""
import os
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest

from conftest import PROGRAMS, REPO, TOOLS, analysis_counts, parse_sections, system, trace_info, user_mode
from memtracer.record import CPL_SHIFT, MARKER_INFO, RECORD_DTYPE, STORE_BIT, VALID_BYTE
from memtracer.trace.trace_file import TraceHeader, read_batches

PYTHON_TOOLS = REPO / "analysis_tools" / "python"


def make_records(addresses, stores=False, size_shift=3, cpl=3, vcpu=0):
    addresses = np.asarray(addresses, dtype=np.uint64)
    records = np.zeros(len(addresses), dtype=RECORD_DTYPE)
    records["virt_addr"] = addresses
    records["info"] = (np.broadcast_to(size_shift, len(addresses)) | (np.broadcast_to(stores, len(addresses)) * STORE_BIT)
                       | (np.broadcast_to(cpl, len(addresses)) << CPL_SHIFT)).astype(np.uint8)
    records["vcpu"] = vcpu
    records["valid"] = VALID_BYTE
    return records


def write_trace(path, records):
    path.write_bytes(records.tobytes())
    return path


def run_tool(tool, *args, record_format="standard"):
    """A C tool (or a Python one) on a file: the report, as {name: value} and as text."""
    command = [sys.executable, str(tool)] if str(tool).endswith(".py") else [str(tool)]
    result = subprocess.run([*command, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, timeout=120, env={**os.environ, "GMBE_RECORD_FORMAT": record_format})
    assert result.returncode == 0, result.stderr
    values = {}
    for line in result.stdout.splitlines():
        name, sep, value = line.partition(": ")
        if sep:
            values[name] = value
    return values, result.stdout


# ----------------------------------------------------------------- count

def test_count_by_kind_cpl_and_vcpu(tmp_path):
    records = np.concatenate([make_records(np.arange(10) * 8, stores=True, size_shift=2, cpl=0, vcpu=1),
                              make_records(np.arange(5) * 8, size_shift=0, cpl=3, vcpu=2)])
    values, _ = run_tool(TOOLS / "count", write_trace(tmp_path / "t.raw", records), "range=0x0-0x10")
    assert values["num_of_records"] == "15" and values["stores"] == "10" and values["loads"] == "5"
    assert values["cpl_0"] == "10" and values["cpl_3"] == "5"
    assert values["store_4_unsigned"] == "10" and values["load_1_unsigned"] == "5"
    assert values["vcpu_1"] == "10" and values["vcpu_2"] == "5"
    assert values["range_records"] == "4"   # addresses 0 and 8, twice


def compact_words(records, marker_kinds=()):
    """Standard records as --record_format compact's words; the markers' kinds in order."""
    info = records["info"].astype(np.uint64)
    words = (records["virt_addr"] & np.uint64((1 << 48) - 1)) | (info << np.uint64(48))
    words |= records["vcpu"].astype(np.uint64) << np.uint64(56)
    markers = np.flatnonzero(records["info"] == MARKER_INFO)
    words[markers] |= np.asarray(marker_kinds, dtype=np.uint64) << np.uint64(40)
    return words


def test_count_reads_compact_words_as_the_same_records_at_16_bytes(tmp_path):
    """count takes compact records without widening them (process_compact): its report on them is
    its report on the same records at 16 bytes, kernel addresses (bit 47 sign-extended), vCPUs,
    kinds, a range and markers (which split the words into phases) included."""
    kernel = make_records(np.uint64(0xFFFF888000000000) + np.arange(700, dtype=np.uint64) * np.uint64(8), stores=True, size_shift=2, cpl=0, vcpu=3)
    user = make_records(0x7FFF0000 + np.arange(500) * 4, size_shift=1, cpl=3, vcpu=1)
    marker = np.zeros(1, dtype=RECORD_DTYPE)
    marker["info"], marker["vcpu"], marker["virt_addr"], marker["reserved"][:, 0] = MARKER_INFO, 3, 42, 3
    records = np.concatenate([kernel[:300], marker, user, marker, kernel[300:]])
    standard = write_trace(tmp_path / "standard.raw", records)
    compact = write_trace(tmp_path / "compact.raw", compact_words(records, marker_kinds=[3, 3]))
    kernel_range = "range=0xffff888000000400-0xffff888000000c00"
    _, from_standard = run_tool(TOOLS / "count", standard, kernel_range)
    values, from_compact = run_tool(TOOLS / "count", compact, kernel_range, record_format="compact")
    assert from_compact == from_standard
    assert values["vcpu_3"] == "700" and values["range_records"] == "256" and values["markers"] == "2"
    assert values["phase_1_records"] == "500" and values["marker_2"] == "marker 42 vcpu=3"


# ----------------------------------------------------------------- cachesim

@pytest.mark.parametrize("addresses,l1,accesses,misses", [
    # 16 lines that fit a direct-mapped 1 KiB cache, ten times: only the first round misses.
    (np.tile(np.arange(16) * 64, 10), "1k:1:64", 160, 16),
    # Two lines in the same set of a direct-mapped cache, alternating: every access misses.
    (np.tile([0, 1024], 100), "1k:1:64", 200, 200),
    # One 8-way set: 8 lines cycling stay; 9 lines cycling thrash LRU (every access misses).
    (np.tile(np.arange(8) * 64, 10), "512:8:64", 80, 8),
    (np.tile(np.arange(9) * 64, 10), "512:8:64", 90, 90),
    # An 8-byte access at byte 60 spans two lines.
    ([60], "1k:1:64", 2, 2),
])
def test_cachesim_miss_counts_follow_from_the_geometry(tmp_path, addresses, l1, accesses, misses):
    values, _ = run_tool(TOOLS / "cachesim", write_trace(tmp_path / "t.raw", make_records(addresses)),
                         "--l1", l1, "--l2", "none")
    assert int(values["l1_accesses"]) == accesses
    assert int(values["l1_misses"]) == misses
    assert int(values["l1_hits"]) == accesses - misses
    assert "l2_accesses" not in values


def test_cachesim_l2_sees_only_l1_misses(tmp_path):
    # 32 lines: too many for a 1 KiB L1, all fit a 4 KiB L2.
    trace = write_trace(tmp_path / "t.raw", make_records(np.tile(np.arange(32) * 64, 5)))
    values, _ = run_tool(TOOLS / "cachesim", trace, "--l1", "1k:1:64", "--l2", "4k:4:64")
    assert values["l1_misses"] == "160" and values["l2_accesses"] == "160"
    assert values["l2_misses"] == "32" and values["l2_miss_ratio"] == "0.200000"


# ----------------------------------------------------------------- reuse

def test_reuse_distances_of_a_cycle(tmp_path):
    # Five lines in a cycle, ten times: 5 cold, then every access has 4 distinct lines between.
    trace = write_trace(tmp_path / "t.raw", make_records(np.tile(np.arange(5) * 64, 10)))
    values, _ = run_tool(TOOLS / "reuse", trace)
    assert values["cold"] == "5" and values["distance_4-7"] == "45" and values["accesses"] == "50"
    assert all(v == "0" for k, v in values.items() if k.startswith("distance_") and k != "distance_4-7")


def test_reuse_granularity_and_repeats(tmp_path):
    # Bytes 0..7 of one word, twice: as bytes, 8 cold then distance 7 each; as words, 1 cold then 0.
    trace = write_trace(tmp_path / "t.raw", make_records(np.tile(np.arange(8), 2), size_shift=0))
    as_bytes, _ = run_tool(TOOLS / "reuse", trace, "--granularity", "byte")
    assert as_bytes["cold"] == "8" and as_bytes["distance_4-7"] == "8"
    as_words, _ = run_tool(TOOLS / "reuse", trace, "granularity=word")
    assert as_words["cold"] == "1" and as_words["distance_0"] == "15"


def test_reuse_stays_exact_past_its_tree(tmp_path):
    # 3 M accesses over 1000 lines in a fixed random order: past the first compaction of the tree.
    order = np.random.default_rng(1).permutation(1000) * 64
    trace = write_trace(tmp_path / "t.raw", make_records(np.tile(order, 3000)))
    values, _ = run_tool(TOOLS / "reuse", trace)
    assert values["cold"] == "1000" and values["distance_512-1023"] == str(3_000_000 - 1000)


# ----------------------------------------------------------------- pages

def test_pages_counts_top_and_working_set(tmp_path):
    records = np.concatenate([make_records([0x1000] * 3), make_records([0x2000] * 2, stores=True),
                              make_records([0x3008]), make_records([0x1010])])
    values, _ = run_tool(TOOLS / "pages", write_trace(tmp_path / "t.raw", records), "--window", "3", "--top", "2")
    assert values["pages_touched"] == "3" and values["reads"] == "5" and values["writes"] == "2"
    assert values["top_1"] == "0x1000 reads=4 writes=0" and values["top_2"] == "0x2000 reads=0 writes=2"
    # Windows of 3 records: pages [1 1 1], [2 2 3], [1]: 1, 2 and 1 distinct pages.
    assert values["working_set_pages"] == "1 2 1" and values["working_set_peak"] == "2"
    huge, _ = run_tool(TOOLS / "pages", write_trace(tmp_path / "t.raw", records), "--page_size", "2m")
    assert huge["pages_touched"] == "1"


def test_plots_are_drawn(tmp_path):
    trace = write_trace(tmp_path / "t.raw", make_records(np.tile(np.arange(200) * 4096, 50)))
    for tool, png in (("pages", tmp_path / "heat.png"), ("reuse", tmp_path / "reuse.png")):
        values, _ = run_tool(TOOLS / tool, trace, "--plot", png, *(["--window", "1000"] if tool == "pages" else []))
        assert values["plot"] == str(png)
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert list(tmp_path.glob("gmbe-plot-*")) == []


# ----------------------------------------------------------------- record, dump, export

def synthetic_mix(n=5000):
    rng = np.random.default_rng(7)
    records = make_records(rng.integers(0, 1 << 47, n), stores=rng.integers(0, 2, n).astype(bool),
                           size_shift=rng.integers(0, 5, n), cpl=rng.choice([0, 3], n), vcpu=0)
    records["vcpu"] = rng.integers(0, 3, n)
    return records


def test_record_then_dump_round_trip(tmp_path):
    records = synthetic_mix()
    raw = write_trace(tmp_path / "t.raw", records)
    trace = tmp_path / "t.gmbe"
    values, _ = run_tool(TOOLS / "record", raw, "--output", trace)
    assert values["records"] == "5000" and values["vcpus"] == "3"
    with open(trace, "rb") as f:
        header = TraceHeader.read(f)
    assert header.record_count == 5000 and header.compression == 1 and header.vcpu_count == 3
    replayed = np.concatenate(list(read_batches(trace)))
    assert replayed.tobytes() == records.tobytes()
    _, text = run_tool(TOOLS / "dump", trace)
    lines = text.splitlines()
    assert len(lines) == 5000
    for i in (0, 1234, 4999):
        r = records[i]
        store = bool(r["info"] & STORE_BIT)
        assert lines[i] == (f"{i} vcpu={r['vcpu']} cpl={r['info'] >> 6} {'store' if store else 'load'} "
                            f"size={1 << (r['info'] & 7)} unsigned le 0x{int(r['virt_addr']):x}")
    # The same counts from the raw records and from the trace file.
    assert run_tool(TOOLS / "count", raw)[1] == run_tool(TOOLS / "count", trace)[1]


def test_dump_filters(tmp_path):
    records = synthetic_mix()
    trace = write_trace(tmp_path / "t.raw", records)
    _, text = run_tool(TOOLS / "dump", trace, "--cpl", "0", "--kind", "store", "--vcpu", "2")
    expected = np.flatnonzero(((records["info"] >> 6) == 0) & ((records["info"] & STORE_BIT) != 0)
                              & (records["vcpu"] == 2))
    assert [int(line.split()[0]) for line in text.splitlines()] == expected.tolist()
    start, end = 1 << 46, 1 << 47
    _, text = run_tool(TOOLS / "dump", trace, f"--range=0x{start:x}-0x{end:x}", "--limit", "10")
    assert len(text.splitlines()) == 10
    assert all(start <= int(line.split()[-1], 16) < end for line in text.splitlines())


def test_export_formats_line_by_line(tmp_path):
    records = np.concatenate([make_records([0x7ffd1234], size_shift=2), make_records([0x10], stores=True, size_shift=3),
                              make_records([0xffffffff81000000], size_shift=0)])
    trace = write_trace(tmp_path / "t.raw", records)
    expected = {
        # Dinero IV din: label (0 read, 1 write) and hex address without 0x.
        "din": ["0 7ffd1234", "1 10", "0 ffffffff81000000"],
        # Valgrind lackey --trace-mem=yes: data accesses start with a space; address %08lx, size.
        "lackey": [" L 7ffd1234,4", " S 00000010,8", " L ffffffff81000000,1"],
        # DRAMsim3 trace CPU: hex address, READ or WRITE, cycle (the record's index).
        "dramsim3": ["0x7ffd1234 READ 0", "0x10 WRITE 1", "0xffffffff81000000 READ 2"],
    }
    for fmt, lines in expected.items():
        out = tmp_path / f"out.{fmt}"
        values, _ = run_tool(TOOLS / "export", trace, "--format", fmt, "--output", out)
        assert out.read_text().splitlines() == lines
        assert values["lines"] == "3"


def test_a_plot_that_fails_says_why_in_the_report(tmp_path):
    # Under memory_tracer a tool's stderr is no terminal: the report's own line must say it.
    trace = write_trace(tmp_path / "t.raw", make_records(np.arange(100) * 4096))
    for tool in ("pages", "reuse"):
        values, _ = run_tool(TOOLS / tool, trace, "--plot", tmp_path / "no_such_dir" / "x.png")
        assert values["plot"] == (f"failed: FileNotFoundError: [Errno 2] No such file or directory: "
                                  f"'{tmp_path / 'no_such_dir' / 'x.png'}'")


def test_bad_tool_options_are_one_line(tmp_path):
    trace = write_trace(tmp_path / "t.raw", make_records([0]))
    result = subprocess.run([TOOLS / "cachesim", trace, "--l1", "33k:3:60"], stderr=subprocess.PIPE, text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == ("cachesim: l1 must be SIZE:WAYS:LINE with a power-of-two line and number of "
                                     "sets (e.g. 32k:8:64), but 33k:3:60 isn't")
    result = subprocess.run([TOOLS / "export", trace, "--format", "csv"], stderr=subprocess.PIPE, text=True)
    assert result.stderr.strip() == "export: format must be din, lackey, dramsim3 or parquet, but csv isn't"


@pytest.mark.parametrize("tool,args,message", [
    ("pages", ["--top", "-1"], "pages: top must be a whole number, but -1 isn't"),
    ("pages", ["--window", "0"], "pages: window must be a positive number of records, but 0 isn't"),
    ("dump", ["--limit", "-5"], "dump: limit must be a number of lines, but -5 isn't"),
])
def test_negative_counts_are_refused(tmp_path, tool, args, message):
    trace = write_trace(tmp_path / "t.raw", make_records([0]))
    result = subprocess.run([TOOLS / tool, trace, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == message and result.stdout == ""


def test_a_file_of_text_is_not_taken_for_records(tmp_path):
    whole = tmp_path / "text_1024"
    whole.write_text(("root:x:0:0:root:/root:/bin/bash" * 40)[:1024])   # a whole number of records in size
    ragged = tmp_path / "text_1221"
    ragged.write_text("x" * 1221)
    for path, reason in ((whole, "its first 16 bytes are not a record (byte 7 is 0x30, not 0x80)"),
                         (ragged, "its 1221 bytes are not a whole number of 16-byte records")):
        result = subprocess.run([TOOLS / "count", path], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert result.returncode == 1
        assert result.stderr.strip() == f"{path} is neither a trace file nor raw records: {reason}"
        assert "num_of_records" not in result.stdout


# ----------------------------------------------------------------- the Python API

def test_python_count_agrees_with_c_count_on_a_trace_file(tmp_path):
    raw = write_trace(tmp_path / "t.raw", synthetic_mix(200_000))
    trace = tmp_path / "t.gmbe"
    run_tool(TOOLS / "record", raw, "--output", trace)
    for source in (raw, trace):
        assert run_tool(PYTHON_TOOLS / "count.py", source, "range=0x0-0x400000000000")[1] == \
            run_tool(TOOLS / "count", source, "range=0x0-0x400000000000")[1]


def feed_fifo(path, data, chunks):
    fd = os.open(path, os.O_WRONLY)
    for piece in np.array_split(np.frombuffer(data, dtype=np.uint8), chunks):
        os.write(fd, piece.tobytes())
    os.close(fd)


def test_python_api_follows_the_protocol_on_a_fifo(tmp_path):
    """Ready, records in uneven pieces (split inside records), SIGUSR1, the report between markers."""
    records = synthetic_mix(100_000)
    fifo = tmp_path / "trace.fifo"
    os.mkfifo(fifo)
    tool = subprocess.Popen([sys.executable, PYTHON_TOOLS / "count.py", fifo, "some", "info"],
                            stdout=subprocess.PIPE, text=True)
    assert tool.stdout.readline() == "Ready to analyze\n"
    writer = threading.Thread(target=feed_fifo, args=(fifo, records.tobytes(), 37))
    writer.start()
    writer.join()
    tool.send_signal(signal.SIGUSR1)
    output = tool.communicate(timeout=30)[0]
    assert output.startswith("-----begin analysis output-----\n")
    assert output.endswith("-----end analysis output-----\n")
    assert "num_of_records: 100000\n" in output


def test_example_tools(tmp_path):
    records = np.concatenate([make_records(np.tile([0x1000, 0x2000], 500), size_shift=3),
                              make_records([0x5000] * 10, stores=True, size_shift=1)])
    trace = write_trace(tmp_path / "t.raw", records)
    values, _ = run_tool(PYTHON_TOOLS / "size_histogram.py", trace)
    assert values["load_8_bytes"].split()[0] == "1000" and values["store_2_bytes"].split()[0] == "10"
    png = tmp_path / "heat.png"
    values, _ = run_tool(PYTHON_TOOLS / "page_heatmap.py", trace, "--window", "100", "--plot", png)
    assert values["windows"] == "11" and values["page_0x1000"] == "500" and values["page_0x5000"] == "10"
    assert png.read_bytes()[:4] == b"\x89PNG"


# ----------------------------------------------------------------- under memory_tracer

def test_record_under_memory_tracer_then_replay(tracer, tmp_path):
    trace = tmp_path / "run.gmbe"
    run = tracer(*system("--workload_path_on_host", PROGRAMS / "known_accesses",
                         "--dont_add_communications_with_host_to_workload", "--trace_only_CPL3_code_GMBE",
                         "--analysis_tool_path", TOOLS / "record", "--analysis_tool_args", f"--output {trace}",
                         "--print_trace_info"))
    assert run.returncode == 0, run.stderr
    recorded = analysis_counts_loose(run.stdout)
    assert recorded["records"] == trace_info(run.stdout)["num_of_events_written_to_trace_buf"]
    with open(trace, "rb") as f:
        header = TraceHeader.read(f)
    assert (header.trace_only_cpl3, header.log_of_block_len, header.log_of_tracing_ratio) == (1, 0, 0)
    info_words = parse_sections(run.stdout)["workload info"].split()
    values, _ = run_tool(TOOLS / "count", trace, *info_words)
    assert values["range_store_8_unsigned"] == "111" and values["cpl_0"] == "0"


def analysis_counts_loose(stdout):
    lines = parse_sections(stdout)["analysis output"].splitlines()
    return {k: int(v) for k, _, v in (line.partition(": ") for line in lines) if v.isdigit()}


@pytest.mark.parametrize("tool", [PYTHON_TOOLS / "count.py", TOOLS / "count"])
@pytest.mark.parametrize("transport", [[], ["--shared_memory_ring"]])
def test_tools_under_memory_tracer_lose_nothing(tracer, transport, tool):
    run = tracer(*user_mode("--workload_path_on_host", PROGRAMS / "mem_loop", "--workload_args", "4096 2",
                            "--analysis_tool_path", tool, "--print_trace_info", *transport))
    assert run.returncode == 0, run.stderr
    counts = analysis_counts(run.stdout)
    assert counts["num_of_records"] == trace_info(run.stdout)["num_of_events_written_to_trace_buf"] > 1_000_000
    assert not [p for p in os.listdir("/dev/shm") if p.startswith("memory_tracer-")]


@pytest.mark.parametrize("tool", [PYTHON_TOOLS / "count.py", TOOLS / "count"])
def test_shared_memory_ring_in_full_system_mode(tracer, tool):
    run = tracer(*system("--workload_path_on_host", PROGRAMS / "known_accesses",
                         "--dont_add_communications_with_host_to_workload", "--shared_memory_ring",
                         "--analysis_tool_path", tool, "--print_trace_info"))
    assert run.returncode == 0, run.stderr
    counts = analysis_counts(run.stdout)
    assert counts["range_store_8_unsigned"] == 111 and counts["cpl_0"] > 0
    assert counts["num_of_records"] == trace_info(run.stdout)["num_of_events_written_to_trace_buf"]
