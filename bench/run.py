#!/usr/bin/env python3
"""The performance table, side by side in one run, with the anchors.

Modes: native (--dont_use_qemu), untraced QEMU (--dont_trace; also Debian's own binaries, to compare
the patched QEMU with), traced (lossless, to the C count tool, which takes the shared-memory ring:
records written by the generated code, in place in the ring with one vCPU), the same copied into the
ring from the vCPU's buffer (--ring_by_copy), through the plugin's callback (--callback_records),
through the FIFO to a tool that knows only the original protocol (bench/fifo_reader.py; beside a raw
pipe's capacity measured in the same run), to the Python API's count.py, CPL3-only, sampled 1/1024;
anchors: QEMU's own upstream `mem` plugin in its callback mode (tests/tcg/plugins/mem.c, built here
from Debian's QEMU source, never committed), its `bb` plugin counting blocks with inline adds (the
least that instrumenting every block costs, beside sampled traces, which count every block's
accesses) and, in user mode, Valgrind lackey --trace-mem=yes (~1000x slower: one round, and only on
programs that run natively in under 100 ms). In full-system mode (the built-in image) and user mode;
workloads: a memory-heavy C loop and real Debian programs (gzip, sort, xz) on generated text
(to_run_on_guest/programs/make_text.c, the same bytes everywhere). Rounds are
interleaved (each runs every mode once, in an order shuffled anew each round, so that no mode
always runs after the same one); the tables show medians and ratios, never single times, and the
goals give the ratios of the minimums beside those of the medians. Where two modes' times lie
within the host's noise of each other (sampled 1/1024 and untraced; the patched QEMU and Debian's,
untraced), their goals are decided back to back: after a workload's rounds, its untraced, Debian's
untraced and sampled runs once more, the three one right after the other, once in each order, and
the median of those triples' ratios. bench/out/runs.json keeps every run's figures (time,
counters, steal) for another look.
Every run but lackey goes through memory_tracer.py; times are its tracing_duration_in_milliseconds.

Also: loadvm -> workload running and the time to send a 1 MiB workload (from the full-system
runs, memory_tracer -v), the FIFO by write() and by vmsplice, the ring in place and copied, and
sampling with and without counting through the gaps, plugin option by option (bench/handover.py),
the host instructions that these modes execute per access, counted by QEMU in QEMU, which this
machine's noise does not reach (bench/instructions.py), and the analysis tools' throughput on a
recorded trace (bench/tools.py). Before each round, how fast the host hands out fresh memory: on a
virtual machine that returns freed memory to its hypervisor, first touches are slow and drift, and
full-system QEMU touches its guest's RAM afresh in every run. And for each run, the CPU time that
the hypervisor took from this machine meanwhile (steal), which makes it take the longer, and before
and after it how far apart the hypervisor has put the two CPUs (bench/cpu_pair.c): a traced run's
records cross from one to the other.

    python3 bench/run.py [--quick] [--rounds N] [--only system|user|tools]

--quick takes about 5 minutes on 2 cores and writes bench/out/; a full run about 25 minutes and
also keeps its results in bench/RESULTS.md and bench/RESULTS.png."""
import argparse
import datetime
import itertools
import json
import mmap
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from memtracer.environment import use_project_environment  # noqa: E402

use_project_environment()   # any python3 runs it inside build/venv
sys.path.insert(0, str(REPO / "bench"))

import contrib_plugins  # noqa: E402
import handover as bench_handover  # noqa: E402
import instructions as bench_instructions  # noqa: E402
import tools as bench_tools  # noqa: E402
from memtracer.layout import (ANALYSIS_TOOLS_DIR, BUILD_DIR, DEFAULT_GUEST_IMAGE, DEFAULT_QEMU_DIR,  # noqa: E402
                              DEFAULT_SNAPSHOT, GUEST_PROGRAMS_DIR)
from memtracer.run.window import window_in_log  # noqa: E402
from memtracer.record import RECORD_SIZE  # noqa: E402
from memtracer.trace.shm_ring import ring_capacity  # noqa: E402

OUT = REPO / "bench" / "out"
COUNT = ["--analysis_tool_path", str(ANALYSIS_TOOLS_DIR / "count"), "--print_trace_info"]
PYTHON_COUNT = ["--analysis_tool_path", str(REPO / "analysis_tools" / "python" / "count.py"), "--print_trace_info"]
MEM_PLUGIN = contrib_plugins.MEM_PLUGIN
BB_PLUGIN = contrib_plugins.BB_PLUGIN
QEMU_MODES = {
    "untraced": ["--dont_trace"],
    "untraced Debian": ["--dont_trace"],      # Debian's own QEMU binaries (DEBIAN_QEMU_DIR)
    "traced": COUNT,
    "callback": COUNT + ["--callback_records"],
    "ring by copy": COUNT + ["--ring_by_copy"],
    "FIFO, other tool": ["--analysis_tool_path", str(REPO / "bench" / "fifo_reader.py"), "--print_trace_info"],
    "count.py": PYTHON_COUNT,
    "CPL3-only": COUNT + ["--trace_only_CPL3_code_GMBE"],
    "sampled 1/1024": COUNT + ["--log_of_GMBE_tracing_ratio", "10"],
    "mem plugin": ["--dont_trace", "--qemu_plugin", f"{MEM_PLUGIN},callback=on"],
    # QEMU's bb plugin, two inline adds per block: what instrumenting every block costs at the least
    "bb plugin inline": ["--dont_trace", "--qemu_plugin", f"{BB_PLUGIN},inline=on"],
    # issue 6: the opt-in formats, and the cost of counting instructions for --max_instructions
    "compact 8B": COUNT + ["--record_format", "compact"],
    "extended 32B": COUNT + ["--record_format", "extended"],
    "insn limit": COUNT + ["--max_instructions", str(10 ** 15)],
}
SYSTEM = [str(DEFAULT_GUEST_IMAGE), DEFAULT_SNAPSHOT, str(DEFAULT_QEMU_DIR)]
# Debian's qemu-system-x86_64 and qemu-x86_64 laid out as a qemu_with_GMBEOO directory: is the
# patched QEMU, untraced, as fast as Debian's?
DEBIAN_QEMU_DIR = BUILD_DIR / "bench" / "debian_qemu"
MS = "tracing_duration_in_milliseconds"
STEAL = "stolen_ms"            # over the whole memory_tracer run, not only its window
WINDOW = "window_monotonic_s"  # the trace window's ends on the host's CLOCK_MONOTONIC
STEAL_NOTED_MS = 100
# bench/cpu_pair.c, built for the bench: how far apart the hypervisor has put the two CPUs, asked
# before and after each run; under NEAR_LINE_NS, they shared a cache.
CPU_PAIR = BUILD_DIR / "bench" / "cpu_pair"
LINE_NS = "line_transfer_ns"
LINE_AFTER_NS = "line_transfer_ns_after"
RING_NS = "ring_ns_per_record"
NEAR_LINE_NS = 100
LACKEY_MAX_NATIVE_MS = 100
FIRST_TOUCH_MIB = 64
# Free page reporting: a virtio balloon (device id 5) with feature bit 5 hands freed blocks of
# 2^order pages back to its hypervisor.
VIRTIO_BALLOON_DEVICE = "0x0005"
BALLOON_F_REPORTING = 5
PAGE_REPORTING_ORDER = Path("/sys/module/page_reporting/parameters/page_reporting_order")
COLORS = {"traced": "tab:blue", "callback": "tab:olive", "ring by copy": "gold", "untraced Debian": "black",
          "FIFO, other tool": "tab:pink", "count.py": "tab:orange", "CPL3-only": "tab:green", "sampled 1/1024": "tab:red",
          "mem plugin": "tab:purple", "compact 8B": "tab:cyan", "extended 32B": "tab:brown",
          "insn limit": "tab:gray", "bb plugin inline": "navy"}
# The goals between modes whose times lie within this machine's noise of each other are decided
# back to back: the three runs of a triple one right after the other, one triple in each order,
# and the median of the triples' ratios (a round's modes are minutes apart in full system, where
# the host's state changes). The rounds' medians stay beside them.
BACK_TO_BACK = ("untraced", "untraced Debian", "sampled 1/1024")
BACK_TO_BACK_RATIOS = (("sampled 1/1024", "untraced"), ("untraced", "untraced Debian"))
GOALS = """Goals: full-system traced/untraced <= 1.3x and user mode <= 2.0x (to count); >= 200 M records/s
delivered full-system; the FIFO to another tool >= 0.9 of a raw pipe; sampled 1/1024 <= 1.1x untraced;
the patched QEMU untraced as fast as Debian's; 0 dropped or missing."""


# ----------------------------------------------------------------- workloads

class Workload:
    """One program with its arguments, run natively, under qemu-x86_64, or in the guest."""

    def __init__(self, name, program, args, input_mib=None):
        self.name, self.program, self.args, self.input_mib = name, program, args, input_mib

    def host_args(self, data_dir):
        args = self.args
        if self.input_mib:
            args += f" {data_dir}/input_{self.input_mib}.txt"
        return ["--workload_path_on_host", self.program, "--workload_args", args]

    def guest_args(self):
        if not self.input_mib:   # a program of ours, sent from the host (the 1 MiB transfer figure)
            return ["--workload_path_on_host", self.program, "--workload_args", self.args]
        # A Debian program in the image: its input is made before the window opens.
        return ["--workload_path_on_guest", "/usr/local/bin/bench_in_guest.sh",
                "--workload_args", f"{self.input_mib} {self.program} {self.args}",
                "--dont_add_communications_with_host_to_workload"]


def workloads(suite, quick, data_dir):
    mem_loop = one_mib_mem_loop(data_dir) if suite == "system" else str(GUEST_PROGRAMS_DIR / "mem_loop")
    loop_kib = 32768 if suite == "system" or not quick else 8192
    chosen = [Workload(f"mem_loop {loop_kib // 1024} MiB x2", mem_loop, f"{loop_kib} 2")]
    mib = 1 if quick else 4
    chosen.append(Workload(f"gzip -6 ({mib} MiB)", "/usr/bin/gzip", "-6 -c", mib))
    if suite == "system" or not quick:
        chosen.append(Workload(f"sort ({mib} MiB)", "/usr/bin/sort", "", mib))
    if not quick:
        chosen.append(Workload("xz -6 (1 MiB)", "/usr/bin/xz", "-6 -T1 -c", 1))
    for w in chosen:
        if w.input_mib and not (Path(data_dir) / f"input_{w.input_mib}.txt").exists():
            with open(Path(data_dir) / f"input_{w.input_mib}.txt", "wb") as f:
                subprocess.run([GUEST_PROGRAMS_DIR / "make_text", str(w.input_mib)], stdout=f, check=True)
    return chosen


def one_mib_mem_loop(data_dir):
    """mem_loop padded to 1 MiB (an ELF runs with bytes after it), for the transfer figure."""
    padded = Path(data_dir) / "mem_loop_1MiB"
    if not padded.exists():
        shutil.copy(GUEST_PROGRAMS_DIR / "mem_loop", padded)
        with open(padded, "ab") as f:
            f.write(os.urandom((1 << 20) - padded.stat().st_size))
    return str(padded)


# ----------------------------------------------------------------- running

def stolen_ms():
    """CPU time that the hypervisor has taken from this machine's CPUs (steal, /proc/stat's first
    line: user nice system idle iowait irq softirq steal, in clock ticks), all CPUs together."""
    with open("/proc/stat") as stat:
        fields = stat.readline().split()
    return int(fields[8]) * 1000 / os.sysconf("SC_CLK_TCK")


def memory_tracer(args, prefix=()):
    """One run of memory_tracer.py -v (under the prefix's command, e.g. a profiler): its figures."""
    stolen_before = stolen_ms()
    result = subprocess.run([*prefix, sys.executable, str(REPO / "memory_tracer.py"), *map(str, args), "-v"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        raise SystemExit(f"memory_tracer.py {' '.join(map(str, args))} failed:\n{result.stderr[-2000:]}")
    values = {STEAL: stolen_ms() - stolen_before}
    for line in result.stdout.splitlines():
        name, _, value = line.rpartition(": ")
        if value.isdigit():
            values[name.replace("ATTENTION: ", "").split(" (")[0]] = int(value)
    timings = re.search(r"timings \(s after starting QEMU\): (.*)", result.stderr)
    if timings:
        values.update({k: float(v) for k, v in (t.split("=") for t in timings.group(1).split())})
    window = window_in_log(result.stderr)
    if window:
        values[WINDOW] = list(window)
    return values


def debian_qemu_dir():
    """Debian's QEMU binaries where memory_tracer looks for them (the plugin is not loaded untraced)."""
    DEBIAN_QEMU_DIR.mkdir(parents=True, exist_ok=True)
    for name, target in (("qemu-system-x86_64", shutil.which("qemu-system-x86_64")),
                         ("qemu-x86_64", shutil.which("qemu-x86_64")), ("qemu-img", shutil.which("qemu-img")),
                         ("libgmbeoo.so", DEFAULT_QEMU_DIR / "libgmbeoo.so")):
        link = DEBIAN_QEMU_DIR / name
        if not link.is_symlink():
            link.symlink_to(target)
    return DEBIAN_QEMU_DIR


def lackey(workload, data_dir):
    """Valgrind lackey --trace-mem=yes on the program (its trace to /dev/null): wall-clock ms."""
    args = workload.host_args(data_dir)[3].split()
    start = time.monotonic()
    subprocess.run(["valgrind", "--tool=lackey", "--trace-mem=yes", "--log-file=/dev/null", workload.program,
                    *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return {"tracing_duration_in_milliseconds": (time.monotonic() - start) * 1000}


def run_mode(suite, mode, workload, data_dir, prefix=()):
    if mode == "native":
        return memory_tracer(["dummy", "dummy", "dummy", "--dont_use_qemu", *workload.host_args(data_dir)], prefix)
    if mode == "lackey":
        return lackey(workload, data_dir)
    if mode == "untraced Debian":
        debian = [str(DEFAULT_GUEST_IMAGE), DEFAULT_SNAPSHOT, str(debian_qemu_dir())]
        if suite == "system":
            return memory_tracer([*debian, *QEMU_MODES[mode], *workload.guest_args()], prefix)
        return memory_tracer(["--user_mode", *debian, *QEMU_MODES[mode], *workload.host_args(data_dir)], prefix)
    if suite == "system":
        return memory_tracer([*SYSTEM, *QEMU_MODES[mode], *workload.guest_args()], prefix)
    return memory_tracer(["--user_mode", *QEMU_MODES[mode], *workload.host_args(data_dir)], prefix)


def modes_of(suite):
    modes = ["native", *QEMU_MODES]
    if suite == "user":
        modes.remove("CPL3-only")   # everything is CPL 3 in user mode
        if shutil.which("valgrind"):
            modes.append("lackey")
    return modes


def round_order(modes, round_index):
    """The modes in a shuffled order (the same for a round's index in every run), lackey last: it
    runs only if native was fast, which native's first run tells."""
    order = [m for m in modes if m != "lackey"]
    random.Random(round_index).shuffle(order)
    return order + [m for m in modes if m == "lackey"]


def back_to_back_orders(quick):
    """Every order of BACK_TO_BACK, or (quick) its rotations: each mode once in each place."""
    if quick:
        return [BACK_TO_BACK[i:] + BACK_TO_BACK[:i] for i in range(len(BACK_TO_BACK))]
    return list(itertools.permutations(BACK_TO_BACK))


def back_to_back(suite, workload, data_dir, quick):
    """The BACK_TO_BACK modes' times, run one right after the other, in each order: a list of
    {mode: ms}, one per triple."""
    triples = []
    for order in back_to_back_orders(quick):
        triples.append({mode: run_mode(suite, mode, workload, data_dir)[MS] for mode in order})
    return triples


def measure(suite, rounds, quick, data_dir, touch_rates):
    """The suite's runs, each workload's as (name, {mode: [figures of each round]}, the triples run
    back to back); touch_rates gets the host's first-touch rate before each round."""
    rows = []
    for workload in workloads(suite, quick, data_dir):
        runs = {mode: [] for mode in modes_of(suite)}
        for i in range(rounds):
            touch_rates.append(first_touch_mb_per_s())
            for mode in round_order(list(runs), i):   # interleaved: every mode once per round
                if mode == "lackey" and (i > 0 or median(runs["native"], MS) > LACKEY_MAX_NATIVE_MS):
                    continue    # ~1000x native: one round places it; a long program would take minutes
                runs[mode].append(probed_around(lambda: run_mode(suite, mode, workload, data_dir)))
        rows.append((workload.name, runs, back_to_back(suite, workload, data_dir, quick)))
        print(f"measured {suite}: {workload.name}", file=sys.stderr)
    return rows


# ----------------------------------------------------------------- tables

def over_runs(statistic, runs, key):
    """statistic (statistics.median, min) of key over the runs that have it, or None."""
    values = [r[key] for r in runs if key in r]
    return statistic(values) if values else None


def median(runs, key):
    return over_runs(statistics.median, runs, key)


def first_touch_mb_per_s():
    """How fast the host hands out fresh memory: FIRST_TOUCH_MIB mapped anew, written a page at a time.
    A host that returns freed memory to its hypervisor gets it back page by page at first touch, far
    slower than memory is written; full-system QEMU's guest RAM is fresh in every run, untraced or
    traced, so its times carry this rate, which drifts from one minute to the next."""
    size = FIRST_TOUCH_MIB << 20
    with mmap.mmap(-1, size) as memory:
        start = time.monotonic()
        for offset in range(0, size, mmap.PAGESIZE):
            memory[offset] = 1
        return size / 1e6 / (time.monotonic() - start)


def build_cpu_pair():
    CPU_PAIR.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["gcc", "-O2", "-pthread", f"-I{REPO / 'qemu_patches'}",
                    f"-DRING_RECORDS={ring_capacity(RECORD_SIZE)}", "-o", CPU_PAIR, REPO / "bench" / "cpu_pair.c"],
                   check=True)


def cpu_pair():
    """What the two CPUs give a traced run right now (bench/cpu_pair.c), or {} without two:
    {LINE_NS: the time a cache line takes from one to the other, RING_NS: the time a record takes
    through a ring from one to the other}. A traced run's records cross so, from the vCPU to the
    tool; the hypervisor moves the two CPUs between placements where a line takes some 30 ns and
    some 170 within seconds."""
    if not {0, 1} <= os.sched_getaffinity(0):    # the probe runs on CPUs 0 and 1
        return {}
    line_ns, record_ns = subprocess.run([CPU_PAIR], stdout=subprocess.PIPE, text=True, check=True).stdout.split()
    return {LINE_NS: int(line_ns), RING_NS: float(record_ns)}


def probed_around(run):
    """run()'s figures, with the probe's from before it and the line time from after it: the
    hypervisor may move the CPUs during a run, which the probe before cannot tell."""
    before = cpu_pair()
    figures = run()
    after = cpu_pair()
    return figures | before | ({LINE_AFTER_NS: after[LINE_NS]} if after else {})


def probed_near(run):
    """Whether the probe before the run found the two CPUs sharing a cache."""
    return run[LINE_NS] < NEAR_LINE_NS


def placement_of(run):
    """near or far where the probes before and after the run agree, else moved."""
    if probed_near(run) != (run[LINE_AFTER_NS] < NEAR_LINE_NS):
        return "moved"
    return "near" if probed_near(run) else "far"


def placement_line(rows):
    """The placements seen before the suite's runs, how many saw another after, and
    traced/untraced split by the placement around each traced run."""
    probes = [r for _, runs, _ in rows for mode in runs for r in runs[mode] if LINE_AFTER_NS in r]
    if not probes:
        return []
    near = [r for r in probes if probed_near(r)]
    far = [r for r in probes if not probed_near(r)]
    seen = [f"{min(r[LINE_NS] for r in v)}-{max(r[LINE_NS] for r in v)} ns before {len(v)} "
            f"(a record through a ring: {min(r[RING_NS] for r in v):.1f}-{max(r[RING_NS] for r in v):.1f} ns)"
            for v in (near, far) if v]
    split = []
    for name, runs, _ in rows:
        untraced = median(runs["untraced"], MS)
        for label in ("near", "far", "moved"):
            traced = [r for r in runs["traced"] if LINE_AFTER_NS in r and placement_of(r) == label]
            if traced:
                split.append(f"{name} {label} {median(traced, MS) / untraced:.2f}x ({len(traced)})")
    moved = sum(placement_of(r) == "moved" for r in probes)
    return ["", f"A cache line from one CPU to the other (bench/cpu_pair.c, before each run) took "
            f"{' and '.join(seen)} of the {len(probes)} runs: the hypervisor placed the two CPUs where they "
            f"share a cache (under {NEAR_LINE_NS} ns) or not, and a traced run's records cross between them. "
            f"The probe after the run found the other placement after {moved} of them. Traced over untraced "
            f"(medians), by the placement around each traced run (moved: the probes before and after "
            f"disagreed), with the number of those runs: {'; '.join(split)}."]


def free_page_reporting_mib():
    """The blocks, in MiB, in which this host's virtio balloon hands freed memory back to its
    hypervisor (free page reporting: the hypervisor backs it again at its next first touch), 0 where
    the size is not told, or None where no balloon does so."""
    for device in Path("/sys/bus/virtio/devices").glob("*"):
        try:
            is_balloon = (device / "device").read_text().strip() == VIRTIO_BALLOON_DEVICE
            features = (device / "features").read_text().strip()
        except OSError:
            continue
        if is_balloon and features[BALLOON_F_REPORTING:BALLOON_F_REPORTING + 1] == "1":
            try:
                order = int(PAGE_REPORTING_ORDER.read_text())
            except (OSError, ValueError):
                return 0
            return (mmap.PAGESIZE << order) >> 20
    return None


def first_touch_line(rates, reporting_mib):
    if reporting_mib is None:
        host = "No virtio balloon here hands freed memory back to a hypervisor (free page reporting)."
    else:
        blocks = f", in blocks of {reporting_mib} MiB" if reporting_mib else ""
        host = (f"This host's virtio balloon hands freed memory back to its hypervisor (free page reporting{blocks}): "
                "full-system QEMU's guest RAM is fresh in every run, and whether its first touches fault "
                "through the hypervisor depends on how much of what the runs before freed it has taken back, "
                "in untraced and traced runs alike.")
    return (f"Fresh memory at first touch ({FIRST_TOUCH_MIB} MiB mapped anew and written a page at a time, "
            f"before each round): {min(rates):.0f}-{max(rates):.0f} MB/s, median {statistics.median(rates):.0f}. {host}")


def raw_pipe_records_per_second(rounds):
    """What a pipe carries on this machine, in 16-byte records per second: 1 GiB through dd in
    64 KiB writes and 1 MiB reads (the plugin's and a good reader's sizes); the median of rounds."""
    rates = []
    for _ in range(rounds):
        start = time.monotonic()
        subprocess.run("dd if=/dev/zero bs=64K count=16384 status=none | dd of=/dev/null bs=1M iflag=fullblock "
                       "status=none", shell=True, check=True)
        rates.append((1 << 30) / 16 / (time.monotonic() - start))
    return statistics.median(rates)


def back_to_back_ratios(triples):
    """{"a/b back to back": the median over the triples of a's time over b's} for BACK_TO_BACK_RATIOS."""
    return {f"{a}/{b} back to back": statistics.median(t[a] / t[b] for t in triples)
            for a, b in BACK_TO_BACK_RATIOS}


def back_to_back_line(summary, triples):
    """Each BACK_TO_BACK ratio, workload by workload, under the suite's table."""
    ratios = "; ".join(f"{a}/{b}: " + ", ".join(f"{name} {v[f'{a}/{b} back to back']:.2f}x"
                                               for name, v in summary.items())
                       for a, b in BACK_TO_BACK_RATIOS)
    return ["", f"Back to back ({' / '.join(BACK_TO_BACK)}, the three runs one right after the other, {triples} "
            f"triples, each in another order; medians of the triples' ratios): {ratios}."]


def suite_table(suite, rows, pipe_rate):
    modes = modes_of(suite)
    ratios = [("traced", "native"), ("traced", "untraced"), ("callback", "untraced"),
              ("FIFO, other tool", "untraced"), ("untraced", "untraced Debian"), ("count.py", "untraced"),
              *([("CPL3-only", "untraced")] if suite == "system" else []), ("sampled 1/1024", "untraced"),
              ("mem plugin", "untraced"), ("bb plugin inline", "untraced"), ("compact 8B", "untraced"),
              ("extended 32B", "untraced"),
              ("insn limit", "untraced"), *([("lackey", "native")] if "lackey" in modes else [])]
    header = ["workload", *[f"{m} ms" for m in modes], *[f"{a}/{b}" for a, b in ratios],
              "M accesses/s traced", "M accesses/s untraced", "dropped+missing"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    summary = {}
    for name, runs, triples in rows:
        ms = {m: median(runs[m], MS) for m in modes}
        least = {m: over_runs(min, runs[m], MS) for m in modes}
        traced = runs["traced"][-1]
        records = traced["num_of_events_written_to_trace_buf"]
        lost = traced.get("num_of_dropped_events", 0) + traced.get("num_of_missing_events", 0)
        rate = records / ms["traced"] / 1000
        # The guest's own pace: as many accesses as traced, in untraced QEMU's time. No trace can
        # be delivered faster than QEMU makes the accesses.
        untraced_rate = records / ms["untraced"] / 1000
        ratio = {f"{a}/{b}": ms[a] / ms[b] for a, b in ratios if ms[a] is not None}
        fifo_rate = records / ms["FIFO, other tool"] / 1000
        of_minimums = {f"{a}/{b} of minimums": least[a] / least[b] for a, b in ratios if least[a] is not None}
        summary[name] = ratio | of_minimums | back_to_back_ratios(triples) | {
            "rate": rate, "untraced_rate": untraced_rate, "lost": lost, "fifo_rate": fifo_rate,
            "pipe_rate": pipe_rate / 1e6}
        lines.append("| " + " | ".join([name, *[f"{ms[m]:.0f}" if ms[m] is not None else "-" for m in modes],
                                         *[f"{ratio[f'{a}/{b}']:.2f}x" if f"{a}/{b}" in ratio else "-"
                                           for a, b in ratios],
                                         f"{rate:.0f}", f"{untraced_rate:.0f}", str(lost)]) + " |")
    stolen = [r[STEAL] for _, runs, _ in rows for mode in runs for r in runs[mode] if STEAL in r]
    lines += ["", f"The hypervisor took this machine's CPUs for {STEAL_NOTED_MS} ms or more during "
              f"{sum(s >= STEAL_NOTED_MS for s in stolen)} of the {len(stolen)} runs (steal time in /proc/stat, over "
              f"each whole memory_tracer run; median {statistics.median(stolen):.0f} ms, at most {max(stolen):.0f} ms): "
              "a run takes the longer, traced or untraced."]
    lines += back_to_back_line(summary, len(rows[0][2]))
    lines += placement_line(rows)
    fastest = max(summary.values(), key=lambda v: v["fifo_rate"])
    lines += ["", f"The FIFO to a tool that knows only the original protocol delivered at most "
              f"{fastest['fifo_rate']:.0f} M records/s; a raw pipe on this machine carries "
              f"{pipe_rate / 1e6:.0f} M records/s (1 GiB through dd, 64 KiB writes, 1 MiB reads, same run)."]
    if suite == "system":
        untraced = [r for _, runs, _ in rows for r in runs["untraced"]]
        sent = [r for _, runs, _ in rows for mode in runs for r in runs[mode] if "transfer" in r]
        lines += ["", f"loadvm -> workload running: {median(untraced, 'workload_started'):.2f} s "
                  f"(loadvm {median(untraced, 'loadvm'):.2f} s, runner answering "
                  f"{median(untraced, 'runner_answered'):.2f} s); sending the 1 MiB workload over "
                  f"virtio-serial: {median(sent, 'transfer') * 1000:.0f} ms (medians of {len(sent)})."]
    return lines, summary


def worst_ratio(values, ratio):
    """The worst of a ratio over workloads, as the goals show it: that of the medians, which decides,
    and that of the minimums beside it (the least a run took: its cost without the machine's noise)."""
    worst = max(v[ratio] for v in values)
    return worst, f"{worst:.2f}x (worst; {max(v[f'{ratio} of minimums'] for v in values):.2f}x of minimums)"


def worst_back_to_back(values, ratio):
    """The worst of a BACK_TO_BACK ratio over workloads, which decides, and the rounds' beside it."""
    worst = max(v[f"{ratio} back to back"] for v in values)
    _, rounds = worst_ratio(values, ratio)
    return worst, f"{worst:.2f}x (worst, back to back); in the rounds {rounds}"


def goals_lines(summaries):
    system, user = summaries.get("system", {}), summaries.get("user", {})
    every = list(system.values()) + list(user.values())
    checks = []
    if system:
        worst, shown = worst_ratio(system.values(), "traced/untraced")
        checks.append(("full-system traced/untraced <= 1.3x (count)", shown, worst <= 1.3))
        slowest = min(system.values(), key=lambda v: v["rate"])
        rate = slowest["rate"]
        checks.append((">= 200 M records/s delivered full-system",
                       f"{rate:.0f} M/s (lowest; untraced QEMU makes that workload's accesses at "
                       f"{slowest['untraced_rate']:.0f} M/s)", rate >= 200))
    if user:
        worst, shown = worst_ratio(user.values(), "traced/untraced")
        checks.append(("user mode traced/untraced <= 2.0x (count)", shown, worst <= 2.0))
    if every:
        best = max(v["fifo_rate"] / v["pipe_rate"] for v in every)
        checks.append(("FIFO to another tool >= 0.9 of a raw pipe", f"{best:.2f} (best)", best >= 0.9))
        worst, shown = worst_back_to_back(every, "sampled 1/1024/untraced")
        checks.append(("sampled 1/1024 <= 1.1x untraced", shown, worst <= 1.1))
        worst, shown = worst_back_to_back(every, "untraced/untraced Debian")
        checks.append(("patched QEMU untraced as fast as Debian's", shown, worst <= 1.05))
        lost = sum(v["lost"] for v in every)
        checks.append(("0 dropped or missing", str(lost), lost == 0))
    return ["| goal | measured | met |", "|---|---|---|",
            *[f"| {goal} | {value} | {'yes' if met else 'no'} |" for goal, value, met in checks]]


def chart(summaries, path):
    """Slowdown over untraced QEMU per mode and workload, both suites."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    suites = [s for s in ("system", "user") if s in summaries]
    fig, axes = plt.subplots(1, len(suites), figsize=(7 * len(suites), 4.8), squeeze=False)
    for ax, suite in zip(axes[0], suites):
        keys = [k for k in next(iter(summaries[suite].values())) if k.endswith("/untraced")]
        names = list(summaries[suite])
        width = 0.8 / len(keys)
        for i, key in enumerate(keys):
            values = [summaries[suite][n][key] for n in names]
            mode = key.replace("/untraced", "")
            ax.bar(np.arange(len(names)) + i * width, values, width, label=mode, color=COLORS[mode])
        ax.axhline(1.3, color="grey", linestyle="--", linewidth=1, label="goal 1.3x")
        ax.set_xticks(np.arange(len(names)) + width * (len(keys) - 1) / 2)
        ax.set_xticklabels(names, fontsize=8)
        ax.set_ylabel("time / untraced QEMU")
        ax.set_title("Full system (built-in image)" if suite == "system" else "User mode (qemu-x86_64)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ----------------------------------------------------------------- main

def machine_line(rounds):
    versions = (DEFAULT_QEMU_DIR / "VERSION.json").read_text()
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    return (f"{datetime.date.today()}; medians of {rounds} interleaved rounds, each in its own shuffled order. "
            f"CPU: {cpu}, {os.cpu_count()} cores. QEMU: {' '.join(versions.split())}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer and smaller workloads, 3 rounds")
    parser.add_argument("--rounds", type=int, help="rounds of interleaved runs (default 3 quick, 5 full)")
    parser.add_argument("--only", choices=["system", "user", "tools"], help="run one part only")
    args = parser.parse_args()
    rounds = args.rounds or (3 if args.quick else 5)
    contrib_plugins.build("mem.c", MEM_PLUGIN)
    contrib_plugins.build("bb.c", BB_PLUGIN)
    build_cpu_pair()
    lines, summaries, touch_rates, raw_runs = [], {}, [], {}
    with tempfile.TemporaryDirectory() as data_dir:
        for suite in ("system", "user"):
            if args.only in (None, suite):
                rows = measure(suite, rounds, args.quick, data_dir, touch_rates)
                raw_runs[suite] = rows
                table, summaries[suite] = suite_table(suite, rows, raw_pipe_records_per_second(rounds))
                lines += [f"## {'Full system (built-in image)' if suite == 'system' else 'User mode'}", "",
                          *table, ""]
        if args.only in (None, "user"):
            lines += ["## Hand-over and sampling", "", *bench_handover.measure(rounds, args.quick), ""]
            if not args.quick:
                lines += ["## Host instructions per access", "", *bench_instructions.measure(2), ""]
        if args.only in (None, "tools"):
            lines += ["## Analysis tools", "", *bench_tools.measure(rounds, args.quick, data_dir), ""]
    if summaries:
        lines += ["## Goals", "", *goals_lines(summaries), ""]
    header = [f"# memory_tracer benchmark{' (quick)' if args.quick else ''}", "", machine_line(rounds), ""]
    if touch_rates:
        header += [first_touch_line(touch_rates, free_page_reporting_mib()), ""]
    text = "\n".join(header + lines)
    OUT.mkdir(exist_ok=True)
    (OUT / "results.md").write_text(text)
    (OUT / "runs.json").write_text(json.dumps(raw_runs, indent=1))   # every run's figures, in round order
    if summaries:
        chart(summaries, OUT / "results.png")
    if not args.quick and args.only is None:
        shutil.copy(OUT / "results.md", REPO / "bench" / "RESULTS.md")
        shutil.copy(OUT / "results.png", REPO / "bench" / "RESULTS.png")
    print(text)


if __name__ == "__main__":
    main()
