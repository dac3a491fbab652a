from __future__ import annotations

import io
import json
from contextlib import redirect_stdout

import pytest
import yaml
from mlcluster_workloads.launch import (
    EFA_ENV,
    WorkloadSpec,
    main,
    pytorchjob,
    render_pytorchjob,
    render_sbatch,
)

FSDP_ON_P5 = WorkloadSpec(
    case="fsdp",
    args=("--config", "8b", "--checkpoint-dir", "/fsx/ckpt/run 1"),
    nodes=4,
    gpus_per_node=8,
    container_image="nvcr.io#nvidia/pytorch:25.01-py3",
    container_mounts=("/fsx:/fsx",),
    partition="p5",
    time="02:00:00",
    env={"HF_HOME": "/fsx/hf"},
    efa=True,
    efa_devices_per_node=32,
    hyperpod=True,
    output_dir="/fsx/logs/",
)


def test_sbatch_for_fsdp_on_hyperpod_with_efa_and_a_container():
    assert render_sbatch(FSDP_ON_P5) == (
        "#!/bin/bash\n"
        "#SBATCH --job-name=mlcluster-fsdp\n"
        "#SBATCH --nodes=4\n"
        "#SBATCH --ntasks-per-node=1\n"
        "#SBATCH --gpus-per-node=8\n"
        "#SBATCH --exclusive\n"
        "#SBATCH --partition=p5\n"
        "#SBATCH --time=02:00:00\n"
        "#SBATCH --requeue\n"
        "#SBATCH --open-mode=append\n"
        "#SBATCH --signal=B:USR1@120\n"
        "#SBATCH --output=/fsx/logs/%x-%j.out\n"
        "# Rendered by mlcluster_workloads.launch.\n"
        "set -euo pipefail\n"
        "\n"
        "export FI_PROVIDER=efa\n"
        "export FI_EFA_USE_HUGE_PAGE=0\n"
        "export NCCL_SOCKET_IFNAME='^docker,lo,veth'\n"
        "export NCCL_DEBUG=INFO\n"
        "export FI_EFA_USE_DEVICE_RDMA=1\n"
        "export HF_HOME=/fsx/hf\n"
        "\n"
        'head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)\n'
        "\n"
        "# SIGUSR1 arrives 120 s before the time limit (--signal): SIGTERM\n"
        "# to the step's processes (not to srun, which would SIGKILL them) makes the ranks save\n"
        "# after their current step and exit; then the job is requeued and resumes from there.\n"
        "save_and_requeue() {\n"
        '  echo "mlcluster: time limit near: saving and requeueing job $SLURM_JOB_ID" >&2\n'
        '  scancel --signal=TERM "$SLURM_JOB_ID"\n'
        '  wait "$step_pid" || true\n'
        '  scontrol requeue "$SLURM_JOB_ID"\n'
        "  exit 0\n"
        "}\n"
        "trap save_and_requeue USR1\n"
        "\n"
        "srun --auto-resume=1 --container-image='nvcr.io#nvidia/pytorch:25.01-py3'"
        " --container-mounts=/fsx:/fsx \\\n"
        "  torchrun --nnodes=$SLURM_JOB_NUM_NODES --nproc_per_node=8 --rdzv_backend=c10d"
        " --rdzv_endpoint=$head_node:29500 --rdzv_id=$SLURM_JOB_ID"
        " --rdzv_conf=join_timeout=300 \\\n"
        "  -m mlcluster_workloads.fsdp --dist-timeout=300 --config 8b"
        " --checkpoint-dir '/fsx/ckpt/run 1' &\n"
        "step_pid=$!\n"
        'wait "$step_pid"\n'
    )


def test_sbatch_plain_cluster_has_no_efa_auto_resume_or_container():
    script = render_sbatch(
        WorkloadSpec(case="ddp", nodes=2, gpus_per_node=0, procs_per_node=2, venv="/fsx/venv/")
    )
    lines = script.splitlines()
    assert "#SBATCH --nodes=2" in lines
    assert "#SBATCH --ntasks-per-node=1" in lines
    assert "#SBATCH --requeue" in lines
    assert "#SBATCH --open-mode=append" in lines
    assert "#SBATCH --signal=B:USR1@120" in lines
    assert "#SBATCH --output=logs/%x-%j.out" in lines
    assert not any(line.startswith("#SBATCH --gpus-per-node") for line in lines)
    assert not any(line.startswith(("#SBATCH --partition", "#SBATCH --time")) for line in lines)
    assert not any(line.startswith("export") for line in lines)
    assert "srun \\" in lines
    assert (
        "  /fsx/venv/bin/torchrun --nnodes=$SLURM_JOB_NUM_NODES --nproc_per_node=2"
        " --rdzv_backend=c10d --rdzv_endpoint=$head_node:29500 --rdzv_id=$SLURM_JOB_ID"
        " --rdzv_conf=join_timeout=300 \\"
    ) in lines
    assert lines[-3:] == [
        "  -m mlcluster_workloads.ddp --dist-timeout=300 &",
        "step_pid=$!",
        'wait "$step_pid"',
    ]
    for absent in ("FI_PROVIDER", "--auto-resume", "--container", "NCCL_SOCKET_IFNAME"):
        assert absent not in script


def test_sbatch_efa_without_hyperpod_or_container():
    script = render_sbatch(
        WorkloadSpec(case="allreduce", nodes=2, efa=True, args=("--max-bytes", "1G"))
    )
    lines = script.splitlines()
    assert [line for line in lines if line.startswith("export")] == [
        "export FI_PROVIDER=efa",
        "export FI_EFA_USE_HUGE_PAGE=0",
        "export NCCL_SOCKET_IFNAME='^docker,lo,veth'",
        "export NCCL_DEBUG=INFO",
        # GPUDirect RDMA over EFA: only with GPUs.
        "export FI_EFA_USE_DEVICE_RDMA=1",
    ]
    assert "srun \\" in lines
    # a measurement keeps no state: requeued, it runs again; no time-limit trap, no --dist-timeout
    assert "#SBATCH --requeue" in lines and "#SBATCH --open-mode=append" in lines
    assert not any("--signal" in line or "trap" in line for line in lines)
    assert lines[-1] == "  -m mlcluster_workloads.allreduce --max-bytes 1G"


def test_sbatch_jax_runs_one_process_per_node_with_the_first_node_as_coordinator():
    script = render_sbatch(
        WorkloadSpec(case="jax_dp", nodes=3, gpus_per_node=0, hyperpod=True, args=("--steps", "9"))
    )
    lines = script.splitlines()
    assert "#SBATCH --ntasks-per-node=1" in lines
    assert "torchrun" not in script
    assert lines[-5:] == [
        "srun --auto-resume=1 \\",
        "  python \\",
        # JAX's --dist-timeout is its initialisation timeout: the start-up one
        "  -m mlcluster_workloads.jax_dp --coordinator=$head_node:12355 --dist-timeout=300"
        " --steps 9 &",
        "step_pid=$!",
        'wait "$step_pid"',
    ]


def test_spec_env_overrides_efa_defaults():
    spec = WorkloadSpec(case="ddp", efa=True, gpus_per_node=0, env={"NCCL_DEBUG": "WARN"})
    assert spec.environment() == {
        "FI_PROVIDER": "efa",
        "FI_EFA_USE_HUGE_PAGE": "0",
        "NCCL_SOCKET_IFNAME": "^docker,lo,veth",
        "NCCL_DEBUG": "WARN",
    }
    assert "export NCCL_DEBUG=WARN" in render_sbatch(spec).splitlines()


def test_pytorchjob_for_fsdp_on_eks():
    rendered = render_pytorchjob(FSDP_ON_P5)
    lines = rendered.splitlines()
    for line in (
        "apiVersion: kubeflow.org/v1",
        "kind: PyTorchJob",
        "  name: mlcluster-fsdp",
        "    Master:",
        "    Worker:",
        "            - --rdzv_endpoint=$(MASTER_ADDR):$(MASTER_PORT)",
        "                nvidia.com/gpu: 8",
        "                vpc.amazonaws.com/efa: 32",
    ):
        assert line in lines, line
    job = yaml.safe_load(rendered)
    master = job["spec"]["pytorchReplicaSpecs"]["Master"]
    worker = job["spec"]["pytorchReplicaSpecs"]["Worker"]
    assert (master["replicas"], worker["replicas"]) == (1, 3)
    container = worker["template"]["spec"]["containers"][0]
    assert container["name"] == "pytorch"
    assert container["command"] == ["torchrun"]
    assert container["args"] == [
        "--nnodes=4",
        "--nproc_per_node=8",
        "--rdzv_backend=c10d",
        "--rdzv_endpoint=$(MASTER_ADDR):$(MASTER_PORT)",
        "--rdzv_id=mlcluster-fsdp",
        "--rdzv_conf=join_timeout=300",
        "-m",
        "mlcluster_workloads.fsdp",
        "--dist-timeout=300",
        "--config",
        "8b",
        "--checkpoint-dir",
        "/fsx/ckpt/run 1",  # a list element: no shell quoting
    ]
    resources = {"nvidia.com/gpu": 8, "vpc.amazonaws.com/efa": 32}
    assert container["resources"] == {"requests": resources, "limits": resources}
    assert {e["name"]: e["value"] for e in container["env"]} == {
        **EFA_ENV,
        "FI_EFA_USE_DEVICE_RDMA": "1",
        "HF_HOME": "/fsx/hf",
    }


def test_pytorchjob_single_node_without_efa():
    job = pytorchjob(WorkloadSpec(case="ddp", nodes=1, gpus_per_node=4, container_image="img:1"))
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert list(replicas) == ["Master"]
    container = replicas["Master"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": 4}
    assert "env" not in container
    assert "vpc.amazonaws.com/efa" not in render_pytorchjob(
        WorkloadSpec(case="ddp", container_image="img:1")
    )


def test_pytorchjob_refuses_what_it_cannot_run():
    with pytest.raises(ValueError, match="container_image"):
        pytorchjob(WorkloadSpec(case="ddp"))
    with pytest.raises(ValueError, match="not a torch case"):
        pytorchjob(WorkloadSpec(case="jax_dp", container_image="img:1"))


def test_spec_validation():
    with pytest.raises(ValueError, match="case must be one of ddp, fsdp, jax, allreduce"):
        WorkloadSpec(case="jax_ddp")
    # The module's name is an alias of the case's.
    assert WorkloadSpec(case="jax_dp").case == "jax"
    with pytest.raises(ValueError, match="nccl_tests needs GPUs"):
        WorkloadSpec(case="nccl_tests", gpus_per_node=0)
    with pytest.raises(ValueError, match="not both"):
        WorkloadSpec(case="ddp", container_image="img:1", container_bundle="/fsx/b")
    with pytest.raises(ValueError, match="absolute path"):
        WorkloadSpec(case="ddp", container_bundle="bundles/debian")
    with pytest.raises(ValueError, match="unknown workload spec keys: gpus"):
        WorkloadSpec.from_mapping({"case": "ddp", "gpus": 8})


def test_cli_renders_a_spec_file(tmp_path):
    spec = tmp_path / "spec.yml"
    spec.write_text(json.dumps({"case": "allreduce", "nodes": 2, "args": ["--iters", "5"]}))
    out = io.StringIO()
    with redirect_stdout(out):
        main([str(spec), "--format", "sbatch"])
    assert out.getvalue() == (
        "#!/bin/bash\n"
        "#SBATCH --job-name=mlcluster-allreduce\n"
        "#SBATCH --nodes=2\n"
        "#SBATCH --ntasks-per-node=1\n"
        "#SBATCH --gpus-per-node=8\n"  # the spec's default
        "#SBATCH --exclusive\n"
        "#SBATCH --requeue\n"
        "#SBATCH --open-mode=append\n"
        "#SBATCH --output=logs/%x-%j.out\n"
        "# Rendered by mlcluster_workloads.launch.\n"
        "set -euo pipefail\n"
        "\n"
        'head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)\n'
        "\n"
        "srun \\\n"
        "  torchrun --nnodes=$SLURM_JOB_NUM_NODES --nproc_per_node=8 --rdzv_backend=c10d"
        " --rdzv_endpoint=$head_node:29500 --rdzv_id=$SLURM_JOB_ID"
        " --rdzv_conf=join_timeout=300 \\\n"
        "  -m mlcluster_workloads.allreduce --iters 5\n"
    )


def test_sbatch_nccl_tests_runs_one_mpi_rank_per_gpu_through_pmix():
    script = render_sbatch(
        WorkloadSpec(
            case="nccl_tests",
            nodes=2,
            gpus_per_node=8,
            efa=True,
            venv="/fsx/venv",
            args=("--max-bytes", "1G", "--", "-g", "1"),
            container_image="nvcr.io#nvidia/pytorch:25.01-py3",
            container_mounts=("/fsx:/fsx",),
        )
    )
    lines = script.splitlines()
    assert lines[1:4] == [
        "#SBATCH --job-name=mlcluster-nccl-tests",
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=8",
    ]
    assert "export FI_EFA_USE_DEVICE_RDMA=1" in lines
    assert lines[-1] == (
        "/fsx/venv/bin/python -m mlcluster_workloads.allreduce --nccl-tests"
        " --nccl-tests-bin=/opt/nccl-tests/bin/all_reduce_perf"
        " --launcher='srun --mpi=pmix --container-image='\"'\"'"
        "nvcr.io#nvidia/pytorch:25.01-py3'\"'\"'"
        " --container-mounts=/fsx:/fsx' --max-bytes 1G -- -g 1"
    )


def test_sbatch_oci_bundle_runs_every_step_in_the_container():
    script = render_sbatch(
        WorkloadSpec(case="ddp", nodes=2, gpus_per_node=0, container_bundle="/fsx/containers/deb")
    )
    lines = script.splitlines()
    assert "srun --container=/fsx/containers/deb \\" in lines
    assert "--container-image" not in script
