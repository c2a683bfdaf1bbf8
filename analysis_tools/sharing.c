/*
 * sharing - cache-line sharing between vCPUs (mtrace's sharing analysis): for
 * each cache line, which vCPUs read it and which wrote it, and the accesses
 * that would make inter-core traffic in a write-invalidate protocol:
 *
 *   read_after_remote_write    a read by a vCPU whose copy another vCPU's
 *                              write invalidated (or that never had one
 *                              since another vCPU wrote the line)
 *   write_after_remote_access  a write to a line other vCPUs hold a copy of
 *
 * Each line keeps the set of vCPUs holding a valid copy: a read adds the
 * reader, a write leaves only the writer. The model counts vCPUs 0-63 (others
 * fold onto 63), and the order is the stream's: each vCPU's records are in
 * its program order and vCPUs are interleaved as their buffers were written,
 * so counts are exact for one vCPU and approximate across several.
 *
 * The report gives totals, the lines with the most traffic (--top), and every
 * line a workload info word watch=ADDRESS names.
 */
#include "gmbe_reader.h"   /* first: it sets _GNU_SOURCE */
#include "gmbe_hash.h"

typedef struct {
    uint64_t readers, writers;     /* vCPU masks: ever read, ever written */
    uint64_t holders;              /* vCPUs with a valid copy */
    uint64_t reads, writes;
    uint64_t read_after_remote_write, write_after_remote_access;
} line_state;

static const char *line_size_option = "64";
static const char *top_option = "20";
static unsigned line_shift;
static uint64_t top_count;
static gmbe_hash lines;
static uint64_t total_reads_after_remote_write, total_writes_after_remote_access;

static int sharing_init(void)
{
    uint64_t size;
    if (gmbe_parse_size(line_size_option, &size) != 0 || size == 0 || (size & (size - 1)) != 0) {
        fprintf(stderr, "sharing: line_size must be a power of two, but %s isn't\n", line_size_option);
        return 2;
    }
    line_shift = (unsigned)__builtin_ctzll(size);
    char *end;
    top_count = strtoull(top_option, &end, 10);
    if (*end || end == top_option) {
        fprintf(stderr, "sharing: top must be a number of lines, but %s isn't\n", top_option);
        return 2;
    }
    gmbe_hash_init(&lines, sizeof(line_state));
    return 0;
}

/* One bit per vCPU in a 64-bit mask: memory_tracer --smp is limited to this many. */
#define MAX_VCPUS 64

static void sharing_process(const struct gmbe_record *records, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        const struct gmbe_record *r = &records[i];
        unsigned vcpu = gmbe_vcpu(r) < MAX_VCPUS ? gmbe_vcpu(r) : MAX_VCPUS - 1;
        uint64_t me = UINT64_C(1) << vcpu;
        int inserted;
        line_state *line = gmbe_hash_get(&lines, r->virt_addr >> line_shift, &inserted);
        if (gmbe_is_store(r)) {
            line->writes++;
            line->writers |= me;
            if (line->holders & ~me) {
                line->write_after_remote_access++;
                total_writes_after_remote_access++;
            }
            line->holders = me;
        } else {
            line->reads++;
            line->readers |= me;
            if (!(line->holders & me) && (line->writers & ~me)) {
                line->read_after_remote_write++;
                total_reads_after_remote_write++;
            }
            line->holders |= me;
        }
    }
}

static void print_vcpus(FILE *out, const char *name, uint64_t mask)
{
    fprintf(out, " %s=", name);
    if (!mask) {
        fprintf(out, "none");
    }
    for (int v = 0, first = 1; v < MAX_VCPUS; v++) {
        if (mask & (UINT64_C(1) << v)) {
            fprintf(out, first ? "%d" : ",%d", v);
            first = 0;
        }
    }
}

static void print_line(FILE *out, const char *label, uint64_t line_number, const line_state *line)
{
    fprintf(out, "%s 0x%" PRIx64 ":", label, line_number << line_shift);
    print_vcpus(out, "readers", line->readers);
    print_vcpus(out, "writers", line->writers);
    fprintf(out, " reads=%" PRIu64 " writes=%" PRIu64 " read_after_remote_write=%" PRIu64
            " write_after_remote_access=%" PRIu64 "\n", line->reads, line->writes,
            line->read_after_remote_write, line->write_after_remote_access);
}

static uint64_t traffic(const line_state *line)
{
    return line->read_after_remote_write + line->write_after_remote_access;
}

static int by_traffic(const void *a, const void *b, void *values)
{
    const line_state *x = (const line_state *)((char *)values + *(const size_t *)a * sizeof(line_state));
    const line_state *y = (const line_state *)((char *)values + *(const size_t *)b * sizeof(line_state));
    return traffic(y) > traffic(x) ? 1 : traffic(y) < traffic(x) ? -1 : 0;
}

static void sharing_report(FILE *out)
{
    uint64_t shared = 0, with_traffic = 0;
    size_t *slots = malloc((lines.count + 1) * sizeof *slots);
    size_t n = 0;
    for (size_t i = 0; i < lines.capacity; i++) {
        if (!lines.keys[i]) {
            continue;
        }
        const line_state *line = (const line_state *)((char *)lines.values + i * sizeof(line_state));
        shared += __builtin_popcountll(line->readers | line->writers) > 1;
        if (traffic(line)) {
            with_traffic++;
            slots[n++] = i;
        }
    }
    qsort_r(slots, n, sizeof *slots, by_traffic, lines.values);
    fprintf(out, "line_size: %u\n", 1u << line_shift);
    fprintf(out, "lines: %zu\n", lines.count);
    fprintf(out, "lines_used_by_several_vcpus: %" PRIu64 "\n", shared);
    fprintf(out, "lines_with_traffic: %" PRIu64 "\n", with_traffic);
    fprintf(out, "read_after_remote_write: %" PRIu64 "\n", total_reads_after_remote_write);
    fprintf(out, "write_after_remote_access: %" PRIu64 "\n", total_writes_after_remote_access);
    for (size_t k = 0; k < n && k < top_count; k++) {
        print_line(out, "top_line", lines.keys[slots[k]] - 1,
                   (const line_state *)((char *)lines.values + slots[k] * sizeof(line_state)));
    }
    free(slots);
    for (int w = 0; w < gmbe_info_count; w++) {
        uint64_t address;
        if (sscanf(gmbe_info_words[w], "watch=%" SCNx64, &address) != 1) {
            continue;
        }
        int inserted;
        line_state *line = gmbe_hash_get(&lines, address >> line_shift, &inserted);
        print_line(out, "watched_line", address >> line_shift, line);
    }
}

int main(int argc, char **argv)
{
    static const gmbe_option options[] = {
        { "line_size", &line_size_option, "cache line size in bytes (a power of two)" },
        { "top", &top_option, "how many of the lines with the most traffic to list" },
        { NULL },
    };
    static const gmbe_tool tool = {
        .name = "sharing",
        .summary = "Cache-line sharing between vCPUs: who read and wrote each line, and the inter-core "
                   "traffic (mtrace). Info words watch=ADDRESS report those lines.",
        .options = options, .init = sharing_init, .process = sharing_process, .report = sharing_report,
    };
    return gmbe_run_tool(&tool, argc, argv);
}
