"""Stopping a run midway (Ctrl-C, SIGTERM) leaves no process, FIFO, socket or directory behind;
killing it outright (SIGKILL) leaves no process."""
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import PROGRAMS, REPO, TOOLS, processes_mentioning, system


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_while_tracing_cleans_up(private_tmp, signum):
    run = subprocess.Popen([sys.executable, str(REPO / "memory_tracer.py"), "--user_mode",
                            "--workload_path_on_host", str(PROGRAMS / "spin_forever"),
                            "--analysis_tool_path", str(TOOLS / "count")],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=dict(os.environ, TMPDIR=str(private_tmp)))
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
    run = subprocess.Popen([sys.executable, str(REPO / "memory_tracer.py"), *map(str, system(
                            "--workload_path_on_host", PROGRAMS / "spin_forever",
                            "--analysis_tool_path", TOOLS / "count"))],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=dict(os.environ, TMPDIR=str(private_tmp)))
    deadline = time.monotonic() + 60
    while len(processes_mentioning("trace.fifo")) < 2:   # QEMU (the plugin's argument) and the tool
        assert time.monotonic() < deadline and run.poll() is None
        time.sleep(0.05)
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
def test_killed_outright_its_processes_end_with_it(private_tmp, mode):
    """SIGKILL gives memory_tracer no chance to stop anything: QEMU and the tool must end with it all
    the same. What it cannot remove then, its private directories, the test removes."""
    arguments = ["--workload_path_on_host", PROGRAMS / "spin_forever", "--analysis_tool_path", TOOLS / "count"]
    arguments = system(*arguments) if mode == "system" else ["--user_mode", *arguments]
    run = subprocess.Popen([sys.executable, str(REPO / "memory_tracer.py"), *map(str, arguments)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           env=dict(os.environ, TMPDIR=str(private_tmp)))
    deadline = time.monotonic() + 60
    while len(processes_mentioning("trace.fifo")) < 2:   # QEMU (the plugin's argument) and the tool
        assert time.monotonic() < deadline and run.poll() is None
        time.sleep(0.05)
    time.sleep(1.0)   # the tool is up: records flow
    run.kill()
    run.wait()
    deadline = time.monotonic() + 10
    try:
        while processes_mentioning(str(private_tmp)):
            assert time.monotonic() < deadline, f"still running: {processes_mentioning(str(private_tmp))}"
            time.sleep(0.05)
    finally:
        for pid in processes_mentioning(str(private_tmp)):   # when they did not end: not after the test
            os.kill(int(pid), signal.SIGKILL)
        for leftover in private_tmp.iterdir():   # and the ring named after it
            shutil.rmtree(f"/dev/shm/{leftover.name}-ring", ignore_errors=True)
            shutil.rmtree(leftover)
