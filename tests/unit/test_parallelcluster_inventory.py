"""The mlcluster.core.parallelcluster inventory plugin against a real moto server (EC2).

ParallelCluster tags every instance with parallelcluster:cluster-name, :node-type (HeadNode,
Compute, LoginNode) and, on compute nodes, :queue-name and :compute-resource-name; moto's
EC2 gives the instances private and public addresses and private DNS names.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import uuid

import boto3
import pytest
from ansible.inventory.manager import InventoryManager
from ansible.parsing.dataloader import DataLoader

from mlcluster.paths import project_root, venv_bin

from .ansible_collection import init_collection_loader

ROOT = project_root()
REGION = "us-west-2"  # the aws_env fixture's
pytestmark = pytest.mark.usefixtures("aws_env")
init_collection_loader()


@functools.cache
def an_image(url):
    ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=url)
    return ec2.describe_images(Owners=["amazon"], MaxResults=5)["Images"][0]["ImageId"]


def launch(url, cluster, node_type, count=1, queue=None, instance_type="c5.xlarge"):
    ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=url)
    image = an_image(url)
    tags = {"parallelcluster:cluster-name": cluster, "parallelcluster:node-type": node_type}
    if queue:
        tags |= {
            "parallelcluster:queue-name": queue,
            "parallelcluster:compute-resource-name": "cr1",
        }
    reservation = ec2.run_instances(
        ImageId=image,
        MinCount=count,
        MaxCount=count,
        InstanceType=instance_type,
        TagSpecifications=[
            {"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}
        ],
    )
    return reservation["Instances"]


def short(instance):
    return instance["PrivateDnsName"].split(".")[0]


@pytest.fixture
def cluster(moto_url):
    """A cluster of a head node, 3 gpu and 2 cpu compute nodes, a login node; another cluster."""
    name = f"pc-{uuid.uuid4().hex[:6]}"
    nodes = {
        "head": launch(moto_url, name, "HeadNode"),
        "gpu": launch(moto_url, name, "Compute", 3, "gpu", "p4d.24xlarge"),
        "cpu": launch(moto_url, name, "Compute", 2, "cpu-large"),
        "login": launch(moto_url, name, "LoginNode"),
    }
    launch(moto_url, f"{name}-other", "HeadNode")
    return name, nodes


def load(tmp_path, **options):
    path = tmp_path / "cluster.parallelcluster.yml"
    path.write_text(json.dumps({"plugin": "mlcluster.core.parallelcluster", **options}))
    manager = InventoryManager(loader=DataLoader(), sources=[str(path)])
    groups = {g: sorted(h.name for h in manager.groups[g].get_hosts()) for g in manager.groups}
    return manager, groups


def test_nodes_grouped_by_their_parallelcluster_tags(moto_url, tmp_path, cluster):
    name, nodes = cluster
    manager, groups = load(tmp_path, cluster_name=name, endpoint_url=moto_url)
    head = nodes["head"][0]
    assert groups["slurm_controller"] == [short(head)]
    assert groups["slurm_login"] == [short(nodes["login"][0])]
    assert groups["pcluster_queue_gpu"] == sorted(short(i) for i in nodes["gpu"])
    assert groups["pcluster_queue_cpu_large"] == sorted(short(i) for i in nodes["cpu"])
    assert len(groups["slurm_compute"]) == 5
    assert len(manager.hosts) == 7  # the other cluster's head node is not listed
    assert manager.groups["all"].get_vars()["slurm_partitions"] == [
        {"name": "cpu-large", "group": "pcluster_queue_cpu_large", "default": True},
        {"name": "gpu", "group": "pcluster_queue_gpu"},
    ]

    gpu = manager.get_host(short(nodes["gpu"][1])).get_vars()
    assert gpu["pcluster_queue"] == "gpu"
    assert gpu["pcluster_instance_type"] == "p4d.24xlarge"
    assert gpu["pcluster_compute_resource"] == "cr1"
    assert gpu["ansible_host"] == nodes["gpu"][1]["PrivateIpAddress"]
    # Only the head node is public: the others are reached through it.
    assert gpu["ansible_ssh_common_args"] == f"-o ProxyJump=ubuntu@{head['PublicIpAddress']}"
    head_vars = manager.get_host(short(head)).get_vars()
    assert head_vars["ansible_host"] == head["PublicIpAddress"]
    assert "ansible_ssh_common_args" not in head_vars


def test_stopped_nodes_are_not_listed_and_ssm_access(moto_url, tmp_path, cluster):
    name, nodes = cluster
    ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=moto_url)
    ec2.stop_instances(InstanceIds=[nodes["gpu"][0]["InstanceId"]])
    manager, groups = load(tmp_path, cluster_name=name, endpoint_url=moto_url, connection="ssm")
    assert short(nodes["gpu"][0]) not in groups["pcluster_queue_gpu"]
    assert len(groups["pcluster_queue_gpu"]) == 2
    host = manager.get_host(short(nodes["cpu"][0])).get_vars()
    assert host["ansible_host"] == nodes["cpu"][0]["PrivateIpAddress"]
    assert (
        f"--target {nodes['cpu'][0]['InstanceId']} --region {REGION}"
        in host["ansible_ssh_common_args"]
    )


def test_ansible_inventory_command_on_the_shipped_inventory(moto_url, cluster):
    name, nodes = cluster
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "MLCLUSTER_PCLUSTER_CLUSTER": name,
        "AWS_ENDPOINT_URL_EC2": moto_url,  # botocore's own per-service endpoint variable
    }
    result = subprocess.run(
        [str(venv_bin() / "ansible-inventory"), "-i", "inventory/parallelcluster", "--list"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)
    assert listed["slurm_controller"]["hosts"] == [short(nodes["head"][0])]
    assert sorted(listed["slurm_compute"]["children"]) == [
        "pcluster_queue_cpu_large",
        "pcluster_queue_gpu",
    ]
    hostvars = listed["_meta"]["hostvars"][short(nodes["gpu"][0])]
    assert hostvars["ansible_user"] == "ubuntu"  # group_vars beside the plugin config
    assert hostvars["slurm_memory_reserve_percent"] == 5
