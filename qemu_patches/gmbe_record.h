/*
 * gmbe_record.h - the one definition of a GMBE trace record.
 *
 * Shared by the GMBEOO plugin (the writer) and every C analysis tool (the
 * readers); memtracer/record.py mirrors it as a NumPy dtype, and a test checks
 * that the two agree.
 *
 * A record is 16 bytes, little-endian, with no file header:
 *
 *   byte 0     info byte:
 *                bits 0-2  size_shift   (the access is 1 << size_shift bytes)
 *                bit  3    sign_extend  (a sign-extending load)
 *                bit  4    endianness   (0 = little, 1 = big)
 *                bit  5    store        (1 = store, 0 = load)
 *                bits 6-7  cpl          (CPL of the code that made the access)
 *   bytes 1-2  vCPU index (little-endian); zero in the original 2018 tracer
 *   bytes 3-6  zero (free for extensions)
 *   byte 7     0x80, the original's "valid" bit
 *   bytes 8-15 guest virtual address
 *
 * Tools written for the original must ignore bytes 1-7, so the vCPU index is
 * a compatible extension.
 *
 * Markers. Guest code can mark regions and progress points
 * (to_run_on_guest/memory_tracer_markers.h); each becomes a marker record in
 * the stream, in order with the accesses of its vCPU. A marker is the one
 * record whose size shift is 7 (no access is 128 bytes) and whose byte 7
 * lacks 0x80, so a tool that knows only accesses skips it by either test:
 *   byte 0     0x07
 *   bytes 1-2  vCPU index
 *   byte 3     kind (GMBE_MARKER_*)
 *   bytes 8-15 its number (progress markers), else 0
 *
 * Other formats (opt-in, memory_tracer --record_format; the record size tells
 * them apart, and a trace file's header says it):
 *   extended, 32 bytes: the 16 above, then the guest physical address (0 in
 *     user mode, and for markers) and the PC of the accessing instruction.
 *   compact, 8 bytes: one word; bits 0-47 the virtual address (sign-extended
 *     from bit 47 when read: a canonical 48-bit address), bits 48-55 the info
 *     byte, bits 56-63 the vCPU index (mod 256). A marker's address bits hold
 *     kind << 40 | number (40 bits).
 * gmbe_reader.h turns every format into the 16-byte records for the tools.
 */
#ifndef GMBE_RECORD_H
#define GMBE_RECORD_H

#include <stdint.h>

#define GMBE_RECORD_SIZE 16

#define GMBE_SIZE_SHIFT_MASK  0x07u
#define GMBE_SIGN_EXTEND_BIT  0x08u
#define GMBE_BIG_ENDIAN_BIT   0x10u
#define GMBE_STORE_BIT        0x20u
#define GMBE_CPL_SHIFT        6
#define GMBE_VALID_BYTE       0x80u

struct gmbe_record {
    uint64_t info_word;  /* byte 0 info, bytes 1-2 vCPU, byte 7 0x80 */
    uint64_t virt_addr;  /* guest virtual address */
};

_Static_assert(sizeof(struct gmbe_record) == GMBE_RECORD_SIZE,
               "a GMBE record is 16 bytes");

static inline uint8_t gmbe_info(const struct gmbe_record *r)
{
    return (uint8_t)r->info_word;
}

static inline unsigned gmbe_size(const struct gmbe_record *r)
{
    return 1u << (gmbe_info(r) & GMBE_SIZE_SHIFT_MASK);
}

static inline int gmbe_is_store(const struct gmbe_record *r)
{
    return (gmbe_info(r) & GMBE_STORE_BIT) != 0;
}

static inline int gmbe_is_sign_extended(const struct gmbe_record *r)
{
    return (gmbe_info(r) & GMBE_SIGN_EXTEND_BIT) != 0;
}

static inline int gmbe_is_big_endian(const struct gmbe_record *r)
{
    return (gmbe_info(r) & GMBE_BIG_ENDIAN_BIT) != 0;
}

static inline unsigned gmbe_cpl(const struct gmbe_record *r)
{
    return gmbe_info(r) >> GMBE_CPL_SHIFT;
}

static inline unsigned gmbe_vcpu(const struct gmbe_record *r)
{
    return (unsigned)((r->info_word >> 8) & 0xffffu);
}

/* The constant part of word 0 for a given vCPU: the valid byte and the index. */
static inline uint64_t gmbe_vcpu_header(unsigned vcpu_index)
{
    return ((uint64_t)GMBE_VALID_BYTE << 56) | ((uint64_t)(vcpu_index & 0xffffu) << 8);
}

/* ------------------------------------------------------------ markers */

#define GMBE_MARKER_INFO 0x07u

enum gmbe_marker_kind {
    GMBE_MARKER_REGION_BEGIN = 1,   /* memory_tracer_region_begin() */
    GMBE_MARKER_REGION_END = 2,     /* memory_tracer_region_end() */
    GMBE_MARKER_PROGRESS = 3,       /* memory_tracer_marker(number) */
    GMBE_MARKER_INSTRUCTION_LIMIT = 4,  /* --max_instructions reached; number = the limit */
};

static inline int gmbe_is_marker(const struct gmbe_record *r)
{
    return (gmbe_info(r) & GMBE_SIZE_SHIFT_MASK) == GMBE_MARKER_INFO;
}

static inline unsigned gmbe_marker_kind(const struct gmbe_record *r)
{
    return (unsigned)((r->info_word >> 24) & 0xffu);
}

static inline struct gmbe_record gmbe_marker(unsigned vcpu_index, unsigned kind, uint64_t number)
{
    struct gmbe_record r = {
        .info_word = GMBE_MARKER_INFO | ((uint64_t)(vcpu_index & 0xffffu) << 8) | ((uint64_t)kind << 24),
        .virt_addr = number,
    };
    return r;
}

static inline const char *gmbe_marker_name(unsigned kind)
{
    switch (kind) {
    case GMBE_MARKER_REGION_BEGIN: return "region_begin";
    case GMBE_MARKER_REGION_END: return "region_end";
    case GMBE_MARKER_PROGRESS: return "marker";
    case GMBE_MARKER_INSTRUCTION_LIMIT: return "instruction_limit";
    default: return "unknown_marker";
    }
}

/* ------------------------------------------------------------ other formats */

#define GMBE_EXTENDED_RECORD_SIZE 32
#define GMBE_COMPACT_RECORD_SIZE 8
#define GMBE_COMPACT_ADDR_MASK ((UINT64_C(1) << 48) - 1)
#define GMBE_COMPACT_NUMBER_MASK ((UINT64_C(1) << 40) - 1)

struct gmbe_extended_record {
    uint64_t info_word;  /* as in struct gmbe_record */
    uint64_t virt_addr;
    uint64_t phys_addr;  /* 0 when unknown (user mode, markers) */
    uint64_t pc;         /* the accessing instruction's guest virtual address */
};

_Static_assert(sizeof(struct gmbe_extended_record) == GMBE_EXTENDED_RECORD_SIZE,
               "an extended record is 32 bytes");

static inline uint64_t gmbe_compact_encode(const struct gmbe_record *r)
{
    uint64_t info = gmbe_info(r);
    uint64_t low = r->virt_addr & GMBE_COMPACT_ADDR_MASK;
    if (gmbe_is_marker(r)) {
        low = ((uint64_t)gmbe_marker_kind(r) << 40) | (r->virt_addr & GMBE_COMPACT_NUMBER_MASK);
    }
    return low | (info << 48) | ((uint64_t)(gmbe_vcpu(r) & 0xffu) << 56);
}

static inline int gmbe_compact_is_marker(uint64_t word)
{
    return ((word >> 48) & GMBE_SIZE_SHIFT_MASK) == GMBE_MARKER_INFO;
}

/* A compact access record's fields (not a marker's): its info byte, vCPU and address. */
static inline uint8_t gmbe_compact_info(uint64_t word)
{
    return (uint8_t)(word >> 48);
}

static inline unsigned gmbe_compact_vcpu(uint64_t word)
{
    return (unsigned)(word >> 56);
}

static inline uint64_t gmbe_compact_address(uint64_t word)
{
    return (uint64_t)((int64_t)(word << 16) >> 16);   /* sign-extend bit 47 */
}

/* A compact access record at 16 bytes; only for words that are not markers. */
static inline struct gmbe_record gmbe_compact_widen_access(uint64_t word)
{
    struct gmbe_record r = {
        .info_word = gmbe_vcpu_header(gmbe_compact_vcpu(word)) | gmbe_compact_info(word),
        .virt_addr = gmbe_compact_address(word),
    };
    return r;
}

static inline struct gmbe_record gmbe_compact_decode(uint64_t word)
{
    if (gmbe_compact_is_marker(word)) {
        return gmbe_marker((unsigned)(word >> 56), (unsigned)((word >> 40) & 0xffu), word & GMBE_COMPACT_NUMBER_MASK);
    }
    return gmbe_compact_widen_access(word);
}

#endif /* GMBE_RECORD_H */
