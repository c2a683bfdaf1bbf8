/*
 * memory_tracer_markers.h - mark regions of interest and progress points from
 * inside a traced program. Header only; works in full-system and user mode.
 *
 *   #include "memory_tracer_markers.h"
 *
 *   memory_tracer_region_begin();   // with --trace_only_marked_regions, tracing starts here
 *   hot_loop();
 *   memory_tracer_marker(1);        // a numbered marker record in the stream, between phases
 *   other_phase();
 *   memory_tracer_region_end();     // ... and stops here
 *
 * Each call is one magic instruction, `xchg %bx,%bx`, with rax holding
 * MEMORY_TRACER_MAGIC, rcx the command and rdx the number. On real hardware
 * and under QEMU without GMBEOO it does nothing (it swaps bx with itself); the
 * GMBEOO plugin recognises it when it translates the code, so other code is
 * not slowed down. Every call writes a marker record (gmbe_record.h) while
 * memory_tracer's trace window is open, so analyses can split phases.
 * Regions are global: a region begun by one thread is traced on every vCPU.
 */
#ifndef MEMORY_TRACER_MARKERS_H
#define MEMORY_TRACER_MARKERS_H

#include <stdint.h>

#define MEMORY_TRACER_MAGIC 0x45434152544d454dULL   /* "MEMTRACE" */

enum memory_tracer_command {
    MEMORY_TRACER_REGION_BEGIN = 1,
    MEMORY_TRACER_REGION_END = 2,
    MEMORY_TRACER_MARKER = 3,
};

/* "memory": the compiler finishes the accesses before the call and makes none across it. */
static inline void memory_tracer_magic(uint64_t command, uint64_t number)
{
#if defined(__x86_64__)
    __asm__ __volatile__("xchg %%bx, %%bx" : : "a"(MEMORY_TRACER_MAGIC), "c"(command), "d"(number) : "memory");
#else
    (void)command;
    (void)number;
#endif
}

static inline void memory_tracer_region_begin(void)
{
    memory_tracer_magic(MEMORY_TRACER_REGION_BEGIN, 0);
}

static inline void memory_tracer_region_end(void)
{
    memory_tracer_magic(MEMORY_TRACER_REGION_END, 0);
}

static inline void memory_tracer_marker(uint64_t number)
{
    memory_tracer_magic(MEMORY_TRACER_MARKER, number);
}

#endif
