/*
 * known_accesses - makes a known number of each kind of memory access to one
 * buffer, and says so: its workload info is the buffer's range (which the count
 * tool reads) and the count of each kind, so a test checks the trace against
 * the guest's own word. It follows the workload protocol itself.
 *
 * Each access is one instruction written in asm, so the compiler cannot add,
 * merge or remove accesses to the buffer.
 *
 * With the argument "linger" it waits for one more Enter before it exits.
 */
#include <stdio.h>
#include <string.h>

static unsigned char buffer[4096] __attribute__((aligned(64)));

/* The counts differ, so a kind mistaken for another shows. */
enum { N_LOAD_1U = 101, N_LOAD_1S, N_LOAD_2U, N_LOAD_2S, N_LOAD_4U, N_LOAD_4S, N_LOAD_8U,
       N_STORE_1, N_STORE_2, N_STORE_4, N_STORE_8, N_LOAD_16, N_STORE_16 };

static const struct { const char *kind; int count; } kinds[] = {
    { "load_1_unsigned", N_LOAD_1U },   { "load_1_signed", N_LOAD_1S },
    { "load_2_unsigned", N_LOAD_2U },   { "load_2_signed", N_LOAD_2S },
    { "load_4_unsigned", N_LOAD_4U },   { "load_4_signed", N_LOAD_4S },
    { "load_8_unsigned", N_LOAD_8U },   { "store_1_unsigned", N_STORE_1 },
    { "store_2_unsigned", N_STORE_2 },  { "store_4_unsigned", N_STORE_4 },
    { "store_8_unsigned", N_STORE_8 },  { "load_16_unsigned", N_LOAD_16 },
    { "store_16_unsigned", N_STORE_16 },
};

#define REPEAT(n, insn, clobber)                                                \
    for (long i = 0; i < (n); i++) {                                            \
        __asm__ volatile(insn : : "r"(buffer + 64) : clobber, "memory");       \
    }

/*
 * pop, with the stack pointer moved onto the buffer for it: QEMU loads its
 * value into the very temp that held its address, so the access's address
 * must be kept apart from the value it loads.
 */
static void pop_from_buffer(long n)
{
    for (long i = 0; i < n; i++) {
        __asm__ volatile("mov %%rsp, %%rbx\n\tmov %0, %%rsp\n\tpop %%rax\n\tmov %%rbx, %%rsp"
                         : : "r"(buffer + 64) : "rax", "rbx", "memory");
    }
}

static void make_accesses(void)
{
    REPEAT(N_LOAD_1U, "movzbl (%0), %%eax", "rax");
    REPEAT(N_LOAD_1S, "movsbq (%0), %%rax", "rax");
    REPEAT(N_LOAD_2U, "movzwl (%0), %%eax", "rax");
    REPEAT(N_LOAD_2S, "movswq (%0), %%rax", "rax");
    REPEAT(N_LOAD_4U, "movl (%0), %%eax", "rax");
    REPEAT(N_LOAD_4S, "movslq (%0), %%rax", "rax");
    REPEAT(N_LOAD_8U - N_LOAD_8U / 2, "movq (%0), %%rax", "rax");
    pop_from_buffer(N_LOAD_8U / 2);
    REPEAT(N_STORE_1, "movb $1, (%0)", "rax");
    REPEAT(N_STORE_2, "movw $1, (%0)", "rax");
    REPEAT(N_STORE_4, "movl $1, (%0)", "rax");
    REPEAT(N_STORE_8, "movq $1, (%0)", "rax");
    REPEAT(N_LOAD_16, "movdqa (%0), %%xmm0", "xmm0");
    REPEAT(N_STORE_16, "movdqa %%xmm0, (%0)", "xmm0");
}

int main(int argc, char **argv)
{
    printf("-----begin workload info-----\n");
    printf("range=%p-%p\n", (void *)buffer, (void *)(buffer + sizeof(buffer)));
    for (unsigned k = 0; k < sizeof(kinds) / sizeof(kinds[0]); k++) {
        printf("%s=%d\n", kinds[k].kind, kinds[k].count);
    }
    printf("-----end workload info-----\n");
    printf("Ready to trace. Press enter to continue\n");
    fflush(stdout);
    getchar();
    make_accesses();
    printf("Stop tracing\n");
    fflush(stdout);
    if (argc > 1 && strcmp(argv[1], "linger") == 0) {
        getchar();
    }
    return 0;
}
