"""Stopping a run midway (Ctrl-C, SIGTERM) leaves no process, FIFO, socket or directory behind."""
import os
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
