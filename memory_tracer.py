#!/usr/bin/env python3
"""Trace every memory access of a workload run by QEMU; see `memory_tracer.py --help`."""
import sys

from memtracer.environment import use_project_environment

use_project_environment()   # any python3 runs it inside build/venv

from memtracer.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
