"""Plugins for the bench, built against the plugin header of the Debian source that build.py
unpacked: QEMU's own test plugins (tests/tcg/plugins/, never committed), `mem`, an anchor to compare
the tracer with, `bb`, whose inline counters per block are the least that instrumenting QEMU's
blocks costs (an anchor for sampled traces, which count the accesses of every block), and `insn`,
which counts the instructions that a QEMU under it executes (bench/instructions.py); and
bench/block_instructions.c, which counts them block by block (bench/instructions.py --by-symbol)."""
import json
import subprocess
from pathlib import Path

from memtracer.layout import BUILD_DIR, DEFAULT_QEMU_DIR

MEM_PLUGIN = BUILD_DIR / "bench" / "libmem.so"
BB_PLUGIN = BUILD_DIR / "bench" / "libbb.so"
INSN_PLUGIN = BUILD_DIR / "bench" / "libinsn.so"
BLOCK_PLUGIN = BUILD_DIR / "bench" / "libblock_instructions.so"


def build(source, destination):
    """source, a file of tests/tcg/plugins/ of the patched QEMU's source tree or a path of its own,
    as destination."""
    versions = json.loads((DEFAULT_QEMU_DIR / "VERSION.json").read_text())
    tree = BUILD_DIR / "qemu-src" / versions["qemu_source"]
    destination.parent.mkdir(parents=True, exist_ok=True)
    glib = subprocess.run(["pkg-config", "--cflags", "glib-2.0"], stdout=subprocess.PIPE, text=True).stdout.split()
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", f"-I{tree / 'include' / 'qemu'}", *glib, "-o", destination,
                    tree / "tests" / "tcg" / "plugins" / Path(source)], check=True)
