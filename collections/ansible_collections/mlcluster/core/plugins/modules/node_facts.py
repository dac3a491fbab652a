#!/usr/bin/python
"""Gather what a node holds (container, accelerator devices, image manifest) as facts."""

from __future__ import annotations

DOCUMENTATION = r"""
module: node_facts
author: mlcluster developers
short_description: The node facts every accelerator role decides from
description:
  - Reads, without changing anything, what the node holds and returns it as the fact
    C(mlcluster_node). Every accelerator role and the configure layer
    (C(playbooks/accelerators.yml)) decide from these facts only; the image manifest module uses
    the same code.
  - Whether the node is a container, with one definition (what C(systemd-detect-virt
    --container) reads, in its order), that is the manager systemd records
    (C(/run/systemd/container), C(/run/host/container-manager)), PID 1's C(container=)
    variable, then C(/run/.containerenv) (podman) and C(/.dockerenv) (docker).
  - PCI devices by vendor, device and class under O(sysfs_root) C(/bus/pci/devices), NVIDIA GPUs
    (vendor 0x10de, class 0x03xxxx), NVSwitches (0x10de, class 0x0680xx), EFA adapters
    (0x1d0f, devices 0xefa0-0xefa3) and Neuron devices (0x1d0f, Inferentia 0x7064-0x7067,
    Trainium 0x7164, Inferentia2 0x7264, Trainium2 0x7364, Trainium3 0x7564/0x7565).
  - NVMe drives under O(sysfs_root) C(/block) (local instance store or EBS) and their mount points,
    the versions of loaded drivers (C(/sys/module/<name>/version)), the baked image manifest at
    O(manifest_path) (flavour, components present) and whether libfabric's efa provider answers
    C(fi_info -p efa).
options:
  sysfs_root:
    description:
      - Root of the sysfs tree to read devices, drives and driver versions from. Point it at a
        stub tree to exercise the decisions on a machine without the devices.
    type: path
    default: /sys
  manifest_path:
    description: The image manifest the bake wrote (C(mlcluster.core.image_manifest)).
    type: path
    default: /etc/mlcluster/manifest.json
  installed_dir:
    description:
      - Where each role's install phase records the digest of its inputs when it has run
        (C(mlcluster.core.install_digest)); read back as RV(ansible_facts.mlcluster_node.installed).
    type: path
    default: /etc/mlcluster/installed
  efa_probe:
    description: Run C(fi_info -p efa) (C(/opt/amazon/efa/bin) first, then PATH).
    type: bool
    default: true
attributes:
  check_mode:
    support: full
  facts:
    support: full
"""

EXAMPLES = r"""
- name: Read what the node holds
  mlcluster.core.node_facts:

- name: Say how many GPUs the node has
  ansible.builtin.debug:
    msg: "{{ ansible_facts['mlcluster_node']['counts']['nvidia_gpus'] }} GPU(s)"

- name: Decide from a stub device tree (tests)
  mlcluster.core.node_facts:
    sysfs_root: /tmp/stub/sys
    manifest_path: /tmp/stub/manifest.json
    efa_probe: false
"""

RETURN = r"""
ansible_facts:
  description: The facts.
  returned: always
  type: dict
  contains:
    mlcluster_node:
      description: What the node holds.
      type: dict
      contains:
        in_container:
          description: Whether the node is a container (its kernel belongs to the host).
          type: bool
        container_manager:
          description: The container manager (podman, docker, ...), null outside a container.
          type: str
        pci:
          description:
            - Accelerator devices by kind (nvidia_gpus, nvswitches, efa, neuron), each a list of
              C({address, device, driver}) (Neuron devices also C(kind)).
          type: dict
        counts:
          description: nvidia_gpus, nvswitches, efa_devices, neuron_devices.
          type: dict
        nvme:
          description: NVMe drives, C({name, model, size_bytes, local, mountpoints}).
          type: list
        local_nvme_mounts:
          description: Mount points of local (instance store) NVMe drives.
          type: list
        drivers:
          description: Loaded driver versions (nvidia, efa, neuron, gdrdrv, lustre), null if not.
          type: dict
        manifest:
          description:
            - The image manifest, C({present, path, flavor, components, versions, reason}).
          type: dict
        efa_provider:
          description: C({present, fi_info, reason}) of C(fi_info -p efa).
          type: dict
        installed:
          description:
            - Role name to the digest its install phase recorded in O(installed_dir) (empty
              where no install phase has recorded one).
          type: dict
"""

import os  # noqa: E402
import shutil  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.mlcluster.core.plugins.module_utils.node import (  # noqa: E402
    efa_provider_result,
    node_facts,
)
from ansible_collections.mlcluster.core.plugins.module_utils.parsers import (  # noqa: E402
    fi_info_candidates,
)


def find_fi_info() -> str | None:
    return next(iter(fi_info_candidates(shutil.which)), None)


def probe_efa_provider(module: AnsibleModule) -> dict:
    fi_info = find_fi_info()
    if fi_info is None:
        return efa_provider_result(None, 1, "", "")
    rc, out, err = module.run_command([fi_info, "-p", "efa"])
    return efa_provider_result(fi_info, rc, out, err)


def read_installed(directory: str) -> dict:
    """Role name -> the digest its install phase recorded (one file a role)."""
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return {}
    installed = {}
    for name in names:
        path = os.path.join(directory, name)
        if name.startswith(".") or not os.path.isfile(path):
            continue
        with open(path, encoding="ascii", errors="replace") as handle:
            installed[name] = handle.read().strip()
    return installed


def main():
    module = AnsibleModule(
        argument_spec={
            "sysfs_root": {"type": "path", "default": "/sys"},
            "manifest_path": {"type": "path", "default": "/etc/mlcluster/manifest.json"},
            "efa_probe": {"type": "bool", "default": True},
            "installed_dir": {"type": "path", "default": "/etc/mlcluster/installed"},
        },
        supports_check_mode=True,
    )
    params = module.params
    facts = node_facts(
        sysfs_root=params["sysfs_root"],
        manifest_path=params["manifest_path"],
        efa_probe=probe_efa_provider(module) if params["efa_probe"] else None,
    )
    facts["installed"] = read_installed(params["installed_dir"])
    module.exit_json(changed=False, ansible_facts={"mlcluster_node": facts})


if __name__ == "__main__":
    main()
