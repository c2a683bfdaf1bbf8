"""The shared-memory ring (qemu_patches/gmbe_ring.h) in Python: memory_tracer creates it, the
plugin produces into it, and a tool of the Python API consumes it in place, without a copy or a
system call while the stream flows (--shared_memory_ring)."""
import ctypes
import mmap
import os
import select
import stat
import struct

import numpy as np

from ..record import DTYPE_BY_RECORD_SIZE, RECORD_SIZE

MAGIC = b"GMBERNG\n"
VERSION = 2
PREFIX = struct.Struct("<8sIIQQ")     # magic, version, record size, capacity, data offset
HEAD_OFFSET, TAIL_OFFSET, ATTACHED_OFFSET, ABANDONED_OFFSET, READER_SLEEPING_OFFSET = 64, 128, 192, 256, 320
# Under memory_tracer, the ring's path beside the FIFO: a tool that can read it attaches to it.
RING_ENV = "GMBE_TRACE_RING"
DATA_OFFSET = 4096
# The ring's records take 4 MiB, whatever their format: what costs is the cache lines that cross
# from the vCPU's core to the reader's and back. On the 2-core AMD EPYC of the bench (1 MiB of
# second-level cache a core), a record through a ring between the two cores took 1.38 ns with 1
# MiB, 0.80 with 2, 0.71 with 4, 0.69 with 8 (bench/cpu_pair.c's ring, pages touched first, 12
# rounds, medians), and user-mode gzip traced to count 508 ms with 4 MiB against 634 with 2 (8
# rounds). Measured on 2026-11-30: 4 MiB ran as 2 MiB, 16 MiB 10% slower, and 256 KiB twice as
# slow, the vCPU waiting for its reader.
RING_BYTES = 4 << 20
IDLE_WAIT_SECONDS = 0.0001
# An empty ring is polled this many times, then the reader sleeps until the producer wakes it
# (gmbe_ring.h says why). A SIGUSR1 that comes just before the sleep is seen at the latest after
# SLEEP_TIMEOUT_SECONDS: a Python handler runs only once the wait returns, too late to clear the flag
# as the C reader's does.
POLLS_BEFORE_SLEEP = 10
SLEEP_TIMEOUT_SECONDS = 0.05
SYS_FUTEX = 202       # x86_64 Linux, the one host of the patched QEMU
FUTEX_WAIT = 0
_libc = ctypes.CDLL(None, use_errno=True)


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def is_ring(path):
    """Whether path is a ring file (never opens a FIFO: that would take records from it)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def attach_offered_ring():
    """Under memory_tracer, the ring offered beside the FIFO (RING_ENV), attached to: the plugin
    then writes there. Its path, or None (no ring offered: the FIFO, as in the original)."""
    path = os.environ.get(RING_ENV)
    if not path or not is_ring(path):
        return None
    with ShmRing(path) as ring:
        ring.attach()
    return path


def ring_capacity(record_size):
    """The records of record_size bytes that memory_tracer's ring holds."""
    return RING_BYTES // record_size


def create_ring(path, capacity=None, record_size=RECORD_SIZE):
    """A new, empty ring file (mode 0600) of records of record_size bytes (the format's), as many
    as memory_tracer's ring holds unless capacity says."""
    capacity = capacity or ring_capacity(record_size)
    assert capacity & (capacity - 1) == 0
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, DATA_OFFSET + capacity * record_size)
        os.pwrite(fd, PREFIX.pack(MAGIC, VERSION, record_size, capacity, DATA_OFFSET), 0)
    finally:
        os.close(fd)


class ShmRing:
    """A mapping of a ring file; head and tail read and written in place, each as one aligned
    8-byte load or store (atomic on x86, where stores are also seen in order). Not with struct:
    its little-endian codes go byte by byte, and a head read while the producer moves it can
    come out torn, far ahead of what was written."""

    MAP_FLAGS = mmap.MAP_SHARED

    def __init__(self, path):
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            self.map = mmap.mmap(fd, 0, flags=self.MAP_FLAGS)
        finally:
            os.close(fd)
        magic, version, record_size, self.capacity, self.data_offset = PREFIX.unpack_from(self.map)
        if magic != MAGIC or version != VERSION or record_size not in DTYPE_BY_RECORD_SIZE:
            raise ValueError(f"{path} is not a GMBE ring")
        self.records = np.frombuffer(self.map, dtype=DTYPE_BY_RECORD_SIZE[record_size], count=self.capacity,
                                     offset=self.data_offset)
        self._head = np.frombuffer(self.map, dtype=np.uint64, count=1, offset=HEAD_OFFSET)
        self._tail = np.frombuffer(self.map, dtype=np.uint64, count=1, offset=TAIL_OFFSET)
        self._sleeping = ctypes.c_uint32.from_buffer(self.map, READER_SLEEPING_OFFSET)

    head = property(lambda self: int(self._head[0]))
    tail = property(lambda self: int(self._tail[0]))
    closed = property(lambda self: self.map.closed)

    @property
    def attached(self):
        return bool(self.map[ATTACHED_OFFSET])

    def attach(self):
        """A tool says it reads the ring (before `Ready to analyze`)."""
        self.map[ATTACHED_OFFSET] = 1

    def pending(self):
        return self.head - self.tail

    def abandon(self):
        """memory_tracer lets the ring go: a producer waiting for room gives up (its reader may be
        dead) and writes no more."""
        self.map[ABANDONED_OFFSET] = 1

    def close(self):
        self.records = self._head = self._tail = self._sleeping = None   # the views go before the mapping
        self.map.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class ShmRingReader(ShmRing):
    # Populated when mapped, before the window opens: else the first read of each of the ring's
    # pages faults while the vCPU waits for room.
    MAP_FLAGS = mmap.MAP_SHARED | mmap.MAP_POPULATE

    def follow(self, process, report_requested, wake_fd):
        """Hands every record to process (views of the ring, valid during the call) until the
        report is requested; memory_tracer requests it only once the ring is empty."""
        tail = self.tail
        mask = self.capacity - 1
        empty_polls = 0
        while True:
            head = self.head
            if head == tail:
                if report_requested():
                    return
                empty_polls += 1
                if empty_polls > POLLS_BEFORE_SLEEP:
                    self._sleep(tail, report_requested)
                else:
                    select.select([wake_fd], [], [], IDLE_WAIT_SECONDS)
                continue
            empty_polls = 0
            start = tail & mask
            count = min(head - tail, self.capacity - start)
            process(self.records[start:start + count])
            tail += count
            self._tail[0] = tail

    def _sleep(self, tail, report_requested):
        """Until the producer publishes past tail (it clears the flag and wakes the futex), a
        signal, or the timeout. Python has no fence between setting the flag and reading head: the
        interpreter's steps between the two take far longer than a store takes to reach the other
        core, and the timeout bounds a sleep that missed its wake all the same."""
        self._sleeping.value = 1
        if self.head == tail and not report_requested():
            timeout = _Timespec(0, int(SLEEP_TIMEOUT_SECONDS * 1e9))
            _libc.syscall(SYS_FUTEX, ctypes.byref(self._sleeping), FUTEX_WAIT, 1, ctypes.byref(timeout), None, 0)
        self._sleeping.value = 0
