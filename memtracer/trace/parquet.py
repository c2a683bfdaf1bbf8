"""Traces as tables: a trace in Parquet, one row per access and one column per record field, so
that DuckDB, pandas, polars or Spark query it. Markers from guest code are not rows: each row
carries the phase it is in (the number of markers before it), and the markers themselves are in
the file's key-value metadata (`gmbe_markers`, JSON).

    from memtracer.trace.parquet import trace_to_parquet
    trace_to_parquet("sort.gmbe", "sort.parquet")

The `export` tool does the same with `--format parquet --output FILE`, on a trace file or under
memory_tracer."""
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from ..analysis_api import AnalysisTool   # first: it moves a foreign python3 into the project's environment

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..record import (BIG_ENDIAN_BIT, CPL_SHIFT, EXTENDED_DTYPE, SIGN_EXTEND_BIT, SIZE_SHIFT_MASK,
                      STORE_BIT)

ROW_GROUP_RECORDS = 1 << 20
COMPRESSION = "zstd"
MARKERS_KEY = b"gmbe_markers"

# One column per record field, in this order; the extended format adds the last two.
COLUMNS = [
    ("seq", pa.uint64()),            # the record's place in the stream (markers not counted)
    ("phase", pa.uint32()),
    ("vcpu", pa.uint16()),
    ("cpl", pa.uint8()),
    ("store", pa.bool_()),
    ("size", pa.uint8()),
    ("sign_extended", pa.bool_()),
    ("big_endian", pa.bool_()),
    ("virt_addr", pa.uint64()),
]
EXTENDED_COLUMNS = [("phys_addr", pa.uint64()), ("pc", pa.uint64())]
ADDRESS_COLUMNS = ("virt_addr", "phys_addr", "pc")


def schema(extended):
    return pa.schema(COLUMNS + (EXTENDED_COLUMNS if extended else []))


class ParquetTraceWriter:
    """Takes batches of access records (RECORD_DTYPE, or EXTENDED_DTYPE with extended=True) in
    stream order and writes them in row groups of ROW_GROUP_RECORDS."""

    def __init__(self, path, extended=False):
        self.path = path
        self.extended = extended
        self.schema = schema(extended)
        # seq is a counter: delta encoding stores it in almost nothing. Addresses share their high
        # bytes: split into byte streams, zstd finds the repeats.
        encodings = {"seq": "DELTA_BINARY_PACKED"}
        encodings.update({name: "BYTE_STREAM_SPLIT" for name in ADDRESS_COLUMNS if name in self.schema.names})
        self._writer = pq.ParquetWriter(path, self.schema, compression=COMPRESSION, use_dictionary=False,
                                        column_encoding=encodings)
        self._pending = []
        self._pending_rows = 0
        # Encoding and compressing a row group (Arrow, without the GIL) overlaps with reading and
        # splitting the next; one thread keeps the row groups in order.
        self._encoder = ThreadPoolExecutor(max_workers=1)
        self._encoding = None
        self.records = 0
        self.row_groups = 0
        self.markers = []

    def write(self, records, phase):
        """Records of one phase; copied, so the caller may reuse its buffer."""
        if not len(records):
            return
        self._pending.append(self._columns(records, phase))
        self._pending_rows += len(records)
        self.records += len(records)
        while self._pending_rows >= ROW_GROUP_RECORDS:
            self._flush(ROW_GROUP_RECORDS)

    def add_marker(self, kind, number, vcpu):
        """A marker between the records written so far and the next: the next phase starts."""
        self.markers.append({"phase": len(self.markers) + 1, "kind": kind, "number": number, "vcpu": vcpu,
                             "seq": self.records})
        return len(self.markers)

    def close(self):
        while self._pending_rows:
            self._flush(min(self._pending_rows, ROW_GROUP_RECORDS))
        self._wait_for_encoding()
        self._encoder.shutdown()
        self._writer.add_key_value_metadata({MARKERS_KEY: json.dumps(self.markers).encode()})
        self._writer.close()

    def _columns(self, records, phase):
        info = records["info"]
        first = self.records
        columns = {
            "seq": np.arange(first, first + len(records), dtype=np.uint64),
            "phase": np.full(len(records), phase, dtype=np.uint32),
            "vcpu": records["vcpu"].astype(np.uint16),
            "cpl": (info >> CPL_SHIFT).astype(np.uint8),
            "store": (info & STORE_BIT) != 0,
            "size": np.left_shift(1, info & SIZE_SHIFT_MASK).astype(np.uint8),
            "sign_extended": (info & SIGN_EXTEND_BIT) != 0,
            "big_endian": (info & BIG_ENDIAN_BIT) != 0,
            "virt_addr": records["virt_addr"].astype(np.uint64),
        }
        if self.extended:
            columns["phys_addr"] = records["phys_addr"].astype(np.uint64)
            columns["pc"] = records["pc"].astype(np.uint64)
        return columns

    def _flush(self, rows):
        """Writes the first `rows` pending rows as one row group."""
        taken, kept, count = [], [], 0
        for chunk in self._pending:
            n = len(chunk["seq"])
            if count + n <= rows:
                taken.append(chunk)
                count += n
            elif count < rows:
                cut = rows - count
                taken.append({name: column[:cut] for name, column in chunk.items()})
                kept.append({name: column[cut:] for name, column in chunk.items()})
                count = rows
            else:
                kept.append(chunk)
        table = pa.table({name: np.concatenate([chunk[name] for chunk in taken]) for name in self.schema.names},
                         schema=self.schema)
        self._wait_for_encoding()
        self._encoding = self._encoder.submit(self._writer.write_table, table, row_group_size=rows)
        self._pending, self._pending_rows = kept, self._pending_rows - rows
        self.row_groups += 1

    def _wait_for_encoding(self):
        if self._encoding is not None:
            self._encoding.result()      # raises what writing raised (e.g. a full disk)
            self._encoding = None


def trace_markers(path):
    """The markers of a trace Parquet file, as written by ParquetTraceWriter."""
    metadata = pq.read_metadata(path).metadata or {}
    return json.loads(metadata.get(MARKERS_KEY, b"[]"))


def trace_to_parquet(trace_path, parquet_path):
    """Turns a trace file (or a file of raw 16-byte records) into Parquet; returns the number of
    records written."""
    tool = ParquetExport()
    tool.run_on_file(str(trace_path), output=str(parquet_path))
    return tool.writer.records


class ParquetExport(AnalysisTool):
    """`export --format parquet`: an analysis tool (on a trace file, or under memory_tracer) that
    writes the records it is given to a Parquet file."""
    name = "export"
    options = {"format": "parquet", "output": None}
    extended = True     # extended records keep their physical address and PC

    def start(self):
        if self.option["format"] != "parquet":
            sys.exit(f"{self.name}: this exporter writes format parquet, but {self.option['format']} was asked for")
        if not self.option["output"]:
            sys.exit(f"{self.name}: --format parquet needs --output FILE.parquet")
        try:        # now, before the trace starts, rather than at its first record
            open(self.option["output"], "wb").close()
        except OSError as exc:
            sys.exit(f"{self.name}: cannot write {self.option['output']}: {exc.strerror}")
        self.writer = None
        self.phase = 0

    def _extended_input(self):
        size = self.header.record_size if self.header is not None else self._record_size
        return size == EXTENDED_DTYPE.itemsize

    def _writer_for(self, extended):
        if self.writer is None:
            self.writer = ParquetTraceWriter(self.option["output"], extended)
        return self.writer

    @contextmanager
    def _writing(self):
        """A write that fails (a full disk) ends the tool with one line, its report never half true."""
        try:
            yield
        except (OSError, pa.ArrowException) as exc:
            sys.exit(f"{self.name}: writing {self.option['output']} failed: {exc}")

    def process(self, records):
        with self._writing():
            self._writer_for(records.dtype == EXTENDED_DTYPE).write(records, self.phase)

    def marker(self, kind, number, vcpu):
        with self._writing():
            self.phase = self._writer_for(self._extended_input()).add_marker(kind, number, vcpu)

    def report(self):
        with self._writing():
            writer = self._writer_for(self._extended_input())   # no records: a table of none
            writer.close()
        size = os.path.getsize(self.option["output"])
        per_record = f"{size / writer.records:.2f}" if writer.records else "0"
        return "\n".join([f"parquet_file: {self.option['output']}", f"records: {writer.records}",
                          f"phases: {len(writer.markers) + 1}", f"row_groups: {writer.row_groups}",
                          f"file_bytes: {size}", f"bytes_per_record: {per_record}"])
