"""What the bake of each flavour of versions.yml runs: the real playbooks/bake_base.yml,
bake_accelerators.yml and bake_observability.yml on this machine, one inventory host per
flavour, with every role replaced by a stub whose install phase only records that it ran and
the settings the playbook gave it. The EKS worker flavour gets no Slurm, containerd from
eks_node and the NVIDIA Container Toolkit without Docker; the other flavours what they had."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mlcluster.paths import load_plugin

from .conftest import ROOT, run_playbook

rules = load_plugin("filter", "versions")
PLAYBOOKS = ("bake_base.yml", "bake_accelerators.yml", "bake_observability.yml")
# The settings the bake playbooks decide per flavour, recorded by the stubs of these roles.
SETTINGS = {
    "container_runtime": ["container_runtime_docker", "container_runtime_nvidia_toolkit"],
    "efa": ["efa_gpudirect"],
}


def stub_role(roles: Path, name: str) -> None:
    settings = {var: f"{{{{ {var} | default('role default') }}}}" for var in SETTINGS.get(name, [])}
    tasks = [
        {
            "name": f"Record the install phase of {name}",
            "ansible.builtin.set_stats": {
                "data": {f"{{{{ inventory_hostname }}}}__{name}": settings or {"ran": True}},
                "per_host": False,
                "aggregate": True,
            },
        }
    ]
    (roles / name / "tasks").mkdir(parents=True)
    (roles / name / "tasks" / "install.yml").write_text(yaml.safe_dump(tasks, sort_keys=False))


@pytest.fixture(scope="module")
def plan(tmp_path_factory, versions) -> dict[str, dict[str, dict]]:
    """Flavour -> role -> the settings its install phase got."""
    tmp = tmp_path_factory.mktemp("bake-plan")
    roles = tmp / "roles"
    for role in sorted(p.name for p in (ROOT / "roles").iterdir() if p.is_dir()):
        stub_role(roles, role)
    flavors = list(versions["platforms"])
    inventory = tmp / "hosts.yml"
    inventory.write_text(
        yaml.safe_dump(
            {
                "all": {
                    "vars": {
                        "ansible_connection": "local",
                        "ansible_python_interpreter": "{{ ansible_playbook_python }}",
                    },
                    "hosts": {f"bake_{f}": {"mlcluster_image_flavor": f} for f in flavors},
                }
            }
        )
    )
    playbook = tmp / "plan.yml"
    playbook.write_text(
        yaml.safe_dump(
            [
                {"name": name, "ansible.builtin.import_playbook": str(ROOT / "playbooks" / name)}
                for name in PLAYBOOKS
            ]
        )
    )
    with pytest.MonkeyPatch.context() as patch:
        # The environment outranks ansible.cfg's roles_path: the stubs stand in for every role.
        patch.setenv("ANSIBLE_ROLES_PATH", str(roles))
        result = run_playbook(playbook, inventory, tmp)
    assert result.status == "successful", result.stdout[-4000:]
    found: dict[str, dict[str, dict]] = {f: {} for f in flavors}
    for key, settings in result.custom_stats.items():
        host, role = key.split("__", 1)
        found[host.removeprefix("bake_")][role] = settings
    return found


def expected_roles(versions: dict, flavor: str) -> set[str]:
    components = set(rules.flavor_components(versions, flavor))
    slurm = "eks_node" not in components
    return (
        {"common", "node_exporter"}
        | components
        | ({"munge", "slurm", "workloads", "slurm_exporter", "prometheus"} if slurm else set())
        | ({"dcgm_exporter"} if "dcgm" in components else set())
    )


def test_every_flavour_bakes_its_components_and_slurm_unless_eks(plan, versions):
    for flavor, roles in plan.items():
        assert set(roles) == expected_roles(versions, flavor), flavor


def test_eks_worker_image(plan):
    roles = plan["eks"]
    assert {"munge", "slurm", "slurm_exporter", "prometheus", "enroot_pyxis"}.isdisjoint(roles)
    assert "eks_node" in roles
    assert roles["container_runtime"] == {
        "container_runtime_docker": False,
        "container_runtime_nvidia_toolkit": True,
    }
    assert roles["efa"] == {"efa_gpudirect": True}


def test_slurm_images_keep_their_settings(plan):
    assert plan["gpu"]["container_runtime"] == {
        "container_runtime_docker": True,
        "container_runtime_nvidia_toolkit": True,
    }
    assert plan["gpu"]["efa"] == {"efa_gpudirect": True}
    assert plan["cpu"]["container_runtime"]["container_runtime_nvidia_toolkit"] is False
    assert plan["neuron"]["efa"] == {"efa_gpudirect": False}
    assert "eks_node" not in plan["gpu"]
