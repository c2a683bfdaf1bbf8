"""memory_tracer: record every guest memory access QEMU executes, and feed it to an analysis tool."""
