"""Process-group set-up shared by the torch cases.

Reads the variables torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR,
MASTER_PORT). Without them the case runs as a one-process group on an in-memory store, so the
same code path (DDP, FSDP2, DCP) runs alone and distributed.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from mlcluster_workloads.metrics import Device

BACKENDS = ("auto", "gloo", "nccl")
DEVICES = ("auto", "cpu", "cuda")
# Seconds a collective (and the process group's start-up) may wait for a peer before the rank
# fails. torch's own default is 10 minutes for NCCL and 30 for gloo; a dead peer then holds the
# others that long. The launcher passes it explicitly (launch.WorkloadSpec.collective_timeout).
DEFAULT_TIMEOUT_S = 300


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int  # selects the CUDA device: cuda:LOCAL_RANK
    backend: str
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="process-group backend; auto: nccl on CUDA, gloo on CPU",
    )
    parser.add_argument(
        "--device",
        choices=DEVICES,
        default="auto",
        help="auto: cuda:LOCAL_RANK when CUDA is available, else cpu",
    )
    parser.add_argument(
        "--dist-timeout",
        type=int,
        default=DEFAULT_TIMEOUT_S,
        help=f"seconds a collective waits for a peer before failing (default {DEFAULT_TIMEOUT_S})",
    )


def resolve_device(requested: str, local_rank: int) -> torch.device:
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda asked for, but torch sees no CUDA device")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def resolve_backend(requested: str, device: torch.device) -> str:
    if requested != "auto":
        if requested == "nccl" and device.type != "cuda":
            raise SystemExit("--backend nccl needs a CUDA device")
        return requested
    return "nccl" if device.type == "cuda" else "gloo"


def init(
    backend: str = "auto", device: str = "auto", timeout_s: int = DEFAULT_TIMEOUT_S
) -> DistContext:
    """Join (or, alone, create) the default process group and pin this rank's device."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    torch_device = resolve_device(device, local_rank)
    if torch_device.type == "cuda":
        torch.cuda.set_device(torch_device)
    chosen = resolve_backend(backend, torch_device)
    if not dist.is_initialized():
        if "WORLD_SIZE" in os.environ:  # launched: env:// needs MASTER_ADDR/MASTER_PORT too
            dist.init_process_group(
                chosen,
                timeout=timedelta(seconds=timeout_s),
                device_id=torch_device if torch_device.type == "cuda" else None,
            )
        else:
            dist.init_process_group(chosen, store=dist.HashStore(), rank=0, world_size=1)
    return DistContext(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=local_rank,
        backend=chosen,
        device=torch_device,
    )


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def synchronize(device: torch.device) -> None:
    """Wait for queued device work so that wall-clock step times mean something."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def mean_across_ranks(value: torch.Tensor) -> float:
    """The mean of a scalar over all ranks (the global-batch loss when local batches are equal)."""
    reduced = value.detach().clone().float()
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
    return reduced.item() / dist.get_world_size()


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank if ``flag`` is true on any (a stop signal that reached one rank stops
    all of them after the same step)."""
    value = torch.tensor([int(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def host_parameters(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """Every parameter, whole, as float32 NumPy arrays on the host. Sharded (DTensor) parameters
    are gathered, a collective: every rank must call this."""
    return {
        name: (param.full_tensor() if isinstance(param, DTensor) else param)
        .detach()
        .float()
        .cpu()
        .numpy()
        for name, param in model.named_parameters()
    }


def reporter_device(device: torch.device) -> Device:
    """Peak memory is torch.cuda.max_memory_allocated on CUDA, the peak RSS on CPU."""
    if device.type == "cuda":
        return Device(
            torch.cuda.get_device_name(device),
            accelerator=True,
            peak_memory=lambda: torch.cuda.max_memory_allocated(device),
        )
    return Device("cpu", accelerator=False)
