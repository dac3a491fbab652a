"""A simulated SageMaker HyperPod cluster, from nothing to `srun -N2` through the lifecycle
script alone (`mlcluster local up --platform hyperpod`), with the slurm role in managed mode:
the platform's slurm.conf keeps every line its agent wrote, plus one include line, and a second
lifecycle run changes nothing.
"""

from __future__ import annotations

import hashlib
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mlcluster import local, local_hyperpod

from .conftest import mlcluster

pytestmark = pytest.mark.integration

NAME = "hp"
INCLUDE_LINE = "include slurm_mlcluster.conf"
# Files mlcluster writes beside the platform's slurm.conf (docs/slurm.md, Managed Slurm).
OWNED = ("slurm_mlcluster.conf", "cgroup.conf", "plugstack.conf")


def sh(container: str, command: str, check: bool = True, timeout: float = 300):
    # As the product reaches the nodes: podman exec, over SSH where exec cannot join the
    # container's cgroup (cgroup v1 hosts).
    proc = local.node_exec(NAME, container, ["bash", "-c", command], check=False, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{container}: {command} exited {proc.returncode}\n{proc.stdout}{proc.stderr}"
        )
    return proc


@pytest.fixture(scope="module")
def hp():
    state_dir = Path(os.environ["MLCLUSTER_STATE"])
    try:
        up = mlcluster("local", "up", "--name", NAME, "--platform", "hyperpod", "--computes", "2")
        state = local.ClusterState.load(state_dir / "clusters" / NAME / "state.json")
        yield state, up
    finally:
        mlcluster("local", "down", "--name", NAME, check=False)


def controller(state) -> local.Node:
    return next(n for n in state.nodes if n.group == "slurm_controller")


def workers(state) -> list[local.Node]:
    return [n for n in state.nodes if n.group == "slurm_compute"]


def test_lifecycle_alone_makes_a_cluster_that_runs_multi_node_jobs(hp):
    state, up = hp
    # OnCreate ran on every node, the controller first (the CLI reports progress on stderr).
    lines = up.stderr.splitlines()
    ran = [line.split(":")[0] for line in lines if local_hyperpod.ON_CREATE in line]
    assert ran == [n.container for n in (controller(state), *workers(state))]
    head = controller(state).container
    out = sh(head, "/opt/slurm/bin/srun -N2 --time=2 hostname", timeout=180).stdout
    assert sorted(out.split()) == sorted(n.hostname for n in workers(state))
    sinfo = sh(head, "/opt/slurm/bin/sinfo --noheader --Node --format='%N %P %t'").stdout
    assert sorted(" ".join(line.split()) for line in sinfo.splitlines()) == sorted(
        f"{n.hostname} dev* idle" for n in workers(state)
    )


def test_the_platforms_units_run_where_hyperpod_runs_them(hp):
    state, _ = hp
    head = controller(state).container
    unit = sh(head, "systemctl show -p FragmentPath -p ActiveState slurmctld").stdout
    assert "FragmentPath=/etc/systemd/system/slurmctld.service" in unit
    assert "ActiveState=active" in unit
    for node in workers(state):
        args = sh(node.container, "ps -o args= -C slurmd").stdout
        assert f"--conf-server {controller(state).ip}:6817" in args
        # Configless: slurmd got mlcluster's include file from slurmctld with slurm.conf.
        sh(node.container, "test -s /var/lib/slurm/slurmd/conf-cache/slurm_mlcluster.conf")


def test_managed_mode_keeps_the_agents_slurm_conf_but_for_the_include_line(hp):
    state, _ = hp
    head = controller(state)
    conf = sh(head.container, f"cat {local_hyperpod.SLURM_CONF}").stdout
    lines = conf.splitlines(keepends=True)
    assert lines[-1] == INCLUDE_LINE + "\n"
    assert sum(line.strip() == INCLUDE_LINE for line in lines) == 1
    hardware = {
        n.container: local_hyperpod._hardware(state.name, n.container) for n in workers(state)
    }
    agent = local_hyperpod.platform_slurm_conf(state.name, head, workers(state), hardware)
    kept = "".join(line for line in lines if line.strip() != INCLUDE_LINE)
    assert hashlib.sha256(kept.encode()).hexdigest() == hashlib.sha256(agent.encode()).hexdigest()
    # mlcluster's settings reach slurmctld; the platform's keys keep the platform's values.
    config = sh(head.container, "/opt/slurm/bin/scontrol show config").stdout
    assert re.search(r"HealthCheckProgram\s+= /usr/local/sbin/mlcluster-slurm-healthcheck", config)
    assert re.search(r"ProctrackType\s+= proctrack/cgroup", config)


def checksums(container: str, paths: list[str]) -> str:
    return sh(container, "sha256sum " + " ".join(paths)).stdout


def test_a_second_lifecycle_run_changes_nothing(hp):
    state, _ = hp
    etc = "/opt/slurm/etc"
    head = controller(state)
    files = [f"{etc}/slurm.conf", *(f"{etc}/{name}" for name in OWNED)]
    before = checksums(head.container, files)
    env = " ".join(f"{k}={v}" for k, v in local_hyperpod.LIFECYCLE_ENV.items())
    nodes = (head, workers(state)[0])
    # HyperPod runs OnCreate again on a replaced node; the nodes' runs are independent.
    with ThreadPoolExecutor(len(nodes)) as pool:
        runs = list(
            pool.map(
                lambda n: sh(n.container, f"{env} bash {local_hyperpod.ON_CREATE}", timeout=1200),
                nodes,
            )
        )
    for node, run in zip(nodes, runs, strict=True):
        recap = re.findall(rf"{re.escape(node.hostname)}\s*: ok=\d+\s+changed=(\d+)", run.stdout)
        assert recap and recap[-1] == "0", run.stdout[-4000:]
    assert checksums(head.container, files) == before
