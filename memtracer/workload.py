"""The workload's side of interface.md: its markers, and how it is released and stopped.

A workload run with --dont_add_communications_with_host_to_workload prints the info between the
two info markers, then `Ready to trace. Press enter to continue`, waits for Enter, runs, and prints
`Stop tracing`. ProtocolSession follows that over any pexpect child (a pty here; the guest's
channel in system mode)."""
import signal

import pexpect

from .errors import WorkloadError

BEGIN_INFO = "-----begin workload info-----"
END_INFO = "-----end workload info-----"
READY = "Ready to trace. Press enter to continue"
STOP = "Stop tracing"


def describe_exit_status(exit_code, signal_number):
    if signal_number is not None:
        return f"killed by {signal.Signals(signal_number).name}"
    return f"exit code {exit_code}"


def clean_text(text):
    return text.replace("\r\n", "\n").strip()


class ProtocolSession:
    def __init__(self, child, name="the workload"):
        self.child = child
        self.name = name

    def read_info(self):
        """Wait for the info and the ready line; returns the info, trimmed."""
        self._expect(BEGIN_INFO)
        self._expect(END_INFO)
        info = clean_text(self.child.before)
        self._expect(READY)
        return info

    def release(self):
        self.child.send("\n")

    def wait_for_stop(self, timeout=None):
        """Wait for `Stop tracing`; returns False when the timeout passed first."""
        return self._expect(STOP, timeout) is not None

    def _expect(self, marker, timeout=None):
        index = self.child.expect_exact([marker, pexpect.EOF, pexpect.TIMEOUT], timeout=timeout)
        if index == 1:
            self.child.wait()
            status = describe_exit_status(self.child.exitstatus, self.child.signalstatus)
            raise WorkloadError(f"{self.name} ended ({status}) before printing {marker!r}.")
        if index == 2:
            return None
        return index

    def finish(self, grace_seconds):
        """Let the workload exit by itself after `Stop tracing`, then end it."""
        try:
            self.child.expect(pexpect.EOF, timeout=grace_seconds)
        except pexpect.TIMEOUT:
            pass
        self.child.close(force=True)
