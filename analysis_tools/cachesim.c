/*
 * cachesim - set-associative caches with LRU replacement: an L1 and an
 * optional L2 (accessed on L1 misses), each SIZE:WAYS:LINE, e.g. 32k:8:64.
 * An access that spans two lines touches both. Loads and stores alike
 * (write-allocate). Reports hits, misses and the miss ratio per level.
 */
#include "gmbe_reader.h"   /* first: it sets _GNU_SOURCE */

typedef struct {
    const char *name;
    uint64_t size, ways, line, sets;
    unsigned line_shift;
    uint64_t *tags;          /* sets x ways, most recently used first; 0 empty, else line + 1 */
    uint64_t accesses, misses;
} cache;

static const char *l1_option = "32k:8:64", *l2_option = "1m:16:64";
static cache l1 = { .name = "l1" }, l2 = { .name = "l2" };
static int have_l2;

static int is_power_of_two(uint64_t v)
{
    return v && !(v & (v - 1));
}

static int configure(cache *c, const char *spec)
{
    char size[32], ways[32], line[32];
    if (sscanf(spec, "%31[^:]:%31[^:]:%31s", size, ways, line) != 3 || gmbe_parse_size(size, &c->size) ||
        gmbe_parse_size(ways, &c->ways) || gmbe_parse_size(line, &c->line) || !is_power_of_two(c->line) ||
        c->ways == 0 || c->ways > 1024 || c->size % (c->ways * c->line) != 0 ||
        !is_power_of_two(c->size / (c->ways * c->line))) {
        fprintf(stderr, "cachesim: %s must be SIZE:WAYS:LINE with a power-of-two line and number of sets "
                        "(e.g. 32k:8:64), but %s isn't\n", c->name, spec);
        return 2;
    }
    c->sets = c->size / (c->ways * c->line);
    c->line_shift = (unsigned)__builtin_ctzll(c->line);
    c->tags = calloc(c->sets * c->ways, sizeof *c->tags);
    return 0;
}

static int cachesim_init(void)
{
    if (configure(&l1, l1_option)) {
        return 2;
    }
    have_l2 = strcmp(l2_option, "none") != 0;
    return have_l2 ? configure(&l2, l2_option) : 0;
}

/* Looks the line up; returns whether it hit. The set is kept in LRU order. */
static int touch(cache *c, uint64_t line)
{
    uint64_t *set = c->tags + (line & (c->sets - 1)) * c->ways;
    uint64_t tag = line + 1;
    c->accesses++;
    uint64_t w = 0;
    while (w < c->ways && set[w] != tag) {
        w++;
    }
    int hit = w < c->ways;
    if (!hit) {
        c->misses++;
        w = c->ways - 1;   /* the least recently used goes */
    }
    memmove(set + 1, set, w * sizeof *set);
    set[0] = tag;
    return hit;
}

static void access_bytes(uint64_t addr, unsigned size)
{
    uint64_t first = addr >> l1.line_shift, last = (addr + size - 1) >> l1.line_shift;
    for (uint64_t line = first; line <= last; line++) {
        if (!touch(&l1, line) && have_l2) {
            touch(&l2, (line << l1.line_shift) >> l2.line_shift);
        }
    }
}

static void cachesim_process(const struct gmbe_record *records, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        access_bytes(records[i].virt_addr, gmbe_size(&records[i]));
    }
}

static void report_level(FILE *out, const cache *c)
{
    fprintf(out, "%s_geometry: %" PRIu64 " bytes, %" PRIu64 " ways, %" PRIu64 "-byte lines, %" PRIu64 " sets\n",
            c->name, c->size, c->ways, c->line, c->sets);
    fprintf(out, "%s_accesses: %" PRIu64 "\n%s_hits: %" PRIu64 "\n%s_misses: %" PRIu64 "\n", c->name, c->accesses,
            c->name, c->accesses - c->misses, c->name, c->misses);
    fprintf(out, "%s_miss_ratio: %.6f\n", c->name, c->accesses ? (double)c->misses / (double)c->accesses : 0.0);
}

static void cachesim_report(FILE *out)
{
    report_level(out, &l1);
    if (have_l2) {
        report_level(out, &l2);
    }
}

int main(int argc, char **argv)
{
    static const gmbe_option options[] = {
        { "l1", &l1_option, "the L1 cache, SIZE:WAYS:LINE" },
        { "l2", &l2_option, "the L2 cache, SIZE:WAYS:LINE, or none" },
        { NULL },
    };
    static const gmbe_tool tool = {
        .name = "cachesim", .summary = "Simulates set-associative LRU caches (L1, L2): hits, misses, ratios.",
        .options = options, .init = cachesim_init, .process = cachesim_process, .report = cachesim_report,
    };
    return gmbe_run_tool(&tool, argc, argv);
}
