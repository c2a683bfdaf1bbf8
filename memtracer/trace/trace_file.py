"""Trace files (qemu_patches/gmbe_trace_file.h) in Python: a 64-byte header, then the records, as
one zstd stream (the `record` tool) or uncompressed (the plugin's per-vCPU files). Raw files of
16-byte records (no header) are read as well."""
import struct
from dataclasses import dataclass

import numpy as np
import zstandard

from ..record import DTYPE_BY_RECORD_SIZE, RECORD_SIZE

MAGIC = b"GMBETRC\n"
FORMAT_VERSION = 1
COMPRESSION_NONE, COMPRESSION_ZSTD = 0, 1
UNKNOWN = 0xFFFFFFFF
HEADER = struct.Struct("<8s8IQ16x")


@dataclass
class TraceHeader:
    format_version: int = FORMAT_VERSION
    record_size: int = RECORD_SIZE
    compression: int = COMPRESSION_NONE
    vcpu_count: int = 0
    trace_only_cpl3: int = UNKNOWN
    log_of_block_len: int = UNKNOWN
    log_of_tracing_ratio: int = UNKNOWN
    record_count: int = 0

    @classmethod
    def read(cls, f):
        """The header of a trace file, or None (and f rewound) for raw records."""
        data = f.read(HEADER.size)
        if len(data) < HEADER.size or not data.startswith(MAGIC):
            f.seek(0)
            return None
        (_, version, record_size, compression, vcpus, cpl3, block_len, ratio, _, count) = HEADER.unpack(data)
        if version != FORMAT_VERSION or record_size not in DTYPE_BY_RECORD_SIZE:
            raise ValueError(f"trace file format {version} with {record_size}-byte records is not supported")
        return cls(version, record_size, compression, vcpus, cpl3, block_len, ratio, count)

    def pack(self):
        return HEADER.pack(MAGIC, self.format_version, self.record_size, self.compression, self.vcpu_count,
                           self.trace_only_cpl3, self.log_of_block_len, self.log_of_tracing_ratio, 0,
                           self.record_count)


def read_batches(path, batch_records=1 << 16, progress=None, record_size=RECORD_SIZE):
    """Yields the records of a trace file (or raw record file, of record_size-byte records) as NumPy
    arrays of the file's format (memtracer.record.DTYPE_BY_RECORD_SIZE).
    Each array is a view of one buffer: it is valid until the next one is yielded."""
    with open(path, "rb") as f:
        header = TraceHeader.read(f)
        if header is not None:
            record_size = header.record_size
        dtype = DTYPE_BY_RECORD_SIZE[record_size]
        stream = f
        if header is not None and header.compression == COMPRESSION_ZSTD:
            stream = zstandard.ZstdDecompressor().stream_reader(f, read_size=1 << 20)
        buffer = bytearray(batch_records * record_size)
        view = memoryview(buffer)
        kept = 0
        while True:
            n = stream.readinto(view[kept:])
            if not n:
                break
            total = kept + n
            whole = total // record_size * record_size
            if whole:
                yield np.frombuffer(buffer, dtype=dtype, count=whole // record_size)
            kept = total - whole
            view[:kept] = view[whole:total]
            if progress is not None:
                progress(f.tell())
        if kept:
            raise ValueError(f"{path} ends with {kept} bytes of a partial record")
