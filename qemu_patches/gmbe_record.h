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

#endif /* GMBE_RECORD_H */
