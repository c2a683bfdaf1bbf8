"""One run of a campaign, on whichever machine runs it (a Dask worker): memory_tracer.py as a
process of its own, its report read back into one row of the results table."""
import os
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone

from distributed import get_worker

from ..layout import ANALYSIS_TOOLS_DIR, REPO_DIR
from ..lifetime import ending_with_us
from ..run.report import ANALYSIS_OUTPUT, DURATION, TRACE_INFO, parse_report

MEMORY_TRACER = REPO_DIR / "memory_tracer.py"
RECORD_TOOL = ANALYSIS_TOOLS_DIR / "record"
FINISHED, FAILED = "finished", "failed"
NAME_VALUE = re.compile(r"^(?:ATTENTION: )?([A-Za-z_][A-Za-z0-9_]*)(?: \([^)]*\))?: (.*)$")


def run_one(run):
    """Runs it; returns its row: parameters, status, error line, duration, outputs as columns."""
    started = time.time()
    row = {**run.parameters(), "status": FINISHED, "error": None, "exit_status": 0,
           "worker": _worker_name(), "wall_seconds": None, "finished_at": None, "trace_file": None}
    if run.recorded:
        _traced_then_analysed(run, row)
    else:
        analysis = run.analyses[0]
        _memory_tracer(run, analysis.tool, analysis.args, analysis.name, row)
    row["wall_seconds"] = round(time.time() - started, 3)
    row["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="microseconds")
    return row


def _worker_name():
    try:
        return get_worker().address
    except ValueError:           # called outside a Dask worker
        return socket.gethostname()


def _memory_tracer(run, tool, tool_args, analysis_name, row):
    """One memory_tracer.py run with this tool; its report goes into row."""
    command = [sys.executable, str(MEMORY_TRACER), *run.memory_tracer_arguments(tool, tool_args)]
    finished = _run_process(command, row, "memory_tracer.py")
    report = parse_report(finished.stdout)
    if DURATION in report:
        row[DURATION] = report[DURATION]
    if analysis_name is not None:
        row.update(output_columns(analysis_name, report.get(ANALYSIS_OUTPUT, [])))
    row.update(output_columns(None, report.get(TRACE_INFO, [])))
    return finished.returncode == 0


def _traced_then_analysed(run, row):
    """Records the trace once, then runs each analysis on the trace file."""
    folder = run.trace_dir or tempfile.mkdtemp(prefix="memory_tracer-campaign-")
    os.makedirs(folder, exist_ok=True)
    trace = os.path.join(folder, f"{run.workload.name}-{run.key}.gmbe")
    try:
        if not _memory_tracer(run, str(RECORD_TOOL), shlex.join(["--output", trace]), None, row):
            return
        for analysis in run.analyses:
            finished = _run_process([analysis.tool, trace, *shlex.split(analysis.args)], row, analysis.tool)
            row.update(output_columns(analysis.name, finished.stdout.splitlines()))
            if finished.returncode != 0:
                return
        if run.trace_dir:
            row["trace_file"] = trace
    finally:
        if not run.trace_dir:
            if os.path.exists(trace):
                os.unlink(trace)
            os.rmdir(folder)


def _run_process(command, row, name):
    """Runs command to its end; a failure marks row failed with its last line on stderr. A worker
    that dies takes its memory_tracer with it, by SIGTERM, on which memory_tracer ends cleanly,
    QEMU and all. The run has a session of its own: a Ctrl-C at the campaign's terminal is the
    campaign's to handle (by ending its workers), and never makes a run fail."""
    finished = subprocess.run(ending_with_us(command, "TERM"), stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, errors="replace", start_new_session=True)
    if finished.returncode != 0:
        lines = [line for line in finished.stderr.splitlines() if line.strip()]
        row.update(status=FAILED, exit_status=finished.returncode,
                   error=lines[-1] if lines else f"{name} exited with status {finished.returncode} and said nothing")
    return finished


def output_columns(prefix, lines):
    """Every `name: value` line as a column (prefixed with the analysis' name), valued as a number
    where it is one."""
    columns = {}
    for line in lines:
        match = NAME_VALUE.match(line.strip())
        if match:
            name = f"{prefix}_{match.group(1)}" if prefix else match.group(1)
            columns[name] = typed(match.group(2).strip())
    return columns


def typed(text):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text
