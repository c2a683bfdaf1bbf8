"""The workload's side of the original memory_tracer.py's protocol: its markers, and how it is released and stopped.

A workload run with --dont_add_communications_with_host_to_workload prints the info between the
two info markers, then `Ready to trace. Press enter to continue`, waits for Enter, runs, and prints
`Stop tracing`. ProtocolSession follows that over any pexpect child (a pty here; the guest's
channel in system mode)."""
import os
import signal
import threading
import time

import pexpect

from ..errors import WorkloadError, with_last_output
from ..protocol import WORKLOAD_INFO_BEGIN, WORKLOAD_INFO_END, WORKLOAD_READY, WORKLOAD_STOP

FINISH_GRACE_SECONDS = 10   # after `Stop tracing`, for the workload to exit by itself



def describe_exit_status(exit_code, signal_number):
    if signal_number is not None:
        return f"killed by {signal.Signals(signal_number).name}"
    return f"exit code {exit_code}"


def script_interpreter(path):
    """The `#!` line of a script as argv words (interpreter and its one optional argument), [] for
    anything else: qemu-x86_64 runs ELF files only, so a script runs as its interpreter would."""
    with open(path, "rb") as f:
        first = f.readline(256)
    if not first.startswith(b"#!"):
        return []
    return first[2:].decode(errors="replace").strip().split(None, 1)


def clean_text(text):
    return text.replace("\r\n", "\n").strip()


def exit_problem(exit_code, signal_number, output=""):
    """One line for a workload that ended badly, with its last output; None when it exited 0."""
    if signal_number:
        return with_last_output(f"the workload was {describe_exit_status(None, signal_number)}", output)
    if exit_code:
        return with_last_output(f"the workload exited with code {exit_code}", output)
    return None


# The terminal's end-of-file: ^D at the start of a line (a second one ends a line left open).
TERMINAL_EOF = b"\x04"


class ProtocolSession:
    """send_input(bytes) writes to the workload's terminal; with it, release() forwards
    memory_tracer's own stdin to the workload, then its end as the terminal's EOF."""

    def __init__(self, child, name="the workload", send_input=None):
        self.child = child
        self.name = name
        self.send_input = send_input
        # pexpect sleeps 50 ms before each send by default: that would sit inside the timed window.
        child.delaybeforesend = None
        self.window_output = ""   # what the workload printed between Enter and `Stop tracing`

    def read_info(self):
        """Wait for the info and the ready line; returns the info, trimmed."""
        self._expect(WORKLOAD_INFO_BEGIN)
        self._expect(WORKLOAD_INFO_END)
        info = clean_text(self.child.before)
        self._expect(WORKLOAD_READY)
        return info

    def release(self):
        """Send the Enter that starts the workload's window; returns when it was sent (the start
        of tracing_duration_in_milliseconds). Then our stdin follows, so that `< input.txt` and
        `< /dev/null` reach a workload that reads its stdin."""
        self.child.send("\n")
        released = time.monotonic()
        if self.send_input is not None:
            threading.Thread(target=self._forward_stdin, daemon=True).start()
        return released

    def _forward_stdin(self):
        last = b"\n"
        try:
            while chunk := os.read(0, 65536):
                self.send_input(chunk)
                last = chunk[-1:]
            self.send_input(TERMINAL_EOF if last == b"\n" else TERMINAL_EOF * 2)
        except OSError:
            pass   # no stdin at all, or the workload is gone

    def wait_for_stop(self, timeout=None):
        """Wait for `Stop tracing`; returns False when the timeout passed first."""
        if self._expect(WORKLOAD_STOP, timeout) is None:
            return False
        self.window_output = self.child.before
        return True

    def _expect(self, marker, timeout=None):
        index = self.child.expect_exact([marker, pexpect.EOF, pexpect.TIMEOUT], timeout=timeout)
        if index == 1:
            self.child.wait()
            status = describe_exit_status(self.child.exitstatus, self.child.signalstatus)
            raise WorkloadError(with_last_output(f"{self.name} ended ({status}) before printing {marker!r}",
                                                 self.child.before))
        if index == 2:
            return None
        return index

    def finish(self, grace_seconds=FINISH_GRACE_SECONDS):
        """Let the workload exit by itself after `Stop tracing`, then end it. Returns the problem
        line of a workload that ended badly by itself (None when it exited 0 or was ended here)."""
        try:
            self.child.expect(pexpect.EOF, timeout=grace_seconds)
            exited = True
        except pexpect.TIMEOUT:
            exited = False
        self.child.close(force=True)
        if not exited:
            return None
        return exit_problem(self.child.exitstatus, self.child.signalstatus,
                            self.window_output + (self.child.before or ""))
