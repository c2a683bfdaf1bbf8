#!/usr/bin/env python3
"""Where the trace window's time goes, mode against mode.

Each run of memory_tracer goes under `perf record -a` (the cpu-clock event, stamped with the host's
CLOCK_MONOTONIC, on which memory_tracer -v logs the window's ends); only the samples inside the
window count. They are summed by what the host was doing (QEMU's generated code, translating, the
look-up of the next block, the guest TLB and page walks, the plugin, the kernel's first touches of
fresh memory, the analysis tool and memory_tracer) and, for each mode after the first, the symbols
whose time grew or shrank the most. Modes are bench/run.py's; rounds are interleaved, each in a
shuffled order, and the table gives the medians of the rounds. A run under perf takes longer than
one without: compare the modes with each other, never with bench/run.py's times.

Needs Debian's linux-perf and root (perf records every CPU).

    python3 bench/profile.py [--suite system|user] [--workload sort] [--rounds 3] [MODE ...]
"""
import argparse
import collections
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402  (makes this python3 the project environment's)

SAMPLES_PER_SECOND = 2000       # per CPU: each sample stands for half a millisecond of one CPU
DEFAULT_MODES = ["untraced", "sampled 1/1024", "traced"]
TOP_SYMBOLS = 12
WORKLOADS = "mem_loop, gzip, sort or xz"   # the first words of bench/run.py's workloads
# What the host was doing, by the sample's thread, symbol and binary; the first match wins.
QEMU_THREAD = re.compile(r"^(qemu|CPU \d|vCPU|call_rcu|worker)")
ACTIVITIES = [
    ("idle", lambda comm, sym, dso: comm == "swapper"),
    ("analysis tool, memory_tracer", lambda comm, sym, dso: not QEMU_THREAD.match(comm)),
    ("kernel: first touches", lambda comm, sym, dso: dso == "[kernel.kallsyms]" and sym.startswith("clear_page")),
    ("kernel: other", lambda comm, sym, dso: dso == "[kernel.kallsyms]"),
    ("generated code", lambda comm, sym, dso: dso in ("[generated code]", "[unknown]")),
    ("GMBEOO plugin", lambda comm, sym, dso: dso.endswith("libgmbeoo.so")),
    ("translating", lambda comm, sym, dso: re.match(
        r"(tcg_|liveness_|la_|reachable_code|init_ts|reset_ts|i386_tr_|gen_|translator_|plugin_gen_|tb_gen_code|"
        r"decode_|disas_|opcode_args|fold_|temp_|reg_|tb_link|tb_page)", sym)),
    ("next block look-up", lambda comm, sym, dso: re.match(
        r"(helper_lookup_tb_ptr|cpu_exec|tb_lookup|tb_htable|tb_tc_cmp|qht_|curr_cflags|cpu_handle)", sym)),
    ("guest TLB, page walks", lambda comm, sym, dso: re.match(
        r"(mmu_|tlb_|victim_tlb|probe_access|address_space_|do_ld|do_st|helper_ld|helper_st|get_page_addr|"
        r"ptw_|x86_cpu_tlb|get_physical|flatview|memory_region_get_ram|qemu_ram_|cpu_physical_memory)", sym)),
    ("other QEMU", lambda comm, sym, dso: True),
]
# perf script -F comm,tid,time,ip,sym,dso: a thread's name may hold spaces; the tid anchors it.
SAMPLE = re.compile(r"^\s*(.+?)\s+\d+\s+([\d.]+):\s+[0-9a-f]+\s+(.*?)\s*\((.*)\)\s*$")


def activity(comm, sym, dso):
    return next(name for name, matches in ACTIVITIES if matches(comm, sym, dso))


def window_profile(data, window):
    """CPU milliseconds per (thread name, symbol, binary) of the samples inside the window."""
    script = subprocess.run(["perf", "script", "-i", data, "-F", "comm,tid,time,ip,sym,dso"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, check=True)
    start, end = window
    ms = collections.Counter()
    for line in script.stdout.splitlines():
        sample = SAMPLE.match(line)
        if sample and start <= float(sample.group(2)) <= end:
            comm, sym, dso = sample.group(1), sample.group(3) or "?", sample.group(4)
            if "/perf-" in dso:     # QEMU's code buffer: perf names it after the process
                sym, dso = "generated code", "[generated code]"
            ms[(comm, sym, dso)] += 1000 / SAMPLES_PER_SECOND
    return ms


def profiled_run(suite, mode, workload, data_dir, scratch):
    data = os.path.join(scratch, "perf.data")
    perf = ["perf", "record", "-q", "-a", "-k", "CLOCK_MONOTONIC", "-F", str(SAMPLES_PER_SECOND), "-e", "cpu-clock",
            "-o", data, "--"]
    values = bench.run_mode(suite, mode, workload, data_dir, prefix=perf)
    if bench.WINDOW not in values:
        raise SystemExit(f"memory_tracer ({mode}) logged no trace window: is it older than bench/profile.py?")
    profile = window_profile(data, values[bench.WINDOW])
    os.unlink(data)
    return values[bench.MS], profile


def by_activity(profile):
    totals = collections.Counter()
    for (comm, sym, dso), ms in profile.items():
        totals[activity(comm, sym, dso)] += ms
    return totals


def table(modes, runs):
    """Median ms of the rounds, activity by activity, and each mode's difference from the first."""
    first = modes[0]
    totals = {m: [by_activity(profile) for _, profile in runs[m]] for m in modes}
    medians = {m: {a: statistics.median(run[a] for run in totals[m]) for a, _ in ACTIVITIES} for m in modes}
    window = {m: statistics.median(ms for ms, _ in runs[m]) for m in modes}
    header = ["ms of CPU in the window", *modes, *[f"{m} - {first}" for m in modes[1:]]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    rows = [("window (wall clock)", window)] + [(a, {m: medians[m][a] for m in modes}) for a, _ in ACTIVITIES
                                                  if a != "idle"]    # an idle CPU is seldom sampled
    for name, value in rows:
        cells = [f"{value[m]:.1f}" for m in modes] + [f"{value[m] - value[first]:+.1f}" for m in modes[1:]]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def symbol_differences(modes, runs):
    """For each mode after the first, the symbols whose mean time in the window changed the most."""
    def mean(mode):
        total = collections.Counter()
        for _, profile in runs[mode]:
            total.update(profile)
        return {key: ms / len(runs[mode]) for key, ms in total.items()}
    base = mean(modes[0])
    lines = []
    for mode in modes[1:]:
        other = mean(mode)
        changes = sorted(((other.get(k, 0) - base.get(k, 0), k) for k in set(base) | set(other)
                          if activity(*k) != "idle"), key=lambda change: -abs(change[0]))
        lines += ["", f"{mode} against {modes[0]}, the largest changes (mean ms of CPU in the window):", ""]
        for change, (comm, sym, dso) in changes[:TOP_SYMBOLS]:
            lines.append(f"    {change:+7.1f}  {sym}  ({os.path.basename(dso)}, {comm}; {activity(comm, sym, dso)})")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("modes", nargs="*", default=DEFAULT_MODES, metavar="MODE",
                        help=f"bench/run.py's modes (default: {', '.join(DEFAULT_MODES)}); the first is the reference")
    parser.add_argument("--suite", choices=["system", "user"], default="system")
    parser.add_argument("--workload", default="sort", help=f"the first word of a bench/run.py workload: {WORKLOADS} "
                                                           "(default sort)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    args = parser.parse_args()
    unknown = [m for m in args.modes if m not in bench.QEMU_MODES]
    if unknown:
        parser.error(f"unknown mode {unknown[0]!r}; expected one of: {', '.join(bench.QEMU_MODES)}")
    if args.rounds < 1:
        parser.error(f"--rounds {args.rounds}: expected at least 1")
    if not shutil.which("perf"):
        raise SystemExit("bench/profile.py needs perf (Debian's linux-perf), run as root")
    with tempfile.TemporaryDirectory() as data_dir, tempfile.TemporaryDirectory() as scratch:
        chosen = [w for w in bench.workloads(args.suite, False, data_dir) if w.name.split()[0] == args.workload]
        if not chosen:
            parser.error(f"--workload {args.workload!r}: expected {WORKLOADS}")
        runs = {m: [] for m in args.modes}
        for round_index in range(args.rounds):
            for mode in bench.round_order(args.modes, round_index):
                print(f"round {round_index + 1}/{args.rounds}: {mode}", file=sys.stderr, flush=True)
                runs[mode].append(profiled_run(args.suite, mode, chosen[0], data_dir, scratch))
    print(f"{chosen[0].name}, {args.suite}: medians of {args.rounds} interleaved rounds under perf "
          f"({SAMPLES_PER_SECOND} samples/s per CPU)\n")
    print("\n".join(table(args.modes, runs) + symbol_differences(args.modes, runs)))


if __name__ == "__main__":
    main()
