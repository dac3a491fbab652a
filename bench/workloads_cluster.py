"""CPU throughput of each test case on the local cluster, on 1 and on 2 compute nodes.

Run as root after `mlcluster local up && mlcluster deploy`:
`.venv/bin/python -m bench.workloads_cluster [-i inventory/local]`. Each run goes through
`mlcluster run` (sbatch, one rank per node, gloo over the cluster network) and its metrics
summary; the figures go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.report import machine, write_section

CASES = {
    "ddp": ["--steps", "60", "--warmup-steps", "10"],
    "fsdp": ["--config", "tiny", "--steps", "30", "--seq-len", "128", "--warmup-steps", "5"],
    "jax": ["--steps", "60", "--warmup-steps", "10"],
}


def run(case: str, nodes: int, inventory: str, args: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "r.json"
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "mlcluster.cli",
                "run",
                case,
                "-i",
                inventory,
                "--nodes",
                str(nodes),
                "--report",
                str(report),
                "--",
                *args,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            sys.exit(f"{case} on {nodes} node(s) failed:\n{proc.stdout[-3000:]}")
        return json.loads(report.read_text())["summary"]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("-i", "--inventory", default="inventory/local")
    opts = parser.parse_args()
    rows = []
    for case, args in CASES.items():
        per_node = {n: run(case, n, opts.inventory, args) for n in (1, 2)}
        one, two = per_node[1], per_node[2]
        tokens = (
            f"{one['tokens_per_s']:,.0f} / {two['tokens_per_s']:,.0f}"
            if one.get("tokens_per_s")
            else "n/a"
        )
        rows.append(
            f"| {case} | {' '.join(args)} | {one['samples_per_s']:,.1f} / "
            f"{two['samples_per_s']:,.1f} | {tokens} | "
            f"{one['tflops_per_device']:.4f} / {two['tflops_per_device']:.4f} | "
            f"{one['final_loss']:.4f} / {two['final_loss']:.4f} |"
        )
    body = (
        f"`.venv/bin/python -m bench.workloads_cluster` on {machine()}. Each case through "
        "`mlcluster run` (sbatch, one rank per compute node, `OMP_NUM_THREADS=1`, gloo over the "
        "podman bridge); every node is a container on the same 2-core host, so two nodes share "
        "the cores one node had: this measures that the path works and what it costs, not "
        "scaling. Per-rank batch fixed (weak scaling): the global batch doubles on 2 nodes. "
        "MFU is unknown on CPU (no peak in the table).\n\n"
        "| case | arguments | samples/s, 1 / 2 nodes | tokens/s, 1 / 2 nodes | "
        "TFLOP/s per rank, 1 / 2 | final loss, 1 / 2 |\n"
        "| --- | --- | --- | --- | --- | --- |\n" + "\n".join(rows)
    )
    write_section("Workloads on the local cluster (CPU)", body)
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
