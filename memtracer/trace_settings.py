"""What to trace and how: declared once, with the same names for CLI flags and plugin keys."""
from dataclasses import dataclass

from .errors import BadInputError

# memory_tracer --record_format: the record layouts of qemu_patches/gmbe_record.h, by record size.
RECORD_FORMATS = {"standard": 16, "extended": 32, "compact": 8}


@dataclass(frozen=True)
class TraceSettings:
    trace_only_CPL3_code_GMBE: bool = False
    log_of_GMBE_block_len: int = 0
    log_of_GMBE_tracing_ratio: int = 0
    drop_when_trace_fifo_full: bool = False
    record_format: str = "standard"
    trace_only_marked_regions: bool = False
    max_instructions: int = 0          # 0: no limit

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
        total = self.log_of_GMBE_block_len + self.log_of_GMBE_tracing_ratio
        if total > 64:
            raise BadInputError(
                "log_of_GMBE_block_len + log_of_GMBE_tracing_ratio must be in range [0, 64], "
                f"but {self.log_of_GMBE_block_len} + {self.log_of_GMBE_tracing_ratio} = {total} isn't.")
        return self

    def plugin_args(self):
        """The plugin's key=value arguments for these settings."""
        on_off = {True: "on", False: "off"}
        return [
            f"trace_only_CPL3_code_GMBE={on_off[self.trace_only_CPL3_code_GMBE]}",
            f"log_of_GMBE_block_len={self.log_of_GMBE_block_len}",
            f"log_of_GMBE_tracing_ratio={self.log_of_GMBE_tracing_ratio}",
            f"drop_when_trace_fifo_full={on_off[self.drop_when_trace_fifo_full]}",
            f"record_format={self.record_format}",
            f"trace_only_marked_regions={on_off[self.trace_only_marked_regions]}",
            f"max_instructions={self.max_instructions}",
        ]
