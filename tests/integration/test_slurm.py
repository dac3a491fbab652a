"""Slurm on a local cluster of its own: a bad configuration is refused while the cluster keeps
running, a node joins with `--limit NEW,controller` without disturbing a running job, and the
cluster switches to configless mode and back.

The exact node state, accounting, memory limits, MUNGE and the health check are verified by
the molecule scenario (molecule/default); these are the changes of a running cluster.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mlcluster.runner import EXIT_FAILED, EXIT_OK, run_playbook

from .conftest import Cluster, mlcluster

pytestmark = pytest.mark.integration

NAME = "slit"
# The workloads play has its own tests; these are about Slurm.
SKIP_WORKLOADS = {"ANSIBLE_SKIP_TAGS": "workloads"}
# Another base image for the nodes, as for the molecule scenario.
BASE_IMAGE = (
    ["--base-image", os.environ["MLCLUSTER_BASE_IMAGE"]]
    if os.environ.get("MLCLUSTER_BASE_IMAGE")
    else []
)


def converge(cluster: Cluster, playbook: str = "site.yml", **kwargs):
    return run_playbook(playbook, cluster.inventory, extra_env=SKIP_WORKLOADS, **kwargs)


@pytest.fixture(scope="module")
def slurm_cluster():
    state = Path(os.environ["MLCLUSTER_STATE"])
    mlcluster("local", "up", "--name", NAME, "--computes", "2", *BASE_IMAGE)
    cluster = Cluster(NAME, state)
    try:
        result = converge(cluster)
        assert result.exit_code == EXIT_OK, result.errors
        yield cluster
    finally:
        mlcluster("local", "down", "--name", NAME, check=False)


def sinfo(cluster: Cluster) -> list[str]:
    out = cluster.ssh("controller", "sinfo --noheader --Node --format='%N %t'").stdout
    return sorted(line.strip() for line in out.splitlines() if line.strip())


def test_bad_configuration_is_refused_and_the_cluster_keeps_running(slurm_cluster):
    result = converge(
        slurm_cluster, "playbooks/slurm.yml", extravars={"slurm_config": {"BogusKey": 1}}
    )
    assert result.exit_code == EXIT_FAILED
    assert any("BogusKey" in e for e in result.errors), result.errors
    conf = slurm_cluster.ssh("controller", "cat /etc/slurm/slurm.conf").stdout
    assert "BogusKey" not in conf
    assert sinfo(slurm_cluster) == ["compute1 idle", "compute2 idle"]


def test_node_joins_with_limit_and_a_running_job_survives(slurm_cluster):
    job = slurm_cluster.ssh(
        "controller", "sbatch --parsable --nodes=2 --mem=100M --wrap='srun sleep 900'"
    ).stdout.strip()
    slurm_cluster.ssh("controller", f"until squeue -h -j {job} -t R | grep -q .; do sleep 1; done")
    started = slurm_cluster.ssh("controller", f"squeue -h -j {job} -o %S").stdout.strip()

    mlcluster("local", "up", "--name", NAME, "--computes", "3", *BASE_IMAGE)
    result = converge(slurm_cluster, limit="compute3,controller")
    assert result.exit_code == EXIT_OK, result.errors
    assert sorted(result.hosts) == ["compute3", "controller"]

    state = slurm_cluster.ssh("controller", f"squeue -h -j {job} -o '%T %S'").stdout.split()
    assert state == ["RUNNING", started], "the running job was disturbed by the node's joining"
    assert sinfo(slurm_cluster) == ["compute1 mix", "compute2 mix", "compute3 idle"]
    # The nodes outside --limit know the new node too (Slurm wants one slurm.conf everywhere).
    for node in ("compute1", "compute2"):
        conf = slurm_cluster.ssh(node, "cat /etc/slurm/slurm.conf").stdout
        assert "NodeName=compute3 " in conf
    hosts = slurm_cluster.ssh("controller", "srun --nodes=1 --nodelist=compute3 hostname").stdout
    assert hosts.split() == ["compute3"]
    slurm_cluster.ssh("controller", f"scancel {job}")


def test_configless_and_back(slurm_cluster):
    result = converge(slurm_cluster, "playbooks/slurm.yml", extravars={"slurm_configless": True})
    assert result.exit_code == EXIT_OK, result.errors
    for node in ("compute1", "compute2", "compute3"):
        assert slurm_cluster.ssh(node, "test -e /etc/slurm/slurm.conf", check=False).returncode
        args = slurm_cluster.ssh(node, "ps -o args= -C slurmd").stdout
        assert "--conf-server" in args
    hosts = slurm_cluster.ssh("controller", "srun --nodes=3 hostname").stdout.split()
    assert sorted(hosts) == ["compute1", "compute2", "compute3"]

    result = converge(slurm_cluster, "playbooks/slurm.yml", extravars={"slurm_configless": False})
    assert result.exit_code == EXIT_OK, result.errors
    for node in ("compute1", "compute2", "compute3"):
        slurm_cluster.ssh(node, "test -e /etc/slurm/slurm.conf")
        assert "--conf-server" not in slurm_cluster.ssh(node, "ps -o args= -C slurmd").stdout
    assert sinfo(slurm_cluster) == ["compute1 idle", "compute2 idle", "compute3 idle"]


def key_checksums(cluster: Cluster, nodes: tuple[str, ...]) -> set[str]:
    return {cluster.ssh(node, "sha256sum /etc/munge/munge.key").stdout.split()[0] for node in nodes}


def test_munge_key_is_kept_and_rotated_only_on_purpose(slurm_cluster):
    nodes = ("controller", "compute1", "compute2", "compute3")
    before = key_checksums(slurm_cluster, nodes)
    assert len(before) == 1

    kept = converge(slurm_cluster, "playbooks/slurm.yml", tags="munge")
    assert kept.exit_code == EXIT_OK, kept.errors
    assert key_checksums(slurm_cluster, nodes) == before
    assert all(h["changed"] == 0 for h in kept.hosts.values())

    rotated = converge(
        slurm_cluster, "playbooks/slurm.yml", tags="munge", extravars={"munge_rotate_key": True}
    )
    assert rotated.exit_code == EXIT_OK, rotated.errors
    after = key_checksums(slurm_cluster, nodes)
    assert len(after) == 1 and after != before
    hosts = slurm_cluster.ssh("controller", "srun --nodes=3 hostname").stdout.split()
    assert sorted(hosts) == ["compute1", "compute2", "compute3"]
