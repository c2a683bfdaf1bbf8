/*
 * gmbe_ring.h - the shared-memory ring, the FIFO's faster alternative
 * (memory_tracer --shared_memory_ring, for tools written with the Python API).
 *
 * One file, mapped by the plugin (the one producer) and the tool (the one
 * consumer): this header, then `capacity` 16-byte records at data_offset.
 * head counts the records ever written, tail those ever consumed; each side
 * writes only its own counter, so no lock and no system call is needed while
 * the stream flows. A full ring makes the producer poll (20 us sleeps). An
 * empty one makes the consumer poll (100 us sleeps) for a while, then sleep
 * until the producer wakes it (reader_sleeping, below): a tool that waits for
 * a guest to start, or for the rare records of a sampled trace, costs no CPU.
 * memtracer/trace/shm_ring.py is the Python side.
 * The plugin maps the records twice in a row where it can (data_offset and the
 * records' size whole pages): a lone vCPU then writes into the ring in place.
 *
 * Negotiated under memory_tracer: a tool that can read the ring finds its path
 * in GMBE_RING_ENV beside the FIFO of argv[1], and sets `attached` before it
 * prints "Ready to analyze"; the plugin then writes to the ring, and the FIFO
 * is left alone. Any other tool reads the FIFO, as the original protocol says.
 * When memory_tracer lets the ring go it sets `abandoned`, which frees a
 * producer waiting for room from a reader that died.
 */
#ifndef GMBE_RING_H
#define GMBE_RING_H

#include <stdint.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#define GMBE_RING_MAGIC "GMBERNG\n"
#define GMBE_RING_VERSION 2
#define GMBE_RING_ENV "GMBE_TRACE_RING"

struct gmbe_ring_header {
    char magic[8];
    uint32_t version;
    uint32_t record_size;        /* 16 */
    uint64_t capacity;           /* records; a power of two */
    uint64_t data_offset;        /* bytes from the start of the file */
    uint64_t head __attribute__((aligned(64)));   /* written by the producer only */
    uint64_t tail __attribute__((aligned(64)));   /* written by the consumer only */
    uint32_t attached __attribute__((aligned(64)));  /* set by a tool that reads the ring */
    /* Set by memory_tracer when it lets the ring go (the run ended, or its reader died): a
     * producer waiting for room then gives up rather than wait for ever. */
    uint32_t abandoned __attribute__((aligned(64)));
    /*
     * 1 while the consumer sleeps (a futex word; the ring is a shared file, so the futex is
     * not process-private): set by the consumer before it checks head a last time, cleared by
     * the producer that wakes it. Each side writes its flag or counter, then reads the other's,
     * with a full fence between: either the consumer sees the new head and stays awake, or the
     * producer sees the flag and wakes it.
     */
    uint32_t reader_sleeping __attribute__((aligned(64)));
};

/* The producer, after each new head: wakes the consumer if it sleeps (a system call only then). */
static inline void gmbe_ring_wake_reader(struct gmbe_ring_header *ring)
{
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (__atomic_load_n(&ring->reader_sleeping, __ATOMIC_RELAXED) &&
        __atomic_exchange_n(&ring->reader_sleeping, 0, __ATOMIC_ACQ_REL)) {
        syscall(SYS_futex, &ring->reader_sleeping, FUTEX_WAKE, 1, NULL, NULL, 0);
    }
}

#endif
