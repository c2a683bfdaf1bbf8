"""--dont_exit_qemu_when_done: after the report, the user's terminal is joined to QEMU's human
monitor (a unix socket in the run's private directory) until they `quit` it."""
import os
import select
import socket
import sys
import termios
import tty

QUIT = b"quit\n"


def hand_over_monitor(socket_path, machine):
    print("memory_tracer.py: QEMU keeps running; its monitor follows (type `quit` to end it).",
          file=sys.stderr, flush=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(socket_path)
    stdin = sys.stdin.fileno()
    saved = None
    if os.isatty(stdin):
        # The monitor does its own line editing and echo, as on QEMU's own stdio.
        saved = termios.tcgetattr(stdin)
        tty.setraw(stdin)
    try:
        _relay(sock, stdin, sys.stdout.buffer, machine)
    except OSError:
        pass   # QEMU closed the monitor as it quit
    finally:
        if saved is not None:
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
        sock.close()
        sys.stdout.write("\n")
        sys.stdout.flush()


def _relay(sock, stdin, stdout, machine):
    stdin_open = True
    while machine.is_alive():
        readable, _, _ = select.select([sock] + ([stdin] if stdin_open else []), [], [], 0.5)
        if sock in readable:
            data = sock.recv(65536)
            if not data:
                return
            stdout.write(data)
            stdout.flush()
        if stdin in readable:
            data = os.read(stdin, 4096)
            if not data:          # end of input (not a terminal): quit, as the user would
                sock.sendall(QUIT)
                stdin_open = False
            else:
                sock.sendall(data)
