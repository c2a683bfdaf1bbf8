/*
 * empty_window: the workload protocol with nothing at all between the Enter and `Stop tracing`,
 * so that tracing_duration_in_milliseconds shows what memory_tracer itself adds to the window.
 */
#include <stdio.h>

int main(void)
{
    printf("-----begin workload info-----\n-----end workload info-----\n"
           "Ready to trace. Press enter to continue\n");
    fflush(stdout);
    int c;
    while ((c = getchar()) != EOF && c != '\n') {
    }
    printf("Stop tracing\n");
    fflush(stdout);
    return 0;
}
