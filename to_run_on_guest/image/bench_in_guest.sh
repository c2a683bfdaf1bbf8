#!/bin/sh
# A benchmark workload in the built-in guest (memory_tracer's protocol): makes MiB of input
# outside the trace window, then runs the rest of its arguments on it (stdin) inside the window.
# Usage: bench_in_guest.sh MiB PROGRAM [ARGS...]
mib=$1
shift
/usr/local/bin/make_text "$mib" > /tmp/input.txt
echo "-----begin workload info-----"
echo "-----end workload info-----"
echo "Ready to trace. Press enter to continue"
read -r _
"$@" < /tmp/input.txt > /dev/null
echo "Stop tracing"
