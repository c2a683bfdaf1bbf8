"""The records that the patched QEMU writes in its generated code are those of the callback path,
byte for byte: user mode (its runs repeat exactly with ASLR off), every way QEMU performs an access
(helper_paths: rep movs/stos, cmpxchg16b, fxsave/fxrstor, x87 80-bit, iretq, a faulting store,
threads that are vCPUs of their own), sampled and not, with buffers of one record (every room check
hands over) and of the default size, in both inline formats. Sampled with long gaps, the vCPUs run
blocks that only count accesses between the samples, and change translation on the way."""
import contextlib
import os
import subprocess
import threading
import time

import pexpect
import pytest

from conftest import PROGRAMS, QEMU_DIR, mappings_of
from memtracer.errors import ControlChannelError
from memtracer.qemu.plugin_control import ControlChannel, parse_counters
from memtracer.record import is_marker, records_from_bytes
from memtracer.run.workload import ProtocolSession
from memtracer.trace.shm_ring import ShmRingReader, create_ring
from memtracer.trace.trace_file import HEADER as TRACE_FILE_HEADER

PLUGIN = QEMU_DIR / "libgmbeoo.so"
# The guest's environment is QEMU's: the same on every machine, so that the runs are too. And where
# the guest's stack lands depends on what QEMU mapped before it: a malloc arena that one of QEMU's
# threads creates (64 MiB, whenever it first allocates) would move it from run to run.
GUEST_ENVIRONMENT = {"MALLOC_ARENA_MAX": "1"}


def run_traced(program, *plugin_args):
    """program (a command line) under qemu-x86_64 with ASLR off and GMBEOO given plugin_args;
    its output."""
    run = subprocess.run(["/usr/bin/setarch", "-R", QEMU_DIR / "qemu-x86_64", "-plugin",
                          ",".join([str(PLUGIN), *plugin_args]), *program],
                         stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
                         env=GUEST_ENVIRONMENT)
    assert run.returncode == 0, run.stderr
    return run.stdout


def run_helper_paths(*plugin_args):
    """helper_paths, 20 rounds, under qemu-x86_64 with ASLR off and GMBEOO given plugin_args."""
    assert run_traced([PROGRAMS / "helper_paths", "20"], *plugin_args).startswith("helper_paths: 20 rounds")


def trace_files(tmp_path, name, *plugin_args):
    """helper_paths under qemu-x86_64 with GMBEOO writing one trace file per vCPU; the files'
    bytes and the plugin's counters."""
    folder = tmp_path / name
    folder.mkdir()
    counters = tmp_path / f"{name}.counters"
    run_helper_paths(f"trace_dir={folder}", f"counters_path={counters}", *plugin_args)
    files = {path.name: path.read_bytes() for path in sorted(folder.iterdir())}
    return files, parse_counters(counters.read_text())


# (settings, 1 in how many events is traced, whether the gaps are long enough to count through,
# whether counting blocks write the samples: where the gaps are not, for samples 1 in 2^6 or fewer in
# user mode; else every record is written)
SAMPLINGS = {"all": ((), 1, False, False),
             "sampled": (("log_of_GMBE_block_len=2", "log_of_GMBE_tracing_ratio=3"), 8, False, False),
             "sampled, counted": (("log_of_GMBE_block_len=2", "log_of_GMBE_tracing_ratio=6"), 64, False, True),
             "1 in 1024": (("log_of_GMBE_tracing_ratio=10",), 1024, False, True),
             "sparse": (("log_of_GMBE_block_len=4", "log_of_GMBE_tracing_ratio=10"), 1024, True, False)}


@pytest.mark.qemu
@pytest.mark.parametrize("record_format", ["standard", "compact"])
@pytest.mark.parametrize("sampling", SAMPLINGS)
@pytest.mark.parametrize("buffer_records", [1, 4096])
def test_inline_records_are_the_callbacks_records(tmp_path, record_format, sampling, buffer_records):
    sampled, ratio, counted_through_gaps, samples_counted = SAMPLINGS[sampling]
    settings = (f"record_format={record_format}", f"buffer_records={buffer_records}", *sampled)
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
    events = inline_counters["num_of_GMBE_events_since_enabling_GMBEOO"]
    written = inline_counters["num_of_events_written_to_trace_file"]
    assert written == inline_counters["num_of_events_written_to_trace_buf"] > 100_000 // ratio
    assert inline_counters["num_of_events_waiting_in_trace_buf"] == inline_counters["num_of_dropped_events"] == 0
    assert 0.9 * ratio <= events / written <= ratio     # each vCPU begins with a traced block
    assert (inline_counters["counted_only_records"] > events // 2) == counted_through_gaps
    assert (inline_counters["counted_samples"] == written) == samples_counted
    assert callback_counters["counted_only_records"] == callback_counters["counted_samples"] == 0


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


def read_slowly(fifo, into):
    """A reader slower than the vCPUs: the pipe stays full, so buffers wait in it while others fill."""
    with open(fifo, "rb", buffering=0) as f:
        while chunk := f.read(1 << 16):
            into.append(chunk)
            time.sleep(0.002)


@pytest.mark.qemu
@pytest.mark.parametrize("sampling", ["all", "sampled"])
def test_the_fifo_gets_the_buffers_by_vmsplice_intact(tmp_path, sampling):
    """Inline records go to a FIFO by vmsplice (the pipe holds the buffers' pages until the reader
    has read them): each vCPU's records in the FIFO are its trace file's, byte for byte, though the
    reader lags far behind. Sampled often, every record is written and the sampled ones moved
    together in buffers larger than a run's that keeps them all."""
    settings = SAMPLINGS[sampling][0]
    files, _ = trace_files(tmp_path, "files", *settings)
    fifo, counters, chunks = tmp_path / "trace.fifo", tmp_path / "fifo.counters", []
    os.mkfifo(fifo)
    reader = threading.Thread(target=read_slowly, args=(fifo, chunks))
    reader.start()
    run_helper_paths(f"trace_fifo_path={fifo}", f"counters_path={counters}", *settings)
    reader.join(timeout=60)
    records = records_from_bytes(b"".join(chunks))
    assert parse_counters(counters.read_text())["spliced_records"] > len(records) // 2
    assert_each_vcpus_records_are_its_files(records, files)


def assert_each_vcpus_records_are_its_files(records, files):
    for vcpu in range(4):
        mine = records[records["vcpu"] == vcpu].tobytes()
        assert mine == files[f"vcpu{vcpu}.gmbe"][TRACE_FILE_HEADER.size:], f"vCPU {vcpu}"


@contextlib.contextmanager
def ring_being_read(path, capacity, take):
    """A ring of capacity records at path, read by the Python API's reader while the block runs:
    take(records) gets each chunk read (a view of the ring, valid during the call)."""
    create_ring(path, capacity=capacity)
    stop = threading.Event()
    never_woken, wake = os.pipe()
    with ShmRingReader(path) as ring:
        reader = threading.Thread(target=ring.follow, args=(take, stop.is_set, never_woken))
        reader.start()
        try:
            yield
        finally:
            stop.set()
            reader.join(timeout=60)
    os.close(never_woken)
    os.close(wake)


@contextlib.contextmanager
def controlled_qemu(command, control_path, **popen_args):
    """QEMU run as command, its plugin's control channel at control_path: yields (qemu, the
    connected channel); after the block the channel is closed and QEMU waited for, its stderr
    then in qemu.errors (killed if the block failed)."""
    qemu = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, **popen_args)
    try:
        control = ControlChannel(control_path).connect(lambda: qemu.poll() is None)
        yield qemu, control
        control.close()
        qemu.errors = qemu.communicate(timeout=120)[1]
    finally:
        if qemu.poll() is None:
            qemu.kill()
            qemu.wait()


@contextlib.contextmanager
def small_ring_read_slowly(path):
    """A ring of 8192 records at path, read slowed down as read_slowly is (it wraps often, and its
    writer waits for room) while the block runs: yields the list of the chunks read, complete once
    the block is done."""
    chunks = []

    def take_slowly(records):
        chunks.append(records.tobytes())
        time.sleep(0.002)

    with ring_being_read(path, 1 << 13, take_slowly):
        yield chunks


# The reader's distance that decides whether a lone vCPU writes its records in place in the ring
# (far_reader_ns): 0 takes any reader for near, 1 any for far (a line takes longer than 1 ns to come).
READER = {"near": "far_reader_ns=0", "far": "far_reader_ns=1"}


# A far reader is known once measured 5 times, 20 ms into the run: the 13,200 records of "sampled,
# counted" have all gone in place by then.
@pytest.mark.qemu
@pytest.mark.parametrize("sampling, reader", [("all", "near"), ("sampled", "near"), ("sampled, counted", "near"),
                                              ("all", "far"), ("sampled", "far")])
@pytest.mark.parametrize("buffer_records", [1, 4096])
def test_the_lone_vcpu_writes_its_records_in_place_in_the_ring(tmp_path, sampling, reader, buffer_records):
    """While the guest has one thread, its vCPU writes records straight into the shared-memory
    ring (its buffer is a window of the ring, wrapping at the ring's end) where the reader is near;
    once it makes threads, or where the reader is far, records are copied in (for a far reader
    past the vCPU's caches). Either way each vCPU's records in the ring are its trace file's, byte
    for byte, through a small ring whose reader lags far behind."""
    settings = (f"buffer_records={buffer_records}", *SAMPLINGS[sampling][0])
    files, _ = trace_files(tmp_path, "files", *settings)
    ring, counters = tmp_path / "trace.ring", tmp_path / "ring.counters"
    with small_ring_read_slowly(ring) as chunks:
        run_helper_paths(f"trace_shm_path={ring}", f"counters_path={counters}", READER[reader], *settings)
    records = records_from_bytes(b"".join(chunks))
    ran = parse_counters(counters.read_text())
    if reader == "near":
        assert ran["in_place_records"] > len(records) // 2
        assert ran["buffers_copied_for_far_reader"] == 0
    else:
        assert ran["buffers_copied_for_far_reader"] > 0, (ran, len(records))
    assert_each_vcpus_records_are_its_files(records, files)


@pytest.mark.qemu
def test_the_vcpu_goes_from_in_place_to_copies_and_back_as_the_reader_moves(tmp_path):
    """The reader's distance is measured each time the vCPU reads the ring's tail: the lone vCPU
    writes in place while the reader is near and copies while it is far, going from one to the
    other as that changes. Here far_reader_ns, set live to 1 and to 0 in turn every 10 ms while
    mem_loop runs, makes the reader far and near: both ways are taken, and the ring's records are
    the trace file's, byte for byte."""
    program = [PROGRAMS / "mem_loop", "2048", "4"]     # 3 M records, some 2 s through the slow reader
    folder, control_path = tmp_path / "files", tmp_path / "control.sock"
    folder.mkdir()
    # The control channel's thread here too: QEMU's threads move the guest's stack.
    run_traced(program, f"trace_dir={folder}", f"control_socket_path={control_path}")
    ring, counters = tmp_path / "trace.ring", tmp_path / "ring.counters"
    plugin = ",".join([str(PLUGIN), f"trace_shm_path={ring}", f"counters_path={counters}",
                       f"control_socket_path={control_path}"])
    with small_ring_read_slowly(ring) as chunks:
        # Output to a pipe, as run_traced's: the guest's stdio takes another way to /dev/null.
        with controlled_qemu(["/usr/bin/setarch", "-R", QEMU_DIR / "qemu-x86_64", "-plugin", plugin, *program],
                             control_path, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             env=GUEST_ENVIRONMENT) as (qemu, control):
            far = True
            with contextlib.suppress(ControlChannelError):     # until QEMU exits
                while qemu.poll() is None:
                    control.set(far_reader_ns=int(far))
                    far = not far
                    time.sleep(0.01)
    assert qemu.returncode == 0, qemu.errors
    ran = parse_counters(counters.read_text())
    assert ran["in_place_records"] > 0 and ran["buffers_copied_for_far_reader"] > 0, ran
    assert b"".join(chunks) == (folder / "vcpu0.gmbe").read_bytes()[TRACE_FILE_HEADER.size:]


@pytest.mark.qemu
@pytest.mark.parametrize("buffer_records", [1, 4096])
def test_markers_copied_into_the_ring_leave_the_records_after_them_whole(tmp_path, buffer_records):
    """Records written in place leave bytes 4-7 of their word to the ring, which keeps an access
    record's there; a marker copied in brings others, which the plugin puts back before the vCPU
    writes there again. marked_loop's three markers, then some 100,000 accesses through a small
    ring that wraps a dozen times after them: the ring's stream is the trace file's, byte for byte."""
    def run_marked_loop(*plugin_args):
        assert "Stop tracing" in run_traced([PROGRAMS / "marked_loop", "100000"], f"buffer_records={buffer_records}",
                                            *plugin_args)

    folder = tmp_path / "files"
    folder.mkdir()
    run_marked_loop(f"trace_dir={folder}")
    ring, counters = tmp_path / "trace.ring", tmp_path / "ring.counters"
    with small_ring_read_slowly(ring) as chunks:
        run_marked_loop(f"trace_shm_path={ring}", f"counters_path={counters}", READER["near"])
    records = records_from_bytes(b"".join(chunks))
    assert parse_counters(counters.read_text())["in_place_records"] > len(records) // 2
    assert is_marker(records).sum() == 3
    assert records.tobytes() == (folder / "vcpu0.gmbe").read_bytes()[TRACE_FILE_HEADER.size:]


def resident_bytes_of(pid, path):
    """Bytes of the file at path that the process has mapped in and resident."""
    return sum(resident for fields, resident, _ in mappings_of(pid) if fields[-1] == str(path))


@pytest.mark.qemu
def test_the_ring_is_mapped_in_whole_before_the_first_record(tmp_path):
    """The plugin has the ring's pages made and mapped when it takes the ring (a full-system guest
    is paused then), so that no record written in the window faults on a fresh page: empty_window,
    waiting at its Enter, has written a few pages' worth of records, and the ring is resident all
    the same."""
    ring = tmp_path / "trace.ring"
    capacity = 1 << 18
    create_ring(ring, capacity=capacity)
    with ShmRingReader(ring) as reader:
        reader.attach()
    child = pexpect.spawn(str(QEMU_DIR / "qemu-x86_64"), ["-plugin", f"{PLUGIN},trace_shm_path={ring},enabled=on",
                          str(PROGRAMS / "empty_window")], echo=False, encoding="utf-8", timeout=30)
    try:
        session = ProtocolSession(child)
        session.read_info()
        assert resident_bytes_of(child.pid, ring) >= capacity * 16
        session.release()
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)


# Children that store while their parent, traced, stores too: each child inherits its parent's
# buffer, and so, in user mode, the parent's window of the ring.
BUSY_FORKER = r"""
#include <stdint.h>
#include <sys/wait.h>
#include <unistd.h>
static volatile uint64_t words[4096];
static void store_a_lot(uint64_t seed, long times)
{
    for (long n = 0; n < times; n++) {
        words[n % 4096] = seed + (uint64_t)n;
    }
}
int main(void)
{
    for (int i = 0; i < 4; i++) {
        if (fork() == 0) {
            store_a_lot(1000 + i, 400000);
            _exit(0);
        }
        store_a_lot(i, 100000);
    }
    while (wait(0) > 0) {
    }
    return 0;
}
"""


@pytest.mark.qemu
def test_forked_children_leave_the_parents_ring_alone(tmp_path):
    """A forked child runs untraced, but its vCPU goes on from the parent's buffer: that must not
    be the parent's window of the ring (the mapping is shared). The parent's records in the ring
    are its trace file's, byte for byte."""
    source = tmp_path / "busy_forker.c"
    source.write_text(BUSY_FORKER)
    program = tmp_path / "busy_forker"
    subprocess.run(["gcc", "-O1", "-static", "-o", program, source], check=True)

    folder = tmp_path / "files"
    folder.mkdir()
    run_traced([program], f"trace_dir={folder}")
    ring, counters = tmp_path / "trace.ring", tmp_path / "ring.counters"
    with small_ring_read_slowly(ring) as chunks:
        run_traced([program], f"trace_shm_path={ring}", f"counters_path={counters}", READER["near"])
    records = b"".join(chunks)
    assert parse_counters(counters.read_text())["in_place_records"] > len(records) // 16 // 2
    assert records == (folder / "vcpu0.gmbe").read_bytes()[TRACE_FILE_HEADER.size:]


@pytest.mark.qemu
def test_a_ring_closed_under_the_writing_vcpu_is_left_alone(tmp_path):
    """`close` unmaps the ring while the lone vCPU is still writing into its window of it (it
    leaves the window only at its next hand-over): its records must go to private memory until
    then, neither into the reader's ring nor nowhere. Five windows opened and closed while the
    guest loops: QEMU runs on to a clean exit, and the ring holds what the plugin handed over in
    the windows, nothing after them."""
    ring, control_path = tmp_path / "trace.ring", tmp_path / "control.sock"
    plugin = ",".join([str(PLUGIN), f"trace_shm_path={ring}", f"control_socket_path={control_path}", "enabled=off",
                       f"buffer_records={1 << 16}", READER["near"]])     # long windows: the close comes in one
    handed_over, read = 0, []
    with ring_being_read(ring, 1 << 17, lambda records: read.append(len(records))):
        with controlled_qemu([QEMU_DIR / "qemu-x86_64", "-plugin", plugin, PROGRAMS / "mem_loop", "65536", "16"],
                             control_path, stdout=subprocess.DEVNULL) as (qemu, control):
            for _ in range(5):
                control.enable()
                time.sleep(0.1)      # the vCPU, looping, is in a window of the ring all along
                control.command("close")
                handed_over += control.counters()["num_of_events_written_to_trace_file"]
            in_place = control.counters()["in_place_records"]     # ever, not since enable
        assert qemu.returncode == 0, qemu.errors
    assert in_place > 0, "the vCPU wrote in place in the windows"
    assert sum(read) == handed_over


# A loop of one block: a plain load and a plain store. Where the vCPU only counts, the block counts
# both records at its start and has no exit check of its own.
PAIRED_LOOP = r"""
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
static uint64_t words[4096];
int main(int argc, char **argv)
{
    uint64_t sum = 0;
    for (long r = 0; r < atol(argv[1]); r++) {
        for (int i = 0; i < 4095; i++) {
            sum += words[i] ^ r;
            words[i + 1] = sum;
        }
    }
    printf("%016llx\n", (unsigned long long)sum);
    return 0;
}
"""


@pytest.mark.qemu
@pytest.mark.parametrize("sampling", ["sampled, counted", "sparse"])
@pytest.mark.parametrize("buffer_records", [1, 4096])
def test_blocks_that_count_at_their_start_leave_at_the_limit(tmp_path, sampling, buffer_records):
    """A block that counts its records at its start does not check for an exit request: at the
    limit (the end of a gap between samples, a full buffer), its add must carry all the same, so
    that the vCPU leaves there and writes the next sampled records. Else, in a loop of that block
    alone, it counts on past them, and hands over what its buffer held before. The records are
    the callback path's, byte for byte."""
    source = tmp_path / "paired_loop.c"
    source.write_text(PAIRED_LOOP)
    program = tmp_path / "paired_loop"
    subprocess.run(["gcc", "-O1", "-static", "-o", program, source], check=True)
    settings, _, counted_through_gaps, samples_counted = SAMPLINGS[sampling]
    traces = {}
    for path, extra in (("inline", ()), ("callback", ("callback_records=on",))):
        folder, counters = tmp_path / path, tmp_path / f"{path}.counters"
        folder.mkdir()
        run_traced([program, "200"], f"trace_dir={folder}", f"counters_path={counters}",
                   f"buffer_records={buffer_records}", *settings, *extra)
        traces[path] = (folder / "vcpu0.gmbe").read_bytes(), parse_counters(counters.read_text())
    (inline, inline_counters), (callback, callback_counters) = traces["inline"], traces["callback"]
    assert len(inline) > 1000 * 16 and inline == callback
    events = inline_counters["num_of_GMBE_events_since_enabling_GMBEOO"]
    assert (inline_counters["counted_only_records"] > events // 2) == counted_through_gaps
    assert (inline_counters["counted_samples"] > 0) == samples_counted


def register_pressure_source(steps=96, accumulators="abcdefghijkl"):
    """C for a loop of one long straight-line body: each step loads from a table into one of twelve
    accumulators and mixes it into another, so that QEMU's blocks hold many guest registers in host
    registers at once, and make more accesses than a counting block lets pass a room check."""
    body = []
    for n in range(steps):
        into, mixed = accumulators[n % len(accumulators)], accumulators[(n * 5 + 3) % len(accumulators)]
        body.append(f"        {into} += table[({mixed} + {n}) & 255]; {mixed} ^= {into} >> 3;")
    start = ", ".join(f"{name} = {n + 1}" for n, name in enumerate(accumulators))
    return "\n".join([
        "#include <stdint.h>", "#include <stdio.h>", "#include <stdlib.h>",
        "static volatile uint64_t table[256];",
        "int main(int argc, char **argv)", "{",
        f"    uint64_t {start};",
        "    for (int n = 0; n < 256; n++) {", "        table[n] = n * 0x9e3779b97f4a7c15ull;", "    }",
        "    for (long r = 0; r < atol(argv[1]); r++) {", *body, "    }",
        f'    printf("%016llx\\n", (unsigned long long)({" ^ ".join(accumulators)}));',
        "    return 0;", "}", ""])


@pytest.mark.qemu
@pytest.mark.parametrize("sampling", ["all", "sparse"])
@pytest.mark.parametrize("buffer_records", [1, 4096])
def test_room_checks_keep_the_guests_registers(tmp_path, sampling, buffer_records):
    """A room check that finds the buffer full calls out of the block from between two guest
    instructions, where the block may hold guest registers in host registers that a call would
    change: the guest computes what it computes untraced. Sparse sampling runs counting blocks,
    which check for room every few dozen accesses, inside long blocks too."""
    source = tmp_path / "register_pressure.c"
    source.write_text(register_pressure_source())
    program = tmp_path / "register_pressure"
    subprocess.run(["gcc", "-O2", "-static", "-o", program, source], check=True)
    untraced = subprocess.run([QEMU_DIR / "qemu-x86_64", program, "2000"], capture_output=True, text=True,
                              timeout=120, check=True).stdout
    folder, counters = tmp_path / "files", tmp_path / "counters"
    folder.mkdir()
    traced = run_traced([program, "2000"], f"trace_dir={folder}", f"counters_path={counters}",
                        f"buffer_records={buffer_records}", *SAMPLINGS[sampling][0])
    assert traced == untraced
    counted = parse_counters(counters.read_text())["counted_only_records"]
    assert (counted > 0) == SAMPLINGS[sampling][2]


@pytest.mark.qemu
@pytest.mark.parametrize("settings", [("trace_only_marked_regions=on",), ("log_of_GMBE_tracing_ratio=40",)],
                         ids=["outside-regions", "sampled-sparse"])
def test_blocks_that_count_keep_the_guests_vector_values(tmp_path, settings):
    """Python's hashing under the blocks that only count accesses (outside marked regions, and
    between the samples of a sparse trace): a room check between instructions whose vector
    constants stay in host registers must not lose them (its slow path keeps general registers
    only). The digest is the host's own, and QEMU does not abort."""
    code = "import hashlib, ssl; print(hashlib.sha512(b'memory_tracer' * 10000).hexdigest())"
    expected = subprocess.run(["/usr/bin/python3", "-c", code], capture_output=True, text=True,
                              check=True).stdout
    assert run_traced(["/usr/bin/python3", "-c", code], f"trace_dir={tmp_path}", *settings) == expected
