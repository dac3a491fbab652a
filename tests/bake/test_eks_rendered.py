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
# Not the default (my-scheduler): every object of the second kube-scheduler follows the name.
NEURON_SCHEDULER = "trn-scheduler"
# The fields of KubeSchedulerConfiguration (kubescheduler.config.k8s.io/v1, Go types of
# k8s.io/kube-scheduler/config/v1) that the add-on sets or could, by object; kube-scheduler
# decodes its --config strictly, so any other key would stop it at start.
SCHEDULER_CONFIG_FIELDS = {
    "config": {
        "apiVersion", "kind", "parallelism", "leaderElection", "clientConnection",
        "enableProfiling", "enableContentionProfiling", "percentageOfNodesToScore",
        "podInitialBackoffSeconds", "podMaxBackoffSeconds", "profiles", "extenders",
        "delayCacheUntilActive",
    },
    "leaderElection": {
        "leaderElect", "leaseDuration", "renewDeadline", "retryPeriod", "resourceLock",
        "resourceName", "resourceNamespace",
    },
    "profile": {"schedulerName", "percentageOfNodesToScore", "plugins", "pluginConfig"},
    "extender": {
        "urlPrefix", "filterVerb", "preemptVerb", "prioritizeVerb", "weight", "bindVerb",
        "enableHTTPS", "tlsConfig", "httpTimeout", "nodeCacheCapable", "managedResources",
        "ignorable",
    },
    "managedResource": {"name", "ignoredByScheduler"},
}  # fmt: skip


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
            "eks_addons_neuron_scheduler": True,
            "eks_addons_neuron_scheduler_name": NEURON_SCHEDULER,
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
        "neuron-scheduler": [
            "ServiceAccount/k8s-neuron-scheduler",
            "ClusterRole/k8s-neuron-scheduler",
            "ClusterRoleBinding/k8s-neuron-scheduler",
            "Deployment/k8s-neuron-scheduler",
            "Service/k8s-neuron-scheduler",
            f"ServiceAccount/{NEURON_SCHEDULER}",
            f"ClusterRoleBinding/{NEURON_SCHEDULER}-as-kube-scheduler",
            f"ClusterRoleBinding/{NEURON_SCHEDULER}-as-volume-scheduler",
            f"Role/{NEURON_SCHEDULER}-leader-election",
            f"RoleBinding/{NEURON_SCHEDULER}-leader-election",
            f"RoleBinding/{NEURON_SCHEDULER}-authentication-reader",
            f"ConfigMap/{NEURON_SCHEDULER}-config",
            f"Deployment/{NEURON_SCHEDULER}",
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
    scheduler = neuron_scheduler(addons)
    assert (
        scheduler["Deployment/k8s-neuron-scheduler"]["spec"]["template"]["spec"]["containers"][0][
            "image"
        ]
        == f"public.ecr.aws/neuron/neuron-scheduler:{pins['neuron_scheduler']['version']}"
    )
    assert (
        scheduler[f"Deployment/{NEURON_SCHEDULER}"]["spec"]["template"]["spec"]["containers"][0][
            "image"
        ]
        == f"registry.k8s.io/kube-scheduler:{pins['kube_scheduler']['version']}"
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


def neuron_scheduler(addons: Path) -> dict[str, dict]:
    """The Neuron scheduler add-on's objects by kind/name."""
    docs = yaml.safe_load_all((addons / "neuron-scheduler.yml").read_text())
    return {f"{doc['kind']}/{doc['metadata']['name']}": doc for doc in docs}


def scheduler_config_unknown_fields(config: dict) -> list[str]:
    """The keys of a KubeSchedulerConfiguration that kube-scheduler's strict decoding refuses."""
    fields = SCHEDULER_CONFIG_FIELDS
    objects = [("", config, fields["config"])]
    objects.append(("leaderElection", config.get("leaderElection", {}), fields["leaderElection"]))
    for i, profile in enumerate(config.get("profiles", [])):
        objects.append((f"profiles.{i}", profile, fields["profile"]))
    for i, extender in enumerate(config.get("extenders", [])):
        objects.append((f"extenders.{i}", extender, fields["extender"]))
        for j, resource in enumerate(extender.get("managedResources", [])):
            objects.append(
                (f"extenders.{i}.managedResources.{j}", resource, fields["managedResource"])
            )
    return [
        f"{where}.{key}".lstrip(".")
        for where, obj, known in objects
        for key in obj
        if key not in known
    ]


def test_the_neuron_kube_scheduler_consults_the_extension_its_service_serves(addons):
    objects = neuron_scheduler(addons)
    service = objects["Service/k8s-neuron-scheduler"]
    (port,) = service["spec"]["ports"]
    extension = objects["Deployment/k8s-neuron-scheduler"]["spec"]["template"]
    # The Service reaches the extension: its selector, its named target port, the port the
    # extension is told to listen on.
    assert service["spec"]["selector"].items() <= extension["metadata"]["labels"].items()
    (container,) = extension["spec"]["containers"]
    (container_port,) = [p for p in container["ports"] if p["name"] == port["targetPort"]]
    assert container_port["containerPort"] == port["port"]
    assert {"name": "PORT", "value": str(port["port"])} in container["env"]

    scheduler = objects[f"Deployment/{NEURON_SCHEDULER}"]["spec"]["template"]["spec"]
    (kube_scheduler,) = scheduler["containers"]
    config_arg = next(a for a in kube_scheduler["command"] if a.startswith("--config="))
    config_dir, config_key = config_arg.removeprefix("--config=").rsplit("/", 1)
    (mount,) = kube_scheduler["volumeMounts"]
    assert mount["mountPath"] == config_dir
    (volume,) = [v for v in scheduler["volumes"] if v["name"] == mount["name"]]
    config_map = objects[f"ConfigMap/{volume['configMap']['name']}"]
    config = yaml.safe_load(config_map["data"][config_key])

    assert scheduler_config_unknown_fields(config) == []
    assert config["apiVersion"] == "kubescheduler.config.k8s.io/v1"
    assert config["kind"] == "KubeSchedulerConfiguration"
    assert [profile["schedulerName"] for profile in config["profiles"]] == [NEURON_SCHEDULER]
    (extender,) = config["extenders"]
    meta = service["metadata"]
    assert extender["urlPrefix"] == (
        f"http://{meta['name']}.{meta['namespace']}.svc.cluster.local:{port['port']}"
    )
    assert extender == {
        "urlPrefix": extender["urlPrefix"],
        "filterVerb": "filter",
        "bindVerb": "bind",
        "enableHTTPS": False,
        "nodeCacheCapable": True,
        "ignorable": False,
        "managedResources": [
            {"name": f"aws.amazon.com/{name}", "ignoredByScheduler": False}
            for name in ("neuron", "neuroncore", "neurondevice")
        ],
    }
    # Its own lease, which its Role lets its service account hold, and the scheduler roles.
    assert config["leaderElection"] == {
        "leaderElect": True,
        "resourceNamespace": "kube-system",
        "resourceName": NEURON_SCHEDULER,
    }
    account = {"kind": "ServiceAccount", "name": NEURON_SCHEDULER, "namespace": "kube-system"}
    assert scheduler["serviceAccountName"] == NEURON_SCHEDULER
    lease_role = objects[f"Role/{NEURON_SCHEDULER}-leader-election"]
    lease = {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"]}
    assert {**lease, "resourceNames": [NEURON_SCHEDULER], "verbs": ["get", "update"]} in (
        lease_role["rules"]
    )
    bound = {
        doc["roleRef"]["name"]
        for doc in objects.values()
        if doc["kind"] in ("ClusterRoleBinding", "RoleBinding") and account in doc["subjects"]
    }
    assert bound == {
        "system:kube-scheduler",
        "system:volume-scheduler",
        f"{NEURON_SCHEDULER}-leader-election",
        "extension-apiserver-authentication-reader",
    }


def test_a_wrong_neuron_scheduler_is_refused(addons):
    objects = neuron_scheduler(addons)
    service = objects["Service/k8s-neuron-scheduler"]
    service["spec"]["ports"][0]["port"] = "12345"
    assert eks.validation_errors(service) == [
        "Service/k8s-neuron-scheduler: spec.ports.0.port: '12345' is not of type 'integer'"
    ]
    # The Policy spelling of the chart's older mode (enableHttps) is not a field of this kind.
    config_map = objects[f"ConfigMap/{NEURON_SCHEDULER}-config"]
    config = yaml.safe_load(config_map["data"]["config.yaml"])
    config["extenders"][0]["enableHttps"] = config["extenders"][0].pop("enableHTTPS")
    assert scheduler_config_unknown_fields(config) == ["extenders.0.enableHttps"]


def test_the_neuron_scheduler_is_rendered_only_when_asked(tmp_path):
    run = run_playbook(
        ROOT / "playbooks" / "eks.yml",
        ROOT / "inventory" / "eks",
        tmp_path,
        extravars={"eks_addons_render_dir": str(tmp_path / "m")},
    )
    assert run.status == "successful", run.stdout[-3000:]
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "efa-device-plugin.yml",
        "fsx-storage.yml",
        "nvidia-device-plugin.yml",
    ]


def test_the_neuron_scheduler_is_applied_only_when_asked(tmp_path):
    """Applying for real (no render directory) with every other add-on off and a kubeconfig
    that does not exist: without the flag nothing is sent and the play succeeds; with it the
    add-on's apply is what fails (the kubeconfig is missing)."""
    alone = {
        "eks_addons_kubeconfig": str(tmp_path / "no-kubeconfig"),
        "eks_addons_nvidia_device_plugin": False,
        "eks_addons_efa_device_plugin": False,
        "eks_addons_training_operator": False,
        "eks_addons_fsx": False,
    }
    eks_yml, inventory = ROOT / "playbooks" / "eks.yml", ROOT / "inventory" / "eks"
    off = run_playbook(eks_yml, inventory, tmp_path, extravars=alone)
    assert off.status == "successful", off.stdout[-3000:]
    assert off.changed() == 0
    on = run_playbook(
        eks_yml, inventory, tmp_path, extravars={**alone, "eks_addons_neuron_scheduler": True}
    )
    assert on.status == "failed"
    failed_task = on.stdout.rsplit("TASK [", 1)[1].split("]", 1)[0]
    assert failed_task == "eks_addons : Apply the add-ons shipped as manifests"
    assert "(item=neuron-scheduler)" in on.stdout


def test_the_neuron_scheduler_needs_the_clusters_kube_scheduler_and_a_name_of_its_own(tmp_path):
    text = (ROOT / "versions.yml").read_text()
    pin = "kube_scheduler: {image: registry.k8s.io/kube-scheduler, version: v1.33.1}"
    assert text.count(pin) == 1
    other = tmp_path / "versions.yml"
    other.write_text(text.replace(pin, pin.replace("v1.33.1", "v1.34.0")))
    eks_yml, inventory = ROOT / "playbooks" / "eks.yml", ROOT / "inventory" / "eks"
    render = {"eks_addons_render_dir": str(tmp_path / "m"), "eks_addons_neuron_scheduler": True}
    run = run_playbook(
        eks_yml, inventory, tmp_path, extravars={**render, "mlcluster_versions_file": str(other)}
    )
    assert run.status == "failed"
    assert (
        "eks: kube_scheduler v1.34.0 is not of Kubernetes 1.33 (eks.kubernetes); the Neuron "
        "scheduler's kube-scheduler must be the cluster's minor version." in run.stdout
    )
    run = run_playbook(
        eks_yml,
        inventory,
        tmp_path,
        extravars={**render, "eks_addons_neuron_scheduler_name": "default-scheduler"},
    )
    assert run.status == "failed"
    assert 'eks_addons_neuron_scheduler_name "default-scheduler" must be a DNS label' in run.stdout
    assert not (tmp_path / "m").exists()


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
