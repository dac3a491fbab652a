"""What a node holds, decided in one place: container or not, accelerator devices on the PCI
bus, local NVMe drives, loaded driver versions, the baked image manifest, libfabric's efa
provider, and from those which accelerator role's configure phase applies.

Shared by the modules ``node_facts`` (the facts every role reads) and ``image_manifest`` (the
bake's read-back), and by the ``accelerator_plan`` filter. The readers take the root of the
tree they read (``sysfs_root``, ``root``) so that tests and stub device trees can point them
elsewhere; nothing here changes the system.
"""

from __future__ import annotations

import glob
import json
import os
import re

from ansible_collections.mlcluster.core.plugins.module_utils.parsers import (
    kernel_module_version,
    parse_first_version,
    parse_proc_driver_version,
)

NVIDIA_VENDOR = "0x10de"
AMAZON_VENDOR = "0x1d0f"
# Elastic Fabric Adapter generations (efa kernel driver, drivers/infiniband/hw/efa/efa_main.c).
EFA_DEVICE_IDS = frozenset({"0xefa0", "0xefa1", "0xefa2", "0xefa3"})
# Neuron devices by PCI device id (aws-neuron-driver, neuron_device.h / neuron_pci.c).
NEURON_DEVICE_IDS = {
    "0x7064": "inferentia",
    "0x7065": "inferentia",
    "0x7066": "inferentia",
    "0x7067": "inferentia",
    "0x7164": "trainium",
    "0x7264": "inferentia2",
    "0x7364": "trainium2",
    "0x7564": "trainium3",
    "0x7565": "trainium3",
}
# EBS volumes are NVMe devices too; instance store drives are the local ones.
EBS_NVME_MODEL = "Amazon Elastic Block Store"
DEFAULT_MANIFEST = "/etc/mlcluster/manifest.json"
# Kernel modules whose version the node facts report (from <sysfs>/module/<name>/version).
DRIVER_MODULES = ("nvidia", "efa", "neuron", "gdrdrv", "lustre")


def read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return None


# ---------------------------------------------------------------------------------------------
# Container or not
# ---------------------------------------------------------------------------------------------


def container_manager(root: str = "/") -> str | None:
    """The container manager this node runs under ('podman', 'docker', ...), None outside one.

    The one definition every role and module uses. It follows what ``systemd-detect-virt
    --container`` reads, in its order, without needing systemd or the binary: the manager
    systemd records (/run/systemd/container, /run/host/container-manager), PID 1's
    ``container=`` environment variable, then the engines' marker files (/run/.containerenv
    for podman, /.dockerenv for docker). cgroup paths are not used: with a private cgroup
    namespace (the local cluster's nodes) they look like a host's.
    """

    def under(path: str) -> str:
        return os.path.join(root, path.lstrip("/"))

    for path in ("/run/systemd/container", "/run/host/container-manager"):
        value = (read_text(under(path)) or "").strip()
        if value:
            return value.splitlines()[0]
    environ = read_text(under("/proc/1/environ")) or ""
    for entry in environ.split("\0"):
        if entry.startswith("container=") and entry[len("container=") :]:
            return entry[len("container=") :]
    if os.path.exists(under("/run/.containerenv")):
        return "podman"
    if os.path.exists(under("/.dockerenv")):
        return "docker"
    return None


def in_container(root: str = "/") -> bool:
    return container_manager(root) is not None


# ---------------------------------------------------------------------------------------------
# PCI devices
# ---------------------------------------------------------------------------------------------


def pci_devices(sysfs_root: str = "/sys") -> list[dict]:
    """Every device under <sysfs_root>/bus/pci/devices: address, vendor, device, class, driver."""
    devices = []
    for path in sorted(glob.glob(os.path.join(sysfs_root, "bus", "pci", "devices", "*"))):
        driver = os.path.join(path, "driver")
        devices.append(
            {
                "address": os.path.basename(path),
                "vendor": (read_text(os.path.join(path, "vendor")) or "").strip().lower(),
                "device": (read_text(os.path.join(path, "device")) or "").strip().lower(),
                "class": (read_text(os.path.join(path, "class")) or "").strip().lower(),
                "driver": os.path.basename(os.path.realpath(driver))
                if os.path.islink(driver)
                else None,
            }
        )
    return devices


def classify_pci(devices: list[dict]) -> dict[str, list[dict]]:
    """The accelerator devices among ``devices``.

    NVIDIA (vendor 0x10de) display/3D controllers (class 0x03xxxx) are GPUs, its bridges of
    class 0x0680xx are NVSwitches; Amazon (0x1d0f) devices 0xefa0-0xefa3 are EFA adapters and
    the NEURON_DEVICE_IDS are Inferentia/Trainium devices.
    """
    found: dict[str, list[dict]] = {"nvidia_gpus": [], "nvswitches": [], "efa": [], "neuron": []}
    for dev in devices:
        entry = {"address": dev["address"], "device": dev["device"], "driver": dev["driver"]}
        if dev["vendor"] == NVIDIA_VENDOR and dev["class"].startswith("0x03"):
            found["nvidia_gpus"].append(entry)
        elif dev["vendor"] == NVIDIA_VENDOR and dev["class"].startswith("0x0680"):
            found["nvswitches"].append(entry)
        elif dev["vendor"] == AMAZON_VENDOR and dev["device"] in EFA_DEVICE_IDS:
            found["efa"].append(entry)
        elif dev["vendor"] == AMAZON_VENDOR and dev["device"] in NEURON_DEVICE_IDS:
            found["neuron"].append({**entry, "kind": NEURON_DEVICE_IDS[dev["device"]]})
    return found


def device_counts(classified: dict[str, list[dict]]) -> dict[str, int]:
    return {
        "nvidia_gpus": len(classified["nvidia_gpus"]),
        "nvswitches": len(classified["nvswitches"]),
        "efa_devices": len(classified["efa"]),
        "neuron_devices": len(classified["neuron"]),
    }


def probe_hardware(sysfs_root: str = "/sys") -> dict[str, int]:
    """Accelerator device counts on the PCI bus (the image manifest's ``hardware``)."""
    return device_counts(classify_pci(pci_devices(sysfs_root)))


# ---------------------------------------------------------------------------------------------
# Local NVMe drives, driver versions, the image manifest
# ---------------------------------------------------------------------------------------------


def parse_mounts(text: str) -> dict[str, list[str]]:
    """/proc/self/mounts -> {device: [mount points]} (octal escapes such as \\040 decoded)."""
    mounts: dict[str, list[str]] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].startswith("/dev/"):
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), parts[1])
            mounts.setdefault(parts[0], []).append(point)
    return mounts


def nvme_drives(sysfs_root: str = "/sys", mounts_text: str = "") -> list[dict]:
    """NVMe namespaces under <sysfs_root>/block: model, size, local (instance store, not EBS)
    and where they or their partitions are mounted."""
    mounts = parse_mounts(mounts_text)
    drives = []
    for path in sorted(glob.glob(os.path.join(sysfs_root, "block", "nvme*"))):
        name = os.path.basename(path)
        model = (read_text(os.path.join(path, "device", "model")) or "").strip()
        sectors = (read_text(os.path.join(path, "size")) or "0").strip()
        points = [
            point
            for device, device_points in sorted(mounts.items())
            if device == f"/dev/{name}" or re.match(rf"^/dev/{re.escape(name)}p\d+$", device)
            for point in device_points
        ]
        drives.append(
            {
                "name": name,
                "model": model,
                "size_bytes": int(sectors) * 512 if sectors.isdigit() else 0,
                "local": EBS_NVME_MODEL not in model,
                "mountpoints": points,
            }
        )
    return drives


def driver_versions(sysfs_root: str = "/sys", proc_root: str = "/proc") -> dict[str, str | None]:
    """Versions of the loaded kernel modules (None when not loaded or unversioned)."""
    versions = {name: kernel_module_version(read_text, name, sysfs_root) for name in DRIVER_MODULES}
    if versions["nvidia"] is None:
        versions["nvidia"] = parse_proc_driver_version(
            read_text(os.path.join(proc_root, "driver", "nvidia", "version")) or ""
        )
    return versions


def read_manifest(path: str = DEFAULT_MANIFEST) -> dict:
    """What the baked image says it holds: flavour and the components read back as present."""
    text = read_text(path)
    if text is None:
        return {
            "present": False,
            "path": path,
            "flavor": None,
            "components": [],
            "reason": f"no image manifest at {path}",
        }
    try:
        data = json.loads(text)
    except ValueError as exc:
        return {
            "present": False,
            "path": path,
            "flavor": None,
            "components": [],
            "reason": f"{path} is not JSON ({exc})",
        }
    components = data.get("components") or {}
    return {
        "present": True,
        "path": path,
        "flavor": data.get("flavor"),
        "components": sorted(
            name for name, info in components.items() if (info or {}).get("present")
        ),
        "versions": {
            name: (info or {}).get("version")
            for name, info in sorted(components.items())
            if (info or {}).get("present")
        },
        "reason": None,
    }


def efa_provider_result(fi_info: str | None, rc: int, out: str, err: str) -> dict:
    """Whether ``fi_info -p efa`` found libfabric's efa provider, and why not."""
    if fi_info is None:
        return {"present": False, "fi_info": None, "reason": "fi_info (libfabric) not installed"}
    if rc == 0:
        domains = re.findall(r"^\s*domain:\s*(\S+)", out, re.MULTILINE)
        return {
            "present": True,
            "fi_info": fi_info,
            "reason": "efa provider found"
            + (f" ({', '.join(sorted(set(domains)))})" if domains else ""),
        }
    lines = [line.strip() for line in (err + "\n" + out).splitlines() if line.strip()]
    return {
        "present": False,
        "fi_info": fi_info,
        "reason": f"fi_info -p efa: {lines[0] if lines else f'exit status {rc}'}",
    }


def node_facts(
    sysfs_root: str = "/sys",
    manifest_path: str = DEFAULT_MANIFEST,
    root: str = "/",
    efa_probe: dict | None = None,
) -> dict:
    """The ``mlcluster_node`` facts (see the node_facts module's RETURN)."""
    classified = classify_pci(pci_devices(sysfs_root))
    manager = container_manager(root)
    mounts = read_text(os.path.join(root, "proc", "self", "mounts")) or ""
    drives = nvme_drives(sysfs_root, mounts)
    return {
        "in_container": manager is not None,
        "container_manager": manager,
        "sysfs_root": sysfs_root,
        "pci": classified,
        "counts": device_counts(classified),
        "nvme": drives,
        "local_nvme_mounts": sorted(
            {point for drive in drives if drive["local"] for point in drive["mountpoints"]}
        ),
        "drivers": driver_versions(sysfs_root, os.path.join(root, "proc")),
        "manifest": read_manifest(manifest_path),
        "efa_provider": efa_probe
        or {"present": False, "fi_info": None, "reason": "fi_info -p efa not run"},
        "os": " ".join(
            filter(
                None,
                [
                    parse_first_version(
                        read_text(os.path.join(root, "etc", "os-release")) or "",
                        pattern,
                    )
                    for pattern in (r'^NAME="?([^"\n]+)', r'^VERSION_ID="?([^"\n]+)')
                ],
            )
        ),
    }


# ---------------------------------------------------------------------------------------------
# Which accelerator role applies: decided from the facts only
# ---------------------------------------------------------------------------------------------

# Role -> the device it needs (a key of ``counts``) and how a missing one is said.
NEEDS_DEVICE = {
    "nvidia_driver": ("nvidia_gpus", "no NVIDIA GPU on the PCI bus"),
    "cuda_toolkit": ("nvidia_gpus", "no NVIDIA GPU on the PCI bus"),
    "nccl": ("nvidia_gpus", "no NVIDIA GPU on the PCI bus"),
    "gdrcopy": ("nvidia_gpus", "no NVIDIA GPU on the PCI bus"),
    "dcgm": ("nvidia_gpus", "no NVIDIA GPU on the PCI bus"),
    "efa": ("efa_devices", "no EFA device on the PCI bus"),
    "aws_ofi_nccl": ("efa_devices", "no EFA device on the PCI bus"),
    "neuron": ("neuron_devices", "no Neuron device on the PCI bus"),
}
# The configure layer's roles, in the order they run (the driver before what uses it).
PLAN_ROLES = (
    "tuning",
    "nvidia_driver",
    "cuda_toolkit",
    "nccl",
    "efa",
    "aws_ofi_nccl",
    "gdrcopy",
    "dcgm",
    "neuron",
    "container_runtime",
    "enroot_pyxis",
    "lustre_client",
)
CONFIGURED = "configured"


def accelerator_plan(
    node: dict, lustre_mounts: list | None = None, fabricmanager: str = "auto"
) -> list[dict]:
    """One entry per configure-layer role (and Fabric Manager): whether it runs here and why not.

    Each entry is ``{name, role, configure, status}``; ``role`` is the role whose configure
    phase runs (None for Fabric Manager, which nvidia_driver starts itself), ``status`` is
    "configured" or "not applicable: <reason>". A role applies when the image holds its
    component (the manifest's read-back) and the node has the device it needs. Fabric Manager
    follows ``nvidia_driver_fabricmanager`` (auto: where NVSwitches are on the PCI bus).
    """
    manifest = node.get("manifest") or {}
    counts = node.get("counts") or {}
    components = set(manifest.get("components") or [])
    flavour = manifest.get("flavor") or "unknown"

    def reason(role: str) -> str | None:
        if not manifest.get("present"):
            return manifest.get("reason") or "no image manifest"
        if role not in components:
            return f"not in the image (flavour {flavour})"
        if role in NEEDS_DEVICE and not counts.get(NEEDS_DEVICE[role][0]):
            why = NEEDS_DEVICE[role][1]
            if role == "efa":
                why += f"; {(node.get('efa_provider') or {}).get('reason')}"
            return why
        if role == "lustre_client" and not lustre_mounts:
            return "no lustre_client_mounts in the inventory"
        if role == "lustre_client" and node.get("in_container"):
            return "in a container (the Lustre kernel module belongs to the host)"
        return None

    plan = []
    for role in PLAN_ROLES:
        why = reason(role)
        plan.append(
            {
                "name": role,
                "role": role,
                "configure": why is None,
                "status": CONFIGURED if why is None else f"not applicable: {why}",
            }
        )
        if role == "nvidia_driver":
            fm_why = why
            if fm_why is None and fabricmanager == "never":
                fm_why = "nvidia_driver_fabricmanager is never"
            elif fm_why is None and fabricmanager == "auto" and not counts.get("nvswitches"):
                fm_why = "no NVSwitch on the PCI bus"
            plan.append(
                {
                    "name": "fabricmanager",
                    "role": None,
                    "configure": False,
                    "status": CONFIGURED if fm_why is None else f"not applicable: {fm_why}",
                }
            )
    return plan
