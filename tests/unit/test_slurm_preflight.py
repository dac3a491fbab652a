"""Bad Slurm input stops the run in the preflight, with a clear message, before any change."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlcluster.runner import EXIT_FAILED, EXIT_OK, run_playbook

HOSTS = Path(__file__).resolve().parents[1] / "fixtures" / "slurm-preflight-hosts.yml"


def slurm_preflight(**extravars):
    # --tags preflight: the Slurm preflight play (and the roles' argument checks), nothing else.
    return run_playbook("playbooks/slurm.yml", HOSTS, tags="preflight", extravars=extravars)


def site_preflight(**extravars):
    return run_playbook("playbooks/preflight.yml", HOSTS, extravars=extravars)


def test_good_partitions_pass():
    result = slurm_preflight(slurm_partitions=[{"name": "p5", "group": "compute_p5"}])
    assert result.exit_code == EXIT_OK, result.errors


@pytest.mark.parametrize(
    ("partition", "message"),
    [
        ({"name": "empty", "group": "compute_empty"}, "group 'compute_empty' has no hosts"),
        ({"name": "typo", "group": "compute_p6"}, "group 'compute_p6' does not exist"),
        (
            {"name": "mixed", "group": "not_compute"},
            "group 'not_compute' holds hosts that are not in slurm_compute: head",
        ),
        ({"name": "bad name", "group": "compute_p5"}, "entry bad name"),
    ],
)
def test_partition_of_a_bad_group_is_rejected(partition, message):
    result = slurm_preflight(slurm_partitions=[partition])
    assert result.exit_code == EXIT_FAILED
    assert any(message in e for e in result.errors), result.errors


@pytest.mark.parametrize(
    ("extravars", "message"),
    [
        ({"slurm_config": {"NodeName": "x"}}, "slurm_config may not set NodeName"),
        (
            {"slurm_cgroup_config": {"ConstrainRam": True}},
            "ConstrainRam is not a cgroup.conf parameter",
        ),
        (
            {"slurm_partitions": [{"name": "p", "group": "compute_p5"}] * 2},
            "slurm_partitions has duplicate names",
        ),
        (
            {"slurm_partitions": [{"name": "batch", "group": "compute_p5"}]},
            "the name of slurm_default_partition",
        ),
        ({"slurm_cluster_name": "My Cluster"}, "slurm_cluster_name My Cluster must be"),
        ({"slurm_memory_reserve_percent": 100}, "slurm_memory_reserve_percent must be 0-99"),
    ],
)
def test_bad_slurm_settings_are_rejected(extravars, message):
    result = slurm_preflight(**extravars)
    assert result.exit_code == EXIT_FAILED
    assert any(message in e for e in result.errors), result.errors


def test_misspelled_slurm_variable_is_rejected():
    result = site_preflight(slurm_partiton=[])
    assert result.exit_code == EXIT_FAILED
    assert any(
        "slurm_partiton is not a variable of role slurm (did you mean slurm_partitions" in e
        for e in result.errors
    ), result.errors


@pytest.mark.parametrize(
    ("extravars", "name"),
    [
        ({"slurm_configless": "sometimes"}, "slurm_configless"),
        ({"slurm_partitions": "p5"}, "slurm_partitions"),
        ({"slurm_partitions": [{"name": "p5"}]}, "group"),
        ({"munge_rotate_key": "please"}, "munge_rotate_key"),
        ({"slurm_cgroup_mode": "always"}, "slurm_cgroup_mode"),
    ],
)
def test_wrong_types_are_rejected(extravars, name):
    result = site_preflight(**extravars)
    assert result.exit_code == EXIT_FAILED
    assert any(name in e for e in result.errors), result.errors


def test_site_stops_at_the_slurm_preflight_before_the_baseline():
    # Check mode as a safety net: were the order wrong, the baseline would only be simulated here.
    result = run_playbook(
        "site.yml",
        HOSTS,
        check=True,
        extravars={"slurm_partitions": [{"name": "empty", "group": "compute_empty"}]},
    )
    assert result.exit_code == EXIT_FAILED
    assert any("group 'compute_empty' has no hosts" in e for e in result.errors), result.errors
    stdout = next(Path(result.artifact_dir).rglob("stdout")).read_text()
    plays = [line for line in stdout.splitlines() if line.startswith("PLAY [")]
    assert [p.split("[", 1)[1].split("]", 1)[0] for p in plays] == [
        "Preflight checks",
        "Check the Slurm inventory and variables",
    ]
