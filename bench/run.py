#!/usr/bin/env python3
"""User-mode benchmark: native, untraced qemu-x86_64, traced (lossless, to the C count tool) and
sampled 1/1024, side by side in one run. Repetitions are interleaved (each round runs every mode
once), and the table shows medians and ratios. Every run goes through memory_tracer.py itself, so
the figures are what a user gets; the times are memory_tracer's tracing_duration_in_milliseconds.

    python3 bench/run.py [--quick] [--rounds N]

Writes bench/out/user_mode.md and prints it."""
import argparse
import platform
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from memtracer.layout import ANALYSIS_TOOLS_DIR, DEFAULT_QEMU_DIR, GUEST_PROGRAMS_DIR  # noqa: E402

MODES = {
    "native": ["dummy", "dummy", "dummy", "--dont_use_qemu"],
    "untraced": ["--user_mode", "--dont_trace"],
    "traced": ["--user_mode", "--analysis_tool_path", str(ANALYSIS_TOOLS_DIR / "count"), "--print_trace_info"],
    "sampled_1/1024": ["--user_mode", "--analysis_tool_path", str(ANALYSIS_TOOLS_DIR / "count"),
                       "--log_of_GMBE_tracing_ratio", "10", "--print_trace_info"],
}


def make_input(path, megabytes):
    """Compressible pseudo-text, the same every time."""
    rng = random.Random(42)
    words = ["".join(rng.choice("etaoinshrdlucmfw") for _ in range(rng.randint(2, 9))) for _ in range(5000)]
    with open(path, "w") as f:
        written = 0
        while written < megabytes << 20:
            line = " ".join(rng.choice(words) for _ in range(12)) + "\n"
            f.write(line)
            written += len(line)


def workloads(quick, data_dir):
    data = Path(data_dir) / "input.txt"
    make_input(data, 2 if quick else 8)
    mem_loop = str(GUEST_PROGRAMS_DIR / "mem_loop")
    chosen = [("mem_loop 32 MiB x2", mem_loop, "32768 2")]
    chosen.append(("gzip -6", "/usr/bin/gzip", f"-6 -c {data}"))
    if not quick:
        chosen.append(("xz -6", "/usr/bin/xz", f"-6 -T1 -c {data}"))
    return chosen


def run_once(mode, program, args):
    command = [sys.executable, str(REPO / "memory_tracer.py"), *MODES[mode],
               "--workload_path_on_host", program, "--workload_args", args]
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{mode} run of {program} failed:\n{result.stderr}")
    values = {}
    for line in result.stdout.splitlines():
        name, _, value = line.rpartition(": ")
        if value.isdigit():
            values[name.replace("ATTENTION: ", "").split(" (")[0]] = int(value)
    return values


def measure(rounds, quick):
    rows = []
    with tempfile.TemporaryDirectory() as data_dir:
        for name, program, args in workloads(quick, data_dir):
            times = {mode: [] for mode in MODES}
            last = {}
            for _ in range(rounds):
                for mode in MODES:   # interleaved: every mode once per round
                    values = run_once(mode, program, args)
                    times[mode].append(values["tracing_duration_in_milliseconds"])
                    last[mode] = values
            rows.append((name, {m: statistics.median(t) for m, t in times.items()}, last))
            print(f"measured {name}", file=sys.stderr)
    return rows


def table(rows, rounds):
    lines = [
        "| workload | native ms | untraced ms | traced ms | sampled 1/1024 ms | untraced/native | "
        "traced/native | traced/untraced | sampled/untraced | records | M records/s traced | dropped |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, median, last in rows:
        records = last["traced"]["num_of_events_written_to_trace_buf"]
        dropped = last["traced"].get("num_of_dropped_events", 0)
        lines.append(
            f"| {name} | {median['native']:.0f} | {median['untraced']:.0f} | {median['traced']:.0f} | "
            f"{median['sampled_1/1024']:.0f} | {median['untraced'] / median['native']:.2f}x | "
            f"{median['traced'] / median['native']:.2f}x | {median['traced'] / median['untraced']:.2f}x | "
            f"{median['sampled_1/1024'] / median['untraced']:.2f}x | {records:,} | "
            f"{records / median['traced'] / 1000:.0f} | {dropped} |")
    versions = (DEFAULT_QEMU_DIR / "VERSION.json").read_text().replace("\n", " ")
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    return "\n".join([f"User mode, medians of {rounds} interleaved rounds. CPU: {cpu}, "
                      f"{len(open('/proc/cpuinfo').read().split('processor')) - 1} cores. QEMU: {versions}", "",
                      *lines, ""])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer workloads, smaller inputs, 3 rounds")
    parser.add_argument("--rounds", type=int, help="rounds of interleaved runs (default 3 quick, 5 full)")
    args = parser.parse_args()
    rounds = args.rounds or (3 if args.quick else 5)
    text = table(measure(rounds, args.quick), rounds)
    out = REPO / "bench" / "out"
    out.mkdir(exist_ok=True)
    (out / "user_mode.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
