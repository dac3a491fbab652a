"""DeepSpeed ZeRO (stage 1, 2 or 3) training of the Llama-style decoder of the fsdp case.

    torchrun --nproc_per_node=8 -m mlcluster_workloads.deepspeed_zero --zero-stage 3 \\
        --config 1b --seq-len 2048 --batch-size 4 --steps 50

The same model (llama.py, initialised from the seed alone), data path (a synthetic token stream
or a token file, each rank reading its own block of every global batch) and JSON metrics as the
fsdp case, trained by a ``deepspeed.initialize`` engine instead of FSDP2: ZeRO partitions the
optimizer state (stage 1), also the gradients (2) and also the parameters (3) over all ranks.
The optimizer is torch's AdamW (DeepSpeed's ``torch_adam``), so nothing is compiled at run time;
on CUDA the model computes in bf16 with fp32 master weights (DeepSpeed's ``bf16`` mode), on CPU
in fp32. On CPU DeepSpeed's own CPU accelerator is used, with gloo when oneCCL is not installed.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from typing import Any, TextIO

import numpy as np
import torch

from mlcluster_workloads import dist, fsdp, metrics
from mlcluster_workloads.data import TOKEN_DTYPES, ShardedSampler, SyntheticTokens, TokenFile
from mlcluster_workloads.llama import CONFIGS, Transformer, training_reporter


def ds_config(args: argparse.Namespace, *, bf16: bool) -> dict[str, Any]:
    """The DeepSpeed configuration the engine is built from (recorded in the summary)."""
    return {
        "train_micro_batch_size_per_gpu": args.batch_size,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": args.grad_clip,
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": args.lr,
                "betas": [0.9, 0.95],
                "weight_decay": args.weight_decay,
                "torch_adam": True,  # torch.optim.AdamW: no fused kernel to build
            },
        },
        "zero_optimization": {"stage": args.zero_stage},
        "bf16": {"enabled": bf16},
        "steps_per_print": 2**31 - 1,  # the JSON lines are the report
        "wall_clock_breakdown": False,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m mlcluster_workloads.deepspeed_zero",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--zero-stage", type=int, choices=(1, 2, 3), default=3)
    parser.add_argument("--config", choices=sorted(CONFIGS), default="tiny")
    parser.add_argument("--seq-len", type=int, default=128, help="tokens per sample")
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per rank per step")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm; 0: off")
    parser.add_argument("--dtype", choices=("auto", "bf16", "fp32"), default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-file", help="flat little-endian token-id file; default synthetic")
    parser.add_argument("--data-dtype", choices=sorted(TOKEN_DTYPES), default="uint16")
    parser.add_argument("--shuffle", action="store_true", help="permute windows every epoch")
    dist.add_arguments(parser)
    metrics.add_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    stream = metrics.json_stream()  # from here on, fd 1 carries JSON lines only
    ctx = dist.init(args.backend, args.device)
    try:
        run(args, ctx, stream)
    finally:
        dist.shutdown()


def full_parameters(engine: Any, stage: int) -> dict[str, np.ndarray]:
    """Every parameter, whole, on the host; under ZeRO-3 gathered first (a collective)."""
    import deepspeed

    params = dict(engine.module.named_parameters())
    if stage == 3:
        with deepspeed.zero.GatheredParameters(list(params.values())):
            return {n: p.detach().float().cpu().numpy().copy() for n, p in params.items()}
    return {n: p.detach().float().cpu().numpy() for n, p in params.items()}


def run(args: argparse.Namespace, ctx: dist.DistContext, stream: TextIO) -> None:
    # DeepSpeed picks its accelerator from the environment once, at import: say which.
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if ctx.device.type == "cuda" else "cpu")
    import deepspeed

    config = dataclasses.replace(CONFIGS[args.config], max_seq_len=args.seq_len)
    dtype = fsdp.resolve_dtype(args.dtype, ctx.device)
    torch.manual_seed(args.seed)
    model = Transformer(config)  # whole on every rank, identical: the seed alone draws it
    model.to(ctx.device)
    model.init_weights(args.seed)
    settings = ds_config(args, bf16=dtype == torch.bfloat16)
    if ctx.device.type == "cpu":
        # On CPU, init_distributed JIT-compiles DeepSpeed's shared-memory all-reduce (g++, about
        # a minute, in ~/.cache/torch_extensions under a lock file that a killed run leaves
        # behind, hanging every later run). Only inference_all_reduce uses it, not training:
        # mark it incompatible, DeepSpeed's own switch for ops that cannot be built.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend=ctx.backend)  # joins the group dist.init made
    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=model.parameters(), config=settings
    )

    if args.data_file:
        source = TokenFile(args.data_file, args.seq_len, dtype=args.data_dtype)
    else:
        source = SyntheticTokens(config.vocab_size, args.seq_len, seed=args.seed)
    sampler = ShardedSampler(
        source.num_windows,
        args.batch_size,
        ctx.rank,
        ctx.world_size,
        seed=args.seed,
        shuffle=args.shuffle,
    )
    reporter = training_reporter(
        "deepspeed",
        config,
        args,
        ctx,
        stream,
        global_batch=sampler.global_batch,
        param_dtype=dtype,
        extra={
            "zero_stage": args.zero_stage,
            "deepspeed": deepspeed.__version__,
            "deepspeed_accelerator": deepspeed.get_accelerator().device_name(),
        },
    )
    rank_report = metrics.RankReport(args.debug_report, ctx.rank, ctx.world_size)
    for step in range(1, args.steps + 1):
        indices = sampler.indices(step - 1)
        tokens = source.batch(indices)
        if tokens.max() >= config.vocab_size:
            raise SystemExit(
                f"token id {tokens.max()} in the data is outside the {args.config} vocabulary "
                f"of {config.vocab_size}"
            )
        tokens = torch.from_numpy(tokens).to(ctx.device, non_blocking=True)
        dist.synchronize(ctx.device)
        started = time.perf_counter()
        logits = engine(tokens[:, :-1])
        loss = torch.nn.functional.cross_entropy(
            logits.flatten(0, 1).float(), tokens[:, 1:].flatten()
        )
        engine.backward(loss)
        engine.step()
        dist.synchronize(ctx.device)
        elapsed = time.perf_counter() - started
        reporter.step(step, dist.mean_across_ranks(loss.detach()), elapsed)
        rank_report.step(step, indices, loss.detach())
    reporter.summary()
    if rank_report.enabled:
        rank_report.finish(full_parameters(engine, args.zero_stage))


if __name__ == "__main__":
    main()
