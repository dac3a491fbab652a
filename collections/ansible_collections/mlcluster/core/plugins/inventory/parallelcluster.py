"""Dynamic inventory of an AWS ParallelCluster 3 cluster, from the EC2 tags it puts on its nodes."""

from __future__ import annotations

from ansible_collections.mlcluster.core.plugins.plugin_utils.cluster_inventory import (
    ClusterInventory,
    group_name,
    ssm_proxy_args,
)

DOCUMENTATION = r"""
name: parallelcluster
short_description: AWS ParallelCluster nodes as an mlcluster inventory
description:
  - Finds a ParallelCluster 3 cluster's instances by the tags ParallelCluster puts on them
    (C(parallelcluster:cluster-name), C(parallelcluster:node-type),
    C(parallelcluster:queue-name)) with EC2 C(DescribeInstances), paginated.
  - The head node goes into C(slurm_controller), login nodes into C(slurm_login), and compute
    nodes into C(<group_prefix><queue>) under C(slurm_compute); O(slurm_partitions) makes each
    queue a Slurm partition.
  - Only running instances are listed. Compute nodes that Slurm's power saving has not started
    (dynamic nodes) have no instance yet and are not listed; configure them through the
    OnNodeConfigured lifecycle script (C(lifecycle/parallelcluster/)) instead.
  - The configuration file's name must end in C(parallelcluster.yml) or C(parallelcluster.yaml).
author: mlcluster
requirements:
  - boto3
  - botocore
extends_documentation_fragment:
  - constructed
  - inventory_cache
  - mlcluster.core.aws_cluster_inventory
options:
  plugin:
    description: The name of this plugin.
    required: true
    type: str
    choices: [mlcluster.core.parallelcluster]
  cluster_name:
    description: The ParallelCluster cluster's name (C(pcluster create-cluster --cluster-name)).
    required: true
    type: str
    env:
      - name: MLCLUSTER_PCLUSTER_CLUSTER
  group_prefix:
    description: Prefix of the group made for each queue.
    type: str
    default: pcluster_queue_
  connection:
    description:
      - How Ansible reaches the nodes. C(ssh) connects to the head node's public IP (its private
        IP when it has none) and to the other nodes' private IPs through the head node
        (C(ProxyJump)). C(ssh_private) uses the private IPs only (from inside the VPC). C(ssm)
        tunnels SSH through AWS Systems Manager Session Manager to each instance.
    type: str
    default: ssh
    choices: [ssh, ssh_private, ssm]
  head_node_user:
    description:
      - The user for the jump through the head node with O(connection=ssh) (C(ubuntu) on Ubuntu
        images, C(ec2-user) on Amazon Linux and RHEL).
    type: str
    default: ubuntu
"""

EXAMPLES = r"""
# inventory/parallelcluster/cluster.parallelcluster.yml
plugin: mlcluster.core.parallelcluster
cluster_name: pc1
region: us-east-1
keyed_groups:
  - key: pcluster_instance_type
    prefix: type
"""

HEAD, COMPUTE, LOGIN = "HeadNode", "Compute", "LoginNode"


class InventoryModule(ClusterInventory):
    NAME = "mlcluster.core.parallelcluster"
    INVENTORY_FILE_SUFFIXES = ("parallelcluster.yml", "parallelcluster.yaml")

    def describe(self):
        return f"ParallelCluster cluster {self.get_option('cluster_name')}"

    def ec2_client(self):
        return self.aws_client("ec2")

    def fetch(self):
        client = self.ec2_client()
        filters = [
            {
                "Name": "tag:parallelcluster:cluster-name",
                "Values": [self.get_option("cluster_name")],
            },
            {"Name": "instance-state-name", "Values": ["running"]},
        ]
        nodes = []
        for page in client.get_paginator("describe_instances").paginate(Filters=filters):
            for reservation in page["Reservations"]:
                nodes.extend(
                    node_record(i, client.meta.region_name) for i in reservation["Instances"]
                )
        return {"name": self.get_option("cluster_name"), "nodes": nodes}

    def populate(self, cluster, config_dir):
        heads = [n for n in cluster["nodes"] if n["node_type"] == HEAD]
        if not cluster["nodes"]:
            self.display.warning(f"{self.describe()} has no running instances")
        elif len(heads) != 1:
            self.display.warning(f"{self.describe()} has {len(heads)} head nodes, not one")
        prefix = self.get_option("group_prefix")
        queues = sorted({n["queue"] for n in cluster["nodes"] if n["node_type"] == COMPUTE})
        for queue in queues:
            self.inventory.add_child(
                "slurm_compute", self.inventory.add_group(group_name(prefix + queue))
            )
        self.set_partitions([(queue, group_name(prefix + queue)) for queue in queues])

        head = heads[0] if heads else None
        for node in sorted(cluster["nodes"], key=lambda n: n["hostname"]):
            if node["node_type"] == HEAD:
                group = "slurm_controller"
            elif node["node_type"] == LOGIN:
                group = "slurm_login"
            elif node["node_type"] == COMPUTE:
                group = group_name(prefix + node["queue"])
            else:
                continue
            self.add_node(node["hostname"], group, self.host_variables(node, head))

    def host_variables(self, node, head):
        variables = {
            "pcluster_cluster_name": self.get_option("cluster_name"),
            "pcluster_node_type": node["node_type"],
            "pcluster_queue": node["queue"],
            "pcluster_compute_resource": node["compute_resource"],
            "pcluster_instance_id": node["instance_id"],
            "pcluster_instance_type": node["instance_type"],
            "pcluster_private_ip": node["private_ip"],
            "ansible_host": node["private_ip"],
        }
        connection = self.get_option("connection")
        if connection == "ssm":
            variables["ansible_ssh_common_args"] = ssm_proxy_args(
                node["instance_id"], node["region"]
            )
        elif connection == "ssh" and node is head:
            variables["ansible_host"] = node["public_ip"] or node["private_ip"]
        elif connection == "ssh" and head and head["public_ip"]:
            # Only the head node has a public address: the others are reached through it.
            jump = f"{self.get_option('head_node_user')}@{head['public_ip']}"
            variables["ansible_ssh_common_args"] = f"-o ProxyJump={jump}"
        return variables


def node_record(instance, region):
    """The fields of a DescribeInstances instance the inventory uses, JSON-serialisable."""
    tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
    dns_name = instance.get("PrivateDnsName") or ""
    return {
        "instance_id": instance["InstanceId"],
        "instance_type": instance.get("InstanceType", ""),
        "node_type": tags.get("parallelcluster:node-type", ""),
        "queue": tags.get("parallelcluster:queue-name", ""),
        "compute_resource": tags.get("parallelcluster:compute-resource-name", ""),
        "private_ip": instance.get("PrivateIpAddress") or "",
        "public_ip": instance.get("PublicIpAddress") or "",
        "hostname": dns_name.split(".", 1)[0] or instance["InstanceId"],
        "region": region,
    }
