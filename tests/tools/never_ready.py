#!/usr/bin/env python3
"""An analysis tool that never prints `Ready to analyze` (memory_tracer must give up, not hang)."""
import time

time.sleep(3600)
