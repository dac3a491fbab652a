"""Unit tests of the slurm_conf_lines and slurm_hostlist filters."""

from __future__ import annotations

import hashlib

import pytest

from mlcluster.paths import load_plugin

slurm_conf = load_plugin("filter", "slurm_conf")


def test_conf_lines_are_sorted_and_typed():
    lines = slurm_conf.slurm_conf_lines(
        {
            "TaskPlugin": ["task/cgroup", "task/affinity"],
            "ConstrainCores": True,
            "ConstrainSwapSpace": False,
            "SlurmctldPort": 6817,
            "Removed": None,
            "Empty": "",
        }
    )
    assert lines == [
        "ConstrainCores=YES",
        "ConstrainSwapSpace=NO",
        "SlurmctldPort=6817",
        "TaskPlugin=task/cgroup,task/affinity",
    ]


def test_conf_lines_quote_values_with_spaces():
    assert slurm_conf.slurm_conf_lines({"Reason": "not mounted"}) == ['Reason="not mounted"']
    assert slurm_conf.slurm_conf_lines({"Reason": '"kept"'}) == ['Reason="kept"']


def test_conf_lines_reject_a_list():
    with pytest.raises(TypeError, match="expects a dict"):
        slurm_conf.slurm_conf_lines(["a=b"])


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (["compute1"], "compute1"),
        (["compute1", "compute2", "compute3"], "compute[1-3]"),
        (["compute3", "compute1", "compute2", "compute10"], "compute[1-3,10]"),
        (["gpu01", "gpu02", "gpu10", "gpu9"], "gpu[9,01-02,10]"),
        (["ip-10-1-2-3", "ip-10-1-2-4"], "ip-10-1-2-[3-4]"),
        (["login", "compute1", "compute2"], "login,compute[1-2]"),
        (["a1", "b1", "a2"], "a[1-2],b1"),
    ],
)
def test_hostlist(names, expected):
    assert slurm_conf.slurm_hostlist(names) == expected


def _host(name, vcpus=8, sockets=2, cores=4, threads=1, memory=16000, gres="", **extra):
    return {
        "inventory_hostname": name,
        "ansible_facts": {
            "hostname": name.split(".")[0],
            "processor_vcpus": vcpus,
            "processor_count": sockets,
            "processor_cores": cores,
            "processor_threads_per_core": threads,
            "memtotal_mb": memory,
            "default_ipv4": {"address": "10.0.0.5"},
        },
        "__slurm_node_probe": {"gpu": {"gres": gres}},
        **extra,
    }


def test_node_from_facts():
    node = slurm_conf.slurm_node(_host("compute1", gres="gpu:h100:8"), 5)
    assert node == {
        "host": "compute1",
        "name": "compute1",
        "params": {
            "NodeAddr": "10.0.0.5",
            "CPUs": 8,
            "RealMemory": 15200,
            "Sockets": 2,
            "CoresPerSocket": 4,
            "ThreadsPerCore": 1,
            "Gres": "gpu:h100:8",
        },
    }


def test_node_without_consistent_topology_gives_only_cpus():
    params = slurm_conf.slurm_node(_host("c1", vcpus=6, sockets=2, cores=4), 0)["params"]
    assert params["CPUs"] == 6
    assert "Sockets" not in params and "Gres" not in params


def test_node_config_overrides_and_inventory_name_may_differ():
    node = slurm_conf.slurm_node(
        _host("c1.example.org", slurm_node_config={"Features": ["p5", "efa"], "Weight": 10}), 5
    )
    assert node["host"] == "c1.example.org" and node["name"] == "c1"
    assert node["params"]["Features"] == ["p5", "efa"]


NODES = [
    {"host": "compute1", "name": "compute1"},
    {"host": "compute2", "name": "compute2"},
    {"host": "compute3", "name": "compute3"},
]


def test_partitions_default_and_groups():
    partitions = slurm_conf.slurm_partition_list(
        [{"name": "p5", "group": "p5_nodes", "config": {"MaxTime": "2-00:00:00"}}],
        NODES,
        {"p5_nodes": ["compute2", "compute3"]},
        "batch",
        {"MaxTime": "INFINITE", "State": "UP"},
    )
    assert partitions == [
        {
            "name": "batch",
            "params": {
                "MaxTime": "INFINITE",
                "State": "UP",
                "Nodes": "compute[1-3]",
                "Default": True,
            },
        },
        {
            "name": "p5",
            "params": {
                "MaxTime": "2-00:00:00",
                "State": "UP",
                "Nodes": "compute[2-3]",
                "Default": False,
            },
        },
    ]


def test_partitions_explicit_default_wins():
    partitions = slurm_conf.slurm_partition_list(
        [{"name": "p5", "group": "g", "default": True}], NODES, {"g": ["compute1"]}, "batch", {}
    )
    assert [p["params"]["Default"] for p in partitions] == [False, True]


@pytest.mark.parametrize(
    ("groups", "message"),
    [({"g": []}, "has no hosts"), ({"g": ["login1"]}, "not compute nodes: login1")],
)
def test_partitions_reject_bad_groups(groups, message):
    with pytest.raises(ValueError, match=message):
        slurm_conf.slurm_partition_list([{"name": "p", "group": "g"}], NODES, groups, "", {})


@pytest.mark.parametrize("value", ['"half quoted', 'half quoted"', '"a" Evil=1 "b"'])
def test_conf_lines_refuse_a_quote_that_would_end_the_quoting(value):
    # '"a" Evil=1 "b"' starts and ends with a quote, yet would add the key Evil to the line
    with pytest.raises(ValueError) as exc:
        slurm_conf.slurm_conf_lines({"Reason": value})
    assert str(exc.value) == (
        f"Slurm setting Reason: the value {value!r} holds a double quote inside it (it would "
        "end the quoting)"
    )


def test_hostlist_lists_a_plain_name_once():
    assert slurm_conf.slurm_hostlist(["login", "login", "c1", "c1"]) == "login,c1"


def test_node_without_a_vcpu_fact_multiplies_its_topology():
    host = _host("c1", sockets=2, cores=8, threads=2)
    del host["ansible_facts"]["processor_vcpus"]
    params = slurm_conf.slurm_node(host, 0)["params"]
    assert (params["CPUs"], params["Sockets"], params["ThreadsPerCore"]) == (32, 2, 2)


def test_node_address_falls_back_to_ansible_host_then_hostname():
    host = _host("c1", ansible_host="192.0.2.7")
    host["ansible_facts"]["default_ipv4"] = {}
    assert slurm_conf.slurm_node(host, 5)["params"]["NodeAddr"] == "192.0.2.7"
    del host["ansible_host"]
    assert slurm_conf.slurm_node(host, 5)["params"]["NodeAddr"] == "c1"


@pytest.mark.parametrize("reserve", [-1, 100])
def test_node_reserve_outside_0_to_99_is_rejected(reserve):
    with pytest.raises(ValueError, match=f"reserve_percent must be 0-99, not {reserve}"):
        slurm_conf.slurm_node(_host("c1"), reserve)


@pytest.mark.parametrize(("reserve", "memory"), [(0, 16000), (99, 160)])
def test_node_reserve_of_0_and_99(reserve, memory):
    assert slurm_conf.slurm_node(_host("c1"), reserve)["params"]["RealMemory"] == memory


def test_filters_are_registered():
    assert slurm_conf.FilterModule().filters() == {
        "slurm_conf_lines": slurm_conf.slurm_conf_lines,
        "slurm_live_state": slurm_conf.slurm_live_state,
        "slurm_hostlist": slurm_conf.slurm_hostlist,
        "slurm_node": slurm_conf.slurm_node,
        "slurm_partition_list": slurm_conf.slurm_partition_list,
    }


@pytest.mark.parametrize(
    ("missing", "vcpus", "sockets", "cores", "threads"),
    [
        ("processor_count", 8, 0, 4, 2),
        ("processor_cores", 2, 2, 0, 1),
        ("processor_threads_per_core", 8, 2, 4, 0),
    ],
)
def test_node_with_a_missing_topology_fact_gives_only_cpus(missing, vcpus, sockets, cores, threads):
    host = _host("c1", vcpus=vcpus, sockets=sockets, cores=cores, threads=threads)
    del host["ansible_facts"][missing]
    params = slurm_conf.slurm_node(host, 0)["params"]
    assert params["CPUs"] == vcpus
    assert not {"Sockets", "CoresPerSocket", "ThreadsPerCore"} & set(params)


def test_slurm_live_state_reads_the_roles_probe():
    conf = "ClusterName=ml\n"
    good = hashlib.sha256(conf.encode()).hexdigest()
    lines = [
        f"file slurm.conf root:root:644 {good}",
        f"file cgroup.conf root:root:600 {good}",
        f"file gres.conf slurm:slurm:644 {good}",
        "file oci.conf root:root:644 " + "0" * 64,
        "digest 0123abcd",
        "slurmd /usr/sbin/slurmd --systemd --conf-server controller:6817",
        "unit slurmd.service enabled active",
        "unit slurmctld.service disabled inactive",
        "unit slurmdbd.service disabled active",
        "unit mariadb.service enabled inactive",
    ]
    wanted = {"slurm.conf": conf, "cgroup.conf": conf, "gres.conf": conf, "plugstack.conf": conf}
    live = slurm_conf.slurm_live_state(lines, wanted)
    assert live == {
        "files": {
            "slurm.conf": f"root:root:644:{good}",
            "cgroup.conf": f"root:root:600:{good}",
            "gres.conf": f"slurm:slurm:644:{good}",
            "oci.conf": "root:root:644:" + "0" * 64,
        },
        "digest": "0123abcd",
        "slurmd": "/usr/sbin/slurmd --systemd --conf-server controller:6817",
        "units": ["slurmd", "slurmctld", "slurmdbd", "mariadb"],
        # enabled or active: what stopping an unwanted daemon would change
        "units_on": ["slurmd", "slurmdbd", "mariadb"],
        # another mode, another owner, a file that is missing; the same text passes
        "changed": ["cgroup.conf", "gres.conf", "plugstack.conf"],
    }
    # The text's content counts, not only its presence.
    assert slurm_conf.slurm_live_state(lines, {"slurm.conf": conf + "#\n"})["changed"] == [
        "slurm.conf"
    ]


def test_slurm_live_state_of_a_node_without_slurm():
    # No conf directory, no digest recorded, slurmd not running, no unit installed.
    assert slurm_conf.slurm_live_state(["digest ", "slurmd "], {"slurm.conf": "x"}) == {
        "files": {},
        "digest": "",
        "slurmd": "",
        "units": [],
        "units_on": [],
        "changed": ["slurm.conf"],
    }
