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
import re
import socket
from typing import Any

from mlcluster_workloads.probe import Host, absent, distribution_version, present

LIBRARY_DIRS = (
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/local/lib",
    "/usr/local/cuda/lib64",
    "/opt/nccl/build/lib",
    "/opt/nccl/lib",
)
OFI_NCCL_LIBRARIES = (
    "/opt/amazon/ofi-nccl/lib/libnccl-net-ofi.so",
    "/opt/amazon/ofi-nccl/lib/libnccl-net.so",
    "/opt/amazon/ofi-nccl/lib64/libnccl-net.so",
    "/opt/aws-ofi-nccl/lib/libnccl-net.so",
    "/usr/local/lib/libnccl-net.so",
)
NCCL_WHEELS = ("nvidia-nccl-cu13", "nvidia-nccl-cu12", "nvidia-nccl-cu11")
NEURON_WHEELS = ("neuronx-cc", "torch-neuronx", "libneuronxla", "neuronx-distributed")


def kernel_module(host: Host, module: str) -> dict[str, Any]:
    path = f"/sys/module/{module}/version"
    text = host.read(path)
    if text and text.strip():
        return present(text.strip(), path)
    return absent(path)


def package_manager_version(host: Host, package: str) -> tuple[str, str] | None:
    text = host.run("dpkg-query", "-W", "-f=${Version}", package)
    if text and text.strip():
        return text.strip(), f"dpkg-query -W {package}"
    text = host.run("rpm", "-q", "--qf", "%{VERSION}-%{RELEASE}", package)
    if text and text.strip() and "not installed" not in text:
        return text.strip(), f"rpm -q {package}"
    return None


def nvidia_driver(host: Host) -> dict[str, Any]:
    path = "/proc/driver/nvidia/version"
    text = host.read(path)
    if text and (match := re.search(r"Kernel Module(?: for \S+)?\s+(\d+\.\d+(?:\.\d+)?)", text)):
        return present(match.group(1), path)
    smi = host.run("nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader")
    if smi and smi.strip():
        return present(smi.splitlines()[0].strip(), "nvidia-smi --query-gpu=driver_version")
    return absent(path, "nvidia-smi on PATH")


def cuda_toolkit(host: Host) -> dict[str, Any]:
    path = "/usr/local/cuda/version.json"
    text = host.read(path)
    if text:
        try:
            return present(json.loads(text)["cuda"]["version"], path)
        except (ValueError, KeyError, TypeError):
            pass
    nvcc = host.run("nvcc", "--version")
    if nvcc and (match := re.search(r"release [\d.]+, V(\S+)", nvcc)):
        return present(match.group(1), "nvcc --version")
    return absent(path, "nvcc on PATH")


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
    for directory in LIBRARY_DIRS:
        versioned = [
            match.group(1)
            for path in host.glob(f"{directory}/libnccl.so.*")
            if (match := re.fullmatch(r"libnccl\.so\.(\d+\.\d+\.\d+)", path.name))
        ]
        if versioned:
            return present(max(versioned, key=_version_key), f"{directory}/libnccl.so.*")
    for wheel in NCCL_WHEELS:
        if version := distribution_version(wheel):
            return present(version, f"pip distribution {wheel}")
    return absent(
        *(f"{directory}/libnccl.so.X.Y.Z" for directory in LIBRARY_DIRS),
        *(f"pip distribution {wheel}" for wheel in NCCL_WHEELS),
    )


def efa_installer(host: Host) -> dict[str, Any]:
    path = "/opt/amazon/efa_installed_packages"
    text = host.read(path)
    if text is None:
        return absent(path)
    match = re.search(r"EFA installer version:\s*(\S+)", text)
    return present(match.group(1) if match else "unknown", path)


def libfabric(host: Host) -> dict[str, Any]:
    for command in ("fi_info", "/opt/amazon/efa/bin/fi_info"):
        if command.startswith("/"):
            command = str(host.file(command))
        text = host.run(command, "--version")
        if text and (match := re.search(r"^libfabric:\s*(\S+)", text, re.MULTILINE)):
            return present(match.group(1), f"{command} --version")
    return absent("fi_info --version (PATH)", "/opt/amazon/efa/bin/fi_info --version")


def aws_ofi_nccl(host: Host) -> dict[str, Any]:
    for library in OFI_NCCL_LIBRARIES:
        path = host.file(library)
        if path.is_file():
            match = re.search(rb"aws-ofi-nccl (\d+\.\d+\.\d+[0-9A-Za-z.\-]*)", path.read_bytes())
            version = match.group(1).decode() if match else "unknown"
            return present(version, f"{library} (its embedded package string)")
    return absent(*OFI_NCCL_LIBRARIES)


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


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version))


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
