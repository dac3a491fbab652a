"""The Kubeflow PyTorchJob that mlcluster_workloads.launch renders, field by field against a job
written out here by hand, and the YAML text's quoting where a value would change type."""

from __future__ import annotations

import yaml
from mlcluster_workloads.launch import WorkloadSpec, render_pytorchjob

DDP_ON_EKS = WorkloadSpec(
    case="ddp",
    args=("--steps", "100", "--out", "/fsx/run 1"),
    nodes=3,
    gpus_per_node=8,
    container_image="123456789012.dkr.ecr.us-west-2.amazonaws.com/mlcluster:1",
    env={"HF_HOME": "/fsx/hf"},
    efa=True,
    efa_devices_per_node=4,
    venv="/opt/venv/",
    job_name="ddp-eks",
    namespace="training",
)

CONTAINER = {
    "name": "pytorch",
    "image": "123456789012.dkr.ecr.us-west-2.amazonaws.com/mlcluster:1",
    "imagePullPolicy": "IfNotPresent",
    "command": ["/opt/venv/bin/torchrun"],
    "args": [
        "--nnodes=3",
        "--nproc_per_node=8",
        "--rdzv_backend=c10d",
        "--rdzv_endpoint=$(MASTER_ADDR):$(MASTER_PORT)",
        "--rdzv_id=ddp-eks",
        "--rdzv_conf=join_timeout=300",
        "-m",
        "mlcluster_workloads.ddp",
        "--dist-timeout=300",
        "--steps",
        "100",
        "--out",
        "/fsx/run 1",
    ],
    "env": [
        {"name": "FI_PROVIDER", "value": "efa"},
        {"name": "FI_EFA_USE_HUGE_PAGE", "value": "0"},
        {"name": "NCCL_SOCKET_IFNAME", "value": "^docker,lo,veth"},
        {"name": "NCCL_DEBUG", "value": "INFO"},
        {"name": "FI_EFA_USE_DEVICE_RDMA", "value": "1"},
        {"name": "HF_HOME", "value": "/fsx/hf"},
    ],
    "resources": {
        "requests": {"nvidia.com/gpu": 8, "vpc.amazonaws.com/efa": 4},
        "limits": {"nvidia.com/gpu": 8, "vpc.amazonaws.com/efa": 4},
    },
    "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
}


def _replica(count: int) -> dict:
    return {
        "replicas": count,
        "restartPolicy": "OnFailure",
        "template": {
            "spec": {
                "containers": [CONTAINER],
                "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory"}}],
            }
        },
    }


def test_pytorchjob_for_ddp_on_three_gpu_nodes_with_efa():
    assert yaml.safe_load(render_pytorchjob(DDP_ON_EKS)) == {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": "ddp-eks", "namespace": "training"},
        "spec": {"pytorchReplicaSpecs": {"Master": _replica(1), "Worker": _replica(2)}},
    }


def test_pytorchjob_text_keeps_strings_strings_and_writes_no_aliases():
    lines = render_pytorchjob(DDP_ON_EKS).splitlines()
    assert lines[:5] == [
        "apiVersion: kubeflow.org/v1",
        "kind: PyTorchJob",
        "metadata:",
        "  name: ddp-eks",
        "  namespace: training",
    ]
    # Kubernetes wants env values and args as strings: numbers stay quoted.
    assert lines.count("              value: '0'") == 2
    assert lines.count("            - '100'") == 2
    assert not [line for line in lines if "&id" in line or "*id" in line]


def test_pytorchjob_of_one_cpu_node_without_efa():
    job = yaml.safe_load(
        render_pytorchjob(WorkloadSpec(case="allreduce", gpus_per_node=0, container_image="img:1"))
    )
    assert job == {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": "mlcluster-allreduce", "namespace": "default"},
        "spec": {
            "pytorchReplicaSpecs": {
                "Master": {
                    "replicas": 1,
                    "restartPolicy": "OnFailure",
                    "template": {
                        "spec": {
                            "containers": [
                                {
                                    "name": "pytorch",
                                    "image": "img:1",
                                    "imagePullPolicy": "IfNotPresent",
                                    "command": ["torchrun"],
                                    "args": [
                                        "--nnodes=1",
                                        "--nproc_per_node=1",
                                        "--rdzv_backend=c10d",
                                        "--rdzv_endpoint=$(MASTER_ADDR):$(MASTER_PORT)",
                                        "--rdzv_id=mlcluster-allreduce",
                                        "--rdzv_conf=join_timeout=300",
                                        "-m",
                                        "mlcluster_workloads.allreduce",
                                    ],
                                    "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
                                }
                            ],
                            "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory"}}],
                        }
                    },
                }
            }
        },
    }
