"""Ansible's collection loader for the project's collection, as ansible-inventory sets it up."""

from __future__ import annotations

import sys

from ansible.plugins.loader import init_plugin_loader
from ansible.utils.collection_loader import AnsibleCollectionConfig

from mlcluster.paths import project_root


def init_collection_loader() -> None:
    """Install the loader once per process.

    Other tests import the collection's modules as plain packages (collections/ on sys.path,
    mlcluster.paths.load_plugin); those sys.modules entries would hide mlcluster.core from the
    loader, so they are dropped first. The modules that already hold them keep working.
    """
    if AnsibleCollectionConfig.collection_finder is not None:
        return
    for name in [
        m for m in sys.modules if m.split(".")[:2] == ["ansible_collections", "mlcluster"]
    ]:
        del sys.modules[name]
    init_plugin_loader([str(project_root() / "collections")])
