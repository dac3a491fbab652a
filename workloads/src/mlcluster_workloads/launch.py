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
"""

from __future__ import annotations

import argparse
import dataclasses
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
JAX_COORDINATOR_PORT = 12355


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
    directives += ["--requeue", f"--output={spec.output_dir.rstrip('/')}/%x-%j.out"]

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
        # The batch step runs the parser once; it starts all_reduce_perf on every rank through
        # srun and turns rank 0's table into the JSON lines of the allreduce case.
        mpi_srun = " ".join([*srun[:1], "--mpi=pmix", *srun[1:]])
        program = [
            spec.command("python"),
            "-m",
            "mlcluster_workloads.allreduce",
            "--nccl-tests",
            f"--nccl-tests-bin={cases.NCCL_TESTS_BIN}",
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
    if spec.case == "jax":
        program.append(f"--coordinator=$head_node:{JAX_COORDINATOR_PORT}")
    program += [shlex.quote(arg) for arg in spec.args]
    lines += [" ".join(srun) + " \\", "  " + " ".join(launcher) + " \\", "  " + " ".join(program)]
    return "\n".join(lines) + "\n"


def pytorchjob(spec: WorkloadSpec) -> dict[str, Any]:
    """A Kubeflow training-operator PyTorchJob (kubeflow.org/v1) as a mapping."""
    torch_cases = [name for name, case in cases.CASES.items() if case.launcher == "torchrun"]
    if spec.case not in torch_cases:
        raise ValueError(
            f"{spec.case} is not a torch case; a PyTorchJob runs only {', '.join(torch_cases)}"
        )
    if not spec.container_image:
        raise ValueError("a PyTorchJob needs container_image")
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
