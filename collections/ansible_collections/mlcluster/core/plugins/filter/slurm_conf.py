"""Filters that write Slurm configuration syntax (used by the slurm role's templates)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping

DOCUMENTATION = r"""
name: slurm_conf_lines
author: mlcluster developers
short_description: Turn a dict into Slurm C(Key=Value) items
description:
  - Returns one C(Key=Value) string per key of a dict, sorted by key, in the syntax of
    slurm.conf, cgroup.conf and slurmdbd.conf. Booleans are written C(YES)/C(NO), lists are
    joined with commas, and keys whose value is null or an empty string are left out (so a
    user may remove a default by setting it to null).
  - Values with spaces are quoted.
  - Keys must be letters, digits and C(_); a value may not hold a newline or another control
    character, a C(#) (Slurm reads the rest of the line as a comment) or a double quote other
    than one pair around the whole value (it would end the quoting and add keys to the line).
    Such input is an error naming the key, not a line of the file.
  - Companion filters used by the slurm role, C(mlcluster.core.slurm_hostlist) writes node names
    as a Slurm hostlist expression (C(compute[1-3,10])); C(mlcluster.core.slurm_node) turns one
    host's variables (facts and the role's probe) into its NodeName parameters;
    C(mlcluster.core.slurm_partition_list) turns partitions of inventory groups into
    PartitionName parameters; C(mlcluster.core.slurm_live_state) reads the role's probe of a
    node (files' checksums, the restart digest, slurmd's command line, the units) and names the
    files that differ from the wanted ones.
positional: _input
options:
  _input:
    description: The keys and values.
    type: dict
    required: true
"""

EXAMPLES = r"""
- name: Write cgroup.conf
  ansible.builtin.copy:
    content: "{{ settings | mlcluster.core.slurm_conf_lines | join('\n') }}\n"
    dest: /etc/slurm/cgroup.conf
    mode: "0644"
  vars:
    settings: {ConstrainCores: true, AllowedRAMSpace: 100}

- name: A partition's node list
  ansible.builtin.debug:
    msg: "Nodes={{ ['compute1', 'compute2', 'compute3'] | mlcluster.core.slurm_hostlist }}"
"""

RETURN = r"""
_value:
  description: C(Key=Value) strings sorted by key.
  type: list
  elements: str
"""

_NUMBERED = re.compile(r"^(.*?)(\d+)$")
_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
# Names Slurm reads as one word: partitions, nodes (hostnames).
_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def _unsafe(text: str) -> str | None:
    """Why a value would not stay one value on one line of a Slurm config file, or None."""
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        return "a newline or another control character"
    if "#" in text:
        return "a '#' (Slurm reads the rest of the line as a comment)"
    inner = text[1:-1] if len(text) > 1 and text[0] == text[-1] == '"' else text
    if '"' in inner:
        return "a double quote inside it (it would end the quoting)"
    return None


def _plain(value, key: str) -> str:
    if isinstance(value, bool):
        return "YES" if value else "NO"
    if isinstance(value, list | tuple):
        return ",".join(_plain(item, key) for item in value)
    text = str(value)
    why = _unsafe(text)
    if why:
        raise ValueError(f"Slurm setting {key}: the value {text!r} holds {why}")
    return text


def slurm_value(value, key: str = "?") -> str:
    """One Slurm value: a list joined with commas, quoted as a whole when it holds a space (a
    list item quoted on its own would leave the rest of the list outside the quotes)."""
    text = _plain(value, key)
    if any(c.isspace() for c in text) and not (text.startswith('"') and text.endswith('"')):
        return f'"{text}"'
    return text


def slurm_conf_lines(settings) -> list[str]:
    if not isinstance(settings, Mapping):
        raise TypeError(f"slurm_conf_lines expects a dict, not {type(settings).__name__}")
    lines = []
    for key in sorted(settings, key=str):
        value = settings[key]
        if not isinstance(key, str) or not _KEY.fullmatch(key):
            raise ValueError(f"Slurm setting {key!r}: a key is letters, digits and '_' only")
        if value is None or (isinstance(value, str) and value == ""):
            continue
        lines.append(f"{key}={slurm_value(value, key)}")
    return lines


def _check_name(kind: str, name) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"{kind} {name!r}: a name is letters, digits, '_', '.' and '-' only")
    return name


def _ranges(numbers: list[str]) -> str:
    """``['1', '2', '3', '10']`` -> ``'1-3,10'``, keeping zero-padded widths apart."""
    parts: list[str] = []
    ordered = sorted(set(numbers), key=lambda n: (len(n), int(n)))
    start = previous = ordered[0]
    for number in [*ordered[1:], None]:
        if number is not None and len(number) == len(previous) and int(number) == int(previous) + 1:
            previous = number
            continue
        parts.append(start if start == previous else f"{start}-{previous}")
        if number is not None:
            start = previous = number
    return ",".join(parts)


def slurm_hostlist(names) -> str:
    """Compress node names into a Slurm hostlist expression (order of first appearance)."""
    groups: dict[str, list[str]] = {}
    plain: list[str] = []
    order: list[tuple[str, str]] = []
    for name in names:
        match = _NUMBERED.match(str(name))
        if not match:
            if name not in plain:
                plain.append(str(name))
                order.append(("plain", str(name)))
            continue
        prefix, number = match.groups()
        if prefix not in groups:
            groups[prefix] = []
            order.append(("prefix", prefix))
        groups[prefix].append(number)
    items = []
    for kind, key in order:
        if kind == "plain":
            items.append(key)
            continue
        numbers = groups[key]
        ranges = _ranges(numbers)
        items.append(f"{key}{ranges}" if len(set(numbers)) == 1 else f"{key}[{ranges}]")
    return ",".join(items)


def slurm_node(host_vars, reserve_percent: int = 5) -> dict:
    """NodeName parameters of one compute node from its facts and the slurm role's probe.

    The topology (Sockets, CoresPerSocket, ThreadsPerCore) is written only when it multiplies
    to the CPU count; some virtual machines report a topology that does not, and Slurm would
    then refuse the node.
    """
    facts = host_vars["ansible_facts"]
    vcpus = int(facts.get("processor_vcpus") or 0)
    sockets = int(facts.get("processor_count") or 0)
    cores = int(facts.get("processor_cores") or 0)
    threads = int(facts.get("processor_threads_per_core") or 0)
    if not vcpus:
        vcpus = sockets * cores * threads
    if not 0 <= int(reserve_percent) < 100:
        raise ValueError(f"reserve_percent must be 0-99, not {reserve_percent}")
    address = (
        (facts.get("default_ipv4") or {}).get("address")
        or host_vars.get("ansible_host")
        or facts["hostname"]
    )
    params = {
        "NodeAddr": address,
        "CPUs": vcpus,
        "RealMemory": int(facts["memtotal_mb"]) * (100 - int(reserve_percent)) // 100,
    }
    if sockets and sockets * cores * threads == vcpus:
        params.update(Sockets=sockets, CoresPerSocket=cores, ThreadsPerCore=threads)
    gres = ((host_vars.get("__slurm_node_probe") or {}).get("gpu") or {}).get("gres")
    if gres:
        params["Gres"] = gres
    params.update(host_vars.get("slurm_node_config") or {})
    name = _check_name("node", facts["hostname"])
    return {"host": host_vars["inventory_hostname"], "name": name, "params": params}


def slurm_partition_list(partitions, nodes, groups, default_partition, defaults) -> list[dict]:
    """PartitionName parameters: one partition of every node, then one per inventory group."""
    name_of = {node["host"]: node["name"] for node in nodes}
    explicit_default = any(p.get("default") for p in partitions)
    result = []
    if default_partition:
        result.append(
            {
                "name": _check_name("partition", default_partition),
                "params": {
                    **defaults,
                    "Nodes": slurm_hostlist([node["name"] for node in nodes]),
                    "Default": not explicit_default,
                },
            }
        )
    for partition in partitions:
        hosts = groups.get(partition["group"]) or []
        unknown = [h for h in hosts if h not in name_of]
        if not hosts or unknown:
            raise ValueError(
                f"partition {partition['name']}: group {partition['group']} "
                + (
                    f"holds hosts that are not compute nodes: {', '.join(unknown)}"
                    if hosts
                    else "has no hosts"
                )
            )
        result.append(
            {
                "name": _check_name("partition", partition["name"]),
                "params": {
                    **defaults,
                    **(partition.get("config") or {}),
                    "Nodes": slurm_hostlist([name_of[h] for h in hosts]),
                    "Default": bool(partition.get("default")),
                },
            }
        )
    return result


def slurm_live_state(lines, wanted: Mapping | None = None) -> dict:
    """The slurm role's probe of a node ("Read the live Slurm state"), one record a line, read
    into what the configure phase decides on:

    - ``file NAME OWNER:GROUP:MODE SHA256`` -> ``files[NAME] = "OWNER:GROUP:MODE:SHA256"``;
    - ``digest D`` (the configuration the daemon last (re)started with), ``slurmd ARGS``
      (slurmd's command line, empty when it does not run);
    - ``unit NAME.service ENABLED ACTIVE`` -> ``units``: the installed Slurm units, and
      ``units_on``: those enabled or active (what "stop the daemons this node does not run"
      would have to change);

    and, given the wanted files (name -> text, written root:root 0644), ``changed``: the names
    whose content, owner or mode differ on the node, in the order given."""
    live: dict = {"files": {}, "digest": "", "slurmd": "", "units": [], "units_on": []}
    for line in lines or []:
        kind, _, rest = str(line).partition(" ")
        rest = rest.strip()
        if kind == "file":
            name, *attributes = rest.split(" ")
            live["files"][name] = ":".join(attributes)
        elif kind in ("digest", "slurmd"):
            live[kind] = rest
        elif kind == "unit" and rest:
            name, *states = rest.split(" ")
            name = name.removesuffix(".service")
            live["units"].append(name)
            if {"enabled", "active"} & set(states):
                live["units_on"].append(name)
    live["changed"] = [
        name
        for name, text in (wanted or {}).items()
        if live["files"].get(name, "")
        != "root:root:644:" + hashlib.sha256(str(text).encode()).hexdigest()
    ]
    return live


class FilterModule:
    def filters(self):
        return {
            "slurm_conf_lines": slurm_conf_lines,
            "slurm_live_state": slurm_live_state,
            "slurm_hostlist": slurm_hostlist,
            "slurm_node": slurm_node,
            "slurm_partition_list": slurm_partition_list,
        }
