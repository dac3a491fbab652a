"""The preflight play stops bad input before anything changes, with a clear message."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlcluster.paths import load_plugin, project_root
from mlcluster.runner import EXIT_FAILED, EXIT_OK, run_playbook

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
HOSTS = FIXTURES / "preflight-hosts.yml"

role_specs = load_plugin("lookup", "role_specs")
preflight_filters = load_plugin("filter", "preflight")


def specs():
    return role_specs.read_role_specs(project_root() / "roles")


def test_role_specs_cover_every_role_with_a_spec():
    names = {s["role"] for s in specs()}
    assert "common" in names
    common = next(s for s in specs() if s["role"] == "common")
    assert "common_limits_nofile" in common["names"]
    assert common["options"]["common_limits_nofile"]["type"] == "int"


def test_unknown_role_vars_suggests_the_closest_name():
    fake = [
        {"role": "common", "names": ["common_chrony_enabled", "common_packages"]},
        {"role": "nvidia_driver", "names": ["nvidia_driver_version"]},
    ]
    out = preflight_filters.unknown_role_vars(
        ["common_chrony_enable", "common_packages", "other_var", "nvidia_driver_versoin"], fake
    )
    assert out == [
        "common_chrony_enable is not a variable of role common "
        "(did you mean common_chrony_enabled?)",
        "nvidia_driver_versoin is not a variable of role nvidia_driver "
        "(did you mean nvidia_driver_version?)",
    ]


def test_longest_role_prefix_wins():
    fake = [
        {"role": "nccl", "names": ["nccl_version"]},
        {"role": "nccl_tests", "names": ["nccl_tests_version"]},
    ]
    assert preflight_filters.unknown_role_vars(["nccl_tests_version"], fake) == []


def test_at_most_two_suggestions_and_none_for_a_distant_name():
    # difflib ranks equally close names in reverse order
    fake = [{"role": "efa", "names": ["efa_version1", "efa_version2", "efa_version3"]}]
    assert preflight_filters.unknown_role_vars(["efa_version", "efa_zzz"], fake) == [
        "efa_version is not a variable of role efa (did you mean efa_version3 or efa_version2?)",
        "efa_zzz is not a variable of role efa",
    ]


def test_the_filter_is_registered():
    assert preflight_filters.FilterModule().filters() == {
        "unknown_role_vars": preflight_filters.unknown_role_vars
    }


def run_preflight(extravars=None, required=None):
    extra = dict(extravars or {})
    if required is not None:
        extra["mlcluster_required_groups"] = required
    return run_playbook("playbooks/preflight.yml", HOSTS, extravars=extra)


def test_good_inventory_passes():
    assert run_preflight().exit_code == EXIT_OK


def test_misspelled_role_variable_is_rejected():
    result = run_preflight({"common_chrony_enable": False})
    assert result.exit_code == EXIT_FAILED
    assert any(
        "common_chrony_enable is not a variable of role common (did you mean "
        "common_chrony_enabled" in e
        for e in result.errors
    )


def test_wrong_type_is_rejected():
    result = run_preflight({"common_limits_nofile": "lots"})
    assert result.exit_code == EXIT_FAILED
    assert any("common_limits_nofile" in e and "int" in e for e in result.errors)


def test_empty_required_group_is_rejected():
    result = run_preflight(required=["slurm_controller", "slurm_login"])
    assert result.exit_code == EXIT_FAILED
    assert any("Inventory group 'slurm_login' is empty" in e for e in result.errors)


@pytest.mark.parametrize("value", [True, False])
def test_correctly_typed_values_pass(value):
    assert run_preflight({"common_chrony_enabled": value}).exit_code == EXIT_OK
