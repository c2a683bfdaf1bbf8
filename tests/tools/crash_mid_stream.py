#!/usr/bin/env python3
"""An analysis tool that dies of SIGSEGV after its first million records."""
import os
import signal
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from memtracer.analysis_api import AnalysisTool  # noqa: E402


class CrashMidStream(AnalysisTool):
    def start(self):
        self.seen = 0

    def process(self, records):
        self.seen += len(records)
        if self.seen > 1_000_000:
            os.kill(os.getpid(), signal.SIGSEGV)

    def report(self):
        return f"num_of_records: {self.seen}"


CrashMidStream().main()
