#!/usr/bin/env python3
"""An analysis tool that stops reading for 1.2 s once it has a million records, then goes on:
a lossless trace must still arrive whole."""
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from memtracer.analysis_api import AnalysisTool  # noqa: E402

STALL_SECONDS = 1.2


class StallingCount(AnalysisTool):
    def start(self):
        self.seen = 0
        self.stalled_ms = 0

    def process(self, records):
        self.seen += len(records)
        if self.seen > 1_000_000 and not self.stalled_ms:
            started = time.monotonic()
            time.sleep(STALL_SECONDS)
            self.stalled_ms = int((time.monotonic() - started) * 1000)

    def report(self):
        return f"num_of_records: {self.seen}\nstalled_ms: {self.stalled_ms}"


StallingCount().main()
