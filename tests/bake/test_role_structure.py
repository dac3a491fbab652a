"""The accelerator roles follow the project's role layout (see roles/common)."""

from __future__ import annotations

import re

import pytest
import yaml

from .conftest import ROOT

ROLES = [
    "nvidia_driver", "cuda_toolkit", "nccl", "efa", "aws_ofi_nccl", "gdrcopy", "dcgm",
    "container_runtime", "enroot_pyxis", "lustre_client", "neuron", "tuning",
]  # fmt: skip


@pytest.mark.parametrize("role", ROLES)
def test_role_layout(role):
    path = ROOT / "roles" / role
    for part in ("defaults/main.yml", "meta/main.yml", "meta/argument_specs.yml", "tasks/main.yml",
                 "tasks/install.yml", "tasks/configure.yml", "README.md"):  # fmt: skip
        assert (path / part).is_file(), f"{role}: {part} is missing"
    specs = yaml.safe_load((path / "meta" / "argument_specs.yml").read_text())["argument_specs"]
    assert {"main", "install", "configure"} <= set(specs)
    options = specs["main"]["options"]
    assert all(name.startswith(f"{role}_") for name in options), f"{role}: unprefixed options"
    defaults = yaml.safe_load((path / "defaults" / "main.yml").read_text()) or {}
    assert sorted(defaults) == sorted(options), f"{role}: defaults and argument spec differ"


@pytest.mark.parametrize("role", ROLES)
def test_role_internal_variables_are_prefixed(role):
    """Role vars are __<role>_*, registered results _<role>_* (STYLE.md, habit 3)."""
    path = ROOT / "roles" / role
    for vars_file in sorted((path / "vars").glob("*.yml")):
        names = yaml.safe_load(vars_file.read_text()) or {}
        bad = [name for name in names if not name.startswith(f"__{role}_")]
        assert bad == [], f"{vars_file.relative_to(ROOT)}: {bad}"
    for tasks_file in sorted((path / "tasks").glob("*.yml")):
        for name in re.findall(r"^\s*register: (\S+)", tasks_file.read_text(), re.MULTILINE):
            assert name.startswith(f"_{role}_"), f"{tasks_file.relative_to(ROOT)}: register {name}"


@pytest.mark.parametrize("role", ROLES)
def test_distro_data_covers_the_platforms(role):
    path = ROOT / "roles" / role
    platforms = yaml.safe_load((path / "meta" / "main.yml").read_text())["galaxy_info"]["platforms"]
    # Roles that load distro data do so through mlcluster.core.component (tasks_from distro_vars).
    if not any("tasks_from: distro_vars" in f.read_text() for f in (path / "tasks").glob("*.yml")):
        return
    for platform in platforms:
        name = {"Amazon Linux": "Amazon"}.get(platform["name"], platform["name"])
        assert (path / "vars" / f"{name}.yml").is_file(), f"{role}: no vars/{name}.yml"
