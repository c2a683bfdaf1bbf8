"""Trace campaigns: many workloads under many configurations, run on Dask distributed, with one
row per run in a Parquet table (`python3 -m memtracer.campaign run CAMPAIGN.toml --results
OUT.parquet`). plan.py reads the campaign file, execute.py does one run on a worker, engine.py
drives the cluster, results.py keeps the table."""
