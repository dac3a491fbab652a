"""Time the Slurm converge: site.yml cold (fresh nodes from the baked image) and again
(idempotent), on a 2-compute and an 8-compute local cluster, with ansible.posix.profile_tasks
enabled to name the slowest tasks. Writes the `## Slurm converge` section of docs/benchmarks.md.

Run as root from the repository: `.venv/bin/python -m bench.slurm_converge [--sizes 2 8]`.
It starts and removes its own clusters (sl2, sl8); the node image is baked first if it is out
of date, and that bake is not part of the figures. The workloads play (its own benchmark) is
skipped. MLCLUSTER_BASE_IMAGE (as for the molecule scenario) names another base image.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

from bench.report import machine, write_section
from mlcluster import local
from mlcluster.runner import EXIT_OK, run_playbook

PROFILE_ENV = {
    "ANSIBLE_CALLBACKS_ENABLED": "ansible.posix.profile_tasks",
    "PROFILE_TASKS_TASK_OUTPUT_LIMIT": "8",
    "ANSIBLE_SKIP_TAGS": "workloads",
}
# profile_tasks' recap lines: "slurm : Install the Slurm packages ------------ 3.65s"
_RECAP_LINE = re.compile(r"^(?P<task>.+?) -+ (?P<seconds>\d+\.\d+)s$")


def slowest_tasks(artifact_dir: str) -> list[tuple[str, float]]:
    """The TASKS RECAP that profile_tasks printed at the end of the run."""
    # RunResult.artifact_dir is ansible-runner's artifacts/<ident> directory itself.
    stdout = next(Path(artifact_dir).rglob("stdout"), None)
    if stdout is None:
        return []
    text = stdout.read_text(errors="replace")
    recap = text.rsplit("TASKS RECAP", 1)[-1] if "TASKS RECAP" in text else ""
    rows = []
    for line in recap.splitlines():
        match = _RECAP_LINE.match(line.strip())
        if match:
            rows.append((match["task"].strip(), float(match["seconds"])))
    return rows


def converge(inventory: Path, label: str) -> dict:
    result = run_playbook("site.yml", inventory, extra_env=PROFILE_ENV)
    if result.exit_code != EXIT_OK:
        sys.exit(f"{label}: site.yml failed: {'; '.join(result.errors)[:2000]}")
    return {
        "seconds": result.elapsed_s,
        "changed": sum(h["changed"] for h in result.hosts.values()),
        "slowest": slowest_tasks(result.artifact_dir),
    }


def bench(computes: int) -> dict:
    name = f"sl{computes}"
    local.down(name=name, say=lambda _m: None)
    start = time.monotonic()
    base_image = os.environ.get("MLCLUSTER_BASE_IMAGE") or None
    local.up(name=name, computes=computes, base_image=base_image, say=lambda _m: None)
    up_s = time.monotonic() - start
    inventory = local.inventory_dir(name)
    try:
        cold = converge(inventory, f"{name} cold")
        again = converge(inventory, f"{name} idempotent")
    finally:
        local.down(name=name, say=lambda _m: None)
    return {"computes": computes, "up_s": up_s, "cold": cold, "again": again}


def render(results: list[dict], load: str) -> str:
    lines = [
        f"Measured on {machine()}; load average at the start {load} (other work shares the "
        "2 cores, so the figures are upper bounds).",
        "",
        "`site.yml` (preflight, common, munge, slurm; the workloads play skipped) on a fresh local "
        "cluster from the baked node image, then again. The image bake is not included.",
        "",
        "| compute nodes | local up | cold converge | idempotent converge | changed (2nd run) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in results:
        lines.append(
            f"| {r['computes']} | {r['up_s']:.0f} s | {r['cold']['seconds']:.0f} s | "
            f"{r['again']['seconds']:.0f} s | {r['again']['changed']} |"
        )
    for r in results:
        for phase in ("cold", "again"):
            title = "cold" if phase == "cold" else "idempotent"
            lines += [
                "",
                f"Slowest tasks, {r['computes']} compute nodes, {title} "
                "(ansible.posix.profile_tasks):",
                "",
            ]
            lines += [f"- {task}: {seconds:.1f} s" for task, seconds in r[phase]["slowest"][:8]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2, 8])
    args = parser.parse_args(argv)
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    results = [bench(n) for n in args.sizes]
    for r in results:
        if r["again"]["changed"]:
            print(f"warning: {r['computes']} compute nodes: the second run changed something")
    body = render(results, load)
    write_section("Slurm converge", body)
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
