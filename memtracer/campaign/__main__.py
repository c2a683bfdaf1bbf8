"""python3 -m memtracer.campaign: run a campaign, or query its results (or a trace's Parquet) with SQL."""
import argparse
import sys

from ..environment import use_project_environment

use_project_environment()   # any python3 may start it, like memory_tracer.py

from ..errors import BadInputError, Interrupted  # noqa: E402
from ..interrupts import ending_signals_unwind  # noqa: E402

PROGRAM = "memtracer.campaign"
EXIT_ERROR, EXIT_INTERRUPTED = 1, 130


def build_parser():
    parser = argparse.ArgumentParser(prog=f"python3 -m {PROGRAM}",
                                     description="Trace campaigns on Dask distributed, results as Parquet.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a campaign (the runs its results table does not hold as finished)")
    run.add_argument("campaign", help="the campaign file (TOML; see examples/campaign.toml)")
    run.add_argument("--results", required=True, metavar="OUT.parquet",
                     help="the results table: one row per run; a second run of the campaign skips what it holds "
                          "as finished and retries what failed")
    where = run.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="ADDRESS",
                       help="a running Dask scheduler (e.g. tcp://10.0.0.1:8786) whose workers have the project "
                            "built at the same paths; default: a LocalCluster on this machine")
    where.add_argument("--workers", type=int, metavar="N",
                       help="the LocalCluster's workers (default: one per CPU this process may use)")
    query = commands.add_parser("query", help="run one SQL query (DuckDB) over Parquet files and print the result")
    query.add_argument("sql", help="e.g. \"SELECT workload, count_num_of_records FROM 'results.parquet'\"")
    return parser


def run_command(args):
    from .engine import run_campaign
    from .plan import read_campaign
    if args.workers is not None and args.workers < 1:
        raise BadInputError(f"--workers must be at least 1, but {args.workers} isn't.")
    campaign = read_campaign(args.campaign)
    finished, failed, skipped = run_campaign(campaign, args.results, args.scheduler, args.workers)
    summary = (f"{PROGRAM}: {len(campaign.runs)} runs: {finished} finished now, {skipped} finished before, "
               f"{failed} failed; results in {args.results}")
    print(summary + (" (run the campaign again to retry the failed ones)." if failed else "."), file=sys.stderr)
    return EXIT_ERROR if failed else 0


def query_command(args):
    import duckdb
    try:
        result = duckdb.sql(args.sql)
    except duckdb.Error as exc:
        raise BadInputError(f"the query failed: {str(exc).splitlines()[0]}") from None
    if result is not None:
        result.show(max_width=200)
    return 0


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        with ending_signals_unwind(PROGRAM):
            return {"run": run_command, "query": query_command}[args.command](args)
    except BadInputError as exc:
        print(f"{PROGRAM}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt as exc:
        why = str(exc).rstrip(".") if isinstance(exc, Interrupted) else f"{PROGRAM}: interrupted"
        print(f"{why}; the runs that finished are in the results table, the others were stopped.",
              file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
