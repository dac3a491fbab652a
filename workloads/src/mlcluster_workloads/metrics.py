"""Per-step JSON metrics, model FLOPs and MFU, shared by the training cases (torch and JAX:
nothing here imports either).

Rank 0 prints one JSON object per line to stdout and nothing else there (logs go to stderr):
``{"event": "step", ...}`` for every step and ``{"event": "summary", ...}`` at the end. The
FLOP formulas and the peak table are explained in docs/workloads.md.

With ``--debug-report DIR`` every rank also writes what it did (``RankReport``), so that tests
can check distributed correctness from the processes' own account rather than by rebuilding
the model and sampler themselves.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import resource
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

# Dense (no structured sparsity) bf16 tensor-core peaks in TFLOP/s per device, from the vendors'
# datasheets; docs/workloads.md cites each. Patterns are matched in order against the device
# name torch reports (e.g. "NVIDIA H100 80GB HBM3"), so specific variants come first.
PEAK_BF16_TFLOPS: tuple[tuple[str, str, float], ...] = (
    (r"H100.*PCIe", "H100 PCIe", 756.0),
    (r"H100.*NVL", "H100 NVL", 835.0),
    (r"H100", "H100 SXM", 989.0),
    (r"H200.*NVL", "H200 NVL", 835.0),
    (r"H200", "H200 SXM", 989.0),
    (r"B200", "B200", 2250.0),
    (r"A100", "A100", 312.0),
    (r"L40S", "L40S", 362.0),
    (r"\bL4\b", "L4", 121.0),
    (r"Trainium2|trn2", "Trainium2", 667.0),
    (r"Trainium1?\b|trn1", "Trainium1", 190.0),
)


def peak_tflops_for(device_name: str) -> tuple[str, float] | None:
    """The table's label and dense bf16 peak for a device name, or None when not listed."""
    for pattern, label, peak in PEAK_BF16_TFLOPS:
        if re.search(pattern, device_name):
            return label, peak
    return None


def transformer_flops_per_token(
    *, matmul_params: int, n_layers: int, n_heads: int, head_dim: int, seq_len: int
) -> int:
    """Training FLOPs per token: 6*N + 12*L*H*Q*T.

    ``6*N`` is forward (2 per multiply-add) plus backward (twice the forward) for the N weights
    used in matrix multiplies (every Linear, the output head included; the embedding lookup is
    not a multiply). ``12*L*H*Q*T`` is the two attention products (Q K^T and A V) over the full
    T x T score matrix, as PaLM and Megatron count it; the causal mask's skipped half is counted.
    Activation-checkpointing recomputation is not counted (model FLOPs, not hardware FLOPs).
    """
    return 6 * matmul_params + 12 * n_layers * n_heads * head_dim * seq_len


def mlp_flops_per_sample(weight_shapes: list[tuple[int, int]]) -> int:
    """Training FLOPs per sample of an MLP: 6 times the weight-matrix entries (biases ignored)."""
    return 6 * sum(rows * cols for rows, cols in weight_shapes)


def process_peak_rss_bytes() -> int:
    """The process's peak resident set (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclass(frozen=True)
class Device:
    """What the reporter needs to know about the device a rank computes on."""

    name: str
    accelerator: bool
    peak_memory: Callable[[], int] = process_peak_rss_bytes


RATE_KEYS = (
    "step_time_s",
    "samples_per_s",
    "tokens_per_s",
    "tokens_per_s_per_device",
    "tflops_per_device",
    "mfu",
)

_json_stream: TextIO | None = None


def json_stream() -> TextIO:
    """The stream for JSON lines: the process's original stdout, kept for them alone.

    The first call duplicates file descriptor 1 for this stream and points fd 1 (and so
    ``print``) at stderr, where native libraries' output then goes: gloo's connection messages
    and NCCL_DEBUG=INFO lines are written to fd 1 and would otherwise break the JSON lines.
    """
    global _json_stream
    if _json_stream is None:
        sys.stdout.flush()
        _json_stream = os.fdopen(os.dup(1), "w", buffering=1)
        os.dup2(2, 1)
    return _json_stream


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--warmup-steps",
        type=int,
        default=2,
        help="steps left out of the summary's averages (compilation, allocator warm-up)",
    )
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="per-device peak for MFU; default: the table entry for the device, none on CPU",
    )
    parser.add_argument(
        "--debug-report",
        metavar="DIR",
        help="every rank writes DIR/rank-<r>.json (the sample indices it read and its own loss "
        "at each step, a digest of its final parameters) and DIR/rank-<r>.npz (the parameters)",
    )


def parameters_digest(params: Mapping[str, np.ndarray]) -> str:
    """sha256 over names, dtypes, shapes and bytes, in name order: equal only for equal models."""
    digest = hashlib.sha256()
    for name in sorted(params):
        value = np.ascontiguousarray(params[name])
        digest.update(f"{name}:{value.dtype.str}:{value.shape}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


class RankReport:
    """One rank's account of its run, written with ``--debug-report DIR`` (a no-op without).

    ``DIR/rank-<r>.json``: ``{"rank", "world_size", "steps": [{"step", "indices",
    "local_loss"}], "param_digest"}``, and ``DIR/rank-<r>.npz``: the final parameters, unsharded.
    ``local_loss`` is this rank's loss on its own block, before any reduction across ranks.
    """

    def __init__(self, directory: str | None, rank: int, world_size: int) -> None:
        self.path = Path(directory) / f"rank-{rank}" if directory else None
        self.record: dict[str, Any] = {"rank": rank, "world_size": world_size, "steps": []}

    @property
    def enabled(self) -> bool:
        return self.path is not None

    def step(self, step: int, indices: Any, local_loss: Any) -> None:
        if self.enabled:  # float() waits for the device: only when asked for
            self.record["steps"].append(
                {
                    "step": step,
                    "indices": np.asarray(indices).tolist(),
                    "local_loss": float(local_loss),
                }
            )

    def finish(self, params: Mapping[str, np.ndarray]) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.record["param_digest"] = parameters_digest(params)
        np.savez(self.path.with_suffix(".npz"), **params)
        self.path.with_suffix(".json").write_text(json.dumps(self.record) + "\n")


@dataclass
class Reporter:
    """Turns step timings into JSON lines. Only the main rank's reporter prints."""

    case: str
    world_size: int
    device: Device
    samples_per_step: int
    flops_per_sample: int
    tokens_per_sample: int | None = None
    warmup_steps: int = 2
    peak_tflops: float | None = None
    enabled: bool = True
    stream: TextIO = field(default_factory=lambda: sys.stdout)  # the cases pass json_stream()
    extra: dict[str, Any] = field(default_factory=dict)
    _steps: list[dict[str, Any]] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.peak_source = "flag" if self.peak_tflops is not None else None
        if self.peak_tflops is None and self.device.accelerator:
            found = peak_tflops_for(self.device.name)
            if found is not None:
                self.peak_source = f"table: {found[0]} dense bf16"
                self.peak_tflops = found[1]

    def emit(self, record: dict[str, Any]) -> None:
        if self.enabled:
            self.stream.write(json.dumps(record) + "\n")
            self.stream.flush()

    def step(self, step: int, loss: float, step_time_s: float) -> dict[str, Any]:
        samples_per_s = self.samples_per_step / step_time_s
        tflops = self.flops_per_sample * samples_per_s / self.world_size / 1e12
        record: dict[str, Any] = {
            "event": "step",
            "case": self.case,
            "step": step,
            "loss": loss,
            "step_time_s": step_time_s,
            "samples_per_s": samples_per_s,
            "tokens_per_s": None,
            "tokens_per_s_per_device": None,
            "tflops_per_device": tflops,
            "mfu": tflops / self.peak_tflops if self.peak_tflops else None,
            "peak_mem_bytes": self.device.peak_memory(),
            "world_size": self.world_size,
        }
        if self.tokens_per_sample is not None:
            record["tokens_per_s"] = samples_per_s * self.tokens_per_sample
            record["tokens_per_s_per_device"] = record["tokens_per_s"] / self.world_size
        self._steps.append(record)
        self.emit(record)
        return record

    def summary(self, **fields: Any) -> dict[str, Any]:
        measured = self._steps[self.warmup_steps :] or self._steps
        record: dict[str, Any] = {
            "event": "summary",
            "case": self.case,
            "steps": len(self._steps),
            "first_step": self._steps[0]["step"] if self._steps else None,
            "last_step": self._steps[-1]["step"] if self._steps else None,
            "averaged_steps": len(measured),
            "first_loss": self._steps[0]["loss"] if self._steps else None,
            "final_loss": self._steps[-1]["loss"] if self._steps else None,
            "world_size": self.world_size,
            "device": self.device.name,
            "peak_tflops": self.peak_tflops,
            "peak_tflops_source": self.peak_source,
            "flops_per_sample": self.flops_per_sample,
            "peak_mem_bytes": self.device.peak_memory(),
        }
        # Rates over the measured steps are totals over total time, not means of per-step rates.
        total_time = math.fsum(s["step_time_s"] for s in measured)
        for key in RATE_KEYS:  # stay null when no step ran (a resumed run that was complete)
            record[key] = None
        if measured and total_time > 0:
            samples_per_s = self.samples_per_step * len(measured) / total_time
            tflops = self.flops_per_sample * samples_per_s / self.world_size / 1e12
            record["step_time_s"] = total_time / len(measured)
            record["samples_per_s"] = samples_per_s
            if self.tokens_per_sample is not None:
                record["tokens_per_s"] = samples_per_s * self.tokens_per_sample
                record["tokens_per_s_per_device"] = record["tokens_per_s"] / self.world_size
            record["tflops_per_device"] = tflops
            record["mfu"] = tflops / self.peak_tflops if self.peak_tflops else None
        record.update(self.extra)
        record.update(fields)
        self.emit(record)
        return record
