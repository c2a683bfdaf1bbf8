/*
 * mem_loop - a memory-heavy loop: writes a buffer, then sums it with a stride,
 * several passes. Usage: mem_loop [KiB (default 4096)] [passes (default 4)].
 * Prints the sum so the work cannot be optimised away.
 */
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv)
{
    long kib = argc > 1 ? atol(argv[1]) : 4096;
    int passes = argc > 2 ? atoi(argv[2]) : 4;
    size_t n = (size_t)kib * 1024 / sizeof(long);
    long *a = malloc(n * sizeof(long));
    if (!a || n == 0) {
        fprintf(stderr, "mem_loop: cannot allocate %ld KiB\n", kib);
        return 1;
    }
    long sum = 0;
    for (int p = 0; p < passes; p++) {
        for (size_t i = 0; i < n; i++) {
            a[i] = (long)(i * 2654435761u) ^ p;
        }
        for (size_t stride = 1; stride <= 8; stride *= 2) {
            for (size_t i = 0; i < n; i += stride) {
                sum += a[i];
            }
        }
    }
    printf("mem_loop: %ld KiB x %d passes, sum %ld\n", kib, passes, sum);
    return 0;
}
