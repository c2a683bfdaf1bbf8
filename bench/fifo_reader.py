#!/usr/bin/env python3
"""A tool that knows only the original protocol (as a user's own tool may): it reads the trace
FIFO in 1 MiB reads into one buffer, as dd does (the benchmark's raw pipe is dd to dd), and counts
the bytes; it never looks for the shared-memory ring. The benchmark measures the FIFO path with it."""
import os
import signal
import sys
import time

READ_BYTES = 1 << 20


class ReportRequested(Exception):
    pass


def request_report(signum, frame):
    raise ReportRequested


def main():
    signal.signal(signal.SIGUSR1, request_report)
    received = 0
    buffer = [bytearray(READ_BYTES)]
    try:
        print("Ready to analyze", flush=True)
        fd = os.open(sys.argv[1], os.O_RDONLY)
        while n := os.readv(fd, buffer):
            received += n
        while True:             # the FIFO ended before SIGUSR1: wait for it (its handler raises)
            time.sleep(1)
    except ReportRequested:
        pass
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    os.set_blocking(fd, False)  # SIGUSR1 comes once every record is in the FIFO: take what is left
    try:
        while n := os.readv(fd, buffer):
            received += n
    except BlockingIOError:
        pass
    print("-----begin analysis output-----")
    print(f"num_of_records: {received // 16}")
    print("-----end analysis output-----", flush=True)


if __name__ == "__main__":
    main()
