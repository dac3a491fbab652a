"""Shared helpers of the bake tests: the version manifest, the plugins, ansible-playbook runs."""

from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PLUGINS = ROOT / "collections" / "ansible_collections" / "mlcluster" / "core" / "plugins"


def load_plugin(kind: str, name: str):
    """Import a collection plugin (filter, module) as a plain Python module.

    Its ``ansible_collections.mlcluster.core.plugins.module_utils`` imports resolve as in
    Ansible once ``collections/`` is on the path (``ansible_collections`` is a namespace
    package, shared with the collections of the ``ansible`` package)."""
    if str(ROOT / "collections") not in sys.path:
        sys.path.append(str(ROOT / "collections"))
    spec = importlib.util.spec_from_file_location(
        f"mlcluster_bake_test_{kind}_{name}", PLUGINS / kind / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
) -> PlaybookRun:
    """Run ``playbook`` through ansible-runner (own private data dir, the project's ansible.cfg)
    and return its stats and the names of the tasks that reported a change."""
    import ansible_runner

    changed_tasks: list[str] = []

    def on_event(event: dict) -> bool:
        data = event.get("event_data") or {}
        if event.get("event") == "runner_on_ok" and (data.get("res") or {}).get("changed"):
            changed_tasks.append(f"{data.get('host')}: {data.get('task')}")
        return True

    private = tmp_path / f"runner-{playbook.stem}-{len(list(tmp_path.glob('runner-*')))}"
    private.mkdir(parents=True)
    result = ansible_runner.run(
        private_data_dir=str(private),
        playbook=str(playbook),
        inventory=str(inventory),
        extravars=extravars or {},
        cmdline="--check" if check else None,
        envvars={
            "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        },
        event_handler=on_event,
        quiet=True,
    )
    stdout = result.stdout.read() if result.stdout else ""
    return PlaybookRun(result.status, result.rc, result.stats or {}, changed_tasks, stdout)
