"""Images of the local cluster: a debootstrapped base, and the node image baked by Packer.

The node image is baked by ``packer build packer/local.pkr.hcl``, which runs the same
``playbooks/bake.yml`` as the AMI templates. It is tagged with a hash of everything the bake
reads, so it is rebuilt only when one of those inputs changes.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from . import podman
from .errors import MlclusterError
from .paths import collection_plugins, load_plugin, project_root, state_dir, venv_bin

BASE_IMAGE = "localhost/mlcluster-base:bookworm"
NODE_REPO = "localhost/mlcluster-node"
DEBIAN_MIRROR = os.environ.get("MLCLUSTER_DEBIAN_MIRROR", "http://deb.debian.org/debian")
# What a node needs before Ansible can run in it: systemd as init, Python, SSH.
BASE_PACKAGES = [
    "systemd",
    "systemd-sysv",
    "dbus",
    "python3",
    "openssh-server",
    "iproute2",
    "sudo",
    "ca-certificates",
    "procps",
    "less",
]
# Which role files the install phase reads (the others, the configure phase's, need no
# re-bake): the rule the install_digest lookup follows too.
_role_files = load_plugin("module_utils", "role_files")


def bake_inputs() -> list[Path]:
    root = project_root()
    files = [root / "packer" / "local.pkr.hcl", root / "ansible.cfg"]
    files += sorted((root / "playbooks").glob("bake*.yml"))
    if (root / "versions.yml").exists():
        files.append(root / "versions.yml")
    collection = collection_plugins().parent
    # The project's roles and the collection's (the pieces they share, mlcluster.core.component).
    for roles in (root / "roles", collection / "roles"):
        for path in sorted(roles.rglob("*")):
            rel = path.relative_to(roles).as_posix()
            if path.is_file() and _role_files.install_file(rel):
                files.append(path)
    files += sorted(p for p in (collection / "plugins").rglob("*.py") if p.is_file())
    return files


def inputs_hash(base_image: str) -> str:
    root = project_root()
    digest = hashlib.sha256()
    digest.update(base_image.encode())
    digest.update(podman.inspect(base_image)["Id"].encode())
    for path in bake_inputs():
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def ensure_base_image(say=print) -> str:
    if podman.exists("image", BASE_IMAGE):
        return BASE_IMAGE
    if not shutil.which("debootstrap"):
        raise MlclusterError(
            "debootstrap is not installed and no base image is configured: install it "
            "(`bash scripts/setup.sh`) or pass --base-image (e.g. docker.io/library/ubuntu:22.04 "
            "where a registry is reachable)"
        )
    say(f"building the base image {BASE_IMAGE} with debootstrap (about 1-2 minutes)")
    with tempfile.TemporaryDirectory(prefix="mlcluster-rootfs-", dir=state_dir()) as tmp:
        rootfs = Path(tmp) / "rootfs"
        proc = subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                "bookworm",
                str(rootfs),
                DEBIAN_MIRROR,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            tail = "\n".join(proc.stdout.strip().splitlines()[-5:])
            raise MlclusterError(f"debootstrap failed (exit {proc.returncode}):\n{tail}")
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        imp = subprocess.run(
            [
                "podman",
                "import",
                "--change",
                'CMD ["/sbin/init"]',
                "--change",
                "STOPSIGNAL SIGRTMIN+3",
                "-",
                BASE_IMAGE,
            ],
            stdin=tar.stdout,
            capture_output=True,
            text=True,
            check=False,
        )
        tar.wait()
        if imp.returncode != 0 or tar.returncode != 0:
            raise MlclusterError(f"podman import of the base image failed: {imp.stderr.strip()}")
    return BASE_IMAGE


def _docker_shim(directory: Path) -> Path:
    """A ``docker`` that is podman: Packer's docker builder drives the docker CLI."""
    directory.mkdir(parents=True, exist_ok=True)
    shim = directory / "docker"
    shim.write_text('#!/bin/sh\nexec podman "$@"\n')
    shim.chmod(0o755)
    return directory


def node_image_tag(base_image: str) -> str:
    return f"{NODE_REPO}:{inputs_hash(base_image)}"


def ensure_node_image(base_image: str | None = None, force: bool = False, say=print) -> str:
    podman.require_podman()
    # Packer's build container gets podman's default ulimits too: on a restricted host
    # (`mlcluster bake local` before any `local up`) they must be set first.
    podman.ensure_host_setup(say)
    if not shutil.which("packer"):
        raise MlclusterError(
            "packer is not installed: the node image is baked by `packer build`. Install it "
            "with `bash scripts/setup.sh` (Debian's package `packer`)."
        )
    base = base_image or ensure_base_image(say)
    if not podman.exists("image", base):
        podman.run(["pull", base], timeout=900)
    tag = node_image_tag(base)
    if podman.exists("image", tag) and not force:
        return tag
    say(f"baking {tag} with `packer build packer/local.pkr.hcl` (playbooks/bake.yml)")
    root = project_root()
    work = state_dir() / "bake"
    work.mkdir(parents=True, exist_ok=True)
    export = work / "node.tar"
    env = dict(os.environ)
    env["PATH"] = f"{_docker_shim(work / 'shim')}:{venv_bin()}:{env.get('PATH', '')}"
    env["ANSIBLE_CONFIG"] = str(root / "ansible.cfg")
    env["PACKER_NO_COLOR"] = "1"
    env.setdefault("PACKER_CACHE_DIR", str(work / "packer_cache"))
    log = work / "packer.log"
    cmd = [
        "packer",
        "build",
        "-force",
        "-var",
        f"base_image={base}",
        "-var",
        f"image_name={tag}",
        "-var",
        f"export_path={export}",
        "-var",
        f"playbook={root / 'playbooks' / 'bake.yml'}",
        str(root / "packer" / "local.pkr.hcl"),
    ]
    returncode = _run_logged(cmd, root, env, log, say)
    export.unlink(missing_ok=True)
    if returncode != 0 or not podman.exists("image", tag):
        tail = "\n".join(log.read_text().splitlines()[-15:])
        raise MlclusterError(f"packer build failed (full log: {log}):\n{tail}")
    _prune_old_node_images(keep=tag)
    return tag


# The lines of packer's output that name a step: Ansible's tasks and plays, packer's own stages.
_STEP = re.compile(
    r"(?:TASK|PLAY) \[(?P<name>[^\]]+)\]"
    r"|==> (?P<packer>[\w.-]+: (?:Creating|Exporting|Running|Provisioning)[^\n]*)"
)


def _run_logged(cmd: list[str], root: Path, env: dict, log: Path, say, every_s: float = 5.0) -> int:
    """Run packer with its whole output in `log`, and say the step it is at whenever a new one
    starts at least `every_s` after the last line said (a bake takes minutes)."""
    started = time.monotonic()
    last_said = -every_s
    with log.open("w") as out:
        proc = subprocess.Popen(
            cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            match = _STEP.search(line)
            now = time.monotonic()
            if match and now - last_said >= every_s:
                step = match["name"] or match["packer"]
                say(f"  bake [{now - started:4.0f} s] {step.strip()}")
                last_said = now
        return proc.wait()


def _prune_old_node_images(keep: str) -> None:
    out = podman.run(
        ["images", "--format", "{{.Repository}}:{{.Tag}}", NODE_REPO], check=False
    ).stdout.split()
    in_use = {c.get("Image") for c in podman.containers_with_label("io.mlcluster.cluster")}
    for image in out:
        if image != keep and image not in in_use:
            podman.run(["rmi", image], check=False)
