"""One platform matrix (versions.yml `platforms` and `operating_systems`): the CLI's choices,
src/mlcluster/bakeami.py, the AMI template and the bake preflight all read it, each through its
own code path, and agree with it."""

from __future__ import annotations

import argparse
import re

import hcl2
import pytest
import yaml

from mlcluster import bakeami, cli
from mlcluster.paths import load_plugin, project_root
from mlcluster.runner import run_playbook

rules = load_plugin("filter", "versions")
ROOT = project_root()


@pytest.fixture(scope="module")
def versions() -> dict:
    return yaml.safe_load((ROOT / "versions.yml").read_text())["mlcluster_versions"]


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def bake_choices() -> dict[str, dict[str, list[str]]]:
    """`bake local` and `bake ami`: each one's --flavor and --os choices, from the real parser."""
    targets = _subcommands(_subcommands(cli.build_parser())["bake"])
    return {
        target: {a.dest: list(a.choices) for a in sub._actions if a.dest in ("flavor", "os")}
        for target, sub in targets.items()
    }


def test_every_flavour_has_a_platform(versions):
    assert list(versions["platforms"]) == list(versions["flavors"])
    for flavor, platform in versions["platforms"].items():
        assert platform["target"] in ("ami", "local"), flavor
        assert set(platform["os"]) <= set(versions["operating_systems"]), flavor


def test_amazon_linux_is_not_offered(versions):
    """common, munge and slurm are apt-only: no flavour is baked on Amazon Linux."""
    assert not any("Amazon" in name for name in versions["operating_systems"].values())
    assert all("al2023" not in choices["os"] for choices in bake_choices().values())


def test_bakeami_reads_the_matrix(versions):
    assert bakeami.platform_matrix() == versions["platforms"]
    assert bakeami.flavors("ami") == [
        f for f, p in versions["platforms"].items() if p["target"] == "ami"
    ]
    assert bakeami.operating_systems("local") == ["debian12"]


def test_cli_choices_are_the_matrix(versions):
    """Each bake target offers its own flavours and their operating systems, nothing else."""
    choices = bake_choices()
    assert set(choices) == {p["target"] for p in versions["platforms"].values()} == {"local", "ami"}
    for target, offered in choices.items():
        platforms = {f: p for f, p in versions["platforms"].items() if p["target"] == target}
        assert offered["flavor"] == list(platforms), target
        assert set(offered["os"]) == {o for p in platforms.values() for o in p["os"]}, target
    assert choices["local"] == {"flavor": ["local"], "os": ["debian12"]}


def test_ami_template_has_a_base_image_for_each_ami_os_and_reads_the_matrix():
    with (ROOT / "packer" / "ami" / "node.pkr.hcl").open() as handle:
        template = hcl2.load(handle)
    locals_ = {k: v for block in template["locals"] for k, v in block.items()}
    assert "local.versions.platforms" in locals_["platform"]
    base_keys = set(re.findall(r"'([a-z]+[\d.]+)': \{'name'", locals_["base"]))
    assert base_keys == set(bakeami.operating_systems("ami"))
    with (ROOT / "packer" / "ami" / "variables.pkr.hcl").open() as handle:
        variables = {k: v for block in hcl2.load(handle)["variable"] for k, v in block.items()}
    assert "validation" not in variables["flavor"] and "validation" not in variables["os"]


def test_bake_preflight_checks_the_os_against_the_matrix(tmp_path, versions):
    """playbooks/bake_preflight.yml on this machine, one inventory host per flavour: each host
    fails or passes the OS check by versions.yml's matrix, and says which OSes it expected."""
    flavors = list(versions["platforms"])
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(
        yaml.safe_dump(
            {
                "all": {
                    "vars": {
                        "ansible_connection": "local",
                        "ansible_python_interpreter": "{{ ansible_playbook_python }}",
                    },
                    # The run_once checks (flavour known, version rules) run on the first host:
                    # local, which this machine bakes.
                    "hosts": {f"bake-{f}": {"mlcluster_image_flavor": f} for f in flavors},
                }
            }
        )
    )
    result = run_playbook("playbooks/bake_preflight.yml", inventory)
    failures = {
        error.split(":", 1)[0]: error
        for error in result.errors
        if "Check the operating system suits the flavour" in error
    }
    assert len(failures) == len(result.errors), result.errors
    # No OS is in every flavour's list: some host fails, whatever this machine runs.
    assert failures, result.errors
    node_os = {
        re.search(r"this node runs ([^.]+)\.", message).group(1) for message in failures.values()
    }
    assert len(node_os) <= 1
    for flavor in flavors:
        expected = rules.flavor_platforms(versions, flavor)
        message = failures.get(f"bake-{flavor}")
        if message:
            assert f"The {flavor} flavour is built on {', '.join(expected)} (" in message
            assert not node_os & set(expected)
        else:
            assert node_os <= set(expected)
    assert len(failures) < len(flavors), "this machine bakes some flavour (Debian 12: local)"


def hcl_variables(path) -> dict:
    with (ROOT / path).open() as handle:
        return {k: v for block in hcl2.load(handle)["variable"] for k, v in block.items()}


def listed(description: str) -> list[str]:
    """The names in a description's closing parentheses: '... (gpu, neuron, cpu).'"""
    return re.search(r"\(([^()]*)\)\.?$", description).group(1).split(", ")


def test_packer_variables_name_the_matrix_as_it_is():
    """The AMI template's variable descriptions (what `packer inspect` shows) and defaults are
    the one place HCL repeats the matrix: they must list exactly its AMI flavours and OSes."""
    ami = hcl_variables("packer/ami/variables.pkr.hcl")
    assert listed(ami["flavor"]["description"]) == bakeami.flavors("ami")
    assert listed(ami["os"]["description"]) == bakeami.operating_systems("ami")
    assert ami["os"]["default"] == bakeami.operating_systems("ami")[0]
    # The local template's default flavour is the one `mlcluster bake local` checks.
    local = hcl_variables("packer/local.pkr.hcl")
    assert local["flavor"]["default"] == bakeami.flavors("local")[0]


def test_bake_preflight_offers_the_matrix_flavours(tmp_path, versions):
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(
        yaml.safe_dump(
            {
                "all": {
                    "vars": {
                        "ansible_connection": "local",
                        "ansible_python_interpreter": "{{ ansible_playbook_python }}",
                    },
                    "hosts": {"bake-nope": {"mlcluster_image_flavor": "nope"}},
                }
            }
        )
    )
    result = run_playbook("playbooks/bake_preflight.yml", inventory)
    (error,) = result.errors
    assert "Check the image flavour" in error
    assert f"bake one of {', '.join(versions['platforms'])} (versions.yml, platforms;" in error
