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
# Not signal.pause(): a SIGUSR1 that came after the interpreter's last look for signals and before
# pause() began would leave it waiting for another, forever. Blocked, it waits for sigwait(); and
# one that came before the block is handled as the block returns.
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
signal.sigwait({signal.SIGUSR1})
report(signal.SIGUSR1, None)
