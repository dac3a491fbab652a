"""What the EKS roles write where no EKS node or API server can exist here, rendered by the
roles' own templates and variables and validated against the real schemas: nodeadm's
NodeConfig CRD, Kubernetes' (kubernetes-validate, the pinned version) for the add-ons that
`site.yml -i inventory/eks` renders; and the preflight and site.yml on EKS and Slurm inventories."""

from __future__ import annotations

import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

from mlcluster import eks

from .conftest import ROOT, run_playbook

HERE = Path(__file__).parent
FIXTURES = ROOT / "tests" / "fixtures"
CRI = "io.containerd.grpc.v1.cri"


@pytest.fixture(scope="module")
def node_files(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("eks-node")
    run = run_playbook(
        HERE / "render_eks_node.yml",
        HERE / "render_eks_inventory.yml",
        out,
        extravars={"render_dir": str(out)},
    )
    assert run.status == "successful", run.stdout[-4000:]
    return out


@pytest.fixture(scope="module")
def addons(tmp_path_factory) -> Path:
    """site.yml on inventory/eks (no hosts: only the add-ons play runs), rendering only."""
    out = tmp_path_factory.mktemp("eks-addons")
    run = run_playbook(
        ROOT / "site.yml",
        ROOT / "inventory" / "eks",
        out,
        extravars={
            "eks_addons_render_dir": str(out / "manifests"),
            "eks_addons_neuron_device_plugin": True,
            "eks_addons_region": "eu-west-1",
        },
    )
    assert run.status == "successful", run.stdout[-4000:]
    return out / "manifests"


def test_al2023_gpu_node_config_is_a_valid_nodeconfig(node_files):
    config = yaml.safe_load((node_files / "al2023-gpu" / "nodeconfig.yaml").read_text())
    assert eks.validation_errors(config) == []
    spec = config["spec"]
    assert spec["cluster"] == {
        "name": "ml-eks",
        "apiServerEndpoint": "https://0123456789ABCDEF.gr7.us-west-2.eks.amazonaws.com",
        "certificateAuthority": "Q0EtREFUQQ==",
        "cidr": "10.100.0.0/16",
    }
    assert spec["kubelet"] == {
        "config": {
            "maxPods": 110,
            "cpuManagerPolicy": "static",
            "topologyManagerPolicy": "best-effort",
            "kubeReserved": {"cpu": "500m", "memory": "2Gi"},
            "systemReserved": {"cpu": "250m"},
            "registerWithTaints": [{"key": "nvidia.com/gpu", "effect": "NoSchedule"}],
        },
        "flags": [
            "--node-labels=mlcluster.io/instance-group=gpu-p5,topology.k8s.aws/zone-id=usw2-az2"
        ],
    }
    # The containerd part nodeadm merges: nvidia by default (8 GPUs), nodeadm's own pause image.
    merged = tomllib.loads(spec["containerd"]["config"])["plugins"][CRI]
    assert "sandbox_image" not in merged
    assert merged["containerd"]["default_runtime_name"] == "nvidia"
    assert merged["containerd"]["runtimes"]["nvidia"]["options"]["BinaryName"] == (
        "/usr/bin/nvidia-container-runtime"
    )
    join = (node_files / "al2023-gpu" / "join.sh").read_text().splitlines()
    assert (
        join[-1]
        == "exec /usr/bin/nodeadm init --config-source file:///etc/mlcluster/eks/nodeconfig.yaml"
    )


def test_a_wrong_nodeconfig_is_refused(node_files):
    config = yaml.safe_load((node_files / "al2023-gpu" / "nodeconfig.yaml").read_text())
    config["spec"]["kubelet"]["flag"] = config["spec"]["kubelet"].pop("flags")
    config["spec"]["cluster"]["cidr"] = 16
    assert eks.validation_errors(config) == [
        "NodeConfig/?: spec.cluster.cidr: 16 is not of type 'string'",
        "NodeConfig/?: spec.kubelet: Additional properties are not allowed ('flag' was unexpected)",
    ]


def test_ubuntu_cpu_node_runs_runc_and_joins_with_bootstrap_sh(node_files):
    config = tomllib.loads((node_files / "ubuntu-cpu" / "config.toml").read_text())
    cri = config["plugins"][CRI]
    assert cri["sandbox_image"] == "602401143452.dkr.ecr.us-west-2.amazonaws.com/eks/pause:3.10"
    assert cri["containerd"]["default_runtime_name"] == "runc"
    assert sorted(cri["containerd"]["runtimes"]) == ["runc"]
    join = (node_files / "ubuntu-cpu" / "join.sh").read_text().splitlines()
    assert shlex.split(join[-1]) == [
        "exec", "/etc/eks/bootstrap.sh", "ml-eks",
        "--apiserver-endpoint", "https://0123456789ABCDEF.gr7.us-west-2.eks.amazonaws.com",
        "--b64-cluster-ca", "Q0EtREFUQQ==", "--container-runtime", "containerd",
        "--containerd-config-file", "/etc/containerd/config.toml",
    ]  # fmt: skip


def test_the_addons_manifests_are_valid_kubernetes(addons):
    found = {}
    for path in sorted(addons.glob("*.yml")):
        for doc in yaml.safe_load_all(path.read_text()):
            assert eks.validation_errors(doc, eks.kubernetes_version()) == [], path.name
            found.setdefault(path.stem, []).append(f"{doc['kind']}/{doc['metadata']['name']}")
    assert found == {
        "efa-device-plugin": ["DaemonSet/aws-efa-k8s-device-plugin-daemonset"],
        "fsx-storage": ["StorageClass/fsx-lustre", "PersistentVolumeClaim/fsx-claim"],
        "neuron-device-plugin": [
            "ServiceAccount/neuron-device-plugin",
            "ClusterRole/neuron-device-plugin",
            "ClusterRoleBinding/neuron-device-plugin",
            "DaemonSet/neuron-device-plugin-daemonset",
        ],
        "nvidia-device-plugin": ["DaemonSet/nvidia-device-plugin-daemonset"],
    }


def test_the_addons_images_are_the_pinned_ones(addons, versions):
    pins = versions["eks"]

    def image(name):
        doc = next(yaml.safe_load_all((addons / f"{name}.yml").read_text()))
        if doc["kind"] != "DaemonSet":
            doc = list(yaml.safe_load_all((addons / f"{name}.yml").read_text()))[-1]
        return doc["spec"]["template"]["spec"]["containers"][0]["image"]

    assert (
        image("nvidia-device-plugin")
        == f"nvcr.io/nvidia/k8s-device-plugin:{pins['nvidia_device_plugin']['version']}"
    )
    assert image("efa-device-plugin") == (
        "602401143452.dkr.ecr.eu-west-1.amazonaws.com/eks/aws-efa-k8s-device-plugin:"
        + pins["efa_device_plugin"]["version"]
    )
    assert image("neuron-device-plugin") == (
        f"public.ecr.aws/neuron/neuron-device-plugin:{pins['neuron_device_plugin']['version']}"
    )
    storage_class = next(yaml.safe_load_all((addons / "fsx-storage.yml").read_text()))
    assert storage_class["parameters"]["subnetId"] == "subnet-0123456789abcdef0"
    assert storage_class["parameters"]["securityGroupIds"] == "sg-0123456789abcdef0"


def test_a_wrong_addon_manifest_is_refused(addons):
    daemonset = next(yaml.safe_load_all((addons / "nvidia-device-plugin.yml").read_text()))
    daemonset["spec"]["template"]["spec"]["tolerations"][0]["efect"] = "NoSchedule"
    assert eks.validation_errors(daemonset) == [
        "DaemonSet/nvidia-device-plugin-daemonset: spec.template.spec.tolerations.0: "
        "Additional properties are not allowed ('efect' was unexpected)"
    ]


def test_fsx_needs_a_subnet(tmp_path):
    run = run_playbook(
        ROOT / "playbooks" / "eks.yml",
        ROOT / "inventory" / "eks",
        tmp_path,
        extravars={"eks_addons_render_dir": str(tmp_path / "m"), "eks_addons_fsx_subnet_id": ""},
    )
    assert run.status == "failed"
    assert "eks_addons_fsx needs eks_addons_fsx_subnet_id (subnet-...)" in run.stdout
    assert not (tmp_path / "m").exists()


def test_preflight_accepts_eks_node_settings_and_refuses_a_misspelt_one(tmp_path):
    preflight = ROOT / "playbooks" / "preflight.yml"
    hosts = FIXTURES / "eks-hosts.yml"
    assert run_playbook(preflight, hosts, tmp_path).status == "successful"
    wrong = run_playbook(preflight, hosts, tmp_path, extravars={"eks_node_max_pod": 64})
    assert wrong.status == "failed"
    assert (
        "eks_node_max_pod is not a variable of role eks_node (did you mean eks_node_max_pods or"
        in wrong.stdout
    )


def test_site_yml_imports_eks_and_it_does_nothing_on_a_slurm_inventory(tmp_path):
    site = yaml.safe_load((ROOT / "site.yml").read_text())
    assert "playbooks/eks.yml" in [play["ansible.builtin.import_playbook"] for play in site]
    run = run_playbook(ROOT / "playbooks" / "eks.yml", FIXTURES / "preflight-hosts.yml", tmp_path)
    assert run.status == "successful", run.stdout[-3000:]
    # Only the implicit localhost of the add-ons play ran, and it skipped the role.
    assert sorted(run.stats.get("skipped") or {}) == ["localhost"]
    assert run.changed() == 0
    assert "head" not in run.stdout and "node1" not in run.stdout


def test_the_eks_roles_follow_the_role_layout():
    from . import test_role_structure as layout

    layout.test_role_layout("eks_node")  # eks_addons has no install phase: nothing is baked
    for role in ("eks_node", "eks_addons"):
        layout.test_role_internal_variables_are_prefixed(role)
        layout.test_distro_data_covers_the_platforms(role)
