"""Import the collection's plugins as plain modules for unit tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from mlcluster.paths import project_root

PLUGINS = project_root() / "collections" / "ansible_collections" / "mlcluster" / "core" / "plugins"


def load_plugin(kind: str, name: str):
    # The plugins import the collection's module_utils as Ansible does
    # (ansible_collections.mlcluster.core.plugins.module_utils...): collections/ on the path
    # extends the ansible_collections namespace package.
    if str(PLUGINS.parents[3]) not in sys.path:
        sys.path.append(str(PLUGINS.parents[3]))
    path = Path(PLUGINS / kind / f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"mlcluster_test_{kind}_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
