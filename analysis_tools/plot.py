#!/usr/bin/env python3
"""Plots for the C analysis tools (they write a small TSV and run this with matplotlib):

    plot.py heatmap DATA.tsv OUT.png   (pages --plot: page x time)
    plot.py reuse DATA.tsv OUT.png     (reuse --plot: histogram and cumulative curve)
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from memtracer.environment import use_project_environment  # noqa: E402

use_project_environment()   # the C tools start it with whatever python3 is on PATH

import matplotlib  # noqa: E402

matplotlib.use("Agg")   # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402


def read_tsv(path):
    with open(path) as f:
        header = f.readline().rstrip("\n").split("\t")
        rows = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    return header, rows


def heatmap(data_path, out_path):
    header, rows = read_tsv(data_path)
    title, window = header[0], int(header[1])
    pages = [r[0] for r in rows]
    counts = np.array([[int(v) for v in r[1:]] for r in rows], dtype=float)
    counts[counts == 0] = np.nan   # untouched: blank, not the darkest colour
    fig, ax = plt.subplots(figsize=(11, max(4, 0.18 * len(pages) + 1.5)))
    image = ax.imshow(counts, aspect="auto", interpolation="nearest", cmap="viridis",
                      norm=LogNorm(vmin=1, vmax=max(1, np.nanmax(counts))) if len(pages) else None)
    ax.set_yticks(range(len(pages)))
    ax.set_yticklabels(pages, fontsize=7, family="monospace")
    ax.set_xlabel(f"time (windows of {window:,} accesses)")
    ax.set_ylabel("page (the hottest, by address)")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="accesses in the window (log scale)")
    fig.tight_layout()
    fig.savefig(out_path, dpi=120)


def reuse(data_path, out_path):
    header, rows = read_tsv(data_path)
    labels = [r[0] for r in rows]
    counts = np.array([int(r[1]) for r in rows], dtype=float)
    total = counts.sum() or 1
    fig, ax = plt.subplots(figsize=(11, 5))
    ax.bar(range(len(labels)), counts / total * 100, color="tab:blue", label="accesses in the bin")
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=8)
    ax.set_xlabel(f"reuse distance (distinct {header[1]}s between two accesses to one {header[1]})")
    ax.set_ylabel("% of accesses")
    cumulative = ax.twinx()
    cumulative.plot(range(len(labels)), np.cumsum(counts) / total * 100, color="tab:red", marker=".",
                    label="cumulative")
    cumulative.set_ylabel("cumulative %", color="tab:red")
    cumulative.set_ylim(0, 101)
    ax.set_title(header[0])
    fig.legend(loc="center right", bbox_to_anchor=(0.9, 0.5))
    fig.tight_layout()
    fig.savefig(out_path, dpi=120)


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in ("heatmap", "reuse"):
        sys.exit(__doc__)
    {"heatmap": heatmap, "reuse": reuse}[sys.argv[1]](sys.argv[2], sys.argv[3])
