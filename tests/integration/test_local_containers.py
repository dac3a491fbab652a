"""Container jobs and `mlcluster run`'s launch options on the deployed local cluster.

Slurm's own OCI support (oci.conf written by the slurm role, rootless runc from Debian) runs a
bundle unpacked from the node image on /fsx; `mlcluster run` launches through it, runs the
bandwidth case, and fails loudly when a job fails or a case cannot run on these nodes.
"""

from __future__ import annotations

import json
import shlex

import pytest

from .conftest import mlcluster

pytestmark = pytest.mark.integration

BUNDLE = "/fsx/containers/node"


@pytest.fixture(scope="module")
def bundle(cluster, deploys):
    proc = mlcluster("local", "bundle", "--name", cluster.name)
    assert proc.stdout.strip() == BUNDLE
    return BUNDLE


def test_slurm_writes_plugstack_and_oci_conf(cluster, deploys):
    plugstack = cluster.ssh("compute1", "grep -v '^#' /etc/slurm/plugstack.conf").stdout
    assert plugstack.split("\n")[0] == "include /etc/slurm/plugstack.conf.d/*"
    oci = cluster.ssh("compute1", "grep -v '^#' /etc/slurm/oci.conf").stdout.splitlines()
    assert [line.split("=", 1)[0] for line in oci] == [
        "RunTimeQuery",
        "RunTimeKill",
        "RunTimeDelete",
        "RunTimeRun",
    ]
    assert oci[-1] == (
        'RunTimeRun="runc --rootless=true --root=/run/mlcluster-oci/%u run %n.%u.%j.%s.%t -b %b"'
    )


def test_srun_container_runs_the_bundle_on_two_nodes(cluster, bundle):
    # Slurm 22.05 hands a container the step's environment, not the task's (no SLURM_PROCID:
    # torchrun's rendezvous numbers the ranks of the training cases), so each task names its
    # node and step, and leaves a file on /fsx.
    script = (
        ". /etc/os-release; f=/fsx/mlcluster/jobs/oci-$(hostname); echo x > $f; echo"
        " host=$(hostname) step=$SLURM_JOB_NUM_NODES/$SLURM_STEP_NUM_TASKS os=$ID-$VERSION_ID"
        " pid1=$(cat /proc/1/comm) uid=$(id -u) fsx=$(stat -c %u $f)"
    )
    srun = f"srun -N2 --ntasks-per-node=1 --container={bundle} sh -c {shlex.quote(script)}"
    proc = cluster.ssh("controller", f"cd /tmp && su mluser -c {shlex.quote(srun)}")
    # Node by node: the image's OS, the container's own PID namespace (PID 1 is the task's
    # shell, not the node's systemd), root inside, and /fsx writable.
    assert sorted(proc.stdout.splitlines()) == [
        "host=compute1 step=2/2 os=debian-12 pid1=sh uid=0 fsx=0",
        "host=compute2 step=2/2 os=debian-12 pid1=sh uid=0 fsx=0",
    ]
    # Outside, the files belong to the job's user: the container's root is mluser.
    owners = cluster.ssh("controller", "stat -c '%U %n' /fsx/mlcluster/jobs/oci-compute*")
    assert owners.stdout.splitlines() == [
        "mluser /fsx/mlcluster/jobs/oci-compute1",
        "mluser /fsx/mlcluster/jobs/oci-compute2",
    ]


def test_run_ddp_in_the_container_across_two_nodes(cluster, bundle, tmp_path):
    report = tmp_path / "ddp.json"
    mlcluster(
        "run",
        "ddp",
        "-i",
        str(cluster.inventory),
        "--nodes",
        "2",
        "--container",
        bundle,
        "--report",
        str(report),
    )
    data = json.loads(report.read_text())
    assert (data["state"], data["container"], data["gpus_per_node"]) == ("COMPLETED", bundle, 0)
    summary = data["summary"]
    assert summary["world_size"] == 2
    assert summary["final_loss"] < 0.8 * summary["first_loss"]
    hosts = cluster.ssh("controller", f"sacct -n -X -P -j {data['job_id']} -o NodeList,State")
    assert hosts.stdout.split() == ["compute[1-2]|COMPLETED"]


def test_run_allreduce_reports_busbw_from_its_own_bytes_and_time(cluster, deploys, tmp_path):
    report = tmp_path / "allreduce.json"
    proc = mlcluster(
        "run", "allreduce", "-i", str(cluster.inventory), "--nodes", "2", "--report", str(report)
    )
    assert "max busbw (GB/s)" in proc.stdout
    data = json.loads(report.read_text())
    assert data["state"] == "COMPLETED"
    rows = data["steps"]
    # --max-bytes 16M from 1K, doubling: 15 sizes, every one reduced correctly by 2 ranks.
    assert [row["size_bytes"] for row in rows] == [1024 * 2**i for i in range(15)]
    for row in rows:
        assert row["world_size"] == 2 and row["wrong"] == 0
        algbw = row["size_bytes"] / (row["time_us"] / 1e6) / 1e9
        assert row["algbw_gbps"] == pytest.approx(algbw, rel=1e-9)
        # Ring all-reduce: busbw = algbw * 2 (n - 1) / n, which is algbw itself for n = 2.
        assert row["busbw_gbps"] == pytest.approx(algbw * 2 * (2 - 1) / 2, rel=1e-9)
    summary = data["summary"]
    assert summary["wrong"] == 0
    assert summary["max_busbw_gbps"] == max(row["busbw_gbps"] for row in rows)


def test_run_exits_nonzero_with_the_reason_when_the_job_fails(cluster, deploys, tmp_path):
    report = tmp_path / "failed.json"
    proc = mlcluster(
        "run",
        "ddp",
        "-i",
        str(cluster.inventory),
        "--nodes",
        "2",
        "--report",
        str(report),
        "--",
        "--no-such-flag",
        check=False,
    )
    assert proc.returncode == 1
    reason = "python -m mlcluster_workloads.ddp: error: unrecognized arguments: --no-such-flag"
    assert f"ended FAILED: {reason}" in proc.stdout
    data = json.loads(report.read_text())
    assert (data["state"], data["reason"]) == ("FAILED", reason)


def test_run_refuses_what_the_nodes_cannot_run(cluster, deploys):
    proc = mlcluster("run", "nccl_tests", "-i", str(cluster.inventory), check=False)
    assert proc.returncode == 2
    assert "nccl_tests needs GPUs and the default partition has none (Slurm GRES)" in proc.stderr
    proc = mlcluster(
        "run",
        "ddp",
        "-i",
        str(cluster.inventory),
        "--container",
        "nvcr.io#nvidia/pytorch:25.01",
        check=False,
    )
    assert proc.returncode == 2
    assert "pyxis is not loaded by Slurm" in proc.stderr
