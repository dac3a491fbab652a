"""Real faults on the session's cluster, each undone before the next test: a node answering
with another SSH host key is refused, a compute node stopped before a deploy leaves the others
configured and working (exit code 3 names it) and the rerun with the node back converges with
nothing else changed, and a job survives a restart of slurmctld.

Runs after the deploy tests (file order) on the deployed cluster and leaves it as it found it:
every node up, Slurm idle.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from mlcluster import local
from mlcluster.runner import EXIT_OK, EXIT_UNREACHABLE, run_playbook

from .conftest import Cluster, mlcluster

pytestmark = pytest.mark.integration

# The Slurm side of site.yml: the roles a lost compute node matters to (the slurm role probes
# every compute node, also those that do not answer).
SLURM_TAGS = "munge,slurm"
HOST_KEY = "/etc/ssh/ssh_host_ed25519_key"


def wait_for(cluster: Cluster, host: str, command: str, expected: str, tries: int = 60) -> str:
    out = ""
    for _ in range(tries):
        out = cluster.ssh(host, command, check=False).stdout.strip()
        if out == expected:
            return out
        time.sleep(2)
    raise AssertionError(f"{host}: {command} gave {out!r}, not {expected!r}")


def test_a_node_with_another_host_key_is_refused(cluster, deploys, tmp_path):
    """compute1 answers with a new host key (as another machine at its address would): ssh and
    Ansible refuse it. Its own key is put back through a known_hosts file naming the new key
    (or, should the test die first, by a timer on the node)."""
    restore = (
        f"mv /root/hostkey.bak {HOST_KEY} && mv /root/hostkey.pub.bak {HOST_KEY}.pub "
        "&& systemctl restart ssh"
    )
    new_key = cluster.ssh(
        "compute1",
        f"cp -p {HOST_KEY} /root/hostkey.bak && cp -p {HOST_KEY}.pub /root/hostkey.pub.bak && "
        f"systemd-run --quiet --on-active=300 /bin/sh -c '{restore}' && "
        f"rm {HOST_KEY} {HOST_KEY}.pub && ssh-keygen -q -t ed25519 -N '' -f {HOST_KEY} && "
        f"systemctl restart ssh && cat {HOST_KEY}.pub",
    ).stdout
    address = cluster.ip("compute1")
    try:
        refused = cluster.ssh("compute1", "true", check=False)
        assert refused.returncode == 255
        assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in refused.stderr
        assert "Host key verification failed." in refused.stderr
        playbook = tmp_path / "ping.yml"
        playbook.write_text(
            "- hosts: compute1\n  gather_facts: false\n  tasks:\n    - ansible.builtin.ping:\n"
        )
        # No SSH connection kept open by an earlier run may carry this one.
        result = run_playbook(
            str(playbook),
            cluster.inventory,
            extra_env={"ANSIBLE_SSH_ARGS": "-o ControlMaster=no -o ControlPath=none"},
        )
        assert result.exit_code == EXIT_UNREACHABLE, result.errors
        assert len(result.errors) == 1
        assert result.errors[0].startswith("compute1: unreachable: ")
        # The runner keeps the start of the message (the end is cut at 600 characters).
        assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in result.errors[0]
    finally:
        changed = tmp_path / "known_hosts"
        changed.write_text(local.known_hosts_text([(address, new_key)]))
        subprocess.run(
            ["ssh", *local.ssh_options(cluster.key, changed), f"root@{address}", restore],
            check=True,
            capture_output=True,
            timeout=60,
        )
    assert cluster.ssh("compute1", "hostname").stdout.strip() == "compute1"


def deploy(cluster: Cluster, report) -> tuple[int, dict]:
    proc = mlcluster(
        "deploy",
        "-i",
        str(cluster.inventory),
        "--tags",
        SLURM_TAGS,
        "--report",
        str(report),
        check=False,
    )
    return proc.returncode, json.loads(report.read_text())


def test_a_stopped_compute_node_leaves_the_others_working(cluster, deploys, tmp_path):
    container = f"{cluster.name}-compute2"
    subprocess.run(["podman", "stop", "-t", "5", container], check=True, capture_output=True)
    try:
        rc, report = deploy(cluster, tmp_path / "lost.json")
        assert rc == EXIT_UNREACHABLE, report["errors"]
        assert report["exit_code"] == EXIT_UNREACHABLE
        hosts = report["hosts"]
        assert hosts["compute2"]["unreachable"] > 0
        assert {
            h: (c["failures"], c["unreachable"], c["changed"])
            for h, c in hosts.items()
            if h != "compute2"
        } == {"controller": (0, 0, 0), "compute1": (0, 0, 0)}
        assert {e.split(":")[0] for e in report["errors"]} == {"compute2"}
        # Slurm still runs jobs on the node that is up.
        out = cluster.ssh("controller", "srun --nodes=1 --nodelist=compute1 hostname").stdout
        assert out.split() == ["compute1"]
    finally:
        subprocess.run(["podman", "start", container], check=True, capture_output=True)
        node = next(
            n
            for n in local.ClusterState.load(
                cluster.state_dir / "clusters" / cluster.name / "state.json"
            ).nodes
            if n.container == container
        )
        local.wait_for_ssh(cluster.name, [node])

    rc, report = deploy(cluster, tmp_path / "back.json")
    assert rc == EXIT_OK, report["errors"]
    assert {h: c["changed"] for h, c in report["hosts"].items()} == {
        "compute1": 0,
        "compute2": 0,
        "controller": 0,
    }
    hosts = cluster.ssh("controller", "srun --nodes=2 hostname").stdout.split()
    assert sorted(hosts) == ["compute1", "compute2"]


def job_state(cluster: Cluster, job: str) -> dict[str, str]:
    line = cluster.ssh("controller", f"scontrol show job {job} --oneliner").stdout
    return dict(field.split("=", 1) for field in line.split() if "=" in field)


def test_a_running_job_survives_a_slurmctld_restart(cluster, deploys):
    job = cluster.ssh(
        "controller",
        "sbatch --parsable --nodes=2 --mem=100M --output=/fsx/ctld-restart-%j.out "
        "--wrap='srun sleep 30; echo finished'",
    ).stdout.strip()
    wait_for(cluster, "controller", f"squeue -h -j {job} -o %T", "RUNNING")
    started = job_state(cluster, job)["StartTime"]
    cluster.ssh("controller", "systemctl restart slurmctld")
    wait_for(cluster, "controller", "ss -Hltn 'sport = :6817' | wc -l", "1")
    state = job_state(cluster, job)
    assert (state["JobState"], state["StartTime"]) == ("RUNNING", started)
    wait_for(cluster, "controller", f"squeue -h -j {job} | wc -l", "0")
    state = job_state(cluster, job)
    assert (state["JobState"], state["ExitCode"], state["Restarts"]) == ("COMPLETED", "0:0", "0")
    assert cluster.ssh("controller", f"cat /fsx/ctld-restart-{job}.out").stdout == "finished\n"
    cluster.ssh("controller", f"rm -f /fsx/ctld-restart-{job}.out")
