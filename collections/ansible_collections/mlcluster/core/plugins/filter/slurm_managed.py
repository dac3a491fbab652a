"""Filters for the slurm role's managed mode: read a platform's slurm.conf, decide what to add."""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping

DOCUMENTATION = r"""
name: slurm_conf_parse
author: mlcluster developers
short_description: Read the settings, includes and node lines of a slurm.conf text
description:
  - Returns C(settings) (the global C(Key=Value) settings, keys as written, the last of a
    repeated key winning as in Slurm), C(includes) (the files of C(include) lines, as written)
    and C(nodes) (the parameters of each C(NodeName) line). Comments and blank lines are
    skipped; lines that define partitions, node sets, down nodes or front ends are not
    settings and are left out.
  - Used by the slurm role in managed mode (HyperPod, ParallelCluster), where the platform
    writes slurm.conf and mlcluster only adds settings the platform's file does not set. The
    companion filter C(mlcluster.core.slurm_conf_additions) makes that choice.
positional: _input
options:
  _input:
    description: The text of a slurm.conf.
    type: str
    required: true
"""

EXAMPLES = r"""
- name: What the platform's slurm.conf sets
  ansible.builtin.debug:
    msg: "{{ (_slurm_conf.content | b64decode | mlcluster.core.slurm_conf_parse).settings }}"

- name: Settings mlcluster adds without overriding the platform's
  ansible.builtin.debug:
    msg: "{{ wanted | mlcluster.core.slurm_conf_additions(platform.settings) }}"
  vars:
    wanted: {Prolog: /etc/slurm/prolog.d/*}
"""

RETURN = r"""
_value:
  description: C(settings) (dict), C(includes) (list of str), C(nodes) (list of dicts).
  type: dict
"""

# Lines that define objects (several Key=Value pairs each), not global settings.
_DEFINITIONS = {"nodename", "partitionname", "nodeset", "downnodes", "frontendname", "switchname"}
_INCLUDE = re.compile(r"^include\s+(?P<path>\S.*)$", re.IGNORECASE)


def _strip_comment(line: str) -> str:
    # Slurm treats '#' as the start of a comment unless it is escaped as '\#'.
    out, escaped = [], False
    for char in line:
        if char == "#" and not escaped:
            break
        escaped = char == "\\" and not escaped
        out.append(char)
    return "".join(out).replace("\\#", "#").strip()


def _pairs(line: str) -> dict:
    try:
        words = shlex.split(line)
    except ValueError:
        words = line.split()
    pairs = {}
    for word in words:
        key, sep, value = word.partition("=")
        if sep:
            pairs[key] = value
    return pairs


def slurm_conf_parse(text) -> dict:
    if not isinstance(text, str):
        raise TypeError(
            f"slurm_conf_parse expects the text of a slurm.conf, not {type(text).__name__}"
        )
    settings: dict = {}
    includes: list = []
    nodes: list = []
    for raw in text.splitlines():
        line = _strip_comment(raw)
        if not line:
            continue
        include = _INCLUDE.match(line)
        if include:
            includes.append(include["path"].strip())
            continue
        key, sep, value = line.partition("=")
        if not sep:
            continue
        key = key.strip()
        if key.lower() in _DEFINITIONS:
            if key.lower() == "nodename":
                nodes.append(_pairs(line))
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        # Slurm's keys are case-insensitive: a later spelling replaces an earlier one.
        for known in [k for k in settings if k.lower() == key.lower()]:
            del settings[known]
        settings[key] = value
    return {"settings": settings, "includes": includes, "nodes": nodes}


def slurm_conf_additions(wanted, platform_settings) -> dict:
    """Split ``wanted`` settings into those to add and those the platform's file already sets.

    Returns ``{"add": {key: value}, "left": [key, ...]}``; keys compare case-insensitively,
    as Slurm reads them, and wanted keys whose value is null or empty are dropped.
    """
    if not isinstance(wanted, Mapping) or not isinstance(platform_settings, Mapping):
        raise TypeError("slurm_conf_additions expects two dicts")
    taken = {str(k).lower() for k in platform_settings}
    add, left = {}, []
    for key, value in wanted.items():
        if value is None or (isinstance(value, str) and value == ""):
            continue
        if str(key).lower() in taken:
            left.append(key)
        else:
            add[key] = value
    return {"add": add, "left": sorted(left, key=str)}


class FilterModule:
    def filters(self):
        return {
            "slurm_conf_parse": slurm_conf_parse,
            "slurm_conf_additions": slurm_conf_additions,
        }
