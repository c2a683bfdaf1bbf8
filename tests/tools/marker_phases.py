#!/usr/bin/env python3
"""A tool of the Python API that splits the stream at markers: prints each marker and the
records of each phase, and for extended records how many carry a physical address and a PC."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from memtracer.analysis_api import AnalysisTool  # noqa: E402

import numpy as np  # noqa: E402



class MarkerPhases(AnalysisTool):
    name = "marker_phases"
    extended = True

    def start(self):
        self.phases = [0]
        self.markers = []
        self.with_phys = self.with_pc = 0

    def process(self, records):
        self.phases[-1] += len(records)
        if "phys_addr" in records.dtype.names:
            self.with_phys += int(np.count_nonzero(records["phys_addr"]))
            self.with_pc += int(np.count_nonzero(records["pc"]))

    def marker(self, kind, number, vcpu):
        self.markers.append(f"{kind} {number} vcpu={vcpu}")
        self.phases.append(0)

    def report(self):
        lines = [f"phase_{i}: {n}" for i, n in enumerate(self.phases)]
        lines += [f"marker_{i + 1}: {m}" for i, m in enumerate(self.markers)]
        lines += [f"with_phys: {self.with_phys}", f"with_pc: {self.with_pc}"]
        return "\n".join(lines)


if __name__ == "__main__":
    MarkerPhases().main()
