"""Analysis tool throughput (records per second) on a real trace: the guest's `sort` of its kernel
symbols in full-system mode, recorded once with the `record` tool. Each C tool, and the Python API's
count, read the same records from a raw file; `count` also from the compressed trace file; the
Python count also from a FIFO under the analysis-tool protocol. Medians of interleaved rounds."""
import fcntl
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from memtracer.environment import use_project_environment  # noqa: E402

use_project_environment()   # any python3 runs it inside build/venv

from memtracer.layout import ANALYSIS_TOOLS_DIR, DEFAULT_GUEST_IMAGE, DEFAULT_QEMU_DIR, DEFAULT_SNAPSHOT  # noqa: E402
from memtracer.trace.trace_file import read_batches  # noqa: E402
from memtracer.trace.fifo import F_SETPIPE_SZ  # noqa: E402

PYTHON_COUNT = REPO / "analysis_tools" / "python" / "count.py"
WORKLOAD = "sort -r /proc/kallsyms -o /tmp/sorted"
# name: (the program, its options after the trace)
TOOL_RUNS = {
    "count": ([ANALYSIS_TOOLS_DIR / "count"], []),
    "pages": ([ANALYSIS_TOOLS_DIR / "pages"], []),
    "cachesim": ([ANALYSIS_TOOLS_DIR / "cachesim"], []),
    "reuse": ([ANALYSIS_TOOLS_DIR / "reuse"], []),
    "dump": ([ANALYSIS_TOOLS_DIR / "dump"], ["--output", "/dev/null"]),
    "export din": ([ANALYSIS_TOOLS_DIR / "export"], ["--format", "din", "--output", "/dev/null"]),
    "record": ([ANALYSIS_TOOLS_DIR / "record"], ["--output", "/dev/null"]),
    "count.py (Python API)": ([sys.executable, PYTHON_COUNT], []),
}


def record_trace(directory):
    trace = Path(directory) / "sort.gmbe"
    subprocess.run([sys.executable, REPO / "memory_tracer.py", DEFAULT_GUEST_IMAGE, DEFAULT_SNAPSHOT, DEFAULT_QEMU_DIR,
                    "--workload_path_on_guest", "/bin/busybox", "--workload_args", WORKLOAD,
                    "--analysis_tool_path", ANALYSIS_TOOLS_DIR / "record", "--analysis_tool_args", f"--output {trace}"],
                   check=True, stdout=subprocess.DEVNULL)
    return trace


def raw_prefix(trace, records, directory):
    """The first `records` records as a raw file: the tools' own speed, without decompression."""
    raw = Path(directory) / "sort.raw"
    written = 0
    with open(raw, "wb") as f:
        for batch in read_batches(trace):
            take = batch[:records - written]
            f.write(take.tobytes())
            written += len(take)
            if written == records:
                break
    return raw, written


def timed(command):
    start = time.monotonic()
    subprocess.run([str(c) for c in command], check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - start


def python_count_through_fifo(raw, directory):
    """The analysis-tool protocol: Ready, records through a FIFO, SIGUSR1 once they are all read."""
    fifo = Path(directory) / "bench.fifo"
    if fifo.exists():
        fifo.unlink()
    os.mkfifo(fifo)
    tool = subprocess.Popen([sys.executable, PYTHON_COUNT, fifo], stdout=subprocess.PIPE, text=True)
    tool.stdout.readline()
    start = time.monotonic()

    def feed():
        with open(raw, "rb") as source, open(fifo, "wb") as sink:
            fcntl.fcntl(sink, F_SETPIPE_SZ, 1 << 20)   # as memory_tracer does
            while chunk := source.read(1 << 20):
                sink.write(chunk)
    writer = threading.Thread(target=feed)
    writer.start()
    writer.join()
    tool.send_signal(signal.SIGUSR1)
    tool.communicate()
    return time.monotonic() - start


def measure(rounds, quick, directory):
    trace = record_trace(directory)
    raw, records = raw_prefix(trace, 20_000_000 if quick else 100_000_000, directory)
    with open(trace, "rb") as f:
        total = int.from_bytes(f.read(64)[40:48], "little")
    runs = {**{name: [*program, raw, *options] for name, (program, options) in TOOL_RUNS.items()},
            "count (zstd trace file)": [ANALYSIS_TOOLS_DIR / "count", trace]}
    times = {name: [] for name in runs}
    times["count.py (Python API) via FIFO"] = []
    for _ in range(rounds):
        for name, command in runs.items():
            times[name].append(timed(command))
        times["count.py (Python API) via FIFO"].append(python_count_through_fifo(raw, directory))
    lines = ["| tool | input | M records/s |", "|---|---|---|"]
    for name, values in times.items():
        n = total if "zstd" in name else records
        source = "zstd trace file" if "zstd" in name else "FIFO" if "FIFO" in name else "raw file"
        lines.append(f"| {name.split(' (zstd')[0].split(' via')[0]} | {source} | {n / statistics.median(values) / 1e6:.0f} |")
    return [f"Trace: `busybox {WORKLOAD}` in the built-in guest, {total:,} records; the raw file holds the "
            f"first {records:,}.", "", *lines]
