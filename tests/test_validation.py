"""Every validation of the original memory_tracer.py: one clear line on stderr, non-zero exit, nothing started."""
import os

import pytest

from conftest import GUEST_IMAGE, PROGRAMS, QEMU_DIR, TOOLS
from memtracer.cli import build_parser, validate
from memtracer.errors import BadInputError

KNOWN = str(PROGRAMS / "known_accesses")
COUNT = str(TOOLS / "count")


def positional(tmp_path):
    image = tmp_path / "image.qcow2"
    image.write_bytes(b"")
    return [str(image), "ready_for_memory_tracer", str(QEMU_DIR)]


CASES = [
    (["--workload_path_on_host", "no/such/workload", "--analysis_tool_path", COUNT],
     "workload_path_on_host must be a file path, but no/such/workload isn't."),
    (["--workload_path_on_host", KNOWN, "--analysis_tool_path", "no_such_tool"],
     "analysis_tool_path must be a file path, but no_such_tool isn't."),
    (["--workload_path_on_host", KNOWN, "--trace_fifo_path", KNOWN],
     f"trace_fifo_path must be a fifo path, but {KNOWN} isn't."),
    (["--workload_path_on_host", KNOWN, "--analysis_tool_path", COUNT, "--log_of_GMBE_block_len", "-1"],
     "log_of_GMBE_block_len must be in range [0, 64], but -1 isn't."),
    (["--workload_path_on_host", KNOWN, "--analysis_tool_path", COUNT, "--log_of_GMBE_tracing_ratio", "65"],
     "log_of_GMBE_tracing_ratio must be in range [0, 64], but 65 isn't."),
    (["--workload_path_on_host", KNOWN, "--analysis_tool_path", COUNT,
      "--log_of_GMBE_block_len", "32", "--log_of_GMBE_tracing_ratio", "33"],
     "log_of_GMBE_block_len + log_of_GMBE_tracing_ratio must be in range [0, 64], but 32 + 33 = 65 isn't."),
    (["--workload_path_on_host", KNOWN, "--analysis_tool_path", COUNT, "--max_instructions", "-5"],
     "max_instructions must be a positive number of instructions, but -5 isn't."),
    (["--workload_path_on_host", KNOWN, "--analysis_tool_path", COUNT, "--far_reader_ns", "-1"],
     "far_reader_ns must be 0 or more nanoseconds, but -1 isn't."),
    (["--workload_path_on_host", KNOWN, "--analysis_tool_path", COUNT, "--smp", "0"],
     "smp must be in range [1, 64], but 0 isn't."),
    (["--workload_path_on_host", KNOWN, "--trace_files_per_vcpu", "no/such/dir"],
     "trace_files_per_vcpu must be a dir path, but no/such/dir isn't."),
    (["--workload_path_on_host", KNOWN, "--analysis_tool_path", COUNT, "--workload_files", KNOWN],
     "--workload_files needs --ssh_key (the files go to the guest with SFTP)."),
    (["--workload_path_on_host", KNOWN, "--analysis_tool_path", COUNT, "--ssh_key", "no/such/key"],
     "ssh_key must be a file path, but no/such/key isn't."),
    (["--user_mode", "--workload_path_on_host", KNOWN, "--analysis_tool_path", COUNT, "--smp", "2"],
     "--smp applies to full-system runs only (in --user_mode every guest thread is a vCPU of its own)."),
    (["--user_mode", "--workload_path_on_host", KNOWN, "--analysis_tool_path", COUNT, "--guest_RAM_in_MBs", "1024"],
     "--guest_RAM_in_MBs applies to full-system runs only (in --user_mode the workload has this host's memory)."),
]


def validation_error(*argv):
    """The one line that validation gives for argv, called directly (the fast tier: no process)."""
    parser = build_parser()
    args = parser.parse_args(list(map(str, argv)))
    with pytest.raises(BadInputError) as error:
        validate(parser, args)
    return str(error.value)


@pytest.mark.parametrize("args,message", CASES + [
    (["--workload_path_on_host", KNOWN, "--dont_trace", "--guest_RAM_in_MBs", "0"],
     "guest_RAM_in_MBs must be a positive number of MiB, but 0 isn't."),
    (["--workload_path_on_host", KNOWN, "--dont_trace", "--timeout", "-2"],
     "timeout must be a positive number of seconds, but -2 isn't."),
])
def test_bad_value_is_named_in_one_line(tmp_path, args, message):
    assert validation_error(*positional(tmp_path), *args) == message


def test_guest_image_must_be_a_file():
    assert (validation_error("no_image.qcow2", "snap", QEMU_DIR, "--workload_path_on_host", KNOWN, "--dont_trace")
            == "guest_image_path must be a file path, but no_image.qcow2 isn't.")


def test_qemu_dir_must_be_a_dir(tmp_path):
    assert (validation_error(positional(tmp_path)[0], "snap", KNOWN, "--workload_path_on_host", KNOWN, "--dont_trace")
            == f"qemu_with_GMBEOO_path must be a dir path, but {KNOWN} isn't.")


def test_the_real_process_says_one_line_and_starts_nothing(tracer, tmp_path):
    # Through the real memory_tracer.py once: the line alone on stderr, status 1, no output.
    args, message = CASES[0]
    run = tracer(*positional(tmp_path), *args)
    assert (run.returncode, run.stderr, run.stdout) == (1, message + "\n", "")


def test_dont_use_qemu_does_not_check_dummy_positionals(tracer):
    run = tracer("dummy", "dummy", "dummy", "--workload_path_on_host", KNOWN, "--dont_use_qemu",
                 "--dont_add_communications_with_host_to_workload")
    assert run.returncode == 0, run.stderr


@pytest.mark.parametrize("args", [
    ["--workload_path_on_host", KNOWN],                                   # no consumer group
    ["--analysis_tool_path", COUNT],                                      # no workload group
    ["--workload_path_on_host", KNOWN, "--dont_trace", "--dont_use_qemu"],  # two of a group
    ["--workload_path_on_host", KNOWN, "--dont_trace", "--timeout", "1",
     "--dont_add_communications_with_host_to_workload"],
])
def test_argparse_groups_exit_with_2(tmp_path, capsys, args):
    with pytest.raises(SystemExit) as exit_status:
        build_parser().parse_args(list(map(str, positional(tmp_path) + args)))
    assert exit_status.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_positionals_are_required_outside_user_mode(tracer):
    run = tracer("--workload_path_on_host", KNOWN, "--dont_trace")
    assert run.returncode == 2
    assert "the following arguments are required: guest_image_path" in run.stderr


def test_relative_paths_work(tracer):
    here = os.getcwd()
    try:
        os.chdir(PROGRAMS)
        run = tracer("--user_mode", "--workload_path_on_host", "known_accesses",
                     "--dont_add_communications_with_host_to_workload",
                     "--analysis_tool_path", os.path.relpath(COUNT, PROGRAMS))
    finally:
        os.chdir(here)
    assert run.returncode == 0, run.stderr
    assert "range_store_8_unsigned: 111" in run.stdout


def test_non_executable_workload_is_refused(tracer, tmp_path):
    data = tmp_path / "data.txt"
    data.write_text("not a program")
    run = tracer("--user_mode", "--workload_path_on_host", data, "--dont_trace")
    assert run.returncode == 1
    assert run.stderr.strip() == f"workload_path_on_host must be an executable file, but {data} isn't executable."


def test_analysis_tool_that_exits_at_once_is_reported(tracer):
    run = tracer("--user_mode", "--workload_path_on_host", KNOWN, "--analysis_tool_path", "/bin/true")
    assert run.returncode == 1
    assert run.stderr.strip() == ("the analysis tool /bin/true exited (exit code 0) before printing "
                                  "'Ready to analyze'.")


def test_a_window_on_a_display_gets_a_qemu_that_can_open_one(monkeypatch):
    """build.py's QEMU has no GUI: --dont_use_nographic where there is a display runs Debian's, which
    has; headless (VNC) and -nographic runs keep build.py's."""
    from memtracer.qemu.machine import MachineProfile, has_window_backend, qemu_command
    ours = QEMU_DIR / "qemu-system-x86_64"
    assert not has_window_backend(ours) and has_window_backend("/usr/bin/qemu-system-x86_64")
    profile = MachineProfile.for_image(GUEST_IMAGE, 2560)
    monkeypatch.setenv("DISPLAY", ":0")
    assert qemu_command(ours, GUEST_IMAGE, profile, graphic=True)[0] == "/usr/bin/qemu-system-x86_64"
    assert qemu_command(ours, GUEST_IMAGE, profile, graphic=False)[0] == str(ours)
    monkeypatch.delenv("DISPLAY")
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert qemu_command(ours, GUEST_IMAGE, profile, graphic=True)[0] == str(ours)
