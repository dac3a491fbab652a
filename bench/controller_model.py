"""The controller-side cost of a converge per host and task, measured with many inventory hosts
on a cheap connection, and a prediction of a 1,000-node converge from it.

Ansible's controller forks a worker per host and task, templates the task's arguments, ships the
module and reads its result. With `ansible_connection: local` the "remote" side is this machine
too, so the wall time of N hosts x K tasks is the controller's own cost (plus a module's run,
which is the same on a real node). The script measures it for a few N and fits
`wall = fixed + N x K x per_host_task` (least squares), then predicts the idempotent site.yml of
a 1,000-node cluster from the host-tasks a real idempotent run executes on each node (read from
bench/slurm_converge's JSON, `--converge-json`) and the per-task round trip measured there.

Run from the repository: `.venv/bin/python -m bench.controller_model [--hosts 32 64 128]
[--converge-json /tmp/sc.json]`. Writes the `## Controller cost and the 1,000-node prediction`
section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench.report import machine, write_section
from mlcluster.inputs import ansible_env
from mlcluster.paths import project_root, venv_bin

# The kinds of task a converge runs, in the proportions of an idempotent site.yml pass: probes
# (command/stat), files compared and left alone (copy), service states (here: a command, as
# there is no systemd unit to ask), facts set on the controller and tasks skipped by `when`.
TASKS = [
    {"name": "probe", "ansible.builtin.command": {"argv": ["true"]}, "changed_when": False},
    {"name": "stat", "ansible.builtin.stat": {"path": "/etc/hostname"}},
    {
        "name": "file compared",
        "ansible.builtin.copy": {
            "content": "{{ inventory_hostname }}\n",
            "dest": "{{ model_dir }}/{{ inventory_hostname }}",
            "mode": "0644",
        },
    },
    {
        "name": "fact",
        "ansible.builtin.set_fact": {"model_fact": "{{ inventory_hostname | hash('sha1') }}"},
    },
    {"name": "skipped", "ansible.builtin.debug": {"msg": "never"}, "when": "false"},
]


def measure(hosts: int, work: Path, forks: int) -> float:
    inventory = {
        "all": {
            "hosts": {f"node{i:04d}": None for i in range(hosts)},
            "vars": {
                "ansible_connection": "local",
                "ansible_python_interpreter": str(venv_bin() / "python"),
                "model_dir": str(work / "files"),
            },
        }
    }
    (work / "files").mkdir(exist_ok=True)
    inv = work / f"hosts-{hosts}.yml"
    inv.write_text(yaml.safe_dump(inventory))
    play = work / "model.yml"
    play.write_text(
        yaml.safe_dump([{"name": "Model", "hosts": "all", "gather_facts": False, "tasks": TASKS}])
    )
    env = {**os.environ, **ansible_env(), "ANSIBLE_FORKS": str(forks)}
    cmd = [str(venv_bin() / "ansible-playbook"), "-i", str(inv), str(play)]
    # The first run writes the files; the measured one compares them (an idempotent pass).
    subprocess.run(cmd, env=env, cwd=project_root(), capture_output=True, check=True)
    start = time.monotonic()
    subprocess.run(cmd, env=env, cwd=project_root(), capture_output=True, check=True)
    return time.monotonic() - start


def fit(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least squares of wall = fixed + slope x host-tasks."""
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / sum(
        (x - mean_x) ** 2 for x, _ in points
    )
    return mean_y - slope * mean_x, slope


def converge_figures(path: str | None) -> dict | None:
    """Host-tasks a node executes in an idempotent site.yml, and that run's seconds, from
    bench/slurm_converge's JSON (`compare.again`)."""
    if not path or not Path(path).exists():
        return None
    raw = json.loads(Path(path).read_text())
    again = raw.get("compare", {}).get("again")
    if not again or "host_tasks" not in again:
        return None
    return again


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--forks", type=int, default=16)
    parser.add_argument("--converge-json", help="bench.slurm_converge --json output")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mlcluster-model-") as tmp:
        points = []
        for hosts in args.hosts:
            wall = measure(hosts, Path(tmp), args.forks)
            points.append((hosts * len(TASKS), wall))
            print(f"{hosts} hosts x {len(TASKS)} tasks: {wall:.1f} s", flush=True)
    fixed, per_host_task = fit(points)
    lines = [
        f"Measured on {machine()} (the controller: {os.cpu_count()} cores), forks {args.forks}.",
        "",
        f"An idempotent pass of {len(TASKS)} tasks (a command, a stat, a file compared, a fact, "
        "a skipped task) over many hosts on `ansible_connection: local`, so that the wall time "
        "is the controller's own work (the modules run here too):",
        "",
        "| hosts | host-tasks | wall |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {x // len(TASKS)} | {x} | {y:.1f} s |" for x, y in points]
    lines += [
        "",
        f"Fit: wall = {fixed:.1f} s + {per_host_task * 1000:.1f} ms x host-tasks. On this "
        "controller the cost is CPU: more forks than cores do not shorten it.",
    ]
    again = converge_figures(args.converge_json)
    if again:
        per_node = again["host_tasks"] / again["hosts"]
        nodes = 1000
        ctrl = fixed + per_host_task * per_node * nodes
        lines += [
            "",
            "Prediction for an idempotent site.yml on 1,000 nodes:",
            "",
            f"- a node executes {per_node:.0f} host-tasks per idempotent pass (measured on the "
            f"3-node cluster: {again['host_tasks']} for {again['hosts']} hosts, "
            f"{again['seconds']:.0f} s);",
            f"- the controller's work is then about {per_node * nodes:,.0f} host-tasks x "
            f"{per_host_task * 1000:.1f} ms = {ctrl / 60:.0f} min on a controller like this one "
            f"({os.cpu_count()} cores); it divides by the cores of a bigger controller (Ansible's "
            "workers are processes), e.g. about "
            f"{ctrl / 60 * os.cpu_count() / 32:.0f} min on 32 cores;",
            "- the modules ran on this controller too, so the per host-task figure is an upper "
            "bound of the controller's own share;",
            "- forks: the nodes' round trips overlap the controller's work only while forks keep "
            "its cores busy (bench/slurm_converge's CPU column); a bigger controller needs forks "
            "of a few times its cores (an assumption, not measured here);",
            "- assumptions: one SSH ControlMaster per host kept for the run (ControlPersist), "
            "pipelining on, the same tasks per node as here (the controller's plays run once, "
            "not per node), facts cached between runs (no gathering), no host failing.",
        ]
    body = "\n".join(lines)
    write_section("Controller cost and the 1,000-node prediction", body)
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
