#!/usr/bin/env python3
"""An analysis tool that reports the workload info words it was given (argv[2:])."""
import os
import signal
import sys


def report(signum, frame):
    print("-----begin analysis output-----")
    print(" ".join(sys.argv[2:]))
    print("-----end analysis output-----", flush=True)
    os._exit(0)


signal.signal(signal.SIGUSR1, report)
print("Ready to analyze", flush=True)
fd = os.open(sys.argv[1], os.O_RDONLY)
while os.read(fd, 1 << 20):
    pass
signal.pause()
