"""megatron-core training of the fsdp case's Llama-style decoder: ``GPTModel``, tensor and
pipeline parallelism, megatron's schedules and gradient buffers.

    torchrun --nproc_per_node=8 -m mlcluster_workloads.megatron_gpt --config 1b --seq-len 2048 \\
        --batch-size 4 --tp 2 --pp 2 --microbatches 4 --steps 50

The model is megatron-core's ``GPTModel`` with its local (non-Transformer-Engine) layer spec,
shaped from ``llama.CONFIGS[--config]``: RMSNorm, rotary embeddings (``rope_theta``), SwiGLU, no
biases, grouped-query attention, the embedding tied to the output head when the config ties it.
Its core attention is torch's ``scaled_dot_product_attention`` (flash on CUDA, as in the fsdp
case); ``--attention local`` keeps megatron's own ``DotProductAttention``, which writes out the
whole batch x heads x seq x seq score matrix (much more memory).

Ranks form ``world / (tp * pp)`` data-parallel replicas of ``tp * pp`` ranks
(``parallel_state.initialize_model_parallel``); each replica reads its own block of every global
batch (data.py), ``--microbatches`` micro batches of ``--batch-size`` sequences per step, run by
``get_forward_backward_func`` (1F1B across the stages when ``--pp`` > 1). Gradients accumulate in
fp32 in megatron's ``DistributedDataParallel`` buffers and are averaged over the replicas (and the
tied embedding's over the first and last stage) by ``finalize_model_grads``; torch's AdamW (fused
on CUDA) steps fp32 master copies of the local parameters, which are then copied into the bf16
model. Loss: mean next-token cross entropy (megatron's per-token loss, averaged). FLOPs and MFU
are counted as in the fsdp case.

megatron-core needs CUDA (its schedules and buffers allocate on ``torch.cuda.current_device()``),
so the case refuses to start without it; megatron is imported only inside the functions that use
it, so the flags and the configuration mapping work without it installed.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import time
from typing import Any, TextIO

import torch
import torch.nn.functional as F

from mlcluster_workloads import dist, metrics
from mlcluster_workloads.data import ShardedSampler, SyntheticTokens
from mlcluster_workloads.llama import CONFIGS, LlamaConfig, training_reporter

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
ATTENTION = ("sdpa", "local")


def resolve_dtype(requested: str, cuda: bool) -> torch.dtype:
    if requested == "auto":
        return torch.bfloat16 if cuda else torch.float32
    return DTYPES[requested]


def parallel_layout(world_size: int, tp: int, pp: int) -> int:
    """The data-parallel degree; SystemExit unless tp * pp divides the world size."""
    if tp < 1 or pp < 1:
        raise SystemExit(f"--tp {tp} and --pp {pp} must be at least 1")
    if world_size % (tp * pp):
        raise SystemExit(
            f"--tp {tp} x --pp {pp} = {tp * pp} ranks per model replica must divide the world "
            f"size {world_size}"
        )
    return world_size // (tp * pp)


def check_model_split(config: LlamaConfig, tp: int, pp: int) -> None:
    """What megatron splits over the tensor- and pipeline-parallel ranks must divide evenly."""
    splits = [
        ("n_heads", config.n_heads, "--tp", tp),
        ("n_kv_heads", config.n_kv_heads, "--tp", tp),
        ("ffn_dim", config.ffn_dim, "--tp", tp),
        ("vocab_size", config.vocab_size, "--tp", tp),
        ("n_layers", config.n_layers, "--pp", pp),
    ]
    bad = [f"{name} {value} by {flag} {by}" for name, value, flag, by in splits if value % by]
    if bad:
        raise SystemExit(f"megatron cannot split {', '.join(bad)}")


def transformer_config_kwargs(
    config: LlamaConfig,
    *,
    tp: int = 1,
    pp: int = 1,
    dtype: torch.dtype = torch.bfloat16,
    use_cpu_initialization: bool = False,
) -> dict[str, Any]:
    """Keyword arguments of megatron's ``TransformerConfig`` for one of our Llama configs."""
    return {
        "num_layers": config.n_layers,
        "hidden_size": config.dim,
        "num_attention_heads": config.n_heads,
        "num_query_groups": config.n_kv_heads,
        "kv_channels": config.head_dim,
        "ffn_hidden_size": config.ffn_dim,
        "gated_linear_unit": True,  # SwiGLU: silu(gate) * up, one fused fc1 of 2 * ffn_dim
        "activation_func": F.silu,
        "normalization": "RMSNorm",
        "layernorm_epsilon": config.norm_eps,
        "add_bias_linear": False,
        "add_qkv_bias": False,
        "hidden_dropout": 0.0,
        "attention_dropout": 0.0,
        "init_method_std": 0.02,
        "bf16": dtype == torch.bfloat16,
        "params_dtype": dtype,
        "pipeline_dtype": dtype,
        "tensor_model_parallel_size": tp,
        "pipeline_model_parallel_size": pp,
        # torch's RMSNorm (the local spec's) refuses sequence parallelism
        "sequence_parallel": False,
        "use_cpu_initialization": use_cpu_initialization,
        # no Apex or Transformer Engine: none of their fused kernels
        "gradient_accumulation_fusion": False,
        "bias_activation_fusion": False,
        "masked_softmax_fusion": False,
        "apply_rope_fusion": False,
        "persist_layer_norm": False,
        "cross_entropy_loss_fusion": False,
    }


def gpt_model_kwargs(config: LlamaConfig, seq_len: int) -> dict[str, Any]:
    """Keyword arguments of ``GPTModel`` besides config, layer spec and pipeline stage."""
    return {
        "vocab_size": config.vocab_size,
        "max_sequence_length": seq_len,
        "position_embedding_type": "rope",
        "rotary_base": int(config.rope_theta),
        "rotary_percent": 1.0,
        "share_embeddings_and_output_weights": config.tie_embeddings,
        "parallel_output": True,  # the loss is vocab-parallel cross entropy
    }


def sdpa_attention_class() -> type:
    """A core-attention module for megatron's ``SelfAttention`` on torch's
    ``scaled_dot_product_attention`` (causal, grouped-query inside the kernel)."""
    from megatron.core import parallel_state
    from megatron.core.transformer.module import MegatronModule

    class SDPAttention(MegatronModule):
        def __init__(
            self,
            config,
            layer_number,
            attn_mask_type,
            attention_type,
            attention_dropout=None,
            softmax_scale=None,
            cp_comm_type=None,
            pg_collection=None,
        ) -> None:
            super().__init__(config=config)
            tp = (
                pg_collection.tp.size()
                if pg_collection is not None and getattr(pg_collection, "tp", None) is not None
                else parallel_state.get_tensor_model_parallel_world_size()
            )
            self.heads = config.num_attention_heads // tp
            self.groups = config.num_query_groups // tp
            self.softmax_scale = softmax_scale

        def forward(
            self,
            query,
            key,
            value,
            attention_mask,
            attn_mask_type=None,
            attention_bias=None,
            packed_seq_params=None,
        ):
            if attention_bias is not None or packed_seq_params is not None:
                raise ValueError(
                    "SDPAttention takes neither an attention bias nor packed sequences"
                )
            # megatron's [seq, batch, heads, head_dim] -> SDPA's [batch, heads, seq, head_dim]
            q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
            out = F.scaled_dot_product_attention(
                q,
                k,
                v,
                is_causal=True,
                scale=self.softmax_scale,
                enable_gqa=self.groups != self.heads,
            )
            seq, batch = query.shape[0], query.shape[1]
            return out.permute(2, 0, 1, 3).reshape(seq, batch, -1)  # [seq, batch, hidden / tp]

    return SDPAttention


def layer_spec(attention: str = "sdpa"):
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    spec = get_gpt_layer_local_spec(normalization="RMSNorm")
    if attention == "sdpa":
        spec.submodules.self_attention.submodules.core_attention = sdpa_attention_class()
    return spec


def build_model(
    config: LlamaConfig,
    seq_len: int,
    *,
    tp: int = 1,
    pp: int = 1,
    dtype: torch.dtype = torch.bfloat16,
    attention: str = "sdpa",
    use_cpu_initialization: bool = False,
):
    """This rank's stage of the GPTModel (parallel_state must be initialised)."""
    from megatron.core import parallel_state
    from megatron.core.models.gpt import GPTModel
    from megatron.core.transformer.transformer_config import TransformerConfig

    tconfig = TransformerConfig(
        **transformer_config_kwargs(
            config, tp=tp, pp=pp, dtype=dtype, use_cpu_initialization=use_cpu_initialization
        )
    )
    return GPTModel(
        config=tconfig,
        transformer_layer_spec=layer_spec(attention),
        pre_process=parallel_state.is_pipeline_first_stage(),
        post_process=parallel_state.is_pipeline_last_stage(),
        **gpt_model_kwargs(config, seq_len),
    )


def counted_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The local parameters that count once over the model-parallel ranks: not the copies of
    tensor-parallel duplicates (norms) on tp ranks > 0, nor the last stage's copy of a tied
    embedding."""
    from megatron.core.tensor_parallel import param_is_not_tensor_parallel_duplicate
    from megatron.core.transformer.module import param_is_not_shared

    return [
        p
        for p in model.parameters()
        if param_is_not_shared(p) and param_is_not_tensor_parallel_duplicate(p)
    ]


def model_parameter_count(model: torch.nn.Module, device: torch.device) -> int:
    """Parameters of the whole model, summed over the tensor- and pipeline-parallel ranks."""
    from megatron.core import parallel_state

    count = torch.tensor(
        [sum(p.numel() for p in counted_parameters(model))], dtype=torch.int64, device=device
    )
    torch.distributed.all_reduce(count, group=parallel_state.get_model_parallel_group())
    return int(count.item())


def clip_gradients(model: torch.nn.Module, max_norm: float) -> float:
    """Scale every ``main_grad`` so that the global norm (over the model-parallel ranks, each
    parameter once) is at most ``max_norm``; returns the norm before clipping."""
    from megatron.core import parallel_state

    counted = [p.main_grad for p in counted_parameters(model)]
    squares = torch.stack([g.float().square().sum() for g in counted]).sum()
    torch.distributed.all_reduce(squares, group=parallel_state.get_model_parallel_group())
    norm = math.sqrt(squares.item())
    if max_norm > 0 and norm > max_norm:
        torch._foreach_mul_([p.main_grad for p in model.parameters()], max_norm / (norm + 1e-6))
    return norm


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m mlcluster_workloads.megatron_gpt",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", choices=sorted(CONFIGS), default="tiny")
    parser.add_argument("--seq-len", type=int, default=128, help="tokens per sample")
    parser.add_argument(
        "--batch-size", type=int, default=8, help="sequences per micro batch per data-parallel rank"
    )
    parser.add_argument(
        "--microbatches",
        type=int,
        default=1,
        help="micro batches per step (gradient accumulation; the pipeline's fill with --pp)",
    )
    parser.add_argument("--steps", type=int, default=20, help="last step to run (1-based)")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm; 0: off")
    parser.add_argument("--tp", type=int, default=1, help="tensor-parallel degree")
    parser.add_argument("--pp", type=int, default=1, help="pipeline-parallel degree")
    parser.add_argument("--dtype", choices=("auto", "bf16", "fp32"), default="auto")
    parser.add_argument(
        "--attention",
        choices=ATTENTION,
        default="sdpa",
        help="core attention: torch's scaled_dot_product_attention, or megatron's local "
        "DotProductAttention (the full score matrix in memory)",
    )
    parser.add_argument("--seed", type=int, default=0)
    dist.add_arguments(parser)
    metrics.add_arguments(parser)
    args = parser.parse_args(argv)
    for name in ("seq_len", "batch_size", "microbatches", "steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def require_cuda(args: argparse.Namespace) -> None:
    if args.device == "cpu" or not torch.cuda.is_available():
        raise SystemExit(
            "megatron-core needs CUDA: its schedules, gradient buffers and attention allocate on "
            "torch.cuda.current_device(), and torch sees no CUDA device here"
            + (" (--device cpu)" if args.device == "cpu" else "")
            + "; on CPU nodes run the fsdp case instead"
        )


def import_megatron():
    try:
        import megatron.core
    except ImportError as err:
        raise SystemExit(
            f"megatron-core is not installed ({err}): pip install megatron-core"
        ) from None
    return megatron.core


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # what the flags alone decide fails first, then what the machine lacks
    parallel_layout(int(os.environ.get("WORLD_SIZE", "1")), args.tp, args.pp)
    check_model_split(CONFIGS[args.config], args.tp, args.pp)
    require_cuda(args)
    import_megatron()
    stream = metrics.json_stream()  # from here on, fd 1 carries JSON lines only
    ctx = dist.init(args.backend, args.device, args.dist_timeout)
    try:
        run(args, ctx, stream)
    finally:
        from megatron.core import parallel_state

        parallel_state.destroy_model_parallel()
        dist.shutdown()


def run(args: argparse.Namespace, ctx: dist.DistContext, stream: TextIO) -> None:
    megatron_core = import_megatron()
    from megatron.core import parallel_state, tensor_parallel
    from megatron.core.distributed import (
        DistributedDataParallel,
        DistributedDataParallelConfig,
        finalize_model_grads,
    )
    from megatron.core.pipeline_parallel import get_forward_backward_func

    config = dataclasses.replace(CONFIGS[args.config], max_seq_len=args.seq_len)
    dp = parallel_layout(ctx.world_size, args.tp, args.pp)
    check_model_split(config, args.tp, args.pp)
    dtype = resolve_dtype(args.dtype, ctx.device.type == "cuda")

    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=args.tp, pipeline_model_parallel_size=args.pp
    )
    tensor_parallel.model_parallel_cuda_manual_seed(args.seed)
    module = build_model(
        config, args.seq_len, tp=args.tp, pp=args.pp, dtype=dtype, attention=args.attention
    )
    tconfig = module.config
    model = DistributedDataParallel(
        config=tconfig,
        ddp_config=DistributedDataParallelConfig(
            grad_reduce_in_fp32=True, overlap_grad_reduce=False, use_distributed_optimizer=False
        ),
        module=module,
    )
    model.broadcast_params()  # every data-parallel replica starts from replica 0's weights
    tconfig.no_sync_func = model.no_sync
    tconfig.finalize_model_grads_func = finalize_model_grads
    params_total = model_parameter_count(module, ctx.device)

    params = [p for p in model.parameters() if p.requires_grad]
    masters = [p.detach().clone().float() for p in params]  # fp32 master weights
    optimizer = torch.optim.AdamW(
        masters,
        lr=args.lr,
        betas=(0.9, 0.95),
        weight_decay=args.weight_decay,
        fused=ctx.device.type == "cuda",
    )

    dp_rank = parallel_state.get_data_parallel_rank()
    local_batch = args.batch_size * args.microbatches
    source = SyntheticTokens(config.vocab_size, args.seq_len, seed=args.seed)
    sampler = ShardedSampler(source.num_windows, local_batch, dp_rank, dp, seed=args.seed)
    positions = (
        torch.arange(args.seq_len, device=ctx.device).unsqueeze(0).expand(args.batch_size, -1)
    )

    def loss_func(per_token_loss: torch.Tensor):
        loss = per_token_loss.float().mean()
        # the schedule divides the returned loss in place by the micro batch count: a copy
        return loss, {"loss": loss.detach().clone()}

    def forward_step(data_iterator, stage):
        tokens = next(data_iterator)
        output = stage(tokens[:, :-1], positions, None, labels=tokens[:, 1:])
        return output, loss_func

    forward_backward = get_forward_backward_func()
    last_stage = parallel_state.is_pipeline_last_stage()

    reporter = training_reporter(
        "megatron",
        config,
        args,
        ctx,
        stream,
        global_batch=sampler.global_batch,
        param_dtype=dtype,
        extra={
            "params": params_total,
            "llama_params": config.total_params(),
            "megatron_core": megatron_core.__version__,
            "tp": args.tp,
            "pp": args.pp,
            "dp": dp,
            "microbatches": args.microbatches,
            "micro_batch_size": args.batch_size,
            "attention": args.attention,
        },
    )

    for step in range(1, args.steps + 1):
        tokens = source.batch(sampler.indices(step - 1))
        tokens = torch.from_numpy(tokens).to(ctx.device, non_blocking=True)
        micro = iter(tokens.split(args.batch_size))
        dist.synchronize(ctx.device)
        started = time.perf_counter()
        model.zero_grad_buffer()
        losses = forward_backward(
            forward_step_func=forward_step,
            data_iterator=micro,
            model=[model],
            num_microbatches=args.microbatches,
            seq_length=args.seq_len,
            micro_batch_size=args.batch_size,
            forward_only=False,
        )
        clip_gradients(module, args.grad_clip)
        for param, master in zip(params, masters, strict=True):
            master.grad = param.main_grad
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for param, master in zip(params, masters, strict=True):
                param.copy_(master)
        dist.synchronize(ctx.device)
        elapsed = time.perf_counter() - started
        # The loss exists on the last stage only: it reaches the other stages through a sum.
        loss = (
            torch.stack([entry["loss"] for entry in losses]).mean()
            if last_stage
            else torch.zeros((), device=ctx.device)
        )
        if args.pp > 1:
            torch.distributed.all_reduce(
                loss, group=parallel_state.get_pipeline_model_parallel_group()
            )
        reporter.step(step, dist.mean_across_ranks(loss), elapsed)
    reporter.summary()


if __name__ == "__main__":
    main()
