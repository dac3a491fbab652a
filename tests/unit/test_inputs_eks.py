"""`mlcluster deploy` on an EKS inventory without node hosts: the add-ons play runs on the machine
Ansible runs on, so the inventory is accepted when it turns the add-ons on, and refused with a
hint when it does not."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mlcluster.errors import MlclusterError
from mlcluster.inputs import check_targets, eks_addons_enabled
from mlcluster.paths import project_root
from mlcluster.runner import EXIT_OK, run_playbook

EKS = project_root() / "inventory" / "eks"
SLURM_HOSTS = Path(__file__).resolve().parents[1] / "fixtures" / "local-hosts.yml"


def inventory(tmp_path: Path, switch=None, nodes: dict | None = None) -> Path:
    data: dict = {"all": {"children": {"eks_nodes": {"hosts": nodes or {}}}}}
    if switch is not None:
        data["all"]["vars"] = {"mlcluster_eks_addons": switch}
    path = tmp_path / "hosts.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_the_shipped_eks_inventory_turns_the_addons_on_and_has_no_node_host():
    assert eks_addons_enabled(EKS)
    assert check_targets(EKS) == []


def test_a_slurm_inventory_keeps_its_hosts_and_no_addons():
    assert not eks_addons_enabled(SLURM_HOSTS)
    assert check_targets(SLURM_HOSTS) == ["alpha", "beta"]


@pytest.mark.parametrize(
    ("switch", "enabled"),
    [(True, True), ("yes", True), ("True", True), (False, False), ("no", False), (None, False)],
)
def test_the_switch_is_read_as_the_play_reads_it(tmp_path, switch, enabled):
    assert eks_addons_enabled(inventory(tmp_path, switch)) is enabled


def test_an_eks_inventory_with_the_addons_off_and_no_node_is_refused_with_a_hint(tmp_path):
    path = inventory(tmp_path, False)
    with pytest.raises(MlclusterError) as refused:
        check_targets(path)
    assert str(refused.value) == (
        f"inventory {path} defines no hosts (a host belongs under all: hosts: or a group's "
        "hosts:; without node hosts, mlcluster_eks_addons: true runs the add-ons)"
    )


def test_a_limit_still_has_to_match_a_host(tmp_path):
    with pytest.raises(MlclusterError, match="defines no hosts"):
        check_targets(inventory(tmp_path, True), limit="eks_nodes")


def test_node_hosts_are_the_targets_with_the_addons_on(tmp_path):
    path = inventory(tmp_path, True, {"gpu-1": {"ansible_host": "10.1.2.3"}})
    assert check_targets(path) == ["gpu-1"]


def test_site_yml_on_the_eks_inventory_runs_the_addons_play_only(tmp_path, monkeypatch):
    """What `mlcluster deploy -i inventory/eks` runs (run_playbook on site.yml), rendering the
    add-ons instead of applying them: nothing to reach but this machine, exit 0, and the one
    row of the summary is the add-ons play's localhost."""
    monkeypatch.setenv("MLCLUSTER_STATE", str(tmp_path / "state"))
    render = tmp_path / "manifests"
    result = run_playbook("site.yml", EKS, extravars={"eks_addons_render_dir": str(render)})
    assert result.exit_code == EXIT_OK, result.errors
    assert list(result.hosts) == ["localhost"]
    assert result.hosts["localhost"]["changed"] > 0
    assert result.hosts["localhost"]["failures"] == 0
    assert any(render.iterdir())
