#!/usr/bin/python
"""Fill a directory with the wheels that a set of requirements needs."""

from __future__ import annotations

DOCUMENTATION = r"""
module: wheelhouse
author: mlcluster developers
short_description: Fill a wheelhouse with wheels for requirements and local source packages
description:
  - Runs C(pip download) for the requirements and C(pip wheel --no-deps) for local source
    directories into I(path), so that nodes can install offline with
    C(pip install --no-index --find-links). This is how air-gapped sites and machines whose nodes
    cannot reach the package index install the workloads.
  - Writes I(path)/requirements.lock, the requirements and every dependency pip resolved for
    them from the wheelhouse, each as C(name==version --hash=sha256:...) (a
    C(pip install --dry-run --report) over the wheelhouse alone), so that nodes install with
    C(pip install --require-hashes --no-index -r requirements.lock), and a wheel changed after
    it was fetched is refused. The source packages' wheels are not in it (built here, copied
    over SSH).
  - Idempotent; a stamp file records a digest of the requirements and of every file of the
    source packages; when it matches (and the lock is there), nothing runs and nothing changes.
  - Usually run on the Ansible controller (C(delegate_to=localhost), C(run_once)).

options:
  path:
    description: Directory to fill (created when missing).
    type: path
    required: true
  requirements:
    description: pip requirement specifiers whose wheels (and their dependencies') are downloaded.
    type: list
    elements: str
    default: []
  sources:
    description: Local project directories built into wheels without their dependencies.
    type: list
    elements: path
    default: []
  python:
    description: Python interpreter whose pip runs (the target nodes' Python version must match).
    type: path
    default: python3
  pip_args:
    description:
      - Extra arguments of C(pip download), e.g. C(--extra-index-url URL) for torch's CUDA
        wheels. Part of the digest.
    type: str
    default: ""
notes:
  - Supports check mode (reports whether the wheelhouse would change).
"""

EXAMPLES = r"""
- name: Fill the wheelhouse for the workloads
  mlcluster.core.wheelhouse:
    path: "{{ playbook_dir }}/../.mlcluster/wheelhouse"
    requirements: ["torch==2.13.0", "jax[cpu]==0.10.2"]
    sources: ["{{ playbook_dir }}/../workloads"]
    python: "{{ ansible_playbook_python }}"
  delegate_to: localhost
  run_once: true
"""

RETURN = r"""
digest:
  description: Digest of the inputs, as written to the stamp file.
  type: str
  returned: always
wheels:
  description: Names of the wheel files in the wheelhouse.
  type: list
  elements: str
  returned: always
lock:
  description: Path of the hash-pinned requirements file (absent in check mode before a build).
  type: str
  returned: always
locked:
  description: The lock's lines, C(name==version --hash=sha256:digest), sorted.
  type: list
  elements: str
  returned: always
"""

import hashlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import shlex  # noqa: E402
import tempfile  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

STAMP = ".mlcluster-wheelhouse"
LOCK = "requirements.lock"
# Part of the digest: a wheelhouse stamped before the lock existed is rebuilt once.
_FORMAT = "lock-v1"
_SKIP_DIRS = {"__pycache__", "build", "dist", ".git"}


def inputs_digest(requirements, sources):
    digest = hashlib.sha256()
    for req in requirements:
        digest.update(req.encode() + b"\n")
    for source in sources:
        files = []
        # Walked lazily so that pruning `dirs` keeps os.walk out of the build's own output
        # (build/, *.egg-info), which the first wheel build creates inside the source tree.
        for root, dirs, names in os.walk(source):
            dirs[:] = [d for d in dirs if d not in _SKIP_DIRS and not d.endswith(".egg-info")]
            files += [os.path.join(root, n) for n in names if not n.endswith(".pyc")]
        for full in sorted(files, key=lambda f: os.path.relpath(f, source)):
            digest.update(os.path.relpath(full, source).encode() + b"\0")
            with open(full, "rb") as handle:
                digest.update(handle.read())
    return digest.hexdigest()


def _canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_lines(report):
    """The hash-pinned lines of a `pip install --report` document, one per resolved item."""
    lines = []
    for item in report.get("install", []):
        metadata = item["metadata"]
        archive = item.get("download_info", {}).get("archive_info", {})
        sha256 = archive.get("hashes", {}).get("sha256")
        if not sha256 and archive.get("hash", "").startswith("sha256="):
            sha256 = archive["hash"].split("=", 1)[1]
        if not sha256:
            raise ValueError(f"pip reported no sha256 for {metadata['name']} {metadata['version']}")
        pin = f"{_canonical(metadata['name'])}=={metadata['version']}"
        lines.append(f"{pin} --hash=sha256:{sha256}")
    return sorted(lines)


def read_lock(path):
    lock = os.path.join(path, LOCK)
    if not os.path.isfile(lock):
        return None
    with open(lock) as handle:
        return [line.strip() for line in handle if line.strip() and not line.startswith("#")]


def resolve_lock(module, python, path, requirements):
    """Resolve the requirements from the wheelhouse alone and write the lock (atomically)."""
    lines = []
    if requirements:
        with tempfile.TemporaryDirectory() as scratch:
            report = os.path.join(scratch, "report.json")
            module.run_command(
                [
                    python,
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--dry-run",
                    "--ignore-installed",
                    "--no-index",
                    "--find-links",
                    path,
                    "--report",
                    report,
                    *requirements,
                ],
                check_rc=True,
            )
            with open(report) as handle:
                try:
                    lines = lock_lines(json.load(handle))
                except ValueError as error:
                    module.fail_json(msg=str(error))
    with open(os.path.join(path, LOCK + ".tmp"), "w") as handle:
        handle.write("# Written by mlcluster.core.wheelhouse: install with --require-hashes.\n")
        handle.writelines(line + "\n" for line in lines)
    os.replace(os.path.join(path, LOCK + ".tmp"), os.path.join(path, LOCK))
    return lines


def wheel_names(path):
    if not os.path.isdir(path):
        return []
    return sorted(n for n in os.listdir(path) if n.endswith(".whl"))


def main():
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "required": True},
            "requirements": {"type": "list", "elements": "str", "default": []},
            "sources": {"type": "list", "elements": "path", "default": []},
            "python": {"type": "path", "default": "python3"},
            "pip_args": {"type": "str", "default": ""},
        },
        supports_check_mode=True,
    )
    path = module.params["path"]
    requirements = module.params["requirements"]
    sources = module.params["sources"]
    for source in sources:
        if not os.path.isfile(os.path.join(source, "pyproject.toml")):
            module.fail_json(msg=f"{source} is not a Python project (no pyproject.toml)")
    pip_args = shlex.split(module.params["pip_args"])
    digest = inputs_digest([_FORMAT, *pip_args, *requirements], sources)
    stamp = os.path.join(path, STAMP)
    current = None
    if os.path.isfile(stamp):
        with open(stamp) as handle:
            current = handle.read().strip()
    lock = os.path.join(path, LOCK)
    locked = read_lock(path)
    if current == digest and locked is not None:
        module.exit_json(
            changed=False, digest=digest, wheels=wheel_names(path), lock=lock, locked=locked
        )
    if module.check_mode:
        module.exit_json(
            changed=True, digest=digest, wheels=wheel_names(path), lock=lock, locked=locked or []
        )
    os.makedirs(path, exist_ok=True)
    python = module.params["python"]
    if requirements:
        module.run_command(
            [python, "-m", "pip", "download", "--quiet", "--dest", path, *pip_args, *requirements],
            check_rc=True,
        )
    for source in sources:
        module.run_command(
            [python, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", path, source],
            check_rc=True,
        )
    locked = resolve_lock(module, python, path, requirements)
    with open(stamp + ".tmp", "w") as handle:
        handle.write(digest + "\n")
    os.replace(stamp + ".tmp", stamp)
    module.exit_json(
        changed=True, digest=digest, wheels=wheel_names(path), lock=lock, locked=locked
    )


if __name__ == "__main__":
    main()
