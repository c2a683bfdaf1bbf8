"""The records that the patched QEMU writes in its generated code are those of the callback path,
byte for byte: user mode (its runs repeat exactly with ASLR off), every way QEMU performs an access
(helper_paths: rep movs/stos, cmpxchg16b, fxsave/fxrstor, iretq, a faulting store, threads that are
vCPUs of their own), sampled and not, with buffers of one record (every room check hands over) and
of the default size, in both inline formats."""
import subprocess

import pytest

from conftest import PROGRAMS, QEMU_DIR
from memtracer.qemu.plugin_control import parse_counters

PLUGIN = QEMU_DIR / "libgmbeoo.so"


def trace_files(tmp_path, name, *plugin_args):
    """helper_paths under qemu-x86_64 with GMBEOO writing one trace file per vCPU; the files'
    bytes and the plugin's counters."""
    folder = tmp_path / name
    folder.mkdir()
    counters = tmp_path / f"{name}.counters"
    arguments = ",".join([f"{PLUGIN}", f"trace_dir={folder}", f"counters_path={counters}", *plugin_args])
    run = subprocess.run(["setarch", "-R", QEMU_DIR / "qemu-x86_64", "-plugin", arguments,
                          PROGRAMS / "helper_paths", "20"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("helper_paths: 20 rounds")
    files = {path.name: path.read_bytes() for path in sorted(folder.iterdir())}
    return files, parse_counters(counters.read_text())


@pytest.mark.qemu
@pytest.mark.parametrize("record_format", ["standard", "compact"])
@pytest.mark.parametrize("sampling", [(), ("log_of_GMBE_block_len=2", "log_of_GMBE_tracing_ratio=3")],
                         ids=["all", "sampled"])
@pytest.mark.parametrize("buffer_records", [1, 4096])
def test_inline_records_are_the_callbacks_records(tmp_path, record_format, sampling, buffer_records):
    settings = (f"record_format={record_format}", f"buffer_records={buffer_records}", *sampling)
    inline, inline_counters = trace_files(tmp_path, "inline", *settings)
    callback, callback_counters = trace_files(tmp_path, "callback", *settings, "callback_records=on")
    assert inline_counters["inline_records"] == 1 and callback_counters["inline_records"] == 0
    assert list(inline) == ["vcpu0.gmbe", "vcpu1.gmbe", "vcpu2.gmbe", "vcpu3.gmbe"]
    assert list(inline) == list(callback)
    for name in inline:
        assert len(inline[name]) == len(callback[name]), name
        assert inline[name] == callback[name], name
    for counter in ("num_of_GMBE_events_since_enabling_GMBEOO", "num_of_events_written_to_trace_buf",
                    "num_of_events_written_to_trace_file"):
        assert inline_counters[counter] == callback_counters[counter], counter
    written = inline_counters["num_of_events_written_to_trace_file"]
    assert written == inline_counters["num_of_events_written_to_trace_buf"] > 100_000
    assert inline_counters["num_of_events_waiting_in_trace_buf"] == 0
    if sampling:
        assert inline_counters["num_of_GMBE_events_since_enabling_GMBEOO"] // written in (7, 8)


@pytest.mark.qemu
def test_a_stock_qemu_takes_the_callback_path(tmp_path):
    """Debian's qemu-system-x86_64 lacks the inline records: the same plugin loads there and records
    through its callback."""
    counters, trace = tmp_path / "counters", tmp_path / "trace"
    trace.touch()
    run = subprocess.run(["/usr/bin/qemu-system-x86_64", "-machine", "none", "-display", "none", "-nodefaults",
                          "-S", "-monitor", "stdio",
                          "-plugin", f"{PLUGIN},trace_fifo_path={trace},counters_path={counters}"],
                         input="quit\n", capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    assert parse_counters(counters.read_text())["inline_records"] == 0
