/*
 * four_counters: four threads, each adding 1 to its own volatile counter 2,000,000 times (a load
 * and a store each time, all at CPL 3): at least 16,000,000 user-mode accesses however the
 * threads are spread over the vCPUs.
 */
#include <pthread.h>

#define THREADS 4
#define ROUNDS 2000000

static volatile long counters[THREADS][16];   /* one cache line apart */

static void *count(void *arg)
{
    volatile long *counter = arg;
    for (long n = 0; n < ROUNDS; n++) {
        *counter += 1;
    }
    return 0;
}

int main(void)
{
    pthread_t threads[THREADS];
    for (int i = 0; i < THREADS; i++) {
        pthread_create(&threads[i], 0, count, (void *)counters[i]);
    }
    for (int i = 0; i < THREADS; i++) {
        pthread_join(threads[i], 0);
    }
    return 0;
}
