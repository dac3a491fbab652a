"""What the mlcluster inventory plugins for AWS clusters share: configuration, cache, AWS clients
with retries, and the Slurm group layout every mlcluster platform uses."""

from __future__ import annotations

import os
import shlex

from ansible.errors import AnsibleError
from ansible.inventory.group import to_safe_group_name
from ansible.plugins.inventory import BaseInventoryPlugin, Cacheable, Constructable

try:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError
except ImportError:  # reported by parse(), where Ansible shows it
    boto3 = None

SLURM_GROUPS = ("slurm_controller", "slurm_login", "slurm_compute")


def ssm_proxy_args(target, region):
    """ansible_ssh_common_args that tunnel SSH through an SSM Session Manager session."""
    session = shlex.join(
        [
            "aws", "ssm", "start-session", "--target", target, "--region", region,
            "--document-name", "AWS-StartSSHSession", "--parameters", "portNumber=%p",
        ]
    )  # fmt: skip
    return f"-o ProxyCommand={shlex.quote(session)}"


def group_name(name):
    """An Ansible group name: AWS names have dashes, group names may not."""
    return to_safe_group_name(name, force=True, silent=True)


class ClusterInventory(BaseInventoryPlugin, Constructable, Cacheable):
    """Subclasses set NAME and INVENTORY_FILE_SUFFIXES and implement fetch() and populate()."""

    INVENTORY_FILE_SUFFIXES = ()

    def verify_file(self, path):
        return super().verify_file(path) and path.endswith(self.INVENTORY_FILE_SUFFIXES)

    def parse(self, inventory, loader, path, cache=True):
        super().parse(inventory, loader, path, cache)
        if boto3 is None:
            raise AnsibleError(f"the {self.NAME} inventory needs boto3 and botocore")
        self._read_config_data(path)

        cache_key = self.get_cache_key(path)
        use_cache = self.get_option("cache") and cache
        update_cache = self.get_option("cache") and not cache
        cluster = None
        if use_cache:
            try:
                cluster = self._cache[cache_key]
            except KeyError:
                update_cache = True
        if cluster is None:
            try:
                cluster = self.fetch()
            except (BotoCoreError, ClientError) as e:
                raise AnsibleError(f"{self.describe()}: {e}") from e
        if update_cache:
            self._cache[cache_key] = cluster
        self.add_slurm_groups()
        self.populate(cluster, os.path.dirname(path))

    def fetch(self):
        """The cluster as plain JSON data: what the cache holds and populate() reads."""
        raise NotImplementedError

    def populate(self, cluster, config_dir):
        raise NotImplementedError

    def describe(self):
        """The cluster in error messages."""
        raise NotImplementedError

    def aws_client(self, service):
        session = boto3.session.Session(
            profile_name=self.get_option("profile"), region_name=self.get_option("region")
        )
        retries = {
            "mode": self.get_option("retry_mode"),
            # botocore's max_attempts counts retries only; total_max_attempts counts every call.
            "total_max_attempts": self.get_option("max_attempts"),
        }
        return session.client(
            service, endpoint_url=self.get_option("endpoint_url"), config=Config(retries=retries)
        )

    def add_slurm_groups(self):
        self.inventory.add_group("slurm")
        for group in SLURM_GROUPS:
            self.inventory.add_group(group)
            self.inventory.add_child("slurm", group)

    def set_partitions(self, partitions):
        """``partitions``: [(partition name, inventory group)], the first the default."""
        if self.get_option("slurm_partitions") and partitions:
            value = [{"name": name, "group": group} for name, group in partitions]
            value[0]["default"] = True
            self.inventory.set_variable("all", "slurm_partitions", value)

    def add_node(self, name, group, variables):
        """A host in ``group`` with ``variables``, then compose, groups and keyed_groups."""
        self.inventory.add_host(name, group=group)
        for key, value in variables.items():
            self.inventory.set_variable(name, key, value)
        strict = self.get_option("strict")
        self._set_composite_vars(self.get_option("compose"), variables, name, strict=strict)
        self._add_host_to_composed_groups(self.get_option("groups"), variables, name, strict=strict)
        self._add_host_to_keyed_groups(
            self.get_option("keyed_groups"), variables, name, strict=strict
        )
