/*
 * gmbe_reader.h - the one reader every C analysis tool is built on.
 *
 * It implements the analysis-tool protocol of memory_tracer.py: argv[1] is the
 * trace FIFO (or a trace file), argv[2:] the workload info words; it prints
 * "Ready to analyze", opens the trace, hands the tool batches of whole records
 * (big reads, no per-record system calls), and when SIGUSR1 arrives it first
 * reads what is left in the FIFO, then prints the tool's report between the
 * markers. Reading a regular file, it reports at the end of the file.
 *
 * A tool includes this header first, defines a gmbe_tool and calls
 * gmbe_run_tool() from main().
 */
#ifndef GMBE_READER_H
#define GMBE_READER_H

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gmbe_record.h"

#define GMBE_READ_BYTES (1 << 20)

typedef struct {
    const char *name;
    /* Called once with the workload info words (argv[2:]); returns 0 or prints why not. */
    int (*init)(int argc, char **argv);
    /* Called for every batch of whole records, in stream order. */
    void (*process)(const struct gmbe_record *records, size_t count);
    /* Prints the results (between the markers, which the reader prints). */
    void (*report)(FILE *out);
} gmbe_tool;

static volatile sig_atomic_t gmbe_report_requested;

static void gmbe_on_sigusr1(int sig)
{
    (void)sig;
    gmbe_report_requested = 1;
}

/* Reads into buf after `kept` leftover bytes; processes whole records; returns bytes read, 0 at EOF, -1 on EAGAIN. */
static ssize_t gmbe_read_batch(const gmbe_tool *tool, int fd, char *buf, size_t *kept)
{
    ssize_t n = read(fd, buf + *kept, GMBE_READ_BYTES - *kept);
    if (n < 0) {
        if (errno == EINTR || errno == EAGAIN) {
            return -1;
        }
        perror("read trace");
        exit(1);
    }
    size_t total = *kept + (size_t)n;
    size_t whole = total / GMBE_RECORD_SIZE;
    if (whole) {
        tool->process((const struct gmbe_record *)buf, whole);
    }
    *kept = total - whole * GMBE_RECORD_SIZE;
    memmove(buf, buf + whole * GMBE_RECORD_SIZE, *kept);
    return n;
}

static void gmbe_print_report(const gmbe_tool *tool)
{
    printf("-----begin analysis output-----\n");
    tool->report(stdout);
    printf("-----end analysis output-----\n");
    fflush(stdout);
}

static int gmbe_run_tool(const gmbe_tool *tool, int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s TRACE_FIFO_OR_FILE [WORKLOAD_INFO_WORDS...]\n", argv[0]);
        return 2;
    }
    if (tool->init && tool->init(argc - 2, argv + 2) != 0) {
        return 2;
    }
    /* SIGUSR1 stays blocked except inside ppoll, so it can never slip in between a check and a wait. */
    sigset_t usr1, unblocked;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    sigprocmask(SIG_BLOCK, &usr1, &unblocked);
    sigdelset(&unblocked, SIGUSR1);
    struct sigaction sa = { .sa_handler = gmbe_on_sigusr1 };
    sigaction(SIGUSR1, &sa, NULL);

    printf("Ready to analyze\n");
    fflush(stdout);

    int fd = open(argv[1], O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        fprintf(stderr, "%s: cannot open %s: %s\n", tool->name, argv[1], strerror(errno));
        return 1;
    }
    struct stat st;
    int is_file = fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
    char *buf = malloc(GMBE_READ_BYTES);
    size_t kept = 0;
    int at_eof = 0;

    while (!gmbe_report_requested && !at_eof) {
        struct pollfd pfd = { .fd = fd, .events = POLLIN };
        if (!is_file && ppoll(&pfd, 1, NULL, &unblocked) < 0) {
            continue;   /* EINTR: SIGUSR1 arrived */
        }
        at_eof = gmbe_read_batch(tool, fd, buf, &kept) == 0;
    }
    if (is_file) {
        gmbe_print_report(tool);
        return 0;
    }
    /* Every record is in the FIFO before SIGUSR1: read what is left without waiting. */
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    while (!at_eof) {
        ssize_t n = gmbe_read_batch(tool, fd, buf, &kept);
        at_eof = n == 0;
        if (n < 0) {
            break;
        }
    }
    while (!gmbe_report_requested) {
        sigsuspend(&unblocked);   /* the writers closed before SIGUSR1 came */
    }
    gmbe_print_report(tool);
    free(buf);
    close(fd);
    return 0;
}

#endif /* GMBE_READER_H */
