/*
 * export - a trace in a format that simulators read, one access per line:
 *   din       Dinero IV:           "<label> <hex address>", label 0 read, 1 write
 *   lackey    Valgrind lackey:     " L <address %08x>,<size>" (S for stores)
 *   dramsim3  DRAMsim3 trace CPU:  "0x<hex address> <READ|WRITE> <cycle>", the
 *             record's index in the stream standing in for the cycle
 *   parquet   a Parquet table, one column per record field (needs --output):
 *             written by the Python exporter, which this tool becomes
 */
#include "gmbe_reader.h"   /* first: it sets _GNU_SOURCE */
#include "gmbe_text_output.h"

#ifndef GMBE_PARQUET_EXPORT_SCRIPT
#define GMBE_PARQUET_EXPORT_SCRIPT "export_parquet.py"
#endif

enum format { DIN, LACKEY, DRAMSIM3 };

static const char *format_option = "din";
static enum format format;
static uint64_t index_of_next;
static char **arguments;   /* the command line, for the Parquet exporter to take over */

/* Parquet needs Arrow: the Python exporter (memtracer.trace.parquet) takes the same command line.
 * Nothing has been read yet, and it does the protocol itself under memory_tracer. */
static int become_parquet_exporter(void)
{
    int argc = 0;
    while (arguments[argc]) {
        argc++;
    }
    char **argv = calloc(argc + 2, sizeof(char *));
    argv[0] = "python3";
    argv[1] = GMBE_PARQUET_EXPORT_SCRIPT;
    memcpy(&argv[2], &arguments[1], (argc - 1) * sizeof(char *));
    execvp("python3", argv);
    fprintf(stderr, "export: cannot start python3 %s: %s\n", GMBE_PARQUET_EXPORT_SCRIPT, strerror(errno));
    return 1;
}

static int export_init(void)
{
    if (strcmp(format_option, "din") == 0) {
        format = DIN;
    } else if (strcmp(format_option, "lackey") == 0) {
        format = LACKEY;
    } else if (strcmp(format_option, "dramsim3") == 0) {
        format = DRAMSIM3;
    } else if (strcmp(format_option, "parquet") == 0) {
        return become_parquet_exporter();
    } else {
        fprintf(stderr, "export: format must be din, lackey, dramsim3 or parquet, but %s isn't\n", format_option);
        return 2;
    }
    return gmbe_open_text_output("export");
}

static void export_process(const struct gmbe_record *records, size_t n)
{
    for (size_t i = 0; i < n; i++, index_of_next++) {
        const struct gmbe_record *r = &records[i];
        if (!gmbe_take_line()) {
            return;
        }
        int store = gmbe_is_store(r);
        switch (format) {
        case DIN:
            fprintf(gmbe_text, "%d %" PRIx64 "\n", store, r->virt_addr);
            break;
        case LACKEY:
            fprintf(gmbe_text, " %c %08" PRIx64 ",%u\n", store ? 'S' : 'L', r->virt_addr, gmbe_size(r));
            break;
        case DRAMSIM3:
            fprintf(gmbe_text, "0x%" PRIx64 " %s %" PRIu64 "\n", r->virt_addr, store ? "WRITE" : "READ",
                    index_of_next);
            break;
        }
    }
}

static void export_report(FILE *out)
{
    gmbe_close_text_output(out);
}

int main(int argc, char **argv)
{
    static const gmbe_option options[] = {
        { "format", &format_option, "din (Dinero IV), lackey (Valgrind lackey), dramsim3 or parquet" },
        { "output", &gmbe_output_path, "write the lines to this file" },
        { "limit", &gmbe_limit_option, "at most this many lines (1000 under memory_tracer without --output)" },
        { NULL },
    };
    static const gmbe_tool tool = {
        .name = "export", .summary = "Writes the trace in a format that simulators read.",
        .options = options, .init = export_init, .process = export_process, .report = export_report,
    };
    arguments = argv;
    return gmbe_run_tool(&tool, argc, argv);
}
