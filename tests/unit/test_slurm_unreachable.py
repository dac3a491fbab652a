"""The slurm role's probes of compute nodes outside the run, when those nodes do not answer.

The probes run from the play's first host, delegated to each node outside the run. An
unreachable delegated task would take that host (here the controller) out of the play; the
role instead notes the node as not answering, keeps the node's last definition from the
controller's live slurm.conf, and leaves out a node that has none yet.

Run for real through ansible-runner: the controller and one compute node are this machine
(local connection), the two lost compute nodes are SSH hosts on loopback port 9, where nothing
listens. The tasks are those of roles/slurm/tasks/configure.yml, picked by name, and
configure_probe.yml as it is.
"""

from __future__ import annotations

import yaml

from mlcluster.paths import project_root
from mlcluster.runner import EXIT_OK, run_playbook

ROLE = project_root() / "roles" / "slurm"
TASKS = (
    "Place this node in the cluster",
    "Probe this node",
    "Probe the Slurm nodes outside this run",
    "Find the compute nodes this run cannot reach",
    "Read the node definitions the controller runs with",
    "Keep the last known definition of the compute nodes this run cannot reach",
    "Describe the cluster",
)
LIVE_CONF = (
    "ClusterName=t\n"
    "NodeName=lost1 NodeAddr=127.0.0.1 CPUs=4 RealMemory=7000\n"
    "PartitionName=batch Nodes=lost1 Default=YES\n"
)
LIVE_GRES = "# Ansible managed\n# lost1: no GPU GRES (no usable NVIDIA driver)\n# lost10: other\n"
LOST = {"ansible_port": 9, "ansible_user": "root"}


def test_lost_nodes_outside_the_run_keep_their_definition_and_the_play_goes_on(tmp_path):
    tasks = yaml.safe_load((ROLE / "tasks" / "configure.yml").read_text())
    by_name = {task.get("name"): task for task in tasks}
    missing = [name for name in TASKS if name not in by_name]
    assert not missing, f"configure.yml no longer has the tasks {missing}"
    role = tmp_path / "roles" / "slurm_lost"
    (role / "tasks").mkdir(parents=True)
    for part in ("defaults", "vars", "templates"):
        (role / part).symlink_to(ROLE / part)
    (role / "tasks" / "configure_probe.yml").symlink_to(ROLE / "tasks" / "configure_probe.yml")
    report = {
        "name": "Report what the role made of the cluster",
        "ansible.builtin.set_stats": {
            "data": {"nodes": "{{ __slurm_nodes }}", "lost": "{{ __slurm_lost }}"},
            "per_host": False,
        },
        "run_once": True,
    }
    steps = [by_name[name] for name in TASKS] + [report]
    (role / "tasks" / "main.yml").write_text(yaml.safe_dump(steps, sort_keys=False))
    playbook = tmp_path / "lost.yml"
    playbook.write_text(
        yaml.safe_dump(
            [{"name": "Probe", "hosts": "controller:live1", "roles": [{"role": str(role)}]}]
        )
    )
    conf_dir = tmp_path / "etc-slurm"
    conf_dir.mkdir()
    (conf_dir / "slurm.conf").write_text(LIVE_CONF)
    (conf_dir / "gres.conf").write_text(LIVE_GRES)
    local = {
        "ansible_connection": "local",
        "ansible_python_interpreter": "{{ ansible_playbook_python }}",
    }
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(
        yaml.safe_dump(
            {
                "all": {
                    "vars": {"ansible_ssh_common_args": "-o ConnectTimeout=2 -o BatchMode=yes"},
                    "children": {
                        "slurm_controller": {"hosts": {"controller": local}},
                        "slurm_login": {"hosts": {}},
                        "slurm_compute": {
                            "hosts": {
                                "live1": local,
                                "lost1": {**LOST, "ansible_host": "127.0.0.1"},
                                "lost2": {**LOST, "ansible_host": "127.0.0.2"},
                            }
                        },
                    },
                }
            }
        )
    )
    result = run_playbook(str(playbook), inventory, extravars={"__slurm_conf_dir": str(conf_dir)})
    assert result.exit_code == EXIT_OK, result.errors
    assert result.errors == []
    assert sorted(result.hosts) == ["controller", "live1"]
    assert all(h["unreachable"] == 0 and h["failures"] == 0 for h in result.hosts.values())
    stats = result.custom_stats
    assert stats["lost"] == ["lost1", "lost2"]
    nodes = {node["host"]: node for node in stats["nodes"]}
    # lost1 as the controller's slurm.conf and gres.conf have it; lost2 was never configured: left
    # out.
    assert sorted(nodes) == ["live1", "lost1"]
    assert nodes["lost1"] == {
        "host": "lost1",
        "name": "lost1",
        "params": {"NodeAddr": "127.0.0.1", "CPUs": "4", "RealMemory": "7000"},
        "gres_lines": ["# lost1: no GPU GRES (no usable NVIDIA driver)"],
    }
    assert nodes["live1"]["params"]["CPUs"] > 0
