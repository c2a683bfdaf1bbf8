"""Stopping a run midway (Ctrl-C, SIGTERM) leaves no process, FIFO, socket or directory behind;
killing it outright (SIGKILL) leaves no process."""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import PROGRAMS, REPO, TOOLS, processes_mentioning, system


def wait_until_qemu_and_the_tool_run(run, seconds):
    """Until two processes name the run's FIFO: QEMU (in the plugin's argument) and the tool."""
    deadline = time.monotonic() + seconds
    while len(processes_mentioning("trace.fifo")) < 2:
        assert time.monotonic() < deadline and run.poll() is None
        time.sleep(0.05)


def spinning_run(tmpdir, mode="user", **popen):
    """memory_tracer tracing spin_forever to count, started with TMPDIR=tmpdir (a Popen); output
    thrown away unless popen says otherwise."""
    arguments = ["--workload_path_on_host", PROGRAMS / "spin_forever", "--analysis_tool_path", TOOLS / "count"]
    arguments = system(*arguments) if mode == "system" else ["--user_mode", *arguments]
    popen = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, **popen}
    return subprocess.Popen([sys.executable, str(REPO / "memory_tracer.py"), *map(str, arguments)],
                            env=dict(os.environ, TMPDIR=str(tmpdir)), **popen)


def wait_until_gone(tmpdir, seconds):
    """Until no process names tmpdir: a killed run's QEMU and tool end with it."""
    deadline = time.monotonic() + seconds
    while processes_mentioning(str(tmpdir)):
        assert time.monotonic() < deadline, f"still running: {processes_mentioning(str(tmpdir))}"
        time.sleep(0.05)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_while_tracing_cleans_up(private_tmp, signum):
    run = spinning_run(private_tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not processes_mentioning(f"{private_tmp}/memory_tracer-"):   # QEMU is tracing
        assert time.monotonic() < deadline and run.poll() is None
        time.sleep(0.05)
    time.sleep(0.5)
    run.send_signal(signum)
    stdout, stderr = run.communicate(timeout=30)
    assert run.returncode == 130
    assert stderr.strip() in ("memory_tracer.py: interrupted.", "memory_tracer.py: stopped by SIGTERM.")
    assert stdout == ""
    assert processes_mentioning(str(private_tmp)) == []


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_a_full_system_run_cleans_up(private_tmp, signum):
    run = spinning_run(private_tmp, "system", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until_qemu_and_the_tool_run(run, 60)
    time.sleep(1.0)   # the tool is up: the workload is in the trace window by now
    started = time.monotonic()
    run.send_signal(signum)
    stdout, stderr = run.communicate(timeout=60)
    assert run.returncode == 130, stderr
    assert stderr.strip() in ("memory_tracer.py: interrupted.", "memory_tracer.py: stopped by SIGTERM.")
    assert stdout == ""
    assert processes_mentioning(str(private_tmp)) == []
    assert processes_mentioning("qemu-system-x86_64") == []
    assert time.monotonic() - started < 30


@pytest.mark.parametrize("mode", ["user", "system"])
def test_killed_outright_its_processes_end_with_it_and_the_next_run_removes_its_directories(private_tmp, tracer,
                                                                                            mode):
    """SIGKILL gives memory_tracer no chance to stop anything: QEMU and the tool must end with it all
    the same. Its private directory and ring stay, until the next run removes them."""
    run = spinning_run(private_tmp, mode)
    wait_until_qemu_and_the_tool_run(run, 60)
    time.sleep(1.0)   # the tool is up: records flow
    run.kill()
    run.wait()
    left = list(private_tmp.iterdir())
    try:
        wait_until_gone(private_tmp, 10)
        assert [p.name.startswith("memory_tracer-") for p in left] == [True]
        assert os.path.isdir(f"/dev/shm/{left[0].name}-ring")
        # As if a minute had passed: a younger directory may be a run's between making and marking it.
        os.utime(left[0] / ".alive", (time.time() - 120,) * 2)
        later = tracer("--dont_use_qemu", "x", "y", "z", "--workload_path_on_host", PROGRAMS / "mem_loop",
                       "--workload_args", "16 1")
        assert later.returncode == 0, later.stderr
        assert not os.path.exists(f"/dev/shm/{left[0].name}-ring")
        # (private_tmp, the fixture, checks that nothing is left in TMPDIR)
    finally:
        for pid in processes_mentioning(str(private_tmp)):   # when they did not end: not after the test
            os.kill(int(pid), signal.SIGKILL)
        for leftover in left:
            shutil.rmtree(f"/dev/shm/{leftover.name}-ring", ignore_errors=True)
            shutil.rmtree(leftover, ignore_errors=True)


def test_a_killed_runs_ring_is_removed_by_a_run_with_another_tmpdir(private_tmp, tracer):
    """A harness that gives each run a TMPDIR of its own, as this one does, kills one outright: the
    ring's directory in /dev/shm carries its own mark, so the next run removes it all the same."""
    elsewhere = Path(tempfile.mkdtemp(prefix="mt-"))   # short: sockets' paths are limited
    run = spinning_run(elsewhere)
    wait_until_qemu_and_the_tool_run(run, 60)
    run.kill()
    run.wait()
    [left] = list(elsewhere.iterdir())
    ring = f"/dev/shm/{left.name}-ring"
    try:
        wait_until_gone(elsewhere, 10)
        assert os.path.isdir(ring)
        os.utime(f"{ring}/.alive", (time.time() - 120,) * 2)   # as if a minute had passed
        later = tracer("--dont_use_qemu", "x", "y", "z", "--workload_path_on_host", PROGRAMS / "mem_loop",
                       "--workload_args", "16 1")
        assert later.returncode == 0, later.stderr
        assert not os.path.exists(ring)
        assert left.exists()    # another TMPDIR's: the run that sweeps it is one made there
    finally:
        for pid in processes_mentioning(str(elsewhere)):
            os.kill(int(pid), signal.SIGKILL)
        shutil.rmtree(ring, ignore_errors=True)
        shutil.rmtree(elsewhere, ignore_errors=True)


def test_a_live_runs_directory_is_never_taken_for_a_killed_ones(private_tmp, tracer):
    """Two runs at once: the second must leave the first's directories, however old their marks."""
    first = spinning_run(private_tmp)
    try:
        wait_until_qemu_and_the_tool_run(first, 30)
        [directory] = list(private_tmp.iterdir())
        os.utime(directory / ".alive", (time.time() - 3600,) * 2)
        os.utime(f"/dev/shm/{directory.name}-ring/.alive", (time.time() - 3600,) * 2)
        second = tracer("--dont_use_qemu", "x", "y", "z", "--workload_path_on_host", PROGRAMS / "mem_loop",
                        "--workload_args", "16 1")
        assert second.returncode == 0, second.stderr
        assert directory.exists() and os.path.isdir(f"/dev/shm/{directory.name}-ring")
        assert first.poll() is None
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=30)
