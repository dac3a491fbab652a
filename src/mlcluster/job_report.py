"""What a job printed, read and shown: the metrics lines of a test case's output (one JSON object
per step, a summary at the end, as ``mlcluster_workloads.cases.METRIC_EVENTS`` names them) and
the summary table ``mlcluster run`` prints, for a Slurm job and an EKS PyTorchJob alike."""

from __future__ import annotations

import json

from mlcluster_workloads import cases
from rich.table import Table
from rich.text import Text

from .display import printable

STEP_EVENTS = {step for step, _ in cases.METRIC_EVENTS.values()}
SUMMARY_EVENTS = {summary for _, summary in cases.METRIC_EVENTS.values()}


def parse_metrics(output: str) -> tuple[list[dict], dict | None]:
    steps, summary = [], None
    for line in output.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("event") in STEP_EVENTS:
            steps.append(record)
        elif record.get("event") in SUMMARY_EVENTS:
            summary = record
    return steps, summary


def summary_table(
    case: str, job_id: str, state: str, steps: list[dict], summary: dict | None
) -> Table:
    # Text, not markup: the values come from the job's output.
    table = Table(title=Text(printable(f"{case} (job {job_id}): {state}")), title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    summary = summary or {}

    def fmt(value, spec=",.1f"):
        if value is None:
            return "unknown"
        return format(value, spec) if isinstance(value, int | float) else str(value)

    if summary.get("event") == cases.METRIC_EVENTS["bandwidth"][1]:
        world = steps[0].get("world_size") if steps else None
        for name, value in (
            ("ranks", fmt(world, "d")),
            ("source", fmt(summary.get("source"))),
            ("sizes", fmt(summary.get("sizes"), "d")),
            ("avg busbw (GB/s)", fmt(summary.get("avg_busbw_gbps"), ".3f")),
            ("max busbw (GB/s)", fmt(summary.get("max_busbw_gbps"), ".3f")),
            ("at size (bytes)", fmt(summary.get("max_busbw_size_bytes"), ",d")),
            ("wrong elements", fmt(summary.get("wrong"), "d")),
        ):
            table.add_row(Text(name), Text(printable(value)))
        for row in steps:
            table.add_row(
                Text(f"  {row['size_bytes']:,} B"),
                Text(f"{row['time_us']:,.1f} us  busbw {row['busbw_gbps']:.3f} GB/s"),
            )
        return table

    rows = [
        ("world size", fmt(summary.get("world_size"), "d")),
        ("steps", fmt(len(steps), "d")),
        ("first loss", fmt(summary.get("first_loss"), ".4f")),
        ("final loss", fmt(summary.get("final_loss"), ".4f")),
        ("samples/s", fmt(summary.get("samples_per_s"))),
        (
            "tokens/s",
            fmt(summary.get("tokens_per_s"))
            if summary.get("tokens_per_s") is not None
            else "n/a (not a token model)",
        ),
        ("TFLOP/s per device", fmt(summary.get("tflops_per_device"), ".4f")),
        (
            "MFU",
            fmt(summary.get("mfu"), ".1%")
            if summary.get("mfu") is not None
            else "unknown (no peak for this device)",
        ),
        ("step time (s)", fmt(summary.get("step_time_s"), ".3f")),
    ]
    for name, value in rows:
        table.add_row(Text(name), Text(printable(value)))
    return table
