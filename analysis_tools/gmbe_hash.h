/*
 * gmbe_hash.h - an open-addressing hash map from 64-bit keys (pages, cache
 * lines) to a tool's per-key value, growing by doubling. Small on purpose: the
 * analyses need get-or-insert and iteration, nothing else.
 */
#ifndef GMBE_HASH_H
#define GMBE_HASH_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    uint64_t *keys;          /* key + 1; 0 marks an empty slot */
    void *values;
    size_t value_size;
    size_t capacity;         /* a power of two */
    size_t count;
} gmbe_hash;

static void gmbe_hash_init(gmbe_hash *h, size_t value_size)
{
    h->value_size = value_size;
    h->capacity = 1 << 16;
    h->count = 0;
    h->keys = calloc(h->capacity, sizeof *h->keys);
    h->values = calloc(h->capacity, value_size);
}

static inline size_t gmbe_hash_slot(uint64_t key, size_t mask)
{
    key ^= key >> 33;
    key *= 0xff51afd7ed558ccdULL;   /* a 64-bit mix, so strided keys spread */
    key ^= key >> 33;
    return (size_t)key & mask;
}

static void *gmbe_hash_get(gmbe_hash *h, uint64_t key, int *inserted);

static void gmbe_hash_grow(gmbe_hash *h)
{
    gmbe_hash old = *h;
    h->capacity *= 2;
    h->count = 0;
    h->keys = calloc(h->capacity, sizeof *h->keys);
    h->values = calloc(h->capacity, h->value_size);
    for (size_t i = 0; i < old.capacity; i++) {
        if (old.keys[i]) {
            int inserted;
            memcpy(gmbe_hash_get(h, old.keys[i] - 1, &inserted), (char *)old.values + i * h->value_size,
                   h->value_size);
        }
    }
    free(old.keys);
    free(old.values);
}

/* The value of key, inserted zeroed when new (*inserted says which). */
static void *gmbe_hash_get(gmbe_hash *h, uint64_t key, int *inserted)
{
    if ((h->count + 1) * 2 > h->capacity) {
        gmbe_hash_grow(h);
    }
    size_t mask = h->capacity - 1;
    for (size_t i = gmbe_hash_slot(key, mask);; i = (i + 1) & mask) {
        if (h->keys[i] == key + 1) {
            *inserted = 0;
            return (char *)h->values + i * h->value_size;
        }
        if (h->keys[i] == 0) {
            h->keys[i] = key + 1;
            h->count++;
            *inserted = 1;
            return (char *)h->values + i * h->value_size;
        }
    }
}

#endif
