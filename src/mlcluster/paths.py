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


def collection_plugins() -> Path:
    """The plugins directory of the project's collection, mlcluster.core."""
    return project_root() / "collections" / "ansible_collections" / "mlcluster" / "core" / "plugins"


def load_plugin(kind: str, name: str):
    """Import a plugin of the collection (``kind``: filter, modules, inventory, ...) as a plain
    Python module, a fresh one each call.

    Its ``ansible_collections.mlcluster.core.plugins.module_utils`` imports resolve as in Ansible
    once ``collections/`` is on the path (``ansible_collections`` is a namespace package, shared
    with the collections of the ``ansible`` package)."""
    import importlib.util
    import sys

    collections = str(collection_plugins().parents[3])
    if collections not in sys.path:
        sys.path.append(collections)
    path = collection_plugins() / kind / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"mlcluster_core_{kind}_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
