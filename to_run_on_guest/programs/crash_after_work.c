/* crash_after_work - does some memory work, then dies of SIGSEGV (a crashing workload). */
#include <stdio.h>

static volatile long work[4096];

int main(void)
{
    for (int i = 0; i < 4096; i++) {
        work[i] = i;
    }
    printf("crash_after_work: crashing now\n");
    fflush(stdout);
    *(volatile long *)16 = 1;
    return 0;
}
