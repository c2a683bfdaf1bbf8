"""The GMBEOO plugin's control channel, driven directly: the protocol of qemu_patches/README.md."""
import os
import subprocess
import threading

import pexpect
import pytest

from conftest import PROGRAMS, QEMU_DIR
from memtracer.errors import ControlChannelError
from memtracer.qemu.plugin_control import ControlChannel, parse_counters
from memtracer.qemu.unix_socket import connect_when_listening
from memtracer.run.workload import ProtocolSession

pytestmark = pytest.mark.qemu   # QEMU itself, without memory_tracer


@pytest.fixture
def paused_workload(request, tmp_path):
    """known_accesses under qemu-x86_64 + GMBEOO (tracing off), a reader draining the FIFO; the
    records written by the generated code (build.py's QEMU, by default) or by the plugin's callback
    (indirect parameter "callback")."""
    fifo = tmp_path / "trace.fifo"
    os.mkfifo(fifo)
    socket_path = tmp_path / "control.sock"
    plugin = f"{QEMU_DIR / 'libgmbeoo.so'},trace_fifo_path={fifo},control_socket_path={socket_path},enabled=off"
    if getattr(request, "param", "inline") == "callback":
        plugin += ",callback_records=on"
    # A buffer that never fills: what reaches a vCPU must not wait for it to.
    plugin += f",buffer_records={1 << 20}"
    child = pexpect.spawn(str(QEMU_DIR / "qemu-x86_64"), ["-plugin", plugin, str(PROGRAMS / "known_accesses"), "linger"],
                          echo=False, encoding="utf-8", timeout=30)
    reader = pexpect.spawn("/bin/sh", ["-c", f"wc -c < {fifo}"], encoding="utf-8", timeout=30)
    control = ControlChannel(socket_path).connect(child.isalive)
    yield child, control, reader
    control.close()
    child.close(force=True)
    reader.close(force=True)


@pytest.mark.parametrize("paused_workload", ["inline", "callback"], indirect=True)
def test_counters_follow_enable_flush_and_disable(paused_workload, request):
    child, control, reader = paused_workload
    inline = request.node.callspec.params["paused_workload"] == "inline"
    session = ProtocolSession(child)
    session.read_info()
    counters = control.counters()
    assert counters.pop("inline_records") == inline
    assert set(counters.values()) == {0}
    # A CPL filter change re-translates (a reset from each vCPU, asked through the room check of
    # inline records or a conditional callback) and must leave tracing working; user-mode code is
    # all CPL 3, so every access is still traced.
    control.set(trace_only_CPL3_code_GMBE="on")
    control.enable()
    session.release()
    session.wait_for_stop(timeout=30)
    control.disable()
    control.flush()
    counters = control.counters()
    assert counters["retranslations"] == 1
    assert counters["num_of_events_written_to_trace_buf"] >= 1391  # known_accesses' own accesses
    assert counters["num_of_events_written_to_trace_file"] == counters["num_of_events_written_to_trace_buf"]
    assert counters["num_of_events_waiting_in_trace_buf"] == 0
    session.release()   # let it exit
    child.expect(pexpect.EOF)
    reader.expect(pexpect.EOF)
    assert int(reader.before) == 16 * counters["num_of_events_written_to_trace_file"]
    assert not os.path.exists(control.socket_path), "the plugin removes its socket at exit"


def test_bad_commands_get_errors_and_the_channel_stays_usable(paused_workload):
    child, control, reader = paused_workload
    with pytest.raises(ControlChannelError, match="unknown command frobnicate"):
        control.command("frobnicate")
    with pytest.raises(ControlChannelError, match=r"log_of_GMBE_block_len must be in range \[0, 64\], but 70 isn't"):
        control.set(log_of_GMBE_block_len=70)
    with pytest.raises(ControlChannelError, match="32 \\+ 33 = 65"):
        control.set(log_of_GMBE_block_len=32, log_of_GMBE_tracing_ratio=33)
    with pytest.raises(ControlChannelError, match="unknown option trace_fifo_path"):
        control.set(trace_fifo_path="/tmp/x")
    control.set(log_of_GMBE_block_len=0, log_of_GMBE_tracing_ratio=64)
    assert control.counters()["num_of_dropped_events"] == 0


def read_until_closed(sock):
    try:
        while sock.recv(65536):
            pass
    except OSError:
        pass   # reset: the plugin closed with commands unread


def test_a_client_busy_on_the_channel_as_qemu_exits_does_not_kill_it(tmp_path):
    """At exit the plugin shuts its control channel down, perhaps between a command and its reply;
    the reply must not raise SIGPIPE, which qemu-x86_64 passes on to the guest: such a run died
    before the plugin wrote its counters (14 runs of 15 here, with a client this busy)."""
    for run in range(3):
        socket_path, counters = tmp_path / f"control{run}.sock", tmp_path / f"counters{run}"
        plugin = (f"{QEMU_DIR / 'libgmbeoo.so'},trace_fifo_path={tmp_path / 'never.fifo'},"
                  f"control_socket_path={socket_path},counters_path={counters},enabled=off")
        qemu = subprocess.Popen([str(QEMU_DIR / "qemu-x86_64"), "-plugin", plugin, str(PROGRAMS / "mem_loop"), "8192", "1"],
                                stdout=subprocess.DEVNULL)
        try:
            client = connect_when_listening(str(socket_path), 30, lambda: qemu.poll() is None)
            assert client is not None, "the plugin's control channel did not open"
            replies = threading.Thread(target=read_until_closed, args=(client,))
            replies.start()
            try:
                while qemu.poll() is None:   # commands queued all the time: one is in hand at the exit
                    client.sendall(b"counters\n" * 64)
            except OSError:
                pass   # the plugin shut the channel down
            assert qemu.wait(timeout=60) == 0
            replies.join(timeout=30)
            client.close()
        finally:
            qemu.kill()   # only if the test failed first
        assert "num_of_events_written_to_trace_file" in parse_counters(counters.read_text()), "counters at exit"
