"""The host's side of the guest runner's channel (to_run_on_guest/guest_channel.h).

QEMU exposes the guest's serial port and its virtio-serial port as unix sockets in the run's
private directory; a GuestChannel is one of them. Frames are `MTR1`, type, length, payload,
CRC32. A reader thread sorts what the runner sends: answers to requests, the workload's output
(fed into a pipe, so pexpect can `expect` on it like on any process), and its exit status.
"""
import errno
import fcntl
import logging
import os
import queue
import socket
import struct
import threading
import time
import zlib

import pexpect.fdpexpect

from ..errors import QemuError, WorkloadError
from .unix_socket import connect_when_listening

log = logging.getLogger(__name__)

MAGIC = b"MTR1"
HEADER = struct.Struct("<4sBI")
TRAILER = struct.Struct("<I")
MAX_PAYLOAD = 256 << 20

PING, FILE, RUN, STDIN, KILL = b"P", b"F", b"R", b"I", b"K"
PONG, ACK, NAK, OUTPUT, EXIT = b"p", b"A", b"N", b"O", b"X"
FILE_GZIP = 0x01
RUN_WRAP = 0x01

SEND_CHUNK = 64 * 1024
EXIT_REPORT_SECONDS = 2   # for the runner to report a killed workload's exit (the guest may be stuck)
RESENDS = 3


def encode_frame(kind, payload=b""):
    header = HEADER.pack(MAGIC, kind[0], len(payload))
    crc = zlib.crc32(payload, zlib.crc32(header[4:]))
    return header + payload + TRAILER.pack(crc)


class FrameParser:
    """Whole frames out of a byte stream; console noise and corrupt frames are skipped."""

    def __init__(self):
        self.buffer = bytearray()
        self.noise = bytearray()

    def feed(self, data):
        """Returns [(kind, payload, crc_ok)]."""
        self.buffer += data
        frames = []
        while True:
            start = self.buffer.find(MAGIC)
            if start < 0:
                keep = len(MAGIC) - 1   # a magic may be split across reads
                self.noise += self.buffer[:-keep] if len(self.buffer) > keep else b""
                del self.buffer[:-keep or None]
                return frames
            self.noise += self.buffer[:start]
            del self.buffer[:start]
            if len(self.buffer) < HEADER.size:
                return frames
            _, kind, length = HEADER.unpack_from(self.buffer)
            if length > MAX_PAYLOAD:
                del self.buffer[:1]
                continue
            total = HEADER.size + length + TRAILER.size
            if len(self.buffer) < total:
                return frames
            payload = bytes(self.buffer[HEADER.size:HEADER.size + length])
            (crc,) = TRAILER.unpack_from(self.buffer, HEADER.size + length)
            if crc != zlib.crc32(bytes(self.buffer[4:HEADER.size + length])):
                frames.append((bytes([kind]), b"", False))
                del self.buffer[:1]
                continue
            frames.append((bytes([kind]), payload, True))
            del self.buffer[:total]


class GuestChannel:
    """One port to the runner: the serial port or the virtio-serial port."""

    def __init__(self, socket_path, name):
        self.socket_path = socket_path
        self.name = name
        self.sock = None
        self.answers = queue.Queue()
        self.process = None
        self.closed = threading.Event()
        self.how_it_closed = None   # said in the errors of requests that found it closed
        self._reader = None
        self._send_lock = threading.Lock()   # the workload's stdin is forwarded from a thread of its own

    # ------------------------------------------------------------------ connection

    def connect(self, qemu_alive, timeout):
        try:
            sock = connect_when_listening(self.socket_path, timeout, qemu_alive)
        except TimeoutError:
            raise QemuError(f"QEMU's {self.name} socket {self.socket_path} did not appear "
                            f"within {timeout:g} s") from None
        if sock is None:
            raise QemuError(f"QEMU ended before its {self.name} socket could be reached")
        self.sock = sock
        self._reader = threading.Thread(target=self._read_frames, name=f"guest-{self.name}", daemon=True)
        self._reader.start()

    def close(self):
        if self.sock is not None:
            self.how_it_closed = self.how_it_closed or "memory_tracer closed it"
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.sock.close()
            self.sock = None
        if self._reader is not None:
            self._reader.join(timeout=5)
        if self.process is not None:
            self.process.channel_closed()

    def send(self, kind, payload=b"", progress=None):
        frame = encode_frame(kind, payload)
        with self._send_lock:
            if self.sock is None:
                raise OSError(errno.EPIPE, f"the {self.name} is closed")
            for start in range(0, len(frame), SEND_CHUNK):
                self.sock.sendall(frame[start:start + SEND_CHUNK])
                if progress is not None:
                    progress(min(start + SEND_CHUNK, len(frame)), len(frame))

    def _read_frames(self):
        parser = FrameParser()
        ended = "QEMU closed the connection"   # its end of stream, or a reset (our frames unread)
        try:
            while True:
                data = self.sock.recv(1 << 16)
                if not data:
                    break
                for kind, payload, crc_ok in parser.feed(data):
                    self._dispatch(kind, payload, crc_ok)
                if parser.noise:
                    log.debug("guest %s: %s", self.name, parser.noise.decode(errors="replace").rstrip())
                    parser.noise.clear()
        except ConnectionResetError:
            pass
        except OSError as error:
            ended = f"its reader stopped: {error}"
        except Exception as error:
            ended = f"its reader stopped: {error!r}"
            raise
        finally:
            self.how_it_closed = self.how_it_closed or ended   # close() says it first when it was us
            log.debug("guest %s: closed (%s)", self.name, self.how_it_closed)
            self.closed.set()
            self.answers.put((None, b""))
            if self.process is not None:
                self.process.channel_closed()

    def _dispatch(self, kind, payload, crc_ok):
        if not crc_ok:
            log.debug("guest %s: a corrupt frame was skipped", self.name)
        elif kind == OUTPUT and self.process is not None:
            self.process.output(payload)
        elif kind == EXIT and self.process is not None:
            code, signal_number = struct.unpack("<ii", payload)
            self.process.exited(code, signal_number or None)
        elif kind in (PONG, ACK, NAK):
            self.answers.put((kind, payload))

    # ------------------------------------------------------------------ requests

    def _answer(self, timeout):
        try:
            kind, payload = self.answers.get(timeout=timeout)
        except queue.Empty:
            return None, b""
        if kind is None:
            raise WorkloadError(f"the guest's {self.name} closed while waiting for the runner "
                                f"({self.how_it_closed})")
        return kind, payload

    def ping(self, timeout):
        """One ping; True when the runner answered in time."""
        nonce = os.urandom(8)
        self.send(PING, nonce)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            kind, payload = self._answer(deadline - time.monotonic())
            if kind == PONG and payload == nonce:
                return True
        return False

    def request(self, kind, payload, timeout, progress=None):
        """Send a frame that the runner acknowledges; resend when it arrived corrupted."""
        for _ in range(RESENDS):
            self.send(kind, payload, progress)
            deadline = time.monotonic() + timeout
            while True:
                answer, data = self._answer(max(0.0, deadline - time.monotonic()))
                if answer is None:
                    raise WorkloadError(f"the guest runner did not answer on the {self.name} "
                                        f"within {timeout:g} s")
                if answer == NAK:
                    log.debug("guest %s: the runner asked for the frame again", self.name)
                    break
                if answer == ACK:
                    status, text = struct.unpack("<I", data[:4])[0], data[4:].decode(errors="replace")
                    return status, text
        raise WorkloadError(f"the {self.name} corrupted the frame {RESENDS} times in a row")

    def send_workload(self, data, compress, timeout, progress=None):
        """Store the workload in the guest; returns its path there."""
        flags = 0
        if compress:
            data = zlib.compress(data, 6, wbits=31)   # gzip: the runner inflates it
            flags |= FILE_GZIP
        status, text = self.request(FILE, bytes([flags]) + data, timeout, progress)
        if status:
            raise WorkloadError(f"the guest runner could not store the workload: {text}")
        return text

    def run(self, argv, wrap, timeout):
        """Start the workload in the guest; returns a GuestProcess to expect() on."""
        self.process = GuestProcess(self)
        payload = bytes([RUN_WRAP if wrap else 0]) + b"".join(a.encode() + b"\0" for a in argv)
        status, text = self.request(RUN, payload, timeout)
        if status:
            raise WorkloadError(text)
        return self.process


class GuestProcess(pexpect.fdpexpect.fdspawn):
    """The workload running in the guest, seen like a local pexpect child: its terminal output
    arrives through a pipe, send() goes to its terminal, wait() waits for its exit frame."""

    def __init__(self, channel):
        self.channel = channel
        self._read_end, self._write_end = os.pipe()
        # Room for a burst of output while nobody expects (e.g. while the trace is delivered).
        try:
            fcntl.fcntl(self._write_end, fcntl.F_SETPIPE_SZ, 1 << 20)
        except OSError:
            pass
        self._write_lock = threading.Lock()
        self._exit = threading.Event()
        self.exitstatus = None
        self.signalstatus = None
        super().__init__(self._read_end, encoding="utf-8", codec_errors="replace", timeout=None)

    # called by the channel's reader thread
    def output(self, data):
        with self._write_lock:
            if self._write_end is not None:
                os.write(self._write_end, data)

    def exited(self, code, signal_number):
        self.exitstatus, self.signalstatus = (None, signal_number) if signal_number else (code, None)
        self._exit.set()
        self._close_write_end()

    def channel_closed(self):
        self._close_write_end()

    def _close_write_end(self):
        with self._write_lock:
            if self._write_end is not None:
                os.close(self._write_end)
                self._write_end = None

    # the pexpect child interface ProtocolSession uses
    def send(self, s):
        self.channel.send(STDIN, s.encode() if isinstance(s, str) else s)
        return len(s)

    def send_input(self, data):
        """Bytes for the workload's terminal, as they are."""
        self.channel.send(STDIN, data)

    def isalive(self):
        return not self._exit.is_set() and not self.channel.closed.is_set()

    def wait(self, timeout=None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._exit.wait(0.1):
            if self.channel.closed.is_set():
                raise WorkloadError(f"the guest's {self.channel.name} closed before the workload's exit "
                                    f"was reported ({self.channel.how_it_closed})")
            if deadline is not None and time.monotonic() > deadline:
                break
        return self.exitstatus

    def kill_workload(self):
        if self.isalive():
            self.channel.send(KILL)

    def close(self, force=True):
        if self.isalive() and force:
            try:
                self.kill_workload()
                self._exit.wait(EXIT_REPORT_SECONDS)
            except OSError:
                pass
        self._close_write_end()
        if self.child_fd != -1:
            super().close()
