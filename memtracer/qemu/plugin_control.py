"""Client of the GMBEOO plugin's control channel (protocol in qemu_patches/README.md).

One text line per command, one reply line: `ok [key=value ...]` or `error <message>`."""
import socket

from ..errors import ControlChannelError
from .unix_socket import connect_when_listening

POLL_SECONDS = 0.25
CONNECT_TIMEOUT_SECONDS = 30   # from QEMU's start to the plugin listening


class ControlChannel:
    def __init__(self, socket_path):
        self.socket_path = str(socket_path)
        self._sock = None
        self._pending = b""

    def connect(self, qemu_alive, timeout=CONNECT_TIMEOUT_SECONDS):
        """Connect once the plugin listens; QEMU dying or the timeout ends the wait with an error."""
        try:
            self._sock = connect_when_listening(self.socket_path, timeout, qemu_alive)
        except TimeoutError:
            raise ControlChannelError(f"the GMBEOO plugin did not open its control channel "
                                      f"{self.socket_path} within {timeout:g} s.") from None
        if self._sock is None:
            raise ControlChannelError("QEMU exited before the GMBEOO plugin was ready.")
        return self

    def command(self, line, still_ok=lambda: True):
        """Send one command and return the reply's payload; still_ok() is polled while waiting."""
        if self._sock is None:
            raise ControlChannelError(f"cannot send {line!r}: not connected to the plugin.")
        try:
            self._sock.sendall(line.encode() + b"\n")
            reply = self._read_line(still_ok)
        except OSError as exc:
            raise ControlChannelError(f"the plugin's control channel failed during {line!r}: {exc}") from exc
        status, _, payload = reply.partition(" ")
        if status != "ok":
            raise ControlChannelError(f"the plugin refused {line!r}: {payload}")
        return payload

    def _read_line(self, still_ok):
        self._sock.settimeout(POLL_SECONDS)
        while b"\n" not in self._pending:
            try:
                chunk = self._sock.recv(4096)
            except socket.timeout:
                still_ok()  # raises when what we wait on has died
                continue
            if not chunk:
                raise ControlChannelError("the plugin closed its control channel (QEMU exited?).")
            self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        return line.decode()

    def enable(self, still_ok=lambda: True):
        self.command("enable", still_ok)

    def disable(self):
        self.command("disable")

    def flush(self, still_ok=lambda: True):
        self.command("flush", still_ok)

    def end_window(self, still_ok=lambda: True):
        """Stop recording, deliver every record, and close the trace (its reader sees the end; the
        next `enable` reopens it); returns the window's counters."""
        self.disable()
        self.flush(still_ok)
        counters = self.counters()
        self.command("close")
        return counters

    def counters(self):
        return parse_counters(self.command("counters"))

    def set(self, **settings):
        self.command("set " + " ".join(f"{k}={v}" for k, v in settings.items()))

    def close(self):
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def parse_counters(text):
    """`name=value ...` (the reply to `counters`, and the plugin's counters file) as a dict of ints."""
    return {name: int(value) for name, _, value in (w.partition("=") for w in text.split())}
