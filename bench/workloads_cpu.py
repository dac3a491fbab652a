#!/usr/bin/env python3
"""CPU throughput of the workloads on one node: each case under torchrun (gloo) with N ranks.

    python bench/workloads_cpu.py --nproc 4 --threads-per-rank 2 > cpu-bench.jsonl

Prints one JSON line per run, ``{"event": "bench", "case", "command", "wall_s", "summary"}``
where ``summary`` is the case's own summary line (samples/s, tokens/s, TFLOP/s per rank, peak
memory; for allreduce the bus bandwidth). Needs mlcluster-workloads installed (and jax for the
jax_dp case). Multi-node runs go through ``mlcluster_workloads.launch`` instead.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time

from mlcluster_workloads.cases import METRIC_EVENTS

SUMMARY_EVENTS = {summary for _, summary in METRIC_EVENTS.values()}


def case_commands(args: argparse.Namespace) -> dict[str, list[str]]:
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={args.nproc}",
    ]
    common = ["--steps", str(args.steps), "--warmup-steps", str(args.warmup_steps)]
    return {
        "ddp": [*torchrun, "-m", "mlcluster_workloads.ddp", *common, "--batch-size", "256"],
        "fsdp-tiny": [
            *torchrun,
            "-m",
            "mlcluster_workloads.fsdp",
            *common,
            "--config",
            "tiny",
            "--seq-len",
            "256",
            "--batch-size",
            "4",
        ],
        "fsdp-small": [
            *torchrun,
            "-m",
            "mlcluster_workloads.fsdp",
            *common,
            "--config",
            "small",
            "--seq-len",
            "256",
            "--batch-size",
            "1",
        ],
        "allreduce": [
            *torchrun,
            "-m",
            "mlcluster_workloads.allreduce",
            "--min-bytes",
            "1K",
            "--max-bytes",
            args.allreduce_max_bytes,
        ],
        # jax_dp runs one process per node; on one node that is a single process
        "jax_dp": [sys.executable, "-m", "mlcluster_workloads.jax_dp", *common],
    }


def run_case(name: str, command: list[str], threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - started
    record = {
        "event": "bench",
        "case": name,
        "host": socket.gethostname(),
        "command": command,
        "wall_s": wall,
        "returncode": result.returncode,
        "summary": None,
    }
    for line in result.stdout.splitlines():
        parsed = json.loads(line)
        if parsed.get("event") in SUMMARY_EVENTS:
            record["summary"] = parsed
    if result.returncode != 0:
        record["stderr_tail"] = result.stderr[-2000:]
    return record


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nproc", type=int, default=2, help="ranks per torchrun")
    parser.add_argument("--threads-per-rank", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup-steps", type=int, default=3)
    parser.add_argument("--allreduce-max-bytes", default="64M")
    parser.add_argument(
        "--cases",
        default="ddp,fsdp-tiny,fsdp-small,allreduce,jax_dp",
        help="comma-separated subset",
    )
    args = parser.parse_args()
    commands = case_commands(args)
    failed = 0
    for name in args.cases.split(","):
        if name not in commands:
            parser.error(f"unknown case {name!r}; known: {', '.join(commands)}")
        record = run_case(name, commands[name], args.threads_per_rank)
        failed += record["returncode"] != 0
        print(json.dumps(record), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
