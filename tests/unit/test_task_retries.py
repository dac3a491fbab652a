"""Every task that fetches over the network retries: the package tasks (apt, dnf, package), the
pip installs and the downloads (get_url) of every role and playbook carry `until: X is
succeeded` on their own registered result, with retries and a delay. A mirror in mid-sync or a
package manager's lock then costs a few seconds, not a failed bake. Exempt: apt calls that only
clean the cache or install a .deb file already on the host."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from mlcluster.paths import project_root

ROOT = project_root()
FETCHING = {
    "ansible.builtin.apt",
    "ansible.builtin.dnf",
    "ansible.builtin.package",
    "ansible.builtin.pip",
    "ansible.builtin.get_url",
}


def _tasks(items: list | None):
    for task in items or []:
        if not isinstance(task, dict):
            continue
        nested = [task.get(key) for key in ("block", "rescue", "always")]
        if any(nested):
            for part in nested:
                yield from _tasks(part)
        else:
            yield task


def _task_lists(path: Path):
    data = yaml.safe_load(path.read_text()) or []
    if path.parent.name in ("tasks", "handlers"):
        yield data
        return
    for play in data:  # a playbook
        for key in ("pre_tasks", "tasks", "post_tasks", "handlers"):
            yield play.get(key)


def _exempt(module: str, args) -> bool:
    if module != "ansible.builtin.apt" or not isinstance(args, dict):
        return False
    return "deb" in args or set(args) <= {"clean", "autoclean", "autoremove"}


def fetching_tasks():
    files = [*ROOT.glob("roles/*/tasks/*.yml"), *ROOT.glob("roles/*/handlers/*.yml")]
    files += ROOT.glob("playbooks/*.yml")
    for path in sorted(files):
        for tasks in _task_lists(path):
            for task in _tasks(tasks):
                module = next((m for m in FETCHING if m in task), None)
                if module and not _exempt(module, task[module]):
                    yield path.relative_to(ROOT), task


def test_the_scan_sees_the_fetching_tasks():
    seen = {(str(path), task["name"]) for path, task in fetching_tasks()}
    # One of each kind, so a change in the walk cannot make the next test vacuous.
    assert ("roles/common/tasks/install.yml", "Install the baseline packages") in seen, sorted(seen)
    assert ("roles/workloads/tasks/configure.yml", "Install the requirements into the venv") in seen
    assert ("roles/enroot_pyxis/tasks/pyxis.yml", "Install the build tools") in seen
    assert len(seen) >= 50


def test_every_task_that_fetches_retries_on_its_own_result():
    missing = []
    for path, task in fetching_tasks():
        register = task.get("register")
        until = str(task.get("until", ""))
        if not (
            register
            and re.fullmatch(rf"{register} is succeeded", until)
            and int(task.get("retries", 0)) >= 2
            and int(task.get("delay", 0)) >= 1
        ):
            missing.append(f"{path}: {task.get('name')}")
    assert missing == []
