"""A campaign's runs on Dask distributed: a LocalCluster of this machine by default, or any running
Dask cluster whose workers have the project built. Each run is one task; the client writes each
row into the results table as its run ends and shows progress.

A worker that dies mid-run costs that run one retry on another worker (the scheduler's
allowed-failures is 1 on the LocalCluster; a cluster of your own keeps its own setting); a run
whose workers die twice is recorded as failed, and the campaign goes on."""
import logging
import os
import shutil
import signal
import tempfile
import time
from contextlib import contextmanager

import dask
from distributed import Client, KilledWorker, LocalCluster
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .execute import FAILED, FINISHED, run_one
from .results import ResultsTable

WORKER_DEATHS_RETRIED = 1
POLL_SECONDS = 0.5


def default_worker_count():
    """As many workers as the machine runs at once: a run keeps about one core busy (QEMU's vCPU
    thread), and its analysis tool shares it."""
    return len(os.sched_getaffinity(0))


@contextmanager
def dask_client(scheduler=None, workers=None):
    """A client of the cluster at `scheduler`, or of a LocalCluster made (and removed) here."""
    if scheduler is not None:
        with Client(scheduler, timeout="30s") as client:
            yield client
        return
    scratch = tempfile.mkdtemp(prefix="memory_tracer-campaign-")
    try:
        with dask.config.set({"distributed.scheduler.allowed-failures": WORKER_DEATHS_RETRIED,
                              "temporary-directory": scratch}):
            with _local_cluster(workers or default_worker_count(), scratch) as cluster, Client(cluster) as client:
                yield client
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _local_cluster(workers, scratch):
    """The workers start with Ctrl-C ignored: it reaches every process of the terminal's group, and
    ending the workers is the campaign's job (their tracebacks would only bury its one line)."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                            local_directory=scratch, silence_logs=logging.CRITICAL)
    finally:
        signal.signal(signal.SIGINT, previous)


def run_campaign(campaign, results_path, scheduler=None, workers=None, console=None):
    """Runs what the results table does not hold as finished; returns (finished, failed, skipped)."""
    console = console or Console(stderr=True)
    results = ResultsTable.load(results_path)
    todo = [run for run in campaign.runs if not results.finished(run.key)]
    skipped = len(campaign.runs) - len(todo)
    if skipped:
        console.print(f"{skipped} of {len(campaign.runs)} runs already finished in {results_path}: skipped.")
    counts = {FINISHED: 0, FAILED: 0}
    if not todo:
        return counts[FINISHED], counts[FAILED], skipped
    with dask_client(scheduler, workers) as client, _progress(console) as progress:
        bar = progress.add_task("runs", total=len(todo), state="starting")
        pending = {client.submit(run_one, run, key=f"memtracer-run-{run.key}-{time.time_ns()}", pure=False): run
                   for run in todo}
        while pending:
            done = [future for future in pending if future.done()]
            if not done:
                time.sleep(POLL_SECONDS)
            for future in done:
                run = pending.pop(future)
                row = _row_of(future, run)
                results.put(row)
                results.save()
                counts[row["status"]] += 1
                if row["status"] == FAILED:
                    progress.console.print(f"failed: {_describe(run)}: {row['error']}")
                progress.advance(bar)
            assigned = sum(len(tasks) for tasks in client.processing().values())
            running = min(assigned, sum(client.nthreads().values()))
            progress.update(bar, state=f"{counts[FINISHED]} finished, {counts[FAILED]} failed, {running} running")
    return counts[FINISHED], counts[FAILED], skipped


def _row_of(future, run):
    """The run's row; a run that never returned one (its workers died) is a failed row."""
    try:
        return future.result()
    except KilledWorker:
        error = (f"the workers running it died {WORKER_DEATHS_RETRIED + 1} times (killed, or out of memory); "
                 "it was not retried again")
    except Exception as exc:      # the task itself failed: a bug of ours, said in one line
        error = f"the run failed on its worker: {exc!r}"
    return {**run.parameters(), "status": FAILED, "error": error}


def _describe(run):
    options = " ".join(f"{name}={value}" for name, value in run.options)
    return f"{run.workload.name} {options} #{run.repetition}".replace("  ", " ")


def _progress(console):
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[state]}"), TimeElapsedColumn(), console=console)
