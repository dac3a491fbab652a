"""Managed-Slurm mode (slurm_managed_by hyperpod/parallelcluster) and the simulated HyperPod
cluster's files, without a cluster: the filters, the role's managed configure phase run on a
platform's slurm.conf in a temporary directory, and the simulated platform's files read by the
lifecycle script's own parser."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest
import yaml

from mlcluster import local, local_hyperpod
from mlcluster.paths import load_plugin, project_root
from mlcluster.runner import EXIT_OK, run_playbook

managed = load_plugin("filter", "slurm_managed")
slurm_conf = load_plugin("filter", "slurm_conf")

PLATFORM_CONF = """\
# Written by the platform
ClusterName=hp
SlurmctldHost=ip-10-1-0-10(10.1.0.10)
slurmctldport=6817   # lower case: Slurm's keys are case-insensitive
ProctrackType=proctrack/cgroup
Prolog=/opt/slurm/etc/prolog.sh
SlurmctldParameters="enable_configless"
include accounting.conf
NodeName=ip-10-1-0-21 NodeAddr=10.1.0.21 CPUs=96 Gres=gpu:8 State=CLOUD
NodeName=ip-10-1-0-22 NodeAddr=10.1.0.22 CPUs=96 State=CLOUD
PartitionName=dev Nodes=ip-10-1-0-[21-22] Default=YES
NodeSet=all Feature=x
"""


def test_parse_reads_settings_includes_and_nodes():
    parsed = managed.slurm_conf_parse(PLATFORM_CONF)
    assert parsed["settings"] == {
        "ClusterName": "hp",
        "SlurmctldHost": "ip-10-1-0-10(10.1.0.10)",
        "slurmctldport": "6817",
        "ProctrackType": "proctrack/cgroup",
        "Prolog": "/opt/slurm/etc/prolog.sh",
        "SlurmctldParameters": "enable_configless",
    }
    assert parsed["includes"] == ["accounting.conf"]
    assert [n["NodeName"] for n in parsed["nodes"]] == ["ip-10-1-0-21", "ip-10-1-0-22"]
    assert parsed["nodes"][0]["Gres"] == "gpu:8"


def test_parse_keeps_the_last_spelling_and_escaped_hashes():
    parsed = managed.slurm_conf_parse("Prolog=/a\nPROLOG=/b\nMailProg=/bin/mail\\#x # comment\n")
    assert parsed["settings"] == {"PROLOG": "/b", "MailProg": "/bin/mail#x"}


def test_parse_refuses_what_is_not_text():
    with pytest.raises(TypeError):
        managed.slurm_conf_parse(None)


def test_additions_never_set_a_key_the_platform_sets():
    platform = managed.slurm_conf_parse(PLATFORM_CONF)["settings"]
    result = managed.slurm_conf_additions(
        {
            "Prolog": "/etc/slurm/prolog.d/*",
            "Epilog": "/etc/slurm/epilog.d/*",
            "SlurmctldPort": 7000,
            "HealthCheckProgram": "/usr/local/sbin/mlcluster-slurm-healthcheck",
            "Removed": None,
            "Empty": "",
        },
        platform,
    )
    assert result == {
        "add": {
            "Epilog": "/etc/slurm/epilog.d/*",
            "HealthCheckProgram": "/usr/local/sbin/mlcluster-slurm-healthcheck",
        },
        "left": ["Prolog", "SlurmctldPort"],
    }


# --- the role's managed configure phase, on a platform's files in a temporary directory --------


def converge(tmp_path: Path, **extravars):
    """Run configure_managed.yml on this machine (as a controller that is no compute node) with
    the platform's etc in tmp_path; ParallelCluster mode, so that no daemon is touched."""
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(
        yaml.safe_dump(
            {
                "all": {
                    "children": {
                        "slurm_controller": {
                            "hosts": {
                                "head": {
                                    "ansible_connection": "local",
                                    "ansible_python_interpreter": sys.executable,
                                }
                            }
                        },
                        "slurm_compute": {"hosts": {}},
                    }
                }
            }
        )
    )
    playbook = tmp_path / "managed.yml"
    playbook.write_text(
        yaml.safe_dump(
            [
                {
                    "name": "Managed Slurm",
                    "hosts": "slurm_controller",
                    "gather_facts": False,
                    "tasks": [
                        {
                            "name": "Configure phase, managed mode",
                            "ansible.builtin.include_role": {
                                "name": "slurm",
                                "tasks_from": "configure_managed",
                            },
                        }
                    ],
                }
            ]
        )
    )
    variables = {
        "slurm_managed_by": "parallelcluster",
        "slurm_managed_conf": str(tmp_path / "etc" / "slurm.conf"),
        "slurm_managed_bin_dir": str(tmp_path / "bin"),
        "slurm_managed_conf_timeout": 5,
        "slurm_plugstack_dir": str(tmp_path / "plugstack.conf.d"),
        **extravars,
    }
    return run_playbook(str(playbook), inventory, extravars=variables)


def without_include(text: str) -> str:
    return "".join(
        line for line in text.splitlines(True) if line != "include slurm_mlcluster.conf\n"
    )


@pytest.mark.skipif(not Path("/bin/systemctl").exists(), reason="needs systemctl")
def test_managed_mode_adds_only_its_files_and_one_line(tmp_path):
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "slurm.conf").write_text(PLATFORM_CONF)
    (etc / "gres.conf").write_text("# the platform's\nAutoDetect=nvml\n")
    before = hashlib.sha256(PLATFORM_CONF.encode()).hexdigest()

    first = converge(tmp_path)
    assert first.exit_code == EXIT_OK, first.errors
    conf = (etc / "slurm.conf").read_text()
    assert conf.endswith("include slurm_mlcluster.conf\n")
    assert hashlib.sha256(without_include(conf).encode()).hexdigest() == before

    ours = (etc / "slurm_mlcluster.conf").read_text()
    settings = managed.slurm_conf_parse(ours)["settings"]
    # The platform's Prolog and its keys stay its own; GPU node lines bring GresTypes.
    assert settings == {
        "Epilog": "/etc/slurm/epilog.d/*",
        "GresTypes": "gpu",
        "HealthCheckInterval": "300",
        "HealthCheckNodeState": "ANY",
        "HealthCheckProgram": "/usr/local/sbin/mlcluster-slurm-healthcheck",
        "PropagateResourceLimitsExcept": "MEMLOCK",
    }
    assert "left to it: Prolog" in ours
    # No cgroup.conf of the platform's: mlcluster's; the platform's gres.conf is left alone.
    assert "ConstrainCores=YES" in (etc / "cgroup.conf").read_text()
    assert (etc / "gres.conf").read_text() == "# the platform's\nAutoDetect=nvml\n"
    assert (etc / "plugstack.conf").read_text() == f"include {tmp_path}/plugstack.conf.d/*\n"
    assert (tmp_path / "plugstack.conf.d").is_dir()

    second = converge(tmp_path)
    assert second.exit_code == EXIT_OK, second.errors
    assert second.hosts["head"]["changed"] == 0, second.hosts
    assert (etc / "slurm.conf").read_text() == conf


@pytest.mark.skipif(not Path("/bin/systemctl").exists(), reason="needs systemctl")
def test_managed_mode_keeps_the_platforms_cgroup_and_plugstack(tmp_path):
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "slurm.conf").write_text("ClusterName=pc\nSlurmctldHost=head\ninclude pc.conf\n")
    (etc / "pc.conf").write_text("HealthCheckProgram=/opt/platform/check\n")
    (etc / "cgroup.conf").write_text("ConstrainCores=no\n")
    (etc / "plugstack.conf").write_text("include /opt/slurm/etc/plugstack.conf.d/*\n")

    result = converge(tmp_path, slurm_config={"MaxJobCount": 5000})
    assert result.exit_code == EXIT_OK, result.errors
    assert (etc / "cgroup.conf").read_text() == "ConstrainCores=no\n"
    assert (etc / "plugstack.conf").read_text() == (
        f"include /opt/slurm/etc/plugstack.conf.d/*\ninclude {tmp_path}/plugstack.conf.d/*\n"
    )
    settings = managed.slurm_conf_parse((etc / "slurm_mlcluster.conf").read_text())["settings"]
    # The platform's included file sets the health check: mlcluster adds none of its own.
    assert "HealthCheckProgram" not in settings
    assert settings["MaxJobCount"] == "5000"
    assert not (etc / "gres.conf").exists()


def test_managed_mode_waits_for_the_platforms_slurm_conf(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "slurm.conf").write_text("ClusterName=hp\n")  # no SlurmctldHost yet
    result = converge(tmp_path, slurm_managed_conf_timeout=1)
    assert result.exit_code != EXIT_OK
    assert not (tmp_path / "etc" / "slurm_mlcluster.conf").exists()


# --- the simulated HyperPod cluster's files ---------------------------------------------------


def sim_nodes():
    return local.plan_nodes("hp", "10.213.77.0/24", computes=2, login=False, platform="hyperpod")


def test_hyperpod_nodes_are_named_after_their_address():
    assert [(n.hostname, n.container) for n in sim_nodes()] == [
        ("ip-10-213-77-10", "hp-controller"),
        ("ip-10-213-77-21", "hp-compute1"),
        ("ip-10-213-77-22", "hp-compute2"),
    ]


def lifecycle_module():
    path = project_root() / "lifecycle" / "hyperpod" / "mlcluster_lifecycle.py"
    import importlib.util

    spec = importlib.util.spec_from_file_location("mlcluster_lifecycle_sim", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_simulated_platform_files_are_read_by_the_lifecycle_script(tmp_path):
    """resource_config.json and provisioning_parameters.json as the lifecycle script reads them:
    each node finds itself, the workers form the partition's group."""
    import json

    lifecycle = lifecycle_module()
    controller, *workers = sim_nodes()
    (tmp_path / "rc.json").write_text(
        json.dumps(local_hyperpod.resource_config("hp", controller, workers))
    )
    (tmp_path / "pp.json").write_text(json.dumps(local_hyperpod.provisioning_parameters()))
    groups = lifecycle.read_resource_config(tmp_path / "rc.json")
    params = lifecycle.read_provisioning_parameters(tmp_path / "pp.json")
    doc, name, role = lifecycle.hyperpod_plan(groups, params, {workers[1].ip})
    assert (name, role) == ("ip-10-213-77-22", "compute (partition dev)")
    slurm = doc["all"]["children"]["slurm"]["children"]
    assert list(slurm["slurm_controller"]["hosts"]) == ["ip-10-213-77-10"]
    assert list(slurm["slurm_compute"]["children"]["hyperpod_worker_group_1"]["hosts"]) == [
        "ip-10-213-77-21",
        "ip-10-213-77-22",
    ]


def test_simulated_agent_slurm_conf_names_every_worker_in_its_partition():
    controller, *workers = sim_nodes()
    hardware = {n.container: "CPUs=2 RealMemory=1000" for n in workers}
    text = local_hyperpod.platform_slurm_conf("hp", controller, workers, hardware)
    parsed = managed.slurm_conf_parse(text)
    assert parsed["settings"]["SlurmctldHost"] == "ip-10-213-77-10(10.213.77.10)"
    assert parsed["settings"]["SlurmctldParameters"] == "enable_configless"
    assert [(n["NodeName"], n["NodeAddr"]) for n in parsed["nodes"]] == [
        ("ip-10-213-77-21", "10.213.77.21"),
        ("ip-10-213-77-22", "10.213.77.22"),
    ]
    assert "PartitionName=dev Nodes=ip-10-213-77-21,ip-10-213-77-22 Default=YES" in text


# --- the Slurm preflight in managed mode --------------------------------------------------------


def head_only_inventory(tmp_path: Path) -> Path:
    """A ParallelCluster head node configured before any (dynamic) compute node exists."""
    path = tmp_path / "head.yml"
    path.write_text(
        yaml.safe_dump(
            {
                "all": {
                    "vars": {
                        "ansible_connection": "local",
                        "ansible_python_interpreter": "{{ ansible_playbook_python }}",
                    },
                    "children": {
                        "slurm_controller": {"hosts": {"head": {}}},
                        "slurm_compute": {"hosts": {}},
                    },
                }
            }
        )
    )
    return path


def test_preflight_accepts_a_managed_head_node_without_compute_nodes(tmp_path):
    inventory = head_only_inventory(tmp_path)
    ours = run_playbook("playbooks/slurm.yml", inventory, tags="preflight")
    assert ours.exit_code != EXIT_OK
    assert any("group slurm_compute has no hosts" in e for e in ours.errors), ours.errors
    managed_run = run_playbook(
        "playbooks/slurm.yml",
        inventory,
        tags="preflight",
        extravars={"slurm_managed_by": "parallelcluster"},
    )
    assert managed_run.exit_code == EXIT_OK, managed_run.errors


def test_preflight_rejects_a_relative_platform_slurm_conf(tmp_path):
    result = run_playbook(
        "playbooks/slurm.yml",
        head_only_inventory(tmp_path),
        tags="preflight",
        extravars={"slurm_managed_by": "hyperpod", "slurm_managed_conf": "etc/slurm.conf"},
    )
    assert result.exit_code != EXIT_OK
    assert any("must be an absolute path" in e for e in result.errors), result.errors


def test_site_preflight_rejects_an_unknown_platform():
    hosts = Path(__file__).resolve().parents[1] / "fixtures" / "slurm-preflight-hosts.yml"
    result = run_playbook("playbooks/preflight.yml", hosts, extravars={"slurm_managed_by": "pcs"})
    assert result.exit_code != EXIT_OK
    assert any("slurm_managed_by" in e for e in result.errors), result.errors
