"""The one registry of test cases: what each is called, how it is started, what it needs.

The CLI (`mlcluster run`), the launcher (``launch.render_sbatch`` / ``pytorchjob``) and the
renderers all read this table; nothing else lists the cases. Pure Python: importing it needs
neither torch nor JAX.

How a case starts on Slurm (``launcher``):
- ``torchrun``: one task per node, a ``torchrun`` that starts ``nproc_per_node`` ranks and meets
  the other nodes through the c10d rendezvous on the first node;
- ``per_node``: one process per node (``jax`` is pointed at the first node as coordinator);
- ``mpi``: one MPI rank per GPU started by ``srun --mpi=pmix`` (nccl-tests), its output turned
  into the same JSON lines as the Python cases by ``mlcluster_workloads.nccl_tests``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Case:
    name: str
    # Python module under mlcluster_workloads (None: not a Python program).
    module: str | None
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
        ),
        Case(
            "allreduce",
            "allreduce",
            "torchrun",
            "torch.distributed all-reduce bus bandwidth, like nccl-tests (gloo on CPU)",
            cpu_args=("--max-bytes", "16M", "--iters", "10"),
            gpu_args=("--max-bytes", "1G", "--iters", "20"),
        ),
        Case(
            "nccl_tests",
            None,
            "mpi",
            "NVIDIA nccl-tests all_reduce_perf across nodes (MPI, EFA), busbw table parsed",
            # The allreduce module's options, then all_reduce_perf's own after `--`.
            gpu_args=("--min-bytes", "8", "--max-bytes", "16G", "--", "-g", "1", "-n", "20"),
            needs_gpu=True,
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
            "envreport",
            "envreport",
            "per_node",
            "environment report of each node",
            runnable=False,
        ),
        Case("versions", "versions", "per_node", "library versions on each node", runnable=False),
    )
}

# Earlier names that specs may still use.
ALIASES = {"jax_dp": "jax"}

# Where the launcher finds nccl-tests on a node (roles/nccl's nccl_tests_prefix).
NCCL_TESTS_BIN = "/opt/nccl-tests/bin/all_reduce_perf"


def get(name: str) -> Case:
    """The case called ``name`` (or an alias of it); ValueError naming the known ones."""
    key = ALIASES.get(name, name)
    if key not in CASES:
        raise ValueError(f"case must be one of {', '.join(CASES)}, not {name!r}")
    return CASES[key]


def runnable() -> list[str]:
    """Names `mlcluster run` offers."""
    return [name for name, case in CASES.items() if case.runnable]
