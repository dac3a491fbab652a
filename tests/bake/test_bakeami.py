"""mlcluster.bakeami: runs packer on packer/ami and returns the AMI id from the manifest."""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import pytest

from mlcluster import bakeami
from mlcluster.errors import MlclusterError

FAKE_PACKER = """#!/usr/bin/env python3
import json, sys
from pathlib import Path
log = Path(__file__).with_suffix(".log")
with log.open("a") as handle:
    handle.write(json.dumps(sys.argv[1:]) + "\\n")
if sys.argv[1] == "version":
    print("Packer v{version}")
elif sys.argv[1] == "build":
    var_file = next(a.split("=", 1)[1] for a in sys.argv if a.startswith("-var-file="))
    variables = json.loads(Path(var_file).read_text())
    if variables.get("fail"):
        sys.exit(1)
    Path(variables["manifest_path"]).write_text(json.dumps({{
        "builds": [
            {{"name": "node", "artifact_id": "us-east-1:ami-0000000000000000a",
             "packer_run_uuid": "old"}},
            {{"name": "node",
             "artifact_id": "us-east-1:ami-0123456789abcdef0,eu-west-1:ami-0fedcba9876543210",
             "packer_run_uuid": "new", "custom_data": {{"flavor": variables["flavor"]}}}},
        ],
        "last_run_uuid": "new",
    }}))
"""


def fake_packer(tmp_path: Path, version: str) -> Path:
    script = tmp_path / "packer"
    script.write_text(FAKE_PACKER.format(version=version))
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


def calls(script: Path) -> list[list[str]]:
    return [json.loads(line) for line in script.with_suffix(".log").read_text().splitlines()]


def test_build_returns_the_ami_of_the_last_run(tmp_path):
    packer = fake_packer(tmp_path, "1.11.2")
    ami = bakeami.build_ami(
        "gpu", "ubuntu22.04", {"region": "eu-west-1", "volume_size": 200}, packer=str(packer)
    )
    assert ami == "ami-0fedcba9876543210"
    invocations = calls(packer)
    assert invocations[0] == ["version"]
    assert invocations[1][0] == "init" and invocations[1][1].endswith("packer/plugins.pkr.hcl")
    build = invocations[2]
    assert build[:2] == ["build", "-color=false"] and build[-1].endswith("packer/ami")
    var_file = Path(next(a.split("=", 1)[1] for a in build if a.startswith("-var-file=")))
    variables = json.loads(var_file.read_text())
    assert variables["flavor"] == "gpu" and variables["os"] == "ubuntu22.04"
    assert variables["volume_size"] == 200
    assert variables["manifest_path"] == str(var_file.parent / "packer-manifest.json")


def test_old_packer_has_the_plugins_built_in(tmp_path):
    packer = fake_packer(tmp_path, "1.6.6")
    assert bakeami.build_ami("cpu", "ubuntu24.04", {}, packer=str(packer)) == (
        "ami-0123456789abcdef0"
    )
    assert [call[0] for call in calls(packer)] == ["version", "build"]


def test_a_failed_build_is_an_error(tmp_path):
    packer = fake_packer(tmp_path, "1.11.2")
    with pytest.raises(MlclusterError, match=r"packer build failed \(exit 1\)"):
        bakeami.build_ami("gpu", "ubuntu22.04", {"fail": True}, packer=str(packer))


@pytest.mark.parametrize(
    ("flavor", "os_name", "variables", "message"),
    [
        ("tpu", "ubuntu22.04", {}, "unknown ami flavour 'tpu'; choose one of gpu, neuron, cpu"),
        ("local", "debian12", {}, "unknown ami flavour 'local'"),
        ("gpu", "rhel9", {}, "the gpu flavour is not built on 'rhel9'"),
        ("gpu", "al2023", {}, "the gpu flavour is not built on 'al2023'"),
        ("gpu", "ubuntu22.04", {"os": "ubuntu24.04"}, "os are set by the bake itself"),
        ("gpu", "ubuntu22.04", {"mirror_base": "ftp://m"}, "cannot be baked as the gpu flavour"),
    ],
)
def test_arguments_are_checked_before_packer_runs(flavor, os_name, variables, message):
    with pytest.raises(MlclusterError, match=message):
        bakeami.build_ami(flavor, os_name, variables, packer="/nonexistent/packer")


def test_manifest_without_an_ami_is_an_error(tmp_path):
    manifest = tmp_path / "m.json"
    manifest.write_text(
        json.dumps({"builds": [{"artifact_id": "", "packer_run_uuid": "x"}], "last_run_uuid": "x"})
    )
    with pytest.raises(MlclusterError, match="no AMI id"):
        bakeami.ami_id_from_manifest(manifest)
    with pytest.raises(MlclusterError, match="wrote no manifest"):
        bakeami.ami_id_from_manifest(tmp_path / "missing.json")


# ---- preflight (--validate-only) ----------------------------------------------------------------


def test_preflight_validates_with_the_build_variables(tmp_path):
    packer = fake_packer(tmp_path, "1.6.6")
    summary = bakeami.preflight("gpu", "ubuntu22.04", {"region": "eu-west-1"}, packer=str(packer))
    assert summary.startswith("preflight passed: the gpu flavour on ubuntu22.04")
    (validate,) = calls(packer)
    assert validate[0] == "validate" and validate[-1].endswith("packer/ami")
    assert any(a.startswith("-var-file=") for a in validate)


def test_preflight_reports_what_packer_validate_says(tmp_path):
    packer = tmp_path / "packer"
    packer.write_text("#!/bin/sh\necho 'Error: Invalid index' >&2\nexit 1\n")
    packer.chmod(0o755)
    with pytest.raises(MlclusterError, match=r"(?s)packer validate failed.*Invalid index"):
        bakeami.preflight("cpu", "ubuntu22.04", {}, packer=str(packer))


@pytest.mark.skipif(shutil.which("packer") is None, reason="packer is not installed")
@pytest.mark.parametrize(
    ("flavor", "os_name"),
    [(f, o) for f, p in bakeami.platform_matrix().items() if p["target"] == "ami" for o in p["os"]],
)
def test_preflight_passes_offline_with_the_real_packer(flavor, os_name):
    """`mlcluster bake ami --flavor gpu --os ubuntu22.04 --validate-only` and every
    other pair of the matrix: no network, no AWS credentials, no null pin left."""
    assert "preflight passed" in bakeami.preflight(flavor, os_name, {})


@pytest.mark.skipif(shutil.which("packer") is None, reason="packer is not installed")
def test_cli_validate_only(capsys):
    from mlcluster import cli

    argv = ["bake", "ami", "--flavor", "gpu", "--os", "ubuntu22.04", "--validate-only"]
    assert cli.main(argv) == 0
    assert capsys.readouterr().out.startswith("preflight passed: the gpu flavour on ubuntu22.04")
    # `bake ami` offers only the operating systems of the AMI flavours: the local node's Debian
    # is refused by the parser, before any check runs.
    with pytest.raises(SystemExit) as exc:
        cli.main([*argv[:5], "debian12", "--validate-only"])
    assert exc.value.code == 2
    assert "argument --os: invalid choice: 'debian12'" in capsys.readouterr().err
