"""`local down` removes exactly what `local up` created; no secret in what the session wrote.

Runs last (file order): starting and removing a cluster's network while another cluster is in
use has cut the other cluster's nodes off on podman 4.3 hosts, so the clusters that tests use
(the session's `ci`, molecule's, Slurm's) are each used while no other network is created.
"""

from __future__ import annotations

import base64
import json
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
    mlcluster("local", "down", "--name", name)
    assert podman_names("container", label) == []
    assert podman_names("network", label) == []
    assert podman_names("volume", label) == []
    assert not (state / "clusters" / name).exists()
    assert "not up" in mlcluster("local", "status", "--name", name).stdout


def test_up_after_lost_state_makes_the_nodes_anew():
    """Its state lost while its containers stay, stopped (a run killed before a reboot): up
    makes the nodes anew (nothing here holds the old ones' keys) instead of failing on them."""
    name = "skellost"
    state = Path(os.environ["MLCLUSTER_STATE"])
    label = f"io.mlcluster.cluster={name}"
    try:
        mlcluster("local", "up", "--name", name, "--computes", "1", "--login")
        old_ids = set(podman_names("container", label))
        subprocess.run(
            ["podman", "stop", "-t", "5", *old_ids], check=True, capture_output=True, timeout=120
        )
        shutil.rmtree(state / "clusters" / name)
        again = mlcluster("local", "up", "--name", name, "--computes", "1")
        assert (
            f"cluster {name}: no state recorded here; removing its containers left from an earlier "
            f"run: {name}-compute1, {name}-controller, {name}-login1"
        ) in again.stderr
        rows = Cluster(name, state).status()
        assert [(r["hostname"], r["state"]) for r in rows] == [
            ("compute1", "running"),
            ("controller", "running"),
        ]
        assert Cluster(name, state).ssh("controller", "hostname").stdout.strip() == "controller"
    finally:
        mlcluster("local", "down", "--name", name, check=False)
    assert podman_names("container", label) == []


def _forms(secret: bytes) -> dict[str, bytes]:
    """The forms a leaked secret takes in a log or a JSON event: as it is, base64 (slurp's
    content), hex; for text, its JSON-escaped form."""
    forms = {"raw": secret, "base64": base64.b64encode(secret), "hex": secret.hex().encode()}
    if secret.isascii():
        forms["json"] = json.dumps(secret.decode())[1:-1].encode()
    return forms


def _leaks(roots: list[Path], secrets: dict[str, bytes], skip: set[Path]) -> tuple[list[str], int]:
    found, scanned = [], 0
    for root in roots:
        for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
            if path in skip:
                continue
            data = path.read_bytes()
            scanned += 1
            for name, secret in secrets.items():
                for form, needle in _forms(secret).items():
                    if needle in data:
                        found.append(f"{name} ({form}) in {path}")
    return found, scanned


def test_no_secret_in_any_run_artifact_report_or_output(cluster, deploys, tmp_path_factory):
    """Runs last: every ansible-runner run of the session (kept: MLCLUSTER_KEEP_RUNS), the fact
    cache, the reports and outputs the tests wrote, searched for the session cluster's MUNGE
    key, slurmdbd's database password and the private SSH keys, in each form they would leak in.
    The keys' own files (the cluster's key, the nodes' host keys) are the only copies allowed."""
    state = Path(os.environ["MLCLUSTER_STATE"])
    encoded = cluster.ssh("controller", "base64 -w0 /etc/munge/munge.key").stdout
    munge_key = base64.b64decode(encoded)
    assert len(munge_key) == 128  # munge_key_bits 1024
    db_pass = cluster.ssh("controller", "cat /etc/slurm/slurmdbd.storage-pass").stdout.strip()
    assert len(db_pass) >= 16
    own = cluster.key.parent
    private_keys = [cluster.key, *sorted((own / "hostkeys").glob("*/ssh_host_ed25519_key"))]
    secrets = {"munge.key": munge_key, "slurmdbd password": db_pass.encode()}
    for key in private_keys:
        # The key's body (the lines between the armour), which is what a copy would hold.
        body = "".join(key.read_text().splitlines()[1:-1])
        secrets[f"private key {key.relative_to(state)}"] = body.encode()
    roots = [state, tmp_path_factory.getbasetemp()]
    runs = [p for p in (state / "runs").iterdir() if (p / "artifacts").is_dir()]
    # The scan covers the session's deploys (site.yml twice at least, where the key is made and
    # handed out) and would see a leak: a copy planted in a run's artifacts is found.
    assert len(runs) >= 2
    planted = runs[0] / "artifacts" / "planted.json"
    planted.write_text(json.dumps({"res": {"content": base64.b64encode(munge_key).decode()}}))
    found, _ = _leaks([runs[0]], secrets, set())
    assert found == [f"munge.key (base64) in {planted}"]
    planted.unlink()
    found, scanned = _leaks(roots, secrets, set(private_keys))
    assert scanned > 100
    assert found == []
