"""End to end in full-system mode: the real qemu-system-x86_64 on the built-in guest image, its
snapshot, the guest runner, the GMBEOO plugin, real FIFOs and analysis tools."""
import json
import mmap
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import (GUEST_IMAGE, PROGRAMS, QEMU_DIR, REPO, SNAPSHOT, TOOLS, address_range, analysis_counts,
                      buffer_range, code_buffer_resident_bytes, executable, image_fingerprint, mappings_of,
                      parse_sections, processes_mentioning, promised_counts, system, trace_info,
                      trace_into_fifo_reader)
from memtracer import protocol, record

COUNT = TOOLS / "count"
KNOWN = PROGRAMS / "known_accesses"
MEM_LOOP = PROGRAMS / "mem_loop"
PROTOCOL = "--dont_add_communications_with_host_to_workload"
# A retried instruction (after a page fault) may be seen twice; nothing else may differ.
PAGE_FAULT_SLACK = 2


def traced(tracer, *args):
    run = tracer(*system(*args, "--analysis_tool_path", COUNT, "--print_trace_info"))
    assert run.returncode == 0, run.stderr
    return run, analysis_counts(run.stdout), trace_info(run.stdout)


def assert_known_accesses_seen(run, counts):
    promised = promised_counts(run.stdout)
    assert len(promised) == 13
    for kind, n in promised.items():
        assert n <= counts[f"range_{kind}"] <= n + PAGE_FAULT_SLACK, kind


def test_every_access_to_the_known_buffer_is_seen_with_kernel_and_user_cpl(tracer):
    run, counts, info = traced(tracer, "--workload_path_on_host", KNOWN, PROTOCOL)
    assert_known_accesses_seen(run, counts)
    # The window holds the guest kernel's work (the runner's read of Enter, the exit) too.
    assert counts["cpl_0"] > 0 and counts["cpl_3"] > 0
    assert counts["cpl_0"] + counts["cpl_3"] == counts["num_of_records"]
    assert info["num_of_events_written_to_trace_buf"] == counts["num_of_records"]
    assert info["num_of_GMBE_events_since_enabling_GMBEOO"] == counts["num_of_records"]
    assert "num_of_dropped_events" not in info and "num_of_missing_events" not in info


def test_cpl3_filter_leaves_no_kernel_record(tracer):
    run, counts, info = traced(tracer, "--workload_path_on_host", KNOWN, PROTOCOL, "--trace_only_CPL3_code_GMBE")
    assert_known_accesses_seen(run, counts)
    assert counts["cpl_0"] == counts["cpl_1"] == counts["cpl_2"] == 0
    assert counts["cpl_3"] == counts["num_of_records"] == info["num_of_GMBE_events_since_enabling_GMBEOO"]
def test_records_through_trace_fifo_path(tracer, tmp_path):
    run, reader = trace_into_fifo_reader(tracer, tmp_path, system("--workload_path_on_host", KNOWN, PROTOCOL))
    assert run.returncode == 0, run.stderr
    assert "analysis output" not in parse_sections(run.stdout)
    records = record.records_from_bytes(reader.data)
    assert len(reader.data) == len(records) * record.RECORD_SIZE
    assert len(records) == trace_info(run.stdout)["num_of_events_written_to_trace_buf"]
    assert (records["valid"] == record.VALID_BYTE).all() and (records["vcpu"] == 0).all()
    start, end = buffer_range(run.stdout)
    inside = records[(records["virt_addr"] >= start) & (records["virt_addr"] < end)]
    assert (record.cpls(inside) == 3).all()
    promised = promised_counts(run.stdout)
    assert sum(promised.values()) <= len(inside) <= sum(promised.values()) + PAGE_FAULT_SLACK
    # Kernel addresses are in the upper half, user ones in the lower.
    kernel = records[record.cpls(records) == 0]
    assert len(kernel) > 0 and (kernel["virt_addr"] >= 1 << 63).mean() > 0.5


def test_wrapped_workload_from_host_with_arguments(tracer):
    kib = 256
    run, counts, info = traced(tracer, "--workload_path_on_host", MEM_LOOP, "--workload_args", f"{kib} 1")
    assert "workload info" not in parse_sections(run.stdout)   # a wrapped workload has empty info
    longs = kib * 1024 // 8
    assert counts["stores"] >= longs and counts["loads"] >= longs * 15 // 8


def test_workload_path_on_guest(tracer):
    run = tracer(*system("--workload_path_on_guest", "/bin/busybox", "--workload_args", "true",
                         "--analysis_tool_path", COUNT))
    assert run.returncode == 0, run.stderr
    assert analysis_counts(run.stdout)["cpl_3"] > 1000


def test_the_guest_runs_no_ipv6(tracer, tmp_path):
    """With IPv6, every resume of the snapshot went on with the guest's address set-up (duplicate
    address detection, router solicitations, QEMU's router answering): thousands of blocks of kernel
    code inside the trace window of some runs and not others. The built-in guest boots without it."""
    script = executable(tmp_path / "ipv6.sh",
                        "#!/bin/sh\n"
                        f"echo '{protocol.WORKLOAD_INFO_BEGIN}'\n"
                        "if [ -e /proc/net/if_inet6 ]; then echo ipv6; else echo no_ipv6; fi\n"
                        f"echo '{protocol.WORKLOAD_INFO_END}'\n"
                        f"echo '{protocol.WORKLOAD_READY}'\n"
                        "read line\n"
                        f"echo '{protocol.WORKLOAD_STOP}'\n")
    run = tracer(*system("--workload_path_on_host", script, PROTOCOL, "--dont_trace"))
    assert run.returncode == 0, run.stderr
    assert parse_sections(run.stdout)["workload info"].strip() == "no_ipv6"


def test_only_a_wrapped_workload_has_a_process_run_before_it(tracer, tmp_path):
    """A wrapped workload's window opens before the runner starts it: the runner first runs /bin/true
    the same way, so that QEMU has translated the guest kernel's code for starting and ending a
    process before the window (some 10,000 blocks, a third of a mem_loop window). A workload that
    speaks the protocol itself is started before its window: nothing is run before it."""
    wrapped = tracer(*system("--workload_path_on_host", MEM_LOOP, "--workload_args", "64 1", "--dont_trace", "-v"))
    assert wrapped.returncode == 0, wrapped.stderr
    assert "warm-up: /bin/true exited with 0 " in wrapped.stderr
    script = executable(tmp_path / "own_protocol.sh",
                        "#!/bin/sh\n"
                        f"echo '{protocol.WORKLOAD_INFO_BEGIN}'\n"
                        f"echo '{protocol.WORKLOAD_INFO_END}'\n"
                        f"echo '{protocol.WORKLOAD_READY}'\n"
                        "read line\n"
                        f"echo '{protocol.WORKLOAD_STOP}'\n")
    own = tracer(*system("--workload_path_on_host", script, PROTOCOL, "--dont_trace", "-v"))
    assert own.returncode == 0, own.stderr
    assert "warm-up" not in own.stderr


def test_missing_workload_on_guest_is_one_clear_line(tracer):
    run = tracer(*system("--workload_path_on_guest", "/no/such/program", "--dont_trace"))
    assert run.returncode == 1
    assert run.stderr.strip() == "cannot run /no/such/program in the guest: No such file or directory"

def test_ten_runs_in_a_row_leave_the_image_unchanged(tracer, private_tmp):
    before = image_fingerprint(GUEST_IMAGE)
    for i in range(10):
        run, counts, _ = traced(tracer, "--workload_path_on_host", KNOWN, PROTOCOL)
        assert_known_accesses_seen(run, counts)
    assert image_fingerprint(GUEST_IMAGE) == before
    assert processes_mentioning("qemu-system-x86_64") == []


def test_a_second_run_on_the_same_image_is_refused_or_private(tracer, private_tmp):
    """QEMU's image lock turns a concurrent run away with advice; --run_on_private_copy runs it."""
    first = subprocess.Popen([sys.executable, REPO / "memory_tracer.py",
                              *map(str, system("--workload_path_on_host", PROGRAMS / "spin_forever",
                                               "--timeout", 20, "--dont_trace"))],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=dict(os.environ, TMPDIR=str(private_tmp)))
    try:
        while not processes_mentioning("qemu-system-x86_64"):
            assert first.poll() is None
        refused = tracer(*system("--workload_path_on_guest", "/bin/true", "--dont_trace"))
        assert refused.returncode == 1
        assert "is in use by another QEMU" in refused.stderr and "--run_on_private_copy" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
        private = tracer(*system("--workload_path_on_host", KNOWN, PROTOCOL, "--run_on_private_copy",
                                 "--analysis_tool_path", COUNT))
        assert private.returncode == 0, private.stderr
        assert analysis_counts(private.stdout)["range_store_8_unsigned"] >= 111
    finally:
        first.terminate()
        first.communicate(timeout=60)


def test_monitor_is_handed_over_with_dont_exit_qemu_when_done(tracer):
    run = tracer(*system("--workload_path_on_guest", "/bin/true", "--dont_trace", "--dont_exit_qemu_when_done"),
                 input="info status\nquit\n")
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("tracing_duration_in_milliseconds: ")
    assert "VM status: running" in run.stdout
    assert processes_mentioning("qemu-system-x86_64") == []


@pytest.mark.parametrize("args,message", [
    (["--guest_RAM_in_MBs", "1024"],
     "guest_RAM_in_MBs must be the RAM size the snapshot was saved with, 2560 (see {sidecar}), but 1024 isn't."),
])
def test_ram_size_must_match_the_snapshot(tracer, args, message):
    run = tracer(*system("--workload_path_on_guest", "/bin/true", "--dont_trace", *args))
    assert run.returncode == 1
    sidecar = str(GUEST_IMAGE) + ".memory_tracer.json"
    assert run.stderr.strip() == message.format(sidecar=sidecar)


def test_wrong_snapshot_name_is_named(tracer):
    run = tracer(GUEST_IMAGE, "no_such_snapshot", QEMU_DIR, "--workload_path_on_guest", "/bin/true", "--dont_trace")
    assert run.returncode == 1
    assert run.stderr.strip() == (f"snapshot_name must be a snapshot (with VM state) of {GUEST_IMAGE}, but "
                                  f"no_such_snapshot isn't (its snapshots: {SNAPSHOT}).")


def test_image_that_is_not_qcow2_is_refused(tracer, tmp_path):
    raw = tmp_path / "disk.raw"
    raw.write_bytes(b"\0" * 65536)
    run = tracer(raw, SNAPSHOT, QEMU_DIR, "--workload_path_on_guest", "/bin/true", "--dont_trace")
    assert run.returncode == 1
    assert run.stderr.strip() == f"guest_image_path must be a qcow2 image, but {raw} is raw."


@pytest.mark.parametrize("change,args", [({"virtio_serial": False}, []), ({"smp": 2}, ["--smp", "2"])])
def test_configuration_other_than_the_snapshots_is_explained(tracer, tmp_path, change, args):
    """loadvm needs savevm's devices and -smp: a description that disagrees gets advice, not a trace."""
    image = tmp_path / "copy.qcow2"
    shutil.copyfile(GUEST_IMAGE, image)
    description = json.loads(Path(str(GUEST_IMAGE) + ".memory_tracer.json").read_text())
    Path(str(image) + ".memory_tracer.json").write_text(json.dumps({**description, **change}))
    run = tracer(image, SNAPSHOT, QEMU_DIR, "--workload_path_on_guest", "/bin/true", "--dont_trace", *args)
    assert run.returncode == 1
    assert run.stderr.startswith(f"the snapshot {SNAPSHOT!r} was saved with another QEMU configuration "
                                 "(machine type, devices or -smp)")
    assert "python3 build.py --remake_guest_image" in run.stderr and len(run.stderr.splitlines()) == 1


def test_smp_other_than_the_images_description_is_refused_before_qemu_starts(tracer, tmp_path):
    image = tmp_path / "copy.qcow2"
    shutil.copyfile(GUEST_IMAGE, image)
    shutil.copyfile(str(GUEST_IMAGE) + ".memory_tracer.json", str(image) + ".memory_tracer.json")
    run = tracer(image, SNAPSHOT, QEMU_DIR, "--workload_path_on_guest", "/bin/true", "--dont_trace", "--smp", "3")
    assert run.returncode == 1
    assert run.stderr.strip() == (f"smp must be the vCPU count the snapshot was saved with, 1 (see {image}"
                                  f".memory_tracer.json), but 3 isn't; save a snapshot for 3 vCPUs with "
                                  f"`python3 -m memtracer.snapshot {image} --smp 3`.")


@pytest.mark.qemu
def test_the_code_buffer_is_populated_ahead_of_the_translator():
    """qemu-system-x86_64 populates its code buffer well ahead of what it has translated, so that
    the guest's run does not stop where the translator reaches a fresh huge page: the firmware with
    nothing to boot translates well under 2 MiB of code, and some 32 MiB are resident."""
    firmware = subprocess.Popen([QEMU_DIR / "qemu-system-x86_64", "-display", "none", "-nodefaults", "-m", "64"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while code_buffer_resident_bytes(firmware.pid) < 16 << 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert code_buffer_resident_bytes(firmware.pid) >= 16 << 20
    finally:
        firmware.kill()
        firmware.wait()


def qemu_running_in(directory):
    """The PID of the qemu-system-x86_64 whose working directory lies in directory (a run's own
    QEMU runs in its private directory), or None."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if (os.readlink(f"/proc/{pid}/cwd").startswith(str(directory))
                    and os.readlink(f"/proc/{pid}/exe").endswith("qemu-system-x86_64")):
                return pid
        except OSError:
            pass
    return None


def guest_ram_of(pid):
    """The guest's RAM in QEMU's address space, its largest mapping: (start, end, its VmFlags)."""
    ranges = [(*address_range(fields), flags) for fields, _, flags in mappings_of(pid)]
    return max(ranges, key=lambda r: r[1] - r[0])


def mapped_pages(pid, start, end):
    """How many pages of [start, end) the process has mapped (present, /proc/PID/pagemap)."""
    with open(f"/proc/{pid}/pagemap", "rb") as pagemap:
        pagemap.seek(start // mmap.PAGESIZE * 8)
        entries = pagemap.read((end - start) // mmap.PAGESIZE * 8)
    return sum(entry >> 63 for (entry,) in struct.iter_unpack("<Q", entries))


@pytest.mark.qemu
def test_the_snapshots_zero_pages_stay_unmapped_and_fresh_guest_ram_takes_small_pages(private_tmp):
    """Loading the snapshot leaves the pages it holds as zero unmapped where nothing has touched
    them (a read would map the kernel's huge zero page over each 2 MiB, all 2,560 MiB of the
    guest's RAM), and then asks for small pages for the guest's RAM ("nh": no huge pages), so
    that the guest's first store into fresh RAM is not a huge page's fault."""
    run = subprocess.Popen([sys.executable, REPO / "memory_tracer.py",
                            *system("--workload_path_on_guest", "/bin/sleep", "--workload_args", "4", "--dont_trace")],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    last_seen = None     # (VmFlags, pages mapped, pages) of the guest's RAM, till QEMU ends
    try:
        while run.poll() is None:
            qemu = qemu_running_in(private_tmp)
            try:
                if qemu is not None:
                    start, end, flags = guest_ram_of(qemu)
                    last_seen = flags, mapped_pages(qemu, start, end), (end - start) // mmap.PAGESIZE
            except (OSError, ValueError):
                pass       # QEMU gone meanwhile (its smaps gone, or empty)
            time.sleep(0.2)
    finally:
        _, stderr = run.communicate(timeout=120)
    assert run.returncode == 0, stderr
    flags, mapped, pages = last_seen
    assert "nh" in flags
    assert mapped < pages // 4
