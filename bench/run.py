#!/usr/bin/env python3
"""Benchmarks, side by side in one run: native, untraced QEMU, traced (lossless, to the C count
tool), traced CPL3-only and sampled 1/1024, in full-system mode (the built-in image) and in user
mode. Repetitions are interleaved (each round runs every mode once); the tables show medians and
ratios. Every run goes through memory_tracer.py itself, so the figures are what a user gets; the
times are memory_tracer's tracing_duration_in_milliseconds.

Full-system start-up figures come from the same runs (memory_tracer -v): loadvm -> workload
running, and the time to send a 1 MiB workload over the built-in image's virtio-serial port.
The analysis tools' throughput is measured on a recorded trace (bench/tools.py).

    python3 bench/run.py [--quick] [--rounds N] [--only system|user|tools]

Writes bench/out/results.md and prints it."""
import argparse
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import tools as bench_tools  # noqa: E402
from memtracer.layout import (ANALYSIS_TOOLS_DIR, DEFAULT_GUEST_IMAGE, DEFAULT_QEMU_DIR,  # noqa: E402
                              DEFAULT_SNAPSHOT, GUEST_PROGRAMS_DIR)

COUNT = ["--analysis_tool_path", str(ANALYSIS_TOOLS_DIR / "count"), "--print_trace_info"]
PYTHON_COUNT_SHM = ["--analysis_tool_path", str(REPO / "analysis_tools" / "python" / "count.py"),
                    "--shared_memory_ring", "--print_trace_info"]
TRACED_MODES = {
    "untraced": ["--dont_trace"],
    "traced": COUNT,
    "traced shm ring": PYTHON_COUNT_SHM,
    "traced CPL3-only": COUNT + ["--trace_only_CPL3_code_GMBE"],
    "sampled 1/1024": COUNT + ["--log_of_GMBE_tracing_ratio", "10"],
}
SYSTEM = [str(DEFAULT_GUEST_IMAGE), DEFAULT_SNAPSHOT, str(DEFAULT_QEMU_DIR)]
SUITES = {
    "system": {"native": ["dummy", "dummy", "dummy", "--dont_use_qemu"],
               **{mode: SYSTEM + args for mode, args in TRACED_MODES.items()}},
    "user": {"native": ["dummy", "dummy", "dummy", "--dont_use_qemu"],
             **{mode: ["--user_mode"] + args for mode, args in TRACED_MODES.items()
                if mode != "traced CPL3-only"}},   # user mode has CPL 3 only
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


def one_mib_mem_loop(data_dir):
    """mem_loop padded to 1 MiB (an ELF runs with bytes after it), for the transfer figure."""
    padded = Path(data_dir) / "mem_loop_1MiB"
    shutil.copy(GUEST_PROGRAMS_DIR / "mem_loop", padded)
    with open(padded, "ab") as f:
        f.write(os.urandom((1 << 20) - padded.stat().st_size))
    return str(padded)


def workloads(suite, quick, data_dir):
    mem_loop = str(GUEST_PROGRAMS_DIR / "mem_loop")
    if suite == "system":
        return [("mem_loop 32 MiB x2 (1 MiB binary)", one_mib_mem_loop(data_dir), "32768 2")]
    data = Path(data_dir) / "input.txt"
    make_input(data, 2 if quick else 8)
    chosen = [("mem_loop 32 MiB x2", mem_loop, "32768 2"), ("gzip -6", "/usr/bin/gzip", f"-6 -c {data}")]
    if not quick:
        chosen.append(("xz -6", "/usr/bin/xz", f"-6 -T1 -c {data}"))
    return chosen


def run_once(suite, mode, program, args):
    command = [sys.executable, str(REPO / "memory_tracer.py"), *SUITES[suite][mode],
               "--workload_path_on_host", program, "--workload_args", args, "-v"]
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{suite} {mode} run of {program} failed:\n{result.stderr[-2000:]}")
    values = {}
    for line in result.stdout.splitlines():
        name, _, value = line.rpartition(": ")
        if value.isdigit():
            values[name.replace("ATTENTION: ", "").split(" (")[0]] = int(value)
    timings = re.search(r"timings \(s after starting QEMU\): (.*)", result.stderr)
    if timings:
        values.update({k: float(v) for k, v in (t.split("=") for t in timings.group(1).split())})
    return values


def measure(suite, rounds, quick):
    rows = []
    with tempfile.TemporaryDirectory() as data_dir:
        for name, program, args in workloads(suite, quick, data_dir):
            runs = {mode: [] for mode in SUITES[suite]}
            for _ in range(rounds):
                for mode in SUITES[suite]:   # interleaved: every mode once per round
                    runs[mode].append(run_once(suite, mode, program, args))
            rows.append((name, runs))
            print(f"measured {suite}: {name}", file=sys.stderr)
    return rows


def median(runs, key):
    values = [r[key] for r in runs if key in r]
    return statistics.median(values) if values else None


def suite_table(suite, rows):
    modes = list(SUITES[suite])
    header = ["workload", *[f"{m} ms" for m in modes], "untraced/native", "traced/native", "traced/untraced",
              "shm ring/untraced",
              *(["CPL3-only/untraced"] if "traced CPL3-only" in modes else []), "sampled/untraced",
              "records", "M records/s traced", "dropped"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, runs in rows:
        ms = {m: median(runs[m], "tracing_duration_in_milliseconds") for m in modes}
        traced = runs["traced"][-1]
        records = traced["num_of_events_written_to_trace_buf"]
        ratio = lambda a, b: f"{ms[a] / ms[b]:.2f}x"
        cells = [name, *[f"{ms[m]:.0f}" for m in modes], ratio("untraced", "native"), ratio("traced", "native"),
                 ratio("traced", "untraced"), ratio("traced shm ring", "untraced"),
                 *([ratio("traced CPL3-only", "untraced")] if "traced CPL3-only" in modes else []),
                 ratio("sampled 1/1024", "untraced"), f"{records:,}", f"{records / ms['traced'] / 1000:.0f}",
                 str(traced.get("num_of_dropped_events", 0))]
        lines.append("| " + " | ".join(cells) + " |")
    if suite == "system":
        untraced = [r for _, runs in rows for r in runs["untraced"]]
        lines += ["", f"loadvm -> workload running: {median(untraced, 'workload_started'):.2f} s "
                  f"(loadvm {median(untraced, 'loadvm'):.2f} s, runner answering "
                  f"{median(untraced, 'runner_answered'):.2f} s); sending the 1 MiB workload over "
                  f"virtio-serial: {median(untraced, 'transfer') * 1000:.0f} ms (medians)."]
    return lines


def machine_line(rounds):
    versions = (DEFAULT_QEMU_DIR / "VERSION.json").read_text().replace("\n", " ")
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    return (f"Medians of {rounds} interleaved rounds. CPU: {cpu}, {os.cpu_count()} cores. "
            f"QEMU: {' '.join(versions.split())}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer workloads, smaller inputs, 3 rounds")
    parser.add_argument("--rounds", type=int, help="rounds of interleaved runs (default 3 quick, 5 full)")
    parser.add_argument("--only", choices=[*SUITES, "tools"], help="run one suite only")
    args = parser.parse_args()
    rounds = args.rounds or (3 if args.quick else 5)
    lines = [machine_line(rounds), ""]
    for suite in SUITES:
        if args.only in (None, suite):
            lines += [f"## {'Full-system (built-in image)' if suite == 'system' else 'User mode'}", "",
                      *suite_table(suite, measure(suite, rounds, args.quick)), ""]
    if args.only in (None, "tools"):
        with tempfile.TemporaryDirectory() as directory:
            lines += ["## Analysis tools", "", *bench_tools.measure(rounds, args.quick, directory), ""]
    text = "\n".join(lines)
    out = REPO / "bench" / "out"
    out.mkdir(exist_ok=True)
    (out / "results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
