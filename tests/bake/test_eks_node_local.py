"""eks_node for real on a throwaway Debian 12 podman node (the fixture of test_roles_local):
check mode on the fresh node, converge, converge again with nothing changed, check mode with
nothing to change, then the running containerd's own view of its configuration."""

from __future__ import annotations

import shlex
import tomllib
from pathlib import Path

import pytest

from . import test_roles_local
from .conftest import podman

pytestmark = pytest.mark.integration

HERE = Path(__file__).parent
CONVERGE = HERE / "converge_eks_node.yml"
node = test_roles_local.node  # the shared podman node fixture


def node_output(name: str, command: str) -> str:
    return podman("exec", name, "sh", "-c", command).stdout


def test_eks_node_runs_containerd_with_the_nvidia_runtime(node, tmp_path):
    name, _ = node
    run_on = test_roles_local.run_on

    checked = run_on(node, CONVERGE, tmp_path, check=True)
    assert checked.status == "successful", f"check mode failed:\n{checked.stdout[-4000:]}"

    first = run_on(node, CONVERGE, tmp_path)
    assert first.status == "successful", f"converge failed:\n{first.stdout[-4000:]}"
    assert "/etc/eks/bootstrap.sh is missing (it comes with the EKS AMIs): nothing joined." in (
        first.stdout
    )

    second = run_on(node, CONVERGE, tmp_path)
    assert second.status == "successful", second.stdout[-4000:]
    assert second.changed() == 0, f"not idempotent, changed again: {second.changed_tasks}"

    clean = run_on(node, CONVERGE, tmp_path, check=True)
    assert clean.status == "successful", clean.stdout[-4000:]
    assert clean.changed() == 0, f"check mode would change: {clean.changed_tasks}"

    assert node_output(name, "systemctl is-active containerd").strip() == "active"
    # The daemon answers on its socket (server side of `ctr version`).
    assert "Server:" in node_output(name, "ctr version")
    # What the daemon itself loaded, parsed as TOML (not our file read back).
    dump = tomllib.loads(node_output(name, "containerd config dump"))
    cri = dump["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]
    assert cri["default_runtime_name"] == "nvidia"
    assert cri["runtimes"]["nvidia"]["runtime_type"] == "io.containerd.runc.v2"
    assert cri["runtimes"]["nvidia"]["options"] == {
        "BinaryName": "/usr/bin/nvidia-container-runtime",
        "SystemdCgroup": True,
    }
    assert cri["runtimes"]["runc"]["options"]["SystemdCgroup"] is True

    join = node_output(name, "cat /etc/mlcluster/eks/join.sh").splitlines()
    assert join[-1] == "exec " + shlex.join(
        [
            "/etc/eks/bootstrap.sh",
            "ml-eks",
            "--apiserver-endpoint",
            "https://0123456789ABCDEF.gr7.us-west-2.eks.amazonaws.com",
            "--b64-cluster-ca",
            "TFMwdExTMUNSVWRKVGlCRFJWSlVTVVpKUTBGVVJTMHRMUzB0Q2c9PQ==",
            "--container-runtime",
            "containerd",
            "--containerd-config-file",
            "/etc/containerd/config.toml",
            "--use-max-pods",
            "false",
            "--kubelet-extra-args",
            "--node-labels=mlcluster.io/instance-group=gpu-p5"
            " --register-with-taints=nvidia.com/gpu=true:NoSchedule --max-pods=64"
            " --cpu-manager-policy=static --topology-manager-policy=restricted"
            " --kube-reserved=cpu=500m,memory=2Gi",
        ]
    )
