"""Dynamic inventory of a SageMaker HyperPod (Slurm) cluster, from the SageMaker API."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor

from ansible.errors import AnsibleParserError
from ansible_collections.mlcluster.core.plugins.plugin_utils.cluster_inventory import (
    ClusterInventory,
    group_name,
    ssm_proxy_args,
)

DOCUMENTATION = r"""
name: hyperpod
short_description: SageMaker HyperPod cluster nodes as an mlcluster inventory
description:
  - Reads a SageMaker HyperPod cluster through the SageMaker API (C(DescribeCluster),
    C(ListClusterNodes) with pagination, C(DescribeClusterNode) for each node's private IP and
    hostname) and puts its nodes in the groups every mlcluster platform uses.
  - Each instance group becomes a group C(<group_prefix><instance group>) (name sanitised).
    The controller instance group's node goes into C(slurm_controller), the login instance
    groups' nodes into C(slurm_login), and every compute instance group's group becomes a child
    of C(slurm_compute); O(slurm_partitions) turns each compute instance group into a Slurm
    partition.
  - Nodes that are not C(Running) are left out, or put in O(unhealthy_group), as chosen.
  - The configuration file's name must end in C(hyperpod.yml) or C(hyperpod.yaml).
  - Credentials come from the usual AWS settings (environment, shared credentials file,
    instance profile); throttled calls are retried by botocore's retry modes.
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
    choices: [mlcluster.core.hyperpod]
  cluster_name:
    description: The HyperPod cluster's name or ARN.
    required: true
    type: str
    env:
      - name: MLCLUSTER_HYPERPOD_CLUSTER
  describe_workers:
    description:
      - How many C(DescribeClusterNode) calls run at once. The calls are read-only; retries
        handle throttling.
    type: int
    default: 8
  provisioning_parameters:
    description:
      - A C(provisioning_parameters.json) (the file the HyperPod lifecycle scripts read) whose
        C(controller_group), C(login_group) and C(worker_groups) give the group mapping. A
        relative path is relative to this configuration file.
      - O(controller_groups), O(login_groups) and O(compute_groups) override what it says.
    type: str
  controller_groups:
    description:
      - Instance groups whose node is the Slurm controller (C(slurm_controller)).
      - Without it, the C(controller_group) of O(provisioning_parameters), else
        C(controller-machine), the reference lifecycle scripts' name.
    type: list
    elements: str
  login_groups:
    description:
      - Instance groups of login nodes (C(slurm_login)).
      - Without it, the C(login_group) of O(provisioning_parameters), else C(login-group).
    type: list
    elements: str
  compute_groups:
    description:
      - Compute instance groups and their Slurm partition names, a mapping of instance group
        to partition.
      - Without it, the C(worker_groups) of O(provisioning_parameters), else every instance group
        that is neither a controller nor a login group, each its own partition named like its
        inventory group without the prefix.
    type: dict
  group_prefix:
    description: Prefix of the group made for each instance group.
    type: str
    default: hyperpod_
  hostnames:
    description:
      - What names the hosts. C(private_dns_hostname) is the node's hostname (C(ip-10-1-0-10)),
        which is also its Slurm NodeName; C(instance_id) the EC2 instance id. A node the API
        gives no hostname for is named by its instance id.
    type: str
    default: private_dns_hostname
    choices: [private_dns_hostname, instance_id]
  unhealthy_nodes:
    description:
      - What to do with nodes whose status is not C(Running) (C(Pending), C(Failure),
        C(SystemUpdating), ...). C(exclude) leaves them out; C(group) puts them only in
        O(unhealthy_group), outside every Slurm group, so that nothing configures them by
        accident.
    type: str
    default: exclude
    choices: [exclude, group]
  unhealthy_group:
    description: The group of nodes that are not C(Running), with O(unhealthy_nodes=group).
    type: str
    default: hyperpod_unhealthy
  connection:
    description:
      - How Ansible reaches the nodes. C(ssh) connects to the private IP (from a host in the
        VPC, or through a VPN). C(ssm) tunnels SSH through AWS Systems Manager Session Manager
        to the C(sagemaker-cluster:<cluster id>_<instance group>-<instance id>) target; it needs
        the AWS CLI and its session-manager-plugin where Ansible runs.
    type: str
    default: ssm
    choices: [ssh, ssm]
"""

EXAMPLES = r"""
---
# inventory/hyperpod/cluster.hyperpod.yml
plugin: mlcluster.core.hyperpod
cluster_name: ml-cluster
region: us-west-2
# The same group mapping the lifecycle scripts use:
provisioning_parameters: ../../lifecycle/hyperpod/provisioning_parameters.json

---
# Explicit mapping, nodes reached directly, unhealthy nodes kept in a group, a day's cache:
plugin: mlcluster.core.hyperpod
cluster_name: arn:aws:sagemaker:us-west-2:123456789012:cluster/abcd1234efgh
controller_groups: [head]
login_groups: [login]
compute_groups:
  gpu-p5: p5
  gpu-g5: g5
connection: ssh
unhealthy_nodes: group
cache: true
cache_plugin: ansible.builtin.jsonfile
cache_connection: ~/.cache/mlcluster-inventory
cache_timeout: 86400
keyed_groups:
  - key: hyperpod_instance_type
    prefix: type
compose:
  ansible_host: hyperpod_private_ip
"""

RUNNING = "Running"
DEFAULT_CONTROLLER_GROUPS = ["controller-machine"]
DEFAULT_LOGIN_GROUPS = ["login-group"]


class InventoryModule(ClusterInventory):
    NAME = "mlcluster.core.hyperpod"
    INVENTORY_FILE_SUFFIXES = ("hyperpod.yml", "hyperpod.yaml")

    def describe(self):
        return f"HyperPod cluster {self.get_option('cluster_name')}"

    def sagemaker_client(self):
        return self.aws_client("sagemaker")

    def fetch(self):
        name = self.get_option("cluster_name")
        client = self.sagemaker_client()
        described = client.describe_cluster(ClusterName=name)
        summaries = []
        for page in client.get_paginator("list_cluster_nodes").paginate(ClusterName=name):
            summaries.extend(page["ClusterNodeSummaries"])

        def describe(summary):
            return client.describe_cluster_node(ClusterName=name, NodeId=summary["InstanceId"])[
                "NodeDetails"
            ]

        with ThreadPoolExecutor(max_workers=max(1, self.get_option("describe_workers"))) as pool:
            details = list(pool.map(describe, summaries))

        arn = described["ClusterArn"]
        return {
            "name": described["ClusterName"],
            "arn": arn,
            "id": arn.rsplit("/", 1)[-1],
            "status": described.get("ClusterStatus", ""),
            "region": arn.split(":")[3],
            "instance_groups": [
                g["InstanceGroupName"] for g in described.get("InstanceGroups", [])
            ],
            "nodes": [node_record(d) for d in details],
        }

    # --- the inventory ---------------------------------------------------------------------

    def group_mapping(self, config_dir):
        """Controller groups, login groups, {compute group: partition} (None: every other group),
        and whether the controller and login groups are the defaults rather than named."""
        params = {}
        if self.get_option("provisioning_parameters"):
            params = self.provisioning_parameters(config_dir)
        controllers = self.get_option("controller_groups")
        if controllers is None and params.get("controller_group"):
            controllers = [params["controller_group"]]
        logins = self.get_option("login_groups")
        if logins is None and params:
            logins = [params["login_group"]] if params.get("login_group") else []
        computes = self.get_option("compute_groups")
        if computes is None and params.get("worker_groups"):
            try:
                computes = {
                    w["instance_group_name"]: w["partition_name"] for w in params["worker_groups"]
                }
            except (KeyError, TypeError) as e:
                raise AnsibleParserError(
                    "provisioning_parameters: each of worker_groups needs instance_group_name"
                    f" and partition_name ({e!r} in {params['worker_groups']!r})"
                ) from e
        return (
            controllers or DEFAULT_CONTROLLER_GROUPS,
            DEFAULT_LOGIN_GROUPS if logins is None else logins,
            computes,
            {"controller": controllers is None, "login": logins is None},
        )

    def provisioning_parameters(self, config_dir):
        path = os.path.join(
            config_dir, os.path.expanduser(self.get_option("provisioning_parameters"))
        )
        try:
            with open(path, encoding="utf-8") as f:
                params = json.load(f)
        except (OSError, ValueError) as e:
            raise AnsibleParserError(f"provisioning_parameters {path}: {e}") from e
        if not isinstance(params, dict):
            raise AnsibleParserError(f"provisioning_parameters {path}: not a JSON object")
        return params

    def populate(self, cluster, config_dir):
        controllers, logins, computes, defaulted = self.group_mapping(config_dir)
        prefix = self.get_option("group_prefix")
        if computes is None:
            computes = {
                g: group_name(g)
                for g in cluster["instance_groups"]
                if g not in controllers and g not in logins
            }
        named = set(computes)
        named |= set() if defaulted["controller"] else set(controllers)
        named |= set() if defaulted["login"] else set(logins)
        unknown = sorted(named - set(cluster["instance_groups"]))
        if unknown:
            self.display.warning(
                f"HyperPod cluster {cluster['name']} has no instance group {', '.join(unknown)}"
                f" (it has {', '.join(cluster['instance_groups'])})"
            )

        group_of = {}
        for instance_group in sorted(set(cluster["instance_groups"]) | set(computes)):
            group_of[instance_group] = self.inventory.add_group(group_name(prefix + instance_group))
            if instance_group in computes:
                self.inventory.add_child("slurm_compute", group_of[instance_group])
            elif instance_group in controllers:
                self.inventory.add_child("slurm_controller", group_of[instance_group])
            elif instance_group in logins:
                self.inventory.add_child("slurm_login", group_of[instance_group])

        for node in cluster["nodes"]:
            healthy = node["status"] == RUNNING
            if not healthy and self.get_option("unhealthy_nodes") == "exclude":
                continue
            name = node["instance_id"]
            if self.get_option("hostnames") == "private_dns_hostname" and node["hostname"]:
                name = node["hostname"]
            if healthy:
                group = group_of.get(node["instance_group"])
            else:
                group = self.inventory.add_group(self.get_option("unhealthy_group"))
            self.add_node(name, group, self.host_variables(cluster, node))

        # A partition of an instance group without (healthy) nodes would fail the preflight.
        self.set_partitions(
            [
                (partition, group_of[g])
                for g, partition in computes.items()
                if self.inventory.groups[group_of[g]].get_hosts()
            ]
        )

    def host_variables(self, cluster, node):
        variables = {
            "hyperpod_cluster_name": cluster["name"],
            "hyperpod_cluster_id": cluster["id"],
            "hyperpod_instance_group": node["instance_group"],
            "hyperpod_instance_type": node["instance_type"],
            "hyperpod_node_id": node["instance_id"],
            "hyperpod_status": node["status"],
            "hyperpod_private_ip": node["private_ip"],
            "hyperpod_private_dns_name": node["private_dns_name"],
            "ansible_host": node["private_ip"] or node["instance_id"],
        }
        if self.get_option("connection") == "ssm":
            target = (
                f"sagemaker-cluster:{cluster['id']}_{node['instance_group']}-{node['instance_id']}"
            )
            variables["ansible_ssh_common_args"] = ssm_proxy_args(target, cluster["region"])
        return variables


def node_record(details):
    """The fields of a DescribeClusterNode answer the inventory uses, JSON-serialisable."""
    dns_name = details.get("PrivateDnsHostname") or ""
    return {
        "instance_id": details["InstanceId"],
        "instance_group": details["InstanceGroupName"],
        "instance_type": details.get("InstanceType", ""),
        "status": details.get("InstanceStatus", {}).get("Status", ""),
        "private_ip": details.get("PrivatePrimaryIp") or "",
        "private_dns_name": dns_name,
        "hostname": dns_name.split(".", 1)[0],
    }
