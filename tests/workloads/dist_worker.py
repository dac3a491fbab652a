"""Run by the tests as 2 ranks (gloo, CPU): one DDP and one FSDP2 step built from the package's
own pieces, saving what each rank read and the resulting full gradients (and FSDP's initial
weights) to OUT_DIR/<case>-rank<r>.pt, for comparison with single-process references computed
in the tests.

    torchrun --standalone --nproc_per_node=2 dist_worker.py OUT_DIR
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch
from mlcluster_workloads import ddp, dist, fsdp
from mlcluster_workloads.data import ShardedSampler, SyntheticTokens, TeacherRegression
from mlcluster_workloads.llama import CONFIGS
from torch.distributed.device_mesh import init_device_mesh
from torch.nn.parallel import DistributedDataParallel

# Shared with the tests, which import this module for the same constants.
DDP = {"num_samples": 256, "in_features": 8, "hidden": 16, "depth": 2, "batch": 16, "seed": 3}
FSDP = {"config": "tiny", "seq_len": 16, "batch": 2, "seed": 5}
STEP = 1  # the second global batch: positions that a wrong offset would miss


def ddp_step(ctx: dist.DistContext) -> dict:
    x, y = map(
        torch.from_numpy,
        TeacherRegression(
            num_samples=DDP["num_samples"], in_features=DDP["in_features"], seed=DDP["seed"]
        ).arrays(),
    )
    sampler = ShardedSampler(
        DDP["num_samples"], DDP["batch"], ctx.rank, ctx.world_size, seed=DDP["seed"], shuffle=True
    )
    model = DistributedDataParallel(
        ddp.build_model(DDP["in_features"], DDP["hidden"], DDP["depth"], seed=DDP["seed"])
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    indices = sampler.indices(STEP)
    index = torch.from_numpy(indices)
    loss = ddp.train_step(model, optimizer, x[index], y[index])
    grads = {name: p.grad.clone() for name, p in model.module.named_parameters()}
    return {"indices": indices, "grads": grads, "loss": loss.item()}


def fsdp_step(ctx: dist.DistContext) -> dict:
    config = dataclasses.replace(CONFIGS[FSDP["config"]], max_seq_len=FSDP["seq_len"])
    mesh = init_device_mesh("cpu", (ctx.world_size,))
    model = fsdp.build_model(config, mesh, seed=FSDP["seed"])
    initial = {name: p.full_tensor().clone() for name, p in model.named_parameters()}
    source = SyntheticTokens(config.vocab_size, FSDP["seq_len"], seed=FSDP["seed"])
    sampler = ShardedSampler(source.num_windows, FSDP["batch"], ctx.rank, ctx.world_size)
    indices = sampler.indices(STEP)
    tokens = torch.from_numpy(source.batch(indices))
    loss = fsdp.loss_and_backward(model, tokens[:, :-1], tokens[:, 1:])
    grads = {name: p.grad.full_tensor() for name, p in model.named_parameters()}
    return {"indices": indices, "grads": grads, "initial": initial, "loss": loss.item()}


def main() -> None:
    out = Path(sys.argv[1])
    ctx = dist.init("gloo", "cpu")
    try:
        for case, step in (("ddp", ddp_step), ("fsdp", fsdp_step)):
            result = step(ctx)
            result["world_size"] = ctx.world_size
            torch.save(result, out / f"{case}-rank{ctx.rank}.pt")
    finally:
        dist.shutdown()


if __name__ == "__main__":
    main()
