#!/usr/bin/env python3
"""A deliberately slow analysis tool: reads the FIFO in small pieces with a pause after each,
so the tracer must wait (lossless) or drop. Counts whole records; follows the tool protocol."""
import os
import signal
import sys
import time

PIECE = 4096
PAUSE_SECONDS = 0.002


class ReportRequested(Exception):
    pass


def request_report(signum, frame):
    raise ReportRequested


def main():
    signal.signal(signal.SIGUSR1, request_report)
    received = 0
    try:
        print("Ready to analyze", flush=True)
        fd = os.open(sys.argv[1], os.O_RDONLY)
        while True:
            data = os.read(fd, PIECE)
            received += len(data)
            time.sleep(PAUSE_SECONDS)
    except ReportRequested:
        pass
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    os.set_blocking(fd, False)
    try:
        while data := os.read(fd, 1 << 20):
            received += len(data)
    except BlockingIOError:
        pass
    print("-----begin analysis output-----")
    print(f"num_of_records: {received // 16}")
    print(f"leftover_bytes: {received % 16}")
    print("-----end analysis output-----", flush=True)


if __name__ == "__main__":
    main()
