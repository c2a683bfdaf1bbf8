"""Analysis tools in Python, at C speed: this module does the analysis-tool protocol of
memory_tracer.py (argv, `Ready to analyze`, big reads, SIGUSR1 -> the report between the markers)
and hands your code batches of records as NumPy structured arrays (memtracer.record.RECORD_DTYPE);
`c_kernel` compiles C with cffi for what NumPy does not do well.

    from memtracer.analysis_api import AnalysisTool

    class CountStores(AnalysisTool):
        name = "count_stores"
        def start(self):
            self.stores = 0
        def process(self, records):          # valid only during the call: copy what you keep
            self.stores += int(np.count_nonzero(records["info"] & STORE_BIT))
        def report(self):
            return f"stores: {self.stores}"

    if __name__ == "__main__":
        CountStores().main()

Run it like any tool: by memory_tracer (`--analysis_tool_path tool.py`), or on a trace file of the
`record` tool (or raw records) to analyse a trace again: `tool.py trace.gmbe [options]`, with
progress on stderr. Options are declared in `options` ({name: default}) and given as
`--name value`, `--name=value` or `name=value`; other words are the workload info (`self.info`).
Under memory_tracer, argv[1] is the trace FIFO of the original protocol, and the tool takes the
shared-memory ring that memory_tracer offers beside it instead (memtracer.trace.shm_ring: no copy
through the kernel); with --shared_memory_ring argv[1] is that ring itself. The tool does not need
to know.

Every record format reaches process() as RECORD_DTYPE's 16-byte records (compact ones widened,
extended ones narrowed), or, for a tool that sets `extended = True`, with extended records as
they are (memtracer.record.EXTENDED_DTYPE: also phys_addr and pc). Marker records from guest code
never reach process(): define marker(kind, number, vcpu) to see them, in stream order
(kind is a name of memtracer.record.MARKER_KINDS).
"""
import hashlib
import importlib.util
import os
import select
import signal
import stat
import sys
import time

from .environment import use_project_environment

use_project_environment()   # a tool started by any python3 runs inside build/venv

import numpy as np  # noqa: E402

from .layout import BUILD_DIR  # noqa: E402
from .protocol import TOOL_OUTPUT_BEGIN, TOOL_OUTPUT_END, TOOL_READY  # noqa: E402
from .record import (DTYPE_BY_RECORD_SIZE, MARKER_KINDS, RECORD_DTYPE, RECORD_FORMATS, as_records,  # noqa: E402
                     is_marker, marker_kinds, narrow_extended)
from .trace.shm_ring import ShmRingReader, attach_offered_ring, is_ring  # noqa: E402
from .trace.trace_file import TraceHeader, read_batches  # noqa: E402

READ_BYTES = 1 << 20
CFFI_CACHE = str(BUILD_DIR / "cffi")


class AnalysisTool:
    name = "tool"
    options = {}
    extended = False        # True: extended records reach process() whole (phys_addr, pc)

    # ------------------------------------------------------------------ what a tool defines

    def start(self):
        """Called once the options and info are known, before the first batch."""

    def process(self, records):
        """Called for every batch of whole records, in stream order."""
        raise NotImplementedError

    def report(self):
        """Returns the results as text."""
        raise NotImplementedError

    def marker(self, kind, number, vcpu):
        """Called for each marker record from guest code, in stream order (by default: ignored)."""

    # ------------------------------------------------------------------ running

    def main(self, argv=None):
        argv = sys.argv if argv is None else argv
        if len(argv) < 2 or argv[1] in ("-h", "--help"):
            print(self._usage(), file=sys.stderr if len(argv) < 2 else sys.stdout)
            sys.exit(2 if len(argv) < 2 else 0)
        self.info, self.option = self._parse_words(argv[2:])
        self.header = None
        format_name = os.environ.get("GMBE_RECORD_FORMAT") or "standard"
        if format_name not in RECORD_FORMATS:
            sys.exit(f"{self.name}: GMBE_RECORD_FORMAT must be one of {', '.join(RECORD_FORMATS)}, "
                     f"but {format_name} isn't")
        self._record_size = RECORD_FORMATS[format_name]
        source = argv[1]
        ring = is_ring(source)
        if not ring and os.path.exists(source) and stat.S_ISFIFO(os.stat(source).st_mode):
            offered = attach_offered_ring()      # the ring beside the FIFO: no copy through the kernel
            source, ring = (offered, True) if offered else (source, False)
        replaying = os.path.exists(source) and not stat.S_ISFIFO(os.stat(source).st_mode) and not ring
        self.start()
        if replaying:
            self._replay(source)
            sys.stdout.write(self.report().rstrip("\n") + "\n")
        else:
            self._follow(source, ring)
        sys.stdout.flush()

    def run_on_file(self, path, **options):
        """Replays a trace file (or raw 16-byte records) through this tool, in this process, and
        returns its report: `Count().run_on_file("sort.gmbe", range="0x1000-0x2000")`."""
        self.info, self.option = [], {**self.options, **options}
        self.header = None
        self._record_size = RECORD_FORMATS["standard"]   # a trace file's header says its own
        self.start()
        self._replay(path)
        return self.report()

    def _usage(self):
        lines = [f"usage: {self.name} TRACE_FIFO_OR_FILE [OPTIONS] [WORKLOAD_INFO_WORDS...]"]
        lines += [f"  --{name} (default: {default})" for name, default in self.options.items()]
        return "\n".join(lines)

    def _parse_words(self, words):
        info, option = [], dict(self.options)
        words = list(words)
        while words:
            word = words.pop(0)
            name, eq, value = word.lstrip("-").partition("=")
            dashed = word.startswith("--")
            if name in self.options and (dashed or eq):
                if not eq:
                    if not words:
                        sys.exit(f"{self.name}: option {word} needs a value")
                    value = words.pop(0)
                option[name] = value
            elif dashed:
                sys.exit(f"{self.name}: unknown option {word}\n{self._usage()}")
            else:
                info.append(word)
        return info, option

    def _replay(self, path):
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            self.header = TraceHeader.read(f)
        show = sys.stderr.isatty()
        last = [0.0]

        def progress(position):
            if show and time.monotonic() - last[0] > 0.25:
                last[0] = time.monotonic()
                sys.stderr.write(f"\r{self.name}: {100 * position / max(size, 1):3.0f}% of the trace read")
        for batch in read_batches(path, progress=progress, record_size=self._record_size):
            self._deliver(batch)
        if show:
            sys.stderr.write("\r\033[K")

    def _follow(self, path, ring):
        """The protocol: Ready, read until SIGUSR1 and then what is left, report between markers."""
        wake_read, wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_write, warn_on_full_buffer=False)
        requested = []
        signal.signal(signal.SIGUSR1, lambda signum, frame: requested.append(True))
        print(TOOL_READY, flush=True)
        if ring:
            with ShmRingReader(path) as reader:
                reader.follow(self._deliver, lambda: bool(requested), wake_read)
        else:
            self._follow_fifo(path, requested, wake_read)
        while not requested:
            select.select([wake_read], [], [])
        signal.set_wakeup_fd(-1)
        print(TOOL_OUTPUT_BEGIN)
        print(self.report().rstrip("\n"))
        print(TOOL_OUTPUT_END, flush=True)

    def _follow_fifo(self, path, requested, wake_read):
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        buffer = bytearray(READ_BYTES)
        view = memoryview(buffer)
        kept = 0
        at_end = False
        while not requested and not at_end:
            readable, _, _ = select.select([fd, wake_read], [], [])
            if fd in readable:
                kept, at_end = self._read_batch(fd, buffer, view, kept)
        # Every record is in the FIFO before SIGUSR1: read what is left without waiting.
        os.set_blocking(fd, False)
        while not at_end:
            try:
                kept, at_end = self._read_batch(fd, buffer, view, kept)
            except BlockingIOError:
                break
        os.close(fd)

    def _deliver(self, raw):
        """A batch of any format: access records to process(), markers to marker(), in order."""
        records = as_records(raw)
        if records.dtype != RECORD_DTYPE and not self.extended:
            records = narrow_extended(records)   # C kernels index 16-byte records
        markers = np.flatnonzero(is_marker(records))
        if len(markers) == 0:
            self.process(records)
            return
        start = 0
        kinds = marker_kinds(records[markers])
        for position, kind in zip(markers, kinds):
            if position > start:
                self.process(records[start:position])
            self.marker(MARKER_KINDS.get(int(kind), "unknown_marker"), int(records["virt_addr"][position]),
                        int(records["vcpu"][position]))
            start = position + 1
        if start < len(records):
            self.process(records[start:])

    def _read_batch(self, fd, buffer, view, kept):
        n = os.readv(fd, [view[kept:]])
        if n == 0:
            return kept, True
        total = kept + n
        size = self._record_size
        whole = total // size * size
        if whole:
            self._deliver(np.frombuffer(buffer, dtype=DTYPE_BY_RECORD_SIZE[size], count=whole // size))
        kept = total - whole
        view[:kept] = view[whole:total]
        return kept, False


def c_kernel(cdef, source, extra_compile_args=("-O2",)):
    """Compiles C with cffi once (cached in build/cffi/ by content) and returns (ffi, lib).
    Pass a batch to it with ffi.from_buffer("struct gmbe_record[]", records) after declaring
    `struct gmbe_record { uint64_t info_word; uint64_t virt_addr; };` in cdef and source."""
    from cffi import FFI
    key = hashlib.sha256((cdef + "\0" + source + "\0" + " ".join(extra_compile_args)).encode()).hexdigest()[:16]
    module = f"_gmbe_kernel_{key}"
    os.makedirs(CFFI_CACHE, exist_ok=True)
    built = [f for f in os.listdir(CFFI_CACHE) if f.startswith(module) and f.endswith(".so")]
    if not built:
        ffi = FFI()
        ffi.cdef(cdef)
        ffi.set_source(module, source, extra_compile_args=list(extra_compile_args))
        ffi.compile(tmpdir=CFFI_CACHE, verbose=False)
        built = [f for f in os.listdir(CFFI_CACHE) if f.startswith(module) and f.endswith(".so")]
    spec = importlib.util.spec_from_file_location(module, os.path.join(CFFI_CACHE, built[0]))
    compiled = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compiled)
    return compiled.ffi, compiled.lib
