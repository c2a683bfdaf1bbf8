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

/* Runs plot.py KIND DATA OUT and removes DATA; returns 0 when the PNG was made. */
static int gmbe_draw(const char *kind, const char *data, const char *out_png)
{
    char *argv[] = { "python3", GMBE_PLOT_SCRIPT, (char *)kind, (char *)data, (char *)out_png, NULL };
    pid_t pid;
    int status = -1;
    if (posix_spawnp(&pid, "python3", NULL, NULL, argv, environ) == 0) {
        waitpid(pid, &status, 0);
    }
    unlink(data);
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -1;
}

#endif
