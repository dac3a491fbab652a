"""Which accelerator role's configure phase runs on a node, decided from its node facts."""

from __future__ import annotations

from ansible_collections.mlcluster.core.plugins.module_utils.node import accelerator_plan

DOCUMENTATION = r"""
name: accelerator_plan
author: mlcluster developers
short_description: Decide which accelerator roles configure a node, and why the others do not
description:
  - From the C(mlcluster_node) facts of C(mlcluster.core.node_facts) only (the image manifest's
    components and the devices on the PCI bus), one entry per role of the configure layer
    (tuning, nvidia_driver, cuda_toolkit, nccl, efa, aws_ofi_nccl, gdrcopy, dcgm, neuron,
    container_runtime, enroot_pyxis, lustre_client) plus C(fabricmanager), in the order the
    roles run.
  - A role applies when the image holds its component and the node has the device it needs
    (NVIDIA GPU for the NVIDIA stack, EFA for efa and aws_ofi_nccl, Neuron for neuron);
    lustre_client also needs mounts in the inventory and a node that is not a container.
positional: _input
options:
  _input:
    description: C(ansible_facts['mlcluster_node']).
    type: dict
    required: true
  lustre_mounts:
    description: The inventory's C(lustre_client_mounts).
    type: list
    default: []
  fabricmanager:
    description: C(nvidia_driver_fabricmanager) (auto, always, never).
    type: str
    default: auto
"""

EXAMPLES = r"""
- name: Run the configure phase of each role that applies
  ansible.builtin.include_role:
    name: "{{ item.role }}"
    tasks_from: configure
  loop: "{{ __plan | selectattr('configure') }}"
  vars:
    __plan: "{{ ansible_facts['mlcluster_node'] | mlcluster.core.accelerator_plan }}"
"""

RETURN = r"""
_value:
  description:
    - "C({name, role, configure, status}) per entry; status is C(configured) or
      C(not applicable: <reason>); role is null for fabricmanager (nvidia_driver starts it)."
  type: list
  elements: dict
"""


class FilterModule:
    def filters(self):
        return {"accelerator_plan": accelerator_plan}
