"""Connecting to a unix socket that another process (QEMU, the plugin) is about to create."""
import socket
import time

RETRY_SECONDS = 0.01


def connect_when_listening(path, timeout, still_running):
    """A socket connected to path once something listens there. Returns None when still_running()
    turns false first; raises TimeoutError after timeout seconds. Each caller words its own errors."""
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            return sock
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
        if not still_running():
            return None
        if time.monotonic() > deadline:
            raise TimeoutError(path)
        time.sleep(RETRY_SECONDS)
