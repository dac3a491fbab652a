"""The local cluster's plan: addresses, MACs and subnets, without starting anything."""

from __future__ import annotations

import pytest
import yaml

from mlcluster import local
from mlcluster.errors import MlclusterError


def test_plan_gives_fixed_addresses_and_groups():
    nodes = local.plan_nodes("mlc", "10.213.0.0/24", computes=2, login=True)
    assert [(n.hostname, n.group, n.ip, n.container) for n in nodes] == [
        ("controller", "slurm_controller", "10.213.0.10", "mlc-controller"),
        ("login1", "slurm_login", "10.213.0.11", "mlc-login1"),
        ("compute1", "slurm_compute", "10.213.0.21", "mlc-compute1"),
        ("compute2", "slurm_compute", "10.213.0.22", "mlc-compute2"),
    ]


def test_node_macs_are_local_unicast_and_distinct():
    nodes = local.plan_nodes("x", "10.213.57.0/24", computes=64, login=True)
    macs = [local.node_mac(n.ip) for n in nodes]
    assert len(set(macs)) == len(nodes)
    assert local.node_mac("10.213.57.21") == "02:42:0a:d5:39:15"
    # First octet 0x02: locally administered, unicast.
    assert all(int(mac.split(":")[0], 16) & 0b11 == 0b10 for mac in macs)


def test_named_clusters_get_their_own_subnet():
    assert local.default_subnet("mlc") == "10.213.0.0/24"
    assert local.default_subnet("ci") != local.default_subnet("slit")
    assert local.default_subnet("ci").startswith("10.213.")


@pytest.mark.parametrize(
    ("subnet", "computes", "message"),
    [("10.213.0.0/25", 2, "too small"), ("10.213.0.0/24", 0, "between 1 and 64")],
)
def test_bad_plans_are_refused(subnet, computes, message):
    with pytest.raises(MlclusterError, match=message):
        local.plan_nodes("mlc", subnet, computes=computes, login=False)


def test_a_stale_address_allocation_gets_a_clear_error(monkeypatch):
    err = MlclusterError(
        "`podman start mlc-controller ...` failed (exit 125): Error: unable to start container "
        '"60d5": IPAM error: requested ip address 10.213.0.10 is already allocated to container '
        "ID 1d6be3ea710baa6d"
    )
    monkeypatch.setattr(local.podman, "exists", lambda kind, name: False)
    clear = local.stale_address_error(err)
    assert clear is not None
    assert "10.213.0.10 is still recorded for container 1d6be3ea710b" in str(clear)
    assert "/run/containers/networks/ipam.db" in str(clear)
    # The address really in use by a live container: podman's own error stands.
    monkeypatch.setattr(local.podman, "exists", lambda kind, name: True)
    assert local.stale_address_error(err) is None
    assert local.stale_address_error(MlclusterError("something else")) is None


def test_ssh_options_accept_only_the_recorded_host_keys(tmp_path):
    key = tmp_path / "id_ed25519"
    opts = local.ssh_options(key)
    assert opts[:2] == ["-i", str(key)]
    pairs = dict(opt.split("=", 1) for opt in opts[3::2])
    assert pairs["StrictHostKeyChecking"] == "yes"
    assert pairs["UserKnownHostsFile"] == str(tmp_path / "known_hosts")
    assert not any("/dev/null" in opt or opt.endswith("=no") for opt in opts)


def test_known_hosts_lines_name_each_node_address():
    text = local.known_hosts_text(
        [
            ("10.213.7.10", "ssh-ed25519 AAAAC3Nza1 root@controller\n"),
            ("10.213.7.21", "ssh-ed25519 AAAAC3Nza2"),
        ]
    )
    assert text == "10.213.7.10 ssh-ed25519 AAAAC3Nza1\n10.213.7.21 ssh-ed25519 AAAAC3Nza2\n"
    with pytest.raises(MlclusterError, match=r"not an SSH public key for 10\.213\.7\.22"):
        local.known_hosts_text([("10.213.7.22", "cat: no such file")])


def test_written_inventory_checks_host_keys_against_the_clusters_file(tmp_path, monkeypatch):
    monkeypatch.setenv("MLCLUSTER_STATE", str(tmp_path))
    nodes = local.plan_nodes("hk", "10.213.9.0/24", computes=1, login=False)
    state = local.ClusterState("hk", "10.213.9.0/24", "hk-net", "hk-fsx", "img", nodes)
    for node in nodes:
        local._keygen(local.host_key_path("hk", node.hostname), f"root@{node.hostname}")
    known = local.write_known_hosts(state)
    lines = known.read_text().splitlines()
    pub = local.host_key_path("hk", "compute1").with_suffix(".pub").read_text().split()
    assert lines[1] == f"10.213.9.21 {pub[0]} {pub[1]}"
    assert [line.split()[0] for line in lines] == ["10.213.9.10", "10.213.9.21"]
    inv = yaml.safe_load(local.write_inventory(state).read_text())
    args = inv["all"]["vars"]["ansible_ssh_common_args"].split()
    assert "StrictHostKeyChecking=yes" in args
    assert f"UserKnownHostsFile={tmp_path}/clusters/hk/known_hosts" in args
