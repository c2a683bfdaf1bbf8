/*
 * pagemap_pages - touches PAGES pages of a locked buffer, one store each, after
 * saying in its workload info where the guest kernel put them: for every page
 * a word page=VIRTUAL:PHYSICAL read from /proc/self/pagemap (which gives frame
 * numbers to root only). Extended records must carry the same physical
 * addresses. Usage: pagemap_pages [PAGES (default 16)]. Follows the protocol.
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE 4096
#define PFN_MASK ((UINT64_C(1) << 55) - 1)
#define PAGE_PRESENT (UINT64_C(1) << 63)

int main(int argc, char **argv)
{
    long pages = argc > 1 ? atol(argv[1]) : 16;
    if (pages < 1 || pages > 4096) {
        fprintf(stderr, "pagemap_pages: PAGES must be in [1, 4096], but %s isn't\n", argv[1]);
        return 2;
    }
    volatile char *buffer = mmap(NULL, (size_t)pages * PAGE, PROT_READ | PROT_WRITE,
                                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    int pagemap = open("/proc/self/pagemap", O_RDONLY);
    if (buffer == MAP_FAILED || pagemap < 0 || mlock((void *)buffer, (size_t)pages * PAGE) != 0) {
        perror("pagemap_pages");
        return 1;
    }
    printf("-----begin workload info-----\n");
    for (long p = 0; p < pages; p++) {
        uintptr_t virt = (uintptr_t)(buffer + p * PAGE);
        buffer[p * PAGE] = 1;   /* present and private before we ask where it is */
        uint64_t entry = 0;
        if (pread(pagemap, &entry, sizeof entry, (off_t)(virt / PAGE * sizeof entry)) != sizeof entry ||
            !(entry & PAGE_PRESENT) || (entry & PFN_MASK) == 0) {
            fprintf(stderr, "pagemap_pages: no frame for page %ld in /proc/self/pagemap (not root?)\n", p);
            return 1;
        }
        printf("page=%#lx:%#llx\n", (unsigned long)virt, (unsigned long long)((entry & PFN_MASK) * PAGE));
    }
    printf("-----end workload info-----\n");
    printf("Ready to trace. Press enter to continue\n");
    fflush(stdout);
    getchar();
    for (long p = 0; p < pages; p++) {
        buffer[p * PAGE + 8] = 2;
    }
    printf("Stop tracing\n");
    fflush(stdout);
    return 0;
}
