/*
 * shared_lines - two threads, pinned to CPUs 0 and 1, each writing its own
 * cache line and one line they share, in lockstep rounds: the cache-line
 * sharing tool must find the shared line written by both vCPUs (with
 * inter-core traffic every round) and each private line used by one vCPU only.
 * Usage: shared_lines [ROUNDS (default 200)]. Follows the workload protocol;
 * its info names the three lines (watch=ADDRESS, for the sharing tool).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>

#define PRIVATE_WRITES_PER_ROUND 10

static struct {
    volatile long line[8] __attribute__((aligned(64)));
} private_lines[2], shared_line;

static pthread_barrier_t round_barrier;
static long rounds;

static void *worker(void *arg)
{
    long cpu = (long)arg;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set) != 0) {
        perror("shared_lines: sched_setaffinity");
    }
    for (long r = 0; r < rounds; r++) {
        for (int i = 0; i < PRIVATE_WRITES_PER_ROUND; i++) {
            private_lines[cpu].line[i % 8] = r;
        }
        shared_line.line[cpu] = r;   /* both threads write the same line, other words */
        pthread_barrier_wait(&round_barrier);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    rounds = argc > 1 ? atol(argv[1]) : 200;
    if (rounds < 1) {
        fprintf(stderr, "shared_lines: ROUNDS must be a positive number, but %s isn't\n", argv[1]);
        return 2;
    }
    printf("-----begin workload info-----\n");
    printf("watch=%p\nwatch=%p\nwatch=%p\n", (void *)&private_lines[0], (void *)&private_lines[1],
           (void *)&shared_line);
    printf("rounds=%ld\nprivate_writes_per_round=%d\n", rounds, PRIVATE_WRITES_PER_ROUND);
    printf("-----end workload info-----\n");
    printf("Ready to trace. Press enter to continue\n");
    fflush(stdout);
    getchar();
    pthread_barrier_init(&round_barrier, NULL, 2);
    pthread_t threads[2];
    for (long cpu = 0; cpu < 2; cpu++) {
        pthread_create(&threads[cpu], NULL, worker, (void *)cpu);
    }
    for (int t = 0; t < 2; t++) {
        pthread_join(threads[t], NULL);
    }
    printf("Stop tracing\n");
    fflush(stdout);
    return 0;
}
