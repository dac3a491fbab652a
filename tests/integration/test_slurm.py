"""Slurm on a local cluster of its own: a bad configuration is refused while the cluster keeps
running, a node joins with `--limit NEW,controller` without disturbing a running job, and the
cluster switches to configless mode and back.

A deploy killed right after it wrote a new configuration (before any daemon restarted) is
completed by the next deploy, which restarts the daemons, and the one after changes nothing.

The exact node state, accounting, memory limits, MUNGE and the health check are verified by
the molecule scenario (molecule/default); these are the changes of a running cluster.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from mlcluster.inputs import ansible_env
from mlcluster.paths import project_root, venv_bin
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


COMPUTES = ("compute1", "compute2", "compute3")
WRITE_TASK = "TASK [slurm : Write the Slurm configuration] "


def slurmd_pids(cluster: Cluster) -> dict[str, str]:
    return {
        node: cluster.ssh(node, "systemctl show -p MainPID --value slurmd").stdout.strip()
        for node in COMPUTES
    }


def test_a_deploy_killed_after_writing_the_configuration_is_completed_by_the_next(slurm_cluster):
    """SIGKILL at the first banner after the configuration was written: the new cgroup.conf is
    on the nodes, the daemons still run the old one. The next deploy restarts them (the digest
    of the configuration they started with differs); the one after changes nothing."""
    before = slurmd_pids(slurm_cluster)
    extravars = {"slurm_cgroup_config": {"AllowedRAMSpace": 98}}
    playbook = subprocess.Popen(
        [
            str(venv_bin() / "ansible-playbook"),
            "-i",
            str(slurm_cluster.inventory),
            "-e",
            json.dumps(extravars),
            "playbooks/slurm.yml",
        ],
        cwd=project_root(),
        env={**os.environ, **ansible_env(), **SKIP_WORKLOADS},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen_write, killed_at = False, None
    for line in playbook.stdout:
        if line.startswith(WRITE_TASK):
            seen_write = True
        elif seen_write and line.startswith(("TASK [", "RUNNING HANDLER [")):
            playbook.send_signal(signal.SIGKILL)
            killed_at = line.strip()
            break
    playbook.wait(timeout=60)
    playbook.stdout.close()
    assert killed_at, "the run never reached the task after writing the configuration"
    assert playbook.returncode == -signal.SIGKILL

    for node in COMPUTES:
        conf = slurm_cluster.ssh(node, "cat /etc/slurm/cgroup.conf").stdout
        assert "AllowedRAMSpace=98" in conf, (node, killed_at)
    assert slurmd_pids(slurm_cluster) == before, "a daemon restarted before the kill"

    completed = converge(slurm_cluster, "playbooks/slurm.yml", extravars=extravars)
    assert completed.exit_code == EXIT_OK, completed.errors
    restarted = slurmd_pids(slurm_cluster)
    assert all(restarted[node] != before[node] for node in COMPUTES), (before, restarted)

    again = converge(slurm_cluster, "playbooks/slurm.yml", extravars=extravars)
    assert again.exit_code == EXIT_OK, again.errors
    assert {h: c["changed"] for h, c in again.hosts.items()} == dict.fromkeys(
        ("compute1", "compute2", "compute3", "controller"), 0
    )
    assert slurmd_pids(slurm_cluster) == restarted
    assert sinfo(slurm_cluster) == ["compute1 idle", "compute2 idle", "compute3 idle"]
