"""The test cases across two compute nodes of the local cluster, submitted through sbatch."""

from __future__ import annotations

import json

import pytest

from .conftest import mlcluster

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("case", ["ddp", "fsdp", "jax"])
def test_case_trains_across_two_nodes(cluster, deploys, tmp_path, case):
    report = tmp_path / f"{case}.json"
    proc = mlcluster(
        "run", case, "-i", str(cluster.inventory), "--nodes", "2", "--report", str(report)
    )
    assert f"{case} (job " in proc.stdout and "COMPLETED" in proc.stdout
    data = json.loads(report.read_text())
    assert data["state"] == "COMPLETED"
    summary = data["summary"]
    # Two nodes, one rank each: the gradients really crossed the network.
    assert summary["world_size"] == 2
    assert len(data["steps"]) == summary["steps"] > 0
    assert summary["final_loss"] < 0.8 * summary["first_loss"]
    assert summary["samples_per_s"] > 0 and summary["tflops_per_device"] > 0
    # CPU nodes have no peak in the table: MFU is unknown, not a made-up number.
    assert summary["mfu"] is None
    if case == "fsdp":
        assert summary["tokens_per_s"] > 0
    hosts = cluster.ssh("controller", f"sacct -n -X -P -j {data['job_id']} -o NodeList,State")
    assert hosts.stdout.split() == ["compute[1-2]|COMPLETED"]
