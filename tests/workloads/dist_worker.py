"""Run by the tests as 2 ranks (gloo, CPU): one FSDP2 step built from the package's own pieces,
saving what each rank read, the resulting full gradients and the initial weights to
OUT_DIR/fsdp-rank<r>.pt, for comparison with an unsharded model computed in the tests. (The
entry points' own distributed correctness is tested through them: test_ddp, test_fsdp.)
With TP (4 ranks, TP=2) the step runs on the 2-D ("dp", "tp") mesh, on the tiny model with tied
embeddings (the tie that tensor parallelism must restore), to OUT_DIR/fsdp-tp<TP>-rank<r>.pt.

    torchrun --standalone --nproc_per_node=2 dist_worker.py OUT_DIR
    torchrun --standalone --nproc_per_node=4 dist_worker.py OUT_DIR 2
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch
from mlcluster_workloads import dist, fsdp
from mlcluster_workloads.data import ShardedSampler, SyntheticTokens
from mlcluster_workloads.llama import CONFIGS, LlamaConfig
from torch.distributed.device_mesh import init_device_mesh

# Shared with the tests, which import this module for the same constants.
FSDP = {"config": "tiny", "seq_len": 16, "batch": 2, "seed": 5}
STEP = 1  # the second global batch: positions that a wrong offset would miss


def fsdp_config(tp: int = 1) -> LlamaConfig:
    config = dataclasses.replace(CONFIGS[FSDP["config"]], max_seq_len=FSDP["seq_len"])
    return dataclasses.replace(config, tie_embeddings=True) if tp > 1 else config


def fsdp_step(ctx: dist.DistContext, tp: int = 1) -> dict:
    config = fsdp_config(tp)
    if tp > 1:
        mesh = fsdp.make_mesh("cpu", ctx.world_size, tp)
        dp_rank, dp_size = mesh["dp"].get_local_rank(), mesh["dp"].size()
    else:
        mesh = init_device_mesh("cpu", (ctx.world_size,))
        dp_rank, dp_size = ctx.rank, ctx.world_size
    model = fsdp.build_model(config, mesh, seed=FSDP["seed"])
    initial = {name: p.full_tensor().clone() for name, p in model.named_parameters()}
    source = SyntheticTokens(config.vocab_size, FSDP["seq_len"], seed=FSDP["seed"])
    sampler = ShardedSampler(source.num_windows, FSDP["batch"], dp_rank, dp_size)
    indices = sampler.indices(STEP)
    tokens = torch.from_numpy(source.batch(indices))
    loss = fsdp.loss_and_backward(model, tokens[:, :-1], tokens[:, 1:])
    grads = {name: p.grad.full_tensor() for name, p in model.named_parameters()}
    return {"indices": indices, "grads": grads, "initial": initial, "loss": loss.item()}


def main() -> None:
    out = Path(sys.argv[1])
    tp = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    ctx = dist.init("gloo", "cpu")
    try:
        result = fsdp_step(ctx, tp)
        result["world_size"] = ctx.world_size
        prefix = f"fsdp-tp{tp}" if tp > 1 else "fsdp"
        torch.save(result, out / f"{prefix}-rank{ctx.rank}.pt")
    finally:
        dist.shutdown()


if __name__ == "__main__":
    main()
