/*
 * pages - per-page reads and writes, the hottest pages, and the working set
 * (distinct pages touched) in each window of the stream. --plot draws a
 * page x time heatmap of the hottest pages.
 */
#include "gmbe_reader.h"   /* first: it sets _GNU_SOURCE */
#include "gmbe_hash.h"
#include "gmbe_plot.h"

typedef struct {
    uint64_t reads, writes;
    uint64_t last_window;        /* + 1; 0: never */
    uint32_t *window_counts;     /* sparse: (window, count) pairs, appended */
    size_t pairs, pairs_cap;
} page_stats;

static const char *page_size_option = "4k", *top_option = "10", *window_option = "1000000", *plot_option;
static unsigned page_shift;
static uint64_t top_n, window_records;
static gmbe_hash pages;
static uint64_t records_seen, window_index;
static uint64_t *working_set;            /* per window */
static size_t working_set_cap;

static int pages_init(void)
{
    uint64_t page_size;
    if (gmbe_parse_size(page_size_option, &page_size) != 0 || (page_size != 4096 && page_size != (2u << 20))) {
        fprintf(stderr, "pages: page_size must be 4k or 2m, but %s isn't\n", page_size_option);
        return 2;
    }
    page_shift = page_size == 4096 ? 12 : 21;
    if (gmbe_parse_size(top_option, &top_n) != 0) {
        fprintf(stderr, "pages: top must be a whole number, but %s isn't\n", top_option);
        return 2;
    }
    if (gmbe_parse_size(window_option, &window_records) != 0 || window_records == 0) {
        fprintf(stderr, "pages: window must be a positive number of records, but %s isn't\n", window_option);
        return 2;
    }
    gmbe_hash_init(&pages, sizeof(page_stats));
    return 0;
}

static void note_window(page_stats *p)
{
    if (p->last_window == window_index + 1) {
        p->window_counts[p->pairs * 2 - 1]++;
        return;
    }
    p->last_window = window_index + 1;
    if (p->pairs == p->pairs_cap) {
        p->pairs_cap = p->pairs_cap ? p->pairs_cap * 2 : 4;
        p->window_counts = realloc(p->window_counts, p->pairs_cap * 2 * sizeof *p->window_counts);
    }
    p->window_counts[p->pairs * 2] = (uint32_t)window_index;
    p->window_counts[p->pairs * 2 + 1] = 1;
    p->pairs++;
    while (window_index >= working_set_cap) {
        size_t old = working_set_cap;
        working_set_cap = old ? old * 2 : 64;
        working_set = realloc(working_set, working_set_cap * sizeof *working_set);
        memset(working_set + old, 0, (working_set_cap - old) * sizeof *working_set);
    }
    working_set[window_index]++;
}

static void pages_process(const struct gmbe_record *records, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int inserted;
        page_stats *p = gmbe_hash_get(&pages, records[i].virt_addr >> page_shift, &inserted);
        if (gmbe_is_store(&records[i])) {
            p->writes++;
        } else {
            p->reads++;
        }
        note_window(p);
        if (++records_seen % window_records == 0) {
            window_index++;
        }
    }
}

typedef struct {
    uint64_t page, total;
    page_stats *stats;
} ranked;

static int by_total_descending(const void *a, const void *b)
{
    const ranked *x = a, *y = b;
    return x->total != y->total ? (x->total < y->total ? 1 : -1) : (x->page > y->page) - (x->page < y->page);
}

static int by_page(const void *a, const void *b)
{
    const ranked *x = a, *y = b;
    return (x->page > y->page) - (x->page < y->page);
}

static void plot_heatmap(FILE *out, ranked *hot, size_t count, size_t windows)
{
    char data[4096];
    FILE *f = gmbe_plot_data(data, sizeof data);
    if (!f) {
        fprintf(out, "plot: cannot write its data (%s)\n", strerror(errno));
        return;
    }
    qsort(hot, count, sizeof *hot, by_page);
    fprintf(f, "Accesses per %s page over time (%zu hottest)\t%" PRIu64 "\n", page_shift == 12 ? "4 KiB" : "2 MiB",
            count, window_records);
    uint32_t *row = calloc(windows, sizeof *row);
    for (size_t i = 0; i < count; i++) {
        memset(row, 0, windows * sizeof *row);
        for (size_t k = 0; k < hot[i].stats->pairs; k++) {
            row[hot[i].stats->window_counts[k * 2]] = hot[i].stats->window_counts[k * 2 + 1];
        }
        fprintf(f, "0x%" PRIx64, hot[i].page << page_shift);
        for (size_t w = 0; w < windows; w++) {
            fprintf(f, "\t%u", row[w]);
        }
        fputc('\n', f);
    }
    free(row);
    fclose(f);
    gmbe_report_plot(out, "heatmap", data, plot_option);
}

static void pages_report(FILE *out)
{
    ranked *all = malloc((pages.count + 1) * sizeof *all);
    size_t count = 0;
    uint64_t reads = 0, writes = 0;
    for (size_t i = 0; i < pages.capacity; i++) {
        if (pages.keys[i]) {
            page_stats *p = (page_stats *)pages.values + i;
            all[count++] = (ranked){ pages.keys[i] - 1, p->reads + p->writes, p };
            reads += p->reads;
            writes += p->writes;
        }
    }
    qsort(all, count, sizeof *all, by_total_descending);
    size_t windows = records_seen ? (size_t)((records_seen - 1) / window_records + 1) : 0;
    fprintf(out, "page_size: %u\npages_touched: %zu\nreads: %" PRIu64 "\nwrites: %" PRIu64 "\n",
            1u << page_shift, count, reads, writes);
    for (size_t i = 0; i < count && i < top_n; i++) {
        fprintf(out, "top_%zu: 0x%" PRIx64 " reads=%" PRIu64 " writes=%" PRIu64 "\n", i + 1,
                all[i].page << page_shift, all[i].stats->reads, all[i].stats->writes);
    }
    uint64_t peak = 0, sum = 0;
    fprintf(out, "working_set_window_records: %" PRIu64 "\nworking_set_pages:", window_records);
    for (size_t w = 0; w < windows; w++) {
        fprintf(out, " %" PRIu64, working_set[w]);
        peak = working_set[w] > peak ? working_set[w] : peak;
        sum += working_set[w];
    }
    fprintf(out, "\nworking_set_peak: %" PRIu64 "\n", peak);
    if (windows) {
        fprintf(out, "working_set_mean: %.1f\n", (double)sum / (double)windows);
    }
    if (plot_option) {
        plot_heatmap(out, all, count < 64 ? count : 64, windows);
    }
    free(all);
}

int main(int argc, char **argv)
{
    static const gmbe_option options[] = {
        { "page_size", &page_size_option, "4k or 2m" },
        { "top", &top_option, "how many of the hottest pages to list" },
        { "window", &window_option, "records per window of the working-set series and the heatmap" },
        { "plot", &plot_option, "draw a page x time heatmap of the 64 hottest pages into this PNG" },
        { NULL },
    };
    static const gmbe_tool tool = {
        .name = "pages", .summary = "Per-page reads and writes, the hottest pages, the working set over time.",
        .options = options, .init = pages_init, .process = pages_process, .report = pages_report,
    };
    return gmbe_run_tool(&tool, argc, argv);
}
