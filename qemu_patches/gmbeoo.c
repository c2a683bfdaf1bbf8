/*
 * gmbeoo.c - GMBEOO as a TCG plugin: every guest memory access becomes a
 * 16-byte GMBE record (gmbe_record.h) written to a FIFO (or any file).
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
 * Arguments (key=value; unknown keys are an error):
 *   trace_fifo_path=PATH            where records go: a FIFO or a file (this or the next)
 *   trace_shm_path=PATH             where records go: a shared-memory ring (gmbe_ring.h)
 *   control_socket_path=PATH        serve the control protocol (README.md) here
 *   counters_path=PATH              write the final counters here at exit
 *   enabled=on|off                  trace from the start (default on)
 *   trace_only_CPL3_code_GMBE=on|off
 *   log_of_GMBE_block_len=N         sampling, as memory_tracer.py (default 0)
 *   log_of_GMBE_tracing_ratio=N     (default 0)
 *   drop_when_trace_fifo_full=on|off
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <glib.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include <qemu-plugin.h>

#include "gmbe_record.h"
#include "gmbe_ring.h"

QEMU_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_VERSION;

#define MAX_VCPUS 4096
#define RING_RECORDS 4096u          /* per vCPU: one write() per 64 KiB */
#define DROP_RETRY_INTERVAL 1024u   /* drop mode: retry the FIFO every N drops */
#define MEMINFO_TABLE_SIZE (1u << 18)
#define MEMINFO_DECODED 0x80u

typedef struct {
    /* Written by the vCPU thread on every traced access. */
    uint64_t head;               /* records ever appended */
    uint64_t events;             /* events that passed the CPL filter, ever */
    uint64_t header;             /* gmbe_vcpu_header(vcpu_index) */
    struct gmbe_record *slots;
    uint64_t dropped;            /* ever */
    uint64_t drop_retry_countdown;
    /* Written by whoever flushes the ring, under writer_lock. */
    uint64_t tail __attribute__((aligned(64)));
    /* Snapshots taken by "enable": the counters report what came after. */
    uint64_t head_at_enable;
    uint64_t events_at_enable;
    uint64_t dropped_at_enable;
} VcpuRing;

typedef struct {
    char *trace_fifo_path;
    char *trace_shm_path;
    char *control_socket_path;
    char *counters_path;
    bool enabled;
    bool trace_only_cpl3;
    unsigned log_block_len;
    unsigned log_tracing_ratio;
    bool drop_when_full;
} Config;

static qemu_plugin_id_t plugin_id;
static Config config = { .enabled = true };

/* Read on every access, written by the control thread. */
static bool tracing_enabled;
static uint64_t sampling_mask;

static VcpuRing *rings[MAX_VCPUS];
static unsigned num_rings;             /* highest vCPU index + 1 */
static uint8_t meminfo_table[MEMINFO_TABLE_SIZE];
static struct qemu_plugin_register *cs_register;

/* The trace file and everything that writes to it. */
static pthread_mutex_t writer_lock = PTHREAD_MUTEX_INITIALIZER;
static int trace_fd = -1;
static struct gmbe_ring_header *shm_ring;     /* instead of trace_fd, with trace_shm_path */
static struct gmbe_record *shm_slots;
static bool trace_broken;
static uint64_t written_to_file;          /* since enable */

/* Re-translation requests (a CPL filter change), checked once per block. */
static struct qemu_plugin_scoreboard *retranslate_board;
static qemu_plugin_u64 retranslate_flag;

static int control_listen_fd = -1;
static int control_client_fd = -1;
static pthread_t control_thread;
static bool control_thread_running;

static void register_callbacks(qemu_plugin_id_t id);

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

/*
 * The guest shares our fd table in user mode, and programs close or dup2 over
 * low fds: keep ours out of their way, high and close-on-exec.
 */
static int move_fd_high(int fd)
{
    struct rlimit lim;
    int base = 512;
    if (getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur != RLIM_INFINITY &&
        lim.rlim_cur > 64) {
        base = (int)(lim.rlim_cur * 3 / 4);
    }
    int high = fcntl(fd, F_DUPFD_CLOEXEC, base);
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
    return bits;
}

/* ------------------------------------------------------- writing the trace */

/* The ring's side of write_fully: copy into the consumer's mapping, publish the head. */
static bool write_to_shm_ring(const void *data, size_t len, bool may_block)
{
    const struct gmbe_record *p = data;
    uint64_t left = len / GMBE_RECORD_SIZE;
    uint64_t capacity = shm_ring->capacity;
    while (left > 0) {
        uint64_t head = shm_ring->head;
        uint64_t space = capacity - (head - __atomic_load_n(&shm_ring->tail, __ATOMIC_ACQUIRE));
        if (space == 0) {
            if (!may_block && p == data) {
                return false;
            }
            struct timespec pause = { 0, 20000 };
            nanosleep(&pause, NULL);
            continue;
        }
        uint64_t start = head & (capacity - 1);
        uint64_t count = left < space ? left : space;
        if (count > capacity - start) {
            count = capacity - start;
        }
        memcpy(&shm_slots[start], p, count * GMBE_RECORD_SIZE);
        __atomic_store_n(&shm_ring->head, head + count, __ATOMIC_RELEASE);
        p += count;
        left -= count;
    }
    return true;
}

static bool write_fully(const void *data, size_t len, bool may_block)
{
    if (shm_ring) {
        return write_to_shm_ring(data, len, may_block);
    }
    const char *p = data;
    while (len > 0) {
        ssize_t n = write(trace_fd, p, len);
        if (n > 0) {
            p += n;
            len -= (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && errno == EAGAIN) {
            struct pollfd pfd = { .fd = trace_fd, .events = POLLOUT };
            /* A record that was begun is always finished, so the stream stays aligned. */
            if (!may_block && p == (const char *)data) {
                return false;
            }
            poll(&pfd, 1, -1);
            continue;
        }
        if (!trace_broken) {
            fprintf(stderr, "gmbeoo: writing to the trace failed (%s); "
                    "no further records are written\n", strerror(errno));
        }
        trace_broken = true;
        __atomic_store_n(&tracing_enabled, false, __ATOMIC_RELAXED);
        return false;
    }
    return true;
}

/*
 * Writes out the ring's records up to its current head. Caller holds
 * writer_lock. In drop mode with may_block false, gives up when the FIFO is
 * full; returns whether the ring is now empty.
 */
static bool flush_ring_locked(VcpuRing *r, bool may_block)
{
    uint64_t head = __atomic_load_n(&r->head, __ATOMIC_ACQUIRE);
    uint64_t tail = r->tail;
    while (tail != head && (trace_fd >= 0 || shm_ring) && !trace_broken) {
        uint64_t start = tail % RING_RECORDS;
        uint64_t count = head - tail;
        if (start + count > RING_RECORDS) {
            count = RING_RECORDS - start;   /* up to the end of the ring first */
        }
        if (!write_fully(&r->slots[start], count * GMBE_RECORD_SIZE, may_block)) {
            break;
        }
        tail += count;
        written_to_file += count;
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

/* The slow path of vcpu_mem: the ring is full. Returns whether there is room now. */
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
        emptied = r->head - __atomic_load_n(&r->tail, __ATOMIC_ACQUIRE) < RING_RECORDS;
    }
    if (!emptied) {
        r->dropped++;
        r->drop_retry_countdown = DROP_RETRY_INTERVAL;
    }
    return emptied;
}

/* --------------------------------------------------------------- the hot path */

static inline void append_record(VcpuRing *r, uint64_t head, uint8_t bits, uint64_t vaddr,
                                 void *cpl_bits)
{
    struct gmbe_record *slot = &r->slots[head % RING_RECORDS];
    slot->info_word = r->header | (uintptr_t)cpl_bits | bits;
    slot->virt_addr = vaddr;
    __atomic_store_n(&r->head, head + 1, __ATOMIC_RELEASE);
}

/* Everything vcpu_mem does not do inline: decoding a new meminfo value, a full ring. */
static COLD void vcpu_mem_slow(VcpuRing *r, qemu_plugin_meminfo_t info, uint64_t vaddr,
                               void *cpl_bits)
{
    uint8_t bits = decode_meminfo_slow(info);
    if (info < MEMINFO_TABLE_SIZE) {
        __atomic_store_n(&meminfo_table[info], bits | MEMINFO_DECODED, __ATOMIC_RELAXED);
    }
    uint64_t head = r->head;
    if (head - __atomic_load_n(&r->tail, __ATOMIC_ACQUIRE) >= RING_RECORDS && !make_room(r)) {
        return;
    }
    append_record(r, head, bits, vaddr, cpl_bits);
}

/*
 * Called after every instrumented access. Its slow paths are tail calls, so
 * the fast path saves no registers: a few loads, a 16-byte store, a counter.
 */
static void vcpu_mem(unsigned int vcpu_index, qemu_plugin_meminfo_t info,
                     uint64_t vaddr, void *cpl_bits)
{
    VcpuRing *r = rings[vcpu_index];
    if (UNLIKELY(!__atomic_load_n(&tracing_enabled, __ATOMIC_RELAXED))) {
        return;
    }
    uint64_t event_index = r->events++ - r->events_at_enable;
    if (event_index & __atomic_load_n(&sampling_mask, __ATOMIC_RELAXED)) {
        return;
    }
    /* The accessor calls cost ~5 ns; a table hit costs one load. */
    uint8_t cached = info < MEMINFO_TABLE_SIZE
                     ? __atomic_load_n(&meminfo_table[info], __ATOMIC_RELAXED) : 0;
    uint64_t head = r->head;
    if (UNLIKELY(cached == 0) ||
        UNLIKELY(head - __atomic_load_n(&r->tail, __ATOMIC_ACQUIRE) >= RING_RECORDS)) {
        vcpu_mem_slow(r, info, vaddr, cpl_bits);
        return;
    }
    append_record(r, head, cached & ~MEMINFO_DECODED, vaddr, cpl_bits);
}

/* ------------------------------------------------------------ translation */

static unsigned current_cpl(void)
{
    static __thread GByteArray *buf;
    if (!buf) {
        buf = g_byte_array_new();
    }
    g_byte_array_set_size(buf, 0);
    if (!cs_register || qemu_plugin_read_register(cs_register, buf) < 1) {
        return 3;
    }
    /* A block is translated for one CPL, which is CS's RPL in protected mode. */
    return buf->data[0] & 3;
}

static void vcpu_retranslate(unsigned int vcpu_index, void *udata)
{
    /* Runs on a vCPU thread, where a reset also flushes translated code. */
    qemu_plugin_reset(plugin_id, register_callbacks);
}

static void vcpu_tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    qemu_plugin_register_vcpu_tb_exec_cond_cb(tb, vcpu_retranslate,
                                              QEMU_PLUGIN_CB_NO_REGS,
                                              QEMU_PLUGIN_COND_NE,
                                              retranslate_flag, 0, NULL);
    unsigned cpl = current_cpl();
    if (config.trace_only_cpl3 && cpl != 3) {
        return;   /* not instrumented at all: kernel code runs at full speed */
    }
    void *cpl_bits = (void *)(uintptr_t)(cpl << GMBE_CPL_SHIFT);
    size_t n = qemu_plugin_tb_n_insns(tb);
    for (size_t i = 0; i < n; i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        qemu_plugin_register_vcpu_mem_cb(insn, vcpu_mem, QEMU_PLUGIN_CB_NO_REGS,
                                         QEMU_PLUGIN_MEM_RW, cpl_bits);
    }
}

static void request_retranslation(void)
{
    for (int i = 0; i < qemu_plugin_num_vcpus(); i++) {
        qemu_plugin_u64_set(retranslate_flag, i, 1);
    }
}

/* ------------------------------------------------------------ vCPU lifecycle */

static void find_cs_register(void)
{
    g_autoptr(GArray) regs = qemu_plugin_get_registers();
    for (guint i = 0; i < regs->len; i++) {
        qemu_plugin_reg_descriptor *d = &g_array_index(regs, qemu_plugin_reg_descriptor, i);
        if (strcmp(d->name, "cs") == 0) {
            cs_register = d->handle;
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
        find_cs_register();
    }
    if (!rings[vcpu_index]) {
        VcpuRing *r = g_new0(VcpuRing, 1);
        r->slots = g_new(struct gmbe_record, RING_RECORDS);
        r->header = gmbe_vcpu_header(vcpu_index);
        rings[vcpu_index] = r;
    }
    if (vcpu_index >= __atomic_load_n(&num_rings, __ATOMIC_RELAXED)) {
        __atomic_store_n(&num_rings, vcpu_index + 1, __ATOMIC_RELEASE);
    }
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
    uint64_t events = 0, written_to_buf = 0, waiting = 0, dropped = 0;
    for (unsigned i = 0; i < __atomic_load_n(&num_rings, __ATOMIC_ACQUIRE); i++) {
        VcpuRing *r = rings[i];
        if (!r) {
            continue;
        }
        uint64_t head = __atomic_load_n(&r->head, __ATOMIC_ACQUIRE);
        events += __atomic_load_n(&r->events, __ATOMIC_RELAXED) - r->events_at_enable;
        written_to_buf += head - r->head_at_enable;
        waiting += head - __atomic_load_n(&r->tail, __ATOMIC_ACQUIRE);
        dropped += __atomic_load_n(&r->dropped, __ATOMIC_RELAXED) - r->dropped_at_enable;
    }
    return snprintf(out, size,
                    "num_of_GMBE_events_since_enabling_GMBEOO=%" PRIu64
                    " num_of_events_written_to_trace_buf=%" PRIu64
                    " num_of_events_written_to_trace_file=%" PRIu64
                    " num_of_events_waiting_in_trace_buf=%" PRIu64
                    " num_of_dropped_events=%" PRIu64,
                    events, written_to_buf, __atomic_load_n(&written_to_file, __ATOMIC_RELAXED),
                    waiting, dropped);
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

static bool parse_bool(const char *key, const char *value, bool *out, char **error)
{
    if (!qemu_plugin_bool_parse(key, value, out)) {
        *error = g_strdup_printf("%s must be on or off, but %s isn't.", key, value);
        return false;
    }
    return true;
}

/* Applies one key=value to cfg; the same keys serve the command line and "set". */
static bool apply_option(Config *cfg, const char *opt, bool at_install, char **error)
{
    g_auto(GStrv) kv = g_strsplit(opt, "=", 2);
    const char *key = kv[0];
    const char *value = kv[1];
    if (!value) {
        *error = g_strdup_printf("option %s must be key=value", opt);
        return false;
    }
    if (g_strcmp0(key, "trace_only_CPL3_code_GMBE") == 0) {
        return parse_bool(key, value, &cfg->trace_only_cpl3, error);
    }
    if (g_strcmp0(key, "log_of_GMBE_block_len") == 0) {
        return parse_log(key, value, &cfg->log_block_len, error);
    }
    if (g_strcmp0(key, "log_of_GMBE_tracing_ratio") == 0) {
        return parse_log(key, value, &cfg->log_tracing_ratio, error);
    }
    if (at_install) {
        if (g_strcmp0(key, "trace_fifo_path") == 0) {
            cfg->trace_fifo_path = g_strdup(value);
            return true;
        }
        if (g_strcmp0(key, "trace_shm_path") == 0) {
            cfg->trace_shm_path = g_strdup(value);
            return true;
        }
        if (g_strcmp0(key, "control_socket_path") == 0) {
            cfg->control_socket_path = g_strdup(value);
            return true;
        }
        if (g_strcmp0(key, "counters_path") == 0) {
            cfg->counters_path = g_strdup(value);
            return true;
        }
        if (g_strcmp0(key, "enabled") == 0) {
            return parse_bool(key, value, &cfg->enabled, error);
        }
        if (g_strcmp0(key, "drop_when_trace_fifo_full") == 0) {
            return parse_bool(key, value, &cfg->drop_when_full, error);
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
    close(fd);
    struct gmbe_ring_header *h = map;
    if (map == MAP_FAILED || (size_t)st.st_size < sizeof *h || memcmp(h->magic, GMBE_RING_MAGIC, 8) != 0 ||
        h->version != GMBE_RING_VERSION || h->record_size != GMBE_RECORD_SIZE ||
        (h->capacity & (h->capacity - 1)) || h->data_offset + h->capacity * GMBE_RECORD_SIZE > (uint64_t)st.st_size) {
        *error = g_strdup_printf("trace_shm_path %s is not a GMBE ring (gmbe_ring.h)", config.trace_shm_path);
        if (map != MAP_FAILED) {
            munmap(map, (size_t)st.st_size);
        }
        return false;
    }
    shm_slots = (struct gmbe_record *)((char *)map + h->data_offset);
    shm_ring = h;
    return true;
}

static bool open_trace(char **error)
{
    if (trace_fd >= 0 || shm_ring) {
        return true;
    }
    if (config.trace_shm_path) {
        return open_shm_ring(error);
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
    return true;
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
        }
    }
    written_to_file = 0;
    pthread_mutex_unlock(&writer_lock);
    __atomic_store_n(&tracing_enabled, true, __ATOMIC_SEQ_CST);
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
    bool cpl_filter_changed = updated.trace_only_cpl3 != config.trace_only_cpl3;
    config.trace_only_cpl3 = updated.trace_only_cpl3;
    config.log_block_len = updated.log_block_len;
    config.log_tracing_ratio = updated.log_tracing_ratio;
    __atomic_store_n(&sampling_mask,
                     sampling_mask_for(config.log_block_len, config.log_tracing_ratio),
                     __ATOMIC_RELAXED);
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
        __atomic_store_n(&tracing_enabled, false, __ATOMIC_SEQ_CST);
        return g_strdup("ok");
    }
    if (g_strcmp0(cmd, "flush") == 0) {
        flush_all_rings();
        return g_strdup("ok");
    }
    if (g_strcmp0(cmd, "counters") == 0) {
        char buf[512];
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
        if (write(fd, framed, strlen(framed)) < 0) {
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
        __atomic_store_n(&control_client_fd, fd, __ATOMIC_RELEASE);
        serve_client(fd);
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
    shutdown(control_listen_fd, SHUT_RDWR);
    int client = __atomic_load_n(&control_client_fd, __ATOMIC_ACQUIRE);
    if (client >= 0) {
        shutdown(client, SHUT_RDWR);
    }
    pthread_join(control_thread, NULL);
    close(control_listen_fd);
    unlink(config.control_socket_path);
    control_thread_running = false;
}

/* ------------------------------------------------------------- fork and exit */

static void forget_trace_in_child(void)
{
    /* user mode: a forked child is not traced; its copy of the rings is stale. */
    __atomic_store_n(&tracing_enabled, false, __ATOMIC_RELAXED);
    pthread_mutex_init(&writer_lock, NULL);
    for (unsigned i = 0; i < num_rings; i++) {
        if (rings[i]) {
            rings[i]->tail = rings[i]->head;
        }
    }
    if (trace_fd >= 0) {
        close(trace_fd);
        trace_fd = -1;
    }
    shm_ring = NULL;   /* the mapping is shared with the parent: never write into it */
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
    char buf[512];
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
    if (trace_fd >= 0) {
        close(trace_fd);
        trace_fd = -1;
    }
}

/* ------------------------------------------------------------- install */

static void register_callbacks(qemu_plugin_id_t id)
{
    for (int i = 0; i < qemu_plugin_num_vcpus(); i++) {
        qemu_plugin_u64_set(retranslate_flag, i, 0);
    }
    qemu_plugin_register_vcpu_init_cb(id, vcpu_init);
    qemu_plugin_register_vcpu_exit_cb(id, vcpu_exit);
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
    if (!config.trace_fifo_path == !config.trace_shm_path) {
        return fail_install(g_strdup("one of trace_fifo_path=PATH and trace_shm_path=PATH is required"));
    }
    plugin_id = id;
    sampling_mask = sampling_mask_for(config.log_block_len, config.log_tracing_ratio);
    retranslate_board = qemu_plugin_scoreboard_new(sizeof(uint64_t));
    retranslate_flag = qemu_plugin_scoreboard_u64(retranslate_board);
    pthread_atfork(NULL, NULL, forget_trace_in_child);
    if (config.enabled && !enable_tracing(&error)) {
        return fail_install(error);
    }
    if (config.control_socket_path && !start_control_channel(&error)) {
        return fail_install(error);
    }
    register_callbacks(id);
    return 0;
}
