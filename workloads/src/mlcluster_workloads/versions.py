"""Versions of the GPU/network stack on this host, as one JSON object.

    python -m mlcluster_workloads.versions [--pretty]

Driver, CUDA, NCCL, EFA installer and kernel module, libfabric, aws-ofi-nccl and Neuron: each is
``{"status": "present", "version", "source"}`` or ``{"status": "absent", "looked_for"}``.
Comparing this object across nodes finds the version drift that breaks multi-node jobs.
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
from typing import Any

# parsers.py is the collection's module_utils/parsers.py (the same file): the image manifest
# looks in the same places, in the same order, and reads versions the same way.
from mlcluster_workloads.parsers import (
    CUDA_NVCC,
    CUDA_VERSION_FILE,
    DPKG_QUERY_FORMAT,
    EFA_INSTALLED_PACKAGES,
    FI_INFO_COMMANDS,
    NCCL_LIBRARY,
    NCCL_LIBRARY_DIRS,
    NCCL_VERSION,
    OFI_NCCL_LIBRARIES,
    OFI_NCCL_LIBRARY_DIRS,
    OFI_NCCL_VERSION,
    PROC_DRIVER_VERSION,
    RPM_QUERY_FORMAT,
    cuda_homes,
    cuda_toolkit_version,
    fi_info_candidates,
    kernel_module_version,
    kernel_module_version_path,
    ldconfig_candidates,
    library_candidates,
    library_search_dirs,
    parse_dpkg_query,
    parse_efa_installed_packages,
    parse_fi_info_version,
    parse_ldconfig,
    parse_proc_driver_version,
    parse_rpm_qa,
    search_binary,
    version_from_soname,
    version_key,
)
from mlcluster_workloads.probe import Host, absent, distribution_version, present

NCCL_WHEELS = ("nvidia-nccl-cu13", "nvidia-nccl-cu12", "nvidia-nccl-cu11")
NEURON_WHEELS = ("neuronx-cc", "torch-neuronx", "libneuronxla", "neuronx-distributed")


def kernel_module(host: Host, module: str) -> dict[str, Any]:
    path = kernel_module_version_path(module)
    if version := kernel_module_version(host.read, module):
        return present(version, path)
    return absent(path)


def linker_cache(host: Host) -> dict[str, str]:
    """{soname: path} of ``ldconfig -p``, as the image manifest reads it; empty without one."""
    outputs = (host.run(command, "-p") for command in ldconfig_candidates(host.which))
    return parse_ldconfig(next((out for out in outputs if out), ""))


def package_manager_version(host: Host, package: str) -> tuple[str, str] | None:
    installed = parse_dpkg_query(
        host.run("dpkg-query", "-W", "-f", DPKG_QUERY_FORMAT, package) or ""
    )
    if package in installed:
        return installed[package], f"dpkg-query -W {package}"
    installed = parse_rpm_qa(host.run("rpm", "-q", "--qf", RPM_QUERY_FORMAT, package) or "")
    if package in installed:
        return installed[package], f"rpm -q {package}"
    return None


def nvidia_driver(host: Host) -> dict[str, Any]:
    if version := parse_proc_driver_version(host.read(PROC_DRIVER_VERSION) or ""):
        return present(version, PROC_DRIVER_VERSION)
    smi = host.run("nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader")
    if smi and smi.strip():
        return present(smi.splitlines()[0].strip(), "nvidia-smi --query-gpu=driver_version")
    return absent(PROC_DRIVER_VERSION, "nvidia-smi on PATH")


def cuda_toolkit(host: Host) -> dict[str, Any]:
    homes = cuda_homes(
        lambda pattern: [f"/{path.relative_to(host.root)}" for path in host.glob(pattern)]
    )
    for home in homes:
        nvcc = str(host.file(f"{home}/{CUDA_NVCC}"))
        found = cuda_toolkit_version(
            host.read(f"{home}/{CUDA_VERSION_FILE}"), host.run(nvcc, "--version")
        )
        if found:
            return present(found[0], f"{home}/{found[1]}")
    if found := cuda_toolkit_version(None, host.run("nvcc", "--version")):
        return present(found[0], "nvcc --version")
    return absent(
        *(f"{home}/{{{CUDA_VERSION_FILE},{CUDA_NVCC}}}" for home in homes), "nvcc on PATH"
    )


def torch_cuda() -> dict[str, Any]:
    try:
        import torch
    except ImportError:
        return absent("import torch")
    if torch.version.cuda is None:
        return absent("torch.version.cuda (this torch is a CPU build)")
    return present(torch.version.cuda, "torch.version.cuda")


def torch_nccl() -> dict[str, Any]:
    looked_for = "torch.cuda.nccl.version()"
    try:
        import torch
        import torch.distributed

        if torch.version.cuda is None or not torch.distributed.is_nccl_available():
            return absent(f"{looked_for} (this torch has no NCCL)")
        version = torch.cuda.nccl.version()
    except (ImportError, RuntimeError, AttributeError):
        return absent(looked_for)
    if isinstance(version, tuple):
        version = ".".join(str(part) for part in version)
    return present(str(version), looked_for)


def nccl_library(host: Host) -> dict[str, Any]:
    directories = library_search_dirs(*NCCL_LIBRARY_DIRS)
    for directory in directories:
        versioned = [
            version
            for path in host.glob(f"{directory}/libnccl.so.*")
            if (version := version_from_soname(path.name, "libnccl.so"))
        ]
        if versioned:
            return present(max(versioned, key=version_key), f"{directory}/libnccl.so.*")
        # The nccl role's wheel prefix holds libnccl.so.2 alone: the version is compiled in.
        library = host.file(f"{directory}/{NCCL_LIBRARY}")
        if library.is_file() and (found := search_binary(str(library), NCCL_VERSION)):
            return present(found[0], f"{directory}/{NCCL_LIBRARY} (its embedded version string)")
    cached = linker_cache(host).get(NCCL_LIBRARY)
    if cached and (found := search_binary(str(host.file(cached)), NCCL_VERSION)):
        return present(found[0], f"{cached} (ldconfig -p; its embedded version string)")
    for wheel in NCCL_WHEELS:
        if version := distribution_version(wheel):
            return present(version, f"pip distribution {wheel}")
    return absent(
        *(f"{directory}/libnccl.so.{{X.Y.Z,2}}" for directory in directories),
        f"ldconfig -p {NCCL_LIBRARY}",
        *(f"pip distribution {wheel}" for wheel in NCCL_WHEELS),
    )


def efa_installer(host: Host) -> dict[str, Any]:
    text = host.read(EFA_INSTALLED_PACKAGES)
    if text is None:
        return absent(EFA_INSTALLED_PACKAGES)
    return present(parse_efa_installed_packages(text) or "unknown", EFA_INSTALLED_PACKAGES)


def libfabric(host: Host) -> dict[str, Any]:
    for command in fi_info_candidates(host.which):
        if version := parse_fi_info_version(host.run(command, "--version") or ""):
            return present(version, f"{command} --version")
    return absent(
        *(f"{c} --version" if "/" in c else f"{c} --version (PATH)" for c in FI_INFO_COMMANDS)
    )


def aws_ofi_nccl(host: Host) -> dict[str, Any]:
    directories = library_search_dirs(*OFI_NCCL_LIBRARY_DIRS)
    for path in library_candidates(OFI_NCCL_LIBRARIES, directories, lambda: linker_cache(host)):
        library = host.file(path)
        if library.is_file():
            found = search_binary(str(library), OFI_NCCL_VERSION)
            version = found[0] if found else "unknown"
            return present(version, f"{path} (its embedded package string)")
    return absent(
        *(f"{directory}/{{{','.join(OFI_NCCL_LIBRARIES)}}}" for directory in directories),
        f"ldconfig -p {{{','.join(OFI_NCCL_LIBRARIES)}}}",
    )


def neuron_tools(host: Host) -> dict[str, Any]:
    found = package_manager_version(host, "aws-neuronx-tools")
    if found:
        return present(found[0], found[1])
    if host.which("neuron-ls"):
        return present("unknown", "neuron-ls on PATH; no package database entry")
    if host.file("/opt/aws/neuron/bin/neuron-ls").is_file():
        return present("unknown", "/opt/aws/neuron/bin/neuron-ls; no package database entry")
    return absent(
        "dpkg-query/rpm aws-neuronx-tools", "neuron-ls on PATH", "/opt/aws/neuron/bin/neuron-ls"
    )


def neuron_python() -> dict[str, Any]:
    versions = {name: v for name in NEURON_WHEELS if (v := distribution_version(name))}
    if versions:
        return present(versions, "pip distributions")
    return absent(*(f"pip distribution {name}" for name in NEURON_WHEELS))


def report(host: Host | None = None) -> dict[str, Any]:
    host = host or Host()
    torch_version = distribution_version("torch")
    return {
        "event": "versions",
        "hostname": socket.gethostname(),
        "python": present(platform.python_version(), "platform.python_version()"),
        "torch": present(torch_version, "pip distribution torch")
        if torch_version
        else absent("pip distribution torch"),
        "nvidia_driver": nvidia_driver(host),
        "nvidia_kernel_module": kernel_module(host, "nvidia"),
        "cuda_toolkit": cuda_toolkit(host),
        "cuda_torch": torch_cuda(),
        "nccl_torch": torch_nccl(),
        "nccl_library": nccl_library(host),
        "efa_installer": efa_installer(host),
        "efa_kernel_module": kernel_module(host, "efa"),
        "libfabric": libfabric(host),
        "aws_ofi_nccl": aws_ofi_nccl(host),
        "neuron_kernel_module": kernel_module(host, "neuron"),
        "neuron_tools": neuron_tools(host),
        "neuron_python": neuron_python(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mlcluster_workloads.versions")
    parser.add_argument("--pretty", action="store_true", help="indent the JSON")
    args = parser.parse_args(argv)
    print(json.dumps(report(), indent=2 if args.pretty else None))


if __name__ == "__main__":
    main()
