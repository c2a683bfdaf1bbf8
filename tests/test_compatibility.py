"""Where scripts written for the original memory_tracer.py notice: bash-script workloads, the exit
status, the workload's working directory, the measured window, and --dont_use_nographic on a
machine without a display. Real QEMU, the built-in image, real processes."""
import os
import subprocess

import pytest

from conftest import PROGRAMS, QEMU_DIR, TOOLS, executable, parse_sections, system, user_mode

NO_DISPLAY = {"DISPLAY": "", "WAYLAND_DISPLAY": ""}
PROTOCOL = "--dont_add_communications_with_host_to_workload"

MODES = {
    "system": lambda *args: system(*args),
    "user": lambda *args: user_mode(*args),
    "native": lambda *args: ["--dont_use_qemu", "dummy", "dummy", "dummy", *args],
}


def test_bash_script_runs_in_the_guest(tracer, tmp_path):
    # Bash-only syntax: arrays, [[ ]], BASH_VERSINFO. busybox sh would fail on each.
    script = executable(tmp_path / "run.sh", """#!/bin/bash
words=(one two three)
[[ ${#words[@]} == 3 ]] || exit 9
echo "-----begin workload info-----"
echo "bash_major=${BASH_VERSINFO[0]} words=${#words[@]}"
echo "-----end workload info-----"
echo "Ready to trace. Press enter to continue"
read -r
echo "Stop tracing"
""")
    run = tracer(*system("--workload_path_on_host", script, PROTOCOL, "--analysis_tool_path", TOOLS / "count"))
    assert run.returncode == 0, run.stderr
    info = parse_sections(run.stdout)["workload info"]
    assert info.startswith("bash_major=") and int(info.split()[0].split("=")[1]) >= 5
    assert info.endswith("words=3")


def test_missing_script_interpreter_is_named(tracer, tmp_path):
    script = executable(tmp_path / "run.sh", "#!/usr/bin/no_such_interpreter -x\necho hi\n")
    run = tracer(*system("--workload_path_on_host", script, "--dont_trace"))
    assert run.returncode == 1
    assert len(run.stderr.strip().splitlines()) == 1
    assert "/usr/bin/no_such_interpreter (its #! line) is not in the guest" in run.stderr


def test_missing_shared_library_is_named(tracer, tmp_path):
    # A program of this host linked with libzstd, which the guest does not have.
    source = tmp_path / "uses_zstd.c"
    source.write_text('#include <stdio.h>\n#include <zstd.h>\n'
                      'int main(void) { printf("%u\\n", ZSTD_versionNumber()); return 0; }\n')
    program = tmp_path / "uses_zstd"
    subprocess.run(["gcc", "-o", program, source, "-lzstd"], check=True)
    run = tracer(*system("--workload_path_on_host", program, "--dont_trace"))
    assert run.returncode == 0   # the report is complete: the workload's failure is a line on stderr
    assert "tracing_duration_in_milliseconds: " in run.stdout
    [line] = run.stderr.strip().splitlines()
    assert line.startswith("memory_tracer.py: the workload exited with code 127; its last output:")
    assert "libzstd.so.1" in line


@pytest.mark.parametrize("mode", MODES)
def test_failing_workload_exits_0_unless_strict(tracer, mode):
    workload = (["--workload_path_on_guest", "/bin/false"] if mode == "system"
                else ["--workload_path_on_host", "/bin/false"])
    traced = ["--analysis_tool_path", TOOLS / "count"] if mode != "native" else []
    run = tracer(*MODES[mode](*workload, *traced))
    assert run.returncode == 0, run.stderr
    assert run.stderr.strip() == "memory_tracer.py: the workload exited with code 1."
    sections = parse_sections(run.stdout)
    assert "tracing_duration" in sections and ("analysis output" in sections) == (mode != "native")
    strict = tracer(*MODES[mode](*workload, *traced, "--strict_exit_status"))
    assert strict.returncode == 3
    assert strict.stderr.strip() == "memory_tracer.py: the workload exited with code 1."


INPUT_READER = """#!/bin/sh
read -r line < input.txt
echo "-----begin workload info-----"
echo "read=$line"
echo "-----end workload info-----"
echo "Ready to trace. Press enter to continue"
read -r enter
echo "Stop tracing"
"""


@pytest.mark.parametrize("mode", ["user", "native"])
def test_host_workload_runs_in_its_own_directory(tracer, tmp_path, mode):
    folder = tmp_path / "workload"
    folder.mkdir()
    (folder / "input.txt").write_text("beside the script\n")
    script = executable(folder / "run.sh", INPUT_READER)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    untraced = ["--dont_trace"] if mode == "user" else []
    run = tracer(*MODES[mode]("--workload_path_on_host", script, PROTOCOL, *untraced), cwd=elsewhere)
    assert run.returncode == 0, run.stderr
    assert parse_sections(run.stdout)["workload info"] == "read=beside the script"


def test_guest_workload_runs_in_its_own_directory(tracer, tmp_path):
    folder = tmp_path / "workload"
    folder.mkdir()
    (folder / "input.txt").write_text("beside the script in the guest\n")
    executable(folder / "run.sh", INPUT_READER)
    run = tracer(*system("--ssh_key", QEMU_DIR.parent / "guest_image" / "id_memory_tracer",
                         "--workload_files", folder, "--workload_path_on_guest", "/root/workload/run.sh",
                         PROTOCOL, "--dont_trace"))
    assert run.returncode == 0, run.stderr
    assert parse_sections(run.stdout)["workload info"] == "read=beside the script in the guest"


@pytest.mark.parametrize("mode", MODES)
def test_an_empty_window_measures_a_few_milliseconds(tracer, mode):
    # Nothing runs between the Enter and `Stop tracing`: what is measured is memory_tracer's own
    # delay. pexpect's default 50 ms before each send once sat inside this window.
    traced = ["--analysis_tool_path", TOOLS / "count"] if mode != "native" else []
    durations = []
    for _ in range(3):
        run = tracer(*MODES[mode]("--workload_path_on_host", PROGRAMS / "empty_window", PROTOCOL, *traced))
        assert run.returncode == 0, run.stderr
        durations.append(parse_sections(run.stdout)["tracing_duration"])
    assert min(durations) < 20, durations


def test_dont_use_nographic_without_a_display_serves_vnc(tracer):
    run = tracer(*system("--workload_path_on_guest", "/bin/true", "--dont_trace", "--dont_use_nographic",
                         "--dont_exit_qemu_when_done"),
                 input="info vnc\nquit\n", env=dict(os.environ, **NO_DISPLAY))
    assert run.returncode == 0, run.stderr
    note = next(line for line in run.stderr.splitlines() if "VNC" in line)
    assert note.startswith("memory_tracer.py: no DISPLAY here: QEMU's screen is on VNC at ")
    assert note.split(" at ")[1].split(" while")[0].endswith("/vnc.sock")
    assert "Server: :vnc.sock (unix)" in run.stdout   # QEMU's own monitor says so
