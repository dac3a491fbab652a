"""Shared helpers of the bake tests: the version manifest, ansible-playbook runs, podman nodes."""

from __future__ import annotations

import contextlib
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from mlcluster import podman as mlcluster_podman
from mlcluster.inputs import ansible_env
from mlcluster.runner import RunState

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def versions() -> dict:
    return yaml.safe_load((ROOT / "versions.yml").read_text())["mlcluster_versions"]


@dataclass
class PlaybookRun:
    status: str
    rc: int
    stats: dict
    changed_tasks: list[str] = field(default_factory=list)
    stdout: str = ""
    # What the play recorded with set_stats (per_host: false), from the final stats event.
    custom_stats: dict = field(default_factory=dict)

    def changed(self, host: str | None = None) -> int:
        counts = self.stats.get("changed") or {}
        return counts.get(host, 0) if host else sum(counts.values())


def run_playbook(
    playbook: Path,
    inventory: Path,
    tmp_path: Path,
    *,
    check: bool = False,
    extravars: dict | None = None,
    skip_tags: str = "",
) -> PlaybookRun:
    """Run ``playbook`` through ansible-runner (own private data dir, the project's ansible.cfg)
    and return its stats and the names of the tasks that reported a change."""
    import ansible_runner

    # The CLI's event handling (stats, set_stats data, changed tasks) and Ansible environment.
    state = RunState()
    private = tmp_path / f"runner-{playbook.stem}-{len(list(tmp_path.glob('runner-*')))}"
    private.mkdir(parents=True)
    result = ansible_runner.run(
        private_data_dir=str(private),
        playbook=str(playbook),
        inventory=str(inventory),
        extravars=extravars or {},
        cmdline=" ".join(
            (["--check"] if check else []) + ([f"--skip-tags={skip_tags}"] if skip_tags else [])
        )
        or None,
        envvars=ansible_env(),
        event_handler=state.handle,
        quiet=True,
    )
    stdout = result.stdout.read() if result.stdout else ""
    return PlaybookRun(
        result.status,
        result.rc,
        result.stats or {},
        state.changed_tasks,
        stdout,
        state.custom_stats,
    )


def podman(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        ["podman", *args], capture_output=True, text=True, check=False, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)}: {proc.stderr.strip()}")
    return proc


def heal_exec(name: str) -> None:
    """`podman exec` into the node works: the product's podman.run recreates a container cgroup
    that something on a cgroup v1 host deleted (podman.heal_lost_cgroup) and tries again."""
    proc = mlcluster_podman.run(["exec", name, "true"], check=False)
    if proc.returncode != 0:
        raise AssertionError(f"podman exec {name} failed: {proc.stderr.strip()}")


@contextlib.contextmanager
def systemd_node(image: str, name: str, hostname: str):
    """A throwaway node as the local cluster starts them (privileged, systemd as PID 1, private
    cgroup namespace), running until systemd is up; removed afterwards."""
    podman(
        "run",
        "-d",
        "--name",
        name,
        "--hostname",
        hostname,
        "--systemd=always",
        "--privileged",
        "--cgroupns=private",
        "--tmpfs",
        "/tmp:rw,exec",
        image,
    )
    try:
        deadline = time.monotonic() + 120
        while podman(
            "exec", name, "systemctl", "is-system-running", check=False
        ).stdout.strip() not in {"running", "degraded"}:
            assert time.monotonic() < deadline, "systemd in the node did not come up within 120 s"
            heal_exec(name)
            time.sleep(1)
        yield name
    finally:
        podman("rm", "-f", "-t", "5", name, check=False)
