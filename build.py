#!/usr/bin/env python3
"""Set up this machine for memory_tracer and build every part; `--run_tests` then runs the tests."""
import argparse
import sys

from memtracer.errors import MemoryTracerError
from memtracer.layout import MAX_SMP
from memtracer.machine_setup import build_everything, run_tests


def main():
    parser = argparse.ArgumentParser(prog="build.py", description=__doc__)
    parser.add_argument("--run_tests", action="store_true", help="Run the test suite after building.")
    parser.add_argument("--remake_guest_image", action="store_true",
                        help="Make the built-in guest image and its snapshot again, even if up to date.")
    parser.add_argument("--smp", type=int, nargs="+", default=[], metavar="N",
                        help="Also make the built-in image's snapshot for N vCPUs (memory_tracer --smp N "
                             "makes it on demand otherwise).")
    parser.add_argument("pytest_args", nargs="*", help="Extra arguments for pytest (after --).")
    args = parser.parse_args()
    for smp in args.smp:
        if not 1 <= smp <= MAX_SMP:
            parser.error(f"smp must be in range [1, {MAX_SMP}], but {smp} isn't.")
    try:
        build_everything(args.remake_guest_image, args.smp)
    except MemoryTracerError as exc:
        print(f"build.py: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("build.py: interrupted.", file=sys.stderr)
        return 130
    return run_tests(args.pytest_args) if args.run_tests else 0


if __name__ == "__main__":
    sys.exit(main())
