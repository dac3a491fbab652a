"""The HyperPod-on-EKS lifecycle variant (lifecycle/hyperpod/on_create_eks.sh): the node alone in
eks_nodes, the join left to HyperPod, the exact Ansible command; the written inventory passes
site.yml's preflight. Same conventions as tests/unit/test_lifecycle.py, whose fixtures it uses."""

from __future__ import annotations

import os
import subprocess

import yaml

from mlcluster.paths import venv_bin

from .test_lifecycle import HYPERPOD, ROOT, fake_ansible, node_root, script_env

__all__ = ["fake_ansible", "node_root"]  # pytest fixtures used by name below


def run_on_create_eks(bin_dir, *args, ip="10.1.1.22"):
    return subprocess.run(
        [str(HYPERPOD / "on_create_eks.sh"), *args],
        env=script_env(bin_dir, MLCLUSTER_NODE_IP=ip),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_dry_run_writes_the_eks_inventory_and_prints_the_command(node_root, fake_ansible):
    result = run_on_create_eks(fake_ansible, "--dry-run")
    assert result.returncode == 0, result.stdout + result.stderr
    inventory = node_root / "opt/mlcluster/inventory/hosts.yml"
    assert result.stdout.splitlines()[-1] == (
        f"ANSIBLE_CONFIG={ROOT}/ansible.cfg {fake_ansible}/ansible-playbook -i {inventory}"
        f" -c local --limit ip-10-1-1-22 {ROOT}/site.yml"
    )
    assert yaml.safe_load(inventory.read_text()) == {
        "all": {
            "vars": {
                "mlcluster_platform": "hyperpod_eks",
                "mlcluster_required_groups": ["eks_nodes"],
                "eks_node_join": False,
            },
            "children": {
                "eks_nodes": {
                    "hosts": {
                        "ip-10-1-1-22": {
                            "ansible_host": "10.1.1.22",
                            "ansible_connection": "local",
                            "hyperpod_instance_group": "worker-p5",
                            "hyperpod_instance_type": "ml.p5.48xlarge",
                            "hyperpod_private_ip": "10.1.1.22",
                        }
                    }
                }
            },
        }
    }
    # No Slurm group_vars: an EKS node gets none of them.
    assert not (inventory.parent / "group_vars").exists()
    log = (node_root / "var/log/provision/provisioning.log").read_text()
    assert "this node is ip-10-1-1-22: EKS worker of instance group worker-p5" in log


def test_the_eks_inventory_passes_the_preflight(node_root, fake_ansible):
    assert run_on_create_eks(fake_ansible, "--dry-run").returncode == 0
    preflight = subprocess.run(
        [str(venv_bin() / "ansible-playbook"),
         "-i", str(node_root / "opt/mlcluster/inventory/hosts.yml"), "playbooks/preflight.yml"],
        cwd=ROOT, env={**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert preflight.returncode == 0, preflight.stdout[-3000:]
    assert "ip-10-1-1-22               : ok=" in preflight.stdout


def test_a_node_not_in_the_resource_config_fails_clearly(node_root, fake_ansible):
    result = run_on_create_eks(fake_ansible, ip="10.9.9.9")
    assert result.returncode == 1
    assert (
        "none of this node's addresses (10.9.9.9) is a CustomerIpAddress in the resource config"
        in result.stdout
    )
    assert not (fake_ansible / "called").exists()


def test_the_lifecycle_upload_carries_the_eks_variant():
    from mlcluster import platforms

    keys = {key for _, key in platforms.upload_plan()}
    assert {
        "on_create_eks.sh",
        "mlcluster_lifecycle.py",
        "mlcluster/playbooks/eks.yml",
        "mlcluster/roles/eks_node/tasks/configure.yml",
    } <= keys
