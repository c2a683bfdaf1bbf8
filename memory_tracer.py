#!/usr/bin/env python3
"""Trace every memory access of a workload run by QEMU; see `memory_tracer.py --help`."""
import sys

from memtracer.cli import main

if __name__ == "__main__":
    sys.exit(main())
