"""Data-parallel JAX training across processes: an MLP learns the ddp case's teacher network.

    srun --ntasks-per-node=1 python -m mlcluster_workloads.jax_dp --coordinator head:12355
    python -m mlcluster_workloads.jax_dp                          # one process

One process per node drives all of that node's devices. Process id and count come from flags,
else SLURM_PROCID/SLURM_NTASKS, else RANK/WORLD_SIZE; the coordinator from ``--coordinator``,
else JAX_COORDINATOR_ADDRESS, else MASTER_ADDR:MASTER_PORT. Parameters are replicated, each
process feeds its own block of the global batch, and the loss is the ``jax.lax.pmean`` over
every device of every process inside ``shard_map``, so its gradient is the average over all
devices. On CPU the cross-process collectives go through gloo
(``jax_cpu_collectives_implementation``). With ``--checkpoint-dir`` process 0 saves the
parameters, Adam moments and step count every ``--checkpoint-every`` steps (and when SIGTERM or
SIGUSR1 asks the run to stop) as one ``state.npz``, and every process resumes from the newest
complete checkpoint there (checkpoint.py's layout; the directory must be shared, like /fsx).
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from pathlib import Path
from typing import TextIO

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mlcluster_workloads import checkpoint, metrics
from mlcluster_workloads.data import ShardedSampler, TeacherRegression

# Seconds jax.distributed.initialize waits for every process to reach the coordinator (JAX's
# default is 300); the launcher passes it explicitly.
DEFAULT_INIT_TIMEOUT_S = 300

try:
    from jax import shard_map
except ImportError:  # jax < 0.7 has it only under experimental
    from jax.experimental.shard_map import shard_map


def _env_int(*names: str, default: int) -> int:
    for name in names:
        if os.environ.get(name):
            return int(os.environ[name])
    return default


def default_coordinator() -> str | None:
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        return os.environ["JAX_COORDINATOR_ADDRESS"]
    if os.environ.get("MASTER_ADDR") and os.environ.get("MASTER_PORT"):
        return f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
    return None


def init_params(sizes: list[int], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([seed, 0x4A4158])
    params = {}
    for layer, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        params[f"w{layer}"] = (rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)).astype(
            np.float32
        )
        params[f"b{layer}"] = np.zeros((fan_out,), np.float32)
    return params


def forward(params: dict[str, jax.Array], x: jax.Array) -> jax.Array:
    layers = len(params) // 2
    for layer in range(layers):
        x = x @ params[f"w{layer}"] + params[f"b{layer}"]
        if layer < layers - 1:
            x = jax.nn.gelu(x)
    return x


def make_train_step(mesh: Mesh, lr: float, optimizer: str, betas=(0.9, 0.999), eps=1e-8):
    """A jitted step over the mesh: gradients averaged across all devices, then an Adam or
    plain SGD update (SGD's update is proportional to the gradient, so the tests use it to see
    that gradients are averaged, not summed: Adam would hide the scale)."""

    def global_loss(params, x, y):
        # The mean over every device's block of the batch. Differentiating this global loss
        # with respect to the replicated parameters gives the averaged gradient: shard_map's
        # transpose of "use replicated params on varying data" is a psum across "dp", and the
        # pmean contributes the 1/n. (Taking local gradients and pmean-ing them would double
        # count: those gradients come out already summed across devices.) The device's own
        # loss rides along, undifferentiated, for --debug-report.
        local = jnp.mean((forward(params, x) - y) ** 2)
        return jax.lax.pmean(local, "dp"), local

    def step(params, moments, count, x, y):
        (loss, local), grads = jax.value_and_grad(global_loss, has_aux=True)(params, x, y)
        local = local[None]  # one entry per device: out_specs split it over "dp"
        count = count + 1
        if optimizer == "sgd":
            params = jax.tree.map(lambda p, g: p - lr * g, params, grads)
            return params, moments, count, loss, local
        first = jax.tree.map(lambda m, g: betas[0] * m + (1 - betas[0]) * g, moments[0], grads)
        second = jax.tree.map(lambda v, g: betas[1] * v + (1 - betas[1]) * g * g, moments[1], grads)
        correction1 = 1 - betas[0] ** count
        correction2 = 1 - betas[1] ** count
        params = jax.tree.map(
            lambda p, m, v: p - lr * (m / correction1) / (jnp.sqrt(v / correction2) + eps),
            params,
            first,
            second,
        )
        return params, (first, second), count, loss, local

    replicated, split = P(), P("dp")
    return jax.jit(
        shard_map(
            step,
            mesh=mesh,
            in_specs=(replicated, replicated, replicated, split, split),
            out_specs=(replicated, replicated, replicated, replicated, split),
        ),
        donate_argnums=(0, 1),
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m mlcluster_workloads.jax_dp",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--coordinator", default=default_coordinator(), help="host:port")
    parser.add_argument(
        "--process-id", type=int, default=_env_int("SLURM_PROCID", "RANK", default=0)
    )
    parser.add_argument(
        "--num-processes", type=int, default=_env_int("SLURM_NTASKS", "WORLD_SIZE", default=1)
    )
    parser.add_argument(
        "--cpu-collectives",
        choices=("gloo", "mpi"),
        default="gloo",
        help="cross-process collectives of the CPU backend",
    )
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=64, help="samples per process per step")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--optimizer", choices=("adam", "sgd"), default="adam")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--depth", type=int, default=2, help="hidden layers")
    parser.add_argument("--in-features", type=int, default=32)
    parser.add_argument("--num-samples", type=int, default=8192)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dump-params", help="directory; each process writes params-<id>.npz")
    parser.add_argument(
        "--dist-timeout",
        type=int,
        default=DEFAULT_INIT_TIMEOUT_S,
        help="seconds jax.distributed.initialize waits for all processes "
        f"(default {DEFAULT_INIT_TIMEOUT_S})",
    )
    checkpoint.add_arguments(parser)
    metrics.add_arguments(parser)
    args = parser.parse_args(argv)
    if args.num_processes > 1 and not args.coordinator:
        parser.error("several processes need --coordinator (or JAX_COORDINATOR_ADDRESS)")
    return args


def reporter_device() -> metrics.Device:
    device = jax.local_devices()[0]
    if device.platform == "cpu":
        return metrics.Device("cpu", accelerator=False)

    def peak_memory() -> int:
        return (device.memory_stats() or {}).get("peak_bytes_in_use", 0)

    return metrics.Device(device.device_kind, accelerator=True, peak_memory=peak_memory)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    stream = metrics.json_stream()  # from here on, fd 1 carries JSON lines only
    stop = checkpoint.StopRequest()
    jax.config.update("jax_cpu_collectives_implementation", args.cpu_collectives)
    if args.num_processes > 1:
        jax.distributed.initialize(
            coordinator_address=args.coordinator,
            num_processes=args.num_processes,
            process_id=args.process_id,
            initialization_timeout=args.dist_timeout,
        )
    try:
        train(args, stream, stop)
    finally:
        if args.num_processes > 1:
            jax.distributed.shutdown()


def any_process(flag: bool) -> bool:
    """True in every process if ``flag`` is true in any."""
    if jax.process_count() == 1:
        return flag
    return bool(np.max(multihost_utils.process_allgather(np.array([int(flag)], np.int32))))


def sync(name: str) -> None:
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def latest_checkpoint(directory: checkpoint.CheckpointDir) -> int | None:
    """The newest complete step as process 0 sees the directory, agreed by every process."""
    newest = directory.newest() if jax.process_index() == 0 else None
    if jax.process_count() > 1:
        chosen = multihost_utils.broadcast_one_to_all(
            np.array(-1 if newest is None else newest, np.int64)
        )
        newest = None if int(chosen) < 0 else int(chosen)
    return newest


def save_checkpoint(
    directory: checkpoint.CheckpointDir, step: int, state: dict[str, jax.Array], record: dict
) -> Path:
    # The arrays are replicated: process 0's copy is the whole state.
    host = {name: np.asarray(value.addressable_data(0)) for name, value in state.items()}
    sync(f"checkpoint-{step}-begin")
    if jax.process_index() == 0:
        staging = directory.begin(step)
        np.savez(staging / "state.npz", **host)
        directory.commit(step, {"world_size": jax.process_count(), **record})
    sync(f"checkpoint-{step}-done")
    return directory.path(step)


def flatten_state(params, moments, count) -> dict[str, jax.Array]:
    state = {f"params/{name}": value for name, value in params.items()}
    for which, tree in zip(("m", "v"), moments, strict=True):
        state.update({f"{which}/{name}": value for name, value in tree.items()})
    state["count"] = count
    return state


def train(args: argparse.Namespace, stream: TextIO, stop: checkpoint.StopRequest) -> None:
    process, processes = jax.process_index(), jax.process_count()
    local_devices = jax.local_device_count()
    if args.batch_size % local_devices:
        raise SystemExit(f"--batch-size must divide over {local_devices} local devices")
    mesh = Mesh(np.array(jax.devices()), ("dp",))
    replicated, split = NamedSharding(mesh, P()), NamedSharding(mesh, P("dp"))

    def global_replicated(value: np.ndarray) -> jax.Array:
        return jax.make_array_from_callback(value.shape, replicated, lambda index: value[index])

    x, y = TeacherRegression(
        num_samples=args.num_samples, in_features=args.in_features, seed=args.seed
    ).arrays()
    sampler = ShardedSampler(
        args.num_samples, args.batch_size, process, processes, seed=args.seed, shuffle=True
    )
    sizes = [args.in_features] + [args.hidden] * args.depth + [1]
    host_params = init_params(sizes, args.seed)
    params = jax.tree.map(global_replicated, host_params)
    zeros = {name: np.zeros_like(value) for name, value in host_params.items()}
    moments = (jax.tree.map(global_replicated, zeros), jax.tree.map(global_replicated, zeros))
    count = global_replicated(np.zeros((), np.int32))
    train_step = make_train_step(mesh, args.lr, args.optimizer)
    directory = (
        checkpoint.CheckpointDir(args.checkpoint_dir, keep=args.keep_checkpoints)
        if args.checkpoint_dir
        else None
    )
    start_step = 0
    latest = latest_checkpoint(directory) if directory and not args.no_resume else None
    if latest is not None:
        record = directory.marker(latest)
        if record["samples_consumed"] != latest * sampler.global_batch:
            raise SystemExit(
                f"checkpoint step {latest} consumed {record['samples_consumed']} samples, but "
                f"{latest} steps of the global batch {sampler.global_batch} would be a different "
                "data position: resume with the same global batch"
            )
        with np.load(directory.path(latest) / "state.npz") as saved:
            loaded = {name: saved[name] for name in saved.files}
        params = {name: global_replicated(loaded[f"params/{name}"]) for name in host_params}
        moments = tuple(
            {name: global_replicated(loaded[f"{which}/{name}"]) for name in host_params}
            for which in ("m", "v")
        )
        count = global_replicated(loaded["count"])
        start_step = latest

    reporter = metrics.Reporter(
        case="jax_dp",
        world_size=jax.device_count(),
        device=reporter_device(),
        samples_per_step=sampler.global_batch,
        flops_per_sample=metrics.mlp_flops_per_sample(list(itertools.pairwise(sizes))),
        warmup_steps=args.warmup_steps,
        peak_tflops=args.peak_tflops,
        enabled=process == 0,
        stream=stream,
        extra={
            "process_count": processes,
            "local_device_count": local_devices,
            "platform": jax.local_devices()[0].platform,
            "jax_version": jax.__version__,
            "global_batch": sampler.global_batch,
            "resumed_from_step": start_step or None,
        },
    )
    if start_step:
        reporter.emit({"event": "resume", "case": "jax_dp", "step": start_step})
    rank_report = metrics.RankReport(args.debug_report, process, processes)
    # The loop rebinds params, moments and count; the closure saves them as they are at the save.
    save = (
        None
        if directory is None
        else lambda step, train: save_checkpoint(
            directory, step, flatten_state(params, moments, count), train
        )
    )
    stopped_early = False
    for step in range(start_step + 1, args.steps + 1):
        index = sampler.indices(step - 1)
        batch_x = jax.make_array_from_process_local_data(split, x[index])
        batch_y = jax.make_array_from_process_local_data(split, y[index])
        started = time.perf_counter()
        params, moments, count, loss, local = train_step(params, moments, count, batch_x, batch_y)
        loss_value = float(loss.addressable_data(0))  # waits for the step
        reporter.step(step, loss_value, time.perf_counter() - started)
        if rank_report.enabled:  # this process's devices' losses on its block: their mean
            rank_report.step(
                step, index, np.mean([np.asarray(s.data) for s in local.addressable_shards])
            )
        stopped_early = checkpoint.after_step(
            args,
            step,
            stop=stop,
            any_rank=any_process,
            save=save,
            reporter=reporter,
            global_batch=sampler.global_batch,
        )
        if stopped_early:
            break
    reporter.summary(stopped_early=stopped_early)
    if rank_report.enabled:
        rank_report.finish(
            {name: np.asarray(value.addressable_data(0)) for name, value in params.items()}
        )
    if args.dump_params:
        out = Path(args.dump_params)
        out.mkdir(parents=True, exist_ok=True)
        np.savez(
            out / f"params-{process}.npz",
            **{name: np.asarray(value.addressable_data(0)) for name, value in params.items()},
        )
        print(f"process {process} wrote {out}/params-{process}.npz", file=sys.stderr)


if __name__ == "__main__":
    main()
