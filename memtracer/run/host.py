"""A run of a workload as a process on this host: under build.py's qemu-x86_64 (user mode,
traced or not) or natively (--dont_use_qemu). Both follow the same two flows:

- wrapped (the default): the whole program is the trace window, from its start to its exit; the
  plugin records from QEMU's first instruction and writes its counters when QEMU exits;
- protocol (--dont_add_communications_with_host_to_workload): the window is what the workload
  marks, from our Enter to its `Stop tracing`, and the plugin is driven through its control channel.
"""
import logging
import os
import subprocess
from contextlib import ExitStack

import pexpect

from ..echo import CHILD_OUTPUT
from ..errors import ControlChannelError, QemuError
from ..lifetime import ending_with_us, private_directory
from ..qemu.plugin_control import ControlChannel, parse_counters
from ..trace.consumer import make_consumer
from .window import RunResult, TraceWindow, exited_within, plugin_argument
from .workload import ProtocolSession, exit_problem, script_interpreter

log = logging.getLogger(__name__)



class HostRun:
    def __init__(self, request, qemu_dir=None):
        self.request = request
        self.qemu_dir = qemu_dir
        self.result = RunResult()
        self.private_dir = None
        self.consumer = None
        self.control = None
        self.process = None        # a wrapped run's workload (or QEMU running it)
        self._output = None        # and the file its output goes to

    def run(self):
        with ExitStack() as cleanup:
            self.private_dir = cleanup.enter_context(private_directory())
            if self.request.traced:
                self.consumer = make_consumer(self.request, self.private_dir)
                cleanup.callback(self.consumer.close)
            cleanup.callback(self._close_control)
            if self.request.follow_protocol:
                self._run_protocol(cleanup)
            else:
                self._run_wrapped(cleanup)
        return self.result

    def _path(self, name):
        return os.path.join(self.private_dir, name)

    def _command(self, enabled_from_start):
        """The command line that runs the workload: natively, or under qemu-x86_64 (+ GMBEOO)."""
        argv = list(self.request.workload_argv)
        if self.request.native:
            return argv
        command = [str(self.qemu_dir.qemu_user)]
        if self.request.traced:
            command += ["-plugin", plugin_argument(self.qemu_dir.plugin, self.consumer, self.request.settings,
                                                   self._path("control.sock"), enabled_from_start,
                                                   counters_path=self._path("counters"))]
        elif self.request.other_plugin:
            command += ["-plugin", self.request.other_plugin]
        return command + script_interpreter(argv[0]) + argv

    def _workload_dir(self):
        """As the original: the workload runs in its own directory, so the files beside it (a run
        script's inputs) are found by relative paths."""
        return os.path.dirname(self.request.workload_argv[0])

    def _connect_control(self, qemu_alive):
        self.control = ControlChannel(self._path("control.sock"))
        self.control.connect(qemu_alive)
        return self.control

    def _final_counters(self, command, exit_code, workload_output, check):
        """The counters the plugin wrote when QEMU exited. Without them QEMU died: of a tool that
        died first (SIGPIPE, its FIFO closed), which check() names, or of its own accord."""
        try:
            with open(self._path("counters")) as f:
                return parse_counters(f.read())
        except FileNotFoundError:
            check()
            raise QemuError("qemu-x86_64 ended before the GMBEOO plugin finished", command,
                            exit_code, workload_output) from None

    # ------------------------------------------------------------------ wrapped flow

    def _run_wrapped(self, cleanup):
        command = self._command(enabled_from_start=True)
        log.debug("workload command: %s", " ".join(command))
        self._output = cleanup.enter_context(open(self._path("workload.out"), "wb+"))
        window = TraceWindow(self.consumer, end_recording=lambda check: self._end_wrapped_recording(command, check),
                             plugin_counters=lambda: self._running_control().counters(),
                             lossless=self.request.lossless)
        window.open(info_words=[])
        window.start_clock()
        self.process = subprocess.Popen(ending_with_us(command), stdout=self._output,   # our stdin is its
                                        stderr=subprocess.STDOUT, cwd=self._workload_dir())
        cleanup.callback(_kill, self.process)
        exited = window.wait(lambda poll: exited_within(self.process, poll), self.request.timeout)
        window.stop_clock(self.result)
        window.close(self.result, after_recording=lambda: _kill(self.process))
        if self.request.verbose:
            CHILD_OUTPUT.write(self._workload_output())
        if not exited:
            self.result.notes.append(f"the workload was stopped after --timeout {self.request.timeout:g} s.")
        else:   # Popen's returncode: the exit code, or minus the signal's number
            code = self.process.returncode
            self.result.workload_problem = exit_problem(max(code, 0), max(-code, 0), self._workload_output())

    def _running_control(self):
        """The control channel of the plugin that records from QEMU's start, connected on first use
        (a wrapped run needs it only to watch delivery and for --timeout)."""
        if self.control is None:
            self._connect_control(lambda: self.process.poll() is None)
        return self.control

    def _end_wrapped_recording(self, command, check):
        if self.process.poll() is None:   # --timeout: the plugin is still recording
            counters = self._running_control().end_window(check)
            _kill(self.process)
            return counters
        return self._final_counters(command, self.process.returncode, self._workload_output(), check)

    def _workload_output(self):
        self._output.seek(0)
        return self._output.read().decode(errors="replace")

    # ------------------------------------------------------------------ protocol flow

    def _run_protocol(self, cleanup):
        command = self._command(enabled_from_start=False)
        log.debug("workload command: %s", " ".join(command))
        spawned = ending_with_us(command)
        child = pexpect.spawn(spawned[0], spawned[1:], echo=False, encoding="utf-8",
                              codec_errors="replace", timeout=None, cwd=self._workload_dir())
        child.logfile_read = CHILD_OUTPUT if self.request.verbose else None
        cleanup.callback(child.close, force=True)
        if self.request.traced:
            self._connect_control(child.isalive)
        session = ProtocolSession(child, send_input=lambda data: os.write(child.child_fd, data))
        window = TraceWindow(self.consumer, begin_recording=lambda check: self.control.enable(check),
                             end_recording=lambda check: self._end_recording(command, child, check),
                             plugin_counters=self.control and self.control.counters, lossless=self.request.lossless)
        self.result.workload_info = session.read_info()
        window.open(info_words=self.result.workload_info.split())
        window.start_clock(session.release())
        window.wait(lambda poll: session.wait_for_stop(timeout=poll))
        window.stop_clock(self.result)
        window.close(self.result)
        self.result.workload_problem = session.finish()

    def _end_recording(self, command, child, check):
        """Stop recording and deliver every record; returns the counters."""
        try:
            return self.control.end_window(check)
        except ControlChannelError:
            # The workload exited right after `Stop tracing`, closing the channel: the plugin
            # flushed at exit and wrote its counters.
            child.expect(pexpect.EOF)
            child.wait()
            return self._final_counters(command, child.exitstatus, child.before, check)

    def _close_control(self):
        if self.control is not None:
            self.control.close()


def _kill(process):
    if process.poll() is None:
        process.kill()
        process.wait()
