#!/usr/bin/env python3
"""count, written with memtracer.analysis_api: the same report as the C `count` tool (CPL,
load/store, kind, vCPU, and the accesses inside a range=0xSTART-0xEND info word), in NumPy."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from memtracer.analysis_api import AnalysisTool  # noqa: E402

import numpy as np  # noqa: E402

from memtracer.record import CPL_SHIFT, SIGN_EXTEND_BIT, SIZE_SHIFT_MASK, STORE_BIT, BIG_ENDIAN_BIT  # noqa: E402


def kind_lines(prefix, by_info):
    kinds = by_info.reshape(4, 64).sum(axis=0)   # CPL folded
    lines = []
    for k in np.flatnonzero(kinds):
        lines.append(f"{prefix}{'store' if k & STORE_BIT else 'load'}_{1 << (k & SIZE_SHIFT_MASK)}_"
                     f"{'signed' if k & SIGN_EXTEND_BIT else 'unsigned'}{'_big_endian' if k & BIG_ENDIAN_BIT else ''}"
                     f": {kinds[k]}")
    return lines


class Count(AnalysisTool):
    name = "count.py"
    options = {"range": None}

    def start(self):
        self.by_info = np.zeros(256, dtype=np.int64)
        self.by_vcpu = np.zeros(65536, dtype=np.int64)
        self.range_by_info = np.zeros(256, dtype=np.int64)
        self.range = None
        if self.option["range"]:
            start, end = self.option["range"].split("-")
            self.range = (int(start, 16), int(end, 16))

    def process(self, records):
        info = records["info"]
        self.by_info += np.bincount(info, minlength=256)
        vcpus = records["vcpu"]
        if vcpus.any():
            self.by_vcpu += np.bincount(vcpus, minlength=65536)
        else:
            self.by_vcpu[0] += len(records)
        if self.range:
            addresses = records["virt_addr"]
            inside = (addresses >= self.range[0]) & (addresses < self.range[1])
            self.range_by_info += np.bincount(info[inside], minlength=256)

    def report(self):
        total = int(self.by_info.sum())
        info = np.arange(256)
        stores = int(self.by_info[(info & STORE_BIT) != 0].sum())
        lines = [f"num_of_records: {total}", f"loads: {total - stores}", f"stores: {stores}"]
        lines += [f"cpl_{c}: {int(self.by_info[(info >> CPL_SHIFT) == c].sum())}" for c in range(4)]
        lines += kind_lines("", self.by_info)
        lines += [f"vcpu_{v}: {self.by_vcpu[v]}" for v in np.flatnonzero(self.by_vcpu)]
        if self.range:
            lines.append(f"range_records: {int(self.range_by_info.sum())}")
            lines += kind_lines("range_", self.range_by_info)
        return "\n".join(lines)


if __name__ == "__main__":
    Count().main()
