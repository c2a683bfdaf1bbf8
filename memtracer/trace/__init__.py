"""Where the records go: the consumer (an analysis tool or a reader), FIFOs, the shared-memory ring, trace files."""
