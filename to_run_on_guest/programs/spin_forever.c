/* spin_forever - touches memory until it is killed (for --timeout). */
#include <stdio.h>

static volatile long counters[1024];

int main(void)
{
    printf("spin_forever: started\n");
    fflush(stdout);
    for (unsigned long i = 0;; i++) {
        counters[i % 1024]++;
    }
}
