"""The configure layer (playbooks/accelerators.yml) on one node of the local cluster's image.

(a) On the CPU node every accelerator role reports "not applicable: <reason>" (tuning, which
    the local image holds and which needs no device, is configured), a second run changes
    nothing, and check mode passes on the fresh node.
(b) The same node given a stub device tree (8 NVIDIA GPUs, 4 NVSwitches, 1 EFA adapter) and a
    gpu-flavour image manifest, in check mode with the roles skipped
    (--skip-tags accelerators_roles): the decisions say nvidia_driver, Fabric Manager, DCGM and
    container_runtime would be configured. The stub is only for the decision logic: there is no
    driver, library or service behind those devices, so no role runs against it.

The node image is the newest localhost/mlcluster-node (`mlcluster bake local`), or
MLCLUSTER_ACCEL_TEST_IMAGE.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

from .conftest import ROOT, heal_exec, podman, run_playbook, systemd_node
from .stub_devices import flavour_manifest, gpu_node_sysfs

pytestmark = pytest.mark.integration

PLAYBOOK = ROOT / "playbooks" / "accelerators.yml"
IMAGE = os.environ.get("MLCLUSTER_ACCEL_TEST_IMAGE", "")
GPU_FLAVOUR = [
    "tuning",
    "nvidia_driver",
    "cuda_toolkit",
    "nccl",
    "efa",
    "aws_ofi_nccl",
    "gdrcopy",
    "dcgm",
    "container_runtime",
    "enroot_pyxis",
    "lustre_client",
]


def newest_node_image() -> str:
    out = podman(
        "images",
        "--filter",
        "reference=localhost/mlcluster-node",
        "--sort",
        "created",
        "--format",
        "{{.Repository}}:{{.Tag}}",
    ).stdout.split()
    if not out:
        pytest.fail("no localhost/mlcluster-node image: bake it with `mlcluster bake local`")
    return out[0]


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    if shutil.which("podman") is None:
        pytest.fail("podman is not installed (bash scripts/setup.sh): the layer needs a node")
    name = f"h4-accel-{os.getpid()}"
    with systemd_node(IMAGE or newest_node_image(), name, "accel-test"):
        inventory = tmp_path_factory.mktemp("accel-node") / "inventory.ini"
        inventory.write_text(
            f"[nodes]\n{name} ansible_connection=containers.podman.podman "
            "ansible_python_interpreter=/usr/bin/python3\n"
        )
        yield name, inventory


def run_layer(node, tmp_path, **kwargs):
    name, inventory = node
    heal_exec(name)
    run = run_playbook(PLAYBOOK, inventory, tmp_path, **kwargs)
    assert run.status == "successful", run.stdout[-4000:]
    return run


def test_cpu_node_says_why_each_role_does_not_apply(node, tmp_path):
    name, _ = node
    checked = run_layer(node, tmp_path, check=True)
    first = run_layer(node, tmp_path)
    second = run_layer(node, tmp_path)
    assert second.changed() == 0, f"not idempotent, changed again: {second.changed_tasks}"

    facts = json.loads(podman("exec", name, "cat", "/etc/mlcluster/manifest.json").stdout)
    assert facts["flavor"] == "local"
    statuses = first.custom_stats["accelerators"][name]
    efa_probe = statuses["efa"].split("; ", 1)[1]
    not_in_image = "not applicable: not in the image (flavour local)"
    assert statuses == {
        "tuning": "configured",
        "nvidia_driver": not_in_image,
        "fabricmanager": not_in_image,
        "cuda_toolkit": not_in_image,
        "nccl": not_in_image,
        # Debian's libfabric is in the image; the efa provider answers only with a device.
        "efa": f"not applicable: no EFA device on the PCI bus; {efa_probe}",
        "aws_ofi_nccl": not_in_image,
        "gdrcopy": not_in_image,
        "dcgm": not_in_image,
        "neuron": not_in_image,
        "container_runtime": not_in_image,
        "enroot_pyxis": not_in_image,
        "lustre_client": not_in_image,
    }
    assert efa_probe.startswith("fi_info -p efa: "), efa_probe
    assert checked.custom_stats == first.custom_stats == second.custom_stats
    for role, status in statuses.items():
        assert f"{name} {role}: {status}" in first.stdout


def test_stub_gpu_node_decisions(node, tmp_path):
    """Decision logic only: the stub devices have nothing behind them (see the module doc)."""
    name, _ = node
    gpu_node_sysfs(tmp_path / "stub-sys", gpus=8, nvswitches=4, efa=1)
    flavour_manifest(tmp_path / "manifest.json", "gpu", GPU_FLAVOUR)
    podman("cp", str(tmp_path / "stub-sys"), f"{name}:/tmp/stub-sys")
    podman("cp", str(tmp_path / "manifest.json"), f"{name}:/tmp/stub-manifest.json")
    run = run_layer(
        node,
        tmp_path,
        check=True,
        skip_tags="accelerators_roles",
        extravars={
            "mlcluster_node_sysfs_root": "/tmp/stub-sys",
            "mlcluster_node_manifest_path": "/tmp/stub-manifest.json",
        },
    )
    statuses = run.custom_stats["accelerators"][name]
    for role in ("nvidia_driver", "fabricmanager", "dcgm", "container_runtime"):
        assert statuses[role] == "configured", statuses
    assert statuses == {
        "tuning": "configured",
        "nvidia_driver": "configured",
        "fabricmanager": "configured",
        "cuda_toolkit": "configured",
        "nccl": "configured",
        "efa": "configured",
        "aws_ofi_nccl": "configured",
        "gdrcopy": "configured",
        "dcgm": "configured",
        "neuron": "not applicable: not in the image (flavour gpu)",
        "container_runtime": "configured",
        "enroot_pyxis": "configured",
        "lustre_client": "not applicable: no lustre_client_mounts in the inventory",
    }
    assert run.changed() == 0
