"""`local down` removes exactly what `local up` created.

Runs last (file order): starting and removing a cluster's network while another cluster is in
use has cut the other cluster's nodes off on podman 4.3 hosts, so the clusters that tests use
(the session's `ci`, molecule's, Slurm's) are each used while no other network is created.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .conftest import Cluster, mlcluster, podman_names

pytestmark = pytest.mark.integration


def test_down_removes_everything(tmp_path):
    """A cluster of its own, so the session's cluster stays up for the other tests."""
    name = "skeldown"
    state = Path(os.environ["MLCLUSTER_STATE"])
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
