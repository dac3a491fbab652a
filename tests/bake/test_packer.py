"""The AMI templates: structure (python-hcl2), evaluated values (`packer console`) and
`packer validate` with the packer on this machine (Debian's 1.6.6, which has the amazon and
ansible plugins built in and cannot parse `required_plugins`)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import hcl2
import pytest

from mlcluster import bakeami

from .conftest import ROOT

PACKER = shutil.which("packer")
AMI_DIR = ROOT / "packer" / "ami"
# The platform matrix of versions.yml: every (flavour, OS) pair baked as an AMI.
MATRIX = bakeami.platform_matrix()
PAIRS = [(f, o) for f, p in MATRIX.items() if p["target"] == "ami" for o in p["os"]]
FLAVORS = bakeami.flavors("ami")
needs_packer = pytest.mark.skipif(
    PACKER is None, reason="packer is not installed (apt install packer)"
)


def load(path: Path) -> dict:
    with path.open() as handle:
        return hcl2.load(handle)


@pytest.fixture(scope="module")
def template() -> dict:
    merged: dict = {}
    for path in sorted(AMI_DIR.glob("*.pkr.hcl")):
        for key, value in load(path).items():
            merged.setdefault(key, []).extend(value)
    return merged


def packer_env() -> dict:
    # The ansible provisioner checks that ansible-playbook runs.
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "CHECKPOINT_DISABLE": "1",
    }


def packer_version() -> tuple[int, ...]:
    out = subprocess.run([PACKER, "version"], capture_output=True, text=True, check=True).stdout
    return tuple(int(x) for x in re.search(r"(\d+)\.(\d+)\.(\d+)", out).groups())


def console(expression: str, flavor: str, os_name: str):
    proc = subprocess.run(
        [PACKER, "console", "-var", f"flavor={flavor}", "-var", f"os={os_name}", str(AMI_DIR)],
        input=f"jsonencode({expression})\n",
        capture_output=True,
        text=True,
        env=packer_env(),
        cwd=ROOT,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---- structure ----------------------------------------------------------------------------------


def test_plugins_file_only_declares_the_plugins():
    data = load(ROOT / "packer" / "plugins.pkr.hcl")
    assert list(data) == ["packer"]
    plugins = data["packer"][0]["required_plugins"][0]
    assert plugins["amazon"]["source"] == "github.com/hashicorp/amazon"
    assert plugins["ansible"]["source"] == "github.com/hashicorp/ansible"


def test_ami_templates_carry_no_packer_block(template):
    """A `packer {}` block with required_plugins would break packer 1.6.6."""
    assert "packer" not in template


def test_variables(template):
    variables = {name: spec for block in template["variable"] for name, spec in block.items()}
    assert set(variables) >= {
        "region",
        "instance_type",
        "volume_size",
        "subnet_id",
        "flavor",
        "os",
        "manifest_path",
        "mirror_base",
    }
    assert variables["volume_size"]["type"] == "number"
    assert variables["subnet_id"]["default"] == ""
    assert "default" not in variables["flavor"], "the flavour must be chosen explicitly"
    # No copy of the platform matrix: node.pkr.hcl reads it from versions.yml.
    assert "validation" not in variables["flavor"]
    assert "validation" not in variables["os"]


def test_amazon_ebs_source(template):
    source = template["source"][0]["amazon-ebs"]["node"]
    ami_filter = source["source_ami_filter"][0]
    assert ami_filter["filters"]["name"] == "${local.source_ami_name}"
    assert ami_filter["filters"]["root-device-type"] == "ebs"
    assert ami_filter["owners"] == ["${local.base.owner}"]
    assert ami_filter["most_recent"] is True
    assert source["region"] == "${var.region}"
    assert source["instance_type"] == "${var.instance_type}"
    assert source["subnet_id"] == '${var.subnet_id == "" ? null : var.subnet_id}'
    disk = source["launch_block_device_mappings"][0]
    assert (disk["volume_size"], disk["volume_type"], disk["delete_on_termination"]) == (
        "${var.volume_size}",
        "gp3",
        True,
    )
    assert source["tags"] == "${merge(local.component_tags, local.name_tags)}"


def test_ansible_provisioner_runs_the_bake(template):
    build = template["build"][0]
    assert build["sources"] == ["source.amazon-ebs.node"]
    ansible = build["provisioner"][0]["ansible"]
    assert ansible["playbook_file"] == "${abspath(path.root)}/../../playbooks/bake.yml"
    assert "--extra-vars, mlcluster_image_flavor=${var.flavor}" in ansible["extra_arguments"]
    assert "ANSIBLE_CONFIG=${abspath(path.root)}/../../ansible.cfg" in ansible["ansible_env_vars"]


def test_manifest_post_processor(template):
    manifest = template["build"][0]["post-processor"][0]["manifest"]
    assert manifest["output"] == "${var.manifest_path}"
    assert manifest["custom_data"] == {"flavor": "${var.flavor}", "os": "${var.os}"}


# ---- evaluated values ---------------------------------------------------------------------------


@needs_packer
@pytest.mark.parametrize(
    ("os_name", "expected"),
    [
        (
            "ubuntu22.04",
            {
                "name": "ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-amd64-server-*",
                "owner": "099720109477",
                "ssh_user": "ubuntu",
                "root_device": "/dev/sda1",
            },
        ),
        (
            "ubuntu24.04",
            {
                "name": "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-*",
                "owner": "099720109477",
                "ssh_user": "ubuntu",
                "root_device": "/dev/sda1",
            },
        ),
    ],
)
def test_base_image_per_os(os_name, expected):
    assert console("local.base", "gpu", os_name) == expected


@needs_packer
@pytest.mark.parametrize(("flavor", "os_name"), PAIRS)
def test_source_image_per_flavour(flavor, os_name, versions):
    """Slurm flavours start from the official Ubuntu image, an EKS worker flavour (one with
    eks_node) from Canonical's Ubuntu EKS image of the pinned Kubernetes version."""
    plain = console("local.base", flavor, os_name)["name"]
    name = console("local.source_ami_name", flavor, os_name)
    if "eks_node" in versions["flavors"][flavor]:
        kubernetes = versions["eks"]["kubernetes"]
        assert name == plain.replace("ubuntu/images/", f"ubuntu-eks/k8s_{kubernetes}/images/")
        assert name.startswith(f"ubuntu-eks/k8s_{kubernetes}/images/hvm-ssd")
    else:
        assert name == plain


@needs_packer
@pytest.mark.parametrize("flavor", FLAVORS)
def test_template_reads_the_platform_matrix(flavor):
    assert console("local.platform", flavor, MATRIX[flavor]["os"][0]) == MATRIX[flavor]["os"]


@needs_packer
@pytest.mark.parametrize("flavor", FLAVORS)
def test_tags_carry_the_component_versions(flavor, versions):
    expected = {}
    for name in versions["flavors"][flavor]:
        component = versions["components"].get(name)
        if component is None:
            continue
        value = next(
            component[key]
            for key in ("version", "sdk", "enroot", "nvidia_container_toolkit")
            if key in component
        )
        expected[f"mlcluster:{name}"] = str(value)
    if "eks_node" in versions["flavors"][flavor]:
        expected["mlcluster:kubernetes"] = versions["eks"]["kubernetes"]
    assert console("local.component_tags", flavor, "ubuntu22.04") == expected
    assert console("local.name_tags", flavor, "ubuntu24.04") == {
        "Name": f"mlcluster-{flavor}-ubuntu24.04",
        "mlcluster:flavor": flavor,
        "mlcluster:os": "ubuntu24.04",
    }


# ---- packer validate ----------------------------------------------------------------------------


@needs_packer
@pytest.mark.parametrize(("flavor", "os_name"), PAIRS)
def test_packer_validate(flavor, os_name):
    proc = validate(flavor, os_name)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def validate(flavor: str, os_name: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PACKER, "validate", "-var", f"flavor={flavor}", "-var", f"os={os_name}", str(AMI_DIR)],
        capture_output=True,
        text=True,
        env=packer_env(),
        cwd=ROOT,
        check=False,
        timeout=120,
    )


@needs_packer
@pytest.mark.parametrize(
    ("flavor", "os_name"),
    [("tpu", "ubuntu22.04"), ("local", "debian12"), ("gpu", "al2023"), ("gpu", "debian12")],
)
def test_packer_validate_rejects_what_the_matrix_does_not_bake(flavor, os_name):
    proc = validate(flavor, os_name)
    assert proc.returncode != 0
    assert "Error:" in proc.stdout + proc.stderr


@needs_packer
def test_old_packer_cannot_read_the_plugins_file():
    """Why plugins.pkr.hcl lives apart: packer < 1.7 rejects `required_plugins`."""
    if packer_version() >= (1, 7, 0):
        pytest.skip("this packer understands required_plugins")
    proc = subprocess.run(
        [PACKER, "validate", str(ROOT / "packer" / "plugins.pkr.hcl")],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert 'Blocks of type "required_plugins" are not expected here.' in proc.stdout + proc.stderr
