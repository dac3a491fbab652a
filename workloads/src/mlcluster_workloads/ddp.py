"""DistributedDataParallel: an MLP learns a fixed random teacher network from noisy samples.

    torchrun --nproc_per_node=2 -m mlcluster_workloads.ddp --steps 50
    python -m mlcluster_workloads.ddp --steps 50          # one process, same code path

Every rank reads its own disjoint block of each global batch (see data.py); DDP averages the
gradients, so a step equals one single-process step on the whole global batch. With
``--checkpoint-dir`` the run saves every ``--checkpoint-every`` steps (and when SIGTERM or SIGUSR1
asks it to stop) and resumes from the newest complete checkpoint there (checkpoint.py).
"""

from __future__ import annotations

import argparse
import time
from typing import TextIO

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from mlcluster_workloads import checkpoint, dist, metrics
from mlcluster_workloads.data import ShardedSampler, TeacherRegression

TRAIN_KEYS = ["step", "samples_consumed"]


def build_model(in_features: int, hidden: int, depth: int, *, seed: int) -> nn.Sequential:
    """``depth`` hidden Linear+GELU layers and a scalar head, initialised from ``seed``."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        layers: list[nn.Module] = []
        width = in_features
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.GELU()]
            width = hidden
        layers.append(nn.Linear(width, 1))
        return nn.Sequential(*layers)
    finally:
        torch.random.set_rng_state(generator_state)


OPTIMIZERS = ("adamw", "sgd")


def make_optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    return torch.optim.AdamW(params, lr=lr, weight_decay=0.0)


def weight_shapes(model: nn.Module) -> list[tuple[int, int]]:
    return [tuple(m.weight.shape) for m in model.modules() if isinstance(m, nn.Linear)]


def train_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, inputs: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """One optimizer step on this rank's batch; returns the local (detached) loss."""
    optimizer.zero_grad(set_to_none=True)
    loss = F.mse_loss(model(inputs), targets)
    loss.backward()
    optimizer.step()
    return loss.detach()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m mlcluster_workloads.ddp", description=__doc__)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=64, help="samples per rank per step")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument(
        "--optimizer",
        choices=OPTIMIZERS,
        default="adamw",
        help="sgd's steps scale with the gradient, so a summed instead of averaged gradient shows",
    )
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--depth", type=int, default=2, help="hidden layers")
    parser.add_argument("--in-features", type=int, default=32)
    parser.add_argument("--num-samples", type=int, default=8192)
    parser.add_argument("--seed", type=int, default=0)
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
    x, y = map(
        torch.from_numpy,
        TeacherRegression(
            num_samples=args.num_samples, in_features=args.in_features, seed=args.seed
        ).arrays(),
    )
    sampler = ShardedSampler(
        args.num_samples, args.batch_size, ctx.rank, ctx.world_size, seed=args.seed, shuffle=True
    )
    net = build_model(args.in_features, args.hidden, args.depth, seed=args.seed)
    model = DistributedDataParallel(
        net.to(ctx.device),
        device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
    )
    optimizer = make_optimizer(args.optimizer, model.parameters(), args.lr)
    checkpointer = (
        checkpoint.Checkpointer(args.checkpoint_dir, keep=args.keep_checkpoints)
        if args.checkpoint_dir
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
    rank_report = metrics.RankReport(args.debug_report, ctx.rank, ctx.world_size)
    reporter = metrics.Reporter(
        case="ddp",
        world_size=ctx.world_size,
        device=dist.reporter_device(ctx.device),
        samples_per_step=sampler.global_batch,
        flops_per_sample=metrics.mlp_flops_per_sample(weight_shapes(net)),
        warmup_steps=args.warmup_steps,
        peak_tflops=args.peak_tflops,
        enabled=ctx.is_main,
        stream=stream,
        extra={
            "backend": ctx.backend,
            "global_batch": sampler.global_batch,
            "resumed_from_step": start_step or None,
        },
    )
    if start_step:
        reporter.emit({"event": "resume", "case": "ddp", "step": start_step})
    stop = stop or checkpoint.StopRequest(install=False)
    save = (
        None
        if checkpointer is None
        else lambda step, train: checkpointer.save(step, model, optimizer, train)
    )
    stopped_early = False
    for step in range(start_step + 1, args.steps + 1):
        indices = sampler.indices(step - 1)
        index = torch.from_numpy(indices)
        inputs, targets = x[index].to(ctx.device), y[index].to(ctx.device)
        dist.synchronize(ctx.device)
        started = time.perf_counter()
        loss = train_step(model, optimizer, inputs, targets)
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
        rank_report.finish(dist.host_parameters(net))


if __name__ == "__main__":
    main()
