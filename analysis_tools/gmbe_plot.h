/*
 * gmbe_plot.h - a tool's plot: the tool writes a small TSV, and plot.py (next
 * to the tools' sources; build.py compiles its path in as GMBE_PLOT_SCRIPT)
 * draws it with matplotlib.
 */
#ifndef GMBE_PLOT_H
#define GMBE_PLOT_H

#include <spawn.h>
#include <sys/wait.h>

#include "gmbe_reader.h"

#ifndef GMBE_PLOT_SCRIPT
#define GMBE_PLOT_SCRIPT "plot.py"
#endif

extern char **environ;

/* A temporary TSV for the plot; *path receives its name. */
static FILE *gmbe_plot_data(char *path, size_t size)
{
    const char *tmp = getenv("TMPDIR");
    snprintf(path, size, "%s/gmbe-plot-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    int fd = mkstemp(path);
    return fd < 0 ? NULL : fdopen(fd, "w");
}

/* Runs plot.py KIND DATA OUT and removes DATA; returns 0 when the PNG was made. Otherwise why
 * receives the last line plot.py wrote on its stderr (the report's line says it: under
 * memory_tracer a tool's stderr is not the user's terminal). */
static int gmbe_draw(const char *kind, const char *data, const char *out_png, char *why, size_t size)
{
    char *argv[] = { "python3", GMBE_PLOT_SCRIPT, (char *)kind, (char *)data, (char *)out_png, NULL };
    int errors[2];
    pid_t pid;
    int status = -1;
    snprintf(why, size, "python3 %s could not be started", GMBE_PLOT_SCRIPT);
    if (pipe(errors) == 0) {
        posix_spawn_file_actions_t actions;
        posix_spawn_file_actions_init(&actions);
        posix_spawn_file_actions_adddup2(&actions, errors[1], 2);
        posix_spawn_file_actions_addclose(&actions, errors[0]);
        int spawned = posix_spawnp(&pid, "python3", &actions, NULL, argv, environ) == 0;
        posix_spawn_file_actions_destroy(&actions);
        close(errors[1]);
        /* The last 4 KiB of its stderr, then the last line in them. */
        char text[4096];
        size_t kept = 0;
        ssize_t n;
        while ((n = read(errors[0], text + kept, sizeof text - 1 - kept)) > 0) {
            kept += (size_t)n;
            if (kept == sizeof text - 1) {
                memmove(text, text + kept / 2, kept - kept / 2);
                kept -= kept / 2;
            }
        }
        close(errors[0]);
        while (kept > 0 && text[kept - 1] == '\n') {
            kept--;
        }
        text[kept] = '\0';
        const char *last = strrchr(text, '\n') ? strrchr(text, '\n') + 1 : text;
        if (spawned) {
            waitpid(pid, &status, 0);
            const char *said = *last ? last : "plot.py failed";
            size_t len = strlen(said) < size - 1 ? strlen(said) : size - 1;
            memcpy(why, said, len);
            why[len] = '\0';
        }
    }
    unlink(data);
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -1;
}

/* The report's `plot:` line: the PNG, or why there is none. */
static __attribute__((unused)) void gmbe_report_plot(FILE *out, const char *kind, const char *data,
                                                     const char *out_png)
{
    char why[512];
    if (gmbe_draw(kind, data, out_png, why, sizeof why) == 0) {
        fprintf(out, "plot: %s\n", out_png);
    } else {
        fprintf(out, "plot: failed: %s\n", why);
    }
}

#endif
