"""Every role's README documents its variables from its argument_specs."""

from mlcluster import roledocs


def test_role_readmes_are_generated_from_argument_specs(capsys):
    assert roledocs.main(["--check"]) == 0, capsys.readouterr().out


def test_role_defaults_match_argument_spec_defaults():
    """defaults/main.yml and the spec's defaults must not drift apart."""
    import yaml

    from mlcluster.paths import project_root

    mismatches, compared = [], set()
    for spec_file in sorted((project_root() / "roles").glob("*/meta/argument_specs.yml")):
        role = spec_file.parents[1]
        defaults_file = role / "defaults" / "main.yml"
        defaults = yaml.safe_load(defaults_file.read_text()) if defaults_file.exists() else {}
        spec = yaml.safe_load(spec_file.read_text())["argument_specs"]
        for entry in spec.values():
            for name, option in (entry.get("options") or {}).items():
                if "default" in option:
                    compared.add(name)
                    if defaults.get(name) != option["default"]:
                        mismatches.append(f"{role.name}: {name}")
    assert sorted(set(mismatches)) == []
    # Not vacuous: the specs were found and their defaults compared.
    assert {"slurm_cgroup_mode", "slurm_memory_reserve_percent", "common_limits_nofile"} <= compared
