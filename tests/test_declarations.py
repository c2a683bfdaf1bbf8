"""Fast tier (no QEMU): what the Python side declares equals what the C side declares, for every
fact both sides need: the plugin's option keys, the tools' environment, the protocol lines, the
marker magic, and the layouts of records, trace-file headers and the shared-memory ring (read off
the C headers by compiling a small program against them)."""
import re
import subprocess
from dataclasses import fields

import pytest

from conftest import REPO
from memtracer import protocol, record
from memtracer.trace import shm_ring, trace_file
from memtracer.layout import MAX_SMP
from memtracer.qemu.machine import VIRTIO_PORT_NAME
from memtracer.run.window import RUN_PLUGIN_KEYS
from memtracer.trace_settings import TraceSettings

PLUGIN = (REPO / "qemu_patches" / "gmbeoo.c").read_text()
READER = (REPO / "analysis_tools" / "gmbe_reader.h").read_text()
RUNNER = (REPO / "to_run_on_guest" / "runner.c").read_text()
GUEST_INIT = (REPO / "to_run_on_guest" / "image" / "init").read_text()

LAYOUT_PROGRAM = r"""
#include <stddef.h>
#include <stdio.h>
#include "gmbe_record.h"
#include "gmbe_ring.h"
#include "gmbe_trace_file.h"
#include "memory_tracer_markers.h"
#define SHOW(name, value) printf("%s %llu\n", name, (unsigned long long)(value))
static void show_bytes(const char *name, const char *bytes)
{
    printf("%s ", name);
    for (int i = 0; i < 8; i++) {
        printf("%02x", (unsigned char)bytes[i]);
    }
    printf("\n");
}
int main(void)
{
    SHOW("record_size", GMBE_RECORD_SIZE);
    SHOW("extended_record_size", GMBE_EXTENDED_RECORD_SIZE);
    SHOW("compact_record_size", GMBE_COMPACT_RECORD_SIZE);
    SHOW("size_shift_mask", GMBE_SIZE_SHIFT_MASK);
    SHOW("sign_extend_bit", GMBE_SIGN_EXTEND_BIT);
    SHOW("big_endian_bit", GMBE_BIG_ENDIAN_BIT);
    SHOW("store_bit", GMBE_STORE_BIT);
    SHOW("cpl_shift", GMBE_CPL_SHIFT);
    SHOW("valid_byte", GMBE_VALID_BYTE);
    SHOW("marker_info", GMBE_MARKER_INFO);
    SHOW("marker_region_begin", GMBE_MARKER_REGION_BEGIN);
    SHOW("marker_region_end", GMBE_MARKER_REGION_END);
    SHOW("marker_progress", GMBE_MARKER_PROGRESS);
    SHOW("marker_instruction_limit", GMBE_MARKER_INSTRUCTION_LIMIT);
    SHOW("trace_header_size", sizeof(struct gmbe_trace_header));
    SHOW("trace_format_version", GMBE_TRACE_FORMAT_VERSION);
    SHOW("trace_record_count_offset", offsetof(struct gmbe_trace_header, record_count));
    SHOW("trace_log_of_tracing_ratio_offset", offsetof(struct gmbe_trace_header, log_of_tracing_ratio));
    SHOW("setting_unknown", GMBE_SETTING_UNKNOWN);
    SHOW("ring_version", GMBE_RING_VERSION);
    SHOW("ring_head_offset", offsetof(struct gmbe_ring_header, head));
    SHOW("ring_tail_offset", offsetof(struct gmbe_ring_header, tail));
    SHOW("ring_attached_offset", offsetof(struct gmbe_ring_header, attached));
    SHOW("ring_abandoned_offset", offsetof(struct gmbe_ring_header, abandoned));
    SHOW("ring_reader_sleeping_offset", offsetof(struct gmbe_ring_header, reader_sleeping));
    printf("ring_env %s\n", GMBE_RING_ENV);
    SHOW("ring_data_offset_offset", offsetof(struct gmbe_ring_header, data_offset));
    SHOW("magic", MEMORY_TRACER_MAGIC);
    show_bytes("trace_magic", GMBE_TRACE_MAGIC);
    show_bytes("ring_magic", GMBE_RING_MAGIC);
    return 0;
}
"""


@pytest.fixture(scope="module")
def c_side(tmp_path_factory):
    folder = tmp_path_factory.mktemp("layouts")
    (folder / "layouts.c").write_text(LAYOUT_PROGRAM)
    subprocess.run(["gcc", "-Wall", "-Werror", f"-I{REPO / 'qemu_patches'}", f"-I{REPO / 'to_run_on_guest'}",
                    "-o", folder / "layouts", folder / "layouts.c"], check=True)
    lines = subprocess.run([folder / "layouts"], stdout=subprocess.PIPE, text=True, check=True).stdout
    values = {}
    for line in lines.splitlines():
        name, _, value = line.partition(" ")
        values[name] = value
    return values


def test_plugin_options_are_the_settings_and_the_runs_own_keys():
    c_keys = re.findall(r'^\s*\{ "(\w+)", OPT_\w+, offsetof', PLUGIN, re.MULTILINE)
    assert len(c_keys) == len(set(c_keys))
    assert set(c_keys) == {f.name for f in fields(TraceSettings)} | set(RUN_PLUGIN_KEYS)


def test_the_plugin_buffers_what_a_run_asks_by_default():
    default = re.search(r"#define DEFAULT_BUFFER_RECORDS (\d+)u", PLUGIN).group(1)
    assert int(default) == TraceSettings().buffer_records


def test_plugin_arguments_name_every_setting_once():
    arguments = TraceSettings(trace_only_CPL3_code_GMBE=True, max_instructions=7).plugin_args()
    assert [a.split("=")[0] for a in arguments] == [f.name for f in fields(TraceSettings)]
    assert "trace_only_CPL3_code_GMBE=on" in arguments and "max_instructions=7" in arguments


def test_tools_read_the_variables_the_run_sets():
    variables = TraceSettings().tool_variables()
    assert set(variables) == {"GMBE_TRACE_ONLY_CPL3", "GMBE_LOG_OF_BLOCK_LEN", "GMBE_LOG_OF_TRACING_RATIO",
                              "GMBE_RECORD_FORMAT"}
    record_tool = (REPO / "analysis_tools" / "record.c").read_text()
    for name in variables:
        assert f'"{name}"' in READER + record_tool, name


def test_protocol_lines_equal_the_c_side():
    for line in (protocol.TOOL_READY, protocol.TOOL_OUTPUT_BEGIN, protocol.TOOL_OUTPUT_END):
        assert f'printf("{line}\\n")' in READER, line
    wrapped = "".join(re.findall(r'"([^"]*)"', RUNNER[RUNNER.index("The workload protocol, played"):]))
    for line in (protocol.WORKLOAD_INFO_BEGIN, protocol.WORKLOAD_INFO_END, protocol.WORKLOAD_READY):
        assert line + "\\n" in wrapped, line
    assert f'send_output("{protocol.WORKLOAD_STOP}\\n")' in RUNNER


def test_port_name_and_smp_limit_equal_the_c_side():
    assert f'#define VIRTIO_PORT_NAME "{VIRTIO_PORT_NAME}"' in RUNNER
    assert VIRTIO_PORT_NAME in GUEST_INIT
    sharing = (REPO / "analysis_tools" / "sharing.c").read_text()
    assert f"#define MAX_VCPUS {MAX_SMP}" in sharing


def test_record_layout_equals_gmbe_record_h(c_side):
    assert int(c_side["record_size"]) == record.RECORD_SIZE == record.RECORD_DTYPE.itemsize
    assert int(c_side["extended_record_size"]) == record.RECORD_FORMATS["extended"] == record.EXTENDED_DTYPE.itemsize
    assert int(c_side["compact_record_size"]) == record.RECORD_FORMATS["compact"] == record.COMPACT_DTYPE.itemsize
    assert int(c_side["size_shift_mask"]) == record.SIZE_SHIFT_MASK
    assert int(c_side["sign_extend_bit"]) == record.SIGN_EXTEND_BIT
    assert int(c_side["big_endian_bit"]) == record.BIG_ENDIAN_BIT
    assert int(c_side["store_bit"]) == record.STORE_BIT
    assert int(c_side["cpl_shift"]) == record.CPL_SHIFT
    assert int(c_side["valid_byte"]) == record.VALID_BYTE
    assert int(c_side["marker_info"]) == record.MARKER_INFO
    assert record.MARKER_KINDS == {int(c_side["marker_region_begin"]): "region_begin",
                                   int(c_side["marker_region_end"]): "region_end",
                                   int(c_side["marker_progress"]): "marker",
                                   int(c_side["marker_instruction_limit"]): "instruction_limit"}


def test_trace_file_and_ring_headers_equal_the_c_side(c_side):
    assert int(c_side["trace_header_size"]) == trace_file.HEADER.size
    assert c_side["trace_magic"] == trace_file.MAGIC.hex()
    assert int(c_side["trace_format_version"]) == trace_file.FORMAT_VERSION
    assert int(c_side["setting_unknown"]) == trace_file.UNKNOWN
    # The struct's fields in order: magic, 8 uint32 (the 8th reserved), then the record count.
    assert int(c_side["trace_record_count_offset"]) == 8 + 8 * 4
    assert int(c_side["trace_log_of_tracing_ratio_offset"]) == 8 + 6 * 4
    assert c_side["ring_magic"] == shm_ring.MAGIC.hex()
    assert int(c_side["ring_version"]) == shm_ring.VERSION
    assert int(c_side["ring_head_offset"]) == shm_ring.HEAD_OFFSET
    assert int(c_side["ring_tail_offset"]) == shm_ring.TAIL_OFFSET
    assert int(c_side["ring_attached_offset"]) == shm_ring.ATTACHED_OFFSET
    assert int(c_side["ring_abandoned_offset"]) == shm_ring.ABANDONED_OFFSET
    assert int(c_side["ring_reader_sleeping_offset"]) == shm_ring.READER_SLEEPING_OFFSET
    assert c_side["ring_env"] == shm_ring.RING_ENV
    assert int(c_side["ring_data_offset_offset"]) == shm_ring.PREFIX.size - 8


def test_marker_magic_is_memtrace(c_side):
    assert int(c_side["magic"]).to_bytes(8, "little") == b"MEMTRACE"
    assert "MEMORY_TRACER_MAGIC" in PLUGIN and "0x45434152544d454d" not in PLUGIN.lower()
