#!/usr/bin/python
"""Write a sysctl.d file and apply its settings in one call (issue 12: one round trip a host
instead of one a setting)."""

from __future__ import annotations

import os
import re
import tempfile

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: sysctl_file
short_description: Write a sysctl.d file and set the live values of its settings in one call
description:
  - Writes every setting of O(settings) to O(path) (C(key=value), in the order given) and sets
    the running kernel's value of each setting whose key matches O(apply_pattern) where it
    differs (through C(/proc/sys)). Values are compared with their whitespace normalised, as the
    kernel prints C(net.ipv4.tcp_rmem) with tabs.
  - One call a host, whatever the number of settings; check mode and diff are supported.
  - A key to be applied that the running kernel does not have fails the module before anything
    is written, unless O(missing=skip).
options:
  path:
    description: The sysctl.d file (written atomically, root-owned, mode 0644).
    type: path
    required: true
  settings:
    description: The settings, key to value.
    type: dict
    required: true
  apply_pattern:
    description:
      - Only keys matching this regular expression (Python C(re.match)) are set live; the others
        are written to the file only (a container may set only its network namespace's keys).
    type: str
    default: ".*"
  missing:
    description:
      - What a key to be applied that the running kernel lacks does. V(fail) before anything is
        written, or V(skip) (written to the file, not set; in RV(missing)), for a container whose
        network namespace holds only some of the host's C(net.*) keys.
    type: str
    choices: [fail, skip]
    default: fail
  header:
    description: A comment written at the top of the file.
    type: str
    default: ""
author: mlcluster
"""

EXAMPLES = r"""
- name: Write and apply the kernel settings
  mlcluster.core.sysctl_file:
    path: /etc/sysctl.d/90-mlcluster.conf
    settings:
      net.core.somaxconn: 4096
      vm.swappiness: 1
    apply_pattern: '^net\.'
"""

RETURN = r"""
written:
  description: Whether the file's content changed.
  type: bool
  returned: always
applied:
  description: The keys whose live value was (or in check mode would be) set.
  type: list
  elements: str
  returned: always
not_applied:
  description: The keys written to the file only (they do not match O(apply_pattern)).
  type: list
  elements: str
  returned: always
missing:
  description: The keys to be applied that the running kernel lacks (with O(missing=skip)).
  type: list
  elements: str
  returned: always
"""

PROC_SYS = "/proc/sys"


def normalise(value) -> str:
    """The kernel's form of a value, for comparison: words separated by one space."""
    if isinstance(value, bool):
        value = int(value)
    return " ".join(str(value).split())


def render(settings: dict, header: str) -> str:
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    lines += [f"{key}={normalise(value)}" for key, value in settings.items()]
    return "\n".join(lines) + "\n"


def proc_path(key: str) -> str:
    return os.path.join(PROC_SYS, *key.split("."))


def plan_live(settings: dict, pattern: str):
    """(to_set, not_applied, missing): keys whose live value differs, keys left alone, keys the
    kernel does not have."""
    to_set, not_applied, missing = [], [], []
    for key, value in settings.items():
        if not re.match(pattern, key):
            not_applied.append(key)
            continue
        path = proc_path(key)
        try:
            with open(path, encoding="ascii") as handle:
                live = handle.read()
        except FileNotFoundError:
            missing.append(key)
            continue
        if normalise(live) != normalise(value):
            to_set.append(key)
    return to_set, not_applied, missing


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "required": True},
            "settings": {"type": "dict", "required": True},
            "apply_pattern": {"type": "str", "default": ".*"},
            "missing": {"type": "str", "choices": ["fail", "skip"], "default": "fail"},
            "header": {"type": "str", "default": ""},
        },
        supports_check_mode=True,
    )
    params = module.params
    settings = params["settings"]
    bad = [key for key in settings if not re.fullmatch(r"[a-z0-9_]+(\.[A-Za-z0-9_-]+)+", key)]
    if bad:
        module.fail_json(msg=f"not sysctl keys: {', '.join(bad)}")
    try:
        re.compile(params["apply_pattern"])
    except re.error as err:
        module.fail_json(msg=f"apply_pattern is not a regular expression: {err}")
    to_set, not_applied, missing = plan_live(settings, params["apply_pattern"])
    if missing and params["missing"] == "fail":
        module.fail_json(
            msg=f"the running kernel has no {', '.join(missing)} (no {proc_path(missing[0])}); "
            "remove the setting or leave it out of apply_pattern"
        )
    content = render(settings, params["header"])
    path = params["path"]
    try:
        with open(path, encoding="utf-8") as handle:
            before = handle.read()
    except FileNotFoundError:
        before = ""
    written = before != content
    if not module.check_mode:
        if written:
            directory = os.path.dirname(path) or "."
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=".sysctl_file.")
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(content)
            os.chmod(tmp, 0o644)
            module.atomic_move(tmp, path)
        for key in to_set:
            try:
                with open(proc_path(key), "w", encoding="ascii") as handle:
                    handle.write(normalise(settings[key]))
            except OSError as err:
                module.fail_json(msg=f"could not set {key}: {err}", written=written)
    result = {
        "changed": written or bool(to_set),
        "written": written,
        "applied": to_set,
        "not_applied": not_applied,
        "missing": missing,
    }
    if module._diff:
        result["diff"] = {
            "before": before,
            "after": content,
            "before_header": path,
            "after_header": path,
        }
    module.exit_json(**result)


if __name__ == "__main__":
    main()
