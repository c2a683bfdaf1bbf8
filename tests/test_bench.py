"""bench/instructions.py --by-symbol: bench/block_instructions.c counts the instructions of each
block that a QEMU under QEMU executes, and the bench puts each block with the inner QEMU's function,
a library or the generated code. The counts must add up to what QEMU's own insn plugin counts for
the same run, and land where they belong."""
import sys

import pytest

from conftest import PROGRAMS, REPO

sys.path.insert(0, str(REPO / "bench"))
import contrib_plugins  # noqa: E402
import instructions  # noqa: E402


@pytest.mark.qemu
def test_block_counts_add_up_to_the_insn_plugins_count_and_go_to_functions(tmp_path):
    contrib_plugins.build("insn.c", contrib_plugins.INSN_PLUGIN)
    contrib_plugins.build(REPO / "bench" / "block_instructions.c", contrib_plugins.BLOCK_PLUGIN)
    program = [PROGRAMS / "mem_loop", "8192", "2"]
    total, _ = instructions.counted_run("untraced", program, tmp_path)
    (tmp_path / "blocks").mkdir()
    by_function = instructions.profiled_run("untraced", program, tmp_path / "blocks")
    assert abs(sum(by_function.values()) - total) <= total // 1000      # runs repeat within 0.01%
    # mem_loop's work runs as the inner QEMU's generated code; translating it, in tb_gen_code & co.
    assert by_function[instructions.GENERATED_CODE] > total // 4
    assert by_function[("qemu-x86_64", "tb_gen_code")] > 0
    assert sum(n for (binary, _), n in by_function.items() if binary.startswith("libc.so")) > 0
