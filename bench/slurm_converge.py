"""Time the Slurm converge against a yardstick, and its growth with the number of nodes.

In one run, on fresh 3-node local clusters (controller + 2 compute nodes) from the baked node
image, with the project's Ansible settings and ansible.posix.profile_tasks enabled:

- the yardstick (bench/yardstick/site.yml: the minimal MUNGE + slurmctld/slurmd + cgroups
  configuration a widely used minimal Slurm role applies; not part of the product) cold, then
  idempotent;
- mlcluster's site.yml (everything but the workloads play, which has its own benchmark) cold,
  then idempotent, then idempotent with `--tags munge,slurm`;

and reports the ratios mlcluster / yardstick (the machines are shared and noisy: each
idempotent figure is the best of --repeat runs). With --scale, the idempotent site.yml on
larger clusters (8 and 16 compute nodes by default) and the growth between them.
Writes the `## Slurm converge` (and `## Slurm converge at scale`) sections of docs/benchmarks.md.

Run as root from the repository: `.venv/bin/python -m bench.slurm_converge [--scale 8 16]`.
It starts and removes its own clusters (scy, scm, sl<N>); the node image is baked first if it
is out of date, and that bake is not part of the figures.
"""

from __future__ import annotations

import argparse
import json
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
    "PROFILE_TASKS_TASK_OUTPUT_LIMIT": "10",
    "ANSIBLE_SKIP_TAGS": "workloads",
}
YARDSTICK = "bench/yardstick/site.yml"
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


def cpu_times() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    fields = [float(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def converge(playbook: str, inventory: Path, label: str, tags: str | None = None) -> dict:
    busy0, total0 = cpu_times()
    result = run_playbook(playbook, inventory, tags=tags, extra_env=PROFILE_ENV)
    busy1, total1 = cpu_times()
    if result.exit_code != EXIT_OK:
        sys.exit(f"{label}: {playbook} failed: {'; '.join(result.errors)[:2000]}")
    return {
        "seconds": result.elapsed_s,
        "changed": sum(h["changed"] for h in result.hosts.values()),
        # Tasks each host ran or skipped (Ansible's ok counts the changed ones too).
        "host_tasks": sum(h["ok"] + h["skipped"] + h["failures"] for h in result.hosts.values()),
        "hosts": len(result.hosts),
        # The share of the machine's CPU time that was busy during the run (controller and
        # nodes share the cores here): near 1.0 the run is bound by the CPU.
        "cpu_busy": (busy1 - busy0) / max(total1 - total0, 1.0),
        "slowest": slowest_tasks(result.artifact_dir),
    }


def best(runs: list[dict]) -> dict:
    """The fastest of repeated idempotent runs, with the most changes any of them made."""
    fastest = min(runs, key=lambda r: r["seconds"])
    return {
        **fastest,
        "changed": max(r["changed"] for r in runs),
        "all": [r["seconds"] for r in runs],
    }


def fresh_cluster(name: str, computes: int) -> Path:
    local.down(name=name, say=lambda _m: None)
    base_image = os.environ.get("MLCLUSTER_BASE_IMAGE") or None
    local.up(name=name, computes=computes, base_image=base_image, say=lambda _m: None)
    return local.inventory_dir(name)


def compare(repeat: int) -> dict:
    out: dict = {}
    inventory = fresh_cluster("scy", 2)
    try:
        out["yardstick_cold"] = converge(YARDSTICK, inventory, "yardstick cold")
        out["yardstick_again"] = best(
            [converge(YARDSTICK, inventory, "yardstick idempotent") for _ in range(repeat)]
        )
    finally:
        local.down(name="scy", say=lambda _m: None)
    inventory = fresh_cluster("scm", 2)
    try:
        out["cold"] = converge("site.yml", inventory, "site.yml cold")
        out["again"] = best(
            [converge("site.yml", inventory, "site.yml idempotent") for _ in range(repeat)]
        )
        out["slurm_again"] = best(
            [
                converge("site.yml", inventory, "munge,slurm idempotent", tags="munge,slurm")
                for _ in range(repeat)
            ]
        )
    finally:
        local.down(name="scm", say=lambda _m: None)
    return out


def scale(computes: int, repeat: int, observability: bool = False) -> dict:
    name = f"sl{computes}"
    inventory = fresh_cluster(name, computes)
    try:
        cold = converge("site.yml", inventory, f"{name} cold")
        again = best([converge("site.yml", inventory, f"{name} idempotent") for _ in range(repeat)])
        if observability:
            # The deployed cluster's Prometheus, as bench.observability reads it (its section).
            from bench import observability as obs

            obs.main(["--name", name])
    finally:
        local.down(name=name, say=lambda _m: None)
    return {"computes": computes, "cold": cold, "again": again}


def _slowest(title: str, rows: list[tuple[str, float]]) -> list[str]:
    return ["", f"Ten slowest tasks, {title} (ansible.posix.profile_tasks):", ""] + [
        f"- {task}: {seconds:.1f} s" for task, seconds in rows[:10]
    ]


def render_compare(r: dict, load: str) -> str:
    y_cold, y_again = r["yardstick_cold"]["seconds"], r["yardstick_again"]["seconds"]
    rows = [
        ("yardstick, cold", r["yardstick_cold"], None),
        ("yardstick, idempotent", r["yardstick_again"], None),
        ("mlcluster site.yml, cold (with accounting)", r["cold"], ("cold", y_cold, 1.5)),
        ("mlcluster site.yml, idempotent", r["again"], ("idempotent", y_again, 1.0)),
        (
            "mlcluster `--tags munge,slurm`, idempotent",
            r["slurm_again"],
            ("idempotent", y_again, 0.7),
        ),
    ]
    lines = [
        f"Measured on {machine()}; load average at the start {load} (other work shares the "
        "2 cores). Each idempotent figure is the best of "
        f"{len(r['again']['all'])} runs (all runs in brackets).",
        "",
        "Fresh 3-node local clusters (controller + 2 compute nodes) from the baked node image, "
        "the project's ansible.cfg (pipelining, ControlPersist, forks 16). The yardstick is "
        "`bench/yardstick/site.yml`: MUNGE, slurmctld/slurmd and cgroups, nothing else (no "
        "accounting, health check, validation before replacing a file, observability or "
        "accelerator layer). mlcluster's site.yml runs every play but the workloads one "
        "(its own benchmark).",
        "",
        "| run | seconds | changed | host-tasks | CPU busy | ratio to the yardstick | target |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for label, run, target in rows:
        runs = run.get("all")
        seconds = f"{run['seconds']:.1f}" + (
            f" ({', '.join(f'{s:.1f}' for s in runs)})" if runs and len(runs) > 1 else ""
        )
        if target:
            kind, base, limit = target
            ratio = run["seconds"] / base
            verdict = "met" if ratio <= limit else "not met"
            lines.append(
                f"| {label} | {seconds} | {run['changed']} | {run['host_tasks']} "
                f"| {run['cpu_busy']:.0%} | {ratio:.2f}x the {kind} yardstick "
                f"| <= {limit}x: {verdict} |"
            )
        else:
            lines.append(
                f"| {label} | {seconds} | {run['changed']} | {run['host_tasks']} "
                f"| {run['cpu_busy']:.0%} | | |"
            )
    lines += _slowest("mlcluster site.yml, cold", r["cold"]["slowest"])
    lines += _slowest("mlcluster site.yml, idempotent", r["again"]["slowest"])
    lines += _slowest("the yardstick, idempotent", r["yardstick_again"]["slowest"])
    return "\n".join(lines)


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def render_scale(results: list[dict], load: str) -> str:
    lines = [
        f"Measured on {machine()}; load average at the start {load}.",
        "",
        "`site.yml` (the workloads play skipped) on a fresh local cluster, cold, then idempotent "
        "(best of the runs in brackets).",
        "",
        "| compute nodes | cold converge | idempotent converge | changed (2nd run) "
        "| host-tasks (idempotent) | CPU busy (idempotent) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        runs = ", ".join(f"{s:.0f}" for s in r["again"]["all"])
        lines.append(
            f"| {r['computes']} | {r['cold']['seconds']:.0f} s | {r['again']['seconds']:.0f} s "
            f"({runs}) | {r['again']['changed']} | {r['again']['host_tasks']} "
            f"| {_share(r['again'].get('cpu_busy'))} |"
        )
    if len(results) >= 2:
        a, b = results[0], results[-1]
        growth = b["again"]["seconds"] / a["again"]["seconds"]
        lines += [
            "",
            f"{a['computes']} → {b['computes']} compute nodes: the idempotent converge grows "
            f"{growth:.2f}x (target <= 1.3x: {'met' if growth <= 1.3 else 'not met'}).",
        ]
    for r in results:
        lines += _slowest(f"{r['computes']} compute nodes, idempotent", r["again"]["slowest"])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2, help="idempotent runs to take the best of")
    parser.add_argument(
        "--scale", type=int, nargs="*", default=None, help="compute-node counts (e.g. 8 16)"
    )
    parser.add_argument("--no-compare", action="store_true", help="skip the yardstick comparison")
    parser.add_argument(
        "--observability",
        type=int,
        metavar="N",
        help="also run bench.observability on the N-compute cluster of --scale before removing it",
    )
    parser.add_argument("--json", help="also write the raw figures to this file")
    args = parser.parse_args(argv)
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    raw: dict = {"started": time.strftime("%Y-%m-%d %H:%M")}
    if not args.no_compare:
        raw["compare"] = compare(args.repeat)
        body = render_compare(raw["compare"], load)
        write_section("Slurm converge", body)
        print(body)
    if args.scale:
        raw["scale"] = [scale(n, args.repeat, n == args.observability) for n in args.scale]
        body = render_scale(raw["scale"], load)
        write_section("Slurm converge at scale", body)
        print(body)
    if args.json:
        Path(args.json).write_text(json.dumps(raw, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
