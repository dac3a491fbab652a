"""The one registry of test cases: what each is called, how it is started, what it needs.

The CLI (`mlcluster run`), the launcher (``launch.render_sbatch`` / ``pytorchjob``) and the
renderers all read this table; nothing else lists the cases or decides by a case's name.
Pure Python: importing it (and ``launch``) needs neither torch nor JAX, and the package's base
install brings neither (they are its ``torch`` and ``jax`` extras).

How a case starts on Slurm (``launcher``):
- ``torchrun``: one task per node, a ``torchrun`` that starts ``nproc_per_node`` ranks and meets
  the other nodes through the c10d rendezvous on the first node;
- ``per_node``: one process per node (a ``coordinator`` case is pointed at the first node);
- ``mpi``: one MPI rank per GPU of ``program``, started through ``srun --mpi=pmix`` by the case's
  module, run once in the batch step, which turns rank 0's output into JSON lines
  (``mlcluster_workloads.allreduce --nccl-tests`` for nccl-tests' ``all_reduce_perf``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Case:
    name: str
    # Python module under mlcluster_workloads that the launcher starts.
    module: str
    launcher: str  # torchrun | per_node | mpi
    summary: str
    # Arguments `mlcluster run` passes when the user gives none: small enough for CPU nodes.
    cpu_args: tuple[str, ...] = ()
    # ... and on GPU nodes.
    gpu_args: tuple[str, ...] = ()
    # The case needs GPUs on the nodes (mlcluster run refuses it on CPU-only partitions).
    needs_gpu: bool = False
    # A training case: it takes --checkpoint-dir (and saves every --checkpoint-every steps, and
    # when SIGTERM/SIGUSR1 stop it), resumes from the newest complete checkpoint there, and takes
    # --dist-timeout. The launcher gives it the time-limit signal and trap; `mlcluster run`
    # gives it a directory on /fsx. allreduce and nccl_tests measure, keep no state, and
    # simply run again when requeued.
    checkpoints: bool = False
    # `mlcluster run` reports it (training cases and benchmarks), not only renders it.
    runnable: bool = True
    # The processes meet at the first node's --coordinator=HOST:PORT (jax.distributed), and
    # its --dist-timeout is how long they wait for each other at start-up.
    coordinator: bool = False
    # mpi: the program each rank runs (an absolute path on the nodes).
    program: str | None = None
    # The case that measures the same on nodes without GPUs (named when a needs_gpu case is
    # asked for on a partition that has none).
    cpu_substitute: str | None = None
    # The JSON lines it prints: a key of METRIC_EVENTS.
    metrics: str = "training"


CASES: dict[str, Case] = {
    case.name: case
    for case in (
        Case(
            "ddp",
            "ddp",
            "torchrun",
            "DistributedDataParallel on a small MLP (data parallel, gradients all-reduced)",
            cpu_args=("--steps", "40"),
            gpu_args=("--steps", "200"),
            checkpoints=True,
        ),
        Case(
            "fsdp",
            "fsdp",
            "torchrun",
            "FSDP2 on a Llama-style model, DCP checkpoints with auto-resume",
            cpu_args=("--config", "tiny", "--steps", "20", "--seq-len", "128"),
            gpu_args=("--config", "1b", "--steps", "50"),
            checkpoints=True,
        ),
        Case(
            "jax",
            "jax_dp",
            "per_node",
            "JAX multi-process data parallel (one process per node)",
            cpu_args=("--steps", "40"),
            gpu_args=("--steps", "200"),
            checkpoints=True,
            coordinator=True,
        ),
        Case(
            "allreduce",
            "allreduce",
            "torchrun",
            "torch.distributed all-reduce bus bandwidth, like nccl-tests (gloo on CPU)",
            cpu_args=("--max-bytes", "16M", "--iters", "10"),
            gpu_args=("--max-bytes", "1G", "--iters", "20"),
            metrics="bandwidth",
        ),
        Case(
            "nccl_tests",
            "allreduce",
            "mpi",
            "NVIDIA nccl-tests all_reduce_perf across nodes (MPI, EFA), busbw table parsed",
            # The allreduce module's options, then all_reduce_perf's own after `--`.
            gpu_args=("--min-bytes", "8", "--max-bytes", "16G", "--", "-g", "1", "-n", "20"),
            needs_gpu=True,
            # Where roles/nccl installs nccl-tests (its nccl_tests_prefix).
            program="/opt/nccl-tests/bin/all_reduce_perf",
            cpu_substitute="allreduce",
            metrics="bandwidth",
        ),
        Case(
            "deepspeed",
            "deepspeed_zero",
            "torchrun",
            "DeepSpeed ZeRO-3 on the fsdp case's Llama model and data (CPU accelerator, gloo)",
            cpu_args=("--config", "tiny", "--steps", "20", "--seq-len", "128"),
            gpu_args=("--config", "1b", "--steps", "50"),
            # Rendered, not offered by `mlcluster run` yet: roles/workloads does not install
            # deepspeed on the nodes (versions.yml) until that is tried on the local cluster.
            runnable=False,
        ),
        Case(
            "megatron",
            "megatron_gpt",
            "torchrun",
            "megatron-core GPTModel (local spec) on the fsdp case's Llama shapes, tensor and "
            "pipeline parallel (GPU only)",
            gpu_args=("--config", "1b", "--steps", "50"),
            needs_gpu=True,
            cpu_substitute="fsdp",
            # Rendered, not offered by `mlcluster run` yet: roles/workloads does not install
            # megatron-core on the nodes (versions.yml).
            runnable=False,
        ),
        Case(
            "envreport",
            "envreport",
            "per_node",
            "environment report of each node",
            runnable=False,
        ),
        Case("versions", "versions", "per_node", "library versions on each node", runnable=False),
    )
}

# The JSON lines a case prints, by kind: (the event of each step or message size, the event of
# the summary at the end); mlcluster_workloads.metrics writes the training ones, .allreduce the
# bandwidth ones.
METRIC_EVENTS = {"training": ("step", "summary"), "bandwidth": ("allreduce", "allreduce_summary")}

# Earlier names that specs may still use.
ALIASES = {"jax_dp": "jax"}


def get(name: str) -> Case:
    """The case called ``name`` (or an alias of it); ValueError naming the known ones."""
    key = ALIASES.get(name, name)
    if key not in CASES:
        raise ValueError(f"case must be one of {', '.join(CASES)}, not {name!r}")
    return CASES[key]


def runnable() -> list[str]:
    """Names `mlcluster run` offers."""
    return [name for name, case in CASES.items() if case.runnable]


def launched_by(launcher: str) -> list[str]:
    """Names of the cases the launcher ``launcher`` starts (``torchrun``: a PyTorchJob's)."""
    return [name for name, case in CASES.items() if case.launcher == launcher]
