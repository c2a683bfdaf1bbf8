/*
 * helper_paths - deterministic memory work through every way QEMU performs an
 * access: plain loads and stores, rep movs and rep stos (a loop inside one
 * instruction), cmpxchg16b, fxsave and fxrstor, x87 80-bit loads and stores,
 * iretq, a faulting store and a faulting add to memory (its load done, its store
 * refused) caught by a SIGSEGV handler, and threads (each a vCPU
 * of its own in user mode), each working on its own data. The same run, traced
 * twice, must give the same records byte for byte (with ASLR off).
 * Usage: helper_paths [ROUNDS (default 100)].
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define THREADS 3
#define WORDS 4096

static uint64_t source[WORDS], target[WORDS];
static unsigned __int128 pair __attribute__((aligned(16)));
uint8_t fx_area[512] __attribute__((aligned(16)));    /* global: tests find them by name */
long double extended;
static sigjmp_buf recover;
static volatile char *forbidden;
static uint64_t *volatile read_only;     /* a page that may be read, not written */
uint64_t after_fault;

static void copy_with_rep_movs(void *to, const void *from, size_t bytes)
{
    __asm__ volatile("rep movsb" : "+D"(to), "+S"(from), "+c"(bytes) : : "memory");
}

static void fill_with_rep_stos(void *to, uint64_t value, size_t words)
{
    __asm__ volatile("rep stosq" : "+D"(to), "+c"(words) : "a"(value) : "memory");
}

/* Plain loads and stores, a different address each: most of a program's accesses are these. */
static void mix_plainly(uint64_t round)
{
    for (int i = 0; i < WORDS; i++) {
        target[i] += source[(i * 7) % WORDS] ^ round;
    }
}

static void swap_pair(uint64_t round)
{
    unsigned __int128 old = pair;
    unsigned __int128 new = ((unsigned __int128)round << 64) | ~round;
    __sync_val_compare_and_swap(&pair, old, new);     /* cmpxchg16b: built with -mcx16 */
}

/* Helpers that reach guest memory in blocks, not through the generated code's accesses. */
static void save_and_restore_fpu(void)
{
    __asm__ volatile("fxsave %0" : "=m"(fx_area));
    __asm__ volatile("fxrstor %0" : : "m"(fx_area));
    __asm__ volatile("fldt %1\n\tfstpt %0" : "=m"(extended) : "m"(extended));
}

/* An iretq from CPL 3 to CPL 3: pops rip, cs, rflags, rsp and ss from the stack. */
static void return_with_iretq(void)
{
    __asm__ volatile(
        "mov %%ss, %%rax\n\t"
        "push %%rax\n\t"
        "lea 8(%%rsp), %%rax\n\t"
        "push %%rax\n\t"
        "pushfq\n\t"
        "mov %%cs, %%rax\n\t"
        "push %%rax\n\t"
        "lea 1f(%%rip), %%rax\n\t"
        "push %%rax\n\t"
        "iretq\n"
        "1:\n\t"
        : : : "rax", "memory", "cc");
}

static void on_segv(int signo)
{
    (void)signo;
    siglongjmp(recover, 1);
}

static void faulting_store(void)
{
    if (sigsetjmp(recover, 1) == 0) {
        *forbidden = 1;
    }
}

/* The pointer's load, then an add to memory whose load is done and whose store faults, then a
 * store that never runs: one block, whose accesses QEMU may count all at its start. */
static void faulting_add(void)
{
    if (sigsetjmp(recover, 1) == 0) {
        uint64_t *p = read_only;
        __asm__ volatile("addq $1, %0\n\tmovq $2, %1" : "+m"(*p), "=m"(after_fault));
    }
}

static int done_pipe[2], never_pipe[2];

/* write(done_fd, byte, 1), then read(never_fd, byte, 1), which blocks until the process exits:
 * raw system calls set up in registers, so that no memory access of this thread can come after
 * the main thread learns it is done (and exits whenever it likes). */
static void say_done_then_block(long done_fd, long never_fd, char *byte)
{
    __asm__ volatile(
        "mov $1, %%eax\n\t"
        "mov %0, %%rdi\n\t"
        "mov %2, %%rsi\n\t"
        "mov $1, %%edx\n\t"
        "syscall\n\t"
        "xor %%eax, %%eax\n\t"
        "mov %1, %%rdi\n\t"
        "syscall\n\t"
        : : "r"(done_fd), "r"(never_fd), "r"(byte) : "rax", "rdi", "rsi", "rdx", "rcx", "r11", "memory");
}

/* Works, says so, then blocks in the kernel until the process exits: no thread ever waits by
 * spinning, and all stay alive, so each keeps a vCPU index of its own and its stream is the same
 * in every run however the threads are scheduled. */
static void *thread_work(void *arg)
{
    uint64_t *mine = arg;
    static char byte = 1;
    for (int i = 0; i < WORDS; i++) {
        mine[i] = mine[i] * 3 + (uint64_t)i;
    }
    say_done_then_block(done_pipe[1], never_pipe[0], &byte);
    return NULL;
}

int main(int argc, char **argv)
{
    long rounds = argc > 1 ? strtol(argv[1], NULL, 10) : 100;
    forbidden = mmap(NULL, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    read_only = mmap(NULL, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    struct sigaction sa = { .sa_handler = on_segv };
    sigaction(SIGSEGV, &sa, NULL);
    for (long round = 0; round < rounds; round++) {
        fill_with_rep_stos(source, (uint64_t)round, WORDS);
        copy_with_rep_movs(target, source, sizeof source);
        mix_plainly((uint64_t)round);
        swap_pair((uint64_t)round);
        save_and_restore_fpu();
        return_with_iretq();
        faulting_store();
        faulting_add();
    }
    static uint64_t per_thread[THREADS][WORDS];
    pthread_t threads[THREADS];
    char byte;
    if (pipe(done_pipe) != 0 || pipe(never_pipe) != 0) {
        return 1;
    }
    /* Stacks of our own, in .bss: where mmap puts a thread's stack depends on how QEMU's own
     * memory happens to lie, and the addresses would differ from run to run. */
    static char stacks[THREADS][1 << 16] __attribute__((aligned(4096)));
    for (int t = 0; t < THREADS; t++) {      /* at once; each works on its own data */
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setstack(&attr, stacks[t], sizeof stacks[t]);
        pthread_create(&threads[t], &attr, thread_work, per_thread[t]);
    }
    mix_plainly((uint64_t)rounds);    /* the first thread works on while the others do */
    for (int t = 0; t < THREADS; t++) {
        if (read(done_pipe[0], &byte, 1) != 1) {
            return 1;
        }
    }
    printf("helper_paths: %ld rounds, target[1]=%llu\n", rounds, (unsigned long long)target[1]);
    return 0;
}
