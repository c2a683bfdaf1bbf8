#!/usr/bin/env python3
"""export --format parquet: the trace as a Parquet table (memtracer.trace.parquet), on a trace
file (`export_parquet.py trace.gmbe --output trace.parquet`) or under memory_tracer. The C `export`
tool hands `--format parquet` over to this script."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from memtracer.trace.parquet import ParquetExport  # noqa: E402

if __name__ == "__main__":
    ParquetExport().main()
