#!/usr/bin/env python3
"""Host instructions per guest memory access, counted, not timed: qemu-x86_64 runs the traced
qemu-x86_64 (QEMU in QEMU) under QEMU's own insn plugin (tests/tcg/plugins/insn.c, built here from
Debian's QEMU source, never committed), which counts every instruction that the inner QEMU
executes, its translated code, its translator, the plugin and the hand-over alike. The same run
gives the same count to within 0.01%, so this tells apart costs of a few percent that a wall clock
on a shared machine does not; it counts instructions, not the cycles they take (a cache miss or a
pipe's wait costs no instruction). Modes are bench/handover.py's, plugin option by option, and
Debian's own qemu-x86_64 untraced beside the patched one.

    python3 bench/instructions.py [--rounds N]"""
import argparse
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


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    text = "\n".join(["# Host instructions per access", "", *measure(args.rounds)]) + "\n"
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "instructions.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
