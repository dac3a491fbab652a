"""slurm.conf, gres.conf and cgroup.conf as the slurm role renders them, for pretend clusters
whose nodes differ in CPUs, memory, topology, GPUs and cgroup support.

The files come out of Ansible itself: a throw-away role made of the slurm role's own defaults,
vars and templates and the tasks of ``roles/slurm/tasks/configure.yml`` that derive and render
the configuration (picked by name), run on localhost through ansible-runner with each node's
facts and probe results given in the inventory below. Every expected line is written out here
by hand from those inputs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mlcluster.paths import project_root
from mlcluster.runner import EXIT_OK, run_playbook

ROLE = project_root() / "roles" / "slurm"
# The tasks of configure.yml that turn inventory, facts and probes into the three files; the
# probes themselves (which ask real nodes) are replaced by the inventory's answers.
RENDER_TASKS = (
    "Place this node in the cluster",
    "Describe the cluster",
    "Check that cgroups can be used where slurm_cgroup_mode insists",
    "Derive the Slurm configuration from the inventory and the nodes",
    "Render the Slurm configuration",
)
NO_DRIVER = "no usable NVIDIA driver: no NVML library libnvidia-ml.so.1, no nvidia-smi"


def _node(
    hostname,
    address,
    vcpus,
    sockets,
    cores,
    threads,
    memory_mb,
    gpu=None,
    cgroup=None,
    nvml=False,
    runc=True,
):
    facts = {
        "hostname": hostname,
        "default_ipv4": {"address": address} if address else {},
        "processor_vcpus": vcpus,
        "processor_count": sockets,
        "processor_cores": cores,
        "processor_threads_per_core": threads,
        "memtotal_mb": memory_mb,
    }
    probe = {"gpu": gpu or {}, "cgroup": cgroup or {}, "nvml_plugin": nvml, "runc": runc}
    return {"pretend_facts": facts, "__slurm_node_probe": probe}


def _gpus(kind, count):
    return {
        "available": True,
        "reason": "",
        "count": count,
        "gres": f"gpu:{kind}:{count}",
        "gpus": [{"type": kind, "device": f"/dev/nvidia{i}"} for i in range(count)],
    }


NO_GPU = {"available": False, "reason": NO_DRIVER, "count": 0, "gres": "", "gpus": []}
CGROUP_V2 = {"version": 2, "usable": True, "writable": ["cpuset", "cpu", "io", "memory", "pids"]}
CGROUP_V1_ALL = {
    "version": 1,
    "usable": True,
    "writable": ["freezer", "cpuset", "memory", "cpuacct", "devices"],
}
CGROUP_V1_NO_DEVICES = {
    "version": 1,
    "usable": True,
    "writable": ["freezer", "cpuset", "memory", "cpuacct"],
}
CGROUP_READ_ONLY = {"version": 2, "usable": False, "writable": []}


def _inventory(controller: dict, computes: dict, cluster_vars: dict, gpu_group=()) -> dict:
    controller_host = {
        name: {**_node(name, address, 4, 1, 4, 1, 8000), "__slurm_node_probe": {}}
        for name, address in controller.items()
    }
    children = {
        "slurm_controller": {"hosts": controller_host},
        "slurm_login": {"hosts": {}},
        "slurm_compute": {"hosts": computes},
    }
    if gpu_group:
        children["slurm_compute_gpu"] = {"hosts": {name: {} for name in gpu_group}}
    return {
        "all": {
            "vars": {
                "ansible_connection": "local",
                "ansible_python_interpreter": "{{ ansible_playbook_python }}",
                **cluster_vars,
            },
            "children": children,
        }
    }


# A CPU node with a clean topology, an 8-GPU node where Slurm's NVML plugin is installed, and a
# 4-GPU node without it, whose reported topology does not multiply to its CPU count, that has no
# default IPv4 fact and no writable devices controller.
HETEROGENEOUS = _inventory(
    {"head": "10.1.0.10"},
    {
        "cpu1": _node("cpu1", "10.1.0.21", 16, 2, 8, 1, 64000, NO_GPU, CGROUP_V2),
        "p4d-1.cluster.internal": {
            **_node(
                "p4d-1", "10.1.0.31", 96, 2, 24, 2, 1160000, _gpus("a100", 8), CGROUP_V1_ALL, True
            ),
        },
        "g5-1": {
            **_node("g5-1", None, 48, 1, 16, 2, 196000, _gpus("a10g", 4), CGROUP_V1_NO_DEVICES),
            "ansible_host": "10.1.0.41",
            "slurm_node_config": {"Features": ["g5", "a10g"], "Weight": 10},
        },
    },
    {
        "slurm_cluster_name": "hetero",
        "slurm_partitions": [
            {"name": "gpu", "group": "slurm_compute_gpu", "config": {"MaxTime": "2-00:00:00"}}
        ],
        "slurm_config": {"SlurmctldDebug": "debug", "MinJobAge": None},
    },
    gpu_group=("p4d-1.cluster.internal", "g5-1"),
)

# CPU nodes in unprivileged containers (one cannot write its cgroup controllers and has no
# runc), configless, without accounting, health check or the all-nodes partition.
CPU_ONLY = _inventory(
    {"ctl": "192.168.5.2"},
    {
        "compute1": _node("compute1", "192.168.5.11", 2, 1, 2, 1, 3900, NO_GPU, CGROUP_V2),
        "compute2": _node(
            "compute2", "192.168.5.12", 4, 1, 2, 2, 7900, NO_GPU, CGROUP_READ_ONLY, runc=False
        ),
    },
    {
        "slurm_configless": True,
        "slurm_accounting_enabled": False,
        "slurm_healthcheck_enabled": False,
        "slurm_default_partition": "",
        "slurm_memory_reserve_percent": 10,
        "slurm_partitions": [{"name": "debug", "group": "slurm_compute", "default": True}],
    },
)


def _render_role(root: Path) -> Path:
    """A role holding the slurm role's defaults, vars and templates and its render tasks."""
    tasks = yaml.safe_load((ROLE / "tasks" / "configure.yml").read_text())
    by_name = {task.get("name"): task for task in tasks}
    missing = [name for name in RENDER_TASKS if name not in by_name]
    assert not missing, f"configure.yml no longer has the tasks {missing}"
    role = root / "roles" / "slurm_render"
    (role / "tasks").mkdir(parents=True)
    for part in ("defaults", "vars", "templates"):
        (role / part).symlink_to(ROLE / part)
    pretend = {
        "name": "Take on the pretend node's facts",
        "ansible.builtin.set_fact": {
            key: f"{{{{ pretend_facts.{key} }}}}"
            for key in (
                "hostname",
                "default_ipv4",
                "processor_vcpus",
                "processor_count",
                "processor_cores",
                "processor_threads_per_core",
                "memtotal_mb",
            )
        }
        | {"cacheable": True},
    }
    write = {
        "name": "Write the rendered files",
        "ansible.builtin.copy": {
            "content": "{{ __slurm_conf_texts[item] }}",
            "dest": "{{ render_dir }}/{{ item }}",
            "mode": "0644",
        },
        "loop": "{{ __slurm_conf_texts | list }}",
        "run_once": True,
        "delegate_to": "localhost",
    }
    steps = [pretend, *(by_name[name] for name in RENDER_TASKS), write]
    (role / "tasks" / "main.yml").write_text(yaml.safe_dump(steps, sort_keys=False))
    playbook = root / "render.yml"
    playbook.write_text(
        yaml.safe_dump(
            [
                {
                    "name": "Render the Slurm configuration",
                    "hosts": "slurm_controller:slurm_compute",
                    "gather_facts": False,
                    "roles": [{"role": str(role)}],
                }
            ],
            sort_keys=False,
        )
    )
    return playbook


def _render(tmp_path_factory, inventory: dict) -> dict[str, list[str]]:
    root = tmp_path_factory.mktemp("slurm-render")
    playbook = _render_role(root)
    hosts = root / "hosts.yml"
    hosts.write_text(yaml.safe_dump(inventory, sort_keys=False))
    out = root / "out"
    out.mkdir()
    result = run_playbook(str(playbook), hosts, extravars={"render_dir": str(out)})
    assert result.exit_code == EXIT_OK, result.errors
    texts = {path.name: path.read_text() for path in out.iterdir()}
    for name, text in texts.items():
        assert text.startswith("#\n# Ansible managed\n#\n"), f"{name}: {text[:80]!r}"
    return {name: text.splitlines()[3:] for name, text in texts.items()}


@pytest.fixture(scope="module")
def heterogeneous(tmp_path_factory):
    return _render(tmp_path_factory, HETEROGENEOUS)


@pytest.fixture(scope="module")
def cpu_only(tmp_path_factory):
    return _render(tmp_path_factory, CPU_ONLY)


def test_slurm_conf_of_a_heterogeneous_cluster(heterogeneous):
    assert heterogeneous["slurm.conf"] == [
        "# slurm_config_defaults | combine(values derived from the inventory and the nodes)"
        " | combine(slurm_config)",
        "AccountingStorageHost=10.1.0.10",
        "AccountingStorageType=accounting_storage/slurmdbd",
        "AuthInfo=cred_expire=30",
        "AuthType=auth/munge",
        "ClusterName=hetero",
        "CredType=cred/munge",
        "Epilog=/etc/slurm/epilog.d/*",
        "GresTypes=gpu",
        "HealthCheckInterval=300",
        "HealthCheckNodeState=ANY",
        "HealthCheckProgram=/usr/local/sbin/mlcluster-slurm-healthcheck",
        "InactiveLimit=0",
        "JobAcctGatherFrequency=30",
        "JobAcctGatherType=jobacct_gather/cgroup",
        "JobCompType=jobcomp/none",
        "JobRequeue=1",
        "KillWait=10",
        "MailProg=/bin/true",
        "MessageTimeout=10",
        # MinJobAge: set to null in slurm_config, so left out
        "MpiDefault=none",
        "ProctrackType=proctrack/cgroup",
        "Prolog=/etc/slurm/prolog.d/*",
        "PropagateResourceLimitsExcept=MEMLOCK",
        "ReturnToService=2",
        "SchedulerParameters=bf_interval=10",
        "SchedulerType=sched/backfill",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        "SlurmUser=slurm",
        "SlurmctldDebug=debug",
        "SlurmctldHost=head(10.1.0.10)",
        "SlurmctldLogFile=/var/log/slurm/slurmctld.log",
        "SlurmctldPidFile=/run/slurmctld.pid",
        "SlurmctldPort=6817",
        "SlurmctldTimeout=120",
        "SlurmdDebug=info",
        "SlurmdLogFile=/var/log/slurm/slurmd.log",
        "SlurmdPidFile=/run/slurmd.pid",
        "SlurmdPort=6818",
        "SlurmdSpoolDir=/var/lib/slurm/slurmd",
        "SlurmdTimeout=20",
        "StateSaveLocation=/var/lib/slurm/slurmctld",
        "SwitchType=switch/none",
        "TaskPlugin=task/cgroup,task/affinity",
        "Waittime=0",
        "",
        "# Nodes: every host of group slurm_compute, from its facts (5 % of memory kept back).",
        # 64000 MB less 5 %; 2 x 8 x 1 = 16 CPUs, so the topology is written
        "NodeName=cpu1 CPUs=16 CoresPerSocket=8 NodeAddr=10.1.0.21 RealMemory=60800 Sockets=2"
        " ThreadsPerCore=1",
        # the host name, not the inventory name; 2 x 24 x 2 = 96
        "NodeName=p4d-1 CPUs=96 CoresPerSocket=24 Gres=gpu:a100:8 NodeAddr=10.1.0.31"
        " RealMemory=1102000 Sockets=2 ThreadsPerCore=2",
        # 1 x 16 x 2 != 48: CPUs only; no default IPv4: ansible_host; slurm_node_config merged
        "NodeName=g5-1 CPUs=48 Features=g5,a10g Gres=gpu:a10g:4 NodeAddr=10.1.0.41"
        " RealMemory=186200 Weight=10",
        "",
        '# Partitions: "batch" holds every compute node; the others come from slurm_partitions'
        " (one inventory group each).",
        "PartitionName=batch Default=YES MaxTime=INFINITE Nodes=cpu1,p4d-1,g5-1 State=UP",
        "PartitionName=gpu Default=NO MaxTime=2-00:00:00 Nodes=p4d-1,g5-1 State=UP",
    ]


def test_gres_conf_of_a_heterogeneous_cluster(heterogeneous):
    assert heterogeneous["gres.conf"] == [
        "# GPUs found by the mlcluster.core.gpu_gres module on each compute node.",
        f"# cpu1: no GPU GRES ({NO_DRIVER})",
        "NodeName=p4d-1 AutoDetect=nvml",
        "NodeName=g5-1 Name=gpu Type=a10g File=/dev/nvidia0",
        "NodeName=g5-1 Name=gpu Type=a10g File=/dev/nvidia1",
        "NodeName=g5-1 Name=gpu Type=a10g File=/dev/nvidia2",
        "NodeName=g5-1 Name=gpu Type=a10g File=/dev/nvidia3",
    ]


def test_cgroup_conf_without_a_writable_devices_controller(heterogeneous):
    assert heterogeneous["cgroup.conf"] == [
        "# proctrack/cgroup + task/cgroup,task/affinity: every compute node has writable cgroup"
        " controllers (not devices: ConstrainDevices=no)",
        "AllowedRAMSpace=100",
        "CgroupAutomount=YES",
        "CgroupPlugin=autodetect",
        "ConstrainCores=YES",
        "ConstrainDevices=NO",
        "ConstrainRAMSpace=YES",
        "ConstrainSwapSpace=NO",
    ]


def test_slurm_conf_without_cgroups_accounting_or_health_check(cpu_only):
    conf = cpu_only["slurm.conf"]
    settings = [line for line in conf if "=" in line and not line.startswith(("#", "Node", "Part"))]
    # What differs from the defaults: linuxproc and task/none (compute2 cannot write its
    # cgroups), configless, and no accounting, GRES or health-check keys at all.
    assert settings == [
        "AuthInfo=cred_expire=30",
        "AuthType=auth/munge",
        "ClusterName=mlcluster",
        "CredType=cred/munge",
        "Epilog=/etc/slurm/epilog.d/*",
        "InactiveLimit=0",
        "JobAcctGatherFrequency=30",
        "JobAcctGatherType=jobacct_gather/linux",
        "JobCompType=jobcomp/none",
        "JobRequeue=1",
        "KillWait=10",
        "MailProg=/bin/true",
        "MessageTimeout=10",
        "MinJobAge=300",
        "MpiDefault=none",
        "ProctrackType=proctrack/linuxproc",
        "Prolog=/etc/slurm/prolog.d/*",
        "PropagateResourceLimitsExcept=MEMLOCK",
        "ReturnToService=2",
        "SchedulerParameters=bf_interval=10",
        "SchedulerType=sched/backfill",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        "SlurmUser=slurm",
        "SlurmctldDebug=info",
        "SlurmctldHost=ctl(192.168.5.2)",
        "SlurmctldLogFile=/var/log/slurm/slurmctld.log",
        "SlurmctldParameters=enable_configless",
        "SlurmctldPidFile=/run/slurmctld.pid",
        "SlurmctldPort=6817",
        "SlurmctldTimeout=120",
        "SlurmdDebug=info",
        "SlurmdLogFile=/var/log/slurm/slurmd.log",
        "SlurmdPidFile=/run/slurmd.pid",
        "SlurmdPort=6818",
        "SlurmdSpoolDir=/var/lib/slurm/slurmd",
        "SlurmdTimeout=20",
        "StateSaveLocation=/var/lib/slurm/slurmctld",
        "SwitchType=switch/none",
        "TaskPlugin=task/none",
        "Waittime=0",
    ]
    assert conf[-6:] == [
        "# Nodes: every host of group slurm_compute, from its facts (10 % of memory kept back).",
        # 3900 and 7900 MB less 10 %, rounded down
        "NodeName=compute1 CPUs=2 CoresPerSocket=2 NodeAddr=192.168.5.11 RealMemory=3510"
        " Sockets=1 ThreadsPerCore=1",
        "NodeName=compute2 CPUs=4 CoresPerSocket=2 NodeAddr=192.168.5.12 RealMemory=7110"
        " Sockets=1 ThreadsPerCore=2",
        "",
        "# Partitions: the others come from slurm_partitions (one inventory group each).",
        "PartitionName=debug Default=YES MaxTime=INFINITE Nodes=compute[1-2] State=UP",
    ]


def test_gres_and_cgroup_conf_of_cpu_nodes_in_containers(cpu_only):
    assert cpu_only["gres.conf"] == [
        "# GPUs found by the mlcluster.core.gpu_gres module on each compute node.",
        f"# compute1: no GPU GRES ({NO_DRIVER})",
        f"# compute2: no GPU GRES ({NO_DRIVER})",
    ]
    assert cpu_only["cgroup.conf"] == [
        "# proctrack/linuxproc + task/none, no core or memory confinement: cgroup controllers"
        " are not writable on compute2",
        "AllowedRAMSpace=100",
        "CgroupAutomount=YES",
        "CgroupPlugin=autodetect",
        "ConstrainCores=YES",
        # every node is on cgroup v2, where the devices rule does not apply
        "ConstrainDevices=YES",
        "ConstrainRAMSpace=YES",
        "ConstrainSwapSpace=NO",
    ]


def test_oci_conf_only_where_every_compute_node_has_runc(heterogeneous, cpu_only):
    assert sorted(heterogeneous) == [
        "cgroup.conf",
        "gres.conf",
        "oci.conf",
        "plugstack.conf",
        "slurm.conf",
    ]
    # compute2 has no runc: no OCI containers anywhere in that cluster
    assert sorted(cpu_only) == ["cgroup.conf", "gres.conf", "plugstack.conf", "slurm.conf"]
    runc = "runc --rootless=true --root=/run/mlcluster-oci/%u"
    assert heterogeneous["oci.conf"][-4:] == [
        f'RunTimeQuery="{runc} state %n.%u.%j.%s.%t"',
        f'RunTimeKill="{runc} kill -a %n.%u.%j.%s.%t"',
        f'RunTimeDelete="{runc} delete --force %n.%u.%j.%s.%t"',
        f'RunTimeRun="{runc} run %n.%u.%j.%s.%t -b %b"',
    ]


def test_plugstack_conf_includes_the_spank_plugins_directory(cpu_only):
    assert cpu_only["plugstack.conf"][-1] == "include /etc/slurm/plugstack.conf.d/*"
