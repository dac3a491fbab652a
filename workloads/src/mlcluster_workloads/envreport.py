"""What this process can use for distributed training, as one JSON object.

    python -m mlcluster_workloads.envreport [--pretty]
    srun --ntasks-per-node=1 python -m mlcluster_workloads.envreport    # one line per node

torch and its CUDA devices and process-group backends, NCCL, MPI, EFA devices and the libfabric
EFA provider, Neuron devices, JAX, and the launcher's variables (Slurm, torchrun). Missing
pieces are ``{"status": "absent", "looked_for": [...]}`` (see probe.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
from typing import Any

from mlcluster_workloads.parsers import fi_info_candidates
from mlcluster_workloads.probe import Host, absent, distribution_version, present
from mlcluster_workloads.versions import torch_nccl

LAUNCHER_VARIABLES = (
    "SLURM_JOB_ID",
    "SLURM_JOB_NUM_NODES",
    "SLURM_NODEID",
    "SLURM_PROCID",
    "SLURM_NTASKS",
    "SLURM_LOCALID",
    "SLURM_JOB_NODELIST",
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "CUDA_VISIBLE_DEVICES",
    "FI_PROVIDER",
    "NCCL_SOCKET_IFNAME",
    "NCCL_DEBUG",
)


def torch_report() -> dict[str, Any]:
    try:
        import torch
        import torch.distributed as dist
    except ImportError:
        return absent("import torch")
    cuda = torch.cuda.is_available()
    devices = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return present(
        torch.__version__,
        "torch.__version__",
        cuda_build=torch.version.cuda,
        cuda_available=cuda,
        device_count=len(devices),
        devices=devices,
        backends={
            "gloo": dist.is_gloo_available(),
            "nccl": dist.is_nccl_available(),
            "mpi": dist.is_mpi_available(),
        },
    )


def gpus_by_nvidia_smi(host: Host) -> dict[str, Any]:
    text = host.run("nvidia-smi", "-L")
    if text is None:
        return absent("nvidia-smi -L")
    names = [line.strip() for line in text.splitlines() if line.startswith("GPU ")]
    return present(len(names), "nvidia-smi -L", devices=names)


def efa_report(host: Host) -> dict[str, Any]:
    """EFA devices are the InfiniBand-class devices whose driver is ``efa``."""
    devices = [
        path.name
        for path in host.glob("/sys/class/infiniband/*")
        if (path / "device" / "driver").resolve().name == "efa"
    ]
    if not devices:
        return absent("/sys/class/infiniband/*/device/driver -> efa")
    fi_info = next(iter(fi_info_candidates(host.which)), None)
    provider = host.run(fi_info, "-p", "efa", "-t", "FI_EP_RDM") if fi_info else None
    return present(
        len(devices),
        "/sys/class/infiniband/*/device/driver -> efa",
        devices=devices,
        libfabric_efa_provider=provider is not None,
    )


def mpi_report(host: Host) -> dict[str, Any]:
    path = host.which("mpirun")
    if path is None:
        return absent("mpirun on PATH")
    text = host.run("mpirun", "--version") or ""
    first = next((line.strip() for line in text.splitlines() if line.strip()), "unknown")
    return present(first, path)


def neuron_devices(host: Host) -> dict[str, Any]:
    devices = [path.name for path in host.glob("/dev/neuron*")]
    if not devices:
        return absent("/dev/neuron*")
    return present(len(devices), "/dev/neuron*", devices=devices)


def report(host: Host | None = None) -> dict[str, Any]:
    host = host or Host()
    jax_version = distribution_version("jax")
    return {
        "event": "envreport",
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch": torch_report(),
        "nccl": torch_nccl(),
        "gpus_nvidia_smi": gpus_by_nvidia_smi(host),
        "efa": efa_report(host),
        "mpi": mpi_report(host),
        "neuron_devices": neuron_devices(host),
        "jax": present(jax_version, "pip distribution jax")
        if jax_version
        else absent("pip distribution jax"),
        "launcher_env": {
            name: os.environ[name] for name in LAUNCHER_VARIABLES if name in os.environ
        },
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mlcluster_workloads.envreport")
    parser.add_argument("--pretty", action="store_true", help="indent the JSON")
    args = parser.parse_args(argv)
    print(json.dumps(report(), indent=2 if args.pretty else None))


if __name__ == "__main__":
    main()
