#!/usr/bin/env python3
"""What a campaign costs and gains, side by side in one run, rounds interleaved:

- the runs of a campaign (examples/campaign.toml, repeated) as plain memory_tracer.py commands
  one after the other, then as a campaign on a LocalCluster of 1 and of 2 Dask workers: runs per
  minute, the speed-up of the second worker, and Dask's overhead per run (1 worker against the
  plain commands, start and stop of the cluster included);
- a trace as Parquet (export --format parquet) against the zstd trace file of the `record` tool:
  records per second and bytes per record.

    python3 bench/campaign.py [--rounds N] [--repetitions N]

Prints a Markdown table; minimums beside medians, as this machine flips between a fast and a slow
state."""
import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from memtracer.environment import use_project_environment  # noqa: E402

use_project_environment()   # any python3 runs it inside build/venv

from memtracer.campaign.plan import read_campaign  # noqa: E402
from memtracer.layout import ANALYSIS_TOOLS_DIR, GUEST_PROGRAMS_DIR  # noqa: E402

EXAMPLE = REPO / "examples" / "campaign.toml"


def timed(command, **kwargs):
    started = time.monotonic()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO, **kwargs)
    return time.monotonic() - started


def plain_commands(campaign):
    """Each run of the campaign as the memory_tracer.py command it is."""
    return [[sys.executable, str(REPO / "memory_tracer.py"),
             *run.memory_tracer_arguments(run.analyses[0].tool, run.analyses[0].args)] for run in campaign.runs]


def campaign_command(path, results, workers):
    return [sys.executable, "-m", "memtracer.campaign", "run", str(path), "--results", str(results),
            "--workers", str(workers)]


def summary(values):
    return min(values), statistics.median(values)


def bench_campaign(folder, rounds, repetitions):
    path = folder / "campaign.toml"
    text = EXAMPLE.read_text().replace('"../', f'"{REPO}/')
    path.write_text(f"repetitions = {repetitions}\n" + text)
    campaign = read_campaign(path)
    commands = plain_commands(campaign)
    times = {"plain": [], "1 worker": [], "2 workers": []}
    for round_number in range(rounds):
        times["plain"].append(sum(timed(command) for command in commands))
        for workers in (1, 2):
            results = folder / f"results-{round_number}-{workers}.parquet"
            times[f"{workers} worker{'s' if workers > 1 else ''}"].append(
                timed(campaign_command(path, results, workers)))
        print(f"round {round_number + 1}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in times.items()),
              file=sys.stderr)
    runs = len(commands)
    print(f"\n{runs} runs (examples/campaign.toml x {repetitions}: user mode and full system), {rounds} rounds\n")
    print("| | whole campaign s (min / median) | runs per minute (median) |")
    print("|---|---|---|")
    for name, values in times.items():
        low, middle = summary(values)
        print(f"| {name} | {low:.1f} / {middle:.1f} | {60 * runs / middle:.0f} |")
    one, two, plain = (statistics.median(times[k]) for k in ("1 worker", "2 workers", "plain"))
    overheads = [(c - p) / runs for c, p in zip(times["1 worker"], times["plain"])]
    print(f"\nspeed-up of the second worker: {one / two:.2f}x; Dask's overhead per run (1 worker against the plain "
          f"commands, cluster start and stop included): min {min(overheads) * 1000:.0f} ms, median "
          f"{statistics.median(overheads) * 1000:.0f} ms")


def bench_parquet(folder, rounds):
    trace = folder / "trace.gmbe"
    subprocess.run([sys.executable, str(REPO / "memory_tracer.py"), "--user_mode", "--workload_path_on_host",
                    str(GUEST_PROGRAMS_DIR / "mem_loop"), "--workload_args", "65536 2", "--analysis_tool_path",
                    str(ANALYSIS_TOOLS_DIR / "record"), "--analysis_tool_args", f"--output {trace}"],
                   check=True, stdout=subprocess.DEVNULL, cwd=REPO)
    records = int(subprocess.run([ANALYSIS_TOOLS_DIR / "count", trace], check=True, capture_output=True,
                                 text=True).stdout.split("num_of_records: ")[1].split()[0])
    table = folder / "trace.parquet"
    seconds = [timed([ANALYSIS_TOOLS_DIR / "export", trace, "--format", "parquet", "--output", table])
               for _ in range(rounds)]
    low, middle = summary(seconds)
    print(f"\ntrace as Parquet: {records:,} records (user-mode mem_loop 65536 2), {rounds} rounds")
    print("| | bytes | bytes per record | M records/s (best / median) |")
    print("|---|---|---|---|")
    print(f"| zstd trace file (`record`) | {trace.stat().st_size:,} | {trace.stat().st_size / records:.2f} | - |")
    print(f"| Parquet (`export --format parquet`) | {table.stat().st_size:,} | {table.stat().st_size / records:.2f} | "
          f"{records / low / 1e6:.1f} / {records / middle / 1e6:.1f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repetitions", type=int, default=3, help="of examples/campaign.toml's 8 runs")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="memory_tracer-bench-"))
    try:
        bench_campaign(folder, args.rounds, args.repetitions)
        bench_parquet(folder, args.rounds)
    finally:
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()
