/*
 * What this machine's first two CPUs give a traced run right now, without QEMU: a traced run keeps
 * both busy, the vCPU writing records on one and the tool reading them on the other. Prints, on
 * one line:
 *   - the time a cache line takes from one CPU to the other, one way, in ns (the median of three
 *     rounds of round trips): a few tens where the two CPUs share a cache, some 150 or more where
 *     they do not;
 *   - the time a record (gmbe_record.h) takes through a ring between them, in ns: CPU 0 writes
 *     records as the generated code does (two stores, no prefetch) into a ring of memory_tracer's
 *     size, publishing every 4096, and CPU 1 reads and sums them, as the count tool does.
 * The hypervisor moves the two CPUs from one placement to another, and its other guests load the
 * memory system, within seconds, so bench/run.py asks before each run.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gmbe_record.h"

#define ROUND_TRIPS 20000
#define ROUNDS 3
/* RING_RECORDS: memory_tracer's ring capacity, which bench/run.py gives (-D). */
#define PUBLISH_RECORDS 4096           /* the plugin's buffer: it publishes that many at a time */
#define RECORDS_THROUGH (1 << 24)

static _Atomic long line __attribute__((aligned(64)));
static _Atomic uint64_t head __attribute__((aligned(64)));
static _Atomic uint64_t tail __attribute__((aligned(64)));
static struct gmbe_record ring[RING_RECORDS] __attribute__((aligned(4096)));

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void pin_to(int cpu)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (pthread_setaffinity_np(pthread_self(), sizeof set, &set) != 0) {
        fprintf(stderr, "cpu_pair: cannot run on CPU %d\n", cpu);
        exit(1);
    }
}

/* CPU 1: answers each odd value of the line with the next even one, then reads the ring. */
static void *cpu_1(void *sum)
{
    pin_to(1);
    for (long i = 0; i < (long)ROUNDS * ROUND_TRIPS; i++) {
        while (atomic_load_explicit(&line, memory_order_acquire) != 2 * i + 1) {
        }
        atomic_store_explicit(&line, 2 * i + 2, memory_order_release);
    }
    uint64_t read = 0, total = 0;
    while (read < RECORDS_THROUGH) {
        uint64_t published = atomic_load_explicit(&head, memory_order_acquire);
        for (; read < published; read++) {
            const struct gmbe_record *r = &ring[read & (RING_RECORDS - 1)];
            total += r->info_word ^ r->virt_addr;
        }
        atomic_store_explicit(&tail, read, memory_order_release);
    }
    *(uint64_t *)sum = total;
    return NULL;
}

static double median_of_rounds(double *values)
{
    for (int i = 1; i < ROUNDS; i++) {          /* insertion sort of three */
        for (int j = i; j > 0 && values[j] < values[j - 1]; j--) {
            double v = values[j];
            values[j] = values[j - 1];
            values[j - 1] = v;
        }
    }
    return values[ROUNDS / 2];
}

static double line_one_way_seconds(void)
{
    double one_way[ROUNDS];
    for (long r = 0, i = 0; r < ROUNDS; r++) {
        double begun = now();
        for (long n = 0; n < ROUND_TRIPS; n++, i++) {
            atomic_store_explicit(&line, 2 * i + 1, memory_order_release);
            while (atomic_load_explicit(&line, memory_order_acquire) != 2 * i + 2) {
            }
        }
        one_way[r] = (now() - begun) / ROUND_TRIPS / 2;
    }
    return median_of_rounds(one_way);
}

static double ring_seconds_per_record(void)
{
    double begun = now();
    uint64_t written = 0, limit = 0;
    while (written < RECORDS_THROUGH) {
        if (written == limit) {
            atomic_store_explicit(&head, written, memory_order_release);
            while (written + PUBLISH_RECORDS - atomic_load_explicit(&tail, memory_order_acquire) >
                   RING_RECORDS) {
            }
            limit = written + PUBLISH_RECORDS;
        }
        struct gmbe_record *r = &ring[written & (RING_RECORDS - 1)];
        r->info_word = ((uint64_t)GMBE_VALID_BYTE << 56) | (written & GMBE_SIZE_SHIFT_MASK);
        r->virt_addr = written * 8;
        written++;
    }
    atomic_store_explicit(&head, written, memory_order_release);
    while (atomic_load_explicit(&tail, memory_order_acquire) < written) {
    }
    return (now() - begun) / RECORDS_THROUGH;
}

int main(void)
{
    pthread_t other;
    uint64_t sum;

    pin_to(0);
    memset(ring, 0, sizeof ring);   /* its pages made now: memory_tracer's ring is made before the window too */
    if (pthread_create(&other, NULL, cpu_1, &sum) != 0) {
        perror("cpu_pair: pthread_create");
        return 1;
    }
    double line_ns = line_one_way_seconds() * 1e9;
    double record_ns = ring_seconds_per_record() * 1e9;
    pthread_join(other, NULL);
    printf("%.0f %.2f\n", line_ns, record_ns);
    return 0;
}
