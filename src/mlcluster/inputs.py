"""Checks of what a person gave the CLI, made before any play runs or any host is touched.

Each failure is an ``MlclusterError`` with exit status 2 (bad input). The inventory is read by
Ansible's own ``ansible-inventory`` (so every inventory plugin, pattern and group rule is
Ansible's, not a copy of it), with unparsed sources made fatal: without that, Ansible warns
about an empty or malformed inventory and runs on no hosts, which ends "successful".
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from pathlib import Path

from .errors import MlclusterError
from .paths import project_root, venv_bin

# Ansible's own names that --tags accepts besides the playbooks' tags.
SPECIAL_TAGS = frozenset({"all", "always", "never", "tagged", "untagged"})
# A parse error names the plugin that tried; the one matching the file's kind says why.
_PLUGIN_FOR_SUFFIX = {".yml": ("auto", "yaml"), ".yaml": ("auto", "yaml"), ".json": ("yaml",)}
_PARSE_FAILURE = re.compile(r"Failed to parse inventory with '([\w.]+)' plugin: (.+)")
_ORIGIN = re.compile(r"^Origin: (\S+:\d+:\d+)\s*$", re.MULTILINE)
# What Ansible's `bool` filter takes as true, as the add-ons play reads its switch.
_TRUE_STRINGS = frozenset({"true", "yes", "on", "1", "y", "t"})


def ansible_env() -> dict[str, str]:
    """The environment of every Ansible process the CLI starts."""
    return {
        "ANSIBLE_CONFIG": str(project_root() / "ansible.cfg"),
        "PATH": f"{venv_bin()}:{os.environ.get('PATH', '')}",
        "ANSIBLE_FORCE_COLOR": "0",
        # An inventory source (or one file of an inventory directory) that no plugin can
        # parse is an error, not a warning followed by a run on no hosts.
        "ANSIBLE_INVENTORY_UNPARSED_FAILED": "True",
        "ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED": "True",
        # ansible-runner sets ANSIBLE_HOST_KEY_CHECKING=False unless the environment names it,
        # which outranks ansible.cfg and puts StrictHostKeyChecking=no before the inventory's
        # SSH arguments: host keys are checked unless the caller's environment says otherwise.
        "ANSIBLE_HOST_KEY_CHECKING": os.environ.get("ANSIBLE_HOST_KEY_CHECKING", "True"),
    }


def _ansible(tool: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(venv_bin() / tool), *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=project_root(),
        env={**os.environ, **ansible_env()},
    )


def parse_error(stderr: str, inventory: Path) -> str:
    """One line of why Ansible could not parse an inventory: the failure of the plugin meant
    for the file's kind (YAML for .yml, ini otherwise), with the line and column."""
    failures = _PARSE_FAILURE.findall(stderr)
    wanted = _PLUGIN_FOR_SUFFIX.get(inventory.suffix, ("ini",) if inventory.is_file() else ())
    chosen = next((msg for plugin, msg in failures if plugin in wanted), None)
    if chosen is None and failures:
        chosen = failures[0][1]
    if chosen is None:
        lines = [line.strip() for line in stderr.splitlines() if line.strip()]
        chosen = lines[-1] if lines else "ansible-inventory failed"
    origin = next((o for o in _ORIGIN.findall(stderr) if not o.startswith("<")), None)
    chosen = chosen.strip().rstrip(".")
    return f"{chosen} (at {origin})" if origin else chosen


def inventory_data(inventory: Path, limit: str | None = None) -> dict:
    """``ansible-inventory --list`` of an inventory: groups, hosts and host variables."""
    proc = _ansible("ansible-inventory", "-i", str(inventory), "--list", *_limit(limit))
    if proc.returncode != 0:
        raise MlclusterError(
            f"inventory {inventory} could not be parsed: {parse_error(proc.stderr, inventory)}"
        )
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise MlclusterError(f"ansible-inventory printed no inventory for {inventory}") from exc


def _limit(limit: str | None) -> list[str]:
    return ["--limit", limit] if limit else []


def inventory_hosts(data: dict) -> list[str]:
    """Every host of ``ansible-inventory --list`` output, in any group."""
    return sorted(
        {
            host
            for name, group in data.items()
            if name != "_meta" and isinstance(group, dict)
            for host in group.get("hosts") or []
        }
    )


def inventory_groups(data: dict) -> set[str]:
    """Every group of ``ansible-inventory --list`` output, those without hosts included."""
    return {
        name
        for group_name, group in data.items()
        if group_name != "_meta" and isinstance(group, dict)
        for name in [group_name, *(group.get("children") or [])]
    }


def localhost_vars(inventory: Path) -> dict:
    """The variables the inventory gives the implicit localhost (its ``all`` group variables),
    which plays on the machine Ansible runs on see."""
    proc = _ansible("ansible-inventory", "-i", str(inventory), "--host", "localhost")
    if proc.returncode != 0:
        return {}
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError:
        return {}


def eks_addons_enabled(inventory: Path) -> bool:
    """Whether site.yml's EKS add-ons play (playbooks/eks.yml), which runs on the machine
    Ansible runs on against a kubeconfig, has work to do on this inventory: it sets
    ``mlcluster_eks_addons`` to a true boolean (a templated value cannot be told here)."""
    value = localhost_vars(inventory).get("mlcluster_eks_addons", False)
    return value is True or str(value).strip().lower() in _TRUE_STRINGS


def check_targets(inventory: Path, limit: str | None = None) -> list[str]:
    """The hosts a run would target; bad input when there are none, unless the inventory is one
    of an EKS cluster whose add-ons play runs from this machine (then none: that play's
    ``localhost`` is not an inventory host)."""
    data = inventory_data(inventory, limit)
    hosts = inventory_hosts(data)
    if hosts:
        return hosts
    everything = inventory_hosts(inventory_data(inventory)) if limit else []
    if not everything:
        if not limit and eks_addons_enabled(inventory):
            return []
        empty = inventory.is_file() and not inventory.read_text(errors="replace").strip()
        eks = "eks_nodes" in inventory_groups(data)
        raise MlclusterError(
            f"inventory {inventory} "
            + ("is empty" if empty else "defines no hosts")
            + " (a host belongs under all: hosts: or a group's hosts:"
            + ("; without node hosts, mlcluster_eks_addons: true runs the add-ons)" if eks else ")")
        )
    shown = ", ".join(everything[:10])
    if len(everything) > 10:
        shown += f", ... ({len(everything)} in all)"
    raise MlclusterError(
        f"no host matches --limit {limit} in inventory {inventory} (hosts: {shown})"
    )


def playbook_tags(playbook: Path, inventory: Path) -> set[str]:
    """The tags of a playbook's plays and tasks, as ``ansible-playbook --list-tags`` lists them
    (the listing is the only place Ansible states them)."""
    proc = _ansible("ansible-playbook", "-i", str(inventory), "--list-tags", str(playbook))
    if proc.returncode != 0:
        raise MlclusterError(
            f"cannot list the tags of {playbook.name}: {parse_error(proc.stderr, playbook)}"
        )
    return {
        tag.strip()
        for listed in re.findall(r"TAGS: \[([^\]]*)\]", proc.stdout)
        for tag in listed.split(",")
        if tag.strip()
    }


def check_tags(tags: str | None, playbook: Path, inventory: Path) -> None:
    if not tags:
        return
    given = [t.strip() for t in tags.split(",") if t.strip()]
    known = playbook_tags(playbook, inventory)
    unknown = [t for t in given if t not in known | SPECIAL_TAGS]
    if not given or unknown:
        raise MlclusterError(
            f"unknown tag{'s' * (len(unknown) != 1)} {', '.join(unknown) or repr(tags)} for "
            f"{playbook.name} (known: {', '.join(sorted(known))})"
        )


def check_report_path(report: str | Path | None) -> Path | None:
    """A report file must be writable before the run, not found unwritable after it.

    Reports are written to a temporary file beside the target and renamed over it, so the
    directory that will hold it (or its nearest existing parent) must take a new file.
    """
    if report is None:
        return None
    path = Path(report).expanduser()
    if path.is_dir():
        raise MlclusterError(f"--report {report} is a directory, not a file")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise MlclusterError(f"--report {report}: {parent} is not a directory")
    try:
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".mlcluster-report-"):
            pass
    except OSError as exc:
        raise MlclusterError(
            f"--report {report}: cannot write in {parent}: {exc.strerror or exc}"
        ) from exc
    return path
