#!/usr/bin/env python3
"""Set up this machine for memory_tracer and build every part; `--run_tests` then runs the tests.

It starts on the standard library alone, with any python3: it installs the Debian packages (as
root), makes the project's own Python environment (build/venv) with the pinned packages of
setup.cfg, and hands over to that environment's interpreter for the rest."""
import argparse
import os
import sys

# `python3 -I` leaves the script's folder out of sys.path; the memtracer package is there.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from memtracer import environment  # noqa: E402  (standard library only, as is memtracer.build.bootstrap)
from memtracer.build import bootstrap  # noqa: E402
from memtracer.errors import MemoryTracerError  # noqa: E402
from memtracer.layout import MAX_SMP  # noqa: E402


def parse_arguments():
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
    return args


def build(args):
    if not os.environ.pop(environment.REEXEC_MARK, None):   # else the first process just did it
        bootstrap.install_debian_packages()
        environment.make_project_environment(bootstrap.step, bootstrap.run)
    if not environment.in_project_environment():
        environment.reexecute_in_project_environment(os.path.abspath(__file__))
    from memtracer.build.machine_setup import build_everything, run_tests
    build_everything(args.remake_guest_image, args.smp)
    return run_tests(args.pytest_args) if args.run_tests else 0


def main():
    args = parse_arguments()
    try:
        return build(args)
    except MemoryTracerError as exc:
        print(f"build.py: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("build.py: interrupted.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
