#!/usr/bin/python
"""Read back which accelerator components a node really has and write the image manifest."""

from __future__ import annotations

DOCUMENTATION = r"""
module: image_manifest
author: mlcluster developers
short_description: Read back the accelerator software a node really has and record it
description:
  - For each requested component (NVIDIA driver, CUDA toolkit, NCCL, EFA, aws-ofi-nccl,
    GDRCopy, DCGM, container runtime, enroot/pyxis, Lustre client, Neuron, tuning, the EKS node's
    containerd and kubelet) reads back
    from the system what is installed, from the package database (dpkg or rpm), library files and
    their embedded version strings, C(nvcc --version), C(fi_info), the DKMS state and
    configuration files. Nothing is copied from versions.yml.
  - Compares the result with what the bake intended, as recorded by the roles in O(claims_dir)
    (source, expected version, pinned packages) or given in O(expected).
  - Writes the result as JSON to O(dest) (only when it changed) and returns the components that
    are missing and the versions that differ, so that the bake can fail with one message.
  - Also reports the accelerator hardware it sees (GPUs, NVSwitches, EFA and Neuron devices) and
    whether it runs in a container, so the manifest says what the bake could and could not run.
options:
  components:
    description: Components to read back.
    type: list
    elements: str
    required: true
    choices:
      - nvidia_driver
      - cuda_toolkit
      - nccl
      - efa
      - aws_ofi_nccl
      - gdrcopy
      - dcgm
      - container_runtime
      - enroot_pyxis
      - lustre_client
      - neuron
      - tuning
      - eks_node
  required:
    description: Components that must be present; defaults to all of O(components).
    type: list
    elements: str
  claims_dir:
    description:
      - Directory of the JSON records the roles write at install time (C(<component>.json)).
    type: path
    default: /etc/mlcluster/components
  expected:
    description: Expected version per component; overrides the version of the role's record.
    type: dict
    default: {}
  search_paths:
    description:
      - "Extra directories to look in, per component (for example C({nccl: [/opt/nccl/lib]}))."
    type: dict
    default: {}
  extra:
    description: Extra top-level keys for the manifest (image flavour, build id, ...).
    type: dict
    default: {}
  dest:
    description: Where to write the manifest; empty to only return it.
    type: str
    default: /etc/mlcluster/manifest.json
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
"""

EXAMPLES = r"""
- name: Record what the image contains and fail if the flavour lacks something
  mlcluster.core.image_manifest:
    components: [nvidia_driver, cuda_toolkit, nccl, efa]
    extra:
      flavor: gpu
  register: _manifest

- name: Fail the bake on a missing component or a version drift
  ansible.builtin.assert:
    that: _manifest.missing == [] and _manifest.mismatches == []
    fail_msg: "{{ (_manifest.missing + _manifest.mismatches) | join('; ') }}"

- name: Only read back NCCL, looking in a wheel prefix too
  mlcluster.core.image_manifest:
    components: [nccl]
    search_paths:
      nccl: [/opt/nccl/lib]
    expected:
      nccl: 2.29.3
    dest: ""
"""

RETURN = r"""
manifest:
  description: What was read back (also the content of O(dest)).
  returned: always
  type: dict
  contains:
    host:
      description: Distribution, kernel, architecture and whether the node is a container.
      type: dict
    hardware:
      description:
        - Accelerator devices seen (GPUs, NVSwitches and EFA on the PCI bus, Neuron device nodes).
      type: dict
    components:
      description:
        - One entry per component with C(present), C(version) and component-specific details.
      type: dict
missing:
  description: One message per required component that is not installed.
  returned: always
  type: list
  elements: str
mismatches:
  description:
    - One message per component or package whose installed version differs from the expected one.
  returned: always
  type: list
  elements: str
"""

import fnmatch  # noqa: E402
import glob  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.mlcluster.core.plugins.module_utils.node import (  # noqa: E402
    in_container,
    probe_hardware,
)
from ansible_collections.mlcluster.core.plugins.module_utils.parsers import (  # noqa: E402
    CUDA_NVCC,
    CUDA_VERSION_FILE,
    DPKG_QUERY_FORMAT,
    EFA_INSTALLED_PACKAGES,
    NCCL_LIBRARY,
    NCCL_LIBRARY_DIRS,
    NCCL_VERSION,
    OFI_NCCL_LIBRARIES,
    OFI_NCCL_LIBRARY_DIRS,
    OFI_NCCL_VERSION,
    PROC_DRIVER_VERSION,
    RPM_QUERY_FORMAT,
    compare_claim,
    cuda_homes,
    cuda_toolkit_version,
    fi_info_candidates,
    ldconfig_candidates,
    library_candidates,
    library_search_dirs,
    nouveau_blacklisted,
    package_version_ok,  # noqa: F401  # re-exported: tests and callers read the parsers here
    parse_cuda_version_json,  # noqa: F401  # re-exported: tests and callers read the parsers here
    parse_dkms_status,
    parse_dpkg_query,
    parse_efa_installed_packages,
    parse_fi_info_providers,
    parse_fi_info_version,
    parse_first_version,
    parse_key_values,
    parse_ldconfig,
    parse_nccl_binary,  # noqa: F401  # re-exported: tests and callers read the parsers here
    parse_nccl_header,  # noqa: F401  # re-exported: tests and callers read the parsers here
    parse_nvcc_version,
    parse_proc_driver_version,
    parse_rpm_qa,
    search_binary,
    split_package_spec,  # noqa: F401  # re-exported: tests and callers read the parsers here
    strip_epoch,
    version_from_soname,
    versions_match,  # noqa: F401  # re-exported: tests and callers read the parsers here
)

COMPONENTS = [
    "nvidia_driver",
    "cuda_toolkit",
    "nccl",
    "efa",
    "aws_ofi_nccl",
    "gdrcopy",
    "dcgm",
    "container_runtime",
    "enroot_pyxis",
    "lustre_client",
    "neuron",
    "tuning",
    "eks_node",
]

MODPROBE_DIRS = ["/etc/modprobe.d", "/lib/modprobe.d", "/usr/lib/modprobe.d", "/run/modprobe.d"]

# ---------------------------------------------------------------------------------------------
# Probes: read the system.
# ---------------------------------------------------------------------------------------------


class Node:
    """Access to the system, with caching; the probes use only this."""

    def __init__(self, module: AnsibleModule, search_paths: dict):
        self.module = module
        self.search_paths = {k: list(v or []) for k, v in (search_paths or {}).items()}
        self._packages: dict[str, str] | None = None
        self._ldconfig: dict[str, str] | None = None

    def run(self, argv: list[str]) -> str | None:
        exe = argv[0] if os.path.isabs(argv[0]) else shutil.which(argv[0])
        if not exe or not os.access(exe, os.X_OK):
            return None
        rc, out, err = self.module.run_command([exe, *argv[1:]])
        return out + err if rc == 0 else None

    @staticmethod
    def read(path: str) -> str | None:
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                return handle.read()
        except OSError:
            return None

    def packages(self) -> dict[str, str]:
        if self._packages is None:
            out = self.run(["dpkg-query", "-W", "-f", DPKG_QUERY_FORMAT])
            if out is not None:
                self._packages = parse_dpkg_query(out)
            else:
                out = self.run(["rpm", "-qa", "--qf", RPM_QUERY_FORMAT])
                self._packages = parse_rpm_qa(out or "")
        return self._packages

    def packages_matching(self, *patterns: str) -> dict[str, str]:
        return {
            name: version
            for name, version in sorted(self.packages().items())
            if any(fnmatch.fnmatch(name, pattern) for pattern in patterns)
        }

    def ldconfig(self) -> dict[str, str]:
        if self._ldconfig is None:
            outputs = (self.run([command, "-p"]) for command in ldconfig_candidates(shutil.which))
            self._ldconfig = parse_ldconfig(next((out for out in outputs if out), ""))
        return self._ldconfig

    def find_library(
        self, component: str, names: list[str], extra_dirs: tuple[str, ...] = ()
    ) -> str | None:
        dirs = [*self.search_paths.get(component, []), *library_search_dirs(*extra_dirs)]
        return next(
            (
                path
                for path in library_candidates(names, dirs, self.ldconfig)
                if os.path.exists(path)
            ),
            None,
        )

    def find_executable(
        self,
        component: str,
        name: str,
        extra_dirs: tuple[str, ...] = (),
        fallback: list[str] | None = None,
    ) -> str | None:
        """``name`` in the component's search paths, then in ``extra_dirs``, then the first of
        ``fallback`` (default: ``name`` on PATH)."""
        for directory in [*self.search_paths.get(component, []), *extra_dirs]:
            path = os.path.join(directory, name)
            if os.access(path, os.X_OK):
                return path
        if fallback is None:
            return shutil.which(name)
        return next(iter(fallback), None)


def kernels_with_module(pattern: str) -> list[str]:
    found = set()
    for path in glob.glob(f"/lib/modules/*/**/{pattern}", recursive=True):
        found.add(path.split("/")[3])
    return sorted(found)


def probe_nvidia_driver(node: Node) -> dict:
    lib = node.find_library("nvidia_driver", ["libnvidia-ml.so.1"])
    real = os.path.realpath(lib) if lib else None
    version = version_from_soname(real, "libnvidia-ml.so") if real else None
    loaded = parse_proc_driver_version(node.read(PROC_DRIVER_VERSION) or "")
    dkms = [
        e for e in parse_dkms_status(node.run(["dkms", "status"]) or "") if "nvidia" in e["module"]
    ]
    modprobe_texts = [
        node.read(path) or "" for d in MODPROBE_DIRS for path in sorted(glob.glob(f"{d}/*.conf"))
    ]
    fabricmanager = node.find_executable("nvidia_driver", "nv-fabricmanager")
    return {
        "present": lib is not None,
        "version": loaded or version,
        "library": real,
        "loaded_version": loaded,
        "packages": node.packages_matching(
            "nvidia-*",
            "libnvidia-*",
            "libcuda*",
            "kmod-nvidia*",
            "cuda-drivers*",
            "firmware-nvidia*",
        ),
        "dkms": dkms,
        "kernels_with_module": kernels_with_module("nvidia.ko*"),
        "nouveau_blacklisted": nouveau_blacklisted(modprobe_texts),
        "persistenced": node.find_executable("nvidia_driver", "nvidia-persistenced") is not None,
        "fabricmanager": fabricmanager is not None,
        "fabricmanager_version": parse_first_version(
            node.run([fabricmanager, "--version"]) or "", r"version is\s*:\s*(\S+)"
        )
        if fabricmanager
        else None,
    }


def probe_cuda_toolkit(node: Node) -> dict:
    for home in cuda_homes(glob.glob, *node.search_paths.get("cuda_toolkit", [])):
        nvcc_output = node.run([os.path.join(home, CUDA_NVCC), "--version"])
        found = cuda_toolkit_version(node.read(os.path.join(home, CUDA_VERSION_FILE)), nvcc_output)
        if found:
            return {
                "present": True,
                "version": found[0],
                "cuda_home": os.path.realpath(home),
                "nvcc_version": parse_nvcc_version(nvcc_output or ""),
            }
    nvcc = shutil.which("nvcc")
    found = cuda_toolkit_version(None, node.run([nvcc, "--version"])) if nvcc else None
    if found:
        return {
            "present": True,
            "version": found[0],
            "cuda_home": os.path.dirname(os.path.dirname(nvcc)),
            "nvcc_version": found[0],
        }
    return {"present": False, "version": None}


def probe_nccl(node: Node) -> dict:
    lib = node.find_library("nccl", [NCCL_LIBRARY], NCCL_LIBRARY_DIRS)
    if not lib:
        return {"present": False, "version": None}
    real = os.path.realpath(lib)
    version, cuda = search_binary(real, NCCL_VERSION) or (None, None)
    tests = node.find_executable("nccl", "all_reduce_perf", ("/opt/nccl-tests/bin",))
    return {
        "present": True,
        "version": version,
        "cuda": cuda,
        "library": real,
        "packages": node.packages_matching("libnccl*"),
        "nccl_tests": tests,
    }


def probe_efa(node: Node) -> dict:
    installer = parse_efa_installed_packages(node.read(EFA_INSTALLED_PACKAGES) or "")
    fi_info = node.find_executable("efa", "fi_info", fallback=fi_info_candidates(shutil.which))
    libfabric = parse_fi_info_version(node.run([fi_info, "--version"]) or "") if fi_info else None
    providers = parse_fi_info_providers(node.run([fi_info, "-l"]) or "") if fi_info else []
    return {
        "present": fi_info is not None,
        "version": installer or libfabric,
        "installer_version": installer,
        "libfabric_version": libfabric,
        "fi_info": fi_info,
        "providers": providers,
        "efa_provider": "efa" in providers,
        "kernels_with_module": kernels_with_module("efa.ko*"),
    }


def probe_aws_ofi_nccl(node: Node) -> dict:
    lib = node.find_library("aws_ofi_nccl", list(OFI_NCCL_LIBRARIES), OFI_NCCL_LIBRARY_DIRS)
    packages = node.packages_matching("libnccl-ofi*", "aws-ofi-nccl*")
    version = strip_epoch(next(iter(packages.values()), None))
    if version is None and lib:
        found = search_binary(os.path.realpath(lib), OFI_NCCL_VERSION)
        version = found[0] if found else None
    return {"present": lib is not None, "version": version, "library": lib, "packages": packages}


def probe_gdrcopy(node: Node) -> dict:
    lib = node.find_library(
        "gdrcopy", ["libgdrapi.so.2"], ("/opt/gdrcopy/lib", "/opt/gdrcopy/lib64")
    )
    real = os.path.realpath(lib) if lib else None
    return {
        "present": lib is not None,
        "version": version_from_soname(real, "libgdrapi.so") if real else None,
        "library": real,
        "kernels_with_module": kernels_with_module("gdrdrv.ko*"),
    }


def probe_dcgm(node: Node) -> dict:
    packages = node.packages_matching("datacenter-gpu-manager*")
    core = next(
        (v for k, v in packages.items() if k.endswith("-core") or k == "datacenter-gpu-manager"),
        None,
    )
    core = core or next(iter(packages.values()), None)
    return {
        "present": node.find_executable("dcgm", "dcgmi") is not None,
        "version": strip_epoch(core),
        "packages": packages,
    }


def probe_container_runtime(node: Node) -> dict:
    docker = node.find_executable("container_runtime", "docker")
    ctk = node.find_executable("container_runtime", "nvidia-ctk")
    # Docker, or on an EKS worker image only the NVIDIA Container Toolkit (containerd is
    # eks_node's); the role's record lists the packages it installed, which are checked too.
    return {
        "present": docker is not None or ctk is not None,
        "version": parse_first_version(node.run([docker, "--version"]) or "", r"version ([^,\s]+)")
        if docker
        else None,
        "nvidia_container_toolkit": parse_first_version(
            node.run([ctk, "--version"]) or "", r"version (\d+\.\d+\.\d+)"
        )
        if ctk
        else None,
        "daemon_json": os.path.exists("/etc/docker/daemon.json"),
    }


def probe_enroot_pyxis(node: Node) -> dict:
    enroot = node.find_executable("enroot_pyxis", "enroot")
    pyxis = node.find_library(
        "enroot_pyxis",
        ["spank_pyxis.so"],
        (
            "/usr/local/lib/slurm",
            "/usr/lib/x86_64-linux-gnu/slurm",
            "/usr/lib64/slurm",
            "/opt/slurm/lib/slurm",
        ),
    )
    return {
        "present": enroot is not None,
        "version": (node.run([enroot, "version"]) or "").strip() or None if enroot else None,
        "pyxis": pyxis,
    }


def probe_lustre_client(node: Node) -> dict:
    lfs = node.find_executable("lustre_client", "lfs")
    return {
        "present": lfs is not None,
        "version": parse_first_version(node.run([lfs, "--version"]) or "", r"lfs\s+(\S+)")
        if lfs
        else None,
        "packages": node.packages_matching("lustre-client*"),
        "kernels_with_module": kernels_with_module("lustre.ko*"),
    }


def probe_neuron(node: Node) -> dict:
    packages = node.packages_matching("aws-neuronx-*")
    runtime = packages.get("aws-neuronx-runtime-lib")
    return {
        "present": runtime is not None
        or node.find_library("neuron", ["libnrt.so.1"], ("/opt/aws/neuron/lib",)) is not None,
        "version": strip_epoch(runtime),
        "packages": packages,
        "neuron_ls": node.find_executable("neuron", "neuron-ls", ("/opt/aws/neuron/bin",)),
    }


def probe_tuning(node: Node) -> dict:
    sysctl = node.read("/etc/sysctl.d/95-mlcluster-tuning.conf")
    limits = node.read("/etc/systemd/system.conf.d/90-mlcluster-limits.conf")
    return {
        "present": sysctl is not None,
        "version": None,
        "sysctl": parse_key_values(sysctl or ""),
        "systemd_limits": parse_key_values(limits or ""),
        "transparent_hugepage": os.path.exists("/etc/tmpfiles.d/mlcluster-thp.conf"),
    }


def probe_eks_node(node: Node) -> dict:
    """containerd, the runtime of the kubelet; the kubelet and the join tool come with the EKS
    base image (reported, not required: a Debian test node has neither)."""
    containerd = node.find_executable("eks_node", "containerd")
    kubelet = node.find_executable("eks_node", "kubelet")
    join_tool = next(
        (path for path in ("/usr/bin/nodeadm", "/etc/eks/bootstrap.sh") if os.path.exists(path)),
        None,
    )
    return {
        "present": containerd is not None,
        "version": parse_first_version(
            node.run([containerd, "--version"]) or "", r"containerd \S+ v?(\d+\.\d+\.\d+)"
        )
        if containerd
        else None,
        "packages": node.packages_matching("containerd", "containerd.io"),
        "kubelet": parse_first_version(node.run([kubelet, "--version"]) or "", r"v(\d+\.\d+\.\d+)")
        if kubelet
        else None,
        "join_tool": join_tool,
        "containerd_config": os.path.exists("/etc/containerd/config.toml"),
    }


PROBES = {name: globals()[f"probe_{name}"] for name in COMPONENTS}

MISSING_HINTS = {
    "nvidia_driver": "no NVIDIA driver library (libnvidia-ml.so.1)",
    "cuda_toolkit": (
        "no CUDA toolkit (bin/nvcc or version.json under /usr/local/cuda*, nvcc on PATH)"
    ),
    "nccl": "no libnccl.so.2",
    "efa": "no fi_info (libfabric)",
    "aws_ofi_nccl": "no aws-ofi-nccl plugin (libnccl-net*.so)",
    "gdrcopy": "no libgdrapi.so.2",
    "dcgm": "no dcgmi",
    "container_runtime": "no docker and no nvidia-ctk",
    "enroot_pyxis": "no enroot",
    "lustre_client": "no lfs",
    "neuron": "no Neuron runtime (aws-neuronx-runtime-lib)",
    "tuning": "no /etc/sysctl.d/95-mlcluster-tuning.conf",
    "eks_node": "no containerd",
}


def read_claims(claims_dir: str) -> dict[str, dict]:
    claims = {}
    for path in sorted(glob.glob(os.path.join(claims_dir, "*.json"))):
        try:
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
        except (OSError, ValueError):
            continue
        claims[data.get("component") or os.path.basename(path)[:-5]] = data
    return claims


def build_manifest(node: Node, components: list[str], claims: dict, extra: dict) -> dict:
    manifest = {
        "schema": 1,
        "generated_by": "mlcluster.core.image_manifest",
        "host": {
            "os": " ".join(
                filter(
                    None,
                    [
                        parse_first_version(
                            node.read("/etc/os-release") or "", r'^NAME="?([^"\n]+)'
                        ),
                        parse_first_version(
                            node.read("/etc/os-release") or "", r'^VERSION_ID="?([^"\n]+)'
                        ),
                    ],
                )
            ),
            "kernel": platform.release(),
            "architecture": platform.machine(),
            "in_container": in_container(),
        },
        "hardware": probe_hardware(),
        "components": {},
    }
    for name in components:
        info = PROBES[name](node)
        claim = claims.get(name)
        if claim:
            info["source"] = claim.get("source")
            info["expected_version"] = claim.get("version")
        manifest["components"][name] = info
    manifest.update(extra or {})
    return manifest


def main():
    module = AnsibleModule(
        argument_spec={
            "components": {
                "type": "list",
                "elements": "str",
                "required": True,
                "choices": COMPONENTS,
            },
            "required": {"type": "list", "elements": "str", "choices": COMPONENTS},
            "claims_dir": {"type": "path", "default": "/etc/mlcluster/components"},
            "expected": {"type": "dict", "default": {}},
            "search_paths": {"type": "dict", "default": {}},
            "extra": {"type": "dict", "default": {}},
            "dest": {"type": "str", "default": "/etc/mlcluster/manifest.json"},
        },
        supports_check_mode=True,
    )
    params = module.params
    components = params["components"]
    required = params["required"] if params["required"] is not None else components
    node = Node(module, params["search_paths"])
    claims = read_claims(params["claims_dir"])
    manifest = build_manifest(node, components, claims, params["extra"])

    missing = [
        f"{name}: {MISSING_HINTS[name]}"
        for name in required
        if not manifest["components"].get(name, {}).get("present")
    ]
    mismatches = []
    installed = node.packages()
    for name in components:
        mismatches += compare_claim(
            name,
            claims.get(name) or {},
            manifest["components"][name],
            installed,
            params["expected"].get(name),
        )

    content = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    changed = False
    diff = {}
    dest = params["dest"]
    if dest:
        before = Node.read(dest)
        changed = before != content
        diff = {
            "before": before or "",
            "after": content,
            "before_header": dest,
            "after_header": dest,
        }
        if changed and not module.check_mode:
            directory = os.path.dirname(dest) or "."
            os.makedirs(directory, mode=0o755, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=".manifest.")
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(content)
            os.chmod(tmp, 0o644)
            module.atomic_move(tmp, dest)
    result = {
        "changed": changed,
        "manifest": manifest,
        "missing": missing,
        "mismatches": mismatches,
    }
    if module._diff and changed:
        result["diff"] = diff
    module.exit_json(**result)


if __name__ == "__main__":
    main()
