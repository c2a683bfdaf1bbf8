"""A run of a workload as a process on this host: under the plugin-enabled qemu-x86_64 (user mode,
traced or not) or natively (--dont_use_qemu). Both follow the same two flows:

- wrapped (the default): the whole program is the trace window, from its start to its exit;
- protocol (--dont_add_communications_with_host_to_workload): the window is what the workload
  marks, from our Enter to its `Stop tracing`.
"""
import logging
import os
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field

import pexpect

from .consumer import make_consumer
from .errors import ControlChannelError, QemuError
from .plugin_control import ControlChannel, parse_counters
from .trace_settings import TraceSettings
from .workload import ProtocolSession, exit_problem, script_interpreter

log = logging.getLogger(__name__)

CONTROL_CONNECT_TIMEOUT_SECONDS = 30
FINISH_GRACE_SECONDS = 10   # after `Stop tracing`, for the workload to exit by itself


@dataclass
class RunRequest:
    workload_argv: list
    follow_protocol: bool = False
    timeout: float = None
    analysis_tool_path: str = None
    analysis_tool_args: list = field(default_factory=list)
    shared_memory_ring: bool = False
    other_plugin: str = None           # --dont_trace --qemu_plugin: another TCG plugin, for comparisons
    trace_fifo_path: str = None
    trace_dir: str = None              # --trace_files_per_vcpu
    traced: bool = True
    native: bool = False
    settings: TraceSettings = field(default_factory=TraceSettings)
    verbose: bool = False


@dataclass
class RunResult:
    workload_info: str = ""
    duration_ms: int = 0
    analysis_output: str = None
    counters: dict = None
    workload_problem: str = None   # a crash or non-zero exit, reported after the results
    trace_files: list = None       # --trace_files_per_vcpu: (path, records) of each file
    notes: list = field(default_factory=list)


class HostRun:
    def __init__(self, request, qemu_dir=None):
        self.request = request
        self.qemu_dir = qemu_dir
        self.result = RunResult()
        self.private_dir = None
        self.consumer = None
        self.control = None

    # ------------------------------------------------------------------ setup

    def run(self):
        with ExitStack() as cleanup:
            self.private_dir = cleanup.enter_context(tempfile.TemporaryDirectory(prefix="memory_tracer-"))
            if self.request.traced:
                self.consumer = make_consumer(self.request, self.private_dir)
                cleanup.callback(self.consumer.close)
            if self.request.follow_protocol:
                self._run_protocol(cleanup)
            else:
                self._run_wrapped(cleanup)
            if self.consumer is not None:
                self.result.trace_files = self.consumer.trace_files()
        return self.result

    def _path(self, name):
        return os.path.join(self.private_dir, name)

    def _command(self, enabled_from_start):
        """The command line that runs the workload: natively, or under qemu-x86_64 (+ GMBEOO)."""
        argv = list(self.request.workload_argv)
        if self.request.native:
            return argv
        command = [str(self.qemu_dir.qemu_user)]
        argv = script_interpreter(argv[0]) + argv
        if self.request.traced:
            plugin_args = [
                str(self.qemu_dir.plugin),
                self.consumer.plugin_argument,
                f"control_socket_path={self._path('control.sock')}",
                f"counters_path={self._path('counters')}",
                f"enabled={'on' if enabled_from_start else 'off'}",
                *self.request.settings.plugin_args(),
            ]
            command += ["-plugin", ",".join(plugin_args)]
        elif self.request.other_plugin:
            command += ["-plugin", self.request.other_plugin]
        return command + argv

    def _workload_dir(self):
        """As the original: the workload runs in its own directory, so the files beside it (a run
        script's inputs) are found by relative paths."""
        return os.path.dirname(self.request.workload_argv[0])

    def _connect_control(self, qemu_alive):
        self.control = ControlChannel(self._path("control.sock"))
        self.control.connect(CONTROL_CONNECT_TIMEOUT_SECONDS, qemu_alive)
        return self.control

    # ------------------------------------------------------------------ wrapped flow

    def _run_wrapped(self, cleanup):
        if self.consumer is not None:
            self.consumer.start(info_words=[])
        command = self._command(enabled_from_start=True)
        log.debug("workload command: %s", " ".join(command))
        output_path = self._path("workload.out")
        with open(output_path, "wb") as output:
            start = time.monotonic()
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=output,
                                       stderr=subprocess.STDOUT, cwd=self._workload_dir())
            cleanup.callback(_kill, process)
            timed_out = self._wait_for_exit(process)
            self.result.duration_ms = int((time.monotonic() - start) * 1000)
        workload_output = open(output_path, errors="replace").read()
        if self.request.verbose and workload_output:
            sys.stderr.write(workload_output)
        if self.request.traced:
            self.result.counters = self.result.counters or self._final_counters(
                command, process.returncode, workload_output)
            self.result.analysis_output = self.consumer.finish()
        if timed_out:
            self.result.notes.append(f"the workload was stopped after --timeout {self.request.timeout:g} s.")
        else:   # Popen's returncode: the exit code, or minus the signal's number
            code = process.returncode
            self.result.workload_problem = exit_problem(max(code, 0), max(-code, 0), workload_output)

    def _wait_for_exit(self, process):
        """Wait for the workload; at --timeout, end the trace window and the workload. Returns timed_out."""
        deadline = None if self.request.timeout is None else time.monotonic() + self.request.timeout
        while True:
            try:
                process.wait(timeout=0.05)
                return False
            except subprocess.TimeoutExpired:
                pass
            if self.consumer is not None:
                self.consumer.check()
            if deadline is not None and time.monotonic() >= deadline:
                if self.request.traced:
                    self._connect_control(lambda: process.poll() is None)
                    self.result.counters = self._stop_recording()
                process.kill()
                process.wait()
                return True

    def _final_counters(self, command, exit_code, workload_output):
        """The counters the plugin wrote when QEMU exited."""
        try:
            with open(self._path("counters")) as f:
                return parse_counters(f.read())
        except FileNotFoundError:
            raise QemuError("qemu-x86_64 ended before the GMBEOO plugin finished", command,
                            exit_code, workload_output) from None

    # ------------------------------------------------------------------ protocol flow

    def _run_protocol(self, cleanup):
        command = self._command(enabled_from_start=False)
        log.debug("workload command: %s", " ".join(command))
        child = pexpect.spawn(command[0], command[1:], echo=False, encoding="utf-8",
                              codec_errors="replace", timeout=None, cwd=self._workload_dir())
        child.logfile_read = sys.stderr if self.request.verbose else None
        cleanup.callback(child.close, force=True)
        if self.request.traced:
            cleanup.callback(self._close_control)
            self._connect_control(child.isalive)
        session = ProtocolSession(child)
        self.result.workload_info = session.read_info()
        if self.consumer is not None:
            self.consumer.start(info_words=self.result.workload_info.split())
            self.control.enable(self.consumer.check)
        start = session.release()
        session.wait_for_stop()
        self.result.duration_ms = int((time.monotonic() - start) * 1000)
        if self.request.traced:
            self.result.counters = self._end_trace_window(command, child)
            self.result.analysis_output = self.consumer.finish()
        self.result.workload_problem = session.finish(FINISH_GRACE_SECONDS)

    def _end_trace_window(self, command, child):
        """Stop recording and deliver every record; returns the counters."""
        try:
            return self._stop_recording()
        except ControlChannelError:
            # The workload exited right after `Stop tracing`, closing the channel: the plugin
            # flushed at exit and wrote its counters.
            child.expect(pexpect.EOF)
            child.wait()
            return self._final_counters(command, child.exitstatus, child.before)

    def _stop_recording(self):
        """End the trace window through the plugin: stop recording, deliver every record."""
        return self.control.end_window(self.consumer.check)

    def _close_control(self):
        if self.control is not None:
            self.control.close()


def _kill(process):
    if process.poll() is None:
        process.kill()
        process.wait()
