"""`local down` removes exactly what `local up` created.

Runs last (file order): starting and removing a cluster's network while another cluster is in
use has cut the other cluster's nodes off on podman 4.3 hosts, so the clusters that tests use
(the session's `ci`, molecule's, Slurm's) are each used while no other network is created.
"""

from __future__ import annotations

import os
import shutil
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
    # Its state lost while its containers stay, stopped (a run killed before a reboot): up
    # makes the nodes anew (nothing here holds the old ones' keys) instead of failing on them.
    old_ids = set(podman_names("container", label))
    subprocess.run(
        ["podman", "stop", "-t", "5", *old_ids], check=True, capture_output=True, timeout=120
    )
    shutil.rmtree(state / "clusters" / name)
    again = mlcluster("local", "up", "--name", name, "--computes", "1")
    assert (
        f"cluster {name}: no state recorded here; removing its containers left from an earlier "
        f"run: {name}-compute1, {name}-controller, {name}-login1"
    ) in again.stdout
    rows = Cluster(name, state).status()
    assert [(r["hostname"], r["state"]) for r in rows] == [
        ("compute1", "running"),
        ("controller", "running"),
    ]
    assert Cluster(name, state).ssh("controller", "hostname").stdout.strip() == "controller"
    mlcluster("local", "down", "--name", name)
    assert podman_names("container", label) == []
    assert podman_names("network", label) == []
    assert podman_names("volume", label) == []
    assert not (state / "clusters" / name).exists()
    assert "not up" in mlcluster("local", "status", "--name", name).stdout
