"""Prometheus's cost on a deployed local cluster: its resident memory, head series, and how
long each scrape takes, per job (averaged over the last 5 minutes), and what the Slurm
exporter's commands take per scrape. Writes the `## Observability (Prometheus)` section of
docs/benchmarks.md.

Run as root from the repository, on a cluster that `mlcluster deploy` has configured:
`.venv/bin/python -m bench.observability --name NAME`. It only reads Prometheus's HTTP API.
"""

from __future__ import annotations

import argparse
import sys

from bench.report import machine, write_section
from mlcluster import status
from mlcluster.local import inventory_dir


def value(url: str, expr: str) -> float:
    result = status.query(url, expr)
    return float(result[0]["value"][1]) if result else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="the local cluster's name")
    args = parser.parse_args(argv)
    url = status.prometheus_url(inventory_dir(args.name) / "hosts.yml")
    nodes = value(url, 'count(up{job="node"})')
    rss = value(url, 'process_resident_memory_bytes{job="prometheus"}') / 2**20
    series = value(url, "prometheus_tsdb_head_series")
    interval = value(url, "prometheus_target_interval_length_seconds{quantile='0.5'}")
    rows = []
    for sample in status.query(url, "avg by (job) (avg_over_time(scrape_duration_seconds[5m]))"):
        job = sample["metric"]["job"]
        samples = value(url, f'avg(scrape_samples_scraped{{job="{job}"}})')
        rows.append((job, float(sample["value"][1]) * 1000, samples))
    slurm_cmds = value(url, "avg_over_time(slurm_scrape_duration_seconds[5m])") * 1000
    body = [
        f"`.venv/bin/python -m bench.observability --name {args.name}` on {machine()}; "
        f"{nodes:.0f} nodes scraped (node exporter on each, the Slurm exporter, Prometheus and "
        f"Alertmanager on the controller), scrape interval {interval:.0f} s (the local "
        "inventory's), every node a container on the same host.",
        "",
        f"Prometheus resident memory: {rss:.0f} MiB; head series: {series:.0f}.",
        "",
        "| job | scrape time, mean over 5 min | samples per scrape |",
        "| --- | --- | --- |",
        *(f"| {job} | {ms:.1f} ms | {n:.0f} |" for job, ms, n in sorted(rows)),
        "",
        f"The Slurm exporter's four commands (sinfo, scontrol, squeue, sdiag) per scrape: "
        f"{slurm_cmds:.0f} ms.",
    ]
    write_section("Observability (Prometheus)", "\n".join(body))
    print("\n".join(body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
