"""A Llama-style decoder: RMSNorm, rotary position embeddings, SwiGLU, grouped-query causal
attention through ``F.scaled_dot_product_attention``.

Built on the meta device and initialised after sharding: ``init_weights`` draws every parameter
from a generator seeded by (seed, parameter name) at its full shape and keeps the local shard, so
the weights are the same for any world size or sharding (on one device type).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Any, TextIO

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor
from torch.utils.checkpoint import checkpoint

from mlcluster_workloads import dist, metrics


@dataclass(frozen=True)
class LlamaConfig:
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    ffn_dim: int
    vocab_size: int
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    max_seq_len: int = 2048
    tie_embeddings: bool = False

    def __post_init__(self) -> None:
        if self.dim % self.n_heads or self.n_heads % self.n_kv_heads:
            raise ValueError("dim must divide into n_heads, and n_heads into n_kv_heads")
        if self.head_dim % 2:
            raise ValueError("rotary embeddings need an even head dimension")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    def matmul_params(self) -> int:
        """Weights used in matrix multiplies: all projections and the output head."""
        q_and_o = 2 * self.dim * self.n_heads * self.head_dim
        k_and_v = 2 * self.dim * self.n_kv_heads * self.head_dim
        swiglu = 3 * self.dim * self.ffn_dim
        return self.n_layers * (q_and_o + k_and_v + swiglu) + self.dim * self.vocab_size

    def total_params(self) -> int:
        """Distinct parameters: matmul weights, the embedding unless tied, and norm weights."""
        embedding = 0 if self.tie_embeddings else self.vocab_size * self.dim
        norms = (2 * self.n_layers + 1) * self.dim
        return self.matmul_params() + embedding + norms


# Shapes of the Llama 3 family (1b: Llama 3.2 1B; 8b, 70b: Llama 3 / 3.1) without rope scaling;
# tiny and small are for CI and CPU benchmarks.
CONFIGS: dict[str, LlamaConfig] = {
    "tiny": LlamaConfig(dim=256, n_layers=2, n_heads=8, n_kv_heads=4, ffn_dim=768, vocab_size=512),
    "small": LlamaConfig(
        dim=768, n_layers=12, n_heads=12, n_kv_heads=4, ffn_dim=2048, vocab_size=32000
    ),
    "1b": LlamaConfig(
        dim=2048,
        n_layers=16,
        n_heads=32,
        n_kv_heads=8,
        ffn_dim=8192,
        vocab_size=128256,
        rope_theta=500000.0,
        max_seq_len=8192,
        tie_embeddings=True,
    ),
    "8b": LlamaConfig(
        dim=4096,
        n_layers=32,
        n_heads=32,
        n_kv_heads=8,
        ffn_dim=14336,
        vocab_size=128256,
        rope_theta=500000.0,
        max_seq_len=8192,
    ),
    "70b": LlamaConfig(
        dim=8192,
        n_layers=80,
        n_heads=64,
        n_kv_heads=8,
        ffn_dim=28672,
        vocab_size=128256,
        rope_theta=500000.0,
        max_seq_len=8192,
    ),
}


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


def rope_tables(head_dim: int, seq_len: int, theta: float, device: torch.device | None = None):
    """cos and sin of position * theta^(-2i/head_dim), each of shape (seq_len, head_dim / 2)."""
    exponents = torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim
    inverse_frequencies = theta**-exponents
    positions = torch.arange(seq_len, device=device, dtype=torch.float32)
    angles = torch.outer(positions, inverse_frequencies)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (first half, second half) pairs of x's last dimension; x is (B, T, heads, D)."""
    first, second = x.float().chunk(2, dim=-1)
    cos = cos[: x.shape[1], None, :]
    sin = sin[: x.shape[1], None, :]
    rotated = torch.cat((first * cos - second * sin, second * cos + first * sin), dim=-1)
    return rotated.type_as(x)


class Attention(nn.Module):
    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.n_kv_heads = config.n_kv_heads
        self.head_dim = config.head_dim
        self.wq = nn.Linear(config.dim, config.n_heads * config.head_dim, bias=False)
        self.wk = nn.Linear(config.dim, config.n_kv_heads * config.head_dim, bias=False)
        self.wv = nn.Linear(config.dim, config.n_kv_heads * config.head_dim, bias=False)
        self.wo = nn.Linear(config.n_heads * config.head_dim, config.dim, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = x.shape
        # -1 heads: under tensor parallelism each rank holds a slice of the heads (fsdp.py)
        q = self.wq(x).view(batch, seq, -1, self.head_dim)
        k = self.wk(x).view(batch, seq, -1, self.head_dim)
        v = self.wv(x).view(batch, seq, -1, self.head_dim)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        # Grouped-query attention inside the kernel (no repeated copy of k and v): each group of
        # n_heads / n_kv_heads query heads reads one key/value head.
        out = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, enable_gqa=self.n_kv_heads != self.n_heads
        )
        return self.wo(out.transpose(1, 2).reshape(batch, seq, -1))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)  # gate
        self.w3 = nn.Linear(dim, hidden, bias=False)  # up
        self.w2 = nn.Linear(hidden, dim, bias=False)  # down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(config.dim, config.norm_eps)
        self.attention = Attention(config)
        self.ffn_norm = RMSNorm(config.dim, config.norm_eps)
        self.feed_forward = FeedForward(config.dim, config.ffn_dim)
        self.activation_checkpointing = False
        self._body = self.body

    def compile_body(self) -> None:
        """Compile the block's arithmetic only; FSDP's hooks around it stay eager."""
        self._body = torch.compile(self.body)

    def body(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), cos, sin)
        return h + self.feed_forward(self.ffn_norm(h))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        if self.activation_checkpointing and torch.is_grad_enabled():
            return checkpoint(self._body, x, cos, sin, use_reentrant=False)
        return self._body(x, cos, sin)


class Transformer(nn.Module):
    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(TransformerBlock(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.output = nn.Linear(config.dim, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        cos, sin = rope_tables(config.head_dim, config.max_seq_len, config.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.shape[1] > self.config.max_seq_len:
            raise ValueError(f"sequence of {tokens.shape[1]} > max_seq_len")
        h = self.tok_embeddings(tokens)
        for layer in self.layers:
            h = layer(h, self.rope_cos, self.rope_sin)
        return self.output(self.norm(h))

    def init_std(self, name: str) -> float | None:
        """Standard deviation for a parameter; None for norm weights (ones)."""
        config = self.config
        if name.endswith("norm.weight"):
            return None
        if name == "tok_embeddings.weight":
            return config.dim**-0.5 if config.tie_embeddings else 1.0
        if name == "output.weight":
            return config.dim**-0.5
        if name.endswith(("wo.weight", "w2.weight")):  # writes into the residual stream
            return 0.02 / math.sqrt(2 * config.n_layers)
        return 0.02

    @torch.no_grad()
    def init_weights(self, seed: int = 0) -> None:
        """Fill parameters and rope buffers after ``to_empty``; see the module docstring."""
        for name, param in self.named_parameters():  # a tied weight is listed once
            full = torch.empty(param.shape, dtype=param.dtype, device=param.device)
            std = self.init_std(name)
            if std is None:
                full.fill_(1.0)
            else:
                generator = torch.Generator(device=full.device)
                generator.manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
                nn.init.trunc_normal_(full, 0.0, std, -3 * std, 3 * std, generator=generator)
            if isinstance(param, DTensor):
                full = distribute_tensor(
                    full, param.device_mesh, param.placements, src_data_rank=None
                )
            param.copy_(full)
        cos, sin = rope_tables(
            self.config.head_dim,
            self.config.max_seq_len,
            self.config.rope_theta,
            device=self.rope_cos.device,
        )
        self.rope_cos.copy_(cos)
        self.rope_sin.copy_(sin)


def training_reporter(
    case: str,
    config: LlamaConfig,
    args: Any,
    ctx: dist.DistContext,
    stream: TextIO,
    *,
    global_batch: int,
    param_dtype: torch.dtype,
    extra: dict[str, Any],
) -> metrics.Reporter:
    """The metrics reporter of a case that trains this model (fsdp, deepspeed, megatron): FLOPs
    per token from the config's matmul weights at ``args.seq_len``, the summary fields every such
    case reports, then the case's own ``extra`` (which may override them)."""
    flops_per_token = metrics.transformer_flops_per_token(
        matmul_params=config.matmul_params(),
        n_layers=config.n_layers,
        n_heads=config.n_heads,
        head_dim=config.head_dim,
        seq_len=args.seq_len,
    )
    return metrics.Reporter(
        case=case,
        world_size=ctx.world_size,
        device=dist.reporter_device(ctx.device),
        samples_per_step=global_batch,
        flops_per_sample=flops_per_token * args.seq_len,
        tokens_per_sample=args.seq_len,
        warmup_steps=args.warmup_steps,
        peak_tflops=args.peak_tflops,
        enabled=ctx.is_main,
        stream=stream,
        extra={
            "config": args.config,
            "params": config.total_params(),
            "matmul_params": config.matmul_params(),
            "flops_per_token": flops_per_token,
            "seq_len": args.seq_len,
            "global_batch": global_batch,
            "param_dtype": str(param_dtype).removeprefix("torch."),
            "backend": ctx.backend,
            **extra,
        },
    )
