"""The trace FIFO: made in the run's private directory (or given by the user), held open for writing
by memory_tracer for the whole run, so its enlarged buffer lasts (Linux resets it on last close)."""
import errno
import fcntl
import os
import select
import stat
import struct
import termios
import time

from ..errors import TraceFifoError

F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)


def pipe_max_size():
    with open("/proc/sys/fs/pipe-max-size") as f:
        return int(f.read())


def is_fifo(path):
    try:
        return stat.S_ISFIFO(os.stat(path).st_mode)
    except OSError:
        return False


class TraceFifo:
    def __init__(self, path, created_by_us):
        self.path = str(path)
        self.created_by_us = created_by_us
        self.write_fd = None

    @classmethod
    def create(cls, private_dir):
        path = os.path.join(private_dir, "trace.fifo")
        os.mkfifo(path, 0o600)
        return cls(path, created_by_us=True)

    @classmethod
    def given_by_user(cls, path):
        return cls(os.path.abspath(path), created_by_us=False)

    def open_writer(self, timeout, reader_alive=lambda: True, reader_name="the reader"):
        """Wait (bounded) until a reader has the FIFO open, then hold a write end and raise its size."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
                break
            except OSError as exc:
                if exc.errno != errno.ENXIO:
                    raise TraceFifoError(f"cannot open the trace FIFO {self.path}: {exc.strerror}") from exc
            if not reader_alive():
                raise TraceFifoError(f"{reader_name} exited without opening the trace FIFO {self.path}.")
            if time.monotonic() > deadline:
                raise TraceFifoError(f"nobody opened the trace FIFO {self.path} for reading within "
                                     f"{timeout:g} s ({reader_name} must read it).")
            time.sleep(0.01)
        os.set_blocking(fd, True)
        try:
            fcntl.fcntl(fd, F_SETPIPE_SZ, pipe_max_size())
        except OSError:
            pass  # not fatal: the trace is still correct, only slower
        self.write_fd = fd

    def pipe_size(self):
        return fcntl.fcntl(self.write_fd, F_GETPIPE_SZ)

    def pending_bytes(self):
        """Bytes written into the FIFO that the reader has not read yet (none before it is open)."""
        if self.write_fd is None:
            return 0
        buf = fcntl.ioctl(self.write_fd, termios.FIONREAD, struct.pack("i", 0))
        return struct.unpack("i", buf)[0]

    def reader_gone(self):
        """Whether every reader has closed the FIFO: a pipe's write end then polls POLLERR."""
        poller = select.poll()
        poller.register(self.write_fd, select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))

    def check_reader(self, reader_name="the reader"):
        """Raise at once when the reader closed the FIFO: what is still to come has nowhere to go."""
        if self.write_fd is not None and self.reader_gone():
            raise TraceFifoError(f"{reader_name} closed the trace FIFO {self.path} before the trace ended "
                                 f"({self.pending_bytes()} bytes unread in it): the trace is incomplete.")

    def wait_until_drained(self, reader_alive, timeout, reader_name="the reader"):
        deadline = time.monotonic() + timeout
        while self.pending_bytes() > 0:
            self.check_reader(reader_name)
            if not reader_alive():
                raise TraceFifoError(f"{reader_name} exited before reading the whole trace "
                                     f"({self.pending_bytes()} bytes left in the FIFO).")
            if time.monotonic() > deadline:
                raise TraceFifoError(f"{reader_name} did not read the rest of the trace within "
                                     f"{timeout:g} s ({self.pending_bytes()} bytes left in the FIFO).")
            time.sleep(0.005)

    def close(self):
        if self.write_fd is not None:
            os.close(self.write_fd)
            self.write_fd = None
        if self.created_by_us:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
