"""Bake an accelerator node AMI with Packer (packer/ami) and return its id.

`mlcluster bake --target ami --flavor gpu --os ubuntu22.04 [--var k=v]` calls ``build_ami``.
Packer runs playbooks/bake.yml on a build instance through its Ansible provisioner; the AMI id
comes from the file the template's manifest post-processor writes, not from Packer's output.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from mlcluster import paths
from mlcluster.errors import MlclusterError

FLAVORS = ("gpu", "neuron", "cpu")
OPERATING_SYSTEMS = ("ubuntu22.04", "ubuntu24.04", "al2023")
# Variables build_ami sets itself; a caller's --var may not replace them.
RESERVED_VARIABLES = frozenset({"flavor", "os", "manifest_path"})
_AMI_ID = re.compile(r"\bami-[0-9a-f]{8,17}\b")


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
    lists and numbers keep their types. Packer's output streams to the terminal.
    """
    if flavor not in FLAVORS:
        raise MlclusterError(f"unknown AMI flavour {flavor!r}; choose one of {', '.join(FLAVORS)}")
    if os_name not in OPERATING_SYSTEMS:
        raise MlclusterError(
            f"unknown operating system {os_name!r}; choose one of {', '.join(OPERATING_SYSTEMS)}"
        )
    reserved = RESERVED_VARIABLES.intersection(variables)
    if reserved:
        raise MlclusterError(
            f"{', '.join(sorted(reserved))} are set by the bake itself; use --flavor/--os instead"
        )
    packer = packer or shutil.which("packer")
    if not packer:
        raise MlclusterError(
            "packer is not installed (https://developer.hashicorp.com/packer/install)"
        )

    root = paths.project_root()
    run_dir = (
        paths.state_dir() / "packer" / f"ami-{flavor}-{os_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = run_dir / "packer-manifest.json"
    var_file = run_dir / "variables.pkrvars.json"
    var_file.write_text(
        json.dumps(
            {**variables, "flavor": flavor, "os": os_name, "manifest_path": str(manifest_path)},
            indent=2,
        )
    )
    env = {
        **os.environ,
        # The Ansible provisioner runs ansible-playbook from the project's environment.
        "PATH": f"{paths.venv_bin()}{os.pathsep}{os.environ.get('PATH', '')}",
        "PACKER_NO_COLOR": "1",
    }

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
