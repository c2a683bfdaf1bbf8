#!/usr/bin/env python3
"""page_heatmap, an example of memtracer.analysis_api with a C kernel (cffi): accesses per page in
each window of the stream, counted in C into a hash table, then the hottest pages drawn as a
page x time heatmap with matplotlib (--plot out.png) and listed as text."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from memtracer.analysis_api import AnalysisTool, c_kernel  # noqa: E402

import numpy as np  # noqa: E402


CDEF = """
struct gmbe_record { uint64_t info_word; uint64_t virt_addr; };
size_t count_pages(const struct gmbe_record *records, size_t n, unsigned page_shift,
                   uint64_t *keys, uint64_t *counts, size_t capacity);
size_t add_pages(const uint64_t *pages, const uint64_t *page_counts, size_t n,
                 uint64_t *keys, uint64_t *counts, size_t capacity);
"""
# A hash table of pages: open addressing, linear probing, keys hold page + 1 (0 = empty). Both
# functions return how many new pages they added; the caller keeps the table at most half full.
SOURCE = """
#include <stdint.h>
#include <stddef.h>
struct gmbe_record { uint64_t info_word; uint64_t virt_addr; };

static inline int add(uint64_t page, uint64_t count, uint64_t *keys, uint64_t *counts, size_t mask)
{
    uint64_t key = page + 1;
    size_t slot = (size_t)((key * 0x9E3779B97F4A7C15ull) >> 20) & mask;
    while (keys[slot] && keys[slot] != key) slot = (slot + 1) & mask;
    int added = keys[slot] == 0;
    keys[slot] = key;
    counts[slot] += count;
    return added;
}

size_t count_pages(const struct gmbe_record *records, size_t n, unsigned page_shift,
                   uint64_t *keys, uint64_t *counts, size_t capacity)
{
    size_t added = 0;
    for (size_t i = 0; i < n; i++) added += add(records[i].virt_addr >> page_shift, 1, keys, counts, capacity - 1);
    return added;
}

size_t add_pages(const uint64_t *pages, const uint64_t *page_counts, size_t n,
                 uint64_t *keys, uint64_t *counts, size_t capacity)
{
    size_t added = 0;
    for (size_t i = 0; i < n; i++) added += add(pages[i], page_counts[i], keys, counts, capacity - 1);
    return added;
}
"""


class PageHeatmap(AnalysisTool):
    name = "page_heatmap.py"
    options = {"window": "1000000", "pages": "32", "plot": None}

    def start(self):
        self.ffi, self.lib = c_kernel(CDEF, SOURCE)
        self.window = int(self.option["window"])
        self.windows = []                  # one {page: count} per finished window
        self.in_window = 0
        self._new_table(1 << 12)

    def _new_table(self, capacity):
        self.keys = np.zeros(capacity, dtype=np.uint64)
        self.counts = np.zeros(capacity, dtype=np.uint64)
        self.used = 0

    def _count(self, records):
        if (self.used + len(records)) * 2 > len(self.keys):
            self._grow(self.used + len(records))
        self.used += self.lib.count_pages(self.ffi.from_buffer("struct gmbe_record[]", records), len(records),
                                          12, self._u64(self.keys), self._u64(self.counts), len(self.keys))

    def _grow(self, entries):
        """A table at least twice entries, holding what this window counted so far."""
        capacity = len(self.keys)
        while capacity < entries * 2:
            capacity *= 2
        used = self.keys != 0
        pages, counts = self.keys[used] - 1, self.counts[used]
        self._new_table(capacity)
        self.used = self.lib.add_pages(self._u64(pages), self._u64(counts), len(pages),
                                       self._u64(self.keys), self._u64(self.counts), capacity)

    def _u64(self, array):
        return self.ffi.from_buffer("uint64_t[]", array)

    def process(self, records):
        while len(records):
            take = min(len(records), self.window - self.in_window)
            self._count(records[:take])
            self.in_window += take
            records = records[take:]
            if self.in_window == self.window:
                self._close_window()

    def _close_window(self):
        used = self.keys != 0
        self.windows.append(dict(zip((self.keys[used] - 1).tolist(), self.counts[used].tolist())))
        self.keys[:] = 0
        self.counts[:] = 0
        self.used = 0
        self.in_window = 0

    def report(self):
        if self.in_window:
            self._close_window()
        totals = {}
        for window in self.windows:
            for page, count in window.items():
                totals[page] = totals.get(page, 0) + count
        hottest = sorted(sorted(totals, key=totals.get, reverse=True)[:int(self.option["pages"])])
        lines = [f"windows: {len(self.windows)}", f"pages_touched: {len(totals)}"]
        lines += [f"page_0x{page << 12:x}: {totals[page]}" for page in hottest]
        if self.option["plot"]:
            self._plot(hottest, self.option["plot"])
            lines.append(f"plot: {self.option['plot']}")
        return "\n".join(lines)

    def _plot(self, pages, path):
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.colors import LogNorm
        grid = np.array([[w.get(p, 0) for w in self.windows] for p in pages], dtype=float)
        grid[grid == 0] = np.nan
        fig, ax = plt.subplots(figsize=(11, max(4, 0.2 * len(pages) + 1.5)))
        image = ax.imshow(grid, aspect="auto", interpolation="nearest",
                          norm=LogNorm(vmin=1, vmax=max(1, np.nanmax(grid))) if pages else None)
        ax.set_yticks(range(len(pages)))
        ax.set_yticklabels([f"0x{p << 12:x}" for p in pages], fontsize=7, family="monospace")
        ax.set_xlabel(f"time (windows of {self.window:,} accesses)")
        ax.set_title(f"Accesses per 4 KiB page over time ({len(pages)} hottest)")
        fig.colorbar(image, ax=ax, label="accesses (log scale)")
        fig.tight_layout()
        fig.savefig(path, dpi=120)


if __name__ == "__main__":
    PageHeatmap().main()
