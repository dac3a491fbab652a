"""Real faults on the session's cluster, each undone before the next test: a node answering
with another SSH host key is refused, a compute node stopped before a deploy leaves the others
configured and working (exit code 3 names it) and the rerun with the node back converges with
nothing else changed, a job survives a restart of slurmctld, and a compute node killed during a
2-node ddp or fsdp job costs the job its steps since the last checkpoint, nothing more.

Runs after the deploy tests (file order) on the deployed cluster and leaves it as it found it:
every node up, Slurm idle.
"""

from __future__ import annotations

import json
import subprocess
import sys
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
        node = next(n for n in _nodes(cluster) if n.container == container)
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


# Runs long enough to be killed part-way (ddp: about 10 steps a second on the local nodes),
# the same seed and global batch for the run that is killed and the one that is not.
STEPS = 300
KILLED_RUNS = {
    "ddp": ["--hidden", "512", "--depth", "4"],
    "fsdp": ["--config", "tiny", "--seq-len", "32", "--batch-size", "2", "--lr", "3e-3"],
}


def _run(cluster: Cluster, case: str, report, wait: bool = True):
    args = [*KILLED_RUNS[case], "--steps", str(STEPS), "--checkpoint-every", "10"]
    argv = [
        sys.executable, "-m", "mlcluster.cli", "run", case, "-i", str(cluster.inventory),
        "--nodes", "2", "--timeout", "15", "--report", str(report), "--", *args,
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if wait:
        out, _ = proc.communicate(timeout=1200)
        assert proc.returncode == EXIT_OK, out[-3000:]
        return json.loads(report.read_text())
    return proc


def _complete_checkpoints(cluster: Cluster, job_name: str) -> list[int]:
    listing = cluster.ssh(
        "controller",
        f"ls -d /fsx/mlcluster/checkpoints/{job_name}/step-*/ 2>/dev/null | while read -r d; "
        'do [ -f "$d/complete.json" ] && basename "$d"; done',
        check=False,
    ).stdout.split()
    return sorted(int(name.removeprefix("step-")) for name in listing)


@pytest.mark.parametrize("case", ["ddp", "fsdp"])
def test_a_node_killed_mid_training_resumes_from_its_checkpoint(cluster, deploys, tmp_path, case):
    """compute2 killed (`podman kill`: no chance to save) during a 2-node ddp or fsdp job that
    has saved at least step 20: slurmctld sets it DOWN after SlurmdTimeout, the job ends
    NODE_FAIL and is requeued; with the node back it runs again, resumes from the newest complete
    checkpoint and ends with every step's loss, the step count and the final loss of an
    uninterrupted run of the same seed, bit for bit. `mlcluster run` follows it through the
    requeue and exits 0."""
    expected = _run(cluster, case, tmp_path / "uninterrupted.json")
    assert expected["requeues"] == 0 and expected["summary"]["resumed_from_step"] is None
    losses = {s["step"]: s["loss"] for s in expected["steps"]}
    assert sorted(losses) == list(range(1, STEPS + 1))

    report = tmp_path / "killed.json"
    follow = _run(cluster, case, report, wait=False)
    container = f"{cluster.name}-compute2"
    try:
        job = wait_for_job(cluster)
        name = job_state(cluster, job)["JobName"]
        for _ in range(300):
            if any(step >= 20 for step in _complete_checkpoints(cluster, name)):
                break
            assert follow.poll() is None, "the job ended before it could be killed part-way"
            time.sleep(0.5)
        else:
            raise AssertionError(f"job {job}: no checkpoint of step 20 within 150 s")
        saved = _complete_checkpoints(cluster, name)
        assert job_state(cluster, job)["JobState"] == "RUNNING", "the job ended before the kill"
        subprocess.run(["podman", "kill", container], check=True, capture_output=True)
        # The node comes back only once Slurm has noticed it gone (DOWN, the job requeued).
        wait_for(cluster, "controller", "sinfo -h -n compute2 -o %T", "down*", tries=60)
    finally:
        subprocess.run(["podman", "start", container], check=True, capture_output=True)
        node = next(n for n in _nodes(cluster) if n.container == container)
        local.wait_for_ssh(cluster.name, [node])
    out, _ = follow.communicate(timeout=900)
    assert follow.returncode == EXIT_OK, out[-3000:]
    # The requeue is followed and said; its cause is accounting's (NODE_FAIL, then the run that
    # completed). Whether the follower saw the NODE_FAIL itself depends on when it looked.
    assert f"job {job} requeued (" in out and f"job {job} COMPLETED" in out
    runs = cluster.ssh("controller", f"sacct -D -n -X -P -j {job} -o State").stdout.split()
    assert runs == ["NODE_FAIL", "COMPLETED"]
    data = json.loads(report.read_text())
    assert (data["state"], data["requeues"]) == ("COMPLETED", 1)
    summary = data["summary"]
    resumed_from = summary["resumed_from_step"]
    # The newest complete checkpoint at the kill (a save may have completed after the listing).
    assert resumed_from % 10 == 0 and resumed_from >= saved[-1] >= 20
    # The second attempt ran every later step once, each as the uninterrupted run did.
    restart = max(i for i, s in enumerate(data["steps"]) if s["step"] == resumed_from + 1)
    second = data["steps"][restart:]
    assert [s["step"] for s in second] == list(range(resumed_from + 1, STEPS + 1))
    assert {s["step"]: s["loss"] for s in data["steps"]} == losses
    # Its summary covers the steps it ran: from the checkpoint to the same last step and loss.
    assert (summary["first_step"], summary["last_step"], summary["final_loss"]) == (
        resumed_from + 1,
        expected["summary"]["last_step"],
        expected["summary"]["final_loss"],
    )
    wait_for(cluster, "controller", "sinfo -h -N -o %T | sort -u", "idle", tries=60)


def _nodes(cluster: Cluster) -> list:
    return local.ClusterState.load(
        cluster.state_dir / "clusters" / cluster.name / "state.json"
    ).nodes


def wait_for_job(cluster: Cluster) -> str:
    """The id of the one job in the queue, once it runs."""
    for _ in range(120):
        out = cluster.ssh("controller", "squeue -h -o '%i %T'", check=False).stdout.split()
        if len(out) == 2 and out[1] == "RUNNING":
            return out[0]
        time.sleep(1)
    raise AssertionError(f"no running job within 120 s (squeue: {out})")
