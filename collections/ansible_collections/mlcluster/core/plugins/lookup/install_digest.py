"""Lookup plugin returning the digest of what a role's install phase does."""

from __future__ import annotations

DOCUMENTATION = r"""
name: install_digest
author: mlcluster developers
short_description: Digest of the inputs of a role's install phase
description:
  - Returns one digest per role named, SHA-256 over the role's files that its install phase can
    read (every file of the role but the configure phase's task files, its handlers and its
    README), the version manifest, and the collection's plugins and roles.
  - The install phase records it on the node when it has run (C(/etc/mlcluster/installed/ROLE)),
    in the image bake as in a deploy; site.yml runs only the configure phase of a role whose
    recorded digest is the one of this checkout, so that a node made from the baked image does
    not install again what the image holds. Any change to those inputs runs the install phase
    again.
options:
  _terms:
    description: Role names.
    required: true
    type: list
    elements: str
  roles_dir:
    description: The roles directory. Defaults to C(roles) next to the playbook directory.
    type: path
  versions_file:
    description: The version manifest. Defaults to C(versions.yml) next to the roles directory.
    type: path
notes:
  - The values, as this host sees them, of the role's variables that the install phase reads
    (the C(<role>_*) names in its install task files, vars, templates and files; not those only
    its defaults or argument specs name) are part of the digest, so an inventory that sets
    another C(common_packages) runs the install phase again.
"""

EXAMPLES = r"""
- name: Show the digest of the common role's install phase
  ansible.builtin.debug:
    msg: "{{ lookup('mlcluster.core.install_digest', 'common') }}"
"""

RETURN = r"""
_list:
  description: One hexadecimal SHA-256 digest per role, in the order named.
  type: list
  elements: str
"""

import hashlib  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
from functools import lru_cache  # noqa: E402
from pathlib import Path  # noqa: E402

from ansible.errors import AnsibleLookupError  # noqa: E402
from ansible.plugins.lookup import LookupBase  # noqa: E402
from ansible_collections.mlcluster.core.plugins.module_utils.role_files import (  # noqa: E402
    install_file,
)

PLUGINS_DIR = Path(__file__).resolve().parents[1]


def install_inputs(role_dir: Path, versions_file: Path) -> list[Path]:
    files = [
        path
        for path in sorted(role_dir.rglob("*"))
        if path.is_file() and install_file(path.relative_to(role_dir).as_posix())
    ]
    if versions_file.is_file():
        files.append(versions_file)
    files += sorted(
        p for p in PLUGINS_DIR.rglob("*.py") if p.is_file() and "__pycache__" not in p.parts
    )
    # The collection's own roles (shared pieces a role's install phase may include).
    files += sorted(p for p in (PLUGINS_DIR.parent / "roles").rglob("*") if p.is_file())
    return files


def _vars_definitions(role_dir: Path) -> dict[str, str]:
    """The role's internal variables (vars/*.yml, top-level keys) and the text of each value."""
    definitions: dict[str, str] = {}
    for path in sorted((role_dir / "vars").glob("*.yml")):
        key = None
        for line in path.read_text(errors="replace").splitlines():
            line = re.sub(r"(^|\s)#.*$", "", line)
            match = re.match(r"^([A-Za-z_][A-Za-z0-9_]*):", line)
            if match:
                key = match[1]
                definitions[key] = line[match.end() :]
            elif key is not None:
                definitions[key] += "\n" + line
    return definitions


@lru_cache(maxsize=64)
def install_variables(role_dir: Path, stamp: tuple) -> tuple[str, ...]:
    """The role's variables (<role>_*) that its install phase reads: those its install task
    files name, those of the templates and files they name (by file name), and those of the
    internal variables (vars/, __<role>_*) that any of these reach, transitively. Templates
    only the configure phase renders (slurm.conf) do not count, so an inventory value that
    only they read (slurm_healthcheck_mounts) does not run the install phase again."""
    public = re.compile(rf"\b{re.escape(role_dir.name)}_[a-z0-9_]+\b")
    internal = re.compile(rf"\b__{re.escape(role_dir.name)}_[a-z0-9_]+\b")
    inputs = [p for p in install_inputs(role_dir, Path("/nonexistent")) if role_dir in p.parents]
    tasks = [p for p in inputs if p.relative_to(role_dir).as_posix().startswith("tasks/")]
    # Comments do not read variables or files (install.yml says why slurm.conf is not written).
    text = "\n".join(
        re.sub(r"(^|\s)#.*$", "", line)
        for p in tasks
        for line in p.read_text(errors="replace").splitlines()
    )
    # Templates and files count where the task text names them (defaults and argument specs
    # name every variable of the role, also the configure phase's, so they do not count).
    named = text
    for path in inputs:
        relative = path.relative_to(role_dir).as_posix()
        if relative.startswith(("templates/", "files/")):
            name = path.name[: -len(".j2")] if path.name.endswith(".j2") else path.name
            if name in named:
                text += "\n" + path.read_text(errors="replace")
    definitions = _vars_definitions(role_dir)
    seen: set[str] = set()
    pending = set(internal.findall(text))
    while pending:
        name = pending.pop()
        if name in seen or name not in definitions:
            continue
        seen.add(name)
        text += "\n" + definitions[name]
        pending |= set(internal.findall(definitions[name])) - seen
    return tuple(sorted(set(public.findall(text))))


@lru_cache(maxsize=64)
def _files_digest(role_dir: Path, versions_file: Path, stamp: tuple) -> str:
    digest = hashlib.sha256()
    for path in install_inputs(role_dir, versions_file):
        name = path.relative_to(role_dir).as_posix() if role_dir in path.parents else path.name
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def install_digest(role_dir: Path, versions_file: Path, values: dict | None = None) -> str:
    """The digest of a role's install inputs and of its variables' values (the files' part is
    cached while no input file changes)."""
    if not role_dir.is_dir():
        raise AnsibleLookupError(f"role directory {role_dir} does not exist")
    inputs = install_inputs(role_dir, versions_file)
    stamp = tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in inputs)
    digest = hashlib.sha256(_files_digest(role_dir, versions_file, stamp).encode())
    digest.update(json.dumps(values or {}, sort_keys=True, default=str).encode())
    return digest.hexdigest()


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        self.set_options(var_options=variables, direct=kwargs)
        roles_dir = self.get_option("roles_dir")
        if not roles_dir:
            playbook_dir = (variables or {}).get("playbook_dir", ".")
            roles_dir = str(Path(playbook_dir).parent / "roles")
        roles = Path(roles_dir).resolve()
        versions = Path(self.get_option("versions_file") or roles.parent / "versions.yml")
        variables = variables or {}
        result = []
        for term in terms:
            role_dir = roles / str(term)
            if not role_dir.is_dir():
                raise AnsibleLookupError(f"role directory {role_dir} does not exist")
            stamp = tuple(
                (str(p), p.stat().st_mtime_ns) for p in install_inputs(role_dir, versions)
            )
            names = [n for n in install_variables(role_dir, stamp) if n in variables]
            values = {n: self._templar.template(variables[n]) for n in names}
            result.append(install_digest(role_dir, versions.resolve(), values))
        return result
