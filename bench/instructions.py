#!/usr/bin/env python3
"""Host instructions per guest memory access, counted, not timed: qemu-x86_64 runs the traced
qemu-x86_64 (QEMU in QEMU) under QEMU's own insn plugin (tests/tcg/plugins/insn.c, built here from
Debian's QEMU source, never committed), which counts every instruction that the inner QEMU
executes, its translated code, its translator, the plugin and the hand-over alike. The same run
gives the same count to within 0.01%, so this tells apart costs of a few percent that a wall clock
on a shared machine does not; it counts instructions, not the cycles they take (a cache miss or a
pipe's wait costs no instruction). Modes are bench/handover.py's, plugin option by option, and
Debian's own qemu-x86_64 untraced beside the patched one.

With --by-symbol MODE, where those instructions go instead: the outer QEMU runs
bench/block_instructions.c, which counts them block by block, and a block is put with the function
of the inner QEMU that it lies in (its own symbols), with the library it lies in (with the nearest
symbol where the library has its symbol table, as the plugin has), or with the generated code (the
inner QEMU's code buffer); the table gives untraced's and MODE's, biggest differences first.

    python3 bench/instructions.py [--rounds N]
    python3 bench/instructions.py --by-symbol MODE [--workload gzip|xz|mem_loop]"""
import argparse
import bisect
import collections
import functools
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from memtracer.environment import use_project_environment  # noqa: E402

use_project_environment()
sys.path.insert(0, str(REPO / "bench"))
import contrib_plugins  # noqa: E402
import handover  # noqa: E402
from memtracer.layout import DEFAULT_QEMU_DIR, GUEST_PROGRAMS_DIR  # noqa: E402

OUT = REPO / "bench" / "out"
# Debian's own qemu-x86_64, untraced: the patched QEMU's instructions against it, which a wall
# clock on this machine cannot tell apart from its noise.
DEBIAN = "untraced, Debian's QEMU"
MODES = ["untraced", DEBIAN, "ring, in place", "sampled 1/1024, all written", "sampled 1/1024, counting",
         "1/1024 in 16s, counting"]


def workloads(data_dir):
    """Short runs (the outer QEMU makes them some 20 times slower): name -> command line."""
    text = subprocess.run([GUEST_PROGRAMS_DIR / "make_text", "1"], stdout=subprocess.PIPE, check=True).stdout
    (data_dir / "1MiB.txt").write_bytes(text)
    (data_dir / "128KiB.txt").write_bytes(text[:128 << 10])
    return {"mem_loop 8 MiB x2": [GUEST_PROGRAMS_DIR / "mem_loop", "8192", "2"],
            "gzip -6 (1 MiB)": ["/usr/bin/gzip", "-6", "-c", str(data_dir / "1MiB.txt")],
            "xz -6 (128 KiB)": ["/usr/bin/xz", "-6", "-c", str(data_dir / "128KiB.txt")]}


def counted_run(mode, program, work_dir):
    """(host instructions the inner QEMU executed, its plugin's counters) of one run."""
    log = work_dir / "insn.log"
    outer = [DEFAULT_QEMU_DIR / "qemu-x86_64", "-plugin", f"{contrib_plugins.INSN_PLUGIN},inline=on",
             "-d", "plugin", "-D", log]
    if mode == DEBIAN:
        subprocess.run([*outer, shutil.which("qemu-x86_64"), *program], stdout=subprocess.DEVNULL, check=True)
        counters = {}
    else:
        _, counters = handover.run_mode(mode, program, work_dir, wrapper=outer)
    total = next(int(line.split()[-1]) for line in log.read_text().splitlines() if line.startswith("total insns"))
    log.unlink()
    return total, counters


def measure(rounds):
    """The section's markdown lines."""
    contrib_plugins.build("insn.c", contrib_plugins.INSN_PLUGIN)
    lines = [f"Host instructions that qemu-x86_64 executes, counted by QEMU's insn plugin in an outer "
             f"qemu-x86_64 ({rounds} rounds; bench/instructions.py). Extra per access: over untraced, per "
             "guest memory access of the run; it includes what translating costs more, which these short "
             "runs spread over fewer accesses than long ones do. Spread: (max - min) / median.", "",
             "| workload | mode | G instructions | / untraced | extra per access | spread |",
             "|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory(prefix="memtracer-bench-") as tmp:
        tmp = Path(tmp)
        for name, program in workloads(tmp).items():
            counts = {mode: [] for mode in MODES}
            accesses = 0
            for _ in range(rounds):
                for mode in MODES:
                    total, counters = counted_run(mode, program, tmp)
                    counts[mode].append(total)
                    accesses = counters.get("num_of_GMBE_events_since_enabling_GMBEOO", accesses)
            untraced = statistics.median(counts["untraced"])
            for mode, values in counts.items():
                mid = statistics.median(values)
                spread = (max(values) - min(values)) / mid
                lines.append(f"| {name} | {mode} | {mid / 1e9:.3f} | {mid / untraced:.3f}x | "
                             f"{(mid - untraced) / accesses:.2f} | {spread:.4%} |")
            print(f"counted: {name}", file=sys.stderr)
    return lines


# --by-symbol: where the inner QEMU's instructions go.
GENERATED_CODE = ("generated code", "")
TOP_SYMBOLS = 25


@functools.lru_cache(maxsize=None)
def symbol_table(path):
    """(address, name) of the functions in an ELF's own symbol table, sorted; none if stripped."""
    listing = subprocess.run(["nm", "--defined-only", path], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True).stdout
    return sorted((int(fields[0], 16), fields[2]) for fields in map(str.split, listing.splitlines())
                  if len(fields) == 3 and fields[1] in "tTwW")


def mappings(maps_file):
    """(start, end, file offset, path or '') of each mapping, sorted."""
    rows = []
    for line in Path(maps_file).read_text().splitlines():
        fields = line.split()
        start, end = (int(x, 16) for x in fields[0].split("-"))
        rows.append((start, end, int(fields[2], 16), fields[5] if len(fields) > 5 else ""))
    return sorted(rows)


def where(address, symbol, maps, starts):
    """(binary, function) of a block: its symbol where the guest's ELF named it; else by the
    mapping it lies in (a library's nearest symbol below it: text is mapped at its file offset).
    starts: the mappings' start addresses, for the search."""
    i = bisect.bisect_right(starts, address) - 1
    start, end, offset, path = maps[i] if i >= 0 and address < maps[i][1] else (0, 0, 0, "")
    if not path.startswith("/"):
        return GENERATED_CODE
    binary = Path(path).name
    if symbol != "?":
        return binary, symbol
    table = symbol_table(path)
    j = bisect.bisect_right(table, (address - start + offset, "\uffff")) - 1
    return binary, table[j][1] if j >= 0 else ""


def profiled_run(mode, program, work_dir):
    """Instructions that the inner QEMU executed in one run of mode, by (binary, function)."""
    blocks = work_dir / "blocks.txt"
    outer = [DEFAULT_QEMU_DIR / "qemu-x86_64", "-plugin", f"{contrib_plugins.BLOCK_PLUGIN},out={blocks}"]
    handover.run_mode(mode, program, work_dir, wrapper=outer)
    maps = mappings(f"{blocks}.maps")
    starts = [m[0] for m in maps]
    total = collections.Counter()
    for line in blocks.read_text().splitlines():
        address, symbol, count = line.split()
        total[where(int(address, 16), symbol, maps, starts)] += int(count)
    return total


def by_symbol(mode, workload):
    """The section's markdown lines: untraced's and mode's instructions, by binary and function."""
    contrib_plugins.build(REPO / "bench" / "block_instructions.c", contrib_plugins.BLOCK_PLUGIN)
    with tempfile.TemporaryDirectory(prefix="memtracer-bench-") as tmp:
        tmp = Path(tmp)
        name, program = next((n, p) for n, p in workloads(tmp).items() if n.split()[0] == workload)
        runs = {}
        for m in ("untraced", mode):
            work_dir = tmp / f"run{len(runs)}"
            work_dir.mkdir()
            runs[m] = profiled_run(m, program, work_dir)
    base, other = runs["untraced"], runs[mode]
    lines = [f"{name}: host instructions of the inner qemu-x86_64, untraced and {mode} "
             f"(M; bench/instructions.py --by-symbol).", "",
             f"| binary | function | untraced | {mode} | difference |", "|---|---|---|---|---|",
             f"| all | | {sum(base.values()) / 1e6:.1f} | {sum(other.values()) / 1e6:.1f} | "
             f"{(sum(other.values()) - sum(base.values())) / 1e6:+.1f} |"]
    binaries = collections.Counter(), collections.Counter()
    for totals, counter in zip((base, other), binaries):
        for (binary, _), count in totals.items():
            counter[binary] += count
    for binary in sorted(set(binaries[0]) | set(binaries[1]), key=lambda b: -abs(binaries[1][b] - binaries[0][b])):
        if binaries[0][binary] != binaries[1][binary]:
            lines.append(f"| {binary} | (all) | {binaries[0][binary] / 1e6:.1f} | {binaries[1][binary] / 1e6:.1f} | "
                         f"{(binaries[1][binary] - binaries[0][binary]) / 1e6:+.1f} |")
    keys = sorted(set(base) | set(other), key=lambda k: -abs(other[k] - base[k]))[:TOP_SYMBOLS]
    for binary, function in keys:
        b, o = base[(binary, function)], other[(binary, function)]
        lines.append(f"| {binary} | {function} | {b / 1e6:.1f} | {o / 1e6:.1f} | {(o - b) / 1e6:+.1f} |")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--by-symbol", metavar="MODE", choices=[m for m in MODES if m != DEBIAN],
                        help="where MODE's instructions go, against untraced's")
    parser.add_argument("--workload", default="gzip", choices=["mem_loop", "gzip", "xz"])
    args = parser.parse_args()
    if args.by_symbol:
        print("\n".join(by_symbol(args.by_symbol, args.workload)))
        return
    text = "\n".join(["# Host instructions per access", "", *measure(args.rounds)]) + "\n"
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "instructions.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
