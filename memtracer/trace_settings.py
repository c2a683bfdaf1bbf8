"""What to trace and how. Each setting is declared once, as a field of TraceSettings; its
metadata yields memory_tracer.py's command-line flag (--NAME), the GMBEOO plugin's argument (the
same NAME, an entry of plugin_options[] in gmbeoo.c) and, where tools need it, the environment
variable that tells an analysis tool what was filtered and sampled (the `record` tool's header)."""
from dataclasses import dataclass, field, fields

from .errors import BadInputError
from .record import RECORD_FORMATS


def setting(default, help, tool_variable=None, original=False, choices=None):
    """A field of TraceSettings with what the command line, the plugin and the tools need."""
    return field(default=default, metadata={"help": help, "tool_variable": tool_variable,
                                            "original": original, "choices": choices})


@dataclass(frozen=True)
class TraceSettings:
    trace_only_CPL3_code_GMBE: bool = setting(
        False, "If specified, only memory accesses by CPL3 code are traced; code that runs at CPL < 3 "
               "is not instrumented at all.", tool_variable="GMBE_TRACE_ONLY_CPL3", original=True)
    log_of_GMBE_block_len: int = setting(
        0, "Log of the length of a GMBE_block, i.e. the number of GMBE events in a GMBE_block. (It is "
           "used when determining whether to trace a GMBE event.)",
        tool_variable="GMBE_LOG_OF_BLOCK_LEN", original=True)
    log_of_GMBE_tracing_ratio: int = setting(
        0, "Log of the ratio between the number of blocks of GMBE events we trace to the total number "
           "of blocks. E.g. if GMBE_tracing_ratio is 16, we trace 1 block, then skip 15 blocks, then "
           "trace 1, then skip 15, and so on...", tool_variable="GMBE_LOG_OF_TRACING_RATIO", original=True)
    record_format: str = setting(
        "standard", "standard: the 16-byte records above (default); extended: 32 bytes, adding the "
                    "physical address (full-system) and the PC of the accessing instruction; compact: "
                    "8 bytes, the flags in the top bits of a canonical 48-bit address "
                    "(qemu_patches/gmbe_record.h). Tools are told in GMBE_RECORD_FORMAT; those of "
                    "analysis_tools/ read all three.",
        tool_variable="GMBE_RECORD_FORMAT", choices=tuple(sorted(RECORD_FORMATS)))
    trace_only_marked_regions: bool = setting(
        False, "Trace only between the guest program's memory_tracer_region_begin() and "
               "memory_tracer_region_end() (to_run_on_guest/memory_tracer_markers.h).")
    max_instructions: int = setting(
        0, "Stop tracing once N guest instructions have executed in the trace window (with "
           "--trace_only_marked_regions: inside the regions); exact with one vCPU, shared by all vCPUs.")
    drop_when_trace_fifo_full: bool = setting(
        False, "Drop (and count) records when the reader is slower than the guest, instead of making "
               "the guest wait (the default is lossless).")
    callback_records: bool = setting(
        False, "Record each access through a plugin callback, as a stock QEMU must, instead of the "
               "records that the patched QEMU of build.py writes in its generated code (the same "
               "records, slower: for comparison).")
    buffer_records: int = setting(
        4096, "Records each vCPU buffers before handing them over to the trace (a power of two).")
    fifo_by_write: bool = setting(
        False, "Hand the records to a FIFO by write(), copied by the kernel, instead of by vmsplice(), "
               "which gives the pipe the buffers themselves (for comparison).")
    ring_by_copy: bool = setting(
        False, "Copy the records into the shared-memory ring from each vCPU's buffer, instead of "
               "writing them in place in the ring (one vCPU only; for comparison).")
    far_reader_ns: int = setting(
        100, "A lone vCPU writes its records in place in the shared-memory ring while the reader's CPU "
             "is near its own, and copies them in past its caches while the reader is farther than this: "
             "the time in ns that the ring's tail takes to come from the reader's cache, measured as the "
             "run goes (0: in place however far).")
    record_between_samples: bool = setting(
        False, "With sampling, write every record and keep the sampled ones when handing them over, "
               "instead of running code that only counts accesses between the samples (for comparison; "
               "sampled runs do so by themselves where samples come often: 1 in 2^R for R below 7 in "
               "user mode, below 9 in full system).")

    @classmethod
    def from_arguments(cls, args):
        """The settings of a parsed command line (argparse's namespace), validated."""
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)}).validate()

    def validate(self):
        if self.record_format not in RECORD_FORMATS:
            raise BadInputError(f"record_format must be one of {', '.join(RECORD_FORMATS)}, "
                                f"but {self.record_format} isn't.")
        if self.max_instructions < 0:
            raise BadInputError(f"max_instructions must be a positive number of instructions, "
                                f"but {self.max_instructions} isn't.")
        for name in ("log_of_GMBE_block_len", "log_of_GMBE_tracing_ratio"):
            value = getattr(self, name)
            if not 0 <= value <= 64:
                raise BadInputError(f"{name} must be in range [0, 64], but {value} isn't.")
        if self.far_reader_ns < 0:
            raise BadInputError(f"far_reader_ns must be 0 or more nanoseconds, but {self.far_reader_ns} isn't.")
        if self.buffer_records < 1 or self.buffer_records & (self.buffer_records - 1):
            raise BadInputError(f"buffer_records must be a power of two, but {self.buffer_records} isn't.")
        total = self.log_of_GMBE_block_len + self.log_of_GMBE_tracing_ratio
        if total > 64:
            raise BadInputError(
                "log_of_GMBE_block_len + log_of_GMBE_tracing_ratio must be in range [0, 64], "
                f"but {self.log_of_GMBE_block_len} + {self.log_of_GMBE_tracing_ratio} = {total} isn't.")
        return self

    def plugin_args(self):
        """The plugin's key=value arguments for these settings (booleans as on/off)."""
        return [f"{f.name}={_plugin_value(getattr(self, f.name))}" for f in fields(self)]

    def tool_variables(self):
        """The environment variables that tell an analysis tool what was filtered and sampled."""
        return {f.metadata["tool_variable"]: str(_tool_value(getattr(self, f.name)))
                for f in fields(self) if f.metadata["tool_variable"]}

    @property
    def record_size(self):
        return RECORD_FORMATS[self.record_format]


def _plugin_value(value):
    return {True: "on", False: "off"}[value] if isinstance(value, bool) else value


def _tool_value(value):
    return int(value) if isinstance(value, bool) else value


def add_setting_arguments(group, original):
    """--NAME for each setting of the original interface (original=True) or of the extensions."""
    for f in fields(TraceSettings):
        if f.metadata["original"] != original:
            continue
        if f.type is bool:
            group.add_argument(f"--{f.name}", action="store_true", help=f.metadata["help"])
        elif f.metadata["choices"]:
            group.add_argument(f"--{f.name}", choices=f.metadata["choices"], default=f.default,
                               help=f.metadata["help"])
        else:
            metavar = None if f.metadata["original"] else "N"
            group.add_argument(f"--{f.name}", type=int, default=f.default, metavar=metavar, help=f.metadata["help"])
