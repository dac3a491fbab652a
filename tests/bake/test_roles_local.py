"""The roles that can run for real here, on a throwaway Debian 12 podman node: check mode on
the fresh node, converge, converge again with nothing changed, then verify the real state.

- tuning: kernel settings, service limits (capped to what the container may raise)
- efa: the distro source (Debian's rdma-core and libfabric)
- nvidia_driver: the distro source (Debian's non-free driver, no module build in a container)
- nccl: the wheel source (a real libnccl from the nvidia-nccl-cu12 wheel in /opt/nccl)
- container_runtime: Debian's docker.io, started

then the local image flavour through bake_preflight/bake_accelerators/bake_verify. The
DKMS build of the NVIDIA module for Debian's kernel is the slow lane (MLCLUSTER_SLOW=1).
MLCLUSTER_BAKE_TEST_ROLES=tuning,efa runs a subset; MLCLUSTER_BAKE_TEST_IMAGE picks the image.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from .conftest import ROOT, heal_exec, podman, run_playbook, systemd_node

pytestmark = pytest.mark.integration

HERE = Path(__file__).parent
REAL_ROLES = ["tuning", "efa", "nvidia_driver", "nccl", "container_runtime"]
SELECTED = [
    r for r in os.environ.get("MLCLUSTER_BAKE_TEST_ROLES", ",".join(REAL_ROLES)).split(",") if r
]
# Default: the local cluster's debootstrapped Debian 12 base (built when missing).
IMAGE = os.environ.get("MLCLUSTER_BAKE_TEST_IMAGE", "")
# Extra CAs of this machine (a TLS-intercepting proxy); the node needs them to reach PyPI.
HOST_CA_DIR = Path("/usr/local/share/ca-certificates")


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    if shutil.which("podman") is None:
        pytest.fail("podman is not installed (bash scripts/setup.sh): the role runs need a node")
    from mlcluster import images

    image = IMAGE or images.ensure_base_image()
    if podman("image", "exists", image, check=False).returncode != 0:
        pytest.fail(f"node image {image} is missing (MLCLUSTER_BAKE_TEST_IMAGE)")
    name = f"bake-test-{os.getpid()}"
    with systemd_node(image, name, "bake-test"):
        # Ansible's apt module needs python3-apt for check mode (cloud images ship it; the
        # minimal test image does not).
        podman("exec", name, "sh", "-c", "apt-get update -qq && apt-get install -y -qq python3-apt")
        if HOST_CA_DIR.is_dir() and any(HOST_CA_DIR.glob("*.crt")):
            podman("cp", f"{HOST_CA_DIR}/.", f"{name}:/usr/local/share/ca-certificates/")
            podman("exec", name, "update-ca-certificates")
        inventory = tmp_path_factory.mktemp("bake-node") / "inventory.ini"
        inventory.write_text(
            f"[bake]\n{name} ansible_connection=containers.podman.podman "
            "ansible_python_interpreter=/usr/bin/python3 mlcluster_image_flavor=local\n"
        )
        yield name, inventory


def run_on(node, playbook: Path, tmp_path: Path, **kwargs):
    name, inventory = node
    heal_exec(name)
    return run_playbook(playbook, inventory, tmp_path, **kwargs)


@pytest.mark.parametrize("role", [r for r in REAL_ROLES if r in SELECTED])
def test_role_converges_idempotently_and_verifies(node, role, tmp_path):
    converge = HERE / f"converge_{role}.yml"

    checked = run_on(node, converge, tmp_path, check=True)
    assert checked.status == "successful", f"check mode failed:\n{checked.stdout[-4000:]}"

    first = run_on(node, converge, tmp_path)
    assert first.status == "successful", f"converge failed:\n{first.stdout[-4000:]}"

    second = run_on(node, converge, tmp_path)
    assert second.status == "successful", second.stdout[-4000:]
    assert second.changed() == 0, f"not idempotent, changed again: {second.changed_tasks}"

    verified = run_on(node, HERE / f"verify_{role}.yml", tmp_path)
    assert verified.status == "successful", f"verify failed:\n{verified.stdout[-4000:]}"


def test_local_flavour_bake_writes_the_manifest(node, tmp_path):
    name, _ = node
    for playbook in ("bake_preflight.yml", "bake_accelerators.yml", "bake_verify.yml"):
        run = run_on(
            node,
            ROOT / "playbooks" / playbook,
            tmp_path,
            extravars={"mlcluster_manifest_fetch_dir": str(tmp_path)},
        )
        assert run.status == "successful", f"{playbook} failed:\n{run.stdout[-4000:]}"
    manifest = json.loads((tmp_path / f"{name}.json").read_text())
    assert manifest["flavor"] == "local"
    assert sorted(manifest["components"]) == ["efa", "tuning"]
    assert manifest["components"]["efa"]["source"] == "distro"
    assert manifest["host"]["in_container"] is True


def test_bake_preflight_refuses_a_gpu_image_on_debian(node, tmp_path):
    run = run_on(
        node,
        ROOT / "playbooks" / "bake_preflight.yml",
        tmp_path,
        extravars={"mlcluster_image_flavor": "gpu"},
    )
    assert run.status == "failed"
    assert (
        "The gpu flavour is built on Ubuntu 22, Ubuntu 24 (versions.yml, platforms); this node"
        " runs Debian 12." in run.stdout
    )


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("MLCLUSTER_SLOW") != "1",
    reason="DKMS build of the NVIDIA module: set MLCLUSTER_SLOW=1",
)
def test_nvidia_module_builds_for_debians_kernel(node, tmp_path):
    """The real DKMS build: Debian's kernel headers installed, the open module compiled for them."""
    run = run_on(
        node,
        HERE / "converge_nvidia_driver.yml",
        tmp_path,
        extravars={
            "nvidia_driver_build_modules": "always",
            "nvidia_driver_kernel_headers": ["linux-headers-amd64"],
        },
    )
    assert run.status == "successful", run.stdout[-4000:]
    name, _ = node
    status = podman("exec", name, "dkms", "status").stdout
    assert re.search(r"nvidia-current-open/535\.\S+, 6\.1\.\S+-amd64, x86_64: installed", status), (
        status
    )
