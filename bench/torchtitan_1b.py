"""torchtitan's own trainer on our ``fsdp`` case's Llama model, for an MFU to set beside ours.

Run under torchrun on one GPU, with the wheels in .whl/ (torchtitan 0.2.2, torchdata, tyro,
docstring-parser, typeguard; all pure Python) unpacked onto PYTHONPATH::

    for w in .whl/*.whl; do python3 -m zipfile -e "$w" /tmp/ttwheels; done
    PYTHONPATH=/tmp/ttwheels python3 -m torch.distributed.run --standalone --nproc_per_node=1 \\
        bench/torchtitan_1b.py --steps 30 --batch-size 4 --seq-len 2048 [--compile]

Written for torchtitan 0.2.2 (the PyPI release made against the torch 2.10/2.11 era). Nothing
from torchtitan's GitHub tree is needed and nothing is downloaded:

* the model is torchtitan's ``llama3`` Transformer with a flavor ``mlcluster_1b`` built from
  ``mlcluster_workloads.llama.CONFIGS`` (SwiGLU width checked to equal ``ffn_dim``; rope
  scaling off, as in ours). torchtitan's llama3 cannot tie the embedding to the output head,
  so it trains ``vocab_size * dim`` more parameters than ours (an embedding lookup: no FLOPs,
  but more optimizer state and memory);
* the data are our ``SyntheticTokens`` windows through a tiny IterableDataset in torchtitan's
  ``ParallelAwareDataloader``; no tokenizer (``build_tokenizer_fn=None``). When the HF
  ``datasets`` package is absent an inert stub stands in for it, only so that torchtitan's
  llama3 package (which imports its HF text loader) can be imported;
* both are registered with ``register_train_spec`` as model ``mlcluster_llama3``;
* FSDP2 on the single rank, as our case runs: torchtitan applies ``fully_shard`` only when the
  shard degree is above 1 (else it autocasts), so ``ParallelDims`` is told that its ``fsdp``
  mesh exists; bf16 params, fp32 reduce (torchtitan's defaults), AdamW (fused, betas 0.9/0.95,
  lr 3e-4, no weight decay, constant lr), grad clip 1.0, no activation checkpointing,
  ``--compile``: torchtitan's per-block compile plus the loss, as ours.

Prints one JSON line on stdout at the end (``"event": "torchtitan_summary"``); everything else
goes to stderr. Averages are over the steps after ``--warmup-steps`` (5), as totals over total
time. ``step_time_s``/``tokens_per_s`` are our own wall-clock timing of ``train_step`` (device
synchronised on both sides); ``tflops_per_gpu``/``mfu`` are torchtitan's (its FLOPs per token,
its peak table, its per-step interval), ``*_ours`` use our formula and peak table with our
timing. ``--check-only`` builds the flavor on the meta device and parses the torchtitan config
without a GPU or torchrun; ``--cpu`` is a smoke test of the whole loop on CPU (gloo), for
development only.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.machinery
import importlib.util
import json
import math
import os
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workloads" / "src"))

MODEL_NAME = "mlcluster_llama3"
GIB = 1024**3


class BenchError(RuntimeError):
    """A failure with a message that says what went wrong."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="1b", help="a key of mlcluster_workloads.llama.CONFIGS")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=4, help="sequences per step")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--warmup-steps", type=int, default=5, help="steps left out of averages")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dump-folder", default=None, help="torchtitan's job.dump_folder")
    parser.add_argument("--check-only", action="store_true", help="no training: flavor + config")
    parser.add_argument("--cpu", action="store_true", help="smoke test on CPU (development)")
    args = parser.parse_args(argv)
    if args.steps <= args.warmup_steps:
        parser.error("--steps must be larger than --warmup-steps")
    return args


# --- imports that need care -------------------------------------------------------------------


def stub_datasets_if_missing() -> bool:
    """Put an inert ``datasets`` module in place when HF datasets is not installed.

    torchtitan.models.llama3 imports its HF text loader, which imports ``datasets`` at module
    level; this benchmark never calls it.
    """
    if "datasets" in sys.modules:
        return False
    if importlib.util.find_spec("datasets") is not None:
        try:
            import datasets
            import datasets.distributed  # noqa: F401

            return False
        except Exception as error:  # installed but unusable (e.g. pyarrow missing)
            print(f"note: HF datasets does not import ({error}); stubbing it", file=sys.stderr)
            for name in [n for n in sys.modules if n == "datasets" or n.startswith("datasets.")]:
                del sys.modules[name]

    def unavailable(*_args: Any, **_kwargs: Any) -> Any:
        raise BenchError("HF datasets is not installed; this benchmark uses synthetic tokens")

    root = types.ModuleType("datasets")
    root.__spec__ = importlib.machinery.ModuleSpec("datasets", None, is_package=True)
    root.__path__ = []
    root.Dataset = type("Dataset", (), {})
    root.IterableDataset = type("IterableDataset", (), {})
    root.load_dataset = unavailable
    distributed = types.ModuleType("datasets.distributed")
    distributed.__spec__ = importlib.machinery.ModuleSpec("datasets.distributed", None)
    distributed.split_dataset_by_node = unavailable
    root.distributed = distributed
    sys.modules["datasets"] = root
    sys.modules["datasets.distributed"] = distributed
    return True


def force_cpu_device_type() -> None:
    """--cpu: make torchtitan pick "cpu" as its device type (read once, at its import)."""
    import torch._utils

    torch._utils._get_available_device_type = lambda: "cpu"


def import_torchtitan():
    try:
        import torchtitan
        import torchtitan.models.llama3 as tt_llama3
        import torchtitan.train as tt_train
    except ImportError as error:
        raise BenchError(
            f"cannot import torchtitan ({error}); put the carried wheels' directory on PYTHONPATH"
        ) from error
    version = getattr(torchtitan, "__version__", "unknown")
    if not str(version).startswith("0.2."):
        print(f"warning: written for torchtitan 0.2.x, found {version}", file=sys.stderr)
    return torchtitan, tt_llama3, tt_train


# --- model flavor -----------------------------------------------------------------------------


def titan_model_args(config, tt_llama3):
    """torchtitan llama3 args equal to one of our LlamaConfigs (ffn width checked later)."""
    from torchtitan.models.llama3.model.args import RoPEScalingArgs

    hidden = int(2 * 4 * config.dim / 3)  # torchtitan: int(2*hidden/3) with hidden = 4*dim
    return tt_llama3.TransformerModelArgs(
        dim=config.dim,
        n_layers=config.n_layers,
        n_heads=config.n_heads,
        n_kv_heads=config.n_kv_heads,
        vocab_size=config.vocab_size,
        # ffn_dim_multiplier=None: hidden is rounded up to a multiple of multiple_of; with
        # multiple_of=ffn_dim that is ffn_dim exactly whenever ffn_dim >= 8*dim/3 (asserted).
        multiple_of=config.ffn_dim,
        ffn_dim_multiplier=config.ffn_dim / hidden if config.ffn_dim < hidden else None,
        norm_eps=config.norm_eps,
        rope_theta=config.rope_theta,
        rope_scaling_args=RoPEScalingArgs(scaling_factor=1.0),  # scale 1: no rope scaling
        max_seq_len=config.max_seq_len,
        attn_type="sdpa",
        attn_mask_type="causal",
    )


def meta_model(tt_llama3, model_args):
    import torch

    with torch.device("meta"):
        return tt_llama3.Transformer(model_args)


def check_model(model, config) -> dict[str, int]:
    """Shapes against our config; parameter counts of both models."""
    block = model.layers["0"]
    shapes = {
        "wq": (block.attention.wq.weight.shape, (config.n_heads * config.head_dim, config.dim)),
        "wk": (block.attention.wk.weight.shape, (config.n_kv_heads * config.head_dim, config.dim)),
        "w1": (block.feed_forward.w1.weight.shape, (config.ffn_dim, config.dim)),
        "w2": (block.feed_forward.w2.weight.shape, (config.dim, config.ffn_dim)),
        "output": (model.output.weight.shape, (config.vocab_size, config.dim)),
    }
    for name, (got, want) in shapes.items():
        if tuple(got) != want:
            raise BenchError(f"torchtitan {name} has shape {tuple(got)}, our model {want}")
    if len(model.layers) != config.n_layers:
        raise BenchError(f"torchtitan model has {len(model.layers)} layers, ours {config.n_layers}")
    params = sum(p.numel() for p in model.parameters())
    embedding = model.tok_embeddings.weight.numel()
    return {
        "params": params,
        "params_ours": config.total_params(),
        "params_untied_extra": params - config.total_params(),
        "matmul_params": params - embedding - (2 * config.n_layers + 1) * config.dim,
        "matmul_params_ours": config.matmul_params(),
    }


# --- data ---------------------------------------------------------------------------------------


def make_dataloader_builder(seed: int):
    import numpy as np
    import torch
    from mlcluster_workloads.data import SyntheticTokens
    from torch.distributed.checkpoint.stateful import Stateful
    from torch.utils.data import IterableDataset
    from torchtitan.components.dataloader import ParallelAwareDataloader

    class SyntheticTokenDataset(IterableDataset, Stateful):
        """Our SyntheticTokens windows, rank-strided: ({"input": seq}, labels) as torchtitan's."""

        def __init__(self, vocab_size: int, seq_len: int, rank: int, world: int) -> None:
            self.tokens = SyntheticTokens(vocab_size, seq_len, seed=seed)
            self.index, self.stride = rank, world

        def __iter__(self):
            while True:
                window = torch.from_numpy(self.tokens.batch(np.array([self.index]))[0])
                self.index += self.stride
                yield {"input": window[:-1]}, window[1:]

        def state_dict(self) -> dict[str, int]:
            return {"index": self.index}

        def load_state_dict(self, state_dict: dict[str, int]) -> None:
            self.index = state_dict["index"]

    def build_synthetic_dataloader(dp_world_size, dp_rank, tokenizer, job_config, **_kwargs):
        model_args = TRAIN_SPEC_ARGS[job_config.model.flavor]
        dataset = SyntheticTokenDataset(
            model_args.vocab_size, job_config.training.seq_len, dp_rank, dp_world_size
        )
        return ParallelAwareDataloader(
            dataset,
            dp_rank=dp_rank,
            dp_world_size=dp_world_size,
            batch_size=job_config.training.local_batch_size,
            num_workers=0,
        )

    return build_synthetic_dataloader


# --- metrics capture ----------------------------------------------------------------------------

CAPTURED: list[dict[str, Any]] = []  # torchtitan's per-step metrics, with "step"
STEP_TIMES: list[float] = []  # our wall time of each train_step
TRAIN_SPEC_ARGS: dict[str, Any] = {}
TITAN: dict[str, Any] = {}  # flops per token and peak flops as torchtitan's metrics use them


def make_metrics_builder():
    from torchtitan.components.metrics import BaseLogger, build_metrics_processor

    class CaptureLogger(BaseLogger):
        def __init__(self, inner) -> None:
            self.inner = inner

        def log(self, metrics, step) -> None:
            CAPTURED.append({"step": step, **metrics})
            self.inner.log(metrics, step)

        def close(self) -> None:
            self.inner.close()

    def build(job_config, parallel_dims, model_args=None, tag=None):
        processor = build_metrics_processor(job_config, parallel_dims, model_args)
        processor.logger = CaptureLogger(processor.logger)
        TITAN["metrics_processor"] = processor
        return processor

    return build


# --- torchtitan patches -------------------------------------------------------------------------


def force_fsdp_on_one_rank() -> None:
    """Let torchtitan fully_shard on a 1-rank mesh, as our fsdp case does on one GPU.

    torchtitan 0.2 enables FSDP only for a shard degree above 1 and otherwise trains under
    autocast; this says the ``fsdp`` mesh dimension exists (a real 1-rank process group rather
    than the fake backend), so parallelize_llama applies fully_shard with its MixedPrecisionPolicy
    and no autocast is used.
    """
    from torchtitan.distributed.parallel_dims import ParallelDims

    original = ParallelDims._mesh_exist

    def mesh_exist(self, name: str, degree: int) -> bool:
        return True if name == "fsdp" else original(self, name, degree)

    ParallelDims._mesh_exist = mesh_exist
    ParallelDims.fsdp_enabled = property(lambda self: True)


def cpu_smoke_patches() -> None:
    """--cpu only: torch.cpu has no device properties (zeros for memory) and no device ids."""
    import torchtitan.components.metrics as tt_metrics
    import torchtitan.distributed.utils as tt_dist_utils

    tt_dist_utils.set_pg_timeouts = lambda *args, **kwargs: None  # barrier(device_ids=["cpu"])

    class CpuMemoryMonitor:
        device_name = "cpu"
        device_capacity_gib = 0.0

        def get_peak_stats(self):
            return tt_metrics.DeviceMemStats(0.0, 0.0, 0.0, 0.0, 0, 0)

        def reset_peak_stats(self) -> None:
            pass

    tt_metrics.build_device_memory_monitor = CpuMemoryMonitor


def register(tt_llama3, flavor: str, model_args, seed: int) -> None:
    from torchtitan.protocols.train_spec import register_train_spec

    base = tt_llama3.get_train_spec()
    TRAIN_SPEC_ARGS.update(dict(base.model_args))
    TRAIN_SPEC_ARGS[flavor] = model_args
    spec = dataclasses.replace(
        base,
        model_args=TRAIN_SPEC_ARGS,
        build_dataloader_fn=make_dataloader_builder(seed),
        build_tokenizer_fn=None,
        build_validator_fn=None,
        build_metrics_processor_fn=make_metrics_builder(),
        state_dict_adapter=None,
    )
    register_train_spec(MODEL_NAME, spec)


def titan_cli(args: argparse.Namespace, flavor: str, dump_folder: str) -> list[str]:
    """torchtitan's command line (tyro; lists are comma-separated) for this benchmark."""
    options = {
        "model.name": MODEL_NAME,
        "model.flavor": flavor,
        "job.dump_folder": dump_folder,
        "training.local_batch_size": args.batch_size,
        "training.global_batch_size": -1,
        "training.seq_len": args.seq_len,
        "training.steps": args.steps,
        "training.max_norm": 1.0,
        "training.mixed_precision_param": "bfloat16",
        "training.mixed_precision_reduce": "float32",
        "training.dataset": "synthetic",
        "optimizer.name": "AdamW",
        "optimizer.lr": args.lr,
        "optimizer.beta1": 0.9,
        "optimizer.beta2": 0.95,
        "optimizer.eps": 1e-8,
        "optimizer.weight_decay": 0.0,
        "optimizer.implementation": "foreach" if args.cpu else "fused",
        "lr_scheduler.warmup_steps": 0,
        "lr_scheduler.decay_ratio": 0.0,
        "activation_checkpoint.mode": "none",
        "parallelism.data_parallel_shard_degree": -1,
        "parallelism.tensor_parallel_degree": 1,
        "parallelism.pipeline_parallel_degree": 1,
        "parallelism.context_parallel_degree": 1,
        "metrics.log_freq": 1,
        "debug.seed": args.seed,
        "compile.components": "model,loss",
    }
    cli = [item for key, value in options.items() for item in (f"--{key}", str(value))]
    cli += ["--metrics.no-enable_tensorboard", "--checkpoint.no-enable", "--validation.no-enable"]
    cli.append("--compile.enable" if args.compile else "--compile.no-enable")
    return cli


# --- summary ----------------------------------------------------------------------------------


def summarise(args, torchtitan, counts, config, device_name: str) -> dict[str, Any]:
    from mlcluster_workloads import metrics as our_metrics

    by_step = {m["step"]: m for m in CAPTURED}
    if len(by_step) < args.steps or len(STEP_TIMES) < args.steps:
        raise BenchError(
            f"ran {len(STEP_TIMES)} steps and torchtitan logged {len(by_step)}; wanted {args.steps}"
        )
    measured = range(args.warmup_steps + 1, args.steps + 1)
    tokens_per_step = args.batch_size * args.seq_len

    # ours: wall time of train_step, our FLOPs and peak table
    wall = math.fsum(STEP_TIMES[s - 1] for s in measured)
    step_time = wall / len(measured)
    tokens_per_s = tokens_per_step / step_time
    flops_ours = our_metrics.transformer_flops_per_token(
        matmul_params=config.matmul_params(),
        n_layers=config.n_layers,
        n_heads=config.n_heads,
        head_dim=config.head_dim,
        seq_len=args.seq_len,
    )
    peak_ours = our_metrics.peak_tflops_for(device_name)
    tflops_ours = flops_ours * tokens_per_s / 1e12

    # torchtitan's: its per-step tps (tokens over its interval between logs), its FLOPs, its peak
    processor = TITAN["metrics_processor"]
    flops_titan = processor.num_flops_per_token
    peak_titan = processor.gpu_peak_flops
    titan_time = math.fsum(tokens_per_step / by_step[s]["throughput(tps)"] for s in measured)
    titan_tps = tokens_per_step * len(measured) / titan_time
    titan_tflops = flops_titan * titan_tps / 1e12

    loss_first = by_step[1]["loss_metrics/global_avg_loss"]
    loss_last = by_step[args.steps]["loss_metrics/global_avg_loss"]
    import torch

    return {
        "event": "torchtitan_summary",
        "torchtitan": getattr(torchtitan, "__version__", "unknown"),
        "torch": torch.__version__,
        "device": device_name,
        "config": args.config,
        "params": counts["params"],
        "params_ours": counts["params_ours"],
        "tied_embeddings": False,
        "seq_len": args.seq_len,
        "batch": args.batch_size,
        "compile": args.compile,
        "fsdp": True,
        "activation_checkpointing": False,
        "steps": args.steps,
        "averaged_steps": len(measured),
        "timing": "step_time_s/tokens_per_s: our wall clock of train_step; tflops_per_gpu/mfu: "
        "torchtitan's metrics (its FLOPs, peak, per-step interval); *_ours: our FLOPs and peak "
        "with our wall clock",
        "step_time_s": step_time,
        "tokens_per_s": tokens_per_s,
        "tokens_per_s_torchtitan": titan_tps,
        "flops_per_token_torchtitan": flops_titan,
        "peak_tflops_torchtitan": peak_titan / 1e12,
        "tflops_per_gpu": titan_tflops,
        "mfu": titan_tflops * 1e12 / peak_titan if peak_titan else None,
        "flops_per_token_ours": flops_ours,
        "peak_tflops_ours": peak_ours[1] if peak_ours else None,
        "tflops_per_gpu_ours": tflops_ours,
        "mfu_ours": tflops_ours / peak_ours[1] if peak_ours else None,
        "peak_memory_gib": max(by_step[s]["memory/max_active(GiB)"] for s in by_step),
        "peak_reserved_gib": max(by_step[s]["memory/max_reserved(GiB)"] for s in by_step),
        "loss_first": loss_first,
        "loss_last": loss_last,
        "step_times_s": [round(t, 5) for t in STEP_TIMES],
    }


# --- main -------------------------------------------------------------------------------------


def run(args: argparse.Namespace, out) -> int:
    from mlcluster_workloads.llama import CONFIGS

    if args.config not in CONFIGS:
        raise BenchError(f"--config must be one of {sorted(CONFIGS)}")
    config = CONFIGS[args.config]
    if args.seq_len > config.max_seq_len:
        raise BenchError(f"--seq-len {args.seq_len} > the config's max_seq_len")
    flavor = f"mlcluster_{args.config}"

    if args.cpu:
        force_cpu_device_type()
    stubbed = stub_datasets_if_missing()
    torchtitan, tt_llama3, tt_train = import_torchtitan()
    if stubbed:
        print("note: HF datasets not installed; using an inert stub for it", file=sys.stderr)

    model_args = titan_model_args(config, tt_llama3)
    counts = check_model(meta_model(tt_llama3, model_args), config)
    register(tt_llama3, flavor, model_args, args.seed)
    force_fsdp_on_one_rank()
    if args.cpu:
        cpu_smoke_patches()

    dump_folder = args.dump_folder or tempfile.mkdtemp(prefix="torchtitan_1b_")
    from torchtitan.config import ConfigManager

    try:
        job_config = ConfigManager().parse_args(titan_cli(args, flavor, dump_folder))
    except SystemExit as exit_:  # tyro prints what it rejected, then exits
        raise BenchError(f"torchtitan rejected the job config (tyro exit {exit_.code})") from None
    if (
        job_config.activation_checkpoint.mode != "none"
        or job_config.compile.enable != args.compile
        or job_config.compile.components != ["model", "loss"]
        or job_config.training.local_batch_size != args.batch_size
    ):
        raise BenchError("torchtitan config did not take the requested settings")

    if args.check_only:
        args_copy = dataclasses.replace(model_args)
        args_copy.update_from_config(job_config)
        nparams, flops = args_copy.get_nparams_and_flops(
            meta_model(tt_llama3, args_copy), args.seq_len
        )
        print(
            json.dumps(
                {
                    "event": "torchtitan_check",
                    "torchtitan": torchtitan.__version__,
                    "flavor": flavor,
                    **counts,
                    "params_torchtitan_count": nparams,
                    "flops_per_token_torchtitan": flops,
                    "compile": job_config.compile.enable,
                    "components": job_config.compile.components,
                }
            ),
            file=out,
        )
        return 0

    if "LOCAL_RANK" not in os.environ:
        raise BenchError("run under torch.distributed.run (torchrun): LOCAL_RANK is not set")

    import torch

    if args.cpu:
        device_name = "cpu"
    else:
        if not torch.cuda.is_available():
            raise BenchError("no CUDA device visible (use --check-only or --cpu without a GPU)")
        device_name = torch.cuda.get_device_name(int(os.environ["LOCAL_RANK"]))

    def synchronize() -> None:
        if not args.cpu:
            torch.cuda.synchronize()

    class TimedTrainer(tt_train.Trainer):
        def train_step(self, data_iterator):
            synchronize()
            start = time.perf_counter()
            super().train_step(data_iterator)
            synchronize()
            STEP_TIMES.append(time.perf_counter() - start)

    from torchtitan.tools.logging import init_logger

    init_logger()
    trainer = None
    try:
        trainer = TimedTrainer(job_config)
        fsdp_modules = sum(
            type(m).__name__.startswith("FSDP") for m in trainer.model_parts[0].modules()
        )
        if fsdp_modules == 0:
            raise BenchError("torchtitan did not apply FSDP to the model")
        trainer.train()
    finally:
        if trainer is not None:
            trainer.close()

    summary = summarise(args, torchtitan, counts, config, device_name)
    if torch.distributed.is_initialized():
        rank = torch.distributed.get_rank()
        torch.distributed.destroy_process_group()
    else:
        rank = 0
    if not all(math.isfinite(summary[k]) for k in ("loss_first", "loss_last")):
        raise BenchError(f"loss is not finite: {summary['loss_first']} -> {summary['loss_last']}")
    if rank == 0:
        print(json.dumps(summary), file=out)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from mlcluster_workloads import metrics as our_metrics

    out = our_metrics.json_stream()  # fd 1 now goes to stderr; the JSON line keeps stdout
    try:
        return run(args, out)
    except BenchError as error:
        print(f"torchtitan_1b: error: {error}", file=sys.stderr)
        return 1
    except Exception as error:  # a clear last line, then the traceback above it
        import traceback

        traceback.print_exc()
        print(f"torchtitan_1b: error: {type(error).__name__}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
