"""Campaigns on a real Dask LocalCluster of 2 workers, running the real memory_tracer and QEMU;
traces as Parquet tables."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import (GUEST_IMAGE, PROGRAMS, QEMU_DIR, REPO, SNAPSHOT, TOOLS, analysis_counts, parse_sections,
                      processes_mentioning, promised_counts, user_mode)
from memtracer.campaign.plan import read_campaign
from memtracer.errors import BadInputError
from memtracer.record import CPL_SHIFT, SIZE_SHIFT_MASK, STORE_BIT, as_records, is_marker
from memtracer.trace.parquet import trace_markers, trace_to_parquet
from memtracer.trace.trace_file import read_batches

MACHINE = f"""
[machine]
guest_image = "{GUEST_IMAGE}"
snapshot = "{SNAPSHOT}"
qemu = "{QEMU_DIR}"
"""


def campaign(tmp_path, body, name="campaign.toml"):
    path = tmp_path / name
    path.write_text(body + MACHINE)
    return path


def mem_loop_campaign(tmp_path, args, repetitions, keep_traces=None, more_analyses=""):
    """mem_loop in user mode, `repetitions` times, counted (and analysed by more_analyses)."""
    kept = f'keep_traces = "{keep_traces}"\n' if keep_traces else ""
    return campaign(tmp_path, f"""{kept}repetitions = {repetitions}

[[workload]]
name = "mem_loop"
path_on_host = "{PROGRAMS / 'mem_loop'}"
args = "{args}"

[matrix]
user_mode = [true]

[[analysis]]
tool = "{TOOLS / 'count'}"
{more_analyses}""")


def start_campaign(path, results, env, *extra, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "memtracer.campaign", "run", str(path), "--results", str(results),
                             *extra], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **kwargs)


def run_campaign(path, results, *extra, env=None, **kwargs):
    return subprocess.run([sys.executable, "-m", "memtracer.campaign", "run", str(path), "--results", str(results),
                           "--workers", "2", *extra], cwd=REPO, env=env, capture_output=True, text=True, **kwargs)


def rows_by(results, *columns):
    return {tuple(row[c] for c in columns): row for row in pq.read_table(results).to_pylist()}


def test_campaign_rows_failures_and_a_second_run(tracer, private_tmp, tmp_path):
    """User mode and full system x two configurations x two workloads, one of which crashes."""
    path = campaign(tmp_path, f"""
[[workload]]
name = "known_accesses"
path_on_host = "{PROGRAMS / 'known_accesses'}"
follows_protocol = true

[[workload]]
name = "crash"
path_on_host = "{PROGRAMS / 'crash_after_work'}"

[options]
log_of_GMBE_block_len = 3

[matrix]
user_mode = [true, false]
log_of_GMBE_tracing_ratio = [0, 4]

[[analysis]]
tool = "{TOOLS / 'count'}"
""")
    results = tmp_path / "results.parquet"
    env = dict(os.environ, TMPDIR=str(private_tmp))
    first = run_campaign(path, results, env=env, timeout=600)
    assert first.returncode == 1, first.stderr            # failed runs: the campaign says so
    assert "8 runs: 4 finished now, 0 finished before, 4 failed" in first.stderr
    rows = rows_by(results, "workload", "user_mode", "log_of_GMBE_tracing_ratio")
    assert len(rows) == 8
    for (workload, user, ratio), row in rows.items():
        if workload == "crash":
            assert row["status"] == "failed" and row["exit_status"] == 3
            assert row["error"].startswith("memory_tracer.py: the workload was killed by SIGSEGV")
            assert row["count_num_of_records"] > (4096 if ratio == 0 else 0)    # the trace was still analysed
            continue
        assert row["status"] == "finished" and row["error"] is None
        # Blocks of 8 of every 128 events with ratio 4: exactly this many of the window's events,
        # however many the window caught (it ends when memory_tracer reads the workload's last line).
        events, written = row["num_of_GMBE_events_since_enabling_GMBEOO"], row["num_of_events_written_to_trace_buf"]
        full, rest = divmod(events, 128)
        assert row["count_num_of_records"] == written == (events if ratio == 0 else full * 8 + min(rest, 8))
        assert row["actual_tracing_ratio"] == events // written

    # Equal to a direct run of memory_tracer: the accesses to known_accesses' buffer, in every mode.
    direct = tracer(*user_mode("--workload_path_on_host", PROGRAMS / "known_accesses",
                               "--dont_add_communications_with_host_to_workload", "--analysis_tool_path",
                               TOOLS / "count"))
    assert direct.returncode == 0, direct.stderr
    in_range = {name: value for name, value in analysis_counts(direct.stdout).items() if name.startswith("range_")}
    assert len(in_range) == 14
    for user in (True, False):
        row = rows[("known_accesses", user, 0)]
        assert {name: row[f"count_{name}"] for name in in_range} == in_range
    for kind, promised in promised_counts(direct.stdout).items():
        assert in_range[f"range_{kind}"] == promised, kind
    full_system = rows[("known_accesses", False, 0)]
    assert full_system["count_cpl_0"] > 0 and full_system["tracing_duration_in_milliseconds"] >= 0

    # Run again: what finished is kept as it was, what failed is run again.
    second = run_campaign(path, results, env=env, timeout=600)
    assert second.returncode == 1
    assert "4 of 8 runs already finished" in second.stderr
    again = rows_by(results, "workload", "user_mode", "log_of_GMBE_tracing_ratio")
    for key, row in rows.items():
        if row["status"] == "finished":
            assert again[key] == row
        else:
            assert again[key]["status"] == "failed" and again[key]["finished_at"] > row["finished_at"]
    assert processes_mentioning(str(private_tmp)) == []


def worker_running_memory_tracer(campaign, deadline):
    """The PID of a Dask worker process of the campaign, caught while it runs memory_tracer."""
    while time.monotonic() < deadline and campaign.poll() is None:
        for pid in processes_mentioning("memory_tracer.py"):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
                with open(f"/proc/{parent}/stat") as f:
                    grandparent = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError):
                continue
            if grandparent == campaign.pid:
                return parent
        time.sleep(0.05)
    raise AssertionError(f"no worker of the campaign ran memory_tracer.py: {campaign.communicate()}")


def children_of(pid):
    found = []
    for child in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{child}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(child))
        except OSError:
            pass
    return found


def test_a_killed_worker_costs_one_retry(private_tmp, tmp_path):
    """A worker SIGKILLed mid-run: its memory_tracer ends at once, the run is retried elsewhere, and
    the campaign finishes."""
    path = mem_loop_campaign(tmp_path, "65536 4", repetitions=3)
    results = tmp_path / "results.parquet"
    process = start_campaign(path, results, dict(os.environ, TMPDIR=str(private_tmp)), "--workers", "2")
    try:
        victim = worker_running_memory_tracer(process, time.monotonic() + 60)
        orphans = children_of(victim)
        os.kill(victim, signal.SIGKILL)
        # Its run would go on for seconds: it must end now, with everything it started.
        deadline = time.monotonic() + 3
        while any(os.path.exists(f"/proc/{pid}") for pid in orphans) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(os.path.exists(f"/proc/{pid}") for pid in orphans), "the killed worker's run goes on"
        _, stderr = process.communicate(timeout=600)
    finally:
        process.kill()
    assert process.returncode == 0, stderr
    rows = pq.read_table(results).to_pylist()
    assert len(rows) == 3 and {row["status"] for row in rows} == {"finished"}
    assert len({row["count_num_of_records"] for row in rows}) == 1     # the retried run as the others
    assert processes_mentioning(str(private_tmp)) == []
    assert processes_mentioning("memory_tracer.py") == []


def test_kept_traces_read_by_several_analyses(private_tmp, tmp_path):
    """Two analyses of one recorded trace, kept where the campaign says, named in the results."""
    traces = tmp_path / "traces"
    path = mem_loop_campaign(tmp_path, "1024 1", repetitions=2, keep_traces=traces, more_analyses=f"""
[[analysis]]
name = "parquet"
tool = "{TOOLS / 'export'}"
args = "--format parquet --output {tmp_path}/last.parquet"
""")
    results = tmp_path / "results.parquet"
    run = run_campaign(path, results, env=dict(os.environ, TMPDIR=str(private_tmp)), timeout=600)
    assert run.returncode == 0, run.stderr
    rows = pq.read_table(results).to_pylist()
    assert len(rows) == 2 and {row["status"] for row in rows} == {"finished"}
    for row in rows:
        trace = row["trace_file"]
        assert os.path.dirname(trace) == str(traces)
        recount = subprocess.run([TOOLS / "count", trace], capture_output=True, text=True, check=True).stdout
        records = int(recount.split("num_of_records: ")[1].split()[0])
        assert row["count_num_of_records"] == records == row["parquet_records"] > 300_000
        assert row["num_of_events_written_to_trace_buf"] == records
    assert sorted(os.listdir(traces)) == sorted(os.path.basename(row["trace_file"]) for row in rows)


@pytest.mark.parametrize("change, message", [
    (("log_of_GMBE_block_len = 3", "log_of_GMBE_blok_len = 3"),
     "line 9: unknown memory_tracer option 'log_of_GMBE_blok_len'"),
    (("mem_loop\"\n", "nosuch\"\n"), "line 4: path_on_host must be a file path, but {programs}/nosuch isn't."),
    (("user_mode = [true, false]", "user_mode = [true, 1]"), "line 12: user_mode takes true or false, but 1 isn't."),
    (("[matrix]", "[matrix]\ntimeout = [-1]"), "line 12: timeout must be a positive number of seconds, but -1 isn't."),
    (("args = \"1024 1\"", "args = \"1024 1\"\nargz = 1"), "line 6: unknown key 'argz' in [[workload]]"),
    (("[options]", "[options]\nverbose = true"), "line 9: verbose is not a campaign option"),
    (("tool = \"", "tool = \"/nosuch"), "line 15: tool must be a file path, but /nosuch"),
])
def test_bad_campaign_input_names_the_line(tmp_path, change, message):
    text = f"""
[[workload]]
name = "mem_loop"
path_on_host = "{PROGRAMS / 'mem_loop'}"
args = "1024 1"
follows_protocol = false

[options]
log_of_GMBE_block_len = 3

[matrix]
user_mode = [true, false]

[[analysis]]
tool = "{TOOLS / 'count'}"
"""
    path = tmp_path / "bad.toml"
    path.write_text(text.replace(*change))
    read_campaign_ok = tmp_path / "good.toml"
    read_campaign_ok.write_text(text)
    assert len(read_campaign(read_campaign_ok).runs) == 2
    with pytest.raises(BadInputError) as error:
        read_campaign(path)
    assert str(error.value).startswith(f"{path}, line ")
    assert message.format(programs=PROGRAMS) in str(error.value)
    # The command says it in one line, before anything runs.
    command = subprocess.run([sys.executable, "-m", "memtracer.campaign", "run", str(path), "--results",
                              str(tmp_path / "r.parquet")], cwd=REPO, capture_output=True, text=True)
    assert command.returncode == 1 and command.stdout == ""
    assert command.stderr.count("\n") == 1 and message.format(programs=PROGRAMS) in command.stderr
    assert not (tmp_path / "r.parquet").exists()


def test_trace_parquet_holds_exactly_the_trace(tracer, tmp_path):
    trace = tmp_path / "marked.gmbe"
    run = tracer(*user_mode("--workload_path_on_host", PROGRAMS / "marked_loop", "--workload_args", "5000",
                            "--dont_add_communications_with_host_to_workload", "--analysis_tool_path",
                            TOOLS / "record", "--analysis_tool_args", f"--output {trace}"))
    assert run.returncode == 0, run.stderr
    records = np.concatenate([as_records(batch).copy() for batch in read_batches(trace)])
    markers = is_marker(records)
    accesses = records[~markers]
    phases = np.cumsum(markers)[~markers]

    exported = tmp_path / "by_tool.parquet"
    tool = subprocess.run([TOOLS / "export", trace, "--format", "parquet", "--output", exported],
                          capture_output=True, text=True)
    assert tool.returncode == 0, tool.stderr
    assert f"records: {len(accesses)}" in tool.stdout
    assert trace_to_parquet(trace, tmp_path / "by_api.parquet") == len(accesses)
    for path in (exported, tmp_path / "by_api.parquet"):
        table = pq.read_table(path).to_pydict()
        assert table["seq"] == list(range(len(accesses)))
        assert table["virt_addr"] == accesses["virt_addr"].tolist()
        assert table["vcpu"] == accesses["vcpu"].tolist()
        assert table["store"] == ((accesses["info"] & STORE_BIT) != 0).tolist()
        assert table["size"] == (1 << (accesses["info"] & SIZE_SHIFT_MASK)).tolist()
        assert table["cpl"] == (accesses["info"] >> CPL_SHIFT).tolist()
        assert table["phase"] == phases.tolist()
        assert [m["kind"] for m in trace_markers(path)] == ["region_begin", "marker", "region_end"]
    # The region of marked_loop: 5000 stores in phase 1, 5000 loads in phase 2.
    assert table["phase"].count(1) == 5000 and table["phase"].count(2) == 5000

    # Under memory_tracer, as a live analysis tool through the FIFO.
    live = tmp_path / "live.parquet"
    run = tracer(*user_mode("--workload_path_on_host", PROGRAMS / "marked_loop", "--workload_args", "5000",
                            "--dont_add_communications_with_host_to_workload", "--analysis_tool_path",
                            TOOLS / "export", "--analysis_tool_args", f"--format parquet --output {live}",
                            "--print_trace_info"))
    assert run.returncode == 0, run.stderr
    report = parse_sections(run.stdout)
    written = int(report["trace info"].split("num_of_events_written_to_trace_buf: ")[1].split()[0])
    assert "num_of_markers: 3" in report["trace info"]      # phases, not rows
    assert f"records: {written}\nphases: 4" in report["analysis output"]
    assert pq.read_metadata(live).num_rows == written


def test_ctrl_c_ends_the_campaign_and_everything_it_started(private_tmp, tmp_path):
    path = mem_loop_campaign(tmp_path, "65536 4", repetitions=4)
    results = tmp_path / "results.parquet"
    # Its own process group, as a terminal gives it: Ctrl-C reaches every process of the group.
    process = start_campaign(path, results, dict(os.environ, TMPDIR=str(private_tmp)), "--workers", "2",
                             start_new_session=True)
    try:
        worker_running_memory_tracer(process, time.monotonic() + 60)
        os.killpg(process.pid, signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 130
    assert stderr.splitlines()[-1] == ("memtracer.campaign: interrupted; the runs that finished are in the results "
                                       "table, the others were stopped.")
    assert "Traceback" not in stderr
    assert processes_mentioning(str(private_tmp)) == [] and processes_mentioning("memory_tracer.py") == []
    if results.exists():      # only runs that finished, never one that the interruption cut short
        assert {row["status"] for row in pq.read_table(results).to_pylist()} <= {"finished"}


@pytest.mark.parametrize("args, message", [
    ([], "export: --format parquet needs --output FILE.parquet"),
    (["--output", "/no_such_dir/t.parquet"], "export: cannot write /no_such_dir/t.parquet: No such file or directory"),
    (["--output", "/dev/full"], "export: writing /dev/full failed: [Errno 28]"),
])
def test_bad_parquet_export_is_one_line(tmp_path, args, message):
    trace = tmp_path / "t.raw"
    trace.write_bytes((bytes(7) + b"\x80" + bytes(8)) * 100_000)     # valid records
    result = subprocess.run([TOOLS / "export", trace, "--format", "parquet", *args], capture_output=True, text=True)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith(message) and result.stderr.count("\n") == 1


def test_a_running_dask_cluster_of_ones_own(private_tmp, tmp_path):
    """--scheduler: a scheduler and workers started with Dask's own commands, as on a cluster."""
    dask = Path(sys.executable).parent / "dask"
    # Dask's own scratch space apart: private_tmp must end as empty as the runs leave it.
    env = dict(os.environ, TMPDIR=str(private_tmp), DASK_TEMPORARY_DIRECTORY=str(tmp_path / "dask"))
    scheduler_file = tmp_path / "scheduler.json"
    started = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                 "--scheduler-file", scheduler_file], cwd=tmp_path, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        deadline = time.monotonic() + 30
        while not scheduler_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        address = json.loads(scheduler_file.read_text())["address"]
        started.append(subprocess.Popen([dask, "worker", address, "--nthreads", "1", "--nworkers", "2",
                                         "--no-dashboard"], cwd=tmp_path,
                                        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        path = mem_loop_campaign(tmp_path, "1024 1", repetitions=4)
        results = tmp_path / "results.parquet"
        run = subprocess.run([sys.executable, "-m", "memtracer.campaign", "run", str(path), "--results",
                              str(results), "--scheduler", address], cwd=REPO, env=env, capture_output=True,
                             text=True, timeout=300)
    finally:
        for process in reversed(started):
            process.terminate()
            process.wait(timeout=30)
    assert run.returncode == 0, run.stderr
    rows = pq.read_table(results).to_pylist()
    assert [row["status"] for row in rows] == ["finished"] * 4
    assert {row["workload"] for row in rows} == {"mem_loop"}
    assert all(row["worker"].startswith("tcp://127.0.0.1:") for row in rows)
    assert all(row["count_num_of_records"] > 300_000 for row in rows)
