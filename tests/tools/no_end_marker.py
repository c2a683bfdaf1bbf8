#!/usr/bin/env python3
"""An analysis tool that reads the trace but, on SIGUSR1, never prints the end marker: it stops
half-way through its first line of results."""
import os
import signal
import sys
import time


def half_a_report(signum, frame):
    print("-----begin analysis output-----\nrecords:", end="", flush=True)
    time.sleep(3600)


signal.signal(signal.SIGUSR1, half_a_report)
print("Ready to analyze", flush=True)
fd = os.open(sys.argv[1], os.O_RDONLY)
while os.read(fd, 1 << 20):
    pass
time.sleep(3600)
