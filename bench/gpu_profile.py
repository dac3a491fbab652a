"""Where the fsdp case's step time goes on one GPU: GPU kernel time by kind against wall time.

    torchrun --standalone --nproc_per_node=1 bench/gpu_profile.py [--config 1b --batch-size 8
        --seq-len 2048 --warmup 8 --steps 5 --eager --reshard]

Builds the model, the optimizer and the loss with the fsdp case's own functions
(``fsdp.build_model``, ``fsdp.train_step``, ``fsdp.token_loss``) and its MFU setting (bf16
parameters, fp32 reduction, compiled blocks and loss, fused AdamW, blocks kept gathered), runs
``--warmup`` steps, then records ``--steps`` with ``torch.profiler`` and prints one JSON line:
wall time per step, the GPU's busy time per step (the union of kernel intervals, so that
overlapping kernels count once), the idle rest (launch gaps, CPU overhead, synchronisation),
and kernel time per kind (matrix products, attention, optimizer, fused element-wise (Triton),
communication, copies, other) with the ten longest kernels. Runs on CPU too (``--cpu``, tiny
config) to test the script itself: there are no GPU kernels then.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import time

import torch
from mlcluster_workloads import dist, fsdp
from mlcluster_workloads.data import SyntheticTokens
from mlcluster_workloads.llama import CONFIGS
from torch.profiler import ProfilerActivity, profile

KINDS = (
    ("attention", re.compile(r"flash|fmha|attention|sdpa", re.I)),
    ("matmul", re.compile(r"gemm|sm90|cutlass|cublas|nvjet|matmul|xmma", re.I)),
    ("optimizer", re.compile(r"adam|multi_tensor|foreach|fused_optim", re.I)),
    ("communication", re.compile(r"nccl", re.I)),
    ("fused element-wise (Triton)", re.compile(r"^triton_", re.I)),
    ("copies", re.compile(r"memcpy|memset|copy", re.I)),
)


def kind_of(name: str) -> str:
    return next((kind for kind, pattern in KINDS if pattern.search(name)), "other")


def union_us(intervals: list[tuple[float, float]]) -> float:
    """Total length of the union of [start, end) intervals (microseconds)."""
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if start >= end:
            total += stop - start
            end = stop
        elif stop > end:
            total += stop - end
            end = stop
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="1b", choices=sorted(CONFIGS))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--eager", action="store_true", help="no torch.compile")
    parser.add_argument("--reshard", action="store_true", help="reshard blocks after forward")
    parser.add_argument("--cpu", action="store_true", help="smoke test on CPU")
    args = parser.parse_args(argv)

    ctx = dist.init("auto", "cpu" if args.cpu else "auto")
    if ctx.device.type != "cuda" and not args.cpu:
        sys.exit("gpu_profile: no CUDA device (--cpu runs the script itself on CPU)")
    config = dataclasses.replace(CONFIGS[args.config], max_seq_len=args.seq_len)
    dtype = torch.bfloat16 if ctx.device.type == "cuda" else torch.float32
    mesh = fsdp.make_mesh(ctx.device.type, ctx.world_size, 1)
    model = fsdp.build_model(
        config,
        mesh,
        param_dtype=dtype,
        compile_blocks=not args.eager,
        reshard_after_forward=args.reshard,
    )
    # the case's own optimizer (AdamW, fused on CUDA) and loss at its defaults
    case_args = fsdp.parse_args(["--config", args.config] + ([] if args.eager else ["--compile"]))
    optimizer = fsdp.make_optimizer(model, case_args, ctx.device.type)
    loss_fn = fsdp.loss_function(case_args.compile)
    source = SyntheticTokens(config.vocab_size, args.seq_len)
    tokens = torch.from_numpy(source.batch(list(range(args.batch_size)))).to(ctx.device)

    def step() -> float:
        loss = fsdp.train_step(
            model,
            optimizer,
            tokens[:, :-1],
            tokens[:, 1:],
            grad_clip=case_args.grad_clip,
            loss_fn=loss_fn,
        )
        return float(loss)

    for _ in range(args.warmup):
        step()
    dist.synchronize(ctx.device)
    activities = [ProfilerActivity.CPU] + (
        [ProfilerActivity.CUDA] if ctx.device.type == "cuda" else []
    )
    with profile(activities=activities) as prof:
        started = time.perf_counter()
        for _ in range(args.steps):
            step()
        dist.synchronize(ctx.device)
        wall_s = (time.perf_counter() - started) / args.steps

    kernels = [
        e
        for e in prof.events()
        if e.device_type == torch.autograd.DeviceType.CUDA and e.time_range.end > 0
    ]
    busy_us = union_us([(e.time_range.start, e.time_range.end) for e in kernels]) / args.steps
    by_kind: dict[str, float] = {}
    by_name: dict[str, float] = {}
    for e in kernels:
        us = (e.time_range.end - e.time_range.start) / args.steps
        by_kind[kind_of(e.name)] = by_kind.get(kind_of(e.name), 0.0) + us
        by_name[e.name] = by_name.get(e.name, 0.0) + us
    wall_ms = wall_s * 1e3
    busy_ms = busy_us / 1e3
    result = {
        "event": "gpu_profile",
        "config": args.config,
        "batch": args.batch_size,
        "seq_len": args.seq_len,
        "compile": not args.eager,
        "reshard_after_forward": args.reshard,
        "torch": torch.__version__,
        "wall_ms_per_step": round(wall_ms, 2),
        "gpu_busy_ms_per_step": round(busy_ms, 2),
        "gpu_idle_ms_per_step": round(wall_ms - busy_ms, 2),
        "gpu_busy_fraction": round(busy_ms / wall_ms, 4) if wall_ms else None,
        "kernels_per_step": len(kernels) // args.steps,
        "kernel_ms_per_step_by_kind": {
            k: round(v / 1e3, 2) for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])
        },
        "top_kernels_ms_per_step": [
            [name[:90], round(us / 1e3, 3)]
            for name, us in sorted(by_name.items(), key=lambda kv: -kv[1])[:10]
        ],
    }
    if ctx.is_main:
        print(json.dumps(result), flush=True)
    dist.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
