"""End to end in user mode: the real qemu-x86_64, the real GMBEOO plugin, real FIFOs and tools."""
import os
import subprocess
import time

import numpy as np
import pytest

from conftest import (PROGRAMS, QEMU_DIR, TEST_TOOLS, TOOLS, analysis_counts, buffer_range,
                      code_buffer_resident_bytes, parse_sections, promised_counts, trace_info,
                      trace_into_fifo_reader, user_mode)
from memtracer import record
from memtracer.trace.fifo import pipe_max_size

COUNT = TOOLS / "count"
KNOWN = PROGRAMS / "known_accesses"
MEM_LOOP = PROGRAMS / "mem_loop"
PROTOCOL = "--dont_add_communications_with_host_to_workload"


def test_every_kind_of_access_is_traced_exactly(tracer):
    run = tracer(*user_mode("--workload_path_on_host", KNOWN, PROTOCOL, "--analysis_tool_path", COUNT,
                            "--print_trace_info"))
    assert run.returncode == 0, run.stderr
    counts = analysis_counts(run.stdout)
    promised = promised_counts(run.stdout)
    assert len(promised) == 13
    for kind, n in promised.items():
        assert counts[f"range_{kind}"] == n, kind
    assert counts["range_records"] == sum(promised.values())
    info = trace_info(run.stdout)
    assert info["num_of_events_written_to_trace_buf"] == counts["num_of_records"]
    assert info["num_of_GMBE_events_since_enabling_GMBEOO"] == counts["num_of_records"]
    assert counts["cpl_3"] == counts["num_of_records"]


def test_records_through_trace_fifo_path_are_well_formed(tracer, tmp_path):
    run, reader = trace_into_fifo_reader(tracer, tmp_path, user_mode("--workload_path_on_host", KNOWN, PROTOCOL))
    assert run.returncode == 0, run.stderr
    assert "analysis output" not in parse_sections(run.stdout)
    assert len(reader.data) % record.RECORD_SIZE == 0
    records = record.records_from_bytes(reader.data)
    assert len(records) == trace_info(run.stdout)["num_of_events_written_to_trace_buf"]
    assert (records["valid"] == record.VALID_BYTE).all()
    assert (records["reserved"] == 0).all()
    assert (records["vcpu"] == 0).all()
    assert (record.cpls(records) == 3).all()
    start, end = buffer_range(run.stdout)
    inside = records[(records["virt_addr"] >= start) & (records["virt_addr"] < end)]
    promised = promised_counts(run.stdout)
    for kind, n in promised.items():
        op, size, sign = kind.split("_")
        match = ((record.is_store(inside) == (op == "store"))
                 & (record.access_sizes(inside) == int(size))
                 & (record.is_sign_extended(inside) == (sign == "signed")))
        assert match.sum() == n, kind
    assert not record.is_big_endian(records).any()
    assert reader.pipe_size_while_tracing == pipe_max_size()


def traced_counts(tracer, *args):
    run = tracer(*user_mode(*args, "--analysis_tool_path", COUNT, "--print_trace_info"))
    assert run.returncode == 0, run.stderr
    return analysis_counts(run.stdout), trace_info(run.stdout)
def test_block_len_64_traces_everything(tracer):
    counts, info = traced_counts(tracer, "--workload_path_on_host", MEM_LOOP, "--workload_args", "64 1",
                                 "--log_of_GMBE_block_len", 64, "--log_of_GMBE_tracing_ratio", 0)
    assert counts["num_of_records"] == info["num_of_GMBE_events_since_enabling_GMBEOO"]


def test_wrapped_workload_is_traced_from_start_to_exit(tracer):
    kib = 256
    counts, info = traced_counts(tracer, "--workload_path_on_host", MEM_LOOP, "--workload_args", f"{kib} 1")
    longs = kib * 1024 // 8
    # One store per element, then strided loads: 1 + 1/2 + 1/4 + 1/8 of the elements.
    assert counts["stores"] >= longs
    assert counts["loads"] >= longs * 15 // 8
    assert counts["cpl_3"] == counts["num_of_records"] == info["num_of_events_written_to_trace_buf"]


def test_slow_consumer_loses_nothing(tracer):
    counts, info, _ = traced_counts_with(tracer, TEST_TOOLS / "slow_count.py", [])
    assert counts["leftover_bytes"] == 0
    assert counts["num_of_records"] == info["num_of_events_written_to_trace_buf"]
    assert counts["num_of_records"] == info["num_of_GMBE_events_since_enabling_GMBEOO"]
    assert "num_of_dropped_events" not in info and "num_of_missing_events" not in info


def test_drop_mode_counts_what_it_drops(tracer):
    counts, info, run = traced_counts_with(tracer, TEST_TOOLS / "slow_count.py", ["--drop_when_trace_fifo_full"])
    assert counts["leftover_bytes"] == 0
    assert info["num_of_dropped_events"] > 0
    # Asked for: a note on stderr, not a failure.
    assert run.stderr.strip() == (f"memory_tracer.py: {info['num_of_dropped_events']} records were dropped because "
                                  f"the analysis tool {TEST_TOOLS / 'slow_count.py'} read more slowly than the guest "
                                  "wrote (--drop_when_trace_fifo_full).")
    assert counts["num_of_records"] == info["num_of_events_written_to_trace_buf"]
    assert (info["num_of_events_written_to_trace_buf"] + info["num_of_dropped_events"]
            == info["num_of_GMBE_events_since_enabling_GMBEOO"])


def traced_counts_with(tracer, tool, extra):
    run = tracer(*user_mode("--workload_path_on_host", MEM_LOOP, "--workload_args", "2048 1",
                            "--analysis_tool_path", tool, "--print_trace_info", *extra))
    assert run.returncode == 0, run.stderr
    return analysis_counts(run.stdout), trace_info(run.stdout), run
def test_untraced_and_native_runs_print_info_and_duration_only(tracer):
    untraced = tracer(*user_mode("--workload_path_on_host", KNOWN, PROTOCOL, "--dont_trace", "--print_trace_info"))
    native = tracer("x", "y", "z", "--workload_path_on_host", KNOWN, PROTOCOL, "--dont_use_qemu",
                    "--print_trace_info")
    for run in (untraced, native):
        assert run.returncode == 0, run.stderr
        sections = parse_sections(run.stdout)
        assert set(sections) == {"workload info", "tracing_duration"}
        assert promised_counts(run.stdout)["store_8_unsigned"] == 111


def test_empty_workload_info_prints_no_section(tracer):
    run = tracer(*user_mode("--workload_path_on_host", MEM_LOOP, "--workload_args", "16 1", "--dont_trace"))
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[0].startswith("tracing_duration_in_milliseconds: ")
    assert "workload info:" not in run.stdout

def test_cpl3_filter_keeps_user_mode_records(tracer):
    counts, info = traced_counts(tracer, "--workload_path_on_host", MEM_LOOP, "--workload_args", "64 1",
                                 "--trace_only_CPL3_code_GMBE")
    assert counts["num_of_records"] > 10000
    assert counts["cpl_0"] == counts["cpl_1"] == counts["cpl_2"] == 0


def test_numpy_dtype_reads_records_written_by_c(tmp_path):
    # A record made by the C header's own helpers must decode field by field in NumPy.
    source = tmp_path / "make_record.c"
    source.write_text('#include <stdio.h>\n#include "gmbe_record.h"\nint main(void){\n'
                      ' struct gmbe_record r = { gmbe_vcpu_header(513) | GMBE_STORE_BIT | GMBE_SIGN_EXTEND_BIT'
                      ' | 3u | (2u << GMBE_CPL_SHIFT), 0x1122334455667788ull };\n'
                      ' fwrite(&r, sizeof r, 1, stdout); printf("%u %u %u", gmbe_vcpu(&r), gmbe_size(&r),'
                      ' gmbe_cpl(&r)); return 0; }\n')
    binary = tmp_path / "make_record"
    header_dir = os.path.join(os.path.dirname(__file__), "..", "qemu_patches")
    assert os.system(f"gcc -Wall -Werror -I{header_dir} -o {binary} {source}") == 0
    # (not os.popen(...).buffer.read(): the popen object can be collected, closing the pipe, first)
    output = subprocess.run([binary], stdout=subprocess.PIPE, check=True).stdout
    records = record.records_from_bytes(output[:16])
    assert records["vcpu"][0] == 513 == int(output[16:].split()[0])
    assert record.access_sizes(records)[0] == 8 == int(output[16:].split()[1])
    assert record.cpls(records)[0] == 2 == int(output[16:].split()[2])
    assert record.is_store(records)[0] and record.is_sign_extended(records)[0]
    assert records["valid"][0] == 0x80 and records["virt_addr"][0] == np.uint64(0x1122334455667788)


FORKER = r"""
#include <sys/wait.h>
#include <unistd.h>
int main(void)
{
    for (int i = 0; i < 5; i++) {
        if (fork() == 0) {
            volatile long sum = 0;
            for (long n = 0; n < 100000; n++) {
                sum += n;
            }
            _exit(0);
        }
    }
    while (wait(0) > 0) {
    }
    return 0;
}
"""


def test_children_of_a_forking_workload_are_said_to_be_untraced(tracer, tmp_path):
    (tmp_path / "forker.c").write_text(FORKER)
    subprocess.run(["gcc", "-O1", "-o", tmp_path / "forker", tmp_path / "forker.c"], check=True)
    run = tracer(*user_mode("--workload_path_on_host", tmp_path / "forker", "--analysis_tool_path", COUNT))
    assert run.returncode == 0, run.stderr
    assert run.stderr.strip() == ("memory_tracer.py: the workload forked 5 child processes while it was traced; "
                                  "in --user_mode only the process memory_tracer started is traced (its children "
                                  "ran untraced; full-system mode traces every process).")


@pytest.mark.qemu
def test_user_mode_leaves_its_code_buffer_to_the_translator():
    """qemu-x86_64 populates nothing ahead of its translator (full system does): a user-mode guest
    translates its first blocks as it starts, and populating then only competed with its start.
    sleep translates a few hundred blocks (well under 1 MiB of code): once it sleeps, its code
    buffer holds a huge page or two, not the 32 MiB that a full system populates."""
    sleeper = subprocess.Popen([QEMU_DIR / "qemu-x86_64", "/bin/sleep", "60"])
    try:
        deadline = time.monotonic() + 10
        while code_buffer_resident_bytes(sleeper.pid) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1)   # a thread populating ahead would have gone on meanwhile
        assert 0 < code_buffer_resident_bytes(sleeper.pid) <= 4 << 20
    finally:
        sleeper.kill()
        sleeper.wait()
