"""FSDP2 (``fully_shard``) training of a Llama-style decoder.

    torchrun --nproc_per_node=8 -m mlcluster_workloads.fsdp --config 8b --seq-len 4096 \\
        --batch-size 2 --steps 100 --checkpoint-dir /fsx/ckpt/run1 --checkpoint-every 50

The model is built on the meta device, each block and then the root are sharded over all ranks,
and only then are parameters materialised and initialised. On CUDA, parameters compute in bf16
and gradients reduce in fp32 (MixedPrecisionPolicy); on CPU everything is fp32. Each rank reads
its own block of every global batch, from a synthetic token stream or a token file (data.py).
With ``--checkpoint-dir`` the run saves every ``--checkpoint-every`` steps (and when SIGTERM or
SIGUSR1 asks it to stop) and resumes from the newest complete checkpoint there (checkpoint.py).

``--tp N`` adds tensor parallelism: a 2-D DeviceMesh ("dp", "tp") of world/N data-parallel
groups of N consecutive ranks (one node's GPUs). Within a group the blocks' projections are split
Megatron-style with sequence parallelism (``apply_tensor_parallel``) and every rank reads the same
samples; FSDP2 shards the resulting DTensors over the "dp" dimension.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable
from typing import TextIO

import torch
import torch.nn.functional as F
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import Replicate, Shard
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    PrepareModuleInput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)

from mlcluster_workloads import checkpoint, dist, metrics
from mlcluster_workloads.checkpoint import Checkpointer
from mlcluster_workloads.data import TOKEN_DTYPES, ShardedSampler, SyntheticTokens, TokenFile
from mlcluster_workloads.llama import CONFIGS, LlamaConfig, Transformer, training_reporter

TRAIN_KEYS = ["step", "samples_consumed"]


def resolve_dtype(requested: str, device: torch.device) -> torch.dtype:
    if requested == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"bf16": torch.bfloat16, "fp32": torch.float32}[requested]


def make_mesh(device_type: str, world_size: int, tp: int = 1) -> DeviceMesh:
    """("dp",) over all ranks, or, with ``tp`` > 1, ("dp", "tp"): world_size / tp data-parallel
    groups of ``tp`` consecutive ranks (ranks 0..tp-1 form the first tensor-parallel group)."""
    if tp < 1 or world_size % tp:
        raise SystemExit(f"--tp {tp} must divide the world size {world_size}")
    if tp == 1:
        return init_device_mesh(device_type, (world_size,), mesh_dim_names=("dp",))
    return init_device_mesh(device_type, (world_size // tp, tp), mesh_dim_names=("dp", "tp"))


def check_tensor_parallel(config: LlamaConfig, tp: int, seq_len: int) -> None:
    """Everything ``apply_tensor_parallel`` splits into ``tp`` equal parts must divide by it."""
    splits = {
        "n_heads": config.n_heads,
        "n_kv_heads": config.n_kv_heads,
        "ffn_dim": config.ffn_dim,
        "vocab_size": config.vocab_size,
        "seq_len": seq_len,  # sequence parallelism splits the tokens between the blocks
    }
    bad = [f"{name} {value}" for name, value in splits.items() if value % tp]
    if bad:
        raise SystemExit(f"--tp {tp} must divide {', '.join(bad)}")


def apply_tensor_parallel(model: Transformer, tp_mesh: DeviceMesh) -> None:
    """Megatron-style tensor parallelism with sequence parallelism, laid out as torchtitan does
    for Llama (on the meta device, before FSDP):

    - ``wq``/``wk``/``wv`` and ``w1``/``w3`` column-wise (each rank computes a slice of the
      heads / hidden units), ``wo`` and ``w2`` row-wise, their partial sums reduce-scattered
      over the sequence;
    - between the blocks the residual stream is split over the sequence (``Shard(1)``): the
      RMSNorms run on each rank's tokens, the attention and MLP inputs are all-gathered;
    - the embedding is split over the vocabulary rows, the output head column-wise over the
      vocabulary, its logits all-gathered (``Replicate``), so every rank computes the same loss.
    """
    parallelize_module(
        model,
        tp_mesh,
        {
            "tok_embeddings": RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(1)),
            "norm": SequenceParallel(),
            "output": ColwiseParallel(input_layouts=Shard(1), output_layouts=Replicate()),
        },
    )
    if model.config.tie_embeddings:  # each style distributed its own copy: tie them again
        model.output.weight = model.tok_embeddings.weight
    for block in model.layers:
        parallelize_module(
            block,
            tp_mesh,
            {
                "attention_norm": SequenceParallel(),
                "attention": PrepareModuleInput(
                    input_layouts=(Shard(1), None, None),  # x, rope cos, rope sin
                    desired_input_layouts=(Replicate(), None, None),
                ),
                "attention.wq": ColwiseParallel(),
                "attention.wk": ColwiseParallel(),
                "attention.wv": ColwiseParallel(),
                "attention.wo": RowwiseParallel(output_layouts=Shard(1)),
                "ffn_norm": SequenceParallel(),
                "feed_forward": PrepareModuleInput(
                    input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),)
                ),
                "feed_forward.w1": ColwiseParallel(),
                "feed_forward.w3": ColwiseParallel(),
                "feed_forward.w2": RowwiseParallel(output_layouts=Shard(1)),
            },
        )


def build_model(
    config: LlamaConfig,
    mesh: DeviceMesh,
    *,
    param_dtype: torch.dtype = torch.float32,
    seed: int = 0,
    activation_checkpointing: bool = False,
    compile_blocks: bool = False,
    reshard_after_forward: bool = True,
) -> Transformer:
    """Meta-device construction, tensor parallelism when ``mesh`` is ("dp", "tp"), per-block then
    root sharding over "dp", materialisation, initialisation."""
    with torch.device("meta"):
        model = Transformer(config)
    if mesh.mesh_dim_names == ("dp", "tp"):
        apply_tensor_parallel(model, mesh["tp"])
        mesh = mesh["dp"]
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for block in model.layers:
        block.activation_checkpointing = activation_checkpointing
        if compile_blocks:
            block.compile_body()
        fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    # The root keeps embedding, final norm and head; they are needed again right at backward's
    # start, so they stay gathered after forward.
    fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=False)
    model.to_empty(device=mesh.device_type)
    model.init_weights(seed)
    return model


def token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross entropy, in fp32 whatever the logits' dtype."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())


def loss_and_backward(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = token_loss,
) -> torch.Tensor:
    loss = loss_fn(model(inputs), targets)
    loss.backward()
    return loss.detach()


def make_optimizer(
    model: torch.nn.Module, args: argparse.Namespace, device_type: str
) -> torch.optim.Optimizer:
    """``--optimizer`` over the model's parameters, at ``--lr`` and ``--weight-decay``."""
    if args.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    # On CUDA the fused kernel: one launch for every parameter's update instead of a few per
    # tensor list (the update is the same arithmetic).
    return torch.optim.AdamW(
        model.parameters(),
        lr=args.lr,
        betas=(0.9, 0.95),
        weight_decay=args.weight_decay,
        fused=device_type == "cuda",
    )


def loss_function(compile_: bool) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``token_loss``, compiled with ``--compile``: the fp32 upcast of the logits (batch x seq x
    vocab) then fuses into the log-softmax instead of being written out."""
    return torch.compile(token_loss) if compile_ else token_loss


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    grad_clip: float,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = token_loss,
) -> torch.Tensor:
    loss = loss_and_backward(model, inputs, targets, loss_fn)
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss


def learning_rate(step: int, *, peak: float, warmup_steps: int) -> float:
    """Linear warm-up to ``peak``, then constant; a function of the step alone, so resuming
    needs no scheduler state."""
    if warmup_steps <= 0:
        return peak
    return peak * min(1.0, step / warmup_steps)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m mlcluster_workloads.fsdp",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", choices=sorted(CONFIGS), default="tiny")
    parser.add_argument("--seq-len", type=int, default=128, help="tokens per sample")
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per rank per step")
    parser.add_argument("--steps", type=int, default=20, help="last step to run (1-based)")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument(
        "--optimizer",
        choices=("adamw", "sgd"),
        default="adamw",
        help="sgd's steps scale with the gradient, so a summed instead of averaged gradient shows",
    )
    parser.add_argument("--lr-warmup-steps", type=int, default=0)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm; 0: off")
    parser.add_argument("--dtype", choices=("auto", "bf16", "fp32"), default="auto")
    parser.add_argument("--activation-checkpointing", action="store_true")
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile each block and the loss"
    )
    parser.add_argument(
        "--no-reshard-after-forward",
        action="store_true",
        help="keep blocks gathered between forward and backward (ZeRO-2-like, more memory)",
    )
    parser.add_argument(
        "--tp",
        type=int,
        default=1,
        help="tensor-parallel degree: groups of this many consecutive ranks split each layer "
        "and read the same data; data-parallel degree = world size / tp",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-file", help="flat little-endian token-id file; default synthetic")
    parser.add_argument("--data-dtype", choices=sorted(TOKEN_DTYPES), default="uint16")
    parser.add_argument("--shuffle", action="store_true", help="permute windows every epoch")
    checkpoint.add_arguments(parser)
    dist.add_arguments(parser)
    metrics.add_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    stream = metrics.json_stream()  # from here on, fd 1 carries JSON lines only
    ctx = dist.init(args.backend, args.device, args.dist_timeout)
    try:
        run(args, ctx, stream, checkpoint.StopRequest())
    finally:
        dist.shutdown()


def run(
    args: argparse.Namespace,
    ctx: dist.DistContext,
    stream: TextIO,
    stop: checkpoint.StopRequest | None = None,
) -> None:
    config = dataclasses.replace(CONFIGS[args.config], max_seq_len=args.seq_len)
    param_dtype = resolve_dtype(args.dtype, ctx.device)
    mesh = make_mesh(ctx.device.type, ctx.world_size, args.tp)
    if args.tp > 1:
        check_tensor_parallel(config, args.tp, args.seq_len)
    dp_mesh = mesh["dp"]  # the ranks of one tensor-parallel group share a data-parallel rank
    model = build_model(
        config,
        mesh,
        param_dtype=param_dtype,
        seed=args.seed,
        activation_checkpointing=args.activation_checkpointing,
        compile_blocks=args.compile,
        reshard_after_forward=not args.no_reshard_after_forward,
    )
    optimizer = make_optimizer(model, args, ctx.device.type)
    loss_fn = loss_function(args.compile)
    if args.data_file:
        source = TokenFile(args.data_file, args.seq_len, dtype=args.data_dtype)
    else:
        source = SyntheticTokens(config.vocab_size, args.seq_len, seed=args.seed)
    sampler = ShardedSampler(
        source.num_windows,
        args.batch_size,
        dp_mesh.get_local_rank(),
        dp_mesh.size(),
        seed=args.seed,
        shuffle=args.shuffle,
    )

    checkpointer = (
        Checkpointer(args.checkpoint_dir, keep=args.keep_checkpoints)
        if (args.checkpoint_dir)
        else None
    )
    start_step = 0
    if checkpointer is not None and not args.no_resume:
        latest = checkpointer.latest()
        if latest is not None:
            train = checkpointer.load(latest, model, optimizer, TRAIN_KEYS)
            if train["samples_consumed"] != train["step"] * sampler.global_batch:
                raise SystemExit(
                    f"checkpoint step {latest} consumed {train['samples_consumed']} samples, "
                    f"but {train['step']} steps of the global batch {sampler.global_batch} "
                    "would be a different data position: resume with the same global batch"
                )
            start_step = train["step"]

    reporter = training_reporter(
        "fsdp",
        config,
        args,
        ctx,
        stream,
        global_batch=sampler.global_batch,
        param_dtype=param_dtype,
        extra={
            "activation_checkpointing": args.activation_checkpointing,
            "compile": args.compile,
            "reshard_after_forward": not args.no_reshard_after_forward,
            "dp": dp_mesh.size(),
            "tp": args.tp,
            "resumed_from_step": start_step or None,
        },
    )
    if start_step:
        reporter.emit({"event": "resume", "case": "fsdp", "step": start_step})

    rank_report = metrics.RankReport(args.debug_report, ctx.rank, ctx.world_size)
    stop = stop or checkpoint.StopRequest(install=False)
    save = (
        None
        if checkpointer is None
        else lambda step, train: checkpointer.save(step, model, optimizer, train)
    )
    stopped_early = False
    for step in range(start_step + 1, args.steps + 1):
        indices = sampler.indices(step - 1)
        tokens = source.batch(indices)
        if tokens.max() >= config.vocab_size:
            raise SystemExit(
                f"token id {tokens.max()} in the data is outside the {args.config} vocabulary "
                f"of {config.vocab_size}"
            )
        tokens = torch.from_numpy(tokens).to(ctx.device, non_blocking=True)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, peak=args.lr, warmup_steps=args.lr_warmup_steps)
        dist.synchronize(ctx.device)
        started = time.perf_counter()
        loss = train_step(
            model,
            optimizer,
            tokens[:, :-1],
            tokens[:, 1:],
            grad_clip=args.grad_clip,
            loss_fn=loss_fn,
        )
        dist.synchronize(ctx.device)
        elapsed = time.perf_counter() - started
        reporter.step(step, dist.mean_across_ranks(loss), elapsed)
        rank_report.step(step, indices, loss)
        stopped_early = checkpoint.after_step(
            args,
            step,
            stop=stop,
            any_rank=lambda flag: dist.any_rank(flag, ctx.device),
            save=save,
            reporter=reporter,
            global_batch=sampler.global_batch,
        )
        if stopped_early:
            break
    reporter.summary(stopped_early=stopped_early)
    if rank_report.enabled:
        rank_report.finish(dist.host_parameters(model))


if __name__ == "__main__":
    main()
