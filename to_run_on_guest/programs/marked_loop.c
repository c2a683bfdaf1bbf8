/*
 * marked_loop - a known loop inside a region marked from guest code, with
 * accesses to the same buffer before and after it, and a progress marker
 * between its two phases. Usage: marked_loop [ITERATIONS (default 100000)].
 *
 *   outside:  OUTSIDE stores and OUTSIDE loads
 *   region:   ITERATIONS stores, marker 1, ITERATIONS loads
 *   outside:  OUTSIDE stores
 *
 * Each phase is one asm loop of exactly 3 instructions and one access per
 * iteration, so the tests know the accesses and the instruction counts. It
 * follows the workload protocol itself and says all this in its info.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "memory_tracer_markers.h"

#define OUTSIDE 777
#define INSTRUCTIONS_PER_ITERATION 3

static uint64_t buffer[512] __attribute__((aligned(4096)));

static void stores(long n)
{
    __asm__ volatile("1:\n\tmovq %[n], (%[p])\n\tdecq %[n]\n\tjnz 1b"
                     : [n] "+r"(n) : [p] "r"(&buffer[8]) : "memory", "cc");
}

static void loads(long n)
{
    uint64_t sink;
    __asm__ volatile("1:\n\tmovq (%[p]), %[s]\n\tdecq %[n]\n\tjnz 1b"
                     : [n] "+r"(n), [s] "=&r"(sink) : [p] "r"(&buffer[8]) : "memory", "cc");
}

int main(int argc, char **argv)
{
    long iterations = argc > 1 ? atol(argv[1]) : 100000;
    if (iterations < 1) {
        fprintf(stderr, "marked_loop: ITERATIONS must be a positive number, but %s isn't\n", argv[1]);
        return 2;
    }
    printf("-----begin workload info-----\n");
    printf("range=%p-%p\n", (void *)buffer, (void *)(buffer + 512));
    printf("region_stores=%ld\nregion_loads=%ld\noutside_accesses=%d\n", iterations, iterations, 3 * OUTSIDE);
    printf("instructions_per_iteration=%d\n", INSTRUCTIONS_PER_ITERATION);
    printf("-----end workload info-----\n");
    printf("Ready to trace. Press enter to continue\n");
    fflush(stdout);
    getchar();
    stores(OUTSIDE);
    loads(OUTSIDE);
    memory_tracer_region_begin();
    stores(iterations);
    memory_tracer_marker(1);
    loads(iterations);
    memory_tracer_region_end();
    stores(OUTSIDE);
    printf("Stop tracing\n");
    fflush(stdout);
    return 0;
}
