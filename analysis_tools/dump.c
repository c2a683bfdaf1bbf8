/*
 * dump - the records of a trace as text, one per line, with filters (mtrace's
 * m2text, on the shared reader so it never falls behind the format):
 *
 *   <index> vcpu=<n> cpl=<n> <load|store> size=<bytes> <unsigned|signed> <le|be> 0x<address>
 *
 * followed by ` phys=0x<address> pc=0x<address>` for extended records, and
 * markers as `<index> vcpu=<n> <region_begin|region_end|marker|instruction_limit> <number>`
 * (shown whatever the filters).
 *
 * index is the record's position in the whole stream (before filtering).
 */
#include "gmbe_reader.h"   /* first: it sets _GNU_SOURCE */
#include "gmbe_text_output.h"

static const char *range_option, *cpl_option, *kind_option, *vcpu_option;
static uint64_t range_start, range_end;
static int want_cpl = -1, want_store = -1;
static long want_vcpu = -1;
static uint64_t index_of_next;

static int dump_init(void)
{
    if (range_option && (sscanf(range_option, "%" SCNx64 "-%" SCNx64, &range_start, &range_end) != 2 ||
                         range_end < range_start)) {
        fprintf(stderr, "dump: range must be 0xSTART-0xEND, but %s isn't\n", range_option);
        return 2;
    }
    if (cpl_option && (sscanf(cpl_option, "%d", &want_cpl) != 1 || want_cpl < 0 || want_cpl > 3)) {
        fprintf(stderr, "dump: cpl must be 0, 1, 2 or 3, but %s isn't\n", cpl_option);
        return 2;
    }
    if (kind_option) {
        if (strcmp(kind_option, "load") != 0 && strcmp(kind_option, "store") != 0) {
            fprintf(stderr, "dump: kind must be load or store, but %s isn't\n", kind_option);
            return 2;
        }
        want_store = strcmp(kind_option, "store") == 0;
    }
    if (vcpu_option && (sscanf(vcpu_option, "%ld", &want_vcpu) != 1 || want_vcpu < 0 || want_vcpu > 65535)) {
        fprintf(stderr, "dump: vcpu must be in range [0, 65535], but %s isn't\n", vcpu_option);
        return 2;
    }
    return gmbe_open_text_output("dump");
}

static inline int wanted(const struct gmbe_record *r)
{
    return (!range_option || r->virt_addr - range_start < range_end - range_start) &&
           (want_cpl < 0 || (int)gmbe_cpl(r) == want_cpl) &&
           (want_store < 0 || gmbe_is_store(r) == want_store) &&
           (want_vcpu < 0 || (long)gmbe_vcpu(r) == want_vcpu);
}

static void print_access(const struct gmbe_record *r, const char *end)
{
    fprintf(gmbe_text, "%" PRIu64 " vcpu=%u cpl=%u %s size=%u %s %s 0x%" PRIx64 "%s", index_of_next,
            gmbe_vcpu(r), gmbe_cpl(r), gmbe_is_store(r) ? "store" : "load", gmbe_size(r),
            gmbe_is_sign_extended(r) ? "signed" : "unsigned", gmbe_is_big_endian(r) ? "be" : "le",
            r->virt_addr, end);
}

static void dump_process(const struct gmbe_record *records, size_t n)
{
    for (size_t i = 0; i < n; i++, index_of_next++) {
        if (wanted(&records[i]) && gmbe_take_line()) {
            print_access(&records[i], "\n");
        }
    }
}

static void dump_process_extended(const struct gmbe_extended_record *records, size_t n)
{
    for (size_t i = 0; i < n; i++, index_of_next++) {
        struct gmbe_record r = { records[i].info_word, records[i].virt_addr };
        if (wanted(&r) && gmbe_take_line()) {
            print_access(&r, "");
            fprintf(gmbe_text, " phys=0x%" PRIx64 " pc=0x%" PRIx64 "\n", records[i].phys_addr, records[i].pc);
        }
    }
}

static void dump_marker(const struct gmbe_record *m)
{
    if (gmbe_take_line()) {
        fprintf(gmbe_text, "%" PRIu64 " vcpu=%u %s %" PRIu64 "\n", index_of_next, gmbe_vcpu(m),
                gmbe_marker_name(gmbe_marker_kind(m)), m->virt_addr);
    }
    index_of_next++;
}

static void dump_report(FILE *out)
{
    gmbe_close_text_output(out);
}

int main(int argc, char **argv)
{
    static const gmbe_option options[] = {
        { "range", &range_option, "0xSTART-0xEND (END exclusive): only accesses to these addresses" },
        { "cpl", &cpl_option, "only accesses by code at this CPL" },
        { "kind", &kind_option, "load or store: only these" },
        { "vcpu", &vcpu_option, "only accesses by this vCPU" },
        { "limit", &gmbe_limit_option, "at most this many lines (1000 under memory_tracer without --output)" },
        { "output", &gmbe_output_path, "write the lines to this file" },
        { NULL },
    };
    static const gmbe_tool tool = {
        .name = "dump", .summary = "Prints the records as text, one per line, with filters.",
        .options = options, .init = dump_init, .process = dump_process, .report = dump_report,
        .process_extended = dump_process_extended, .marker = dump_marker,
    };
    return gmbe_run_tool(&tool, argc, argv);
}
