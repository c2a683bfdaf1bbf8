/*
 * reuse - the reuse-distance histogram: for each access, how many distinct
 * blocks (bytes, words, cache lines: --granularity) were accessed since the
 * last access to the same block; a first access is "cold". Exact: a Fenwick
 * tree over time marks each block's latest access, and is compacted when time
 * runs past its end. Bins are powers of two. --plot draws the histogram with
 * its cumulative curve.
 */
#include "gmbe_reader.h"   /* first: it sets _GNU_SOURCE */
#include "gmbe_hash.h"
#include "gmbe_plot.h"

#define BINS 65   /* distance 0, then [2^(k-1), 2^k - 1] for k = 1..64 */

static const char *granularity_option = "line", *plot_option;
static unsigned block_shift;
static const char *block_name;
static gmbe_hash last_access;     /* block -> time of its latest access + 1 */
static uint32_t *fenwick;         /* 1 at the time of each block's latest access */
static uint64_t capacity = 1 << 22, now;
static uint64_t histogram[BINS], cold, accesses;

static int reuse_init(void)
{
    uint64_t bytes;
    if (strcmp(granularity_option, "byte") == 0) {
        bytes = 1;
    } else if (strcmp(granularity_option, "word") == 0) {
        bytes = 8;
    } else if (strcmp(granularity_option, "line") == 0) {
        bytes = 64;
    } else if (gmbe_parse_size(granularity_option, &bytes) != 0 || !bytes || (bytes & (bytes - 1))) {
        fprintf(stderr, "reuse: granularity must be byte, word, line or a power of two of bytes, but %s isn't\n",
                granularity_option);
        return 2;
    }
    block_shift = (unsigned)__builtin_ctzll(bytes);
    block_name = bytes == 1 ? "byte" : bytes == 8 ? "word" : bytes == 64 ? "line" : "block";
    gmbe_hash_init(&last_access, sizeof(uint64_t));
    fenwick = calloc(capacity + 1, sizeof *fenwick);
    return 0;
}

static void fenwick_add(uint64_t i, int32_t delta)
{
    for (i++; i <= capacity; i += i & -i) {
        fenwick[i] += (uint32_t)delta;
    }
}

/* Marks at times [0, i). */
static uint64_t fenwick_prefix(uint64_t i)
{
    uint64_t sum = 0;
    for (; i > 0; i -= i & -i) {
        sum += fenwick[i];
    }
    return sum;
}

typedef struct {
    uint64_t time;
    uint64_t *slot;
} live_block;

static int by_time(const void *a, const void *b)
{
    const live_block *x = a, *y = b;
    return (x->time > y->time) - (x->time < y->time);
}

/* Time ran past the tree: renumber the blocks' latest accesses 0..D-1, keeping their order. */
static void compact(void)
{
    live_block *live = malloc(last_access.count * sizeof *live);
    size_t n = 0;
    for (size_t i = 0; i < last_access.capacity; i++) {
        if (last_access.keys[i]) {
            uint64_t *slot = (uint64_t *)last_access.values + i;
            live[n++] = (live_block){ *slot - 1, slot };
        }
    }
    qsort(live, n, sizeof *live, by_time);
    while (n * 8 > capacity) {
        capacity *= 2;   /* room for 7 accesses per live block: compaction stays rare */
    }
    free(fenwick);
    fenwick = calloc(capacity + 1, sizeof *fenwick);
    for (size_t i = 0; i < n; i++) {
        *live[i].slot = i + 1;
        fenwick_add(i, 1);
    }
    now = n;
    free(live);
}

static unsigned bin_of(uint64_t distance)
{
    return distance == 0 ? 0 : 64 - (unsigned)__builtin_clzll(distance);
}

static void reuse_process(const struct gmbe_record *records, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (now == capacity) {
            compact();
        }
        int inserted;
        uint64_t *last = gmbe_hash_get(&last_access, records[i].virt_addr >> block_shift, &inserted);
        accesses++;
        if (!inserted && *last == now) {
            histogram[0]++;   /* the latest access was to this block too: the order stays as it is */
            continue;
        }
        if (inserted) {
            cold++;
        } else {
            /* Every block has one mark, so the marks before `now` number the blocks seen. */
            uint64_t previous = *last - 1;
            histogram[bin_of(last_access.count - fenwick_prefix(previous + 1))]++;
            fenwick_add(previous, -1);
        }
        fenwick_add(now, 1);
        *last = ++now;
    }
}

static void bin_label(char *out, size_t size, unsigned bin)
{
    if (bin <= 1) {
        snprintf(out, size, "%u", bin);
    } else {
        snprintf(out, size, "%" PRIu64 "-%" PRIu64, UINT64_C(1) << (bin - 1), (UINT64_C(1) << (bin - 1)) * 2 - 1);
    }
}

static void plot_histogram(FILE *out, unsigned last_bin)
{
    char data[4096], label[64];
    FILE *f = gmbe_plot_data(data, sizeof data);
    if (!f) {
        fprintf(out, "plot: cannot write its data (%s)\n", strerror(errno));
        return;
    }
    fprintf(f, "Reuse distances of %'" PRIu64 " accesses (%u-byte %ss)\t%s\n", accesses, 1u << block_shift,
            block_name, block_name);
    for (unsigned b = 0; b <= last_bin; b++) {
        bin_label(label, sizeof label, b);
        fprintf(f, "%s\t%" PRIu64 "\n", label, histogram[b]);
    }
    fprintf(f, "cold\t%" PRIu64 "\n", cold);
    fclose(f);
    gmbe_report_plot(out, "reuse", data, plot_option);
}

static void reuse_report(FILE *out)
{
    char label[64];
    unsigned last_bin = 0;
    for (unsigned b = 0; b < BINS; b++) {
        if (histogram[b]) {
            last_bin = b;
        }
    }
    fprintf(out, "granularity_bytes: %u\naccesses: %" PRIu64 "\ncold: %" PRIu64 "\n", 1u << block_shift, accesses,
            cold);
    for (unsigned b = 0; b <= last_bin && accesses > cold; b++) {
        bin_label(label, sizeof label, b);
        fprintf(out, "distance_%s: %" PRIu64 "\n", label, histogram[b]);
    }
    if (plot_option) {
        plot_histogram(out, last_bin);
    }
}

int main(int argc, char **argv)
{
    static const gmbe_option options[] = {
        { "granularity", &granularity_option, "byte, word (8), line (64) or a power of two of bytes" },
        { "plot", &plot_option, "draw the histogram and its cumulative curve into this PNG" },
        { NULL },
    };
    static const gmbe_tool tool = {
        .name = "reuse", .summary = "The reuse-distance histogram at the granularity you choose.",
        .options = options, .init = reuse_init, .process = reuse_process, .report = reuse_report,
    };
    return gmbe_run_tool(&tool, argc, argv);
}
