/*
 * gmbeoo.c - GMBEOO as a TCG plugin: every guest memory access becomes a
 * GMBE record (gmbe_record.h: 16 bytes, or the opt-in 32-byte extended and
 * 8-byte compact formats) written to a FIFO, a shared-memory ring, or one
 * trace file per vCPU.
 *
 * Lossless by default: each vCPU appends to its own ring without locks; when
 * the ring is full the vCPU writes it out itself and, if the consumer is slow,
 * waits. With drop_when_trace_fifo_full=on it drops (and counts) instead.
 *
 * Everything that can be decided at translation time is: the CPL of the code
 * (read from CS once per translated block), whether the block is instrumented
 * at all (trace_only_CPL3_code_GMBE), and the access attributes, which are
 * decoded once per distinct meminfo value into a table.
 *
 * Guest code marks regions and progress points with one magic instruction,
 * `xchg %bx,%bx` (a no-op everywhere else) with rax = MEMORY_TRACER_MAGIC, rcx = the
 * command, rdx = its number (to_run_on_guest/memory_tracer_markers.h). It is
 * recognised when its block is translated; only that instruction gets a
 * callback, so other code pays nothing.
 *
 * Arguments: key=value, one for each entry of plugin_options[] below (unknown
 * keys are an error); `set` on the control channel takes those marked live.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <glib.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include <qemu-plugin.h>

#if defined(__x86_64__)
#include <x86intrin.h>
#endif

#include "gmbe_record.h"
#include "gmbe_ring.h"
#include "gmbe_trace_file.h"
#include "memory_tracer_markers.h"   /* the magic and its commands, as guest code issues them */

QEMU_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_VERSION;

#define MAX_VCPUS 4096
#define DEFAULT_BUFFER_RECORDS 4096u   /* per vCPU: one write() per 64 KiB of 16-byte records */
#define DROP_RETRY_INTERVAL 1024u   /* drop mode: retry the FIFO every N drops */
#define MEMINFO_TABLE_SIZE (1u << 18)
#define MEMINFO_DECODED 0x80u
#define NO_BUDGET_CHECK (UINT64_C(1) << 62)       /* an instruction budget never reached */

typedef struct {
    /* Read on every traced access; written when tracing starts or stops. */
    bool tracing;
    /* Written by the vCPU thread on every traced access. */
    uint64_t head;               /* records ever appended */
    uint64_t events;             /* events that passed the CPL filter, ever */
    uint64_t header;             /* the constant bits of this vCPU's records */
    uint64_t vcpu_bits;          /* the vCPU index's bits in its records */
    uint64_t *words;             /* buffer_records records of record_words words */
    uint64_t *own_words;         /* inline records: words when it is not a window of the ring */
    uint64_t dropped;            /* ever */
    uint64_t drop_retry_countdown;
    uint64_t markers;            /* marker records ever appended */
    /* --max_instructions: whether this vCPU found nothing left to spend. */
    bool out_of_instructions;
    unsigned index;
    /* Written by whoever flushes the ring, under writer_lock. */
    uint64_t tail __attribute__((aligned(64)));
    uint64_t markers_flushed;
    int fd;                      /* trace_dir: this vCPU's own trace file */
    uint64_t inline_tail;        /* inline records: where the records not yet handed over begin */
    uint64_t words_spliced_end;  /* the FIFO's byte count after the last splice from words */
    uint64_t stream_base;        /* inline records: what the vCPU wrote before its current buffer */
    uint64_t unwritten_end;      /* inline records: before this, the vCPU may have only counted them */
    bool unwritten_untraced;     /* and it counted them because it was not tracing */
    bool samples_in_place;       /* inline records: its counting blocks write the samples only */
    uint64_t samples_first;      /* ... planned for record 0 of the buffer being this event */
    uint64_t samples_mask;       /* ... and this sampling */
    uint64_t passed_over;        /* records passed over as only counted, ever */
    uint64_t counted_samples;    /* samples that its counting blocks wrote, ever */
    bool words_in_pipe;          /* whether the pipe may still hold pages of own_words */
    bool in_ring;                /* inline records: words is a window of the shared-memory ring */
    uint64_t window_seq;         /* the ring's head when the window was taken */
    uint64_t window_generation;  /* the ring_generation of the ring it was taken from */
    uint64_t records_in_file;
    /* Snapshots taken by "enable": the counters report what came after. */
    uint64_t head_at_enable;
    uint64_t events_at_enable;
    uint64_t dropped_at_enable;
    uint64_t markers_at_enable;
} VcpuRing;

typedef enum { FORMAT_COMPACT = 1, FORMAT_STANDARD = 2, FORMAT_EXTENDED = 4 } RecordWords;

typedef struct {
    char *trace_fifo_path;
    char *trace_shm_path;
    char *trace_dir;
    char *control_socket_path;
    char *counters_path;
    bool enabled;
    bool trace_only_cpl3;
    unsigned log_block_len;
    unsigned log_tracing_ratio;
    bool drop_when_full;
    RecordWords record_words;
    bool only_marked_regions;
    uint64_t max_instructions;
    bool callback_records;
    uint64_t buffer_records;
    bool fifo_by_write;
    bool ring_by_copy;
    bool record_between_samples;
    uint64_t far_reader_ns;
} Config;

static qemu_plugin_id_t plugin_id;
static Config config = { .enabled = true, .record_words = FORMAT_STANDARD,
                         .buffer_records = DEFAULT_BUFFER_RECORDS, .far_reader_ns = 100 };

/* What decides whether records are written: see update_tracing(). */
static bool window_open;               /* the host's trace window (enable .. disable) */
static bool region_active;             /* between the guest's region_begin and region_end */
static uint64_t sampling_mask;
static uint64_t buffer_mask;           /* buffer_records - 1: the callback path's ring */

static VcpuRing *rings[MAX_VCPUS];
static unsigned num_rings;             /* highest vCPU index + 1 */
static uint8_t meminfo_table[MEMINFO_TABLE_SIZE];
static struct qemu_plugin_register *cs_register;
static struct qemu_plugin_register *rax_register, *rcx_register, *rdx_register;

/* The trace and everything that writes to it. */
static pthread_mutex_t writer_lock = PTHREAD_MUTEX_INITIALIZER;
static int trace_fd = -1;
static struct gmbe_ring_header *shm_ring;     /* instead of trace_fd, with trace_shm_path */
static size_t shm_ring_size;
static uint64_t *shm_words;               /* the ring's records (mapped twice in a row if shm_doubled) */
static size_t shm_words_bytes;
static bool shm_doubled;
static uint64_t ring_generation;          /* rings opened, ever */
static void *retired_windows;             /* a closed ring's records that a vCPU still writes into */
static size_t retired_windows_size;
static bool ring_windows;                 /* records may go in place in the ring: one vCPU, so far */
static bool system_emulation;
static uint64_t in_place_records;         /* handed over in the ring's windows, ever */
/* How far the ring's reader is, by the times its tail took to come (read_tail_locked). */
#define READER_DISTANCE_SAMPLES 31
static struct {
    uint64_t seen_tail;                   /* the tail when the vCPU last read it */
    double ns[READER_DISTANCE_SAMPLES];   /* the latest times, a ring */
    unsigned measured;
    bool far;
    uint64_t buffers_copied;              /* buffers copied in, not written in place, for a far reader */
} reader;
static bool fifo_splice;                  /* inline records go to the FIFO by vmsplice (see below) */
static bool trace_broken;
/*
 * Standard records written inline (QEMU_PLUGIN_RECORD_WORD32_ADDR) leave
 * bytes 4-7 of their word, an access record's ACCESS_WORD_HIGH, to the buffer:
 * one constant fewer to load and store per record. Every record of a buffer
 * that a vCPU writes into therefore holds them: a vCPU's own buffers from the
 * start, the ring's free records from its opening. Only markers have other
 * bytes there; a vCPU's own buffers never hold one (markers go out on their
 * own), the ring does, and where the vCPU writes in place, the places of the
 * markers copied in (marked_seqs, the head's count at each) get the bytes back
 * when a window takes them again, read by then.
 */
static bool preset_words;
#define ACCESS_WORD_HIGH ((uint64_t)GMBE_VALID_BYTE << 56)
static GArray *marked_seqs;               /* uint64_t, ascending; under writer_lock */
static guint marked_first;                /* marked_seqs before it are done with */
static uint64_t written_to_file;          /* access records, since enable */
static uint64_t untraced_children;        /* user mode: processes forked while the window was open */

/*
 * Re-translation requests (a CPL filter change), seen by each vCPU at the
 * start of its next block: by the record-full callback in blocks with inline
 * records (the request stops their buffers), by a conditional callback in the
 * others. A second check per block would cost as much as the first.
 */
static struct qemu_plugin_scoreboard *retranslate_board;
static qemu_plugin_u64 retranslate_flag;
static uint64_t retranslations;            /* code-cache resets they made, ever */

/* --max_instructions: each vCPU counts its budget down inline; at 0 it asks for more. */
static struct qemu_plugin_scoreboard *budget_board;
static qemu_plugin_u64 instruction_budget;
static uint64_t instructions_left;         /* not yet granted to any vCPU */

static int control_listen_fd = -1;
static int control_client_fd = -1;
static bool control_stopping;             /* at exit: no client is served from now on */
static pthread_t control_thread;
static bool control_thread_running;

static void register_callbacks(qemu_plugin_id_t id);
static void vcpu_retranslate(unsigned int vcpu_index, void *udata);

static size_t record_bytes(void)
{
    return config.record_words * sizeof(uint64_t);
}

/* ---------------------------------------------------------------- helpers */

static uint64_t sampling_mask_for(unsigned log_block_len, unsigned log_ratio)
{
    /* Event i is traced iff (i & (((1 << R) - 1) << L)) == 0, with L + R <= 64. */
    if (log_ratio == 0 || log_block_len >= 64) {
        return 0;
    }
    uint64_t ones = log_ratio >= 64 ? ~UINT64_C(0) : (UINT64_C(1) << log_ratio) - 1;
    return ones << log_block_len;
}

/* A sampling mask's traced block: its first 2^L events of every period. */
static inline uint64_t traced_block(uint64_t mask)
{
    return mask & -mask;
}

/* log2 of a sampling mask's period, L + R (up to 64: then the period does not fit in 64 bits). */
static inline unsigned log_sampling_period(uint64_t mask)
{
    return (unsigned)__builtin_ctzll(mask) + (unsigned)__builtin_popcountll(mask);
}

/* Whether a sampling mask's period, 2^(L+R), fits in 64 bits (it does not for L + R = 64). */
static inline bool sampling_period_fits(uint64_t mask)
{
    return (mask >> 63) == 0;
}

/*
 * The guest shares our fd table in user mode, and programs close or dup2 over
 * low fds: keep ours out of their way, close-on-exec, in the top slots of the
 * table a process starts with (64 fds). Not above: growing a table that
 * threads share (QEMU's RCU thread is one) waits for an RCU grace period, which
 * took 9-17 ms on a 2-core VM, a tenth of a short user-mode run.
 */
#define PLUGIN_FD_BASE 48

static int move_fd_high(int fd)
{
    int high = fcntl(fd, F_DUPFD_CLOEXEC, PLUGIN_FD_BASE);
    if (high < 0) {
        return fd;
    }
    close(fd);
    return high;
}

static void raise_pipe_size(int fd)
{
    FILE *f = fopen("/proc/sys/fs/pipe-max-size", "r");
    long max_size = 0;
    if (f) {
        if (fscanf(f, "%ld", &max_size) != 1) {
            max_size = 0;
        }
        fclose(f);
    }
    if (max_size > 0) {
        /* Fails harmlessly when the trace goes to a regular file. */
        (void)fcntl(fd, F_SETPIPE_SZ, (int)max_size);
    }
}

#define COLD __attribute__((noinline, cold))
#define UNLIKELY(x) __builtin_expect(!!(x), 0)

/* An access's size, sign, endianness and direction bits by QEMU's accessors, kept in the table. */
static COLD uint8_t decode_meminfo_slow(qemu_plugin_meminfo_t info)
{
    uint8_t bits = qemu_plugin_mem_size_shift(info) & GMBE_SIZE_SHIFT_MASK;
    if (qemu_plugin_mem_is_sign_extended(info)) {
        bits |= GMBE_SIGN_EXTEND_BIT;
    }
    if (qemu_plugin_mem_is_big_endian(info)) {
        bits |= GMBE_BIG_ENDIAN_BIT;
    }
    if (qemu_plugin_mem_is_store(info)) {
        bits |= GMBE_STORE_BIT;
    }
    if (info < MEMINFO_TABLE_SIZE) {
        __atomic_store_n(&meminfo_table[info], bits | MEMINFO_DECODED, __ATOMIC_RELAXED);
    }
    return bits;
}

/*
 * The table's bits for an access, MEMINFO_DECODED set; 0 where not decoded
 * yet. The accessor calls cost ~5 ns, a table hit one load.
 */
static inline uint8_t decoded_meminfo(qemu_plugin_meminfo_t info)
{
    return info < MEMINFO_TABLE_SIZE ? __atomic_load_n(&meminfo_table[info], __ATOMIC_RELAXED) : 0;
}

/* ------------------------------------------------------- writing the trace */

static void trace_failed(const char *what)
{
    if (!trace_broken) {
        fprintf(stderr, "gmbeoo: writing to the %s failed (%s); no further records are written\n",
                what, strerror(errno));
    }
    trace_broken = true;
}

/*
 * How far the reader is. A record written in place lands in a line of the ring
 * that the reader, on another CPU, read a ring ago: the vCPU's store takes the
 * line back from the reader's cache. Where the two CPUs share a cache that
 * takes some 30 ns, which costs the vCPU little (in place ran no slower
 * without a prefetch of the lines ahead than with it, qemu_patches/README.md);
 * where they do not (another chiplet or socket, or a hypervisor that places
 * its virtual CPUs so) 150-250 ns, and the reader then takes each line back
 * from the vCPU's cache as slowly: traced runs took 3 to 8 times as long.
 * Copied in past the caches (copy_into_ring), records cost as much however
 * far the reader is, some 15% more than in place for a near one (user-mode
 * xz traced: 1.5 s near or far, in place 1.3 s near, 6-7.6 s far; full-system
 * sort: 235 and 253 ms, in place 219 and 922). So the vCPU writes in place
 * while the reader is near, and copies while it is far.
 *
 * How far: how long the ring's tail takes to come to the vCPU, each time the
 * vCPU reads it (for room, and at each buffer's end) and the reader has
 * stored into it since (the line is then in the reader's cache; else in the
 * vCPU's own), less what timing a load costs by itself (a load of a line in
 * the vCPU's own cache, timed the same way): some 15 ns on a 2.6 GHz Xeon,
 * whose mesh passes a line between any two CPUs in 65-90 ns so measured, and
 * where in place ran 1.22x untraced against 1.37x copied (full-system sort
 * and mem_loop). The median of the last 31 such times (one every 10-20 us
 * while records flow), against far_reader_ns: of the last five, that host's
 * reader passed for far in up to 8% of a gzip run's measures, in place there
 * being the faster throughout.
 */
#define TSC_CALIBRATION_US 20000          /* of the clock, to know the TSC's rate */
#define TIMING_COST_TRIES 64              /* timed loads of an own line: the least is timing's cost */

#if defined(__x86_64__)
/* ns per TSC cycle, from the clock over the first TSC_CALIBRATION_US it is asked; 0 until then. */
static double ns_per_tsc_cycle(void)
{
    static uint64_t tsc_begun;
    static gint64 us_begun;
    static double rate;
    if (rate == 0) {
        gint64 us = g_get_monotonic_time();
        uint64_t tsc = __rdtsc();
        if (tsc_begun == 0) {
            tsc_begun = tsc;
            us_begun = us;
        } else if (us - us_begun >= TSC_CALIBRATION_US && tsc > tsc_begun) {
            rate = (us - us_begun) * 1000.0 / (double)(tsc - tsc_begun);
        }
    }
    return rate;
}

/* *word, and the TSC cycles its load took (the lfences keep the load between the two reads). */
static uint64_t timed_load(const uint64_t *word, uint64_t *cycles)
{
    unsigned cpu;
    _mm_lfence();
    uint64_t begun = __rdtsc();
    _mm_lfence();
    uint64_t value = __atomic_load_n(word, __ATOMIC_ACQUIRE);
    *cycles = __rdtscp(&cpu) - begun;      /* rdtscp waits for the load */
    _mm_lfence();
    return value;
}

/* The TSC cycles that timing a load costs by itself: the least over loads of a line held here. */
static uint64_t timing_cost_cycles(void)
{
    static uint64_t least;
    if (least == 0) {
        uint64_t own = 0, cycles;
        least = UINT64_MAX;
        for (int i = 0; i < TIMING_COST_TRIES; i++) {
            timed_load(&own, &cycles);
            least = cycles < least ? cycles : least;
        }
    }
    return least;
}

/* The ring's tail, and the TSC cycles its line took to come, beyond timing's own cost. */
static uint64_t timed_tail_load(uint64_t *cycles)
{
    uint64_t took;
    uint64_t tail = timed_load(&shm_ring->tail, &took);
    uint64_t cost = timing_cost_cycles();
    *cycles = took > cost ? took - cost : 0;
    return tail;
}
#else
static double ns_per_tsc_cycle(void)
{
    return 0;     /* no measure: records go in place */
}

static uint64_t timed_tail_load(uint64_t *cycles)
{
    *cycles = 0;
    return __atomic_load_n(&shm_ring->tail, __ATOMIC_ACQUIRE);
}
#endif

/* Whether the median of the latest times is over ns: whether most of them are (no sort). */
static bool median_reader_ns_over(double ns)
{
    unsigned over = 0;
    for (unsigned i = 0; i < READER_DISTANCE_SAMPLES; i++) {
        over += reader.ns[i] > ns;
    }
    return over > READER_DISTANCE_SAMPLES / 2;
}

/* One more time the tail's line took to come: the reader is far where the median of the
 * latest is over far_reader_ns. */
static void note_reader_distance(uint64_t cycles)
{
    uint64_t far_ns = __atomic_load_n(&config.far_reader_ns, __ATOMIC_RELAXED);
    double rate = far_ns ? ns_per_tsc_cycle() : 0;
    if (rate == 0) {
        return;
    }
    reader.ns[reader.measured++ % READER_DISTANCE_SAMPLES] = cycles * rate;
    if (reader.measured >= READER_DISTANCE_SAMPLES) {
        reader.far = median_reader_ns_over((double)far_ns);
    }
}

/* Whether the reader is far, as last measured, and far_reader_ns (which `set` may make 0) acts on it. */
static bool reader_is_far(void)
{
    return reader.far && __atomic_load_n(&config.far_reader_ns, __ATOMIC_RELAXED);
}

/*
 * The ring's tail, read wherever the vCPU needs it (caller holds writer_lock):
 * where the reader has moved it since, the time its line took is noted.
 */
static uint64_t read_tail_locked(void)
{
    uint64_t cycles;
    uint64_t tail = timed_tail_load(&cycles);
    if (tail != reader.seen_tail) {
        reader.seen_tail = tail;
        note_reader_distance(cycles);
    }
    return tail;
}

/* Free records in the ring; waits for at least `wanted` (20 us at a time) if it may block,
 * unless memory_tracer has let the ring go. */
static uint64_t ring_room(uint64_t wanted, bool may_block)
{
    for (;;) {
        uint64_t used = shm_ring->head - read_tail_locked();
        uint64_t room = shm_ring->capacity - used;
        if (room >= wanted || !may_block) {
            return room;
        }
        if (__atomic_load_n(&shm_ring->abandoned, __ATOMIC_ACQUIRE)) {
            errno = EPIPE;
            trace_failed("shared-memory ring (memory_tracer let it go)");
            return room;
        }
        struct timespec pause = { 0, 20000 };
        nanosleep(&pause, NULL);
    }
}

static void preset_record_words(uint64_t *words, uint64_t records)
{
    if (preset_words) {
        for (uint64_t i = 0; i < records; i++) {
            words[i * FORMAT_STANDARD] = ACCESS_WORD_HIGH;
        }
    }
}

static bool holds_access_word_high(const uint64_t *record)
{
    return (record[0] & ~(uint64_t)UINT32_MAX) == ACCESS_WORD_HIGH;
}

/* Records copied into the ring, count of them from the head's count seq: where markers went. */
static void note_marked_seqs(uint64_t seq, const uint64_t *records, uint64_t count)
{
    if (!preset_words || !shm_doubled || !__atomic_load_n(&ring_windows, __ATOMIC_ACQUIRE)) {
        return;        /* or no vCPU writes into the ring itself again */
    }
    for (uint64_t i = 0; i < count; i++) {
        if (!holds_access_word_high(&records[i * FORMAT_STANDARD])) {
            g_array_append_val(marked_seqs, (uint64_t){ seq + i });
        }
    }
}

/*
 * A window of the ring taken at the head's count seq, extent records long (all
 * of them read): the markers' places among them get their bytes back. A place
 * passed before it came into a window was written over by records copied in,
 * which brought their own.
 */
static void put_back_marked_seqs(uint64_t seq, uint64_t extent)
{
    const uint64_t capacity = shm_ring->capacity;
    while (marked_first < marked_seqs->len) {
        uint64_t marked = g_array_index(marked_seqs, uint64_t, marked_first);
        if (marked + capacity >= seq + extent) {
            break;
        }
        if (marked + capacity >= seq) {
            shm_words[(marked & (capacity - 1)) * FORMAT_STANDARD] = ACCESS_WORD_HIGH;
        }
        marked_first++;
    }
    /* Those done with go once they are half of them: markers that never stop come to no more. */
    if (marked_first > marked_seqs->len / 2) {
        g_array_remove_range(marked_seqs, 0, marked_first);
        marked_first = 0;
    }
}

/*
 * Records into the ring. For a far reader (reader_is_far) by non-temporal
 * stores, past this CPU's caches: the reader then takes them from memory, not
 * line by line from this CPU's cache, and the next copy there does not wait
 * for each line to come back from the reader's. User-mode xz traced with the
 * reader far: 3.8 s copied by memcpy, 1.4-1.6 s so; near, in place, 1.3 s.
 */
static void copy_into_ring(uint64_t *to, const uint64_t *from, size_t bytes)
{
#if defined(__x86_64__)
    if (reader_is_far() && ((uintptr_t)to | (uintptr_t)from | bytes) % 16 == 0) {
        for (size_t i = 0; i < bytes / 16; i++) {
            _mm_stream_si128((__m128i *)to + i, _mm_load_si128((const __m128i *)from + i));
        }
        _mm_sfence();     /* before the head that publishes them */
        return;
    }
#endif
    memcpy(to, from, bytes);
}

/* The ring's side of write_fully: copy into the consumer's mapping, publish the head. */
static bool write_to_shm_ring(const void *data, size_t len, bool may_block)
{
    const size_t words = config.record_words;
    const uint64_t *p = data;
    uint64_t left = len / record_bytes();
    uint64_t capacity = shm_ring->capacity;
    while (left > 0) {
        /* Only a batch not yet begun may be given up: once part of it is in, the rest waits. */
        uint64_t space = ring_room(1, may_block || p != data);
        if (space == 0) {
            return false;
        }
        uint64_t head = shm_ring->head;
        uint64_t start = head & (capacity - 1);
        uint64_t count = left < space ? left : space;
        if (count > capacity - start) {
            count = capacity - start;
        }
        copy_into_ring(&shm_words[start * words], p, count * record_bytes());
        __atomic_store_n(&shm_ring->head, head + count, __ATOMIC_RELEASE);
        gmbe_ring_wake_reader(shm_ring);
        p += count * words;
        left -= count;
    }
    return true;
}

/* Writes len bytes of whole records to fd (or the ring); false when it gave up. */
static bool write_fully(int fd, const void *data, size_t len, bool may_block)
{
    if (shm_ring) {
        return write_to_shm_ring(data, len, may_block);
    }
    const char *p = data;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n > 0) {
            p += n;
            len -= (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && errno == EAGAIN) {
            struct pollfd pfd = { .fd = fd, .events = POLLOUT };
            /* A record that was begun is always finished, so the stream stays aligned. */
            if (!may_block && p == (const char *)data) {
                return false;
            }
            poll(&pfd, 1, -1);
            continue;
        }
        trace_failed("trace");
        return false;
    }
    return true;
}

static bool is_marker_word(uint64_t word0)
{
    unsigned info = config.record_words == FORMAT_COMPACT ? (unsigned)(word0 >> 48) : (unsigned)word0;
    return (info & GMBE_SIZE_SHIFT_MASK) == GMBE_MARKER_INFO;
}

/* Markers among count records from start: only looked for when the ring holds any. */
static uint64_t markers_among(VcpuRing *r, uint64_t start, uint64_t count)
{
    if (__atomic_load_n(&r->markers, __ATOMIC_ACQUIRE) == r->markers_flushed) {
        return 0;
    }
    uint64_t found = 0;
    for (uint64_t i = 0; i < count; i++) {
        found += is_marker_word(r->words[(start + i) * config.record_words]);
    }
    return found;
}

/* trace_dir: the vCPU's file, created with its header on first use. */
static int vcpu_trace_fd(VcpuRing *r)
{
    if (r->fd >= 0) {
        return r->fd;
    }
    g_autofree char *path = g_strdup_printf("%s/vcpu%u.gmbe", config.trace_dir, r->index);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    struct gmbe_trace_header h = { .magic = GMBE_TRACE_MAGIC };
    if (fd >= 0) {
        r->fd = move_fd_high(fd);
        if (pwrite(r->fd, &h, sizeof h, 0) != (ssize_t)sizeof h) {
            trace_failed(path);
        }
        lseek(r->fd, sizeof h, SEEK_SET);
    } else {
        trace_failed(path);
    }
    return r->fd;
}

/* The header of a per-vCPU trace file, with its final count. */
static void finish_vcpu_trace_file(VcpuRing *r)
{
    if (r->fd < 0) {
        return;
    }
    struct gmbe_trace_header h = {
        .magic = GMBE_TRACE_MAGIC,
        .format_version = GMBE_TRACE_FORMAT_VERSION,
        .record_size = (uint32_t)record_bytes(),
        .compression = GMBE_COMPRESSION_NONE,
        .vcpu_count = r->index + 1,
        .trace_only_cpl3 = config.trace_only_cpl3,
        .log_of_block_len = config.log_block_len,
        .log_of_tracing_ratio = config.log_tracing_ratio,
        .record_count = r->records_in_file,
    };
    if (pwrite(r->fd, &h, sizeof h, 0) != (ssize_t)sizeof h) {
        trace_failed("trace file header");
    }
    close(r->fd);
    r->fd = -1;
}

static bool have_trace(void)
{
    return trace_fd >= 0 || shm_ring || config.trace_dir;
}

/* ------------------------------------------------------------ inline records */

/*
 * With QEMU patched from qemu_patches/ (build.py builds it), the generated code
 * writes each access's record into the vCPU's buffer itself: a constant word
 * chosen here when the access is translated (record_word), and the address.
 * No call per access. The plugin sees the records when they are handed over:
 * when the buffer is full (inline_buffer_full, called by the generated code),
 * at a marker, when tracing changes, at the end. The vCPU index (a translation
 * is shared by all vCPUs) and sampling are applied then. A stock QEMU has none
 * of these functions (they are weak): the callback path runs there instead.
 */
#ifdef QEMU_PLUGIN_HAS_INLINE_RECORD
#pragma weak qemu_plugin_register_vcpu_tb_mem_inline_record
#pragma weak qemu_plugin_register_record_full_cb
#pragma weak qemu_plugin_set_record_buffer
#pragma weak qemu_plugin_record_buffer_next
#pragma weak qemu_plugin_record_buffer_stop
#pragma weak qemu_plugin_set_record_counting
#pragma weak qemu_plugin_record_counting
#pragma weak qemu_plugin_set_record_sampling
#define INLINE_SLACK_RECORDS (QEMU_PLUGIN_RECORD_SLACK + 1)

static bool inline_available(void)
{
    return qemu_plugin_register_vcpu_tb_mem_inline_record && qemu_plugin_register_record_full_cb &&
           qemu_plugin_set_record_buffer && qemu_plugin_record_buffer_next &&
           qemu_plugin_record_buffer_stop;
}
#else
#define INLINE_SLACK_RECORDS 0
#endif

static bool use_inline;     /* decided at install: a QEMU that can, and no callback_records=on */
static bool use_counting;   /* and the blocks that only count records: between samples, while not tracing */
static bool samples_when_counting;  /* and those blocks can write the samples (a patched x86-64 host) */

/*
 * Where the counting blocks write the samples only (start_buffer_locked), a
 * buffer spans this many records, of which they write 1 in 2^R: the hand-overs
 * (each a leave of translated code, and a write() or a ring publish) then come
 * every 64 samples at 1/1024, not every 4 as with 4096 records. Only the
 * pages of the samples are touched: every fourth page of 16-byte records at
 * 1/1024. Plugin alone, gzip -6 of 4 MiB sampled 1/1024 to a trace file ran
 * 7% faster (0.93x, 15 paired rounds), its system time 0.11 s -> 0.03 s.
 */
#define SAMPLES_SPAN_RECORDS 65536u

static uint64_t samples_span_records(void)
{
    return config.buffer_records > SAMPLES_SPAN_RECORDS ? config.buffer_records : SAMPLES_SPAN_RECORDS;
}

/*
 * Records a vCPU buffer holds: the generated code checks for room only now and
 * then. The callback path's buffers are as large, though it uses buffer_records
 * of them: in user mode the guest's mappings land where QEMU's allocations
 * leave room, and they should not move with the path.
 */
static size_t buffer_capacity(void)
{
    return (size_t)samples_span_records() + INLINE_SLACK_RECORDS;
}

/* ------------------------------------------ the FIFO by vmsplice (inline records) */

/*
 * Inline records go to a FIFO by vmsplice(): the pipe takes references to the
 * pages of the vCPU's buffer and the reader's read() copies from them, so the
 * vCPU thread copies nothing and the kernel allocates no pages. The price: a
 * buffer so handed over must not be written again until the reader has read
 * it. A vCPU whose buffer is full and in the pipe takes another one; a buffer
 * is spare again once the FIFO's unread bytes (FIONREAD) show the reader past
 * its end. Small pieces (sampled blocks, the records before a marker) are
 * copied by write() instead, so that every buffer in the pipe holds a good
 * share of it and the buffers in flight stay few.
 */
#define SPLICE_MIN_BYTES (16u << 10)

typedef struct {
    uint64_t *words;
    uint64_t spliced_end;       /* fifo_bytes_written after its last splice */
} SpareBuffer;

#define NEVER_READ UINT64_MAX     /* the spliced_end of a buffer left in a closed FIFO */

static GArray *spare_buffers;          /* SpareBuffer; under writer_lock */
static uint64_t fifo_bytes_written;    /* ever, by write() and vmsplice() alike */
static uint64_t fifo_bytes_read;       /* by the reader, as last seen */
static uint64_t fifo_bytes_spliced;    /* ever (the counters' spliced_records) */

static bool splice_fully(int fd, const void *data, size_t len)
{
    struct iovec iov = { .iov_base = (void *)data, .iov_len = len };
    while (iov.iov_len > 0) {
        ssize_t n = vmsplice(fd, &iov, 1, 0);
        if (n > 0) {
            iov.iov_base = (char *)iov.iov_base + n;
            iov.iov_len -= (size_t)n;
        } else if (n < 0 && errno != EINTR) {
            trace_failed("trace");
            return false;
        }
    }
    return true;
}

/* Hands over len bytes of r's buffer: spliced when worth it, else written. */
static bool hand_over(VcpuRing *r, int fd, const void *data, size_t len, bool may_block)
{
    if (!fifo_splice) {
        return write_fully(fd, data, len, may_block);
    }
    bool done;
    if (len >= SPLICE_MIN_BYTES) {
        done = splice_fully(fd, data, len);
        r->words_in_pipe = true;
        r->words_spliced_end = fifo_bytes_written + len;
        fifo_bytes_spliced += done ? len : 0;
    } else {
        done = write_fully(fd, data, len, may_block);
    }
    fifo_bytes_written += done ? len : 0;
    return done;
}

/* What the reader has read: all that was written but what the pipe still holds. */
static void update_fifo_bytes_read(void)
{
    int unread = 0;
    if (trace_fd >= 0 && ioctl(trace_fd, FIONREAD, &unread) == 0) {
        fifo_bytes_read = fifo_bytes_written - (uint64_t)unread;
    }
}

static uint64_t *take_spare_buffer_locked(void)
{
    for (guint i = 0; i < spare_buffers->len; i++) {
        SpareBuffer *b = &g_array_index(spare_buffers, SpareBuffer, i);
        if (b->spliced_end <= fifo_bytes_read) {
            uint64_t *words = b->words;
            g_array_remove_index_fast(spare_buffers, i);
            return words;
        }
    }
    return NULL;
}

/* A vCPU's buffer, every record of it preset (preset_record_words). */
static uint64_t *new_record_buffer(void)
{
    uint64_t *words = g_new(uint64_t, buffer_capacity() * config.record_words);
    preset_record_words(words, buffer_capacity());
    return words;
}

/* Before the vCPU starts its buffer again: another one if the pipe may still hold this one. */
static void renew_buffer_if_in_pipe_locked(VcpuRing *r)
{
    if (!r->words_in_pipe) {
        return;
    }
    SpareBuffer old = { .words = r->own_words, .spliced_end = r->words_spliced_end };
    g_array_append_val(spare_buffers, old);
    r->own_words = take_spare_buffer_locked();
    if (!r->own_words) {
        update_fifo_bytes_read();
        r->own_words = take_spare_buffer_locked();
    }
    if (!r->own_words) {
        r->own_words = new_record_buffer();
    }
    r->words = r->own_words;
    r->words_in_pipe = false;
}

/*
 * The FIFO is being closed: what it still holds may be read at any time, and
 * a new FIFO's counts say nothing of it, so the buffers it may hold are never
 * used again (at most a pipe's worth, per close).
 */
static void abandon_buffers_in_pipe_locked(void)
{
    update_fifo_bytes_read();
    for (guint i = 0; i < spare_buffers->len; i++) {
        SpareBuffer *b = &g_array_index(spare_buffers, SpareBuffer, i);
        if (b->spliced_end > fifo_bytes_read) {
            b->spliced_end = NEVER_READ;
        }
    }
    for (unsigned i = 0; i < __atomic_load_n(&num_rings, __ATOMIC_ACQUIRE); i++) {
        if (rings[i] && rings[i]->words_in_pipe && rings[i]->words_spliced_end > fifo_bytes_read) {
            rings[i]->words_spliced_end = NEVER_READ;
        }
    }
}

/* ------------------------------------ inline records in place in the ring */

/*
 * With one vCPU, inline records are not copied into the shared-memory ring:
 * the vCPU's buffer is a window of the ring itself, taken at its head, and
 * handing records over is publishing a new head. The ring's records are
 * mapped twice in a row, so a window that runs past the ring's end goes on at
 * its start. Records that are not handed over (untraced, between samples)
 * are closed up: the next ones handed over move down to the head first.
 *
 * Only with one vCPU, for the ring has one head and another vCPU's records
 * would land in the window: full system with one vCPU, and user mode until
 * the guest makes a thread (seen in its clone system call, on the thread whose
 * window it ends, before the new vCPU exists).
 */
#define MIN_WINDOW_RECORDS 64u

/* The ring's records mapped twice in a row, or NULL (then records are copied in). */
static uint64_t *map_records_twice(int fd, uint64_t offset, size_t bytes)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    if (offset % page || bytes % page) {
        return NULL;
    }
    char *area = mmap(NULL, 2 * bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (area == MAP_FAILED) {
        return NULL;
    }
    for (int i = 0; i < 2; i++) {
        if (mmap(area + i * bytes, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd,
                 (off_t)offset) == MAP_FAILED) {
            munmap(area, 2 * bytes);
            return NULL;
        }
    }
    return (uint64_t *)area;
}

/*
 * The ring's pages made and mapped now, while tracing has not started (the
 * guest is paused when a full-system window opens): else the vCPU's first
 * record on each of its pages faults, inside the window, and the host clears
 * the page then (some 500 faults in a full-system run of 32 M records). Only
 * a hint: a kernel without MADV_POPULATE_WRITE (before Linux 5.14) faults
 * them in as they come. Of a ring mapped twice, only the first mapping: the
 * second is written only where a window runs on past the ring's end, a
 * buffer's pages at most, which fault in once; mapping all its pages too
 * took a user-mode run about a millisecond more, there and at its exit.
 */
static void populate_for_writing(void *area, size_t bytes)
{
#ifdef MADV_POPULATE_WRITE
    madvise(area, bytes, MADV_POPULATE_WRITE);
#endif
}

/* Private memory in place of the ring's records: a vCPU still writing there harms nobody. */
static void make_records_private(void *area, size_t size)
{
    mmap(area, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
}

static bool in_ring_window(VcpuRing *r)
{
    return r->in_ring && r->window_generation == ring_generation && shm_ring;
}

/* The ring closes: its records are unmapped, or kept as private memory while a vCPU writes there. */
static void unmap_ring_records_locked(void)
{
    if (!shm_doubled) {
        return;
    }
    size_t size = 2 * shm_words_bytes;
    bool written = false;
    for (unsigned i = 0; i < __atomic_load_n(&num_rings, __ATOMIC_ACQUIRE); i++) {
        written |= rings[i] && in_ring_window(rings[i]);
    }
    if (written) {
        make_records_private(shm_words, size);
        retired_windows = shm_words;
        retired_windows_size = size;
    } else {
        munmap(shm_words, size);
    }
    shm_doubled = false;
}

/* A vCPU leaves its window: if it was in a closed ring's records, they go now. */
static void leave_ring_window_locked(VcpuRing *r)
{
    if (r->in_ring && r->window_generation != ring_generation && retired_windows) {
        munmap(retired_windows, retired_windows_size);
        retired_windows = NULL;
    }
    r->in_ring = false;
    r->words = r->own_words;
}

#ifdef QEMU_PLUGIN_HAS_INLINE_RECORD
/*
 * Where it can, the vCPU's next buffer is a window of the ring at its head
 * (room for the records it may write past its limit included); returns the
 * window's limit, at most limit. Else the vCPU writes into its own buffer.
 */
static uint64_t take_ring_window_locked(VcpuRing *r, uint64_t limit)
{
    if (!shm_doubled || !shm_ring || !ring_windows || limit == 0 ||
        !__atomic_load_n(&r->tracing, __ATOMIC_ACQUIRE)) {
        return limit;
    }
    if (reader_is_far()) {
        reader.buffers_copied++;
        return limit;
    }
    uint64_t room = ring_room(INLINE_SLACK_RECORDS + MIN_WINDOW_RECORDS, !config.drop_when_full);
    if (room < INLINE_SLACK_RECORDS + MIN_WINDOW_RECORDS) {
        return limit;      /* drop mode, and the reader is behind: the copy into the ring drops */
    }
    uint64_t capacity = shm_ring->capacity;
    uint64_t head = shm_ring->head;
    r->words = shm_words + (head & (capacity - 1)) * config.record_words;
    r->in_ring = true;
    r->window_seq = head;
    r->window_generation = ring_generation;
    room -= INLINE_SLACK_RECORDS;
    limit = room < limit ? room : limit;
    put_back_marked_seqs(head, limit + INLINE_SLACK_RECORDS);
    return limit;
}

/*
 * n records of r's window go out: moved down to the ring's head first if
 * records before them were not handed over, then published.
 */
static void publish_in_place_locked(VcpuRing *r, const uint64_t *records, uint64_t n)
{
    uint64_t head = shm_ring->head;
    uint64_t *at_head = r->words + (head - r->window_seq) * config.record_words;
    if (at_head != records) {
        memmove(at_head, records, n * record_bytes());
    }
    __atomic_store_n(&shm_ring->head, head + n, __ATOMIC_RELEASE);
    gmbe_ring_wake_reader(shm_ring);
    in_place_records += n;
}

static uint64_t inline_position(VcpuRing *r)
{
    return (uint64_t)((uint64_t *)qemu_plugin_record_buffer_next(r->index) - r->words) / config.record_words;
}

/* The constant word of an access's record: what store_record writes but the vCPU and address. */
static uint64_t record_word(qemu_plugin_meminfo_t info, void *udata)
{
    uint8_t decoded = decoded_meminfo(info);
    uint64_t bits = (decoded ? decoded & ~MEMINFO_DECODED : decode_meminfo_slow(info)) | (uintptr_t)udata;
    return config.record_words == FORMAT_COMPACT ? bits << 48 : ACCESS_WORD_HIGH | bits;
}

/*
 * n records of r go out (markers among them), from r's buffer or from
 * elsewhere; caller holds writer_lock.
 */
static void deliver_records_locked(VcpuRing *r, const uint64_t *records, uint64_t n, uint64_t markers,
                                   bool from_buffer, bool may_block)
{
    if (n == 0) {
        return;
    }
    if (have_trace() && !trace_broken) {
        int fd = config.trace_dir ? vcpu_trace_fd(r) : trace_fd;
        bool in_place = from_buffer && in_ring_window(r);
        uint64_t seq = shm_ring ? shm_ring->head : 0;     /* where the records go in the ring */
        if (in_place) {
            publish_in_place_locked(r, records, n);
        }
        if (in_place || hand_over(r, fd, records, n * record_bytes(), may_block)) {
            if (markers && shm_ring) {
                note_marked_seqs(seq, records, n);
            }
            r->records_in_file += n;
            written_to_file += n - markers;
        } else if (!trace_broken) {
            r->dropped += n - markers;     /* drop mode, and the reader is behind */
            r->markers_flushed += markers;
            return;
        }
    }
    r->markers_flushed += markers;
    __atomic_store_n(&r->head, r->head + n, __ATOMIC_RELEASE);
    __atomic_store_n(&r->tail, r->head, __ATOMIC_RELEASE);
}

/* Records [from, to) of the vCPU's buffer go out: accesses only. */
static void deliver_locked(VcpuRing *r, uint64_t from, uint64_t to, bool may_block)
{
    deliver_records_locked(r, &r->words[from * config.record_words], to - from, 0, true, may_block);
}

/* The vCPU's index goes into records [from, to): the generated word is the same for every vCPU. */
static void add_vcpu_bits(VcpuRing *r, uint64_t from, uint64_t to)
{
    if (r->vcpu_bits) {
        for (uint64_t i = from; i < to; i++) {
            r->words[i * config.record_words] |= r->vcpu_bits;
        }
    }
}

/*
 * Sampled records [from, to), no marker among them: the traced blocks of events are found by
 * arithmetic, one step per period of 2^(L+R) events, not one per record. They are moved down
 * to `from`, each after the one before, and go out together: one write for a buffer of small
 * samples, not one each.
 */
static void deliver_sampled_locked(VcpuRing *r, uint64_t from, uint64_t to, uint64_t mask, bool may_block)
{
    const size_t w = config.record_words;
    uint64_t block = traced_block(mask);
    uint64_t period = UINT64_C(1) << log_sampling_period(mask);
    uint64_t first = r->events - r->events_at_enable;  /* the event index of record `from` */
    uint64_t last = first + (to - from);
    uint64_t kept = 0;
    for (uint64_t start = first - first % period; start < last; start += period) {
        uint64_t a = start > first ? start : first;
        uint64_t b = start + block < last ? start + block : last;
        if (a < b) {
            memmove(&r->words[(from + kept) * w], &r->words[(from + (a - first)) * w], (b - a) * record_bytes());
            kept += b - a;
        }
    }
    add_vcpu_bits(r, from, from + kept);
    deliver_locked(r, from, from + kept, may_block);
    r->events += to - from;
}

/* How many of the events [0, end) the sampling keeps: 2^L of every 2^(L+R). */
static uint64_t sampled_before(uint64_t end, uint64_t mask)
{
    uint64_t block = traced_block(mask);
    unsigned log_period = log_sampling_period(mask);
    if (log_period >= 64) {
        return end < block ? end : block;
    }
    uint64_t period = UINT64_C(1) << log_period;
    uint64_t rest = end % period;
    return end / period * block + (rest < block ? rest : block);
}

/* How many of the events [first, first + count) the sampling keeps. */
static uint64_t sampled_among(uint64_t first, uint64_t count, uint64_t mask)
{
    return mask ? sampled_before(first + count, mask) - sampled_before(first, mask) : count;
}

/* Records [from, to) of traced events that the vCPU did not write where they are sampled: lost. */
static void pass_over_locked(VcpuRing *r, uint64_t from, uint64_t to, uint64_t mask)
{
    r->passed_over += to - from;
    r->dropped += sampled_among(r->events - r->events_at_enable, to - from, mask);
    r->events += to - from;
}

/*
 * Whether the samples that the vCPU wrote in place (its counting blocks write
 * only those) are where sampling now wants them: record `from` is the event
 * the plan said, of the same sampling. Not if tracing started again (a new
 * event count) or the sampling changed since the plan: until the vCPU's next
 * hand-over, those records are lost.
 */
static bool samples_where_planned(VcpuRing *r, uint64_t from, uint64_t mask)
{
    return mask == r->samples_mask && r->events - r->events_at_enable == r->samples_first + from;
}

/*
 * Records [from, to) that the vCPU may only have counted (the counting
 * translation, between samples or while not tracing): passed over, never
 * delivered. Between samples they are never sampled unless the sampling or
 * the tracing changed under a counting vCPU: then those are lost, and counted
 * as dropped. Counted while not tracing, they are the accesses before the
 * vCPU saw tracing begin (at its next room check): not traced.
 */
static uint64_t pass_over_unwritten_locked(VcpuRing *r, uint64_t from, uint64_t to, bool traced, uint64_t mask)
{
    uint64_t end = r->unwritten_end > r->stream_base ? r->unwritten_end - r->stream_base : 0;
    if (end <= from) {
        return from;
    }
    uint64_t n = (end < to ? end : to) - from;
    if (traced && !r->unwritten_untraced) {
        pass_over_locked(r, from, from + n, mask);
    } else {
        r->passed_over += n;
    }
    return from + n;
}

/*
 * Hands over what the vCPU wrote since the last time: added the vCPU's bits,
 * the accesses while tracing, sampled (markers went out when written). Caller
 * holds writer_lock. Safe beside the running vCPU: records before its next
 * pointer are complete, and it writes only after it. From another thread the
 * pointer may lag (the vCPU stores it at calls to helpers with side effects
 * and at exits); what lies beyond it goes out at the vCPU's next hand-over.
 */
static void settle_inline_locked(VcpuRing *r, bool may_block)
{
    uint64_t from = r->inline_tail, to = inline_position(r);
    bool traced = __atomic_load_n(&r->tracing, __ATOMIC_ACQUIRE);
    uint64_t mask = __atomic_load_n(&sampling_mask, __ATOMIC_RELAXED);
    r->inline_tail = to;
    from = pass_over_unwritten_locked(r, from, to, traced, mask);
    if (!traced || from == to) {
        return;
    }
    if (r->samples_in_place) {
        if (!samples_where_planned(r, from, mask)) {
            pass_over_locked(r, from, to, mask);
            return;
        }
        r->counted_samples += sampled_among(r->events - r->events_at_enable, to - from, mask);
    }
    if (mask == 0) {                        /* the usual case: all of it, in one piece */
        add_vcpu_bits(r, from, to);
        r->events += to - from;
        deliver_locked(r, from, to, may_block);
    } else if (sampling_period_fits(mask)) {
        deliver_sampled_locked(r, from, to, mask, may_block);
    } else {
        add_vcpu_bits(r, from, to);
        /* Runs of records kept: sampling keeps blocks of consecutive events. */
        uint64_t run = from;
        for (uint64_t i = from; i < to; i++) {
            if ((r->events++ - r->events_at_enable) & mask) {
                deliver_locked(r, run, i, may_block);
                run = i + 1;
            }
        }
        deliver_locked(r, run, to, may_block);
    }
}

/*
 * Sampled traces: between the traced blocks of events, the vCPU runs blocks
 * that only count their accesses (qemu_plugin_set_record_counting). Their
 * limit lies COUNTING_MARGIN records before the next traced block: that many
 * accesses may pass a room check unwritten, never more.
 */
#define COUNTING_MARGIN QEMU_PLUGIN_RECORD_COUNTING_SLACK
/*
 * Fewer are not worth it: changing translation (leaving the block, finding the
 * other one) costs about as much as writing a few hundred records, twice per gap
 * (measured with bench/handover.py: gaps of 1023 ran slower counted than written).
 */
#define MIN_COUNTED_RECORDS 8192u

/* Whether the gaps between a sampling's traced blocks are long enough to change translation for. */
static bool gaps_counted(uint64_t mask)
{
    uint64_t period = UINT64_C(1) << log_sampling_period(mask);
    return period - traced_block(mask) >= COUNTING_MARGIN + MIN_COUNTED_RECORDS;
}

/*
 * Counting blocks that write a sampled trace's samples (samples_when_counting)
 * pay at each sample: the code where the pointer's add carries, and in a block
 * that counts its accesses at its start, its twin (translated for each block
 * that a sample falls in, and run instead of it). Where samples come often,
 * writing every record and keeping the sampled ones at hand-over costs less;
 * in full system sooner, as its samples fall in more blocks (the kernel's).
 * Sampled 1 in 2^R, to count through the ring, over untraced QEMU, counted
 * against written (the samples' lines fetched ahead, tcg/i386's
 * record_carried): user mode, gzip, R = 5: 1.36x/1.42x, 6: 1.29x/1.40x,
 * 7: 1.13x/1.36x; sort, R = 6: 1.13x/1.21x; xz, R = 5: 1.35x/1.35x, 6:
 * 1.28x/1.28x; full system, sort, R = 7: 1.24x/1.15x, 8: 1.16x/1.15x, and
 * before that fetch, 9: 1.13x/1.19x.
 */
#define LOG_MIN_COUNTED_RATIO_USER 6
#define LOG_MIN_COUNTED_RATIO_SYSTEM 9

/*
 * Where the gaps are too short to change translation for: whether counting
 * blocks write the samples all along (one in 2^R, R the mask's bits), or the
 * vCPU writes every record.
 */
static bool samples_counted(uint64_t mask)
{
    unsigned log_min_ratio = system_emulation ? LOG_MIN_COUNTED_RATIO_SYSTEM : LOG_MIN_COUNTED_RATIO_USER;
    return samples_when_counting && (unsigned)__builtin_popcountll(mask) >= log_min_ratio;
}

/* Whether a vCPU that traces with this sampling writes every record, never counting. */
static bool writes_every_record(uint64_t mask)
{
    return mask == 0 || !sampling_period_fits(mask) || (!gaps_counted(mask) && !samples_counted(mask));
}

/* Where the vCPU's new buffer ends, and whether it counts or writes records till there. */
static uint64_t plan_buffer_locked(VcpuRing *r, bool *count)
{
    uint64_t mask = __atomic_load_n(&sampling_mask, __ATOMIC_RELAXED);
    uint64_t limit = config.buffer_records;
    *count = false;
    r->samples_in_place = false;
    if (!use_counting) {
        return limit;
    }
    if (!__atomic_load_n(&r->tracing, __ATOMIC_ACQUIRE)) {
        if (!__atomic_load_n(&window_open, __ATOMIC_ACQUIRE) && writes_every_record(mask)) {
            /*
             * Written: the translation that writes stays warm for the timed window. A window
             * that counts nearly all along (sampled) keeps that translation warm instead.
             */
            return limit;
        }
        /*
         * Outside a marked region, past the instruction limit, before a sampled window: nobody
         * reads these records, so they are counted (tracing on stops the buffer, see
         * update_tracing_of).
         */
        *count = true;
        r->unwritten_end = r->stream_base + limit + COUNTING_MARGIN;
        r->unwritten_untraced = true;
        return limit;
    }
    if (r->unwritten_untraced) {
        /* Settled up to here; from here on the vCPU writes (or counts between samples, planned below). */
        r->unwritten_end = r->stream_base;
        r->unwritten_untraced = false;
    }
    if (mask == 0 || !sampling_period_fits(mask)) {
        return limit;
    }
    uint64_t block = traced_block(mask);
    uint64_t period = UINT64_C(1) << log_sampling_period(mask);
    bool counting_now = qemu_plugin_record_counting(r->index);
    if (!gaps_counted(mask)) {
        /* No gap is worth changing translation for. */
        if (samples_counted(mask)) {
            /* Counting blocks all along, which write the samples only (start_buffer_locked). */
            *count = true;
            r->samples_in_place = true;
            r->samples_first = r->events - r->events_at_enable;
            r->samples_mask = mask;
            return samples_span_records();
        }
        if (!counting_now) {
            /*
             * Or all of them written, and sampled at hand-over. To a FIFO or a file each
             * hand-over is a system call: a buffer that spans more makes fewer (plugin alone,
             * gzip -6 of 4 MiB sampled 1 in 16, 7 interleaved rounds: to a FIFO 1.89x -> 1.75x
             * untraced, to a trace file 2.03x -> 1.71x). Into the ring, a copy: there more
             * records than the caches hold cost more than the hand-overs saved (1.42x -> 1.47x).
             */
            return shm_ring ? limit : samples_span_records();
        }
    }
    uint64_t in_period = (r->events - r->events_at_enable) % period;
    if (in_period < block) {
        /* In a traced block: back here where it ends. */
        return block - in_period < limit ? block - in_period : limit;
    }
    uint64_t wanted_in = period - in_period;        /* the next traced event, so many records on */
    /* Only a long gap is worth changing translation for; once counting, to the end of the gap. */
    uint64_t worth = counting_now ? 1 : MIN_COUNTED_RECORDS;
    if (wanted_in < COUNTING_MARGIN + worth) {
        return wanted_in < limit ? wanted_in : limit;
    }
    *count = true;
    limit = wanted_in - COUNTING_MARGIN < limit ? wanted_in - COUNTING_MARGIN : limit;
    uint64_t unwritten_end = r->stream_base + limit + COUNTING_MARGIN;
    if (unwritten_end > r->unwritten_end) {
        r->unwritten_end = unwritten_end;
    }
    return limit;
}

/*
 * The counting blocks write the records of the sampled events: those of
 * events E0 + p, at position p of the buffer, for E0 = samples_first, in
 * blocks of 2^L every 2^(L+R). QEMU moves a block on by whole periods, so the
 * first one is given whole, even where it began before record 0. Until the
 * vCPU runs those blocks, it writes every record, these too.
 */
static void write_samples_in_place(VcpuRing *r)
{
    uint64_t block = traced_block(r->samples_mask);
    uint64_t period = UINT64_C(1) << log_sampling_period(r->samples_mask);
    uint64_t in_period = r->samples_first % period;
    /* A position before record 0 (in_period < block) wraps around in unsigned arithmetic. */
    uint64_t first_record = in_period < block ? -in_period : period - in_period;
    uintptr_t first = (uintptr_t)r->words + first_record * record_bytes();
    qemu_plugin_set_record_sampling(r->index, (void *)first, (void *)(first + block * record_bytes()),
                                    period * record_bytes(), record_bytes());
}

/*
 * The vCPU starts its buffer again, as planned. Until it runs the planned
 * translation (it changes at its next room check before an instruction),
 * every room check comes here: its limit is where it is.
 */
static void start_buffer_locked(VcpuRing *r)
{
    r->stream_base += r->inline_tail;
    r->inline_tail = 0;
    leave_ring_window_locked(r);
    renew_buffer_if_in_pipe_locked(r);
    bool count;
    uint64_t limit = plan_buffer_locked(r, &count);
    if (use_counting) {
        qemu_plugin_set_record_counting(r->index, count);
        if (count != qemu_plugin_record_counting(r->index)) {
            limit = 0;
        }
    }
    if (!count || r->samples_in_place) {      /* the records it writes are where they go */
        limit = take_ring_window_locked(r, limit);
    }
    qemu_plugin_set_record_buffer(r->index, r->words, r->words + limit * config.record_words);
    if (r->samples_in_place) {
        write_samples_in_place(r);
    }
}

/* The generated code found the buffer full (or a marker needs room): hand over, start again. */
static void inline_buffer_full(unsigned int vcpu_index, void *udata)
{
    VcpuRing *r = rings[vcpu_index];
    pthread_mutex_lock(&writer_lock);
    /*
     * The reader's distance, measured here before the hand-over, not only by ring_room's read
     * after it: there, just after the head is published, a near reader's line took 20-50 ns
     * (here 50), less far from a far one's 140.
     */
    if (shm_ring && shm_doubled && ring_windows) {
        read_tail_locked();
    }
    settle_inline_locked(r, !config.drop_when_full);
    start_buffer_locked(r);
    pthread_mutex_unlock(&writer_lock);
    /* After the new limit: a request that stopped the old one is seen here, a later one stops this one. */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (qemu_plugin_u64_get(retranslate_flag, vcpu_index)) {
        vcpu_retranslate(vcpu_index, NULL);
    }
}

/*
 * A vCPU that has no buffer yet: a new one, or (user mode) a new thread given
 * the index of one that ended, whose records went out when it did.
 */
static void start_inline_buffer(VcpuRing *r)
{
    if (use_inline && qemu_plugin_record_buffer_next(r->index) == NULL) {
        pthread_mutex_lock(&writer_lock);
        r->inline_tail = 0;
        r->unwritten_end = r->stream_base;     /* a new vCPU starts writing records */
        /* Asked on a vCPU's thread: whether this host's counting blocks can write samples. */
        samples_when_counting = samples_when_counting &&
                                qemu_plugin_set_record_sampling(r->index, NULL, NULL, 0, 0);
        start_buffer_locked(r);
        pthread_mutex_unlock(&writer_lock);
    }
}

/* A forked child (user mode): the parent's FIFO may hold pages of these buffers; never write them. */
static void leave_buffers_in_pipe_alone(void)
{
    if (!fifo_splice) {
        return;
    }
    for (unsigned i = 0; i < num_rings; i++) {
        if (rings[i]) {
            rings[i]->own_words = rings[i]->words = new_record_buffer();
            rings[i]->words_in_pipe = false;
            rings[i]->inline_tail = 0;
            qemu_plugin_set_record_buffer(i, rings[i]->words,
                                          rings[i]->words + config.buffer_records * config.record_words);
        }
    }
    g_array_set_size(spare_buffers, 0);
    fifo_splice = false;
}
#else
static void settle_inline_locked(VcpuRing *r, bool may_block) {}
static void start_inline_buffer(VcpuRing *r) {}
static void leave_buffers_in_pipe_alone(void) {}
#endif

/* Before tracing changes on this vCPU (its own thread): what it wrote so far goes by the old rule. */
static void settle_before_change(VcpuRing *r)
{
    if (use_inline) {
        pthread_mutex_lock(&writer_lock);
        settle_inline_locked(r, true);
        pthread_mutex_unlock(&writer_lock);
    }
}

/*
 * Writes out the ring's records up to its current head. Caller holds
 * writer_lock. In drop mode with may_block false, gives up when the FIFO is
 * full; returns whether the ring is now empty.
 */
static bool flush_ring_locked(VcpuRing *r, bool may_block)
{
    if (use_inline) {
        settle_inline_locked(r, may_block);
        return true;
    }
    uint64_t head = __atomic_load_n(&r->head, __ATOMIC_ACQUIRE);
    uint64_t tail = r->tail;
    while (tail != head && have_trace() && !trace_broken) {
        uint64_t start = tail & buffer_mask;
        uint64_t count = head - tail;
        if (start + count > config.buffer_records) {
            count = config.buffer_records - start;   /* up to the end of the ring first */
        }
        int fd = config.trace_dir ? vcpu_trace_fd(r) : trace_fd;
        if (!write_fully(fd, &r->words[start * config.record_words], count * record_bytes(), may_block)) {
            break;
        }
        uint64_t markers = markers_among(r, start, count);
        r->markers_flushed += markers;
        r->records_in_file += count;
        tail += count;
        written_to_file += count - markers;
        __atomic_store_n(&r->tail, tail, __ATOMIC_RELEASE);
    }
    if (trace_broken) {
        /* Nobody will read these: discard them (they show as missing) rather than wait. */
        __atomic_store_n(&r->tail, head, __ATOMIC_RELEASE);
        tail = head;
    }
    return tail == head;
}

static void flush_all_rings(void)
{
    pthread_mutex_lock(&writer_lock);
    for (unsigned i = 0; i < __atomic_load_n(&num_rings, __ATOMIC_ACQUIRE); i++) {
        if (rings[i]) {
            flush_ring_locked(rings[i], true);
        }
    }
    pthread_mutex_unlock(&writer_lock);
}

/* The slow path of every append: the ring is full. Returns whether there is room now. */
static COLD bool make_room(VcpuRing *r)
{
    if (!config.drop_when_full) {
        pthread_mutex_lock(&writer_lock);
        flush_ring_locked(r, true);
        pthread_mutex_unlock(&writer_lock);
        return true;
    }
    if (r->drop_retry_countdown > 0) {
        r->drop_retry_countdown--;
        r->dropped++;
        return false;
    }
    bool emptied = false;
    if (pthread_mutex_trylock(&writer_lock) == 0) {
        flush_ring_locked(r, false);
        pthread_mutex_unlock(&writer_lock);
        emptied = r->head - __atomic_load_n(&r->tail, __ATOMIC_ACQUIRE) < config.buffer_records;
    }
    if (!emptied) {
        r->dropped++;
        r->drop_retry_countdown = DROP_RETRY_INTERVAL;
    }
    return emptied;
}

static inline bool ring_full(VcpuRing *r, uint64_t head)
{
    return head - __atomic_load_n(&r->tail, __ATOMIC_ACQUIRE) >= config.buffer_records;
}

/* ------------------------------------------------------------- whether to trace */

/* Records are written while the window is open, inside a marked region when asked, within the limit. */
static void update_tracing_of(VcpuRing *r)
{
    bool on = __atomic_load_n(&window_open, __ATOMIC_ACQUIRE) && !trace_broken &&
              !r->out_of_instructions &&
              (!config.only_marked_regions || __atomic_load_n(&region_active, __ATOMIC_ACQUIRE));
    bool was = __atomic_exchange_n(&r->tracing, on, __ATOMIC_ACQ_REL);
#ifdef QEMU_PLUGIN_HAS_INLINE_RECORD
    if (use_counting && on && !was) {
        /*
         * It may count its accesses, planned while not tracing: it plans again at its next room
         * check, which on its own thread (a marker's callback) follows the marker's instruction.
         */
        qemu_plugin_record_buffer_stop(r->index);
    }
#endif
}

/*
 * The samples that counting blocks write in place follow the event count and
 * the sampling of their plan: when either changes, every vCPU plans again at
 * its next room check (the accesses till then are not sampled, see
 * samples_where_planned; none when the guest is paused, as at enable).
 */
static void plan_samples_again(void)
{
#ifdef QEMU_PLUGIN_HAS_INLINE_RECORD
    for (unsigned i = 0; samples_when_counting && i < __atomic_load_n(&num_rings, __ATOMIC_ACQUIRE); i++) {
        if (rings[i]) {
            qemu_plugin_record_buffer_stop(i);
        }
    }
#endif
}

static void update_tracing(void)
{
    for (unsigned i = 0; i < __atomic_load_n(&num_rings, __ATOMIC_ACQUIRE); i++) {
        if (rings[i]) {
            update_tracing_of(rings[i]);
        }
    }
}

/* --------------------------------------------------------------- the hot path */

/*
 * The record of one access, in the configured format. udata is what the
 * translation attached: the CPL bits, and for extended records the PC too
 * (bits 0-55, sign-extended from bit 55; CPL in bits 62-63).
 */
static inline void store_record(VcpuRing *r, uint64_t head, uint8_t bits, qemu_plugin_meminfo_t info,
                                uint64_t vaddr, uintptr_t udata, const RecordWords words)
{
    uint64_t *slot = &r->words[(head & buffer_mask) * words];
    if (words == FORMAT_COMPACT) {
        slot[0] = r->header | ((uint64_t)(udata | bits) << 48) | (vaddr & GMBE_COMPACT_ADDR_MASK);
    } else if (words == FORMAT_STANDARD) {
        slot[0] = r->header | udata | bits;
        slot[1] = vaddr;
    } else {
        struct qemu_plugin_hwaddr *hw = qemu_plugin_get_hwaddr(info, vaddr);
        slot[0] = r->header | ((udata >> 62) << GMBE_CPL_SHIFT) | bits;
        slot[1] = vaddr;
        slot[2] = hw ? qemu_plugin_hwaddr_phys_addr(hw) : 0;
        slot[3] = (uint64_t)((int64_t)((uint64_t)udata << 8) >> 8);
    }
    __atomic_store_n(&r->head, head + 1, __ATOMIC_RELEASE);
}

/* Everything trace_access does not do inline: decoding a new meminfo value, a full ring. */
static COLD void trace_access_slow(VcpuRing *r, qemu_plugin_meminfo_t info, uint64_t vaddr,
                                   uintptr_t udata, RecordWords words)
{
    uint8_t bits = decode_meminfo_slow(info);
    uint64_t head = r->head;
    if (ring_full(r, head) && !make_room(r)) {
        return;
    }
    if (words == FORMAT_COMPACT) {
        store_record(r, head, bits, info, vaddr, udata, FORMAT_COMPACT);
    } else if (words == FORMAT_STANDARD) {
        store_record(r, head, bits, info, vaddr, udata, FORMAT_STANDARD);
    } else {
        store_record(r, head, bits, info, vaddr, udata, FORMAT_EXTENDED);
    }
}

/*
 * Called after every instrumented access, one copy per format. Its slow paths
 * are tail calls, so the fast path saves no registers: a few loads, the
 * record's stores, a counter.
 */
static inline void trace_access(unsigned int vcpu_index, qemu_plugin_meminfo_t info, uint64_t vaddr,
                                uintptr_t udata, const RecordWords words)
{
    VcpuRing *r = rings[vcpu_index];
    if (UNLIKELY(!__atomic_load_n(&r->tracing, __ATOMIC_RELAXED))) {
        return;
    }
    uint64_t event_index = r->events++ - r->events_at_enable;
    if (event_index & __atomic_load_n(&sampling_mask, __ATOMIC_RELAXED)) {
        return;
    }
    uint8_t cached = decoded_meminfo(info);
    uint64_t head = r->head;
    if (UNLIKELY(cached == 0) || UNLIKELY(ring_full(r, head))) {
        trace_access_slow(r, info, vaddr, udata, words);
        return;
    }
    store_record(r, head, cached & ~MEMINFO_DECODED, info, vaddr, udata, words);
}

static void vcpu_mem(unsigned int vcpu_index, qemu_plugin_meminfo_t info, uint64_t vaddr, void *udata)
{
    trace_access(vcpu_index, info, vaddr, (uintptr_t)udata, FORMAT_STANDARD);
}

static void vcpu_mem_compact(unsigned int vcpu_index, qemu_plugin_meminfo_t info, uint64_t vaddr,
                             void *udata)
{
    trace_access(vcpu_index, info, vaddr, (uintptr_t)udata, FORMAT_COMPACT);
}

static void vcpu_mem_extended(unsigned int vcpu_index, qemu_plugin_meminfo_t info, uint64_t vaddr,
                              void *udata)
{
    trace_access(vcpu_index, info, vaddr, (uintptr_t)udata, FORMAT_EXTENDED);
}

static void resume_instruction_budgets(void);
static void pause_instruction_budgets(void);

/* ------------------------------------------------------------ markers */

/* The low 8 bytes of a guest register of the current vCPU; false when it cannot be read. */
static bool read_guest_register(struct qemu_plugin_register *reg, uint64_t *value)
{
    static __thread GByteArray *buf;
    if (!buf) {
        buf = g_byte_array_new();
    }
    g_byte_array_set_size(buf, 0);
    int n = reg ? qemu_plugin_read_register(reg, buf) : 0;
    if (n < 1) {
        return false;
    }
    *value = 0;
    memcpy(value, buf->data, (size_t)n < sizeof *value ? (size_t)n : sizeof *value);
    return true;
}

/* A marker record, in stream order with the vCPU's accesses; written while the window is open. */
static void append_marker(VcpuRing *r, unsigned kind, uint64_t number)
{
    if (!__atomic_load_n(&window_open, __ATOMIC_ACQUIRE) || trace_broken) {
        return;
    }
    struct gmbe_record m = gmbe_marker(r->index, kind, number);
#ifdef QEMU_PLUGIN_HAS_INLINE_RECORD
    if (use_inline) {       /* out at once, after what the vCPU wrote before it */
        uint64_t record[FORMAT_EXTENDED] = { 0 };
        record[0] = config.record_words == FORMAT_COMPACT ? gmbe_compact_encode(&m) : m.info_word;
        if (config.record_words != FORMAT_COMPACT) {
            record[1] = m.virt_addr;
        }
        pthread_mutex_lock(&writer_lock);
        settle_inline_locked(r, !config.drop_when_full);
        __atomic_store_n(&r->markers, r->markers + 1, __ATOMIC_RELEASE);
        deliver_records_locked(r, record, 1, 1, false, !config.drop_when_full);
        if (r->in_ring) {
            start_buffer_locked(r);     /* the marker went where the window was */
        }
        pthread_mutex_unlock(&writer_lock);
        return;
    }
#endif
    uint64_t head = r->head;
    if (ring_full(r, head) && !make_room(r)) {
        return;
    }
    uint64_t *slot = &r->words[(head & buffer_mask) * config.record_words];
    if (config.record_words == FORMAT_COMPACT) {
        slot[0] = gmbe_compact_encode(&m);
    } else {
        memset(slot, 0, record_bytes());
        slot[0] = m.info_word;
        slot[1] = m.virt_addr;
    }
    __atomic_store_n(&r->markers, r->markers + 1, __ATOMIC_RELEASE);
    __atomic_store_n(&r->head, head + 1, __ATOMIC_RELEASE);
}

/* Runs before each magic instruction: acts on it when rax holds MEMORY_TRACER_MAGIC. */
static void vcpu_magic(unsigned int vcpu_index, void *udata)
{
    uint64_t magic = 0, command = 0, number = 0;
    if (!read_guest_register(rax_register, &magic) || magic != MEMORY_TRACER_MAGIC) {
        return;   /* an xchg %bx,%bx of somebody else's */
    }
    VcpuRing *r = rings[vcpu_index];
    read_guest_register(rcx_register, &command);
    switch (command) {
    case MEMORY_TRACER_REGION_BEGIN:
        settle_before_change(r);
        __atomic_store_n(&region_active, true, __ATOMIC_RELEASE);
        update_tracing();
        append_marker(r, GMBE_MARKER_REGION_BEGIN, 0);
        resume_instruction_budgets();
        break;
    case MEMORY_TRACER_REGION_END:
        append_marker(r, GMBE_MARKER_REGION_END, 0);
        settle_before_change(r);
        __atomic_store_n(&region_active, false, __ATOMIC_RELEASE);
        update_tracing();
        pause_instruction_budgets();
        break;
    case MEMORY_TRACER_MARKER:
        read_guest_register(rdx_register, &number);
        append_marker(r, GMBE_MARKER_PROGRESS, number);
        break;
    default:
        break;
    }
}

static bool is_magic_instruction(struct qemu_plugin_insn *insn)
{
    static const uint8_t xchg_bx_bx[] = { 0x66, 0x87, 0xdb };
    uint8_t bytes[sizeof xchg_bx_bx];
    return qemu_plugin_insn_size(insn) == sizeof bytes &&
           qemu_plugin_insn_data(insn, bytes, sizeof bytes) == sizeof bytes &&
           memcmp(bytes, xchg_bx_bx, sizeof bytes) == 0;
}

/* ------------------------------------------------------------ instruction limit */

/*
 * Runs when a vCPU has spent its budget. Budgets are handed out from what is
 * left in shrinking shares, so one vCPU stops exactly at the limit and several
 * never go past it together: a vCPU whose share is spent and finds nothing
 * left stops tracing.
 */
static void vcpu_budget_spent(unsigned int vcpu_index, void *udata)
{
    VcpuRing *r = rings[vcpu_index];
    if (!__atomic_load_n(&window_open, __ATOMIC_ACQUIRE) || r->out_of_instructions) {
        qemu_plugin_u64_set(instruction_budget, vcpu_index, NO_BUDGET_CHECK);
        return;
    }
    uint64_t left = __atomic_load_n(&instructions_left, __ATOMIC_ACQUIRE);
    uint64_t share;
    do {
        if (left == 0) {
            append_marker(r, GMBE_MARKER_INSTRUCTION_LIMIT, config.max_instructions);
            settle_before_change(r);
            r->out_of_instructions = true;
            update_tracing_of(r);
            qemu_plugin_u64_set(instruction_budget, vcpu_index, NO_BUDGET_CHECK);
            return;
        }
        share = left / (4 * (uint64_t)qemu_plugin_num_vcpus());
        share = share ? share : 1;
    } while (!__atomic_compare_exchange_n(&instructions_left, &left, left - share, false,
                                          __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE));
    qemu_plugin_u64_set(instruction_budget, vcpu_index, share);
}

/* Whether instructions spend the budget now: with trace_only_marked_regions, only in a region. */
static bool budget_counts(void)
{
    return config.max_instructions &&
           (!config.only_marked_regions || __atomic_load_n(&region_active, __ATOMIC_ACQUIRE));
}

/* At enable: every vCPU asks for a budget before its next instruction (once it counts). */
static void reset_instruction_budgets(void)
{
    __atomic_store_n(&instructions_left, config.max_instructions, __ATOMIC_RELEASE);
    for (unsigned i = 0; i < __atomic_load_n(&num_rings, __ATOMIC_ACQUIRE); i++) {
        if (rings[i]) {
            rings[i]->out_of_instructions = false;
            qemu_plugin_u64_set(instruction_budget, i, budget_counts() ? 0 : NO_BUDGET_CHECK);
        }
    }
}

/* A region begins (trace_only_marked_regions): every vCPU asks for a budget again. */
static void resume_instruction_budgets(void)
{
    if (!config.max_instructions || !config.only_marked_regions) {
        return;
    }
    for (unsigned i = 0; i < __atomic_load_n(&num_rings, __ATOMIC_ACQUIRE); i++) {
        if (rings[i] && !rings[i]->out_of_instructions) {
            qemu_plugin_u64_set(instruction_budget, i, 0);
        }
    }
}

/* A region ends: what the vCPUs were granted and did not spend goes back (exact with one vCPU,
 * whose region_end runs on it; other vCPUs may spend a little meanwhile), and nothing counts
 * until the next region. */
static void pause_instruction_budgets(void)
{
    if (!config.max_instructions || !config.only_marked_regions) {
        return;
    }
    for (unsigned i = 0; i < __atomic_load_n(&num_rings, __ATOMIC_ACQUIRE); i++) {
        uint64_t unspent = rings[i] ? qemu_plugin_u64_get(instruction_budget, i) : NO_BUDGET_CHECK;
        if (unspent <= config.max_instructions) {   /* a share, not the never-reached mark */
            __atomic_add_fetch(&instructions_left, unspent, __ATOMIC_ACQ_REL);
        }
        if (rings[i]) {
            qemu_plugin_u64_set(instruction_budget, i, NO_BUDGET_CHECK);
        }
    }
}

/* ------------------------------------------------------------ translation */

static unsigned current_cpl(void)
{
    uint64_t cs;
    /* User mode runs at CPL 3 only: no register read (hundreds of instructions a block). */
    if (!system_emulation || !read_guest_register(cs_register, &cs)) {
        return 3;
    }
    /* A block is translated for one CPL, which is CS's RPL in protected mode. */
    return (unsigned)(cs & 3);
}

static void retranslated(qemu_plugin_id_t id)
{
    __atomic_add_fetch(&retranslations, 1, __ATOMIC_RELAXED);
    register_callbacks(id);
}

static void vcpu_retranslate(unsigned int vcpu_index, void *udata)
{
    /* Runs on a vCPU thread, where a reset also flushes translated code. */
    qemu_plugin_reset(plugin_id, retranslated);
}

/* What the record word adds to an access's info: the CPL, at its place in the info byte. */
static void *cpl_udata(unsigned cpl)
{
    return (void *)(uintptr_t)(cpl << GMBE_CPL_SHIFT);
}

/* What a memory callback gets from the translation: the CPL bits, and the PC for extended records. */
static void *access_udata(unsigned cpl, struct qemu_plugin_insn *insn)
{
    if (config.record_words == FORMAT_EXTENDED) {
        uint64_t pc = qemu_plugin_insn_vaddr(insn) & ((UINT64_C(1) << 56) - 1);
        return (void *)(uintptr_t)(pc | ((uint64_t)cpl << 62));
    }
    return cpl_udata(cpl);
}

static qemu_plugin_vcpu_mem_cb_t access_callback(void)
{
    switch (config.record_words) {
    case FORMAT_COMPACT: return vcpu_mem_compact;
    case FORMAT_EXTENDED: return vcpu_mem_extended;
    default: return vcpu_mem;
    }
}

/*
 * Inline records of every access of the block, where QEMU generates them: one
 * registration (the word needs only the CPL, which is the block's). False
 * where records go through the callback, registered at each instruction.
 */
static bool register_block_records(struct qemu_plugin_tb *tb, unsigned cpl)
{
#ifdef QEMU_PLUGIN_HAS_INLINE_RECORD
    if (use_inline) {
        enum qemu_plugin_record_layout layout = config.record_words == FORMAT_COMPACT
                                                ? QEMU_PLUGIN_RECORD_ADDR48 : QEMU_PLUGIN_RECORD_WORD32_ADDR;
        qemu_plugin_register_vcpu_tb_mem_inline_record(tb, QEMU_PLUGIN_MEM_RW, layout, record_word,
                                                       cpl_udata(cpl));
        return true;
    }
#endif
    return false;
}

static void register_access_callback(struct qemu_plugin_insn *insn, unsigned cpl)
{
    qemu_plugin_register_vcpu_mem_cb(insn, access_callback(), QEMU_PLUGIN_CB_NO_REGS,
                                     QEMU_PLUGIN_MEM_RW, access_udata(cpl, insn));
}

static void vcpu_tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    unsigned cpl = current_cpl();
    bool instrument = !(config.trace_only_cpl3 && cpl != 3);   /* else kernel code runs at full speed */
    if (!(use_inline && instrument)) {
        qemu_plugin_register_vcpu_tb_exec_cond_cb(tb, vcpu_retranslate,
                                                  QEMU_PLUGIN_CB_NO_REGS,
                                                  QEMU_PLUGIN_COND_NE,
                                                  retranslate_flag, 0, NULL);
    }
    bool callbacks = instrument && !register_block_records(tb, cpl);
    size_t n = qemu_plugin_tb_n_insns(tb);
    for (size_t i = 0; i < n; i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        if (is_magic_instruction(insn)) {
            qemu_plugin_register_vcpu_insn_exec_cb(insn, vcpu_magic, QEMU_PLUGIN_CB_R_REGS, NULL);
        }
        if (config.max_instructions) {
            /* Ask for more budget at 0, then spend one: all inline but at 0. */
            qemu_plugin_register_vcpu_insn_exec_cond_cb(insn, vcpu_budget_spent, QEMU_PLUGIN_CB_NO_REGS,
                                                        QEMU_PLUGIN_COND_EQ, instruction_budget, 0, NULL);
            qemu_plugin_register_vcpu_insn_exec_inline_per_vcpu(insn, QEMU_PLUGIN_INLINE_ADD_U64,
                                                                instruction_budget, UINT64_MAX);
        }
        if (callbacks) {
            register_access_callback(insn, cpl);
        }
    }
}

static void request_retranslation(void)
{
    for (int i = 0; i < qemu_plugin_num_vcpus(); i++) {
        qemu_plugin_u64_set(retranslate_flag, i, 1);
    }
#ifdef QEMU_PLUGIN_HAS_INLINE_RECORD
    if (use_inline) {
        /* The flags before the stops: a vCPU that sets its buffer again then sees its flag. */
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        for (int i = 0; i < qemu_plugin_num_vcpus(); i++) {
            qemu_plugin_record_buffer_stop(i);
        }
    }
#endif
}

/* ------------------------------------------------------------ vCPU lifecycle */

/* The registers read at translation (cs) and by the magic instruction (rax, rcx, rdx). */
static void find_registers(void)
{
    g_autoptr(GArray) regs = qemu_plugin_get_registers();
    for (guint i = 0; i < regs->len; i++) {
        qemu_plugin_reg_descriptor *d = &g_array_index(regs, qemu_plugin_reg_descriptor, i);
        if (strcmp(d->name, "cs") == 0) {
            cs_register = d->handle;
        } else if (strcmp(d->name, "rax") == 0) {
            rax_register = d->handle;
        } else if (strcmp(d->name, "rcx") == 0) {
            rcx_register = d->handle;
        } else if (strcmp(d->name, "rdx") == 0) {
            rdx_register = d->handle;
        }
    }
}

static void vcpu_init(qemu_plugin_id_t id, unsigned int vcpu_index)
{
    if (vcpu_index >= MAX_VCPUS) {
        fprintf(stderr, "gmbeoo: vCPU %u is beyond the %d supported\n", vcpu_index, MAX_VCPUS);
        abort();
    }
    if (!cs_register) {
        find_registers();
    }
    if (!rings[vcpu_index]) {
        VcpuRing *r = g_new0(VcpuRing, 1);
        r->own_words = r->words = new_record_buffer();
        r->header = config.record_words == FORMAT_COMPACT ? (uint64_t)(vcpu_index & 0xffu) << 56
                                                          : gmbe_vcpu_header(vcpu_index);
        r->vcpu_bits = r->header & ~ACCESS_WORD_HIGH;
        r->index = vcpu_index;
        r->fd = -1;
        rings[vcpu_index] = r;
    }
    if (vcpu_index >= __atomic_load_n(&num_rings, __ATOMIC_RELAXED)) {
        __atomic_store_n(&num_rings, vcpu_index + 1, __ATOMIC_RELEASE);
    }
    if (vcpu_index > 0) {
        __atomic_store_n(&ring_windows, false, __ATOMIC_RELEASE);   /* user mode: a thread's, made by clone */
    }
    start_inline_buffer(rings[vcpu_index]);
    /* A thread started inside the window (user mode) is traced like the others. */
    update_tracing_of(rings[vcpu_index]);
    qemu_plugin_u64_set(instruction_budget, vcpu_index,
                        config.max_instructions && window_open ? 0 : NO_BUDGET_CHECK);
}

/* The guest's (x86_64 Linux) system calls that make a thread. */
#define GUEST_SYS_CLONE 56
#define GUEST_SYS_CLONE3 435
#define GUEST_CLONE_VM 0x100

/*
 * User mode: a thread is about to be made, and with it a second vCPU; the one
 * vCPU leaves its window of the ring first, for good. (clone3 may make a
 * process, too: it passes its flags in memory, and is taken for a thread.)
 */
static void vcpu_syscall(qemu_plugin_id_t id, unsigned int vcpu_index, int64_t num, uint64_t a1,
                         uint64_t a2, uint64_t a3, uint64_t a4, uint64_t a5, uint64_t a6, uint64_t a7,
                         uint64_t a8)
{
    bool new_thread = num == GUEST_SYS_CLONE3 || (num == GUEST_SYS_CLONE && (a1 & GUEST_CLONE_VM));
    if (!new_thread || !__atomic_load_n(&ring_windows, __ATOMIC_ACQUIRE)) {
        return;
    }
    VcpuRing *r = rings[vcpu_index];
    pthread_mutex_lock(&writer_lock);
    __atomic_store_n(&ring_windows, false, __ATOMIC_RELEASE);
#ifdef QEMU_PLUGIN_HAS_INLINE_RECORD
    settle_inline_locked(r, !config.drop_when_full);
    start_buffer_locked(r);
#endif
    pthread_mutex_unlock(&writer_lock);
}

static void vcpu_exit(qemu_plugin_id_t id, unsigned int vcpu_index)
{
    /* A guest thread is ending (user mode): its records go out now. */
    pthread_mutex_lock(&writer_lock);
    flush_ring_locked(rings[vcpu_index], true);
    pthread_mutex_unlock(&writer_lock);
}

/* ------------------------------------------------------------- counters */

static int format_counters(char *out, size_t size)
{
    uint64_t events = 0, written_to_buf = 0, waiting = 0, dropped = 0, markers = 0, passed_over = 0;
    uint64_t counted_samples = 0;
    bool tracing = false, out_of_instructions = false;
    for (unsigned i = 0; i < __atomic_load_n(&num_rings, __ATOMIC_ACQUIRE); i++) {
        VcpuRing *r = rings[i];
        if (!r) {
            continue;
        }
        uint64_t head = __atomic_load_n(&r->head, __ATOMIC_ACQUIRE);
        events += __atomic_load_n(&r->events, __ATOMIC_RELAXED) - r->events_at_enable;
        uint64_t new_markers = __atomic_load_n(&r->markers, __ATOMIC_ACQUIRE) - r->markers_at_enable;
        markers += new_markers;
        written_to_buf += head - r->head_at_enable - new_markers;
        tracing |= __atomic_load_n(&r->tracing, __ATOMIC_RELAXED);
        out_of_instructions |= r->out_of_instructions;
        waiting += head - __atomic_load_n(&r->tail, __ATOMIC_ACQUIRE);
        dropped += __atomic_load_n(&r->dropped, __ATOMIC_RELAXED) - r->dropped_at_enable;
        passed_over += __atomic_load_n(&r->passed_over, __ATOMIC_RELAXED);
        counted_samples += __atomic_load_n(&r->counted_samples, __ATOMIC_RELAXED);
    }
    return snprintf(out, size,
                    "num_of_GMBE_events_since_enabling_GMBEOO=%" PRIu64
                    " num_of_events_written_to_trace_buf=%" PRIu64
                    " num_of_events_written_to_trace_file=%" PRIu64
                    " num_of_events_waiting_in_trace_buf=%" PRIu64
                    " num_of_dropped_events=%" PRIu64
                    " num_of_markers=%" PRIu64
                    " num_of_untraced_children=%" PRIu64
                    " tracing=%d window_open=%d region_active=%d instruction_limit_reached=%d"
                    " inline_records=%d counted_only_records=%" PRIu64 " spliced_records=%" PRIu64
                    " in_place_records=%" PRIu64 " retranslations=%" PRIu64 " counted_samples=%" PRIu64
                    " buffers_copied_for_far_reader=%" PRIu64,
                    events, written_to_buf, __atomic_load_n(&written_to_file, __ATOMIC_RELAXED),
                    waiting, dropped, markers, __atomic_load_n(&untraced_children, __ATOMIC_RELAXED),
                    tracing, __atomic_load_n(&window_open, __ATOMIC_RELAXED),
                    __atomic_load_n(&region_active, __ATOMIC_RELAXED), out_of_instructions, use_inline,
                    passed_over, __atomic_load_n(&fifo_bytes_spliced, __ATOMIC_RELAXED) / record_bytes(),
                    __atomic_load_n(&in_place_records, __ATOMIC_RELAXED),
                    __atomic_load_n(&retranslations, __ATOMIC_RELAXED), counted_samples,
                    __atomic_load_n(&reader.buffers_copied, __ATOMIC_RELAXED));
}

/* ------------------------------------------------------------- options */

static bool parse_log(const char *key, const char *value, unsigned *out, char **error)
{
    char *end;
    errno = 0;
    long v = strtol(value, &end, 10);
    if (errno || *end || end == value || v < 0 || v > 64) {
        *error = g_strdup_printf("%s must be in range [0, 64], but %s isn't.", key, value);
        return false;
    }
    *out = (unsigned)v;
    return true;
}

static bool parse_count(const char *key, const char *value, uint64_t *out, char **error)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(value, &end, 10);
    if (errno || *end || end == value || value[0] == '-') {
        *error = g_strdup_printf("%s must be a number of instructions, but %s isn't.", key, value);
        return false;
    }
    *out = v;
    return true;
}

static bool parse_format(const char *key, const char *value, RecordWords *out, char **error)
{
    static const struct { const char *name; RecordWords words; } formats[] = {
        { "standard", FORMAT_STANDARD }, { "extended", FORMAT_EXTENDED }, { "compact", FORMAT_COMPACT },
    };
    for (size_t i = 0; i < G_N_ELEMENTS(formats); i++) {
        if (strcmp(value, formats[i].name) == 0) {
            *out = formats[i].words;
            return true;
        }
    }
    *error = g_strdup_printf("%s must be standard, extended or compact, but %s isn't.", key, value);
    return false;
}

static bool parse_bool(const char *key, const char *value, bool *out, char **error)
{
    if (!qemu_plugin_bool_parse(key, value, out)) {
        *error = g_strdup_printf("%s must be on or off, but %s isn't.", key, value);
        return false;
    }
    return true;
}

static bool parse_path(const char *key, const char *value, char **out, char **error)
{
    (void)key;
    (void)error;
    *out = g_strdup(value);
    return true;
}

/* Every option, once: its key (memory_tracer's names), how its value is parsed, where it goes,
 * and whether `set` may change it while QEMU runs. */
typedef enum { OPT_BOOL, OPT_LOG, OPT_COUNT, OPT_FORMAT, OPT_PATH } OptionKind;
typedef struct {
    const char *key;
    OptionKind kind;
    size_t offset;           /* of the field in Config */
    bool live;               /* also accepted by `set` */
    const char *help;
} PluginOption;

static const PluginOption plugin_options[] = {
    { "trace_fifo_path", OPT_PATH, offsetof(Config, trace_fifo_path), false,
      "where records go: a FIFO or a file" },
    { "trace_shm_path", OPT_PATH, offsetof(Config, trace_shm_path), false,
      "where records go instead: a shared-memory ring (gmbe_ring.h)" },
    { "trace_dir", OPT_PATH, offsetof(Config, trace_dir), false,
      "instead: one trace file per vCPU, DIR/vcpuN.gmbe" },
    { "control_socket_path", OPT_PATH, offsetof(Config, control_socket_path), false,
      "serve the control protocol (README.md) here" },
    { "counters_path", OPT_PATH, offsetof(Config, counters_path), false,
      "write the final counters here at exit" },
    { "enabled", OPT_BOOL, offsetof(Config, enabled), false, "trace from the start (default on)" },
    { "trace_only_CPL3_code_GMBE", OPT_BOOL, offsetof(Config, trace_only_cpl3), true,
      "trace accesses of CPL 3 code only" },
    { "log_of_GMBE_block_len", OPT_LOG, offsetof(Config, log_block_len), true, "sampling (default 0)" },
    { "log_of_GMBE_tracing_ratio", OPT_LOG, offsetof(Config, log_tracing_ratio), true, "sampling (default 0)" },
    { "drop_when_trace_fifo_full", OPT_BOOL, offsetof(Config, drop_when_full), false,
      "drop (and count) instead of waiting for a slow reader" },
    { "record_format", OPT_FORMAT, offsetof(Config, record_words), false, "standard, extended or compact" },
    { "trace_only_marked_regions", OPT_BOOL, offsetof(Config, only_marked_regions), true,
      "trace only between region_begin and region_end" },
    { "max_instructions", OPT_COUNT, offsetof(Config, max_instructions), false,
      "stop tracing after N instructions (0: no limit)" },
    { "callback_records", OPT_BOOL, offsetof(Config, callback_records), false,
      "record through a callback even where QEMU (qemu_patches/) can write records inline" },
    { "buffer_records", OPT_COUNT, offsetof(Config, buffer_records), false,
      "records a vCPU buffers before handing them over (default 4096)" },
    { "fifo_by_write", OPT_BOOL, offsetof(Config, fifo_by_write), false,
      "inline records go to a FIFO copied by write(), not by vmsplice" },
    { "ring_by_copy", OPT_BOOL, offsetof(Config, ring_by_copy), false,
      "inline records are copied into the shared-memory ring, not written in place there" },
    { "record_between_samples", OPT_BOOL, offsetof(Config, record_between_samples), false,
      "sampled inline records: written between samples too, not only counted" },
    { "far_reader_ns", OPT_COUNT, offsetof(Config, far_reader_ns), true,
      "a ring reader whose cache is farther (ns a line takes) gets records copied in (default 100; 0: in place)" },
};

/* Applies one key=value to cfg: any option at install, the live ones for "set". */
static bool apply_option(Config *cfg, const char *opt, bool at_install, char **error)
{
    g_auto(GStrv) kv = g_strsplit(opt, "=", 2);
    const char *key = kv[0];
    const char *value = kv[1];
    if (!value) {
        *error = g_strdup_printf("option %s must be key=value", opt);
        return false;
    }
    for (size_t i = 0; i < G_N_ELEMENTS(plugin_options); i++) {
        const PluginOption *o = &plugin_options[i];
        if (g_strcmp0(key, o->key) != 0 || !(at_install || o->live)) {
            continue;
        }
        void *field = (char *)cfg + o->offset;
        switch (o->kind) {
        case OPT_BOOL: return parse_bool(key, value, field, error);
        case OPT_LOG: return parse_log(key, value, field, error);
        case OPT_COUNT: return parse_count(key, value, field, error);
        case OPT_FORMAT: return parse_format(key, value, field, error);
        case OPT_PATH: return parse_path(key, value, field, error);
        }
    }
    *error = g_strdup_printf("unknown option %s", key);
    return false;
}

static bool validate_sampling(const Config *cfg, char **error)
{
    if (cfg->log_block_len + cfg->log_tracing_ratio > 64) {
        *error = g_strdup_printf("log_of_GMBE_block_len + log_of_GMBE_tracing_ratio must be "
                                 "in range [0, 64], but %u + %u = %u isn't.",
                                 cfg->log_block_len, cfg->log_tracing_ratio,
                                 cfg->log_block_len + cfg->log_tracing_ratio);
        return false;
    }
    return true;
}

/* ------------------------------------------------------------- enabling */

static bool open_shm_ring(char **error)
{
    int fd = open(config.trace_shm_path, O_RDWR | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        *error = g_strdup_printf("cannot open trace_shm_path %s: %s", config.trace_shm_path, strerror(errno));
        if (fd >= 0) {
            close(fd);
        }
        return false;
    }
    void *map = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    struct gmbe_ring_header *h = map;
    if (map == MAP_FAILED || (size_t)st.st_size < sizeof *h || memcmp(h->magic, GMBE_RING_MAGIC, 8) != 0 ||
        h->version != GMBE_RING_VERSION || h->record_size != record_bytes() ||
        (h->capacity & (h->capacity - 1)) || h->data_offset + h->capacity * record_bytes() > (uint64_t)st.st_size) {
        *error = g_strdup_printf("trace_shm_path %s is not a GMBE ring of %zu-byte records (gmbe_ring.h)",
                                 config.trace_shm_path, record_bytes());
        if (map != MAP_FAILED) {
            munmap(map, (size_t)st.st_size);
        }
        close(fd);
        return false;
    }
    shm_words_bytes = h->capacity * record_bytes();
    bool windows_fit = h->capacity >= 2 * (INLINE_SLACK_RECORDS + MIN_WINDOW_RECORDS);
    shm_words = ring_windows && windows_fit ? map_records_twice(fd, h->data_offset, shm_words_bytes) : NULL;
    shm_doubled = shm_words != NULL;
    if (!shm_doubled) {
        shm_words = (uint64_t *)((char *)map + h->data_offset);
    }
    g_array_set_size(marked_seqs, 0);
    marked_first = 0;
    close(fd);
    shm_ring_size = (size_t)st.st_size;
    shm_ring = h;
    ring_generation++;
    return true;
}

/*
 * The free records of a ring just opened get an access record's high word
 * (preset_words); the unread ones are noted where they are markers. The ring
 * is mapped twice in a row (shm_doubled), so either run of records is one
 * stretch of memory, however it wraps.
 */
static void preset_free_ring_records(void)
{
    const uint64_t capacity = shm_ring->capacity;
    uint64_t tail = __atomic_load_n(&shm_ring->tail, __ATOMIC_ACQUIRE);
    uint64_t head = shm_ring->head;
    note_marked_seqs(tail, &shm_words[(tail & (capacity - 1)) * FORMAT_STANDARD], head - tail);
    preset_record_words(&shm_words[(head & (capacity - 1)) * FORMAT_STANDARD], tail + capacity - head);
}

static bool open_trace(char **error)
{
    if (have_trace()) {
        return true;
    }
    if (config.trace_shm_path) {
        if (!open_shm_ring(error)) {
            return false;
        }
        /* Both given: the ring if the tool attached to it (gmbe_ring.h), else the FIFO. */
        if (!config.trace_fifo_path || __atomic_load_n(&shm_ring->attached, __ATOMIC_ACQUIRE)) {
            populate_for_writing(shm_words, shm_words_bytes);
            if (shm_doubled) {
                preset_free_ring_records();
            }
            return true;
        }
        pthread_mutex_lock(&writer_lock);
        unmap_ring_records_locked();
        munmap(shm_ring, shm_ring_size);
        shm_ring = NULL;
        pthread_mutex_unlock(&writer_lock);
    }
    /* Blocks until the consumer has opened the FIFO for reading. */
    int fd = open(config.trace_fifo_path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) {
        *error = g_strdup_printf("cannot open trace_fifo_path %s: %s",
                                 config.trace_fifo_path, strerror(errno));
        return false;
    }
    raise_pipe_size(fd);
    if (config.drop_when_full) {
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    }
    trace_fd = move_fd_high(fd);
    struct stat st;
    fifo_splice = use_inline && !config.fifo_by_write && !config.drop_when_full &&
                  fstat(trace_fd, &st) == 0 && S_ISFIFO(st.st_mode);
    return true;
}

/* Everything written goes out and the trace is closed: its reader sees the end; "enable" opens it again. */
static void close_trace(void)
{
    flush_all_rings();
    pthread_mutex_lock(&writer_lock);
    for (unsigned i = 0; i < __atomic_load_n(&num_rings, __ATOMIC_ACQUIRE); i++) {
        if (rings[i]) {
            finish_vcpu_trace_file(rings[i]);
        }
    }
    if (trace_fd >= 0) {
        if (fifo_splice) {
            abandon_buffers_in_pipe_locked();
            fifo_splice = false;
        }
        close(trace_fd);
        trace_fd = -1;
    }
    if (shm_ring) {
        unmap_ring_records_locked();
        munmap(shm_ring, shm_ring_size);
        shm_ring = NULL;
    }
    trace_broken = false;
    pthread_mutex_unlock(&writer_lock);
}

static void set_window(bool open)
{
    __atomic_store_n(&window_open, open, __ATOMIC_SEQ_CST);
    update_tracing();
}

static bool enable_tracing(char **error)
{
    if (!open_trace(error)) {
        return false;
    }
    flush_all_rings();
    pthread_mutex_lock(&writer_lock);
    for (unsigned i = 0; i < __atomic_load_n(&num_rings, __ATOMIC_ACQUIRE); i++) {
        VcpuRing *r = rings[i];
        if (r) {
            r->head_at_enable = __atomic_load_n(&r->head, __ATOMIC_ACQUIRE);
            r->events_at_enable = __atomic_load_n(&r->events, __ATOMIC_RELAXED);
            r->dropped_at_enable = __atomic_load_n(&r->dropped, __ATOMIC_RELAXED);
            r->markers_at_enable = __atomic_load_n(&r->markers, __ATOMIC_RELAXED);
        }
    }
    written_to_file = 0;
    __atomic_store_n(&untraced_children, 0, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&writer_lock);
    plan_samples_again();
    reset_instruction_budgets();
    set_window(true);
    return true;
}

/* ------------------------------------------------------------- control channel */

static char *handle_set(char **words)
{
    Config updated = config;
    char *error = NULL;
    for (char **w = words; *w; w++) {
        if (!apply_option(&updated, *w, false, &error)) {
            return g_strdup_printf("error %s", error);
        }
    }
    if (!validate_sampling(&updated, &error)) {
        return g_strdup_printf("error %s", error);
    }
    flush_all_rings();     /* what was written so far follows the old settings */
    bool cpl_filter_changed = updated.trace_only_cpl3 != config.trace_only_cpl3;
    config.trace_only_cpl3 = updated.trace_only_cpl3;
    config.log_block_len = updated.log_block_len;
    config.log_tracing_ratio = updated.log_tracing_ratio;
    config.only_marked_regions = updated.only_marked_regions;
    __atomic_store_n(&config.far_reader_ns, updated.far_reader_ns, __ATOMIC_RELAXED);
    update_tracing();
    __atomic_store_n(&sampling_mask,
                     sampling_mask_for(config.log_block_len, config.log_tracing_ratio),
                     __ATOMIC_RELAXED);
    plan_samples_again();
    if (cpl_filter_changed) {
        request_retranslation();
    }
    return g_strdup("ok");
}

static char *handle_command(char *line)
{
    g_auto(GStrv) words = g_strsplit_set(g_strstrip(line), " \t", -1);
    const char *cmd = words[0];
    char *error = NULL;
    if (g_strcmp0(cmd, "enable") == 0) {
        if (!enable_tracing(&error)) {
            return g_strdup_printf("error %s", error);
        }
        return g_strdup("ok");
    }
    if (g_strcmp0(cmd, "disable") == 0) {
        flush_all_rings();      /* inline records written so far were written in the window */
        set_window(false);
        return g_strdup("ok");
    }
    if (g_strcmp0(cmd, "close") == 0) {
        flush_all_rings();
        set_window(false);
        close_trace();
        return g_strdup("ok");
    }
    if (g_strcmp0(cmd, "flush") == 0) {
        flush_all_rings();
        return g_strdup("ok");
    }
    if (g_strcmp0(cmd, "counters") == 0) {
        char buf[1024];
        format_counters(buf, sizeof(buf));
        return g_strdup_printf("ok %s", buf);
    }
    if (g_strcmp0(cmd, "set") == 0) {
        return handle_set(words + 1);
    }
    return g_strdup_printf("error unknown command %s", cmd ? cmd : "");
}

static void serve_client(int fd)
{
    FILE *in = fdopen(dup(fd), "r");
    if (!in) {
        return;
    }
    char *line = NULL;
    size_t cap = 0;
    while (getline(&line, &cap, in) > 0) {
        g_autofree char *reply = handle_command(line);
        g_autofree char *framed = g_strdup_printf("%s\n", reply);
        /*
         * MSG_NOSIGNAL: at exit stop_control_channel() shuts this socket down, perhaps between a
         * command and its reply; a write then raises SIGPIPE, which qemu-x86_64 passes on to the
         * guest, and the run dies of it before the plugin writes its counters.
         */
        if (send(fd, framed, strlen(framed), MSG_NOSIGNAL) < 0) {
            break;
        }
    }
    free(line);
    fclose(in);
}

static void *control_loop(void *arg)
{
    for (;;) {
        int fd = accept4(control_listen_fd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) {
                continue;
            }
            return NULL;   /* the listening socket was shut down at exit */
        }
        fd = move_fd_high(fd);
        /*
         * A client may connect just as QEMU exits. stop_control_channel() says it stops, then
         * looks for a client to shut out; this thread publishes its client, then looks whether
         * it stops. Both in this order, sequentially consistent: one of the two sees the other's,
         * so no client is served that the exit does not shut out (its read would wait forever,
         * and the exit with it).
         */
        __atomic_store_n(&control_client_fd, fd, __ATOMIC_SEQ_CST);
        if (!__atomic_load_n(&control_stopping, __ATOMIC_SEQ_CST)) {
            serve_client(fd);
        }
        __atomic_store_n(&control_client_fd, -1, __ATOMIC_RELEASE);
        close(fd);
    }
}

static bool start_control_channel(char **error)
{
    struct sockaddr_un addr = { .sun_family = AF_UNIX };
    if (strlen(config.control_socket_path) >= sizeof(addr.sun_path)) {
        *error = g_strdup_printf("control_socket_path %s is too long", config.control_socket_path);
        return false;
    }
    strcpy(addr.sun_path, config.control_socket_path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0 || listen(fd, 4) < 0) {
        *error = g_strdup_printf("cannot listen on control_socket_path %s: %s",
                                 config.control_socket_path, strerror(errno));
        if (fd >= 0) {
            close(fd);
        }
        return false;
    }
    control_listen_fd = move_fd_high(fd);
    if (pthread_create(&control_thread, NULL, control_loop, NULL) != 0) {
        *error = g_strdup("cannot start the control thread");
        return false;
    }
    control_thread_running = true;
    return true;
}

static void stop_control_channel(void)
{
    if (!control_thread_running) {
        return;
    }
    __atomic_store_n(&control_stopping, true, __ATOMIC_SEQ_CST);
    shutdown(control_listen_fd, SHUT_RDWR);
    int client = __atomic_load_n(&control_client_fd, __ATOMIC_SEQ_CST);
    if (client >= 0) {
        shutdown(client, SHUT_RDWR);
    }
    pthread_join(control_thread, NULL);
    close(control_listen_fd);
    unlink(config.control_socket_path);
    control_thread_running = false;
}

/* ------------------------------------------------------------- fork and exit */

/* In the parent: a child forked while tracing is untraced; memory_tracer says so. */
static void count_untraced_child(void)
{
    if (__atomic_load_n(&window_open, __ATOMIC_RELAXED)) {
        __atomic_add_fetch(&untraced_children, 1, __ATOMIC_RELAXED);
    }
}

static void forget_trace_in_child(void)
{
    /* user mode: a forked child is not traced; its copy of the rings is stale. */
    __atomic_store_n(&window_open, false, __ATOMIC_RELAXED);
    pthread_mutex_init(&writer_lock, NULL);
    for (unsigned i = 0; i < num_rings; i++) {
        if (rings[i]) {
            rings[i]->tracing = false;
            rings[i]->tail = rings[i]->head;
            rings[i]->fd = -1;   /* the parent's per-vCPU files: never written by the child */
        }
    }
    config.trace_dir = NULL;
    leave_buffers_in_pipe_alone();
    if (trace_fd >= 0) {
        close(trace_fd);
        trace_fd = -1;
    }
    shm_ring = NULL;   /* the mapping is shared with the parent: never write into it */
    if (shm_doubled) {
        make_records_private(shm_words, 2 * shm_words_bytes);   /* where the vCPU's window may be */
    }
    if (control_listen_fd >= 0) {
        close(control_listen_fd);
        control_listen_fd = -1;
    }
    control_thread_running = false;
}

static void write_counters_file(void)
{
    if (!config.counters_path) {
        return;
    }
    char buf[1024];
    format_counters(buf, sizeof(buf));
    FILE *f = fopen(config.counters_path, "w");
    if (f) {
        fprintf(f, "%s\n", buf);
        fclose(f);
    }
}

static void plugin_exit(qemu_plugin_id_t id, void *p)
{
    flush_all_rings();
    stop_control_channel();
    write_counters_file();
    close_trace();
}

/* ------------------------------------------------------------- install */

static void register_callbacks(qemu_plugin_id_t id)
{
    for (int i = 0; i < qemu_plugin_num_vcpus(); i++) {
        qemu_plugin_u64_set(retranslate_flag, i, 0);
    }
    qemu_plugin_register_vcpu_init_cb(id, vcpu_init);
    qemu_plugin_register_vcpu_exit_cb(id, vcpu_exit);
    if (ring_windows && !system_emulation) {
        qemu_plugin_register_vcpu_syscall_cb(id, vcpu_syscall);
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, vcpu_tb_trans);
    qemu_plugin_register_atexit_cb(id, plugin_exit, NULL);
}

static int fail_install(char *error)
{
    fprintf(stderr, "gmbeoo: %s\n", error);
    g_free(error);
    return -1;
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info,
                                           int argc, char **argv)
{
    char *error = NULL;
    for (int i = 0; i < argc; i++) {
        if (!apply_option(&config, argv[i], true, &error)) {
            return fail_install(error);
        }
    }
    if (!validate_sampling(&config, &error)) {
        return fail_install(error);
    }
    bool negotiated = config.trace_fifo_path && config.trace_shm_path && !config.trace_dir;
    if (!negotiated && !!config.trace_fifo_path + !!config.trace_shm_path + !!config.trace_dir != 1) {
        return fail_install(g_strdup("one of trace_fifo_path=PATH, trace_shm_path=PATH and trace_dir=DIR "
                                     "is required (or the first two: the ring if the tool attaches to it)"));
    }
    if (config.buffer_records == 0 || (config.buffer_records & (config.buffer_records - 1))) {
        return fail_install(g_strdup_printf("buffer_records must be a power of two, but %" PRIu64 " isn't",
                                            config.buffer_records));
    }
    plugin_id = id;
    buffer_mask = config.buffer_records - 1;
    marked_seqs = g_array_new(false, false, sizeof(uint64_t));
#ifdef QEMU_PLUGIN_HAS_INLINE_RECORD
    /* Extended records need the TLB at the access (the physical address): a callback's job. */
    use_inline = !config.callback_records && config.record_words != FORMAT_EXTENDED && inline_available();
    preset_words = use_inline && config.record_words == FORMAT_STANDARD;
    spare_buffers = g_array_new(false, false, sizeof(SpareBuffer));
    if (use_inline) {
        qemu_plugin_register_record_full_cb(id, inline_buffer_full, NULL);
    }
    use_counting = use_inline && !config.record_between_samples &&
                   qemu_plugin_set_record_counting && qemu_plugin_record_counting;
    samples_when_counting = use_counting && qemu_plugin_set_record_sampling;
#endif
    system_emulation = info->system_emulation;
    ring_windows = use_inline && !config.ring_by_copy &&
                   (!system_emulation || (info->system.smp_vcpus == 1 && info->system.max_vcpus == 1));
    sampling_mask = sampling_mask_for(config.log_block_len, config.log_tracing_ratio);
    retranslate_board = qemu_plugin_scoreboard_new(sizeof(uint64_t));
    retranslate_flag = qemu_plugin_scoreboard_u64(retranslate_board);
    budget_board = qemu_plugin_scoreboard_new(sizeof(uint64_t));
    instruction_budget = qemu_plugin_scoreboard_u64(budget_board);
    pthread_atfork(NULL, count_untraced_child, forget_trace_in_child);
    if (config.enabled && !enable_tracing(&error)) {
        return fail_install(error);
    }
    if (config.control_socket_path && !start_control_channel(&error)) {
        return fail_install(error);
    }
    register_callbacks(id);
    return 0;
}
