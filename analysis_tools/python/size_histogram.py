#!/usr/bin/env python3
"""size_histogram, an example of memtracer.analysis_api in NumPy alone: how many accesses of each
size, loads and stores apart, per CPL, with a text bar chart."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from memtracer.analysis_api import AnalysisTool  # noqa: E402

import numpy as np  # noqa: E402

from memtracer.record import CPL_SHIFT, SIZE_SHIFT_MASK, STORE_BIT  # noqa: E402

BAR_WIDTH = 40


class SizeHistogram(AnalysisTool):
    name = "size_histogram.py"
    options = {"cpl": "all"}

    def start(self):
        self.by_info = np.zeros(256, dtype=np.int64)

    def process(self, records):
        self.by_info += np.bincount(records["info"], minlength=256)

    def report(self):
        info = np.arange(256)
        keep = np.ones(256, dtype=bool)
        if self.option["cpl"] != "all":
            keep = (info >> CPL_SHIFT) == int(self.option["cpl"])
        lines = []
        for kind, is_store in (("load", False), ("store", True)):
            chosen = keep & (((info & STORE_BIT) != 0) == is_store)
            counts = [int(self.by_info[chosen & ((info & SIZE_SHIFT_MASK) == s)].sum()) for s in range(5)]
            total = sum(counts) or 1
            for shift, n in enumerate(counts):
                bar = "#" * round(BAR_WIDTH * n / total)
                lines.append(f"{kind}_{1 << shift}_bytes: {n} {100 * n / total:5.1f}% {bar}")
        return "\n".join(lines)


if __name__ == "__main__":
    SizeHistogram().main()
