"""Filters used by the preflight play."""

from __future__ import annotations

import difflib

DOCUMENTATION = r"""
name: unknown_role_vars
author: mlcluster developers
short_description: Explain which role variables are not declared by any argument spec
description:
  - Given the variable names that are set for a host and the output of the
    C(mlcluster.core.role_specs) lookup, returns one message per variable whose name starts
    with a role prefix (C(<role>_)) but is not an option of that role, with the closest
    declared names as a suggestion.
positional: _input, specs
options:
  _input:
    description: Variable names set for the host.
    type: list
    elements: str
    required: true
  specs:
    description: Output of the C(mlcluster.core.role_specs) lookup.
    type: list
    elements: dict
    required: true
"""

EXAMPLES = r"""
- name: Reject misspelled role variables
  ansible.builtin.assert:
    that: __unknown | length == 0
    fail_msg: "{{ __unknown | join('; ') }}"
  vars:
    __unknown: "{{ query('varnames', '.*') | mlcluster.core.unknown_role_vars(__specs) }}"
"""

RETURN = r"""
_value:
  description: One message per unknown variable; empty when all are declared.
  type: list
  elements: str
"""


def unknown_role_vars(names, specs):
    by_prefix = {spec["role"] + "_": spec for spec in specs}
    # Longest prefix first so nvidia_driver_x is judged by nvidia_driver, not by a role "nvidia".
    prefixes = sorted(by_prefix, key=len, reverse=True)
    messages = []
    for name in sorted(set(names)):
        prefix = next((p for p in prefixes if name.startswith(p)), None)
        if prefix is None:
            continue
        known = by_prefix[prefix]["names"]
        if name in known:
            continue
        close = difflib.get_close_matches(name, known, n=2, cutoff=0.6)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        messages.append(f"{name} is not a variable of role {by_prefix[prefix]['role']}{hint}")
    return messages


class FilterModule:
    def filters(self):
        return {"unknown_role_vars": unknown_role_vars}
