"""The mlcluster.core.hyperpod inventory plugin against a real moto server and botocore's Stubber.

moto (real HTTP on 127.0.0.1) plays the SageMaker API: CreateCluster, ListClusterNodes with
pagination, DescribeClusterNode. Its NodeDetails carry no private IP or hostname, so the
tests of those fields use botocore's Stubber, whose responses are checked against the service
model. The plugin is loaded through Ansible's own plugin loader and InventoryManager, and once
through the `ansible-inventory` command on the shipped inventory/hyperpod.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid

import pytest
from ansible.errors import AnsibleError
from ansible.inventory.data import InventoryData
from ansible.inventory.manager import InventoryManager
from ansible.parsing.dataloader import DataLoader
from ansible.plugins.loader import inventory_loader
from botocore.awsrequest import AWSResponse
from botocore.stub import Stubber
from moto.core import DEFAULT_ACCOUNT_ID
from moto.sagemaker import models as sagemaker_models
from moto.sagemaker.models import sagemaker_backends

from mlcluster.paths import project_root, venv_bin

from .ansible_collection import init_collection_loader

ROOT = project_root()
REGION = "us-west-2"  # the aws_env fixture's
pytestmark = pytest.mark.usefixtures("aws_env")
init_collection_loader()

from ansible_collections.mlcluster.core.plugins.inventory import hyperpod  # noqa: E402

ROLE = "arn:aws:iam::123456789012:role/hyperpod-execution"


@pytest.fixture(autouse=True)
def moto_node_pages(monkeypatch):
    """moto 5.2 pages ClusterNode objects by an ``arn`` attribute they lack, so every NextToken
    is the same and botocore's paginator stops ("same next token received twice"); page them by
    their instance id, as the real service does by node."""
    monkeypatch.setitem(
        sagemaker_models.PAGINATION_MODEL["list_cluster_nodes"], "unique_attribute", "instance_id"
    )


def create_cluster(url, groups):
    """A HyperPod cluster on the moto server; ``groups`` is [(name, instance type, count)]."""
    import boto3

    name = f"ml-{uuid.uuid4().hex[:8]}"
    client = boto3.client("sagemaker", region_name=REGION, endpoint_url=url)
    client.create_cluster(
        ClusterName=name,
        InstanceGroups=[
            {
                "InstanceGroupName": group,
                "InstanceType": instance_type,
                "InstanceCount": count,
                # moto accepts only lifecycle buckets named like SageMaker's own.
                "LifeCycleConfig": {
                    "SourceS3Uri": "s3://sagemaker-lc/mlcluster",
                    "OnCreate": "on_create.sh",
                },
                "ExecutionRole": ROLE,
                "ThreadsPerCore": 1,
            }
            for group, instance_type, count in groups
        ],
    )
    return name


def set_node_status(cluster, node_id, status):
    """Server-side state change that the API cannot make (a node failing its health check)."""
    sagemaker_backends[DEFAULT_ACCOUNT_ID][REGION].clusters[cluster].nodes[node_id].status = status


def write_config(tmp_path, name="cluster.hyperpod.yml", **options):
    path = tmp_path / name
    path.write_text(json.dumps({"plugin": "mlcluster.core.hyperpod", **options}))
    return path


def load(path):
    """Inventory through Ansible's InventoryManager (the path ansible-playbook takes)."""
    manager = InventoryManager(loader=DataLoader(), sources=[str(path)])
    groups = {g: sorted(h.name for h in manager.groups[g].get_hosts()) for g in manager.groups}
    return manager, groups


def parse(path, cache=False):
    """Run the plugin itself, so that its errors are raised instead of warned about."""
    plugin = inventory_loader.get("mlcluster.core.hyperpod")
    data = InventoryData()
    plugin.parse(data, DataLoader(), str(path), cache=cache)
    if plugin.get_option("cache"):
        plugin.update_cache_if_changed()  # as InventoryManager does after each source
    return data


STANDARD_GROUPS = [
    ("controller-machine", "ml.c5.xlarge", 1),
    ("login-group", "ml.m5.large", 1),
    ("worker-p5", "ml.p5.48xlarge", 100),
    ("worker-g5", "ml.g5.12xlarge", 48),
]


def test_verify_file_accepts_only_hyperpod_config_names(tmp_path):
    plugin = inventory_loader.get("mlcluster.core.hyperpod")
    for name, accepted in [
        ("cluster.hyperpod.yml", True),
        ("hyperpod.yaml", True),
        ("prod-hyperpod.yaml", True),
        ("hosts.yml", False),
        ("cluster.aws_ec2.yml", False),
    ]:
        (tmp_path / name).write_text("plugin: mlcluster.core.hyperpod\n")
        assert plugin.verify_file(str(tmp_path / name)) is accepted, name


def test_150_nodes_over_pages_mapped_to_slurm_groups(moto_url, tmp_path, monkeypatch):
    cluster = create_cluster(moto_url, STANDARD_GROUPS)
    pages = []
    make_client = hyperpod.InventoryModule.sagemaker_client

    def counting_client(self):
        client = make_client(self)
        client.meta.events.register(
            "after-call.sagemaker.ListClusterNodes", lambda parsed, **_: pages.append(parsed)
        )
        return client

    monkeypatch.setattr(hyperpod.InventoryModule, "sagemaker_client", counting_client)
    config = write_config(
        tmp_path,
        cluster_name=cluster,
        endpoint_url=moto_url,
        provisioning_parameters=str(ROOT / "lifecycle/hyperpod/provisioning_parameters.json"),
    )
    manager, groups = load(config)

    assert len(pages) >= 2, "150 nodes must take more than one ListClusterNodes page"
    assert "NextToken" in pages[0]
    assert len(manager.hosts) == 150
    assert groups["slurm_controller"] == ["controller-machine-0"]
    assert groups["slurm_login"] == ["login-group-0"]
    assert len(groups["hyperpod_worker_p5"]) == 100
    assert len(groups["hyperpod_worker_g5"]) == 48
    assert len(groups["slurm_compute"]) == 148
    assert sorted(g.name for g in manager.groups["slurm_compute"].child_groups) == [
        "hyperpod_worker_g5",
        "hyperpod_worker_p5",
    ]
    assert sorted(g.name for g in manager.groups["slurm"].child_groups) == [
        "slurm_compute",
        "slurm_controller",
        "slurm_login",
    ]

    host = manager.get_host("worker-p5-7").get_vars()
    assert host["hyperpod_instance_type"] == "ml.p5.48xlarge"
    assert host["hyperpod_instance_group"] == "worker-p5"
    assert host["hyperpod_node_id"] == "worker-p5-7"
    assert host["hyperpod_status"] == "Running"
    assert host["hyperpod_cluster_name"] == cluster
    all_vars = manager.groups["all"].get_vars()
    assert all_vars["slurm_partitions"] == [
        {"name": "p5", "group": "hyperpod_worker_p5", "default": True},
        {"name": "g5", "group": "hyperpod_worker_g5"},
    ]


def test_default_mapping_and_constructed_groups(moto_url, tmp_path):
    cluster = create_cluster(
        moto_url,
        [("head", "ml.c5.xlarge", 1), ("gpu-a", "ml.g5.2xlarge", 2), ("cpu", "ml.m5.large", 1)],
    )
    config = write_config(
        tmp_path,
        cluster_name=cluster,
        endpoint_url=moto_url,
        controller_groups=["head"],
        connection="ssh",
        keyed_groups=[{"key": "hyperpod_instance_type", "prefix": "type"}],
        groups={"gpu": "hyperpod_instance_type.startswith('ml.g')"},
        compose={"slurm_node_weight": "2 if hyperpod_instance_group == 'cpu' else 1"},
    )
    manager, groups = load(config)
    assert groups["slurm_controller"] == ["head-0"]
    assert groups["slurm_login"] == []
    # Without worker groups named anywhere, every other instance group is a compute group.
    assert groups["slurm_compute"] == ["cpu-0", "gpu-a-0", "gpu-a-1"]
    assert groups["type_ml_g5_2xlarge"] == ["gpu-a-0", "gpu-a-1"]
    assert groups["gpu"] == ["gpu-a-0", "gpu-a-1"]
    assert manager.get_host("cpu-0").get_vars()["slurm_node_weight"] == 2
    assert "ansible_ssh_common_args" not in manager.get_host("cpu-0").get_vars()
    partitions = manager.groups["all"].get_vars()["slurm_partitions"]
    assert [p["name"] for p in partitions] == ["gpu_a", "cpu"]


@pytest.mark.parametrize("mode", ["exclude", "group"])
def test_nodes_not_running_are_left_out_or_grouped(moto_url, tmp_path, mode):
    cluster = create_cluster(
        moto_url, [("controller-machine", "ml.c5.xlarge", 1), ("worker", "ml.g5.xlarge", 4)]
    )
    set_node_status(cluster, "worker-1", "Pending")
    set_node_status(cluster, "worker-3", "Failure")
    config = write_config(
        tmp_path, cluster_name=cluster, endpoint_url=moto_url, unhealthy_nodes=mode
    )
    manager, groups = load(config)
    assert groups["slurm_compute"] == ["worker-0", "worker-2"]
    if mode == "exclude":
        assert "hyperpod_unhealthy" not in groups
        assert manager.get_host("worker-1") is None
    else:
        assert groups["hyperpod_unhealthy"] == ["worker-1", "worker-3"]
        assert manager.get_host("worker-3").get_vars()["hyperpod_status"] == "Failure"
        assert "worker-1" not in groups["slurm"] + groups["hyperpod_worker"]


def test_cache_serves_the_inventory_until_flushed(moto_url, tmp_path):
    cluster = create_cluster(
        moto_url, [("controller-machine", "ml.c5.xlarge", 1), ("w", "ml.g5.xlarge", 2)]
    )
    config = write_config(
        tmp_path,
        cluster_name=cluster,
        endpoint_url=moto_url,
        cache=True,
        cache_plugin="ansible.builtin.jsonfile",
        cache_connection=str(tmp_path / "cache"),
    )
    # cache=False is what --flush-cache and refresh_inventory pass: fetch and store.
    assert sorted(parse(config, cache=False).hosts) == ["controller-machine-0", "w-0", "w-1"]
    assert len(list((tmp_path / "cache").iterdir())) == 1

    backend = sagemaker_backends[DEFAULT_ACCOUNT_ID][REGION]
    backend.clusters[cluster].nodes.pop("w-1")
    assert sorted(parse(config, cache=True).hosts) == ["controller-machine-0", "w-0", "w-1"]
    assert sorted(parse(config, cache=False).hosts) == ["controller-machine-0", "w-0"]


def throttled_once_then_real(counter, times):
    """A before-send handler: the first ``times`` calls get a 400 ThrottlingException."""

    def handler(request, **_):
        counter.append(request.url)
        if len(counter) > times:
            return None  # the request goes to the server
        body = json.dumps({"__type": "ThrottlingException", "message": "Rate exceeded"}).encode()
        return AWSResponse(
            request.url, 400, {"Content-Type": "application/x-amz-json-1.1"}, _Raw(body)
        )

    return handler


class _Raw:
    def __init__(self, body):
        self.body = body

    def stream(self, **_):
        yield self.body


def test_throttling_is_retried(moto_url, tmp_path, monkeypatch):
    """Throttled ListClusterNodes calls are retried by botocore's retry handler.

    Stubber answers in ``before-call``, ahead of botocore's retry handler, so a stubbed error
    is never retried; the throttling answer is given in ``before-send`` instead, where a real
    HTTP response would arrive, and the retry then reaches the moto server.
    """
    cluster = create_cluster(
        moto_url, [("controller-machine", "ml.c5.xlarge", 1), ("w", "ml.g5.xlarge", 1)]
    )
    sent, retries = [], []
    make_client = hyperpod.InventoryModule.sagemaker_client

    def throttled_client(self):
        client = make_client(self)
        retries.append(client.meta.config.retries)
        client.meta.events.register(
            "before-send.sagemaker.ListClusterNodes", throttled_once_then_real(sent, 2)
        )
        return client

    monkeypatch.setattr(hyperpod.InventoryModule, "sagemaker_client", throttled_client)
    config = write_config(
        tmp_path, cluster_name=cluster, endpoint_url=moto_url, retry_mode="standard", max_attempts=4
    )
    assert sorted(parse(config).hosts) == ["controller-machine-0", "w-0"]
    assert retries == [{"mode": "standard", "total_max_attempts": 4}]
    assert len(sent) == 3  # two throttled, the third reached moto

    sent.clear()
    config = write_config(
        tmp_path, cluster_name=cluster, endpoint_url=moto_url, retry_mode="standard", max_attempts=2
    )
    with pytest.raises(AnsibleError, match=rf"HyperPod cluster {cluster}: .*ThrottlingException"):
        parse(config)
    assert len(sent) == 2


def test_unknown_cluster_is_a_clear_error(moto_url, tmp_path):
    config = write_config(tmp_path, cluster_name="no-such-cluster", endpoint_url=moto_url)
    with pytest.raises(
        AnsibleError, match=r"HyperPod cluster no-such-cluster: .*Could not find cluster"
    ):
        parse(config)


CLUSTER_ARN = "arn:aws:sagemaker:us-west-2:123456789012:cluster/abcd1234efgh"


def node_details(group, instance_id, ip, instance_type, status="Running"):
    return {
        "InstanceGroupName": group,
        "InstanceId": instance_id,
        "InstanceStatus": {"Status": status},
        "InstanceType": instance_type,
        "PrivatePrimaryIp": ip,
        "PrivateDnsHostname": f"ip-{ip.replace('.', '-')}.us-west-2.compute.internal",
    }


def test_private_ips_hostnames_and_ssm_from_stubbed_api(tmp_path, monkeypatch):
    """Fields moto does not return (private IP, DNS hostname) through a Stubber.

    The Stubber checks each response against the SageMaker service model.
    """
    nodes = [
        node_details("controller-machine", "i-0aaa00000000000c1", "10.1.0.10", "ml.c5.xlarge"),
        node_details("worker-p5", "i-0aaa00000000000w1", "10.1.1.21", "ml.p5.48xlarge"),
        node_details("worker-p5", "i-0aaa00000000000w2", "10.1.1.22", "ml.p5.48xlarge"),
    ]
    make_client = hyperpod.InventoryModule.sagemaker_client
    stubbers = []

    def stubbed_client(self):
        client = make_client(self)
        stubber = Stubber(client)
        stubber.add_response(
            "describe_cluster",
            {
                "ClusterArn": CLUSTER_ARN,
                "ClusterName": "ml-cluster",
                "ClusterStatus": "InService",
                "InstanceGroups": [
                    {"InstanceGroupName": "controller-machine", "CurrentCount": 1},
                    {"InstanceGroupName": "worker-p5", "CurrentCount": 2},
                ],
            },
            {"ClusterName": "ml-cluster"},
        )
        summaries = [
            {k: n[k] for k in ("InstanceGroupName", "InstanceId", "InstanceType", "InstanceStatus")}
            | {"LaunchTime": "2026-01-01T00:00:00Z"}
            for n in nodes
        ]
        stubber.add_response(
            "list_cluster_nodes",
            {"ClusterNodeSummaries": summaries[:2], "NextToken": "page-2"},
            {"ClusterName": "ml-cluster"},
        )
        stubber.add_response(
            "list_cluster_nodes",
            {"ClusterNodeSummaries": summaries[2:]},
            {"ClusterName": "ml-cluster", "NextToken": "page-2"},
        )
        for node in nodes:
            stubber.add_response(
                "describe_cluster_node",
                {"NodeDetails": node},
                {"ClusterName": "ml-cluster", "NodeId": node["InstanceId"]},
            )
        stubber.activate()
        stubbers.append(stubber)
        return client

    monkeypatch.setattr(hyperpod.InventoryModule, "sagemaker_client", stubbed_client)
    config = write_config(
        tmp_path,
        cluster_name="ml-cluster",
        describe_workers=1,  # the Stubber answers in the order the calls were queued
        compute_groups={"worker-p5": "p5"},
    )
    manager, groups = load(config)
    stubbers[0].assert_no_pending_responses()

    assert groups["slurm_controller"] == ["ip-10-1-0-10"]
    assert groups["hyperpod_worker_p5"] == ["ip-10-1-1-21", "ip-10-1-1-22"]
    host = manager.get_host("ip-10-1-1-22").get_vars()
    assert host["ansible_host"] == "10.1.1.22"
    assert host["hyperpod_private_ip"] == "10.1.1.22"
    assert host["hyperpod_node_id"] == "i-0aaa00000000000w2"
    assert host["hyperpod_cluster_id"] == "abcd1234efgh"
    proxy = host["ansible_ssh_common_args"]
    assert proxy == (
        "-o ProxyCommand='aws ssm start-session"
        " --target sagemaker-cluster:abcd1234efgh_worker-p5-i-0aaa00000000000w2"
        " --region us-west-2 --document-name AWS-StartSSHSession --parameters portNumber=%p'"
    )


def test_ansible_inventory_command_on_the_shipped_inventory(moto_url):
    """`ansible-inventory -i inventory/hyperpod --list`, exactly as a user runs it."""
    cluster = create_cluster(moto_url, [*STANDARD_GROUPS[:2], ("worker-p5", "ml.p5.48xlarge", 2)])
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "MLCLUSTER_HYPERPOD_CLUSTER": cluster,
        "AWS_ENDPOINT_URL_SAGEMAKER": moto_url,
    }
    result = subprocess.run(
        [str(venv_bin() / "ansible-inventory"), "-i", "inventory/hyperpod", "--list"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)
    assert listed["slurm_controller"]["children"] == ["hyperpod_controller_machine"]
    assert listed["hyperpod_controller_machine"]["hosts"] == ["controller-machine-0"]
    assert listed["hyperpod_worker_p5"]["hosts"] == ["worker-p5-0", "worker-p5-1"]
    assert "hyperpod_worker_p5" in listed["slurm_compute"]["children"]
    hostvars = listed["_meta"]["hostvars"]["worker-p5-1"]
    # group_vars/ beside the plugin config still apply.
    assert hostvars["ansible_user"] == "ubuntu"
    assert hostvars["slurm_node_config"] == {"Features": ["p5", "ml.p5.48xlarge", "efa"]}
    # --list marks values that came from an inventory plugin as unsafe: {"__ansible_unsafe": ...}
    assert "--target sagemaker-cluster:" in json.dumps(hostvars["ansible_ssh_common_args"])


def test_the_preflight_plays_pass_on_the_plugins_inventory(moto_url):
    """playbooks/preflight.yml and slurm_preflight.yml (required groups, variables, partitions)
    on inventory/hyperpod read from moto; a worker group of provisioning_parameters.json without
    nodes (worker-g5 here) makes no partition."""
    cluster = create_cluster(
        moto_url, [("controller-machine", "ml.c5.xlarge", 1), ("worker-p5", "ml.p5.48xlarge", 2)]
    )
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "MLCLUSTER_HYPERPOD_CLUSTER": cluster,
        "AWS_ENDPOINT_URL_SAGEMAKER": moto_url,
    }
    command = [
        str(venv_bin() / "ansible-playbook"), "-i", "inventory/hyperpod",
        "playbooks/preflight.yml", "playbooks/slurm_preflight.yml",
    ]  # fmt: skip
    result = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, check=False, timeout=300
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "controller-machine-0       : ok=" in result.stdout
    assert "failed=0" in result.stdout and "unreachable=0" in result.stdout
