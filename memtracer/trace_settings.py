"""What to trace and how: declared once, with the same names for CLI flags and plugin keys."""
from dataclasses import dataclass

from .errors import BadInputError


@dataclass(frozen=True)
class TraceSettings:
    trace_only_CPL3_code_GMBE: bool = False
    log_of_GMBE_block_len: int = 0
    log_of_GMBE_tracing_ratio: int = 0
    drop_when_trace_fifo_full: bool = False

    def validate(self):
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
        ]
