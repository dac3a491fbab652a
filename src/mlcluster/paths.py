"""Where the project's files and its per-run state live."""

from __future__ import annotations

import os
from pathlib import Path


def project_root() -> Path:
    """The repository root: ``MLCLUSTER_ROOT`` or the checkout this package runs from."""
    env = os.environ.get("MLCLUSTER_ROOT")
    if env:
        return Path(env).resolve()
    return Path(__file__).resolve().parents[2]


def state_dir() -> Path:
    """Per-checkout state: run directories, local clusters' keys and image build files."""
    env = os.environ.get("MLCLUSTER_STATE")
    path = Path(env) if env else project_root() / ".mlcluster"
    path.mkdir(parents=True, exist_ok=True)
    return path


def venv_bin() -> Path:
    """Directory of the running interpreter's scripts (ansible-playbook lives there)."""
    import sys

    return Path(sys.executable).parent
