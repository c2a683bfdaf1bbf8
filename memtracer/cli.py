"""memory_tracer.py's command line: the original memory_tracer.py's interface, kept as it was, plus the extensions."""
import argparse
import errno
import logging
import os
import shlex
import sys
import tempfile
import traceback
import warnings

from .echo import say
from .errors import BadInputError, Interrupted, MemoryTracerError
from .interrupts import ending_signals_unwind
from .layout import DEFAULT_GUEST_IMAGE, DEFAULT_GUEST_RAM_MB, DEFAULT_QEMU_DIR, MAX_SMP, QemuDir, builtin_guest_image
from .run.host import HostRun
from .run.report import format_report
from .run.system import GuestTarget, SystemRun
from .run.window import RunRequest
from .trace.fifo import is_fifo
from .trace_settings import TraceSettings, add_setting_arguments

EXIT_ERROR = 1
EXIT_WORKLOAD_FAILED = 3
EXIT_INTERRUPTED = 130
# Errors of the machine, not of memory_tracer: one line that says what to do, not "internal error".
UNWRITABLE = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS)

DESCRIPTION = """\
Run a workload on the QEMU guest while writing optimized GMBE trace records to a FIFO.

(memory_tracer.py assumes you have already run build.py successfully.)

GMBE is short for guest_mem_before_exec: every memory access the guest makes. QEMU_with_GMBEOO
is QEMU (>= 10) with the GMBEOO TCG plugin, which writes one trace record per access (build.py's
QEMU is patched so that its generated code writes the records itself, see qemu_patches/):

struct GMBEOO_TraceRecord {
    uint8_t size_shift : 3; /* interpreted as "1 << size_shift" bytes */
    bool    sign_extend: 1; /* whether it is a sign-extended operation */
    uint8_t endianness : 1; /* 0: little, 1: big */
    bool    store      : 1; /* whether it is a store operation */
    uint8_t cpl        : 2;
    uint16_t vcpu_index;    /* zero in the original; tools may ignore bytes 1-7 */
    uint64_t unused2   : 40;
    uint64_t virt_addr : 64;
};

A record whose size_shift is 7 is not an access but a marker from guest code (see
to_run_on_guest/memory_tracer_markers.h and qemu_patches/gmbe_record.h); skip it if you do not
need it. --record_format selects the opt-in 32-byte (physical address, PC) or 8-byte records.

memory_tracer.py also prints the workload info (in case it isn't the empty string), and the
tracing duration in milliseconds. In case --analysis_tool_path is specified, memory_tracer.py also
prints the output of the analysis tool.

If --analysis_tool_path is specified, the provided analysis tool must do the following:
1. Receive in argv[1] the path of the trace FIFO, but not open it for reading yet.
2. Register a handler for the signal SIGUSR1. The handler must:
    a. Print "-----begin analysis output-----".
    b. Print the output of the analysis tool.
    c. Print "-----end analysis output-----".
3. Print "Ready to analyze" when you wish the tracing to start.
4. Open the trace FIFO for read, and read trace records from it as fast as possible.
SIGUSR1 is sent after the workload is done and every record has been written to the FIFO.

The workload runs in its own directory (in the guest, natively with --dont_use_qemu, and in
--user_mode), so a run script finds the files beside it. memory_tracer.py exits 0 when its report is
complete, whatever the workload's own exit code (that goes to stderr; see --strict_exit_status),
1 when the run failed, and 130 when interrupted.

With --user_mode, the workload runs under qemu-x86_64 (with the GMBEOO plugin) on this host: no
guest image is needed and the positional arguments may be left out."""

TIMEOUT_HELP = ("If specified, the workload would be stopped when the specified timeout elapses "
                "(the records up to that moment are delivered).")


def build_parser():
    parser = argparse.ArgumentParser(prog="memory_tracer.py", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("guest_image_path", nargs="?",
                        help="The path of the qcow2 file which is the image of the guest.")
    parser.add_argument("snapshot_name", nargs="?",
                        help="The name of the snapshot saved by the monitor command `savevm`, which "
                             "was specially constructed for running a workload with GMBE tracing.")
    parser.add_argument("qemu_with_GMBEOO_path", nargs="?",
                        help="The path of qemu_with_GMBEOO (the directory build.py lays out).")

    workload = parser.add_mutually_exclusive_group(required=True)
    workload.add_argument("--workload_path_on_guest", help="The path of the workload on the guest.")
    workload.add_argument("--workload_path_on_host",
                          help="The path of the workload on the host. The file in that path would be "
                               "sent to the guest to run as the workload (in --user_mode, run under "
                               "qemu-x86_64).")

    consumer = parser.add_mutually_exclusive_group(required=True)
    consumer.add_argument("--analysis_tool_path",
                          help="Path of an analysis tool that would start executing before the tracing starts.")
    consumer.add_argument("--trace_fifo_path",
                          help="Path of the FIFO into which trace records will be written. Its buffer "
                               "is raised to /proc/sys/fs/pipe-max-size while the run holds it open.")
    consumer.add_argument("--dont_trace", action="store_true",
                          help="Run without tracing, to compare the speed of QEMU with and without tracing.")
    consumer.add_argument("--trace_files_per_vcpu", metavar="DIR",
                          help="(extension) Write the records into one trace file per vCPU, DIR/vcpuN.gmbe "
                               "instead of a FIFO; every analysis tool reads them "
                               "afterwards: `TOOL DIR/vcpu0.gmbe`.")
    consumer.add_argument("--dont_use_qemu", action="store_true",
                          help="Run the workload natively on the host, in its own directory. Pass dummy "
                               "strings as the positional arguments.")

    add_setting_arguments(parser, original=True)

    ending = parser.add_mutually_exclusive_group()
    ending.add_argument("--timeout", type=float, help=TIMEOUT_HELP)
    ending.add_argument("--dont_add_communications_with_host_to_workload", action="store_true",
                        help="If specified, the workload is not wrapped: it must itself print "
                             "\"-----begin workload info-----\", its info, \"-----end workload info-----\", "
                             "\"Ready to trace. Press enter to continue\", wait for Enter, run the code "
                             "to trace, and print \"Stop tracing\".")

    parser.add_argument("--print_trace_info", action="store_true",
                        help="If specified, memory_tracer.py also prints the counters of the trace: "
                             "num_of_GMBE_events_since_enabling_GMBEOO, num_of_events_written_to_trace_buf, "
                             "actual_tracing_ratio, and (only when not 0) num_of_events_waiting_in_trace_buf, "
                             "num_of_missing_events and num_of_dropped_events.")
    parser.add_argument("--dont_exit_qemu_when_done", action="store_true",
                        help="If specified, QEMU isn't terminated after running the workload (system mode).")
    parser.add_argument("--dont_use_nographic", action="store_true",
                        help="Give QEMU a screen instead of -nographic (system mode): a window where DISPLAY "
                             "is set, else VNC on a unix socket in the run's private directory (its path is "
                             "printed). With --dont_exit_qemu_when_done, the monitor is on stdio.")
    parser.add_argument("--guest_RAM_in_MBs", type=int,
                        help=f"The guest's RAM size (default {DEFAULT_GUEST_RAM_MB}); must equal the RAM size the "
                             "snapshot was saved with.")
    parser.add_argument("--verbose", "-v", action="store_true", help="If specified, debug messages are printed.")

    extensions = parser.add_argument_group("extensions")
    extensions.add_argument("--user_mode", action="store_true",
                            help="Run the workload (an x86_64 Linux program on this host) under "
                                 "qemu-x86_64 with GMBEOO; no guest image is needed. Only the process "
                                 "started is traced: children it forks run untraced (said on stderr).")
    extensions.add_argument("--workload_args", default="",
                            help="Arguments for the workload, as one shell-quoted string.")
    extensions.add_argument("--analysis_tool_args", default="",
                            help="Options for the analysis tool, as one shell-quoted string; they follow "
                                 "the workload info words in its argv (e.g. \"--plot pages.png\").")
    extensions.add_argument("--shared_memory_ring", action="store_true",
                            help="Hand the records to the analysis tool through a shared-memory ring instead "
                                 "of the FIFO (faster; the tools of analysis_tools/ and those written with "
                                 "memtracer.analysis_api or gmbe_reader.h read both).")
    extensions.add_argument("--qemu_plugin", metavar="PATH[,ARG=VALUE...]",
                            help="With --dont_trace: load this TCG plugin instead (e.g. QEMU's own mem "
                                 "plugin, to compare with GMBEOO); its output is shown with -v.")
    extensions.add_argument("--run_on_private_copy", action="store_true",
                            help="Run QEMU on a private copy of guest_image_path (removed afterwards), "
                                 "so that several runs can use one image at once and the image is never "
                                 "written to.")
    extensions.add_argument("--smp", type=int, default=1, metavar="N",
                            help="Full-system: N vCPUs. The snapshot must have been saved with N (for the "
                                 "built-in image, it is made on demand, or by build.py --smp N).")
    extensions.add_argument("--ssh_key", metavar="PATH",
                            help="Full-system: send the workload with SFTP to the guest's SSH server (through a "
                                 "forwarded port of QEMU's user network), logging in with this private key; "
                                 "the built-in image accepts build/guest_image/id_memory_tracer. No password is "
                                 "ever used.")
    extensions.add_argument("--ssh_user", default="root", help="The guest user of --ssh_key (default: root).")
    extensions.add_argument("--workload_files", metavar="PATH",
                            help="With --ssh_key: a file or a whole directory copied to the guest user's home as "
                                 "`workload` before the workload runs.")
    extensions.add_argument("--strict_exit_status", action="store_true",
                            help=f"Exit with {EXIT_WORKLOAD_FAILED} when the workload exits non-zero or is killed by "
                                 "a signal. Without it, as the original, memory_tracer.py exits 0 whenever its "
                                 "report is complete, and says how the workload ended in one line on stderr.")
    add_setting_arguments(extensions, original=False)
    return parser


def _require(kind, name, value):
    checks = {"file": os.path.isfile, "dir": os.path.isdir, "fifo": is_fifo}
    if not checks[kind](value):
        raise BadInputError(f"{name} must be a {kind} path, but {value} isn't.")


def validate(parser, args):
    """Check everything before anything starts; returns (RunRequest, QemuDir or None, GuestTarget or None)."""
    native = args.dont_use_qemu
    if not args.user_mode and not native:
        missing = [n for n in ("guest_image_path", "snapshot_name", "qemu_with_GMBEOO_path")
                   if getattr(args, n) is None]
        if missing:
            parser.error("the following arguments are required: " + ", ".join(missing))
    if args.workload_path_on_host is not None:
        _require("file", "workload_path_on_host", args.workload_path_on_host)
    if not args.user_mode and not native:
        _require("file", "guest_image_path", args.guest_image_path)
        _require("dir", "qemu_with_GMBEOO_path", args.qemu_with_GMBEOO_path)
    if args.analysis_tool_path is not None:
        _require("file", "analysis_tool_path", args.analysis_tool_path)
    if args.trace_fifo_path is not None:
        _require("fifo", "trace_fifo_path", args.trace_fifo_path)
    if args.trace_files_per_vcpu is not None:
        _require("dir", "trace_files_per_vcpu", args.trace_files_per_vcpu)
        if not os.access(args.trace_files_per_vcpu, os.W_OK | os.X_OK):
            raise BadInputError(f"trace_files_per_vcpu must be a writable directory, but "
                                f"{args.trace_files_per_vcpu} isn't writable.")
    settings = TraceSettings.from_arguments(args)
    if not 1 <= args.smp <= MAX_SMP:
        raise BadInputError(f"smp must be in range [1, {MAX_SMP}], but {args.smp} isn't.")
    if args.qemu_plugin is not None:
        if not args.dont_trace:
            raise BadInputError("--qemu_plugin needs --dont_trace (GMBEOO and another plugin are not loaded together).")
        _require("file", "qemu_plugin", args.qemu_plugin.split(",")[0])
    if args.shared_memory_ring and args.analysis_tool_path is None:
        raise BadInputError("--shared_memory_ring needs --analysis_tool_path (a tool that reads the ring).")
    if args.timeout is not None and not args.timeout > 0:
        raise BadInputError(f"timeout must be a positive number of seconds, but {args.timeout:g} isn't.")

    workload_args = _split_words("workload_args", args.workload_args)
    args.analysis_tool_words = _split_words("analysis_tool_args", args.analysis_tool_args)
    if not args.user_mode and not native:
        return _system_run_plan(args, settings, workload_args)
    if args.workload_path_on_host is None:
        raise BadInputError("--workload_path_on_guest needs a guest image; in --user_mode and with "
                            "--dont_use_qemu, pass the program with --workload_path_on_host.")
    if args.ssh_key is not None or args.workload_files is not None:
        raise BadInputError("--ssh_key and --workload_files apply to full-system runs only (in --user_mode "
                            "and with --dont_use_qemu the workload runs on this host).")
    if args.smp != 1:
        raise BadInputError("--smp applies to full-system runs only (in --user_mode every guest thread "
                            "is a vCPU of its own).")
    if args.user_mode and args.guest_RAM_in_MBs is not None:
        raise BadInputError("--guest_RAM_in_MBs applies to full-system runs only (in --user_mode the workload "
                            "has this host's memory).")
    for flag in ("dont_exit_qemu_when_done", "dont_use_nographic", "run_on_private_copy"):
        if getattr(args, flag):
            raise BadInputError(f"--{flag} applies to full-system runs only, not to --user_mode "
                                "or --dont_use_qemu.")
    workload = os.path.abspath(args.workload_path_on_host)
    if not os.access(workload, os.X_OK):
        raise BadInputError(f"workload_path_on_host must be an executable file, but "
                            f"{args.workload_path_on_host} isn't executable.")
    qemu_dir = None
    if not native:
        qemu_dir = QemuDir(args.qemu_with_GMBEOO_path or DEFAULT_QEMU_DIR).require("qemu_user")
    return _run_request(args, settings, [workload, *workload_args]), qemu_dir, None


def _absolute_plugin(argument):
    path, _, rest = argument.partition(",")
    return os.path.abspath(path) + ("," + rest if rest else "")


def _split_words(name, text):
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise BadInputError(f"{name} must be a shell-quoted string, but {text!r} isn't ({exc}).") from None


def _run_request(args, settings, workload_argv):
    return RunRequest(
        workload_argv=workload_argv,
        follow_protocol=args.dont_add_communications_with_host_to_workload,
        timeout=args.timeout,
        analysis_tool_path=args.analysis_tool_path and os.path.abspath(args.analysis_tool_path),
        analysis_tool_args=args.analysis_tool_words,
        shared_memory_ring=args.shared_memory_ring,
        other_plugin=args.qemu_plugin and _absolute_plugin(args.qemu_plugin),
        trace_fifo_path=args.trace_fifo_path and os.path.abspath(args.trace_fifo_path),
        trace_dir=args.trace_files_per_vcpu and os.path.abspath(args.trace_files_per_vcpu),
        traced=not (args.dont_trace or args.dont_use_qemu),
        native=args.dont_use_qemu,
        settings=settings,
        verbose=args.verbose,
    )


def _require_program(path):
    """The guest runs what the host sends: it must be an ELF executable or a #! script."""
    with open(path, "rb") as f:
        start = f.read(4)
    if start != b"\x7fELF" and not start.startswith(b"#!"):
        raise BadInputError(f"workload_path_on_host must be a program (an ELF executable or a #! script), "
                            f"but {path} isn't.")


def _system_run_plan(args, settings, workload_args):
    if args.workload_path_on_host is not None:
        _require_program(args.workload_path_on_host)
    if args.guest_RAM_in_MBs is None:
        args.guest_RAM_in_MBs = DEFAULT_GUEST_RAM_MB
    if args.guest_RAM_in_MBs <= 0:
        raise BadInputError(f"guest_RAM_in_MBs must be a positive number of MiB, but {args.guest_RAM_in_MBs} isn't.")
    if args.workload_files is not None:
        if args.ssh_key is None:
            raise BadInputError("--workload_files needs --ssh_key (the files go to the guest with SFTP).")
        if not os.path.exists(args.workload_files):
            raise BadInputError(f"workload_files must be a file or directory path, but {args.workload_files} isn't.")
    if args.ssh_key is not None:
        _require("file", "ssh_key", args.ssh_key)
        # Imported here: paramiko takes ~0.1 s to import, which only runs with --ssh_key should pay.
        from .qemu.ssh_transport import load_private_key
        load_private_key(args.ssh_key)   # a bad key fails now, before QEMU starts
    qemu_dir = QemuDir(args.qemu_with_GMBEOO_path).require("qemu_system", "qemu_img")
    image_path = os.path.abspath(args.guest_image_path)
    builtin = os.path.samefile(image_path, DEFAULT_GUEST_IMAGE) if DEFAULT_GUEST_IMAGE.exists() else False
    target = GuestTarget(
        image_path=str(builtin_guest_image(args.smp)) if builtin else image_path,
        smp=args.smp,
        make_builtin_image=builtin and args.smp != 1,
        snapshot=args.snapshot_name,
        ram_mb=args.guest_RAM_in_MBs,
        workload_path_on_host=args.workload_path_on_host and os.path.abspath(args.workload_path_on_host),
        workload_path_on_guest=args.workload_path_on_guest,
        workload_args=tuple(workload_args),
        graphic=args.dont_use_nographic,
        keep_qemu=args.dont_exit_qemu_when_done,
        private_copy=args.run_on_private_copy,
        ssh_key=args.ssh_key and os.path.abspath(args.ssh_key),
        ssh_user=args.ssh_user,
        workload_files=args.workload_files and os.path.abspath(args.workload_files),
    )
    return _run_request(args, settings, None), qemu_dir, target


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="memory_tracer: %(message)s", stream=sys.stderr)
    # Their protocol dumps drown ours, and what goes wrong reaches us as exceptions (qemu.qmp even
    # logs as critical its own state after a Ctrl-C in its handshake).
    for noisy in ("qemu.qmp", "asyncio", "paramiko"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL + 1)
    # Ctrl-C or SIGTERM during a QMP command leaves qemu.qmp's coroutine unawaited; the run
    # still ends cleanly, and Python's warning about it would only bury our one line.
    warnings.filterwarnings("ignore", message="coroutine .* was never awaited", category=RuntimeWarning)
    try:
        with ending_signals_unwind("memory_tracer.py"):
            request, qemu_dir, target = validate(parser, args)
            if target is None:
                result = HostRun(request, qemu_dir).run()
                print_report(result, args)
            else:
                with SystemRun(request, qemu_dir, target) as system_run:
                    result = system_run.trace()
                    print_report(result, args)
                    if target.keep_qemu:
                        system_run.hand_over()
    except Interrupted as exc:
        say(exc)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        say("memory_tracer.py: interrupted.")
        return EXIT_INTERRUPTED
    except MemoryTracerError as exc:
        if args.verbose:
            traceback.print_exc()
        say(exc)
        return EXIT_ERROR
    except OSError as exc:
        if exc.errno not in UNWRITABLE:
            return internal_error(exc, args)
        if args.verbose:
            traceback.print_exc()
        where = exc.filename or f"the temporary directory {tempfile.gettempdir()}"
        advice = ("free some space there, or set TMPDIR to a directory with room" if exc.errno in (errno.ENOSPC, errno.EDQUOT)
                  else "run as a user who may write there (for temporary files: set TMPDIR to a directory of yours)")
        say(f"memory_tracer.py: cannot write {where}: {exc.strerror}; {advice}.")
        return EXIT_ERROR
    except Exception as exc:  # a bug of ours: still one line, the traceback only with -v
        return internal_error(exc, args)
    if result.trace_problem:
        return EXIT_ERROR
    return EXIT_WORKLOAD_FAILED if result.workload_problem and args.strict_exit_status else 0


def internal_error(exc, args):
    if args.verbose:
        traceback.print_exc()
    say(f"memory_tracer.py: internal error: {exc!r} (run with -v for the traceback)")
    return EXIT_ERROR


def print_report(result, args):
    sys.stdout.write(format_report(result, args.print_trace_info))
    sys.stdout.flush()
    for note in result.notes:
        say(f"memory_tracer.py: {note}")
    if result.workload_problem:
        say(f"memory_tracer.py: {result.workload_problem}")
    if result.trace_problem:
        say(f"memory_tracer.py: {result.trace_problem}")
