"""Bake an accelerator node AMI with Packer (packer/ami) and return its id.

`mlcluster bake ami --flavor gpu --os ubuntu22.04 [--var k=v]` calls ``build_ami``.
Packer runs playbooks/bake.yml on a build instance through its Ansible provisioner; the AMI id
comes from the file the template's manifest post-processor writes, not from Packer's output.
``preflight`` (``--validate-only``) checks offline what can be checked before a build: the
platform matrix, the version rules and ``packer validate``.

Which flavour is baked on which operating system is versions.yml's platform matrix
(``platforms``, ``operating_systems``), read here by ``platform_matrix``; the CLI's choices, the
AMI template and the bake preflight read the same.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import yaml

from mlcluster import paths
from mlcluster.errors import MlclusterError

# Variables build_ami sets itself; a caller's --var may not replace them.
RESERVED_VARIABLES = frozenset({"flavor", "os", "manifest_path"})
_AMI_ID = re.compile(r"\bami-[0-9a-f]{8,17}\b")


def load_versions(path: Path | None = None) -> dict:
    """The ``mlcluster_versions`` manifest (versions.yml of the project by default)."""
    path = path or paths.project_root() / "versions.yml"
    return yaml.safe_load(path.read_text())["mlcluster_versions"]


def platform_matrix(versions: Mapping | None = None) -> dict[str, dict]:
    """Flavour -> {"target": "ami" | "local", "os": [operating system names]} from versions.yml."""
    versions = versions if versions is not None else load_versions()
    return {
        flavor: {"target": str(platform["target"]), "os": [str(o) for o in platform["os"]]}
        for flavor, platform in (versions.get("platforms") or {}).items()
    }


def flavors(target: str | None = None, versions: Mapping | None = None) -> list[str]:
    """Flavours of the platform matrix (those baked by ``target`` when given), in its order."""
    return [
        flavor
        for flavor, platform in platform_matrix(versions).items()
        if target in (None, platform["target"])
    ]


def operating_systems(target: str | None = None, versions: Mapping | None = None) -> list[str]:
    """Operating systems some flavour (of ``target`` when given) is built on, in matrix order."""
    names: list[str] = []
    for platform in platform_matrix(versions).values():
        if target in (None, platform["target"]):
            names += [name for name in platform["os"] if name not in names]
    return names


def check_platform(
    flavor: str, os_name: str, target: str = "ami", versions: Mapping | None = None
) -> None:
    """Raise unless versions.yml's platform matrix bakes ``flavor`` on ``os_name`` by ``target``."""
    matrix = platform_matrix(versions)
    by_target = [name for name, platform in matrix.items() if platform["target"] == target]
    if flavor not in by_target:
        raise MlclusterError(
            f"unknown {target} flavour {flavor!r}; choose one of {', '.join(by_target)} "
            "(versions.yml, platforms)"
        )
    built_on = matrix[flavor]["os"]
    if os_name not in built_on:
        raise MlclusterError(
            f"the {flavor} flavour is not built on {os_name!r}; choose one of "
            f"{', '.join(built_on)} (versions.yml, platforms)"
        )


def _version_rules():
    """The collection's version filter (the rules the bake preflight applies), as a module."""
    return paths.load_plugin("filter", "versions")


def packer_version(packer: str) -> tuple[int, ...]:
    """Version of the packer executable ('Packer v1.6.6' -> (1, 6, 6))."""
    out = subprocess.run([packer, "version"], capture_output=True, text=True, check=False).stdout
    match = re.search(r"v?(\d+)\.(\d+)\.(\d+)", out)
    if not match:
        raise MlclusterError(f"cannot tell the version of {packer} from: {out.strip()!r}")
    return tuple(int(part) for part in match.groups())


def ami_id_from_manifest(manifest_path: Path, region: str | None = None) -> str:
    """AMI id of the last run recorded by Packer's manifest post-processor.

    ``artifact_id`` is ``region:ami-id`` (comma-separated when the AMI is copied to more
    regions); the id in ``region`` is returned, else the first one.
    """
    try:
        data = json.loads(manifest_path.read_text())
    except FileNotFoundError as exc:
        raise MlclusterError(
            f"Packer wrote no manifest at {manifest_path}; the build produced no AMI"
        ) from exc
    except ValueError as exc:
        raise MlclusterError(f"{manifest_path} is not valid JSON: {exc}") from exc
    builds = data.get("builds") or []
    last_run = data.get("last_run_uuid")
    current = [b for b in builds if b.get("packer_run_uuid") == last_run] or builds[-1:]
    if not current:
        raise MlclusterError(f"{manifest_path} records no build")
    artifacts = [
        item.split(":", 1)
        for item in str(current[-1].get("artifact_id", "")).split(",")
        if ":" in item
    ]
    by_region = {
        reg.strip(): ami.strip() for reg, ami in artifacts if _AMI_ID.fullmatch(ami.strip())
    }
    if not by_region:
        raise MlclusterError(
            f"{manifest_path}: no AMI id in artifact_id {current[-1].get('artifact_id')!r}"
        )
    if region and region in by_region:
        return by_region[region]
    return next(iter(by_region.values()))


def check_arguments(flavor: str, os_name: str, variables: Mapping[str, object]) -> None:
    """Raise on a flavour/OS the matrix does not bake, a reserved variable, or a version rule."""
    versions = load_versions()
    check_platform(flavor, os_name, "ami", versions)
    reserved = RESERVED_VARIABLES.intersection(variables)
    if reserved:
        raise MlclusterError(
            f"{', '.join(sorted(reserved))} are set by the bake itself; use --flavor/--os instead"
        )
    errors = _version_rules().version_errors(
        versions, flavor, mirror_base=str(variables.get("mirror_base") or "")
    )
    if errors:
        raise MlclusterError(
            f"versions.yml cannot be baked as the {flavor} flavour:\n" + "\n".join(errors)
        )


def _packer(packer: str | None) -> str:
    packer = packer or shutil.which("packer")
    if not packer:
        raise MlclusterError(
            "packer is not installed (https://developer.hashicorp.com/packer/install)"
        )
    return packer


def _packer_env() -> dict[str, str]:
    return {
        **os.environ,
        # The Ansible provisioner runs ansible-playbook from the project's environment.
        "PATH": f"{paths.venv_bin()}{os.pathsep}{os.environ.get('PATH', '')}",
        "PACKER_NO_COLOR": "1",
        "CHECKPOINT_DISABLE": "1",
    }


def _write_var_file(
    run_dir: Path, flavor: str, os_name: str, variables: Mapping[str, object]
) -> tuple[Path, Path]:
    """JSON var file (types kept) and manifest path of one packer run in ``run_dir``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = run_dir / "packer-manifest.json"
    var_file = run_dir / "variables.pkrvars.json"
    var_file.write_text(
        json.dumps(
            {**variables, "flavor": flavor, "os": os_name, "manifest_path": str(manifest_path)},
            indent=2,
        )
    )
    return var_file, manifest_path


def preflight(
    flavor: str,
    os_name: str,
    variables: Mapping[str, object],
    *,
    packer: str | None = None,
    run: Callable[..., subprocess.CompletedProcess] = subprocess.run,
) -> str:
    """Check offline what a build of ``flavor`` on ``os_name`` would check first.

    The platform matrix, the reserved variables, the version rules (the bake preflight's
    ``version_errors``) and ``packer validate`` of packer/ami with the build's var file. Needs
    no AWS credentials and no network; returns a one-line summary, raises on the first failure.
    What only the build instance can tell (its OS facts) is checked again by
    playbooks/bake_preflight.yml during the build.
    """
    check_arguments(flavor, os_name, variables)
    packer = _packer(packer)
    root = paths.project_root()
    with tempfile.TemporaryDirectory(prefix="mlcluster-preflight-") as tmp:
        var_file, _ = _write_var_file(Path(tmp), flavor, os_name, variables)
        validate = run(
            [packer, "validate", f"-var-file={var_file}", str(root / "packer" / "ami")],
            cwd=root,
            env=_packer_env(),
            check=False,
            capture_output=True,
            text=True,
        )
    if validate.returncode != 0:
        raise MlclusterError(
            f"packer validate failed (exit {validate.returncode}):\n"
            f"{(validate.stdout or '') + (validate.stderr or '')}".rstrip()
        )
    return (
        f"preflight passed: the {flavor} flavour on {os_name} (platform matrix, version rules, "
        "packer validate)"
    )


def build_ami(
    flavor: str,
    os_name: str,
    variables: Mapping[str, object],
    *,
    packer: str | None = None,
    run: Callable[..., subprocess.CompletedProcess] = subprocess.run,
) -> str:
    """Run ``packer build`` on packer/ami for ``flavor`` on ``os_name`` and return the AMI id.

    ``variables`` are further template variables (region, instance_type, volume_size,
    subnet_id, mirror_base, ansible_extra_arguments, ...), passed in a JSON var file so that
    lists and numbers keep their types. Packer's output streams to the terminal. The platform
    matrix and the version rules are checked before Packer runs.
    """
    check_arguments(flavor, os_name, variables)
    packer = _packer(packer)
    root = paths.project_root()
    run_dir = (
        paths.state_dir() / "packer" / f"ami-{flavor}-{os_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    var_file, manifest_path = _write_var_file(run_dir, flavor, os_name, variables)
    env = _packer_env()

    # Packer >= 1.7 loads the amazon and ansible plugins that `init` installed; 1.6 has them
    # built in.
    if packer_version(packer) >= (1, 7, 0):
        init = run(
            [packer, "init", str(root / "packer" / "plugins.pkr.hcl")],
            cwd=root,
            env=env,
            check=False,
        )
        if init.returncode != 0:
            raise MlclusterError(
                f"packer init failed (exit {init.returncode}); see its output above"
            )
    build = run(
        [packer, "build", "-color=false", f"-var-file={var_file}", str(root / "packer" / "ami")],
        cwd=root,
        env=env,
        check=False,
    )
    if build.returncode != 0:
        raise MlclusterError(f"packer build failed (exit {build.returncode}); see its output above")
    region = variables.get("region")
    return ami_id_from_manifest(manifest_path, str(region) if region else None)
