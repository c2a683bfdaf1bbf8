/*
 * gmbe_text_output.h - where a tool that turns records into text writes them
 * (dump, export): to --output FILE; when replaying a file, to standard output;
 * under memory_tracer without --output, the first --limit lines go into the
 * analysis output (a whole trace would drown it).
 */
#ifndef GMBE_TEXT_OUTPUT_H
#define GMBE_TEXT_OUTPUT_H

#include "gmbe_reader.h"

#define GMBE_DEFAULT_LIMIT_UNDER_MEMORY_TRACER 1000

static const char *gmbe_output_path;
static const char *gmbe_limit_option;
static FILE *gmbe_text;
static char *gmbe_text_buffer;
static size_t gmbe_text_buffer_size;
static uint64_t gmbe_lines_left = UINT64_MAX;
static uint64_t gmbe_lines_written;

static int gmbe_open_text_output(const char *tool_name)
{
    if (gmbe_limit_option) {
        if (gmbe_parse_size(gmbe_limit_option, &gmbe_lines_left) != 0) {
            fprintf(stderr, "%s: limit must be a number of lines, but %s isn't\n", tool_name, gmbe_limit_option);
            return 2;
        }
    }
    if (gmbe_output_path) {
        gmbe_text = fopen(gmbe_output_path, "w");
        if (!gmbe_text) {
            fprintf(stderr, "%s: cannot write %s: %s\n", tool_name, gmbe_output_path, strerror(errno));
            return 2;
        }
    } else if (gmbe_replaying) {
        gmbe_text = stdout;
    } else {
        gmbe_text = open_memstream(&gmbe_text_buffer, &gmbe_text_buffer_size);
        if (!gmbe_limit_option) {
            gmbe_lines_left = GMBE_DEFAULT_LIMIT_UNDER_MEMORY_TRACER;
        }
    }
    setvbuf(gmbe_text, NULL, _IOFBF, 1 << 20);
    return 0;
}

/* Whether one more line may be written (and counts it). */
static inline int gmbe_take_line(void)
{
    if (gmbe_lines_left == 0) {
        return 0;
    }
    gmbe_lines_left--;
    gmbe_lines_written++;
    return 1;
}

/* Finishes the text; under memory_tracer without --output, it becomes the report. */
static void gmbe_close_text_output(FILE *report)
{
    if (gmbe_text == stdout) {
        fflush(stdout);
    } else if (gmbe_output_path) {
        fclose(gmbe_text);
        fprintf(report, "lines: %" PRIu64 "\noutput: %s\n", gmbe_lines_written, gmbe_output_path);
    } else {
        fclose(gmbe_text);
        fwrite(gmbe_text_buffer, 1, gmbe_text_buffer_size, report);
        free(gmbe_text_buffer);
    }
}

#endif
