#!/usr/bin/env python3
"""The hand-over and the sampling, side by side in one run (user mode, qemu-x86_64 with the plugin,
no memory_tracer around it, so that plugin options can be set one by one):

- the FIFO to a reader that knows nothing of the ring (dd, 1 MiB reads), by the vCPU's write() and
  by vmsplice (the pipe takes the buffers' pages), beside a raw pipe's capacity (dd | dd);
- the shared-memory ring to analysis_tools' count, records written in place in the ring by the lone
  vCPU, and copied into it from the vCPU's buffer;
- sampled 1/1024, every record written then sampled at hand-over, and with the counting
  translation between samples (blocks that only count accesses), in blocks of 1 and of 16 events;
- sampled 1 in 16 into the ring, where samples come too often for counting to pay: every record is
  written and the sampled ones kept, at a little more than the whole trace's cost ("ring, in
  place"; the hand-over moves the samples together).

Rounds are interleaved (each runs every mode once); the table shows medians, minimums beside them,
and ratios over untraced QEMU of the same rounds. bench/run.py includes it in bench/RESULTS.md.

    python3 bench/handover.py [--rounds N] [--quick]"""
import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from memtracer.environment import use_project_environment  # noqa: E402

use_project_environment()
from memtracer.layout import ANALYSIS_TOOLS_DIR, DEFAULT_QEMU_DIR, GUEST_PROGRAMS_DIR  # noqa: E402
from memtracer.qemu.plugin_control import parse_counters  # noqa: E402
from memtracer.trace.shm_ring import create_ring  # noqa: E402

QEMU = DEFAULT_QEMU_DIR / "qemu-x86_64"
PLUGIN = DEFAULT_QEMU_DIR / "libgmbeoo.so"
OUT = REPO / "bench" / "out"
READER = ["dd", "of=/dev/null", "bs=1M", "status=none"]
SAMPLED = {"L": "log_of_GMBE_block_len", "R": "log_of_GMBE_tracing_ratio"}

# mode: (plugin options or None for untraced, where the trace goes: a FIFO, a ring or trace files)
MODES = {
    "untraced": (None, None),
    "FIFO by write()": (["fifo_by_write=on"], "fifo"),
    "FIFO by vmsplice": ([], "fifo"),
    "ring, copied in": (["ring_by_copy=on"], "ring"),
    "ring, in place": (["far_reader_ns=0"], "ring"),     # however far the reader's CPU is
    "sampled 1/1024, all written": ([f"{SAMPLED['R']}=10", "record_between_samples=on"], "dir"),
    "sampled 1/1024, counting": ([f"{SAMPLED['R']}=10"], "dir"),
    "1/1024 in 16s, all written": ([f"{SAMPLED['L']}=4", f"{SAMPLED['R']}=10", "record_between_samples=on"], "dir"),
    "1/1024 in 16s, counting": ([f"{SAMPLED['L']}=4", f"{SAMPLED['R']}=10"], "dir"),
    "sampled 1/16, ring": ([f"{SAMPLED['R']}=4"], "ring"),
}


def workloads(data_dir, quick):
    text = data_dir / "input.txt"
    with open(text, "wb") as f:
        subprocess.run([GUEST_PROGRAMS_DIR / "make_text", "1" if quick else "4"], stdout=f, check=True)
    loop_kib = 8192 if quick else 32768
    return {f"mem_loop {loop_kib // 1024} MiB x2": [GUEST_PROGRAMS_DIR / "mem_loop", str(loop_kib), "2"],
            f"gzip -6 ({'1' if quick else '4'} MiB)": ["/usr/bin/gzip", "-6", "-c", str(text)]}


def run_mode(mode, program, work_dir, wrapper=()):
    """(seconds, the plugin's counters, or {} untraced) of one run; wrapper: a command that runs
    QEMU's (bench/instructions.py)."""
    options, transport = MODES[mode]
    if options is None:
        start = time.monotonic()
        subprocess.run([*wrapper, QEMU, *program], stdout=subprocess.DEVNULL, check=True)
        return time.monotonic() - start, {}
    counters = work_dir / "counters"
    if transport == "fifo":
        trace = work_dir / "trace.fifo"
        os.mkfifo(trace)
        reader = subprocess.Popen([*READER, f"if={trace}"])
        where = f"trace_fifo_path={trace}"
    elif transport == "ring":
        trace = Path("/dev/shm") / f"{work_dir.name}.ring"
        create_ring(trace)
        reader = subprocess.Popen([ANALYSIS_TOOLS_DIR / "count", trace], stdout=subprocess.DEVNULL)
        where = f"trace_shm_path={trace}"
    else:
        trace = work_dir / "trace_dir"
        trace.mkdir()
        reader = None
        where = f"trace_dir={trace}"
    plugin = ",".join([str(PLUGIN), where, f"counters_path={counters}", *options])
    start = time.monotonic()
    subprocess.run([*wrapper, QEMU, "-plugin", plugin, *program], stdout=subprocess.DEVNULL, check=True)
    if transport == "ring":
        reader.send_signal(signal.SIGUSR1)    # count reports once the ring is empty
    if reader:
        reader.wait()
    seconds = time.monotonic() - start
    values = parse_counters(counters.read_text())
    subprocess.run(["rm", "-rf", trace, counters], check=True)
    if values["num_of_dropped_events"]:
        raise SystemExit(f"{mode}: {values['num_of_dropped_events']} records dropped")
    return seconds, values


def raw_pipe_rate():
    """16-byte records per second through a pipe: 1 GiB, dd to dd, 64 KiB writes, 1 MiB reads."""
    start = time.monotonic()
    subprocess.run("dd if=/dev/zero bs=64K count=16384 status=none | dd of=/dev/null bs=1M iflag=fullblock "
                   "status=none", shell=True, check=True)
    return (1 << 30) / 16 / (time.monotonic() - start)


def measure(rounds, quick):
    """The section's markdown lines."""
    lines = [f"Hand-over and sampling, user mode, qemu-x86_64 with the plugin alone ({rounds} interleaved "
             "rounds; bench/handover.py).", ""]
    with tempfile.TemporaryDirectory(prefix="memtracer-bench-") as tmp:
        tmp = Path(tmp)
        pipe_rates = []
        for name, program in workloads(tmp, quick).items():
            times = {mode: [] for mode in MODES}
            records = {}
            for _ in range(rounds):
                pipe_rates.append(raw_pipe_rate())
                for mode in MODES:
                    seconds, counters = run_mode(mode, program, tmp)
                    records[mode] = counters.get("num_of_events_written_to_trace_file", 0)
                    times[mode].append(seconds)
            untraced = statistics.median(times["untraced"])
            lines += [f"**{name}**", "", "| mode | median s | min s | / untraced | M records/s | records |",
                      "|---|---|---|---|---|---|"]
            for mode, values in times.items():
                mid = statistics.median(values)
                rate = f"{records[mode] / mid / 1e6:.0f}" if records[mode] else "-"
                lines.append(f"| {mode} | {mid:.3f} | {min(values):.3f} | {mid / untraced:.2f}x | {rate} | "
                             f"{records[mode]} |")
            lines.append("")
            print(f"measured hand-over: {name}", file=sys.stderr)
        lines.append(f"A raw pipe (dd to dd, 64 KiB writes, 1 MiB reads) carried "
                     f"{statistics.median(pipe_rates) / 1e6:.0f} M records/s in these rounds (median; "
                     f"{max(pipe_rates) / 1e6:.0f} at best).")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="smaller inputs")
    args = parser.parse_args()
    text = "\n".join(["# Hand-over and sampling", "", *measure(args.rounds, args.quick)]) + "\n"
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "handover.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
