#!/usr/bin/env python3
"""An analysis tool that reads its first MiB, closes the FIFO, and stays alive (the rest of the
trace has nowhere to go); it still answers SIGUSR1. With `never` as an info word it reads nothing."""
import os
import signal
import sys
import time


def report(signum, frame):
    print("-----begin analysis output-----\nread: a little\n-----end analysis output-----", flush=True)
    sys.exit(0)


signal.signal(signal.SIGUSR1, report)
print("Ready to analyze", flush=True)
fd = os.open(sys.argv[1], os.O_RDONLY)
if "never" not in sys.argv[2:]:
    taken = 0
    while taken < 1 << 20:
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            break
        taken += len(chunk)
    os.close(fd)
while True:
    time.sleep(1)
