"""Runs that go wrong say so in one line, lose nothing silently, and leave the machine as they found
it: bad input, faults during a run, signals at each phase, the guest channel fuzzed, and load."""
import ctypes
import json
import os
import re
import pty
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
import tty

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from conftest import (GUEST_IMAGE, PROGRAMS, QEMU_DIR, REPO, SNAPSHOT, TEST_TOOLS, TOOLS, analysis_counts,
                      executable, image_fingerprint, processes_mentioning, system, trace_info, user_mode)
from memtracer.errors import WorkloadError
from memtracer.qemu.machine import MachineProfile, QemuMachine
from memtracer.qemu.guest_channel import (ACK, HEADER, MAGIC, PING, PONG, TRAILER, FrameParser, GuestChannel,
                                         encode_frame)

KNOWN = PROGRAMS / "known_accesses"
PROTOCOL = "--dont_add_communications_with_host_to_workload"
MODES = {"system": system, "user": user_mode}
FAST_FAIL = dict(os.environ, MEMORY_TRACER_TOOL_TIMEOUT="3")
RUNNER = REPO / "build" / "guest_programs" / "runner"
SYS_TGKILL = 234   # x86-64: a signal to one thread of a process


@pytest.fixture(scope="module", autouse=True)
def image_unchanged():
    """Whatever goes wrong in this module, the built-in image and its snapshot stay as they were."""
    before = image_fingerprint(GUEST_IMAGE)
    yield
    assert image_fingerprint(GUEST_IMAGE) == before


@pytest.fixture(autouse=True)
def nothing_left_running():
    yield
    assert processes_mentioning("qemu-system-x86_64") == []
    assert [p for p in os.listdir("/dev/shm") if p.startswith("memory_tracer-")] == []


def one_line_error(run, returncode=1):
    assert run.returncode == returncode, run.stdout + run.stderr
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert "Traceback" not in run.stderr
    return run.stderr.strip()


# ----------------------------------------------------------------- bad input

def test_corrupt_image(tracer, tmp_path):
    image = tmp_path / "corrupt.qcow2"
    image.write_bytes(b"QFI\xfb" + os.urandom(4092))
    message = one_line_error(tracer(image, SNAPSHOT, QEMU_DIR, "--workload_path_on_guest", "/bin/true", "--dont_trace"))
    assert message.startswith(f"guest_image_path must be a qcow2 image, but {image} isn't")


def test_workload_that_is_not_a_program(tracer, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a program\n")
    message = one_line_error(tracer(*system("--workload_path_on_host", text, "--dont_trace")))
    assert message == (f"workload_path_on_host must be a program (an ELF executable or a #! script), "
                       f"but {text} isn't.")


def test_unknown_machine_type_of_a_snapshot(tracer, tmp_path):
    image = tmp_path / "copy.qcow2"
    shutil.copyfile(GUEST_IMAGE, image)
    description = json.loads(open(str(GUEST_IMAGE) + ".memory_tracer.json").read())
    open(str(image) + ".memory_tracer.json", "w").write(json.dumps({**description, "machine": "pc-i440fx-99.0"}))
    message = one_line_error(tracer(image, SNAPSHOT, QEMU_DIR, "--workload_path_on_guest", "/bin/true", "--dont_trace"))
    assert "machine type this QEMU does not have" in message and "pc-i440fx-99.0" in message


@pytest.mark.parametrize("tool,message", [
    ("/bin/true", "the analysis tool /bin/true exited (exit code 0) before printing 'Ready to analyze'."),
    (TEST_TOOLS / "never_ready.py", f"the analysis tool {TEST_TOOLS / 'never_ready.py'} did not print "
                                    "'Ready to analyze' within 3 s."),
])
def test_analysis_tool_that_breaks_the_protocol_at_the_start(tracer, tool, message):
    started = time.monotonic()
    run = tracer(*system("--workload_path_on_host", KNOWN, PROTOCOL, "--analysis_tool_path", tool), env=FAST_FAIL)
    assert one_line_error(run) == message
    assert time.monotonic() - started < 30


def test_analysis_tool_that_never_prints_its_end_marker(tracer):
    started = time.monotonic()
    run = tracer(*system("--workload_path_on_host", KNOWN, PROTOCOL,
                         "--analysis_tool_path", TEST_TOOLS / "no_end_marker.py"), env=FAST_FAIL)
    assert "-----end analysis output-----" in one_line_error(run)
    assert time.monotonic() - started < 30


def test_trace_fifo_path_without_a_reader(tracer, tmp_path):
    fifo = tmp_path / "nobody.fifo"
    os.mkfifo(fifo)
    started = time.monotonic()
    run = tracer(*system("--workload_path_on_host", KNOWN, PROTOCOL, "--trace_fifo_path", fifo), env=FAST_FAIL)
    assert "trace_fifo_path" in one_line_error(run)
    assert time.monotonic() - started < 30


# ----------------------------------------------------------------- faults during a run

def test_workload_that_exits_without_stop_tracing(tracer):
    run = tracer(*system("--workload_path_on_guest", "/bin/busybox", "--workload_args", "echo hello", PROTOCOL,
                         "--analysis_tool_path", TOOLS / "count"))
    assert one_line_error(run) == ("the workload ended (exit code 0) before printing "
                                   "'-----begin workload info-----'; its last output: 'hello'.")


@pytest.mark.parametrize("mode", ["system", "user"])
def test_analysis_tool_that_crashes_mid_stream(tracer, mode):
    run = tracer(*MODES[mode]("--workload_path_on_host", PROGRAMS / "mem_loop", "--workload_args", "65536 4",
                              "--analysis_tool_path", TEST_TOOLS / "crash_mid_stream.py"))
    message = one_line_error(run)
    # The tool is named, not QEMU that its closed FIFO then killed (SIGPIPE in user mode).
    assert message.startswith(f"the analysis tool {TEST_TOOLS / 'crash_mid_stream.py'}") and "SIGSEGV" in message


# ----------------------------------------------------------------- records that do not arrive

BUSY = ("--workload_path_on_host", PROGRAMS / "mem_loop", "--workload_args", "65536 4")   # ~30 M records
TAKES_A_LITTLE = TEST_TOOLS / "takes_a_little.py"


@pytest.mark.parametrize("mode", ["system", "user"])
def test_tool_that_closes_its_fifo_early_fails_the_run_at_once(tracer, mode):
    started = time.monotonic()
    run = tracer(*MODES[mode](*BUSY, "--analysis_tool_path", TAKES_A_LITTLE))
    message = one_line_error(run)
    assert message.startswith(f"the analysis tool {TAKES_A_LITTLE} closed the trace FIFO ")
    assert message.endswith("bytes unread in it): the trace is incomplete.")
    assert time.monotonic() - started < 60


def test_trace_fifo_path_reader_that_exits_early_is_seen_at_once(tracer, tmp_path):
    fifo = tmp_path / "mine.fifo"
    os.mkfifo(fifo)

    def read_a_little():
        with open(fifo, "rb") as f:
            f.read(1 << 20)
    reader = threading.Thread(target=read_a_little)
    reader.start()
    started = time.monotonic()
    run = tracer(*system(*BUSY, "--trace_fifo_path", fifo))
    reader.join()
    message = one_line_error(run)
    assert message.startswith(f"the reader of trace_fifo_path closed the trace FIFO {fifo} before the trace ended")
    assert time.monotonic() - started < 60


@pytest.mark.parametrize("mode", ["system", "user"])
def test_tool_that_stops_reading_fails_after_the_tool_timeout(tracer, mode):
    started = time.monotonic()
    run = tracer(*MODES[mode](*BUSY, "--analysis_tool_path", TAKES_A_LITTLE, "--analysis_tool_args", "never"),
                 env=FAST_FAIL)
    message = one_line_error(run)
    assert re.fullmatch(rf"the analysis tool {re.escape(str(TAKES_A_LITTLE))} took nothing for 3 s while the plugin "
                        r"had records for it \(\d+ handed over, \d+ bytes of them unread\): it stopped reading\.",
                        message), message
    assert time.monotonic() - started < 60
    assert processes_mentioning("qemu-system-x86_64") == [] and processes_mentioning("qemu-x86_64") == []


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_ends_a_run_stuck_on_its_tool_within_seconds(private_tmp, signum):
    run = subprocess.Popen([sys.executable, str(REPO / "memory_tracer.py"), *map(str, system(
                            *BUSY, "--analysis_tool_path", TAKES_A_LITTLE, "--analysis_tool_args", "never", "-v"))],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=dict(os.environ, TMPDIR=str(private_tmp)))
    for line in run.stderr:
        if PHASES["tracing"] in line:
            break
    time.sleep(3)   # the guest is stuck in the plugin by now, waiting for the tool to read
    run.send_signal(signum)
    started = time.monotonic()
    run.communicate(timeout=60)
    assert run.returncode == 130
    assert time.monotonic() - started < 10
    assert processes_mentioning(str(private_tmp)) == []


def test_trace_files_on_a_full_disk_fail_the_run(tracer, tmp_path):
    small = tmp_path / "small_disk"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", small], check=True)
    try:
        run = tracer(*system(*BUSY, "--trace_files_per_vcpu", small, "--print_trace_info"))
    finally:
        subprocess.run(["umount", small], check=True)
    assert run.returncode == 1
    [line] = run.stderr.strip().splitlines()
    assert re.fullmatch(r"memory_tracer\.py: the trace files hold \d+ of the \d+ records written \(\d+ lost: is "
                        r"the disk full\?\): the trace is incomplete\.", line), line


def test_tool_that_fails_says_why_in_the_same_line(tracer):
    # The record tool on a full disk (/dev/full): its own words, not just its exit code.
    run = tracer(*user_mode(*BUSY, "--analysis_tool_path", TOOLS / "record", "--analysis_tool_args",
                            "--output /dev/full"))
    message = one_line_error(run)
    assert message.startswith(f"the analysis tool {TOOLS / 'record'} ")
    assert message.endswith("its last output: 'record: writing /dev/full failed: No space left on device'.")


def kill_qemu_when_it_runs(tmp, deadline_seconds=60):
    pid = qemu_started_in(tmp, deadline_seconds)
    # Loaded, the workload running: loadvm takes 0.6 s on a quiet machine and 2.6 s when the host
    # is slow to give the guest's RAM its pages. spin_forever runs until killed, so a longer wait
    # only makes sure that it runs.
    time.sleep(6)
    os.kill(int(pid), signal.SIGKILL)


def pause_then_kill_qemu(tmp, deadline_seconds=60):
    pid = qemu_started_in(tmp, deadline_seconds)
    monitor = socket.socket(socket.AF_UNIX)
    deadline = time.monotonic() + deadline_seconds
    while monitor.connect_ex(f"/proc/{pid}/cwd/monitor.sock") != 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    with monitor:
        monitor.sendall(b"stop\n")   # read once loadvm is done, before the runner is pinged
        said = b""
        while b"VM status: paused" not in said and time.monotonic() < deadline:
            monitor.sendall(b"info status\n")
            said += monitor.recv(4096)
        time.sleep(2)   # memory_tracer pings the runner meanwhile, in vain
        os.kill(int(pid), signal.SIGKILL)


def qemu_started_in(tmp, deadline_seconds):
    deadline = time.monotonic() + deadline_seconds
    while time.monotonic() < deadline:
        for pid in processes_mentioning("qemu-system-x86_64"):
            if os.path.realpath(f"/proc/{pid}/cwd").startswith(tmp):
                return pid
        time.sleep(0.01)
    raise AssertionError("QEMU did not start")


@pytest.mark.parametrize("killer, said", [
    (kill_qemu_when_it_runs, "QEMU ended while the workload ran"),
    # The guest paused as QEMU starts, so that its runner never answers: QEMU's end is told as
    # such, not as the runner's port closing.
    (pause_then_kill_qemu, "QEMU ended before the workload was ready to trace")],
    ids=["during_the_run", "while_the_runner_is_awaited"])
def test_qemu_killed(tracer, private_tmp, killer, said):
    thread = threading.Thread(target=killer, args=(str(private_tmp),))
    thread.start()
    run = tracer(*system("--workload_path_on_host", PROGRAMS / "spin_forever", "--dont_trace"))
    thread.join()
    assert one_line_error(run).startswith(said)


def test_consumer_that_stalls_then_resumes_loses_nothing(tracer):
    run = tracer(*system("--workload_path_on_host", PROGRAMS / "mem_loop", "--workload_args", "16384 2",
                         "--analysis_tool_path", TEST_TOOLS / "stalling_count.py", "--print_trace_info"))
    assert run.returncode == 0, run.stderr
    counts = analysis_counts(run.stdout)
    assert counts["stalled_ms"] >= 1000
    assert counts["num_of_records"] == trace_info(run.stdout)["num_of_events_written_to_trace_buf"]
    assert "num_of_dropped_events" not in trace_info(run.stdout)


# ----------------------------------------------------------------- signals at each phase

PHASES = {
    "loading": "loading the snapshot",
    "transfer": "sending the workload",
    "tracing": "the workload runs",
    "analysis": "-----begin analysis output-----",   # the tool's, echoed with -v
}


def run_until(phase, private_tmp):
    """A verbose full-system run, once it reached the phase. For the analysis phase, a tool that
    stops half-way through a line of its report; what of it was read is returned too."""
    tool = TEST_TOOLS / "no_end_marker.py" if phase == "analysis" else TOOLS / "count"
    run = subprocess.Popen([sys.executable, str(REPO / "memory_tracer.py"), *map(str, system(
                            "--workload_path_on_host", PROGRAMS / "mem_loop", "--workload_args", "16384 2",
                            "--analysis_tool_path", tool, "-v"))],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=dict(os.environ, TMPDIR=str(private_tmp)))
    for line in run.stderr:
        if PHASES[phase] in line:
            break
    return run, run.stderr.read(len("records:")) if phase == "analysis" else ""


@pytest.mark.parametrize("phase", list(PHASES))
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_at_each_phase_cleans_up(private_tmp, phase, signum):
    run, left_open = run_until(phase, private_tmp)
    run.send_signal(signum)
    stdout, stderr = run.communicate(timeout=60)
    stderr = left_open + stderr   # our last line starts a line of its own, after the tool's half line
    assert run.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] in ("memory_tracer.py: interrupted.",
                                               "memory_tracer.py: stopped by SIGTERM.")
    assert "QEMU did not quit" not in stderr   # no vCPU left waiting for room from a reader gone
    assert processes_mentioning(str(private_tmp)) == []


def test_a_signal_that_another_thread_takes_still_ends_the_run(private_tmp):
    # Python runs handlers in the main thread only. Sent to a helper thread (a process-wide signal
    # may land on any), SIGTERM used to leave the main thread asleep in its wait for the report.
    run, _ = run_until("analysis", private_tmp)
    helpers = [int(tid) for tid in os.listdir(f"/proc/{run.pid}/task") if int(tid) != run.pid]
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.syscall(SYS_TGKILL, run.pid, helpers[-1], signal.SIGTERM) == 0
    try:
        _, stderr = run.communicate(timeout=60)   # the wait it interrupts is 120 s long
    finally:
        run.kill()
    assert run.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == "memory_tracer.py: stopped by SIGTERM."


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_while_a_snapshot_is_made_cleans_up(private_tmp, tmp_path, signum):
    image = tmp_path / "image.qcow2"
    shutil.copyfile(GUEST_IMAGE, image)
    run = subprocess.Popen([sys.executable, "-m", "memtracer.snapshot", str(image), "--virtio_serial"],
                           cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in run.stderr:
        if "booting the guest" in line:
            break
    run.send_signal(signum)
    try:
        _, stderr = run.communicate(timeout=60)
    finally:
        run.kill()
    assert run.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] in ("memtracer.snapshot: interrupted.",
                                               "memtracer.snapshot: stopped by SIGTERM.")
    assert processes_mentioning(str(image)) == []   # and private_tmp checks its directory went


# ----------------------------------------------------------------- the guest channel, fuzzed

def valid_frames():
    return st.builds(encode_frame, st.sampled_from([PING, PONG, ACK, b"O"]), st.binary(max_size=300))


def corrupted(frame_and_position):
    frame, position = frame_and_position
    position %= len(frame)
    return frame[:position] + bytes([frame[position] ^ 0x5A]) + frame[position + 1:]


noise = st.binary(max_size=200).map(lambda b: b.replace(MAGIC, b"MTRx"))
bad_frames = st.one_of(
    st.tuples(valid_frames(), st.integers(4, 10_000)).map(corrupted),                 # a flipped byte
    st.tuples(valid_frames(), st.integers(1, 10_000)).map(lambda t: t[0][:t[1] % len(t[0])]),  # truncated
    st.binary(max_size=8).map(lambda b: MAGIC + b"P" + (0xFFFFFFF0).to_bytes(4, "little") + b),  # oversized
    noise,
)


def completed_by(bad, following):
    """Whether the bytes after a truncated frame complete it (its lost last byte was an "M", say):
    the stream then holds a valid frame there, which no parser could tell from one sent whole."""
    if not bad.startswith(MAGIC) or len(bad) < HEADER.size:
        return False
    _, kind, length = HEADER.unpack_from(bad)
    end = HEADER.size + length
    stream = bad + following
    return encode_frame(bytes([kind]), stream[HEADER.size:end]) == stream[:end + TRAILER.size]


def drain(parser):
    """Complete, with zero bytes, any frame the parser still waits for (a truncated or corrupted
    one claims more bytes than came): then it must give up on it and find what followed."""
    frames = []
    for _ in range(64):
        if not parser.buffer.startswith(MAGIC) or len(parser.buffer) < HEADER.size:
            break
        _, _, length = HEADER.unpack_from(parser.buffer)
        frames += parser.feed(bytes(HEADER.size + length + TRAILER.size - len(parser.buffer)))
    return frames


@settings(max_examples=300, deadline=None)
@given(pieces=st.lists(st.tuples(st.booleans(), valid_frames(), bad_frames), max_size=8),
       cuts=st.lists(st.integers(1, 64), max_size=20))
def test_host_parser_finds_every_intact_frame(pieces, cuts):
    """Valid frames between noise and broken frames, fed in arbitrary pieces: every valid frame
    comes out whole, in order, and nothing else does; a broken frame that claims more bytes than
    came only delays the frames after it until those bytes arrive."""
    stream, expected = b"", []
    for before, frame, bad in pieces:
        if before:
            assume(not completed_by(bad, frame))
            stream += bad
        stream += frame
        expected.append(frame)
    parser, frames, offset = FrameParser(), [], 0
    for cut in cuts + [len(stream)]:
        frames += parser.feed(stream[offset:offset + cut])
        offset += cut
    frames += drain(parser)
    assert [encode_frame(kind, payload) for kind, payload, ok in frames if ok] == expected


@pytest.fixture(scope="module")
def runner_on_a_pty(tmp_path_factory):
    """The real guest runner, on this host, with a pseudo-terminal as its serial port."""
    master, slave = pty.openpty()
    tty.setraw(master)
    work = tmp_path_factory.mktemp("runner")
    process = subprocess.Popen([RUNNER, work, os.ttyname(slave)])
    yield process, master
    process.kill()
    process.wait()
    os.close(master)
    os.close(slave)


def ping(master, nonce, timeout=5.0):
    """True when the runner answers this ping (resent every second, as the host does)."""
    parser = FrameParser()
    deadline = time.monotonic() + timeout
    next_send = 0.0
    while time.monotonic() < deadline:
        if time.monotonic() >= next_send:
            os.write(master, encode_frame(PING, nonce))
            next_send = time.monotonic() + 1.2
        if select.select([master], [], [], 0.1)[0]:
            for kind, payload, ok in parser.feed(os.read(master, 65536)):
                if ok and kind == PONG and payload == nonce:
                    return True
    return False


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(garbage=st.lists(bad_frames, min_size=1, max_size=5), nonce=st.binary(min_size=8, max_size=8))
def test_runner_survives_broken_frames(runner_on_a_pty, garbage, nonce):
    process, master = runner_on_a_pty
    for piece in garbage:
        os.write(master, piece)
    assert ping(master, nonce), "the runner stopped answering"
    assert process.poll() is None


def test_a_runner_port_that_closes_says_how(tmp_path):
    """A port that QEMU closes under a waiting request says so, not only that it closed: once, in
    a run under load, the only word was that it closed, with QEMU still running."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp_path / "port.sock"))
    listener.listen(1)
    channel = GuestChannel(str(tmp_path / "port.sock"), "virtio-serial port")
    channel.connect(lambda: True, timeout=5)
    try:
        qemu_side, _ = listener.accept()
        threading.Timer(0.2, qemu_side.close).start()
        with pytest.raises(WorkloadError, match=r"closed while waiting for the runner \(QEMU closed the connection\)"):
            channel.ping(timeout=5)
    finally:
        channel.close()
        listener.close()


def test_qemu_says_why_a_runner_port_disconnected_and_the_users_log_leaves_it_out(tmp_path):
    """QEMU's own account of a runner port's disconnect (its chardev trace), which a port that
    closes under a running QEMU is told with, is in its log; the log the user is shown leaves it out."""
    profile = MachineProfile.for_image(GUEST_IMAGE, json.loads(
        MachineProfile.sidecar_path(GUEST_IMAGE).read_text())["ram_mb"])
    with QemuMachine(QEMU_DIR / "qemu-system-x86_64", GUEST_IMAGE, profile, SNAPSHOT, parent_dir=tmp_path) as machine:
        machine.launch()
        socket_path, name = machine.runner_ports()[0]
        channel = GuestChannel(socket_path, name)
        channel.connect(machine.is_alive, timeout=30)
        assert machine.reach_runner(channel, time.monotonic() + 60)
        assert machine.chardev_said() is None
        channel.close()   # as QEMU would see a port closed by its other end
        deadline = time.monotonic() + 10
        while machine.chardev_said() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert machine.chardev_said() == "chardev socket recv end-of-file (mt_port)"
        assert "chr_socket" not in machine.log_text()


# ----------------------------------------------------------------- security

def folder_of_sockets(root):
    """The first folder under root holding three sockets or more: its mode, its parent's, its
    sockets' names and its owner; {} if there is none yet. A run makes and removes files all along:
    what vanishes while it is looked at is passed over."""
    for folder, _, names in os.walk(root):
        path = Path(folder)
        try:
            sockets = [path / n for n in names if stat.S_ISSOCK((path / n).lstat().st_mode)]
            if len(sockets) >= 3:
                return {"mode": stat.S_IMODE(path.stat().st_mode),
                        "parent_mode": stat.S_IMODE(path.parent.stat().st_mode),
                        "sockets": sorted(p.name for p in sockets), "owner": path.stat().st_uid}
        except FileNotFoundError:
            continue
    return {}


def test_private_directory_and_sockets(tracer, private_tmp):
    seen = {}

    def look():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not seen:
            seen.update(folder_of_sockets(private_tmp))
            time.sleep(0.02)
    watcher = threading.Thread(target=look)
    watcher.start()
    run = tracer(*system("--workload_path_on_host", KNOWN, PROTOCOL, "--analysis_tool_path", TOOLS / "count"))
    watcher.join()
    assert run.returncode == 0, run.stderr
    assert seen["mode"] == 0o700 and seen["parent_mode"] == 0o700 and seen["owner"] == os.getuid()
    assert {"qmp.sock", "monitor.sock", "serial.sock"} <= set(seen["sockets"])


# ----------------------------------------------------------------- load

def test_a_hundred_runs_back_to_back(tracer):
    shm_before = sorted(os.listdir("/dev/shm"))
    available = []
    for i in range(100):
        run = tracer(*system("--workload_path_on_host", KNOWN, PROTOCOL, "--analysis_tool_path", TOOLS / "count"))
        assert run.returncode == 0, (i, run.stderr)
        assert analysis_counts(run.stdout)["range_store_8_unsigned"] == 111
        assert processes_mentioning("memory_tracer") == [], i   # each run took its processes with it
        if i % 25 == 0:
            available.append(int(open("/proc/meminfo").read().split("MemAvailable:")[1].split()[0]))
    assert sorted(os.listdir("/dev/shm")) == shm_before
    assert max(available) - min(available) < 512 * 1024   # KiB: no growth run after run


def open_descriptors(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_many_windows_in_one_process_leak_no_descriptors(private_tmp):
    """One memory_tracer process that opens and closes twenty trace windows from the monitor,
    each with a fresh analysis tool and FIFO: its own descriptors do not grow."""
    command = [sys.executable, str(REPO / "memory_tracer.py"),
               *map(str, system("--workload_path_on_guest", "/bin/true", "--analysis_tool_path", TOOLS / "count",
                                "--dont_exit_qemu_when_done"))]
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=dict(os.environ, TMPDIR=str(private_tmp)))
    counts = []
    try:
        for _ in range(20):
            proc.stdin.write("trace_start\ntrace_stop\ntrace_status\n")
            proc.stdin.flush()
            line = ""
            while not line.startswith("tracing: off"):   # trace_status answers after the window closed
                line = proc.stdout.readline()
                assert line, f"memory_tracer ended early: {proc.stderr.read()}"
            counts.append(open_descriptors(proc.pid))
        out, err = proc.communicate("quit\n", timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert counts[-1] == counts[1], counts   # the first window may open what later ones reuse


def test_parallel_runs_on_private_copies(private_tmp):
    command = [sys.executable, str(REPO / "memory_tracer.py"), *map(str, system(
        "--workload_path_on_host", KNOWN, PROTOCOL, "--analysis_tool_path", TOOLS / "count",
        "--run_on_private_copy"))]
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=dict(os.environ, TMPDIR=str(private_tmp))) for _ in range(3)]
    for run in runs:
        stdout, stderr = run.communicate(timeout=300)
        assert run.returncode == 0, stderr
        assert analysis_counts(stdout)["range_store_8_unsigned"] == 111


# ----------------------------------------------------------------- a user without root, a full disk

@pytest.fixture
def as_nobody():
    """Runs memory_tracer.py as `nobody` (Debian's python3, a TMPDIR of its own); the built-in image
    and build/ belong to root."""
    with tempfile.TemporaryDirectory(prefix="memory_tracer_nobody_") as tmp:
        os.chmod(tmp, 0o777)

        def run(*args):
            command = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                       "env", f"TMPDIR={tmp}", f"HOME={tmp}", "/usr/bin/python3", str(REPO / "memory_tracer.py"),
                       *map(str, system(*args))]
            return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp)
        yield run
        assert os.listdir(tmp) == []


def test_a_user_without_root_is_told_what_to_do(as_nobody):
    run = as_nobody("--workload_path_on_guest", "/bin/true", "--dont_trace")
    assert one_line_error(run) == (f"guest_image_path {GUEST_IMAGE} cannot be opened for writing by this user "
                                   "(QEMU: Permission denied); run as the image's owner, or pass "
                                   "--run_on_private_copy (a private copy needs only to read it)")
    run = as_nobody("--workload_path_on_guest", "/bin/true", "--dont_trace", "--smp", "5")
    assert one_line_error(run) == ("the built-in image for 5 vCPUs is not made yet, and this user may not make it "
                                   f"({GUEST_IMAGE.parent / '.making_smp5.lock'}: Permission denied); run "
                                   f"`python3 build.py --smp 5` as the owner of {GUEST_IMAGE.parent}.")
    run = as_nobody("--workload_path_on_guest", "/bin/true", "--dont_trace", "--run_on_private_copy")
    assert run.returncode == 0, run.stderr


def test_a_full_temporary_directory_is_one_line(tmp_path):
    small = tmp_path / "small_tmp"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", small], check=True)
    try:
        run = subprocess.run([sys.executable, str(REPO / "memory_tracer.py"), *map(str, system(
                              "--workload_path_on_guest", "/bin/true", "--dont_trace", "--run_on_private_copy"))],
                             capture_output=True, text=True, timeout=300, env=dict(os.environ, TMPDIR=str(small)))
        leftovers = os.listdir(small)
    finally:
        subprocess.run(["umount", small], check=True)
    size_mb = GUEST_IMAGE.stat().st_size / 1e6
    assert one_line_error(run) == (f"--run_on_private_copy: copying {GUEST_IMAGE} ({size_mb:.0f} MB) into {small} "
                                   "failed (No space left on device); free some space there or set TMPDIR to a "
                                   "directory with room.")
    assert leftovers == []


# ----------------------------------------------------------------- the workload's stdin

LINE_COUNTER = """#!/bin/sh
echo "-----begin workload info-----"
echo "-----end workload info-----"
echo "Ready to trace. Press enter to continue"
read -r enter
lines=$(wc -l)
echo "Stop tracing"
exit $lines
"""
WORKLOAD_MODES = {
    "system": lambda *args: system(*args, "--dont_trace"),
    "user": lambda *args: user_mode(*args, "--dont_trace"),
    "native": lambda *args: ["--dont_use_qemu", "x", "y", "z", *args],
}


@pytest.mark.parametrize("mode", WORKLOAD_MODES)
@pytest.mark.parametrize("protocol", [True, False], ids=["protocol", "wrapped"])
def test_our_stdin_reaches_the_workload_and_ends(tracer, tmp_path, mode, protocol):
    # Seven lines in, the workload's exit code says how many it read; from /dev/null, none (and
    # no hang: a full-system workload's stdin used to be a guest terminal nobody fed).
    if protocol:
        script = executable(tmp_path / "count_lines.sh", LINE_COUNTER)
        workload = ["--workload_path_on_host", script, PROTOCOL]
    elif mode == "system":
        workload = ["--workload_path_on_guest", "/bin/sh", "--workload_args", "-c 'exit $(wc -l)'"]
    else:
        workload = ["--workload_path_on_host", "/bin/sh", "--workload_args", "-c 'exit $(wc -l)'"]
    seven = tmp_path / "seven.txt"
    seven.write_text("".join(f"line {i}\n" for i in range(7)))
    with open(seven) as stdin:
        run = tracer(*WORKLOAD_MODES[mode](*workload), stdin=stdin, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stderr.strip() == "memory_tracer.py: the workload exited with code 7."
    run = tracer(*WORKLOAD_MODES[mode](*workload), stdin=subprocess.DEVNULL, timeout=120)
    assert (run.returncode, run.stderr) == (0, "")
