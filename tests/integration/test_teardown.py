"""`local down` removes exactly what `local up` created.

Runs last (file order): starting and removing a cluster's network while another cluster is in
use has cut the other cluster's nodes off on podman 4.3 hosts, so the clusters that tests use
(the session's `ci`, molecule's, Slurm's) are each used while no other network is created.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from .conftest import Cluster, mlcluster, podman_names

pytestmark = pytest.mark.integration


def test_down_removes_everything(tmp_path):
    """A cluster of its own, so the session's cluster stays up for the other tests."""
    name = "skeldown"
    state = Path(os.environ["MLCLUSTER_STATE"])
    # A volume of the cluster's name that is not the cluster's: up refuses it, down leaves it.
    subprocess.run(["podman", "volume", "create", f"{name}-fsx"], check=True, capture_output=True)
    try:
        refused = mlcluster("local", "up", "--name", name, "--computes", "1", check=False)
        assert refused.returncode != 0
        assert (
            f"a podman volume named {name}-fsx exists but is not cluster {name}'s (it has no "
            f"label io.mlcluster.cluster={name})"
        ) in refused.stderr
        mlcluster("local", "down", "--name", name)
        assert subprocess.run(["podman", "volume", "exists", f"{name}-fsx"]).returncode == 0
    finally:
        subprocess.run(["podman", "volume", "rm", f"{name}-fsx"], check=True, capture_output=True)
    mlcluster("local", "up", "--name", name, "--computes", "1", "--login")
    rows = Cluster(name, state).status()
    assert sorted(r["hostname"] for r in rows) == ["compute1", "controller", "login1"]
    label = f"io.mlcluster.cluster={name}"
    assert len(podman_names("container", label)) == 3
    mlcluster("local", "down", "--name", name)
    assert podman_names("container", label) == []
    assert podman_names("network", label) == []
    assert podman_names("volume", label) == []
    assert not (state / "clusters" / name).exists()
    assert "not up" in mlcluster("local", "status", "--name", name).stdout
