"""Stub device trees for the node facts: a sysfs layout with the files node_facts reads.

Only for the decision logic (which role applies where): no driver, library or service
behind these devices exists.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

# An 8-GPU NVSwitch system with one EFA adapter (the shape of a p4d/p5 node, scaled down).
H100_GPU = ("0x10de", "0x2330", "0x030200")
NVSWITCH = ("0x10de", "0x22a3", "0x068000")
EFA = ("0x1d0f", "0xefa1", "0x020000")
TRAINIUM = ("0x1d0f", "0x7164", "0x088000")
OTHER_NIC = ("0x8086", "0x1521", "0x020000")


def add_pci_device(sysfs: Path, address: str, ids: tuple[str, str, str], driver: str = "") -> None:
    device = sysfs / "bus" / "pci" / "devices" / address
    device.mkdir(parents=True, exist_ok=True)
    for name, value in zip(("vendor", "device", "class"), ids, strict=True):
        (device / name).write_text(value + "\n")
    if driver:
        target = sysfs / "bus" / "pci" / "drivers" / driver
        target.mkdir(parents=True, exist_ok=True)
        # Relative, as in sysfs, so that the tree can be copied into a node.
        (device / "driver").symlink_to(os.path.relpath(target, device))


def add_nvme(sysfs: Path, name: str, model: str, sectors: int) -> None:
    block = sysfs / "block" / name
    (block / "device").mkdir(parents=True, exist_ok=True)
    (block / "device" / "model").write_text(model.ljust(40) + "\n")
    (block / "size").write_text(f"{sectors}\n")


def gpu_node_sysfs(sysfs: Path, gpus: int = 8, nvswitches: int = 4, efa: int = 1) -> Path:
    """A sysfs tree with ``gpus`` H100s, ``nvswitches`` NVSwitches and ``efa`` EFA adapters."""
    for index in range(gpus):
        add_pci_device(sysfs, f"0000:{0x10 + index:02x}:00.0", H100_GPU, "nvidia")
    for index in range(nvswitches):
        add_pci_device(sysfs, f"0000:{0x30 + index:02x}:00.0", NVSWITCH)
    for index in range(efa):
        add_pci_device(sysfs, f"0000:{0x50 + index:02x}:00.0", EFA, "efa")
    add_pci_device(sysfs, "0000:00:03.0", OTHER_NIC)
    return sysfs


def flavour_manifest(path: Path, flavor: str, components: list[str]) -> Path:
    """An image manifest as bake_verify writes it, every component present."""
    path.write_text(
        json.dumps(
            {
                "schema": 1,
                "flavor": flavor,
                "components": {name: {"present": True, "version": "stub"} for name in components},
            }
        )
    )
    return path
