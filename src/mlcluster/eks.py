"""`mlcluster run CASE --platform eks`: the test case as a Kubeflow PyTorchJob on an EKS cluster.

The job is rendered from the same workload spec as the sbatch script
(``mlcluster_workloads.launch.pytorchjob``: torchrun per pod, GPUs, ``vpc.amazonaws.com/efa``,
the NCCL/EFA environment, ``/dev/shm`` in memory), then given what only a cluster knows: the
FSx for Lustre claim mounted at ``/fsx`` (where cases checkpoint) and, on HyperPod, the
health-monitoring node label and auto-resume annotations. Every manifest is validated before
it is applied: built-in kinds with ``kubernetes-validate`` against the pinned Kubernetes version
(versions.yml, ``eks.kubernetes``), the operators' kinds against the OpenAPI schemas of their
CRDs shipped in ``k8s_schemas/`` (training operator PyTorchJob, JobSet, and nodeadm's
NodeConfig that role eks_node renders; source repository, tag and commit inside each).
Both strict: a field the schema does not know is an error, as with ``kubectl --validate=strict``.

``kubectl`` (with the given kubeconfig) applies the job, follows its conditions, reads the
master pod's log and judges it by the case's JSON lines, as `mlcluster run` does on Slurm.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from .errors import MlclusterError
from .paths import project_root

SCHEMA_DIR = Path(__file__).parent / "k8s_schemas"
# (apiVersion, kind) -> the CRD schema file (written from the CRD definitions, see "source").
CRD_SCHEMAS = {
    ("kubeflow.org/v1", "PyTorchJob"): "pytorchjob-kubeflow.org-v1.json",
    ("jobset.x-k8s.io/v1alpha2", "JobSet"): "jobset-jobset.x-k8s.io-v1alpha2.json",
    ("node.eks.aws/v1alpha1", "NodeConfig"): "nodeconfig-node.eks.aws-v1alpha1.json",
}
# HyperPod's health-monitoring agent labels every node; jobs go only where it says Schedulable
# (others are UnschedulablePendingReplacement/-Reboot), and the HyperPod training operator
# restarts a job whose node it replaced when auto-resume is on.
HYPERPOD_HEALTH_LABEL = "sagemaker.amazonaws.com/node-health-status"
HYPERPOD_SCHEDULABLE = "Schedulable"
HYPERPOD_AUTO_RESUME = {
    "sagemaker.amazonaws.com/enable-job-auto-resume": "true",
    "sagemaker.amazonaws.com/job-max-retry-count": "2",
}
FSX_MOUNT = "/fsx"
POLL_S = 10
EXIT_BAD_INPUT = MlclusterError.exit_code


def eks_versions(versions: Mapping | None = None) -> dict:
    if versions is None:
        text = (project_root() / "versions.yml").read_text()
        versions = yaml.safe_load(text)["mlcluster_versions"]
    return dict(versions["eks"])


def kubernetes_version(versions: Mapping | None = None) -> str:
    return str(eks_versions(versions)["kubernetes"])


def _strict(schema: Any) -> Any:
    """The schema with unknown fields refused where the CRD lists the fields of an object
    (the API server's strict field validation); preserve-unknown-fields objects stay open."""
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _strict(value) for key, value in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@cache
def crd_validator(api_version: str, kind: str):
    import jsonschema

    data = json.loads((SCHEMA_DIR / CRD_SCHEMAS[(api_version, kind)]).read_text())
    schema = _strict(data["openAPIV3Schema"])
    if kind == "NodeConfig":
        # kubelet.config is a KubeletConfiguration merged by nodeadm (Go map of RawExtension:
        # any JSON value); controller-gen wrote its values as objects, which maxPods is not.
        kubelet = schema["properties"]["spec"]["properties"]["kubelet"]["properties"]
        kubelet["config"]["additionalProperties"] = {}
    return jsonschema.Draft7Validator(schema)


def _where(path: Iterable) -> str:
    return ".".join(str(part) for part in path) or "(top)"


def validation_errors(doc: Mapping, version: str | None = None) -> list[str]:
    """Why ``doc`` would be refused, one message per problem; empty when it is valid."""
    version = version or kubernetes_version()
    if not isinstance(doc, Mapping) or not doc.get("kind") or not doc.get("apiVersion"):
        return ["not a Kubernetes object (apiVersion and kind are required)"]
    kind, name = doc["kind"], (doc.get("metadata") or {}).get("name", "?")
    key = (doc["apiVersion"], kind)
    if key in CRD_SCHEMAS:
        errors = sorted(
            crd_validator(*key).iter_errors(doc), key=lambda e: [str(p) for p in e.absolute_path]
        )
        return [f"{kind}/{name}: {_where(e.absolute_path)}: {e.message}" for e in errors]
    import kubernetes_validate

    try:
        kubernetes_validate.validate(dict(doc), version, strict=True)
    except kubernetes_validate.ValidationError as error:
        return [f"{kind}/{name}: {_where(error.path)}: {error.message}"]
    except kubernetes_validate.SchemaNotFoundError:
        return [f"{kind}/{name}: {doc['apiVersion']} {kind} is not in Kubernetes {version}"]
    return []


def check_valid(docs: Iterable[Mapping], version: str | None = None) -> None:
    errors = [message for doc in docs for message in validation_errors(doc, version)]
    if errors:
        raise MlclusterError(
            "manifest refused by its schema:\n  " + "\n  ".join(errors), EXIT_BAD_INPUT
        )


def render_job(spec, *, fsx_claim: str | None = None, hyperpod: bool = False) -> dict[str, Any]:
    """The PyTorchJob of ``spec`` (a launch.WorkloadSpec) with the FSx claim at /fsx and,
    on HyperPod, the health label selector and auto-resume annotations."""
    from mlcluster_workloads import launch

    # A JSON round trip gives each replica its own copy of the pod template.
    job = json.loads(json.dumps(launch.pytorchjob(spec)))
    if hyperpod:
        job["metadata"]["annotations"] = dict(HYPERPOD_AUTO_RESUME)
    for replica in job["spec"]["pytorchReplicaSpecs"].values():
        pod = replica["template"]["spec"]
        if fsx_claim:
            pod["volumes"].append(
                {"name": "fsx", "persistentVolumeClaim": {"claimName": fsx_claim}}
            )
            for container in pod["containers"]:
                container["volumeMounts"].append({"name": "fsx", "mountPath": FSX_MOUNT})
        if hyperpod:
            pod["nodeSelector"] = {HYPERPOD_HEALTH_LABEL: HYPERPOD_SCHEDULABLE}
    return job


def job_spec(
    case: str,
    *,
    nodes: int,
    args: list[str],
    job_name: str,
    gpus_per_node: int,
    image: str,
    efa_devices: int,
    namespace: str,
):
    from mlcluster_workloads import launch

    try:
        return launch.WorkloadSpec(
            case=case,
            args=tuple(args),
            nodes=nodes,
            gpus_per_node=gpus_per_node,
            container_image=image,
            efa=efa_devices > 0,
            efa_devices_per_node=max(efa_devices, 1),
            job_name=job_name,
            namespace=namespace,
        )
    except ValueError as error:
        raise MlclusterError(str(error), EXIT_BAD_INPUT) from error


def job_state(job: Mapping) -> str:
    """The training operator's verdict: the newest true condition (Created, Running,
    Restarting, Succeeded, Failed), or Pending before it wrote one."""
    conditions = [
        c for c in (job.get("status") or {}).get("conditions") or [] if c.get("status") == "True"
    ]
    return conditions[-1]["type"] if conditions else "Pending"


def kubectl(kubeconfig: Path | None, *args: str, input_text: str | None = None, timeout=120):
    command = ["kubectl", *(["--kubeconfig", str(kubeconfig)] if kubeconfig else []), *args]
    try:
        proc = subprocess.run(
            command, input=input_text, capture_output=True, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError as error:
        raise MlclusterError("kubectl is not installed (it talks to the EKS cluster)") from error
    if proc.returncode != 0:
        raise MlclusterError(f"{' '.join(command[:4])} ...: {proc.stderr.strip()}", 1)
    return proc.stdout


def run_case(
    case: str,
    *,
    kubeconfig: Path | None,
    nodes: int = 2,
    report: Path | None = None,
    extra_args: list[str] | None = None,
    gpus_per_node: int | None = None,
    image: str | None = None,
    efa_devices: int = 0,
    namespace: str = "default",
    fsx_claim: str | None = "fsx-claim",
    hyperpod: bool = False,
    timeout_min: float = 60,
    render_only: bool = False,
    console=None,
) -> int:
    from rich.console import Console

    from . import job_report, workload_run

    console = console or Console()
    if not image:
        raise MlclusterError(
            "--platform eks runs the case in a container image: give --container IMAGE "
            "(one with the mlcluster_workloads package and torch)",
            EXIT_BAD_INPUT,
        )
    if nodes < 1 or efa_devices < 0 or not timeout_min > 0:
        raise MlclusterError("--nodes >= 1, --efa-devices >= 0, --timeout > 0", EXIT_BAD_INPUT)
    gpus = gpus_per_node or 0
    job_name = f"mlcluster-{case.replace('_', '-')}-{int(time.time())}"
    args = workload_run.case_arguments(case, extra_args or [], gpus, job_name)
    spec = job_spec(
        case, nodes=nodes, args=args, job_name=job_name, gpus_per_node=gpus, image=image,
        efa_devices=efa_devices, namespace=namespace,
    )  # fmt: skip
    try:
        job = render_job(spec, fsx_claim=fsx_claim, hyperpod=hyperpod)
    except ValueError as error:
        raise MlclusterError(str(error), EXIT_BAD_INPUT) from error
    check_valid([job])
    manifest = yaml.safe_dump(job, sort_keys=False)
    if render_only:
        console.out(manifest, end="", highlight=False)
        return 0
    kubectl(kubeconfig, "apply", "--validate=strict", "-f", "-", input_text=manifest)
    console.print(f"applied PyTorchJob {namespace}/{job_name} ({nodes} pod(s), {gpus} GPU(s) each)")
    deadline, state = time.monotonic() + timeout_min * 60, "Pending"
    while state not in ("Succeeded", "Failed"):
        if time.monotonic() > deadline:
            kubectl(kubeconfig, "delete", "pytorchjob", "-n", namespace, job_name)
            state = f"{state} (deleted after --timeout {timeout_min:g} min)"
            break
        time.sleep(POLL_S)
        current = json.loads(
            kubectl(kubeconfig, "get", "pytorchjob", "-n", namespace, job_name, "-o", "json")
        )
        state = job_state(current)
    selector = (
        f"training.kubeflow.org/job-name={job_name},training.kubeflow.org/replica-type=master"
    )
    output = kubectl(kubeconfig, "logs", "-n", namespace, "-l", selector, "--tail=-1")
    steps, summary = job_report.parse_metrics(output)
    console.print(job_report.summary_table(case, job_name, state, steps, summary))
    ok = state == "Succeeded" and summary is not None
    if report:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(
            json.dumps(
                {
                    "case": case, "job_id": job_name, "state": state, "platform": "eks",
                    "nodes": nodes, "gpus_per_node": gpus, "container": image, "args": args,
                    "summary": summary, "steps": steps,
                },
                indent=2,
            )
            + "\n"
        )  # fmt: skip
    return 0 if ok else 1


def add_run_arguments(run) -> None:
    """The options of `mlcluster run --platform eks` (cli.py's run parser)."""
    group = run.add_argument_group("EKS (--platform eks)")
    group.add_argument("--kubeconfig", help="the cluster's kubeconfig (default: kubectl's)")
    group.add_argument("--namespace", default="default", help="namespace of the job (default)")
    group.add_argument(
        "--efa-devices",
        type=int,
        default=0,
        metavar="N",
        help="vpc.amazonaws.com/efa devices per pod, with the NCCL/EFA environment (0: none)",
    )
    group.add_argument(
        "--fsx-claim",
        default="fsx-claim",
        help="PersistentVolumeClaim mounted at /fsx (playbooks/eks.yml makes fsx-claim); "
        "'' mounts none",
    )
    group.add_argument(
        "--hyperpod",
        action="store_true",
        help="HyperPod on EKS: only nodes its health agent labels Schedulable, auto-resume on",
    )
    group.add_argument(
        "--render",
        action="store_true",
        help="print the validated PyTorchJob and exit (nothing applied)",
    )


def run_from_args(args) -> int:
    from .inputs import check_report_path

    return run_case(
        args.case,
        kubeconfig=Path(args.kubeconfig) if args.kubeconfig else None,
        nodes=args.nodes,
        report=check_report_path(args.report),
        extra_args=args.args,
        gpus_per_node=args.gpus_per_node,
        image=args.container,
        efa_devices=args.efa_devices,
        namespace=args.namespace,
        fsx_claim=args.fsx_claim or None,
        hyperpod=args.hyperpod,
        timeout_min=args.timeout,
        render_only=args.render,
    )
