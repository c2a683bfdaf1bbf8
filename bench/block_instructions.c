/*
 * block_instructions - a TCG plugin for bench/instructions.py --by-symbol: how many instructions
 * the guest executed in each of its translated blocks, by the block's start address and, where the
 * guest's own ELF names it, its symbol. The guest here is a QEMU (QEMU in QEMU): its blocks are its
 * functions, its libraries' and its generated code, which the Python side tells apart by the guest's
 * mappings, copied at exit from this process's (user mode maps the guest at its own addresses).
 *
 * Arguments: out=FILE (the blocks, one "address symbol count" line each; FILE.maps the mappings).
 * The counts are inline adds (no call per block) into one scoreboard slot per distinct block.
 */
#include <glib.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <qemu-plugin.h>

QEMU_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_VERSION;

#define MAX_BLOCKS (1u << 20)   /* distinct block starts: a QEMU under QEMU makes some 30,000 */

typedef struct {
    uint64_t vaddr;
    char *symbol;              /* NULL where the ELF has none */
} Block;

static struct qemu_plugin_scoreboard *counts;  /* a uint64_t per block, per vCPU */
static GHashTable *index_of;                   /* &blocks[i].vaddr -> i + 1 */
static Block blocks[MAX_BLOCKS];
static unsigned n_blocks;
static GMutex lock;
static char *out_path;

/* The block's slot: the same for every translation that starts there (their counts add up). */
static unsigned block_index(struct qemu_plugin_tb *tb)
{
    uint64_t vaddr = qemu_plugin_tb_vaddr(tb);
    unsigned index;

    g_mutex_lock(&lock);
    gpointer found = g_hash_table_lookup(index_of, &vaddr);
    if (found) {
        index = GPOINTER_TO_UINT(found) - 1;
    } else {
        if (n_blocks == MAX_BLOCKS) {
            fprintf(stderr, "block_instructions: more than %u blocks\n", MAX_BLOCKS);
            abort();
        }
        index = n_blocks++;
        const char *symbol = qemu_plugin_insn_symbol(qemu_plugin_tb_get_insn(tb, 0));
        blocks[index] = (Block){ vaddr, symbol ? g_strdup(symbol) : NULL };
        g_hash_table_insert(index_of, &blocks[index].vaddr, GUINT_TO_POINTER(index + 1));
    }
    g_mutex_unlock(&lock);
    return index;
}

static void translated(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    qemu_plugin_u64 slot = { counts, block_index(tb) * sizeof(uint64_t) };
    qemu_plugin_register_vcpu_tb_exec_inline_per_vcpu(tb, QEMU_PLUGIN_INLINE_ADD_U64, slot,
                                                       qemu_plugin_tb_n_insns(tb));
}

static void copy_file(const char *from, const char *to)
{
    gchar *text;
    gsize length;
    if (g_file_get_contents(from, &text, &length, NULL)) {
        g_file_set_contents(to, text, length, NULL);
        g_free(text);
    }
}

static void at_exit(qemu_plugin_id_t id, void *userdata)
{
    FILE *out = fopen(out_path, "w");
    if (!out) {
        perror(out_path);
        return;
    }
    for (unsigned i = 0; i < n_blocks; i++) {
        uint64_t sum = 0;
        for (int vcpu = 0; vcpu < qemu_plugin_num_vcpus(); vcpu++) {
            sum += ((uint64_t *)qemu_plugin_scoreboard_find(counts, vcpu))[i];
        }
        if (sum) {
            fprintf(out, "%" PRIx64 " %s %" PRIu64 "\n", blocks[i].vaddr,
                    blocks[i].symbol ? blocks[i].symbol : "?", sum);
        }
    }
    fclose(out);
    gchar *maps = g_strdup_printf("%s.maps", out_path);
    copy_file("/proc/self/maps", maps);
    g_free(maps);
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv)
{
    for (int i = 0; i < argc; i++) {
        if (g_str_has_prefix(argv[i], "out=")) {
            out_path = g_strdup(argv[i] + 4);
        }
    }
    if (!out_path) {
        fprintf(stderr, "block_instructions: out=FILE is needed\n");
        return -1;
    }
    index_of = g_hash_table_new(g_int64_hash, g_int64_equal);
    counts = qemu_plugin_scoreboard_new(MAX_BLOCKS * sizeof(uint64_t));
    qemu_plugin_register_vcpu_tb_trans_cb(id, translated);
    qemu_plugin_register_atexit_cb(id, at_exit, NULL);
    return 0;
}
