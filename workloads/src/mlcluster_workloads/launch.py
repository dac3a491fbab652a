"""Render how a workload is started on a cluster: an sbatch script or a Kubeflow PyTorchJob.

    python -m mlcluster_workloads.launch spec.yml --format sbatch > job.sbatch
    python -m mlcluster_workloads.launch spec.yml --format pytorchjob | kubectl apply -f -

Pure Python; nothing here needs torch or a cluster. A spec is a ``WorkloadSpec`` (or a YAML/JSON
mapping of its fields). How each case starts (torchrun per node, one process per node, MPI
ranks per GPU) comes from the case registry, ``mlcluster_workloads.cases``. Slurm opens
``--output`` before the script runs, so ``output_dir`` must exist when the job starts.

Containers: ``container_image`` runs the job's steps in an enroot image through pyxis
(``srun --container-image``); ``container_bundle`` runs them in an OCI bundle (a directory with
``config.json`` and ``rootfs``) through Slurm's own OCI support (``srun --container``, the
runtime set in ``oci.conf``).

Faults: the script asks Slurm to requeue the job when a node fails (``--requeue``), appends to
its output across runs (``--open-mode=append``) and, for the cases that checkpoint, has Slurm
warn the batch shell ``signal_before_end_s`` before the time limit (``--signal=B:USR1@...``):
its trap signals the job step with SIGTERM (the ranks save after their current step and exit),
waits for it and requeues the job, which resumes from that checkpoint. Start-up and collectives
have explicit timeouts (torchrun's rendezvous ``join_timeout``, the cases' ``--dist-timeout``).

Every value that reaches the script is validated or quoted: names, partition, time and paths
must match the patterns below (a newline or ``;`` in them is an error, not a new shell line);
environment keys must be shell names and values are quoted; arguments are quoted.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from mlcluster_workloads import cases

# What the AWS reference jobs set on EFA instances: use the EFA libfabric provider, leave huge
# pages to the application (fork safety), keep NCCL's bootstrap off container/loopback links,
# and log NCCL's transport choice so that a fallback to sockets shows in the job log.
EFA_ENV = {
    "FI_PROVIDER": "efa",
    "FI_EFA_USE_HUGE_PAGE": "0",
    "NCCL_SOCKET_IFNAME": "^docker,lo,veth",
    "NCCL_DEBUG": "INFO",
}
# On GPU instances EFA moves GPU memory directly (GPUDirect RDMA: p4d, p5 and later).
EFA_GPU_ENV = {"FI_EFA_USE_DEVICE_RDMA": "1"}
# Where a coordinator case's first process listens (jax.distributed).
COORDINATOR_PORT = 12355

# What the values interpolated into a script may look like. Slurm's own syntax is narrower
# still; these keep shell and #SBATCH lines intact whatever Slurm then accepts.
_PATTERNS = {
    "job_name": (r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", "letters, digits, '.', '_', '-'"),
    "partition": (r"[A-Za-z0-9._-]+(,[A-Za-z0-9._-]+)*", "partition names, comma-separated"),
    # minutes, min:sec, h:min:sec, days-h, days-h:min, days-h:min:sec (sbatch(1) --time)
    "time": (r"\d+(-\d+)?(:\d+){0,2}|UNLIMITED|INFINITE", "a Slurm time such as 30, 1:00:00, 2-0"),
    "output_dir": (r"[A-Za-z0-9_./%+-]+", "a path of letters, digits and ._/%+-"),
    "venv": (r"/[A-Za-z0-9_./+-]*", "an absolute path of letters, digits and ._/+-"),
    "namespace": (r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", "a Kubernetes namespace (DNS label)"),
}
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# A PyTorchJob's name is a Kubernetes object name (DNS-1123 label: lower case, at most 63).
_K8S_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


@dataclass(frozen=True)
class WorkloadSpec:
    case: str
    args: tuple[str, ...] = ()
    nodes: int = 1
    gpus_per_node: int = 8
    # torch ranks per node; default: one per GPU, or one on nodes without GPUs
    procs_per_node: int | None = None
    container_image: str | None = None
    container_bundle: str | None = None
    container_mounts: tuple[str, ...] = ()
    partition: str | None = None
    time: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    efa: bool = False
    efa_devices_per_node: int = 1  # Kubernetes vpc.amazonaws.com/efa request (p5.48xlarge: 32)
    hyperpod: bool = False
    venv: str | None = None  # on the nodes (or in the container): its bin/ holds the commands
    output_dir: str = "logs"
    job_name: str | None = None
    namespace: str = "default"
    rdzv_port: int = 29500
    # Seconds torchrun's rendezvous (and jax.distributed.initialize) wait for every node to
    # join, and a collective waits for a peer before the ranks fail.
    startup_timeout: int = 300
    collective_timeout: int = 300
    # Seconds before the time limit that a checkpointing case is told to save and requeue.
    signal_before_end_s: int = 120

    def __post_init__(self) -> None:
        object.__setattr__(self, "case", cases.get(self.case).name)
        if self.container_image and self.container_bundle:
            raise ValueError("give container_image (pyxis) or container_bundle (OCI), not both")
        if self.container_bundle and not self.container_bundle.startswith("/"):
            raise ValueError("container_bundle must be an absolute path on the nodes")
        if self.definition.needs_gpu and not self.gpus_per_node:
            raise ValueError(f"{self.case} needs GPUs: gpus_per_node must be at least 1")
        if self.nodes < 1 or self.gpus_per_node < 0:
            raise ValueError("nodes must be >= 1 and gpus_per_node >= 0")
        if self.procs_per_node is not None and self.procs_per_node < 1:
            raise ValueError("procs_per_node must be >= 1")
        object.__setattr__(self, "args", tuple(str(arg) for arg in self.args))
        object.__setattr__(self, "container_mounts", tuple(self.container_mounts))
        object.__setattr__(self, "env", {str(k): str(v) for k, v in self.env.items()})
        self._validate()

    def _validate(self) -> None:
        for name, (pattern, meaning) in _PATTERNS.items():
            value = getattr(self, name)
            if value is not None and not re.fullmatch(pattern, str(value)):
                raise ValueError(f"{name} must be {meaning}, not {value!r}")
        for key, value in self.env.items():
            if not _ENV_KEY.fullmatch(key):
                raise ValueError(f"env key {key!r} is not a shell variable name")
            if any(c in value for c in "\n\r\0"):
                raise ValueError(f"env value of {key} must be one line without NUL")
        if not 1 <= self.rdzv_port <= 65535:
            raise ValueError(f"rdzv_port must be a port number, not {self.rdzv_port}")
        for name in ("startup_timeout", "collective_timeout", "signal_before_end_s"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1 second")
        containers = (self.container_image, self.container_bundle, *self.container_mounts)
        for value in filter(None, containers):
            if any(c in value for c in "\n\r\0"):
                raise ValueError(f"container settings must be one line, not {value!r}")
        if any("\0" in arg for arg in self.args):
            raise ValueError("arguments must not contain NUL")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> WorkloadSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown workload spec keys: {', '.join(unknown)}")
        return cls(**values)

    @property
    def definition(self) -> cases.Case:
        return cases.get(self.case)

    @property
    def name(self) -> str:
        return self.job_name or f"mlcluster-{self.case.replace('_', '-')}"

    @property
    def nproc_per_node(self) -> int:
        return self.procs_per_node or self.gpus_per_node or 1

    def command(self, name: str) -> str:
        return f"{self.venv.rstrip('/')}/bin/{name}" if self.venv else name

    def timeout_arguments(self) -> list[str]:
        """The case's own timeout flag (training cases): the collective timeout for torch, the
        initialisation timeout for a coordinator case (JAX). Placed before the user's arguments,
        which win."""
        if not self.definition.checkpoints:
            return []
        seconds = self.startup_timeout if self.definition.coordinator else self.collective_timeout
        return [f"--dist-timeout={seconds}"]

    def environment(self) -> dict[str, str]:
        """EFA settings (only with efa) overlaid by the spec's own env."""
        efa = {**EFA_ENV, **(EFA_GPU_ENV if self.gpus_per_node else {})} if self.efa else {}
        return {**efa, **self.env}


def torchrun_arguments(spec: WorkloadSpec, *, nnodes: str, endpoint: str, run_id: str):
    return [
        f"--nnodes={nnodes}",
        f"--nproc_per_node={spec.nproc_per_node}",
        "--rdzv_backend=c10d",
        f"--rdzv_endpoint={endpoint}",
        f"--rdzv_id={run_id}",
        f"--rdzv_conf=join_timeout={spec.startup_timeout}",
    ]


def render_sbatch(spec: WorkloadSpec) -> str:
    """A batch script: one task per node, srun starting torchrun (or the per-node case)."""
    case = spec.definition
    # MPI programs run one rank per GPU; everything else one task per node.
    tasks_per_node = spec.gpus_per_node if case.launcher == "mpi" else 1
    directives = [
        f"--job-name={spec.name}",
        f"--nodes={spec.nodes}",
        f"--ntasks-per-node={tasks_per_node}",
    ]
    if spec.gpus_per_node:
        directives.append(f"--gpus-per-node={spec.gpus_per_node}")
    directives.append("--exclusive")
    if spec.partition:
        directives.append(f"--partition={spec.partition}")
    if spec.time:
        directives.append(f"--time={spec.time}")
    directives += ["--requeue", "--open-mode=append"]
    if case.checkpoints:
        directives.append(f"--signal=B:USR1@{spec.signal_before_end_s}")
    directives.append(f"--output={spec.output_dir.rstrip('/')}/%x-%j.out")

    lines = ["#!/bin/bash", *(f"#SBATCH {d}" for d in directives)]
    lines += ["# Rendered by mlcluster_workloads.launch.", "set -euo pipefail", ""]
    environment = spec.environment()
    if environment:
        lines += [f"export {key}={shlex.quote(value)}" for key, value in environment.items()]
        lines.append("")
    lines += ['head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)', ""]

    srun = ["srun"]
    if spec.hyperpod:
        srun.append("--auto-resume=1")
    if spec.container_image:
        srun.append(f"--container-image={shlex.quote(spec.container_image)}")
        if spec.container_mounts:
            srun.append(f"--container-mounts={shlex.quote(','.join(spec.container_mounts))}")
    if spec.container_bundle:
        srun.append(f"--container={shlex.quote(spec.container_bundle)}")
    if case.launcher == "mpi":
        # The batch step runs the case's module once; it starts the program on every rank
        # through srun and turns rank 0's table into the JSON lines of the allreduce case.
        mpi_srun = " ".join([*srun[:1], "--mpi=pmix", *srun[1:]])
        program = [
            spec.command("python"),
            "-m",
            f"mlcluster_workloads.{case.module}",
            "--nccl-tests",
            f"--nccl-tests-bin={case.program}",
            f"--launcher={shlex.quote(mpi_srun)}",
        ]
        program += [shlex.quote(arg) for arg in spec.args]
        lines += [" ".join(program)]
        return "\n".join(lines) + "\n"
    module = f"mlcluster_workloads.{case.module}"
    if case.launcher == "torchrun":
        launcher = [
            spec.command("torchrun"),
            *torchrun_arguments(
                spec,
                nnodes="$SLURM_JOB_NUM_NODES",
                endpoint=f"$head_node:{spec.rdzv_port}",
                run_id="$SLURM_JOB_ID",
            ),
        ]
    else:
        launcher = [spec.command("python")]
    program = ["-m", module]
    if case.coordinator:
        program.append(f"--coordinator=$head_node:{COORDINATOR_PORT}")
    program += [shlex.quote(arg) for arg in [*spec.timeout_arguments(), *spec.args]]
    step = [" ".join(srun) + " \\", "  " + " ".join(launcher) + " \\", "  " + " ".join(program)]
    if not case.checkpoints:
        return "\n".join([*lines, *step]) + "\n"
    lines += [
        f"# SIGUSR1 arrives {spec.signal_before_end_s} s before the time limit (--signal): SIGTERM",
        "# to the step's processes (not to srun, which would SIGKILL them) makes the ranks save",
        "# after their current step and exit; then the job is requeued and resumes from there.",
        "save_and_requeue() {",
        '  echo "mlcluster: time limit near: saving and requeueing job $SLURM_JOB_ID" >&2',
        '  scancel --signal=TERM "$SLURM_JOB_ID"',
        '  wait "$step_pid" || true',
        '  scontrol requeue "$SLURM_JOB_ID"',
        "  exit 0",
        "}",
        "trap save_and_requeue USR1",
        "",
        *step[:-1],
        step[-1] + " &",
        "step_pid=$!",
        'wait "$step_pid"',
    ]
    return "\n".join(lines) + "\n"


def pytorchjob(spec: WorkloadSpec) -> dict[str, Any]:
    """A Kubeflow training-operator PyTorchJob (kubeflow.org/v1) as a mapping."""
    torch_cases = cases.launched_by("torchrun")
    if spec.case not in torch_cases:
        raise ValueError(
            f"{spec.case} is not a torch case; a PyTorchJob runs only {', '.join(torch_cases)}"
        )
    if not spec.container_image:
        raise ValueError("a PyTorchJob needs container_image")
    if not _K8S_NAME.fullmatch(spec.name):
        raise ValueError(
            f"a PyTorchJob's name must be a DNS-1123 label (lower case, digits, '-', at most "
            f"63), not {spec.name!r}"
        )
    resources: dict[str, int] = {}
    if spec.gpus_per_node:
        resources["nvidia.com/gpu"] = spec.gpus_per_node
    if spec.efa:
        resources["vpc.amazonaws.com/efa"] = spec.efa_devices_per_node
    container: dict[str, Any] = {
        "name": "pytorch",  # the operator looks for the container of this name
        "image": spec.container_image,
        "imagePullPolicy": "IfNotPresent",
        "command": [spec.command("torchrun")],
        # The operator sets MASTER_ADDR/MASTER_PORT in every replica; Kubernetes expands $(...).
        "args": [
            *torchrun_arguments(
                spec,
                nnodes=str(spec.nodes),
                endpoint="$(MASTER_ADDR):$(MASTER_PORT)",
                run_id=spec.name,
            ),
            "-m",
            f"mlcluster_workloads.{spec.definition.module}",
            *spec.timeout_arguments(),
            *spec.args,
        ],
    }
    environment = spec.environment()
    if environment:
        container["env"] = [{"name": key, "value": value} for key, value in environment.items()]
    if resources:
        container["resources"] = {"requests": dict(resources), "limits": dict(resources)}
    container["volumeMounts"] = [{"name": "dshm", "mountPath": "/dev/shm"}]

    def replica(count: int) -> dict[str, Any]:
        return {
            "replicas": count,
            "restartPolicy": "OnFailure",
            "template": {
                "spec": {
                    "containers": [container],
                    # NCCL and the data loaders need more shared memory than the 64 MiB default.
                    "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory"}}],
                }
            },
        }

    replicas = {"Master": replica(1)}
    if spec.nodes > 1:
        replicas["Worker"] = replica(spec.nodes - 1)
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": spec.name, "namespace": spec.namespace},
        "spec": {"pytorchReplicaSpecs": replicas},
    }


class _NoAliasDumper(yaml.SafeDumper):
    """Write the shared container mapping out in full under Master and Worker."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render_pytorchjob(spec: WorkloadSpec) -> str:
    return yaml.dump(pytorchjob(spec), Dumper=_NoAliasDumper, sort_keys=False)


RENDERERS = {"sbatch": render_sbatch, "pytorchjob": render_pytorchjob}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mlcluster_workloads.launch")
    parser.add_argument("spec", help="YAML or JSON file with WorkloadSpec fields")
    parser.add_argument("--format", choices=sorted(RENDERERS), default="sbatch")
    args = parser.parse_args(argv)
    with open(args.spec) as handle:
        values = yaml.safe_load(handle)
    if not isinstance(values, Mapping):
        raise SystemExit(f"{args.spec} must hold a mapping of WorkloadSpec fields")
    try:
        spec = WorkloadSpec.from_mapping(values)
    except (TypeError, ValueError) as error:
        raise SystemExit(f"{args.spec}: {error}") from error
    sys.stdout.write(RENDERERS[args.format](spec))


if __name__ == "__main__":
    main()
