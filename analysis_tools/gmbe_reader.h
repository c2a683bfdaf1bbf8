/*
 * gmbe_reader.h - the one reader every C analysis tool is built on.
 *
 * Two ways to run a tool:
 *   - by memory_tracer.py (the analysis-tool protocol): argv[1] is the trace
 *     FIFO, argv[2:] the workload info words. The reader prints "Ready to
 *     analyze", opens the FIFO, hands the tool batches of whole records (big
 *     reads, no per-record system calls), and when SIGUSR1 arrives it first
 *     reads what is left in the FIFO, then prints the tool's report between
 *     the markers.
 *     With --shared_memory_ring, argv[1] is instead a shared-memory ring
 *     (gmbe_ring.h), read in place.
 *   - on a file, to analyse a trace again: argv[1] is a trace file of the
 *     `record` tool (gmbe_trace_file.h) or raw records; the report is printed
 *     at the end of the file, without markers, with progress on stderr when it
 *     is a terminal.
 * Words of argv[2:] that name one of the tool's options (`--name value`,
 * `--name=value` or `name=value`) set it; the others are workload info words.
 *
 * Every record format reaches the tool the same way (gmbe_record.h): compact
 * records are given to process_compact when the tool has it, else widened to
 * 16 bytes, and extended ones are given to process_extended when the tool has
 * it, else narrowed to 16 bytes. Marker records never reach process: they go
 * to the tool's marker callback, in order between the batches. memory_tracer
 * names the stream's format in GMBE_RECORD_FORMAT; a trace file's header and a
 * ring's say it themselves.
 *
 * A tool includes this header first, defines a gmbe_tool and calls
 * gmbe_run_tool() from main(). Link with -lzstd.
 */
#ifndef GMBE_READER_H
#define GMBE_READER_H

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stddef.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zstd.h>

#include "gmbe_record.h"
#include "gmbe_ring.h"
#include "gmbe_trace_file.h"

#define GMBE_READ_BYTES (1 << 20)
/*
 * The ring is read in steps of this many bytes of records, each handed back (the tail moved) once
 * the tool has them: a step stays in the core's first-level cache from the marker scan to the
 * tool's pass, and a vCPU waiting for room gets it step by step, not once all that the ring held
 * is done. Read all at once, full-system gzip traced to `count` took 4-6% longer; in steps of 8 or
 * 16 KiB, compact records took 1.4 times as long (measured, not explained).
 */
#define GMBE_RING_STEP_BYTES (32 << 10)

typedef struct {
    const char *name;       /* without dashes */
    const char **value;     /* holds the default; set from the command line */
    const char *help;
} gmbe_option;

typedef struct {
    const char *name;
    const char *summary;
    const gmbe_option *options;     /* ends with { NULL } */
    /* Called once the options are parsed; returns 0, or prints why not. */
    int (*init)(void);
    /* Called for every batch of whole access records, in stream order. */
    void (*process)(const struct gmbe_record *records, size_t count);
    /* Optional: called instead of process when the stream has extended records. */
    void (*process_extended)(const struct gmbe_extended_record *records, size_t count);
    /*
     * Optional: called instead of process when the stream has compact records, with their 8-byte
     * words as they came (gmbe_compact_info() and the like read them; never a marker's), so that
     * they need not be widened first.
     */
    void (*process_compact)(const uint64_t *words, size_t count);
    /* Optional: called for each marker record (gmbe_is_marker), in stream order. */
    void (*marker)(const struct gmbe_record *marker);
    /* Prints the results. */
    void (*report)(FILE *out);
} gmbe_tool;

/* What the tool may look at. */
static char **gmbe_info_words;          /* argv[2:] minus options */
static int gmbe_info_count;
static int gmbe_replaying;              /* reading a file, not memory_tracer's FIFO */
static struct gmbe_trace_header gmbe_source;   /* of a trace file; else settings UNKNOWN */

static size_t gmbe_record_size = GMBE_RECORD_SIZE;   /* of the stream: 8, 16 or 32 */

static volatile sig_atomic_t gmbe_report_requested;
/* The ring's reader_sleeping while the tool may sleep on it: SIGUSR1 clears it (see gmbe_sleep_on_ring). */
static uint32_t *volatile gmbe_sleep_word;

static void gmbe_on_sigusr1(int sig)
{
    (void)sig;
    gmbe_report_requested = 1;
    if (gmbe_sleep_word) {
        __atomic_store_n(gmbe_sleep_word, 0, __ATOMIC_SEQ_CST);
    }
}

/* ------------------------------------------------------------ options */

static const gmbe_option *gmbe_find_option(const gmbe_tool *tool, const char *name, size_t len)
{
    for (const gmbe_option *o = tool->options; o && o->name; o++) {
        if (strlen(o->name) == len && strncmp(o->name, name, len) == 0) {
            return o;
        }
    }
    return NULL;
}

static void gmbe_usage(const gmbe_tool *tool, FILE *out)
{
    fprintf(out, "usage: %s TRACE_FIFO_OR_FILE [OPTIONS] [WORKLOAD_INFO_WORDS...]\n%s\n", tool->name,
            tool->summary);
    for (const gmbe_option *o = tool->options; o && o->name; o++) {
        fprintf(out, "  --%-14s %s (default: %s)\n", o->name, o->help, *o->value ? *o->value : "none");
    }
}

/* Sorts argv[2:] into options and info words; returns 0 or prints the problem. */
static int gmbe_parse_words(const gmbe_tool *tool, int argc, char **argv)
{
    gmbe_info_words = calloc((size_t)argc + 1, sizeof *gmbe_info_words);
    for (int i = 2; i < argc; i++) {
        const char *word = argv[i];
        int dashed = strncmp(word, "--", 2) == 0;
        const char *name = dashed ? word + 2 : word;
        const char *eq = strchr(name, '=');
        size_t len = eq ? (size_t)(eq - name) : strlen(name);
        const gmbe_option *o = (dashed || eq) ? gmbe_find_option(tool, name, len) : NULL;
        if (!o) {
            if (dashed) {
                fprintf(stderr, "%s: unknown option %s\n", tool->name, word);
                gmbe_usage(tool, stderr);
                return 2;
            }
            gmbe_info_words[gmbe_info_count++] = argv[i];
        } else if (eq) {
            *o->value = eq + 1;
        } else if (i + 1 < argc) {
            *o->value = argv[++i];
        } else {
            fprintf(stderr, "%s: option %s needs a value\n", tool->name, word);
            return 2;
        }
    }
    return 0;
}

/* Option helpers for tools: a size like 32k, 1m, 64 (bytes). strtoull would take "-1" as 2^64-1. */
static __attribute__((unused)) int gmbe_parse_size(const char *text, uint64_t *out)
{
    char *end;
    errno = 0;
    uint64_t v = strtoull(text, &end, 0);
    if (errno || end == text || strchr(text, '-')) {
        return -1;
    }
    switch (*end) {
    case 'k': case 'K': v <<= 10; end++; break;
    case 'm': case 'M': v <<= 20; end++; break;
    case 'g': case 'G': v <<= 30; end++; break;
    default: break;
    }
    if (*end == 'b' || *end == 'B') {
        end++;
    }
    if (*end) {
        return -1;
    }
    *out = v;
    return 0;
}

/* ------------------------------------------------------------ formats */

/* The record size a format name stands for (memory_tracer --record_format), or 0. */
static size_t gmbe_format_record_size(const char *name)
{
    if (!name || !*name || strcmp(name, "standard") == 0) {
        return GMBE_RECORD_SIZE;
    }
    if (strcmp(name, "extended") == 0) {
        return GMBE_EXTENDED_RECORD_SIZE;
    }
    if (strcmp(name, "compact") == 0) {
        return GMBE_COMPACT_RECORD_SIZE;
    }
    return 0;
}

/* Access records to process, markers to marker, in order. */
static void gmbe_deliver_standard(const gmbe_tool *tool, const struct gmbe_record *r, size_t n)
{
    size_t start = 0;
    for (size_t i = 0; i < n; i++) {
        if (__builtin_expect(gmbe_is_marker(&r[i]), 0)) {
            if (i > start) {
                tool->process(r + start, i - start);
            }
            if (tool->marker) {
                tool->marker(&r[i]);
            }
            start = i + 1;
        }
    }
    if (n > start) {
        tool->process(r + start, n - start);
    }
}

#define GMBE_SCRATCH_RECORDS 4096

/* Extended records whole to process_extended (split at markers, as above), or narrowed to 16 bytes. */
static void gmbe_deliver_extended(const gmbe_tool *tool, const struct gmbe_extended_record *x, size_t n)
{
    static struct gmbe_record narrow[GMBE_SCRATCH_RECORDS];
    if (!tool->process_extended) {
        for (size_t done = 0; done < n;) {
            size_t count = n - done < GMBE_SCRATCH_RECORDS ? n - done : GMBE_SCRATCH_RECORDS;
            for (size_t i = 0; i < count; i++) {
                narrow[i] = (struct gmbe_record){ x[done + i].info_word, x[done + i].virt_addr };
            }
            gmbe_deliver_standard(tool, narrow, count);
            done += count;
        }
        return;
    }
    size_t start = 0;
    for (size_t i = 0; i < n; i++) {
        struct gmbe_record head = { x[i].info_word, x[i].virt_addr };
        if (__builtin_expect(gmbe_is_marker(&head), 0)) {
            if (i > start) {
                tool->process_extended(x + start, i - start);
            }
            if (tool->marker) {
                tool->marker(&head);
            }
            start = i + 1;
        }
    }
    if (n > start) {
        tool->process_extended(x + start, n - start);
    }
}

/* Compact words to process_compact, split at their markers, which go to marker decoded. */
static void gmbe_deliver_compact_words(const gmbe_tool *tool, const uint64_t *words, size_t n)
{
    size_t start = 0;
    for (size_t i = 0; i < n; i++) {
        if (__builtin_expect(gmbe_compact_is_marker(words[i]), 0)) {
            if (i > start) {
                tool->process_compact(words + start, i - start);
            }
            if (tool->marker) {
                struct gmbe_record marker = gmbe_compact_decode(words[i]);
                tool->marker(&marker);
            }
            start = i + 1;
        }
    }
    if (n > start) {
        tool->process_compact(words + start, n - start);
    }
}

/*
 * Compact records as they came to a tool that reads them so (process_compact), else widened to
 * 16 bytes, a batch at a time. The widening has no branch and notes whether the batch holds a
 * marker; only a batch that does is decoded again and split at its markers. Decoded with a test
 * for a marker at each record, then scanned for markers once more, 50 M compact records from a
 * file in memory took `count` some 10% longer; widened at all, user-mode gzip's 61.8 M records
 * from a raw file in memory took it 0.13-0.16 s of CPU against 0.07-0.10 for the same records at
 * 16 bytes, which made compact records through the ring slower than standard ones.
 */
static void gmbe_deliver_compact(const gmbe_tool *tool, const uint64_t *words, size_t n)
{
    static struct gmbe_record wide[GMBE_SCRATCH_RECORDS];
    if (tool->process_compact) {
        gmbe_deliver_compact_words(tool, words, n);
        return;
    }
    for (size_t done = 0; done < n;) {
        size_t count = n - done < GMBE_SCRATCH_RECORDS ? n - done : GMBE_SCRATCH_RECORDS;
        const uint64_t *batch = words + done;
        int markers = 0;
        for (size_t i = 0; i < count; i++) {
            wide[i] = gmbe_compact_widen_access(batch[i]);
            markers |= gmbe_compact_is_marker(batch[i]);
        }
        if (markers) {
            for (size_t i = 0; i < count; i++) {
                wide[i] = gmbe_compact_decode(batch[i]);
            }
            gmbe_deliver_standard(tool, wide, count);
        } else {
            tool->process(wide, count);
        }
        done += count;
    }
}

/* count whole records of the stream's format, to the tool. */
static void gmbe_deliver(const gmbe_tool *tool, const void *records, size_t count)
{
    switch (gmbe_record_size) {
    case GMBE_EXTENDED_RECORD_SIZE:
        gmbe_deliver_extended(tool, records, count);
        break;
    case GMBE_COMPACT_RECORD_SIZE:
        gmbe_deliver_compact(tool, records, count);
        break;
    default:
        gmbe_deliver_standard(tool, records, count);
        break;
    }
}

/* ------------------------------------------------------------ input */

typedef struct {
    int fd;
    ZSTD_DStream *zstd;             /* a compressed trace file */
    char *in;                       /* compressed bytes read, not yet decompressed */
    ZSTD_inBuffer zin;
    off_t size;                     /* of a file, for progress */
    struct timespec last_progress;
} gmbe_input;

/* Reads up to cap bytes of records: > 0, 0 at the end, -1 when a FIFO has nothing now. */
static ssize_t gmbe_input_read(gmbe_input *in, char *buf, size_t cap)
{
    if (!in->zstd) {
        ssize_t n = read(in->fd, buf, cap);
        if (n < 0 && (errno == EINTR || errno == EAGAIN)) {
            return -1;
        }
        if (n < 0) {
            perror("read trace");
            exit(1);
        }
        return n;
    }
    ZSTD_outBuffer out = { buf, cap, 0 };
    while (out.pos == 0) {
        if (in->zin.pos == in->zin.size) {
            ssize_t n = read(in->fd, in->in, GMBE_READ_BYTES);
            if (n < 0) {
                perror("read trace file");
                exit(1);
            }
            if (n == 0) {
                return 0;
            }
            in->zin = (ZSTD_inBuffer){ in->in, (size_t)n, 0 };
        }
        size_t rc = ZSTD_decompressStream(in->zstd, &out, &in->zin);
        if (ZSTD_isError(rc)) {
            fprintf(stderr, "trace file is corrupt: %s\n", ZSTD_getErrorName(rc));
            exit(1);
        }
    }
    return (ssize_t)out.pos;
}

/* Raw records must look like records: a whole number of them, the first an access (byte 7 is
 * 0x80) or a marker (size shift 7), so that a text file is not counted as one. Compact records
 * keep no such byte; for them the size alone is checked. */
static void gmbe_check_raw_records(int fd, const char *path)
{
    struct stat st;
    uint8_t first[GMBE_RECORD_SIZE];
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size == 0) {
        return;
    }
    if (st.st_size % (off_t)gmbe_record_size != 0) {
        fprintf(stderr, "%s is neither a trace file nor raw records: its %lld bytes are not a whole number of "
                "%zu-byte records\n", path, (long long)st.st_size, gmbe_record_size);
        exit(1);
    }
    if (gmbe_record_size != GMBE_COMPACT_RECORD_SIZE && pread(fd, first, sizeof first, 0) == (ssize_t)sizeof first &&
        first[7] != 0x80 && (first[0] & 7) != 7) {
        fprintf(stderr, "%s is neither a trace file nor raw records: its first 16 bytes are not a record "
                "(byte 7 is 0x%02x, not 0x80)\n", path, first[7]);
        exit(1);
    }
}

/* A trace file starts with its header; raw records are taken as they are. */
static void gmbe_open_file(gmbe_input *in, const char *path)
{
    struct gmbe_trace_header h;
    memset(&gmbe_source, 0, sizeof gmbe_source);
    gmbe_source.trace_only_cpl3 = gmbe_source.log_of_block_len = GMBE_SETTING_UNKNOWN;
    gmbe_source.log_of_tracing_ratio = GMBE_SETTING_UNKNOWN;
    if (pread(in->fd, &h, sizeof h, 0) != (ssize_t)sizeof h || memcmp(h.magic, GMBE_TRACE_MAGIC, 8) != 0) {
        gmbe_check_raw_records(in->fd, path);
        return;
    }
    if (h.format_version != GMBE_TRACE_FORMAT_VERSION ||
        (h.record_size != GMBE_RECORD_SIZE && h.record_size != GMBE_EXTENDED_RECORD_SIZE &&
         h.record_size != GMBE_COMPACT_RECORD_SIZE)) {
        fprintf(stderr, "%s: trace file format %u with %u-byte records is not supported\n", path,
                h.format_version, h.record_size);
        exit(1);
    }
    gmbe_source = h;
    gmbe_record_size = h.record_size;
    lseek(in->fd, sizeof h, SEEK_SET);
    if (h.compression == GMBE_COMPRESSION_ZSTD) {
        in->zstd = ZSTD_createDStream();
        in->in = malloc(GMBE_READ_BYTES);
    }
}

static void gmbe_show_progress(const gmbe_tool *tool, gmbe_input *in, int last)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    double since = (double)(now.tv_sec - in->last_progress.tv_sec) +
                   (double)(now.tv_nsec - in->last_progress.tv_nsec) / 1e9;
    if (!last && since < 0.25) {
        return;
    }
    in->last_progress = now;
    if (last) {
        fprintf(stderr, "\r\033[K");
        return;
    }
    off_t pos = lseek(in->fd, 0, SEEK_CUR);
    fprintf(stderr, "\r%s: %3.0f%% of the trace read", tool->name,
            in->size ? 100.0 * (double)pos / (double)in->size : 0.0);
}

/* ------------------------------------------------------------ the run */

/* Reads into buf after `kept` leftover bytes; processes whole records; returns as gmbe_input_read. */
static ssize_t gmbe_read_batch(const gmbe_tool *tool, gmbe_input *in, char *buf, size_t *kept)
{
    ssize_t n = gmbe_input_read(in, buf + *kept, GMBE_READ_BYTES - *kept);
    if (n <= 0) {
        return n;
    }
    size_t total = *kept + (size_t)n;
    size_t whole = total / gmbe_record_size;
    if (whole) {
        gmbe_deliver(tool, buf, whole);
    }
    *kept = total - whole * gmbe_record_size;
    memmove(buf, buf + whole * gmbe_record_size, *kept);
    return n;
}

static void gmbe_print_report(const gmbe_tool *tool)
{
    if (!gmbe_replaying) {
        printf("-----begin analysis output-----\n");
    }
    tool->report(stdout);
    if (!gmbe_replaying) {
        printf("-----end analysis output-----\n");
    }
    fflush(stdout);
}

static void gmbe_replay(const gmbe_tool *tool, gmbe_input *in, char *buf)
{
    size_t kept = 0;
    int show = isatty(2);
    while (gmbe_read_batch(tool, in, buf, &kept) > 0) {
        if (show) {
            gmbe_show_progress(tool, in, 0);
        }
    }
    if (show) {
        gmbe_show_progress(tool, in, 1);
    }
    if (kept) {
        fprintf(stderr, "%s: the trace ends with %zu bytes of a partial record\n", tool->name, kept);
    }
}

static void gmbe_follow_fifo(const gmbe_tool *tool, gmbe_input *in, char *buf, const sigset_t *unblocked)
{
    size_t kept = 0;
    int at_eof = 0;
    while (!gmbe_report_requested && !at_eof) {
        struct pollfd pfd = { .fd = in->fd, .events = POLLIN };
        if (ppoll(&pfd, 1, NULL, unblocked) < 0) {
            continue;   /* EINTR: SIGUSR1 arrived */
        }
        at_eof = gmbe_read_batch(tool, in, buf, &kept) == 0;
    }
    /* Every record is in the FIFO before SIGUSR1: read what is left without waiting. */
    fcntl(in->fd, F_SETFL, fcntl(in->fd, F_GETFL) | O_NONBLOCK);
    while (!at_eof) {
        ssize_t n = gmbe_read_batch(tool, in, buf, &kept);
        at_eof = n == 0;
        if (n < 0) {
            break;
        }
    }
    while (!gmbe_report_requested) {
        sigsuspend(unblocked);   /* the writers closed before SIGUSR1 came */
    }
}

/* Whether path is a shared-memory ring (never opens a FIFO: that would take records from it). */
static int gmbe_is_ring(const char *path, const struct stat *st)
{
    char magic[8];
    int fd = S_ISREG(st->st_mode) ? open(path, O_RDONLY | O_CLOEXEC) : -1;
    int is_ring = fd >= 0 && read(fd, magic, 8) == 8 && memcmp(magic, GMBE_RING_MAGIC, 8) == 0;
    if (fd >= 0) {
        close(fd);
    }
    return is_ring;
}

/*
 * Under memory_tracer, the ring beside the FIFO (gmbe_ring.h): attach to it, so that the plugin
 * writes there instead. Returns its path, or NULL (no ring offered: the FIFO, as in the original).
 */
static const char *gmbe_attach_offered_ring(void)
{
    const char *path = getenv(GMBE_RING_ENV);
    struct stat st;
    if (!path || !*path || stat(path, &st) != 0 || !gmbe_is_ring(path, &st)) {
        return NULL;
    }
    uint32_t attached = 1;
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    int done = fd >= 0 && pwrite(fd, &attached, sizeof attached,
                                 offsetof(struct gmbe_ring_header, attached)) == (ssize_t)sizeof attached;
    if (fd >= 0) {
        close(fd);
    }
    return done ? path : NULL;
}

static size_t gmbe_ring_record_size(const char *path)
{
    struct gmbe_ring_header h;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    ssize_t n = fd >= 0 ? read(fd, &h, sizeof h) : -1;
    if (fd >= 0) {
        close(fd);
    }
    return n == (ssize_t)sizeof h ? h.record_size : GMBE_RECORD_SIZE;
}

/*
 * An empty ring is polled this many times (100 us apart) before the tool sleeps until the producer
 * wakes it: while records flow, the gaps between two heads are far shorter, and the producer makes
 * no system call; a ring empty for a millisecond is waiting for a guest or for a sampled trace's
 * rare records, and polling it cost 14% of a core (5,000 wake-ups a second).
 */
#define GMBE_RING_POLLS_BEFORE_SLEEP 10

/*
 * Sleeps until the producer publishes past tail, or SIGUSR1 comes. The flag is set before head is
 * read again (gmbe_ring.h); SIGUSR1, unblocked only here, clears it, so that a signal that comes
 * after the last check makes FUTEX_WAIT return at once instead of sleeping through it.
 */
static void gmbe_sleep_on_ring(struct gmbe_ring_header *ring, uint64_t tail, const sigset_t *unblocked)
{
    sigset_t blocked;
    gmbe_sleep_word = &ring->reader_sleeping;
    __atomic_store_n(&ring->reader_sleeping, 1, __ATOMIC_SEQ_CST);
    sigprocmask(SIG_SETMASK, unblocked, &blocked);
    if (!gmbe_report_requested && __atomic_load_n(&ring->head, __ATOMIC_SEQ_CST) == tail) {
        syscall(SYS_futex, &ring->reader_sleeping, FUTEX_WAIT, 1, NULL, NULL, 0);
    }
    sigprocmask(SIG_SETMASK, &blocked, NULL);
    __atomic_store_n(&ring->reader_sleeping, 0, __ATOMIC_RELAXED);
    gmbe_sleep_word = NULL;
}

/* The ring's records, in place, until the report is requested (memory_tracer asks only once it is empty). */
static void gmbe_follow_ring(const gmbe_tool *tool, const char *path, const sigset_t *unblocked)
{
    int fd = open(path, O_RDWR | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        fprintf(stderr, "%s: cannot open %s: %s\n", tool->name, path, strerror(errno));
        exit(1);
    }
    /* Populated now, before the window opens: else the first read of each of the ring's pages
     * faults while the vCPU waits for room. */
    struct gmbe_ring_header *ring =
        mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
    close(fd);
    if (ring == MAP_FAILED) {
        perror("mmap ring");
        exit(1);
    }
    const char *slots = (const char *)ring + ring->data_offset;
    gmbe_record_size = ring->record_size;
    uint64_t mask = ring->capacity - 1;
    uint64_t step = GMBE_RING_STEP_BYTES / gmbe_record_size;
    uint64_t tail = ring->tail;
    unsigned empty_polls = 0;
    for (;;) {
        uint64_t head = __atomic_load_n(&ring->head, __ATOMIC_ACQUIRE);
        if (head == tail) {
            if (gmbe_report_requested) {
                break;
            }
            if (++empty_polls > GMBE_RING_POLLS_BEFORE_SLEEP) {
                gmbe_sleep_on_ring(ring, tail, unblocked);
                continue;
            }
            struct timespec idle = { 0, 100000 };   /* SIGUSR1 ends the wait early */
            ppoll(NULL, 0, &idle, unblocked);
            continue;
        }
        empty_polls = 0;
        uint64_t start = tail & mask;
        uint64_t count = head - tail < ring->capacity - start ? head - tail : ring->capacity - start;
        count = count < step ? count : step;
        gmbe_deliver(tool, slots + start * gmbe_record_size, count);
        tail += count;
        __atomic_store_n(&ring->tail, tail, __ATOMIC_RELEASE);
    }
    munmap(ring, (size_t)st.st_size);
}

static int gmbe_run_tool(const gmbe_tool *tool, int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        gmbe_usage(tool, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    struct stat st;
    int exists = stat(argv[1], &st) == 0;
    int ring = exists && gmbe_is_ring(argv[1], &st);
    const char *ring_path = ring ? argv[1] : NULL;
    if (exists && S_ISFIFO(st.st_mode) && (ring_path = gmbe_attach_offered_ring()) != NULL) {
        ring = 1;     /* the ring memory_tracer offered beside the FIFO: no copy through the kernel */
    }
    gmbe_replaying = exists && !S_ISFIFO(st.st_mode) && !ring;
    const char *format = getenv("GMBE_RECORD_FORMAT");
    gmbe_record_size = gmbe_format_record_size(format);
    if (!gmbe_record_size) {
        fprintf(stderr, "%s: GMBE_RECORD_FORMAT must be standard, extended or compact, but %s isn't\n",
                tool->name, format);
        return 2;
    }
    if (gmbe_parse_words(tool, argc, argv) != 0) {
        return 2;
    }
    /* A FIFO is opened only after "Ready to analyze": opening waits for the writer. */
    gmbe_input in = { .fd = gmbe_replaying ? open(argv[1], O_RDONLY | O_CLOEXEC) : -1 };
    if (gmbe_replaying && in.fd < 0) {
        fprintf(stderr, "%s: cannot open %s: %s\n", tool->name, argv[1], strerror(errno));
        return 1;
    }
    if (gmbe_replaying) {
        in.size = st.st_size;
        gmbe_open_file(&in, argv[1]);   /* its header says the format, before the tool starts */
    } else {
        gmbe_source.trace_only_cpl3 = gmbe_source.log_of_block_len = GMBE_SETTING_UNKNOWN;
        gmbe_source.log_of_tracing_ratio = GMBE_SETTING_UNKNOWN;
    }
    if (ring) {
        gmbe_record_size = gmbe_ring_record_size(ring_path);
    }
    if (tool->init && tool->init() != 0) {
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

    if (!gmbe_replaying) {
        printf("Ready to analyze\n");
        fflush(stdout);
    }
    if (ring) {
        gmbe_follow_ring(tool, ring_path, &unblocked);
        gmbe_print_report(tool);
        return 0;
    }
    if (!gmbe_replaying && (in.fd = open(argv[1], O_RDONLY | O_CLOEXEC)) < 0) {
        fprintf(stderr, "%s: cannot open %s: %s\n", tool->name, argv[1], strerror(errno));
        return 1;
    }
    char *buf = malloc(GMBE_READ_BYTES);
    if (gmbe_replaying) {
        gmbe_replay(tool, &in, buf);
    } else {
        gmbe_follow_fifo(tool, &in, buf, &unblocked);
    }
    gmbe_print_report(tool);
    free(buf);
    close(in.fd);
    return 0;
}

#endif /* GMBE_READER_H */
