/*
 * count - counts the records of a trace: by CPL, load/store, size, sign, vCPU.
 *
 * A workload info word of the form range=0xSTART-0xEND (END exclusive) also
 * counts the accesses inside that address range by kind, e.g.
 * range_load_4_signed: 101. That is how a workload points the tool at a buffer.
 */
#include "gmbe_reader.h"   /* first: it sets _GNU_SOURCE */

#include <inttypes.h>

/*
 * Info byte -> count: everything else derives from it. Four tables, which the
 * records take in turn, summed at the report: consecutive records mostly share
 * their info byte, and an increment of a counter waits for the one before it.
 * With one table the loop ran at the pace of that chain; with four, four
 * chains run side by side.
 */
#define INFO_TABLES 4
static uint64_t by_info_of[INFO_TABLES][256];
static uint64_t by_vcpu[65536];
static uint64_t range_by_info[256];
static uint64_t range_start, range_end;
static int have_range;
static const char *range_option;

#define MAX_MARKERS_SHOWN 1000
static struct gmbe_record markers[MAX_MARKERS_SHOWN];
static uint64_t phase_records[MAX_MARKERS_SHOWN + 1];
static uint64_t marker_count;

static int count_init(void)
{
    if (!range_option) {
        return 0;
    }
    if (sscanf(range_option, "%" SCNx64 "-%" SCNx64, &range_start, &range_end) != 2 || range_end < range_start) {
        fprintf(stderr, "count: range must be 0xSTART-0xEND, but %s isn't\n", range_option);
        return 2;
    }
    have_range = 1;
    return 0;
}

static void count_marker(const struct gmbe_record *m)
{
    if (marker_count < MAX_MARKERS_SHOWN) {
        markers[marker_count] = *m;
    }
    marker_count++;
}

/*
 * The fields count reads, from a run of records as the reader hands them over: 16-byte records
 * (process) or compact words (process_compact, which spares the reader widening them). Inlined
 * with a constant `compact`, each entry point below gets its own loops.
 */
static inline __attribute__((always_inline)) unsigned info_at(const void *records, size_t i, int compact)
{
    return compact ? gmbe_compact_info(((const uint64_t *)records)[i])
                   : gmbe_info(&((const struct gmbe_record *)records)[i]);
}

static inline __attribute__((always_inline)) unsigned vcpu_at(const void *records, size_t i, int compact)
{
    return compact ? gmbe_compact_vcpu(((const uint64_t *)records)[i])
                   : gmbe_vcpu(&((const struct gmbe_record *)records)[i]);
}

static inline __attribute__((always_inline)) uint64_t address_at(const void *records, size_t i, int compact)
{
    return compact ? gmbe_compact_address(((const uint64_t *)records)[i])
                   : ((const struct gmbe_record *)records)[i].virt_addr;
}

/* A vCPU's records come in runs (a whole buffer each): one add per run, not an increment per record. */
static inline __attribute__((always_inline)) void count_vcpus(const void *records, size_t n, int compact)
{
    if (n == 0) {
        return;
    }
    unsigned vcpu = vcpu_at(records, 0, compact);
    size_t start = 0;
    for (size_t i = 1; i < n; i++) {
        if (vcpu_at(records, i, compact) != vcpu) {
            by_vcpu[vcpu] += i - start;
            vcpu = vcpu_at(records, i, compact);
            start = i;
        }
    }
    by_vcpu[vcpu] += n - start;
}

/* Written out for the four tables: the compiler does not unroll a loop over them. */
_Static_assert(INFO_TABLES == 4, "count_infos takes the records four at a time");

static inline __attribute__((always_inline)) void count_infos(const void *records, size_t n, int compact)
{
    size_t i = 0;
    for (; i + INFO_TABLES <= n; i += INFO_TABLES) {
        by_info_of[0][info_at(records, i, compact)]++;
        by_info_of[1][info_at(records, i + 1, compact)]++;
        by_info_of[2][info_at(records, i + 2, compact)]++;
        by_info_of[3][info_at(records, i + 3, compact)]++;
    }
    for (; i < n; i++) {
        by_info_of[0][info_at(records, i, compact)]++;
    }
}

static inline __attribute__((always_inline)) void count_records(const void *records, size_t n, int compact)
{
    phase_records[marker_count < MAX_MARKERS_SHOWN ? marker_count : MAX_MARKERS_SHOWN] += n;
    count_infos(records, n, compact);
    count_vcpus(records, n, compact);
    if (have_range) {
        for (size_t i = 0; i < n; i++) {
            if (address_at(records, i, compact) - range_start < range_end - range_start) {
                range_by_info[info_at(records, i, compact)]++;
            }
        }
    }
}

static void count_process(const struct gmbe_record *records, size_t n)
{
    count_records(records, n, 0);
}

static void count_process_compact(const uint64_t *words, size_t n)
{
    count_records(words, n, 1);
}

static void print_kinds(FILE *out, const char *prefix, const uint64_t *table)
{
    /* Per kind of access: load/store, size, signedness, endianness (CPL folded). */
    uint64_t kinds[64] = { 0 };
    for (int info = 0; info < 256; info++) {
        kinds[info & 0x3f] += table[info];
    }
    for (int k = 0; k < 64; k++) {
        if (kinds[k]) {
            fprintf(out, "%s%s_%u_%s%s: %" PRIu64 "\n", prefix,
                    (k & GMBE_STORE_BIT) ? "store" : "load", 1u << (k & GMBE_SIZE_SHIFT_MASK),
                    (k & GMBE_SIGN_EXTEND_BIT) ? "signed" : "unsigned",
                    (k & GMBE_BIG_ENDIAN_BIT) ? "_big_endian" : "", kinds[k]);
        }
    }
}

static void count_report(FILE *out)
{
    uint64_t total = 0, loads = 0, stores = 0, cpl[4] = { 0 }, by_info[256] = { 0 };
    for (int info = 0; info < 256; info++) {
        for (int t = 0; t < INFO_TABLES; t++) {
            by_info[info] += by_info_of[t][info];
        }
    }
    for (int info = 0; info < 256; info++) {
        total += by_info[info];
        cpl[info >> GMBE_CPL_SHIFT] += by_info[info];
        if (info & GMBE_STORE_BIT) {
            stores += by_info[info];
        } else {
            loads += by_info[info];
        }
    }
    fprintf(out, "num_of_records: %" PRIu64 "\n", total);
    fprintf(out, "loads: %" PRIu64 "\nstores: %" PRIu64 "\n", loads, stores);
    for (int c = 0; c < 4; c++) {
        fprintf(out, "cpl_%d: %" PRIu64 "\n", c, cpl[c]);
    }
    print_kinds(out, "", by_info);
    for (int v = 0; v < 65536; v++) {
        if (by_vcpu[v]) {
            fprintf(out, "vcpu_%d: %" PRIu64 "\n", v, by_vcpu[v]);
        }
    }
    if (marker_count) {
        fprintf(out, "markers: %" PRIu64 "\n", marker_count);
        uint64_t shown = marker_count < MAX_MARKERS_SHOWN ? marker_count : MAX_MARKERS_SHOWN;
        fprintf(out, "phase_0_records: %" PRIu64 "\n", phase_records[0]);
        for (uint64_t k = 0; k < shown; k++) {
            fprintf(out, "marker_%" PRIu64 ": %s %" PRIu64 " vcpu=%u\n", k + 1, gmbe_marker_name(gmbe_marker_kind(&markers[k])),
                    markers[k].virt_addr, gmbe_vcpu(&markers[k]));
            fprintf(out, "phase_%" PRIu64 "_records: %" PRIu64 "\n", k + 1, phase_records[k + 1]);
        }
    }
    if (have_range) {
        uint64_t in_range = 0;
        for (int info = 0; info < 256; info++) {
            in_range += range_by_info[info];
        }
        fprintf(out, "range_records: %" PRIu64 "\n", in_range);
        print_kinds(out, "range_", range_by_info);
    }
}

int main(int argc, char **argv)
{
    static const gmbe_option options[] = {
        { "range", &range_option, "0xSTART-0xEND: also count the accesses inside it, by kind "
                                  "(a workload passes it as an info word)" },
        { NULL },
    };
    static const gmbe_tool tool = {
        .name = "count", .summary = "Counts the records by CPL, load/store, size, sign and vCPU.",
        .options = options, .init = count_init, .process = count_process,
        .process_compact = count_process_compact, .report = count_report, .marker = count_marker,
    };
    return gmbe_run_tool(&tool, argc, argv);
}
