"""Issue 6 end to end, with the real QEMU: regions and markers from guest code, the instruction
limit, two vCPUs (vCPU indices, the sharing tool, per-vCPU trace files), extended and compact
records, the SSH/SFTP transport, and tracing started and stopped from the monitor."""
import hashlib
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import (BUILD, PROGRAMS, REPO, TEST_TOOLS, TOOLS, executable, parse_sections,
                      processes_mentioning, promised_counts, system, user_mode)
from memtracer.record import CPL_SHIFT, STORE_BIT, is_marker
from memtracer.trace.trace_file import TraceHeader, read_batches

MARKED_LOOP = PROGRAMS / "marked_loop"
ITERATIONS = 5000
SSH_KEY = BUILD / "guest_image" / "id_memory_tracer"
FORMATS = ["standard", "extended", "compact"]


MODES = {"system": system, "user": user_mode}


def report(stdout):
    """The analysis output's `name: value` lines, values as text (marker lines are not numbers)."""
    lines = parse_sections(stdout)["analysis output"].splitlines()
    return {name: value for name, _, value in (line.partition(": ") for line in lines)}


def info_words(stdout):
    return parse_sections(stdout)["workload info"].split()


def marked_loop(*args, iterations=ITERATIONS):
    return ["--workload_path_on_host", MARKED_LOOP, "--workload_args", str(iterations),
            "--dont_add_communications_with_host_to_workload", *args]


def assert_exactly_the_loop(out, iterations=ITERATIONS):
    assert out["num_of_records"] == str(2 * iterations)
    assert out["range_records"] == str(2 * iterations)
    assert out["range_store_8_unsigned"] == str(iterations)
    assert out["range_load_8_unsigned"] == str(iterations)
    assert [out["marker_1"], out["marker_2"], out["marker_3"]] == [
        "region_begin 0 vcpu=0", "marker 1 vcpu=0", "region_end 0 vcpu=0"]
    assert [out[f"phase_{k}_records"] for k in range(4)] == ["0", str(iterations), str(iterations), "0"]


# ------------------------------------------------------------------ regions and markers

def test_marked_region_gives_exactly_the_loops_accesses_full_system(tracer):
    # CPL3 only: a timer interrupt inside the region would add kernel accesses. A process that the
    # guest's scheduler runs inside the region still adds its own (a region holds for every
    # process): a run has more records, never fewer, so the fewest of a few runs are the loop's.
    reports = []
    for _ in range(3):
        run = tracer(*system(*marked_loop("--analysis_tool_path", TOOLS / "count", "--trace_only_marked_regions",
                                          "--trace_only_CPL3_code_GMBE")))
        assert run.returncode == 0, run.stderr
        reports.append(report(run.stdout))
        if reports[-1]["num_of_records"] == str(2 * ITERATIONS):
            break
    assert_exactly_the_loop(min(reports, key=lambda out: int(out["num_of_records"])))


@pytest.mark.parametrize("record_format", FORMATS)
def test_marked_region_gives_exactly_the_loops_accesses_in_every_format(tracer, record_format):
    run = tracer(*user_mode(*marked_loop("--analysis_tool_path", TOOLS / "count", "--trace_only_marked_regions",
                                         "--record_format", record_format, "--print_trace_info")))
    assert run.returncode == 0, run.stderr
    assert_exactly_the_loop(report(run.stdout))
    assert "num_of_markers: 3" in parse_sections(run.stdout)["trace info"]


@pytest.mark.parametrize("record_format", FORMATS)
def test_python_tools_see_markers_between_their_batches(tracer, record_format):
    run = tracer(*user_mode(*marked_loop("--analysis_tool_path", TEST_TOOLS / "marker_phases.py",
                                         "--record_format", record_format)))
    assert run.returncode == 0, run.stderr
    out = report(run.stdout)
    assert int(out["phase_0"]) >= 2 * 777 and int(out["phase_3"]) >= 777   # outside the region: traced too
    assert out["phase_1"] == out["phase_2"] == str(ITERATIONS)
    assert [out["marker_1"], out["marker_2"], out["marker_3"]] == [
        "region_begin 0 vcpu=0", "marker 1 vcpu=0", "region_end 0 vcpu=0"]
    traced = sum(int(out[f"phase_{k}"]) for k in range(4))
    assert out["with_pc"] == (str(traced) if record_format == "extended" else "0")
    assert out["with_phys"] == "0"   # user mode has no physical addresses


def test_markers_cost_nothing_to_untraced_code_but_appear_in_the_stream(tracer):
    run = tracer(*user_mode(*marked_loop("--analysis_tool_path", TOOLS / "count")))
    assert run.returncode == 0, run.stderr
    out = report(run.stdout)
    assert out["markers"] == "3"
    assert out["phase_1_records"] == out["phase_2_records"] == str(ITERATIONS)
    assert int(out["range_records"]) == 2 * ITERATIONS + 3 * 777


# ------------------------------------------------------------------ instruction limit

def test_instruction_limit_cuts_where_it_says(tracer):
    # marked_loop's store loop is 3 instructions per store: 3000 more instructions, 1000 more stores.
    def run_with(limit):
        run = tracer(*user_mode(*marked_loop("--analysis_tool_path", TOOLS / "count", "--print_trace_info",
                                             "--max_instructions", str(limit), iterations=100000)))
        assert run.returncode == 0, run.stderr
        return run
    first, second = run_with(30000), run_with(33000)
    stores = [int(report(r.stdout)["range_store_8_unsigned"]) for r in (first, second)]
    assert stores[1] - stores[0] == 1000
    assert report(first.stdout)["marker_2"] == "instruction_limit 30000 vcpu=0"
    assert report(first.stdout)["phase_2_records"] == "0"   # nothing after the limit
    assert "instruction_limit_reached: yes" in parse_sections(first.stdout)["trace info"]
    assert int(report(first.stdout)["num_of_records"]) < 100000


@pytest.mark.parametrize("mode", ["system", "user"])
def test_instruction_limit_counts_inside_marked_regions_only(tracer, mode):
    # Before its region, marked_loop runs 777 stores and loads, the guest kernel much more: none
    # of that may spend the budget of a run that traces only the region.
    def stores_with(limit):
        run = tracer(*MODES[mode](*marked_loop("--analysis_tool_path", TOOLS / "count", "--trace_only_marked_regions",
                                               "--max_instructions", str(limit), iterations=100000)))
        assert run.returncode == 0, run.stderr
        assert report(run.stdout)["marker_2"] == f"instruction_limit {limit} vcpu=0"
        return int(report(run.stdout)["range_store_8_unsigned"])

    def stores_without_interrupts(limit):
        # Full system: an interrupt that comes inside the region spends the budget too (its kernel
        # code runs in the region), so a run has fewer stores, never more. The most of a few runs
        # is the loop's own; a budget spent outside the region would lower them all.
        most = 0
        for _ in range(3 if mode == "system" else 1):
            most = max(most, stores_with(limit))
            if most >= limit // 3 - 10:
                break
        return most
    first, second = stores_without_interrupts(30000), stores_without_interrupts(33000)
    assert second - first == 1000 and 9990 <= first <= 10000   # 3 instructions a store


# ------------------------------------------------------------------ two vCPUs

def shared_lines(*args, rounds=200):
    return system("--smp", "2", "--workload_path_on_host", PROGRAMS / "shared_lines", "--workload_args", str(rounds),
                  "--dont_add_communications_with_host_to_workload", *args)


def test_two_vcpus_sharing_report(tracer):
    run = tracer(*shared_lines("--analysis_tool_path", TOOLS / "sharing"))
    assert run.returncode == 0, run.stderr
    private0, private1, shared = (int(w.split("=")[1], 16) for w in info_words(run.stdout) if w.startswith("watch="))
    watched = {}
    for line in parse_sections(run.stdout)["analysis output"].splitlines():
        if line.startswith("watched_line "):
            address, _, fields = line[len("watched_line "):].partition(": ")
            watched[int(address, 16)] = dict(f.split("=") for f in fields.split())
    assert watched[private0]["writers"] == "0" and watched[private0]["writes"] == str(200 * 10)
    assert watched[private1]["writers"] == "1" and watched[private1]["writes"] == str(200 * 10)
    for line in (private0, private1):
        assert watched[line]["read_after_remote_write"] == watched[line]["write_after_remote_access"] == "0"
    assert watched[shared]["writers"] == "0,1" and watched[shared]["writes"] == str(2 * 200)
    assert int(watched[shared]["write_after_remote_access"]) > 0


def test_one_trace_file_per_vcpu(tracer, tmp_path):
    directory = tmp_path / "traces"
    directory.mkdir()
    run = tracer(*shared_lines("--trace_files_per_vcpu", directory))
    assert run.returncode == 0, run.stderr
    files = parse_sections(run.stdout)["trace files"].splitlines()
    assert [f.split(":")[0] for f in files] == [str(directory / "vcpu0.gmbe"), str(directory / "vcpu1.gmbe")]
    private = [int(w.split("=")[1], 16) for w in info_words(run.stdout) if w.startswith("watch=")][:2]
    for vcpu, line in enumerate(files):
        path = directory / f"vcpu{vcpu}.gmbe"
        with open(path, "rb") as f:
            header = TraceHeader.read(f)
        records = np.concatenate([b.copy() for b in read_batches(path)])
        assert header.record_count == len(records) == int(line.split(": ")[1].split()[0])
        assert set(records["vcpu"].tolist()) == {vcpu}
        stores = records[(records["info"] & STORE_BIT) != 0]
        lines = stores["virt_addr"] & ~np.uint64(63)
        assert np.count_nonzero(lines == private[vcpu]) == 200 * 10
        assert np.count_nonzero(lines == private[1 - vcpu]) == 0
        # Every tool reads the files again.
        replay = subprocess.run([TOOLS / "count", path], stdout=subprocess.PIPE, text=True, check=True).stdout
        assert f"vcpu_{vcpu}: {len(records) - np.count_nonzero(is_marker(records))}" in replay


# ------------------------------------------------------------------ richer records

def test_extended_records_carry_the_physical_addresses_of_the_guests_pagemap(tracer, tmp_path):
    trace = tmp_path / "extended.gmbe"
    run = tracer(*system("--workload_path_on_host", PROGRAMS / "pagemap_pages", "--workload_args", "16",
                         "--dont_add_communications_with_host_to_workload", "--record_format", "extended",
                         "--analysis_tool_path", TOOLS / "record", "--analysis_tool_args", f"--output {trace}"))
    assert run.returncode == 0, run.stderr
    pages = {int(v, 16): int(p, 16) for v, p in (w[len("page="):].split(":") for w in info_words(run.stdout))}
    assert len(pages) == 16
    with open(trace, "rb") as f:
        assert TraceHeader.read(f).record_size == 32
    records = np.concatenate([b.copy() for b in read_batches(trace)])
    user_stores = records[((records["info"] & STORE_BIT) != 0) & ((records["info"] >> CPL_SHIFT) == 3)]
    seen = {}
    for r in user_stores:
        page = int(r["virt_addr"]) & ~0xFFF
        if page in pages and int(r["virt_addr"]) & 0xFFF == 8:
            seen[page] = (int(r["phys_addr"]), int(r["pc"]))
    assert sorted(seen) == sorted(pages)
    for page, (phys, pc) in seen.items():
        assert phys == pages[page] + 8
        assert 0x400000 <= pc < 0x500000   # the static program's text


@pytest.mark.parametrize("record_format", FORMATS)
def test_every_tool_reads_every_format(tracer, tmp_path, record_format):
    trace = tmp_path / "trace.gmbe"
    common = user_mode("--workload_path_on_host", PROGRAMS / "known_accesses",
                       "--dont_add_communications_with_host_to_workload", "--record_format", record_format)
    counted = tracer(*common, "--analysis_tool_path", TOOLS / "count")
    recorded = tracer(*common, "--analysis_tool_path", TOOLS / "record", "--analysis_tool_args", f"--output {trace}")
    python = tracer(*common, "--analysis_tool_path", REPO / "analysis_tools" / "python" / "count.py")
    for run in (counted, recorded, python):
        assert run.returncode == 0, run.stderr
    out = report(counted.stdout)
    for kind, n in promised_counts(counted.stdout).items():
        assert out[f"range_{kind}"] == str(n)
    assert report(python.stdout)["range_records"] == out["range_records"]
    range_word = next(w for w in info_words(counted.stdout) if w.startswith("range="))
    replay = subprocess.run([TOOLS / "count", trace, range_word], stdout=subprocess.PIPE, text=True, check=True)
    assert f"range_records: {out['range_records']}" in replay.stdout
    dump = subprocess.run([TOOLS / "dump", trace, "--limit", "1"], stdout=subprocess.PIPE, text=True, check=True)
    assert (" phys=0x" in dump.stdout) == (record_format == "extended")


# ------------------------------------------------------------------ SSH/SFTP

def test_ssh_sends_a_directory_and_runs_from_it_with_a_key(tracer, tmp_path):
    files = tmp_path / "workload"
    (files / "sub").mkdir(parents=True)
    (files / "data.bin").write_bytes(os.urandom(200_000))
    (files / "sub" / "note.txt").write_text("a file in a subdirectory\n")
    executable(files / "check.sh",
               "#!/bin/sh\necho -----begin workload info-----\n"
               "cd /root/workload && find . -type f | sort | while read f; do "
               "echo \"$f=$(sha256sum < \"$f\" | cut -d' ' -f1)\"; done\n"
               "echo -----end workload info-----\necho Ready to trace. Press enter to continue\nread line\n"
               "cat data.bin > /dev/null\necho Stop tracing\n")
    run = tracer(*system("--ssh_key", SSH_KEY, "--workload_files", files, "--workload_path_on_guest",
                         "/root/workload/check.sh", "--dont_add_communications_with_host_to_workload",
                         "--analysis_tool_path", TOOLS / "count"))
    assert run.returncode == 0, run.stderr
    expected = sorted(f"./{p.relative_to(files)}={hashlib.sha256(p.read_bytes()).hexdigest()}"
                      for p in files.rglob("*") if p.is_file())
    assert info_words(run.stdout) == expected
    assert int(report(run.stdout)["num_of_records"]) > 200_000 // 8   # cat read the data


def test_ssh_sends_the_workload_program(tracer):
    run = tracer(*system("--ssh_key", SSH_KEY, "--workload_path_on_host", PROGRAMS / "known_accesses",
                         "--dont_add_communications_with_host_to_workload", "--analysis_tool_path", TOOLS / "count"))
    assert run.returncode == 0, run.stderr
    out = report(run.stdout)
    assert all(out[f"range_{kind}"] == str(n) for kind, n in promised_counts(run.stdout).items())


def test_ssh_with_a_key_the_guest_refuses(tracer, tmp_path):
    import paramiko
    wrong = tmp_path / "wrong_key"
    paramiko.ECDSAKey.generate(bits=256).write_private_key_file(str(wrong))
    run = tracer(*system("--ssh_key", wrong, "--workload_path_on_host", PROGRAMS / "known_accesses",
                         "--analysis_tool_path", TOOLS / "count"))
    assert run.returncode == 1
    assert run.stderr.strip() == (f"ssh_key must be a key the guest accepts for root, but {wrong} isn't "
                                  "(authentication failed).")
    assert processes_mentioning("qemu-system-x86_64") == []


def test_ssh_key_that_is_encrypted(tracer, tmp_path):
    import paramiko
    encrypted = tmp_path / "encrypted_key"
    paramiko.ECDSAKey.generate(bits=256).write_private_key_file(str(encrypted), password="secret")
    run = tracer(*system("--ssh_key", encrypted, "--workload_path_on_host", PROGRAMS / "known_accesses",
                         "--analysis_tool_path", TOOLS / "count"))
    assert run.returncode == 1
    assert run.stderr.strip() == (f"ssh_key must be an unencrypted private key file, but {encrypted} is encrypted "
                                  "(memory_tracer never asks for a passphrase).")


def test_ssh_key_that_is_not_a_key(tracer, tmp_path):
    bad = tmp_path / "not_a_key"
    bad.write_text("not a key\n")
    run = tracer(*system("--ssh_key", bad, "--workload_path_on_host", PROGRAMS / "known_accesses",
                         "--analysis_tool_path", TOOLS / "count"))
    assert run.returncode == 1
    assert run.stderr.startswith(f"ssh_key must be a private key file (Ed25519, ECDSA or RSA), but {bad} isn't (")
    assert len(run.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------ control from the monitor

def test_trace_start_stop_and_status_from_the_monitor(private_tmp):
    command = [sys.executable, str(REPO / "memory_tracer.py"),
               *map(str, system("--workload_path_on_guest", "/bin/true", "--analysis_tool_path", TOOLS / "count",
                                "--dont_exit_qemu_when_done"))]
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=dict(os.environ, TMPDIR=str(private_tmp)))
    try:
        proc.stdin.write("trace_status\ntrace_start\n")
        proc.stdin.flush()
        seen = []
        while not seen or seen[-1] != "tracing started":
            line = proc.stdout.readline()
            assert line, f"memory_tracer ended early: {''.join(seen)} {proc.stderr.read()}"
            seen.append(line.rstrip("\n"))
        time.sleep(1)   # the idle guest's timer interrupts are traced meanwhile
        out, err = proc.communicate("trace_status\ntrace_stop\nquit\n", timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "tracing: off (no trace window: trace_start opens one)" in seen
    later = out.splitlines()
    assert later[0] == "tracing: on"
    second = parse_sections(out)   # the status lines belong to no section; trace_stop's report follows
    counts = {n: int(v) for n, _, v in (line.partition(": ") for line in second["analysis output"].splitlines())}
    assert counts["num_of_records"] > 0 and counts["cpl_0"] > 0
    assert counts["num_of_records"] == int(second["trace info"].splitlines()[1].split(": ")[1])
    assert processes_mentioning("qemu-system-x86_64") == []
