/*
 * record - writes the stream to a trace file (gmbe_trace_file.h): a header
 * saying what was filtered and sampled, then the records, zstd-compressed, so
 * any tool can analyse the trace again later: `count trace.gmbe`.
 *
 * memory_tracer tells its tools the trace settings in the environment
 * (GMBE_TRACE_ONLY_CPL3, GMBE_LOG_OF_BLOCK_LEN, GMBE_LOG_OF_TRACING_RATIO).
 */
#include "gmbe_reader.h"   /* first: it sets _GNU_SOURCE */

static const char *output_option = "trace.gmbe";
static const char *level_option = "1";
static FILE *file;
static ZSTD_CStream *zstd;
static char *compressed;
static size_t compressed_cap;
static struct gmbe_trace_header header;
static uint64_t compressed_bytes;

static uint32_t setting_from_environment(const char *name, uint32_t from_source)
{
    const char *value = getenv(name);
    if (value && *value) {
        return (uint32_t)strtoul(value, NULL, 10);
    }
    return from_source;   /* a replayed trace file keeps what its own header says */
}

static void write_or_die(const void *data, size_t len)
{
    if (fwrite(data, 1, len, file) != len) {
        fprintf(stderr, "record: writing %s failed: %s\n", output_option, strerror(errno));
        exit(1);
    }
    compressed_bytes += len;
}

static int record_init(void)
{
    char *end;
    long level = strtol(level_option, &end, 10);
    if (*end || level < -5 || level > 19) {
        fprintf(stderr, "record: level must be a zstd level in [-5, 19], but %s isn't\n", level_option);
        return 2;
    }
    file = fopen(output_option, "w");
    if (!file) {
        fprintf(stderr, "record: cannot write %s: %s\n", output_option, strerror(errno));
        return 2;
    }
    memcpy(header.magic, GMBE_TRACE_MAGIC, 8);
    header.format_version = GMBE_TRACE_FORMAT_VERSION;
    /* Compact records are widened by the reader; extended ones are kept. */
    header.record_size = gmbe_record_size == GMBE_EXTENDED_RECORD_SIZE ? GMBE_EXTENDED_RECORD_SIZE : GMBE_RECORD_SIZE;
    header.compression = GMBE_COMPRESSION_ZSTD;
    write_or_die(&header, sizeof header);   /* rewritten with the counts at the end */
    zstd = ZSTD_createCStream();
    ZSTD_CCtx_setParameter(zstd, ZSTD_c_compressionLevel, (int)level);
    compressed_cap = ZSTD_CStreamOutSize();
    compressed = malloc(compressed_cap);
    return 0;
}

static void compress(const void *data, size_t len, ZSTD_EndDirective mode)
{
    ZSTD_inBuffer in = { data, len, 0 };
    size_t remaining;
    do {
        ZSTD_outBuffer out = { compressed, compressed_cap, 0 };
        remaining = ZSTD_compressStream2(zstd, &out, &in, mode);
        if (ZSTD_isError(remaining)) {
            fprintf(stderr, "record: zstd: %s\n", ZSTD_getErrorName(remaining));
            exit(1);
        }
        write_or_die(compressed, out.pos);
    } while (mode == ZSTD_e_end ? remaining != 0 : in.pos < in.size);
}

static void note_vcpu(unsigned vcpu)
{
    if (vcpu >= header.vcpu_count) {
        header.vcpu_count = vcpu + 1;
    }
}

static void record_process(const struct gmbe_record *records, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        note_vcpu(gmbe_vcpu(&records[i]));
    }
    header.record_count += n;
    compress(records, n * sizeof *records, ZSTD_e_continue);
}

/* Extended records are kept whole: the file is then an extended trace. */
static void record_process_extended(const struct gmbe_extended_record *records, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        note_vcpu((unsigned)((records[i].info_word >> 8) & 0xffffu));
    }
    header.record_count += n;
    compress(records, n * sizeof *records, ZSTD_e_continue);
}

/* Markers stay in the file, in their place, in the file's format. */
static void record_marker(const struct gmbe_record *marker)
{
    struct gmbe_extended_record wide = { marker->info_word, marker->virt_addr, 0, 0 };
    header.record_count++;
    compress(&wide, header.record_size, ZSTD_e_continue);
}

static void record_report(FILE *out)
{
    compress(NULL, 0, ZSTD_e_end);
    header.trace_only_cpl3 = setting_from_environment("GMBE_TRACE_ONLY_CPL3", gmbe_source.trace_only_cpl3);
    header.log_of_block_len = setting_from_environment("GMBE_LOG_OF_BLOCK_LEN", gmbe_source.log_of_block_len);
    header.log_of_tracing_ratio = setting_from_environment("GMBE_LOG_OF_TRACING_RATIO",
                                                           gmbe_source.log_of_tracing_ratio);
    if (fseek(file, 0, SEEK_SET) != 0 || fwrite(&header, sizeof header, 1, file) != 1 || fclose(file) != 0) {
        fprintf(stderr, "record: finishing %s failed: %s\n", output_option, strerror(errno));
        exit(1);
    }
    fprintf(out, "trace_file: %s\n", output_option);
    fprintf(out, "records: %" PRIu64 "\n", header.record_count);
    fprintf(out, "vcpus: %u\n", header.vcpu_count);
    fprintf(out, "file_bytes: %" PRIu64 "\n", compressed_bytes);
    if (compressed_bytes) {
        fprintf(out, "compression_ratio: %.1f\n",
                (double)(header.record_count * header.record_size + sizeof header) / (double)compressed_bytes);
    }
}

int main(int argc, char **argv)
{
    static const gmbe_option options[] = {
        { "output", &output_option, "the trace file to write" },
        { "level", &level_option, "zstd compression level" },
        { NULL },
    };
    static const gmbe_tool tool = {
        .name = "record", .summary = "Writes the trace to a compressed trace file, to analyse it again later.",
        .options = options, .init = record_init, .process = record_process, .report = record_report,
        .process_extended = record_process_extended, .marker = record_marker,
    };
    return gmbe_run_tool(&tool, argc, argv);
}
