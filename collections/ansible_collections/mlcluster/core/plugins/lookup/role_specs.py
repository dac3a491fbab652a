"""Lookup plugin returning the argument specs of the project's roles."""

from __future__ import annotations

DOCUMENTATION = r"""
name: role_specs
author: mlcluster developers
short_description: Read the argument specs of every role in a roles directory
description:
  - Returns one item per role that has C(meta/argument_specs.yml), with the role name (which is
    also the prefix of its variables), the union of the options of all its entry points, and
    the names of those options.
  - Used by the preflight play to reject misspelled or removed C(<role>_*) variables and to
    type-check the ones that are set, before any host is changed.
options:
  _terms:
    description: Roles directories to scan. Defaults to C(roles) next to the playbook directory.
    required: false
    type: list
    elements: path
"""

EXAMPLES = r"""
- name: Show the roles that declare variables
  ansible.builtin.debug:
    msg: "{{ query('mlcluster.core.role_specs') | map(attribute='role') }}"
"""

RETURN = r"""
_list:
  description: One dict per role.
  type: list
  elements: dict
  contains:
    role:
      description: Role name and variable prefix.
      type: str
    options:
      description: Options of all entry points merged (later entry points win on conflicts).
      type: dict
    names:
      description: Sorted option names.
      type: list
"""

from pathlib import Path  # noqa: E402

import yaml  # noqa: E402
from ansible.errors import AnsibleLookupError  # noqa: E402
from ansible.plugins.lookup import LookupBase  # noqa: E402


def read_role_specs(roles_dir: Path) -> list[dict]:
    """Return the merged argument-spec options of every role under ``roles_dir``."""
    specs = []
    for spec_file in sorted(roles_dir.glob("*/meta/argument_specs.yml")):
        role = spec_file.parent.parent.name
        try:
            data = yaml.safe_load(spec_file.read_text()) or {}
        except yaml.YAMLError as exc:
            raise AnsibleLookupError(f"{spec_file}: invalid YAML: {exc}") from exc
        options: dict = {}
        for entry in (data.get("argument_specs") or {}).values():
            options.update((entry or {}).get("options") or {})
        specs.append({"role": role, "options": options, "names": sorted(options)})
    return specs


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        if not terms:
            playbook_dir = (variables or {}).get("playbook_dir", ".")
            terms = [str(Path(playbook_dir).parent / "roles")]
        result = []
        for term in terms:
            roles_dir = Path(term)
            if not roles_dir.is_dir():
                raise AnsibleLookupError(f"roles directory {term} does not exist")
            result.extend(read_role_specs(roles_dir))
        return result
