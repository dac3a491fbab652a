"""Fixtures that start a local cluster through the CLI and always tear it down."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mlcluster.local import ssh_options

ROOT = Path(__file__).resolve().parents[2]


def mlcluster(*args: str, check: bool = True, timeout: float = 1800) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "mlcluster.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"mlcluster {' '.join(args)} exited {proc.returncode}\n"
            f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
        )
    return proc


class Cluster:
    def __init__(self, name: str, state_dir: Path):
        self.name = name
        self.state_dir = state_dir

    @property
    def inventory(self) -> Path:
        return self.state_dir / "clusters" / self.name / "inventory"

    @property
    def key(self) -> Path:
        return self.state_dir / "clusters" / self.name / "id_ed25519"

    def status(self) -> list[dict]:
        return json.loads(mlcluster("local", "status", "--name", self.name, "--json").stdout)

    def ip(self, hostname: str) -> str:
        return next(r["ip"] for r in self.status() if r["hostname"] == hostname)

    def ssh(self, hostname: str, command: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [
                "ssh",
                *ssh_options(self.key),
                f"root@{self.ip(hostname)}",
                command,
            ],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"{hostname}: {command} exited {proc.returncode}: {proc.stderr}")
        return proc


def podman_names(kind: str, label: str) -> list[str]:
    fmt = {"container": "{{.Names}}", "network": "{{.Name}}", "volume": "{{.Name}}"}[kind]
    cmd = {"container": ["ps", "-a"], "network": ["network", "ls"], "volume": ["volume", "ls"]}
    out = subprocess.run(
        ["podman", *cmd[kind], "--filter", f"label={label}", "--format", fmt],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.split()


CLUSTER = "ci"


@pytest.fixture(scope="session")
def cluster():
    """One local cluster for the whole integration session (started through the CLI)."""
    import os

    state = Path(os.environ["MLCLUSTER_STATE"])
    mlcluster("local", "up", "--name", CLUSTER)
    yield Cluster(CLUSTER, state)
    mlcluster("local", "down", "--name", CLUSTER, check=False)


@pytest.fixture(scope="session")
def deploys(cluster, tmp_path_factory):
    """site.yml deployed twice on the session's cluster; the two JSON reports."""
    reports = []
    for i in (1, 2):
        path = tmp_path_factory.mktemp("deploy") / f"r{i}.json"
        mlcluster("deploy", "-i", str(cluster.inventory), "--report", str(path))
        reports.append(json.loads(path.read_text()))
    return reports
