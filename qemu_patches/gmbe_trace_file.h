/*
 * gmbe_trace_file.h - a trace kept on disk, so it can be analysed again
 * without running the guest again (written by the `record` tool).
 *
 * A 64-byte header, then the 16-byte records of gmbe_record.h as one zstd
 * stream (chosen by measurement: at level 1 zstd compressed traces 24x at
 * 67 M records/s, lz4 6.7x at 50 M records/s). memtracer/trace/trace_file.py reads it
 * in Python.
 */
#ifndef GMBE_TRACE_FILE_H
#define GMBE_TRACE_FILE_H

#include <stdint.h>

#define GMBE_TRACE_MAGIC "GMBETRC\n"   /* byte 7 is not 0x80: never a record */
#define GMBE_TRACE_FORMAT_VERSION 1
#define GMBE_COMPRESSION_NONE 0
#define GMBE_COMPRESSION_ZSTD 1
#define GMBE_SETTING_UNKNOWN 0xffffffffu

struct gmbe_trace_header {
    char magic[8];
    uint32_t format_version;
    uint32_t record_size;          /* 16 */
    uint32_t compression;          /* GMBE_COMPRESSION_* */
    uint32_t vcpu_count;           /* highest vCPU index seen + 1 */
    uint32_t trace_only_cpl3;      /* 0, 1, or GMBE_SETTING_UNKNOWN: what was filtered */
    uint32_t log_of_block_len;     /* what was sampled (memory_tracer --log_of_GMBE_*), or UNKNOWN */
    uint32_t log_of_tracing_ratio;
    uint32_t reserved0;
    uint64_t record_count;         /* filled in when the file is complete */
    uint8_t reserved[16];
};

_Static_assert(sizeof(struct gmbe_trace_header) == 64, "the trace file header is 64 bytes");

#endif
