/*
 * make_text - writes MiB of compressible pseudo-text to stdout, the same
 * bytes on every machine (a fixed linear congruential generator), so the
 * benchmark gives the same input to a program natively, under qemu-x86_64 and
 * in the guest. Usage: make_text [MiB (default 4)]
 */
#include <stdio.h>
#include <stdlib.h>

#define WORDS 5000

static unsigned long long state = 42;

static unsigned next(unsigned bound)
{
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (unsigned)(state >> 33) % bound;
}

int main(int argc, char **argv)
{
    long long bytes = (argc > 1 ? atoll(argv[1]) : 4) << 20;
    static char words[WORDS][10];
    const char letters[] = "etaoinshrdlucmfw";
    for (int w = 0; w < WORDS; w++) {
        int len = 2 + (int)next(8);
        for (int i = 0; i < len; i++) {
            words[w][i] = letters[next(16)];
        }
        words[w][len] = 0;
    }
    for (long long written = 0; written < bytes;) {
        for (int i = 0; i < 12; i++) {
            written += printf(i ? " %s" : "%s", words[next(WORDS)]);
        }
        written += printf("\n");
    }
    return 0;
}
