"""The test cases across two compute nodes of the local cluster, submitted through sbatch."""

from __future__ import annotations

import json

import pytest
from mlcluster_workloads import cases

from .conftest import mlcluster

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("case", ["ddp", "fsdp", "jax"])
def test_case_trains_across_two_nodes(cluster, deploys, tmp_path, case):
    report = tmp_path / f"{case}.json"
    # The registry's CPU arguments plus each rank's own account of what it did (--debug-report),
    # written on the shared /fsx, so the ranks on the two nodes can be compared below.
    debug = f"/fsx/mlcluster/jobs/itest-debug-{case}"
    cluster.ssh("controller", f"rm -rf {debug}")
    args = [*cases.get(case).cpu_args, "--debug-report", debug]
    proc = mlcluster(
        "run", case, "-i", str(cluster.inventory), "--nodes", "2", "--report", str(report),
        "--", *args,
    )  # fmt: skip
    assert f"{case} (job " in proc.stdout and "COMPLETED" in proc.stdout
    data = json.loads(report.read_text())
    assert data["state"] == "COMPLETED"
    summary = data["summary"]
    assert summary["world_size"] == 2
    ranks = [
        json.loads(cluster.ssh("controller", f"cat {debug}/rank-{r}.json").stdout) for r in (0, 1)
    ]
    assert [r["rank"] for r in ranks] == [0, 1]
    reported = {s["step"]: s["loss"] for s in data["steps"]}
    steps = [s["step"] for s in ranks[0]["steps"]]
    assert steps == [s["step"] for s in ranks[1]["steps"]] and len(steps) == summary["steps"]
    for mine, theirs in zip(ranks[0]["steps"], ranks[1]["steps"], strict=True):
        # The two nodes read different samples at every step ...
        assert mine["indices"] and not set(_flat(mine["indices"])) & set(_flat(theirs["indices"]))
        # ... and the loss reported is the mean over both, not rank 0's own.
        mean = (mine["local_loss"] + theirs["local_loss"]) / 2
        assert reported[mine["step"]] == pytest.approx(mean, rel=1e-4)
    if case != "fsdp":
        # Replicated parameters end identical on both nodes: the gradients crossed the network.
        # (fsdp's unsharded parameters are gathered from the shards, equal by construction.)
        assert ranks[0]["param_digest"] == ranks[1]["param_digest"]
    assert len(data["steps"]) == summary["steps"] > 0
    assert summary["final_loss"] < 0.8 * summary["first_loss"]
    assert summary["samples_per_s"] > 0 and summary["tflops_per_device"] > 0
    # CPU nodes have no peak in the table: MFU is unknown, not a made-up number.
    assert summary["mfu"] is None
    if case == "fsdp":
        assert summary["tokens_per_s"] > 0
    hosts = cluster.ssh("controller", f"sacct -n -X -P -j {data['job_id']} -o NodeList,State")
    assert hosts.stdout.split() == ["compute[1-2]|COMPLETED"]


def _flat(indices) -> list:
    """Sample indices of one step (a list, or a list of lists for windows of tokens)."""
    if indices and isinstance(indices[0], list):
        return [tuple(i) for i in indices]
    return list(indices)
