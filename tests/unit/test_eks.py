"""`mlcluster run --platform eks`: the PyTorchJob rendered from the workload spec, validated
against the training operator's own CRD schema (and Kubernetes' through kubernetes-validate),
with wrong manifests refused. No API server exists here: nothing is applied."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from mlcluster_workloads import cases

from mlcluster import cli, eks
from mlcluster.errors import MlclusterError

TORCH_CASES = [name for name, case in cases.CASES.items() if case.launcher == "torchrun"]


def ddp_job(**overrides):
    values = dict(
        nodes=2, args=["--steps", "200"], job_name="mlcluster-ddp-1", gpus_per_node=8,
        image="registry.example/mlcluster:1", efa_devices=32, namespace="training",
    )  # fmt: skip
    values.update(overrides)
    return eks.job_spec("ddp", **values)


def test_the_shipped_schemas_name_their_source_commit():
    for (api_version, kind), name in eks.CRD_SCHEMAS.items():
        data = json.loads((eks.SCHEMA_DIR / name).read_text())
        assert f"{data['group']}/{data['version']}" == api_version
        assert data["kind"] == kind
        assert re.fullmatch(r"[0-9a-f]{40}", data["source"]["commit"]), name
        assert data["source"]["repository"].startswith("https://github.com/")
        assert data["openAPIV3Schema"]["type"] == "object"


def test_a_gpu_efa_job_on_hyperpod_with_the_fsx_claim():
    job = eks.render_job(ddp_job(), fsx_claim="fsx-claim", hyperpod=True)
    assert eks.validation_errors(job) == []
    assert job["metadata"] == {
        "name": "mlcluster-ddp-1",
        "namespace": "training",
        "annotations": {
            "sagemaker.amazonaws.com/enable-job-auto-resume": "true",
            "sagemaker.amazonaws.com/job-max-retry-count": "2",
        },
    }
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert {name: r["replicas"] for name, r in replicas.items()} == {"Master": 1, "Worker": 1}
    for replica in replicas.values():
        pod = replica["template"]["spec"]
        assert pod["nodeSelector"] == {"sagemaker.amazonaws.com/node-health-status": "Schedulable"}
        assert pod["volumes"] == [
            {"name": "dshm", "emptyDir": {"medium": "Memory"}},
            {"name": "fsx", "persistentVolumeClaim": {"claimName": "fsx-claim"}},
        ]
        (container,) = pod["containers"]
        assert container["volumeMounts"] == [
            {"name": "dshm", "mountPath": "/dev/shm"},
            {"name": "fsx", "mountPath": "/fsx"},
        ]
        wanted = {"nvidia.com/gpu": 8, "vpc.amazonaws.com/efa": 32}
        assert container["resources"] == {"requests": wanted, "limits": wanted}
        env = {item["name"]: item["value"] for item in container["env"]}
        assert env["FI_PROVIDER"] == "efa" and env["FI_EFA_USE_DEVICE_RDMA"] == "1"
        assert container["command"] == ["torchrun"]
        assert "--nproc_per_node=8" in container["args"]


def test_a_cpu_job_without_efa_fsx_or_hyperpod():
    job = eks.render_job(ddp_job(gpus_per_node=0, efa_devices=0, nodes=1), fsx_claim=None)
    assert eks.validation_errors(job) == []
    (replica,) = job["spec"]["pytorchReplicaSpecs"].values()
    pod = replica["template"]["spec"]
    assert "nodeSelector" not in pod and "annotations" not in job["metadata"]
    assert pod["volumes"] == [{"name": "dshm", "emptyDir": {"medium": "Memory"}}]
    assert "resources" not in pod["containers"][0] and "env" not in pod["containers"][0]


@pytest.mark.parametrize("case", TORCH_CASES)
@pytest.mark.parametrize("gpus", [0, 8])
def test_every_torch_case_renders_a_valid_job(case, gpus):
    definition = cases.get(case)
    args = list(definition.gpu_args if gpus else definition.cpu_args)
    if definition.needs_gpu and not gpus:  # refused, naming the missing GPUs
        with pytest.raises(MlclusterError, match=f"{case} needs GPUs"):
            eks.job_spec(
                case, nodes=4, args=args, job_name=f"j-{case}", gpus_per_node=0,
                image="img:1", efa_devices=0, namespace="default",
            )  # fmt: skip
        return
    spec = eks.job_spec(
        case, nodes=4, args=args, job_name=f"j-{case}", gpus_per_node=gpus,
        image="img:1", efa_devices=4 if gpus else 0, namespace="default",
    )  # fmt: skip
    assert eks.validation_errors(eks.render_job(spec, fsx_claim="fsx-claim")) == []


def test_a_wrong_job_is_refused_with_the_field_named():
    job = eks.render_job(ddp_job())
    worker = job["spec"]["pytorchReplicaSpecs"]["Worker"]
    worker["replicas"] = "1"
    worker["template"]["spec"]["containers"][0]["resourcs"] = {}
    job["spec"]["runPolicy"] = {"backoffLimit": "three"}
    assert eks.validation_errors(job) == [
        "PyTorchJob/mlcluster-ddp-1: spec.pytorchReplicaSpecs.Worker.replicas: "
        "'1' is not of type 'integer'",
        "PyTorchJob/mlcluster-ddp-1: spec.pytorchReplicaSpecs.Worker.template.spec.containers.0:"
        " Additional properties are not allowed ('resourcs' was unexpected)",
        "PyTorchJob/mlcluster-ddp-1: spec.runPolicy.backoffLimit: 'three' is not of type 'integer'",
    ]
    with pytest.raises(MlclusterError, match="manifest refused by its schema"):
        eks.check_valid([job])


def test_built_in_kinds_are_checked_against_the_pinned_kubernetes():
    assert eks.kubernetes_version() == "1.33"
    good = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1"}}
    assert eks.validation_errors(good) == []
    assert eks.validation_errors({**good, "data": {"a": 1}}) == [
        "ConfigMap/c: data.a: 1 is not of type 'string', 'null'"
    ]
    assert eks.validation_errors({**good, "dat": {}}) == [
        "ConfigMap/c: (top): Additional properties are not allowed ('dat' was unexpected)"
    ]
    assert eks.validation_errors({**good, "apiVersion": "batch/v1beta1", "kind": "CronJob"}) == [
        "CronJob/c: batch/v1beta1 CronJob is not in Kubernetes 1.33"
    ]


def test_jobset_schema_accepts_a_jobset_and_refuses_a_bad_one():
    pod = {"spec": {"containers": [{"name": "c", "image": "img:1"}], "restartPolicy": "Never"}}
    jobset = {
        "apiVersion": "jobset.x-k8s.io/v1alpha2",
        "kind": "JobSet",
        "metadata": {"name": "js"},
        "spec": {
            "replicatedJobs": [
                {"name": "workers", "replicas": 2, "template": {"spec": {"template": pod}}}
            ]
        },
    }
    assert eks.validation_errors(jobset) == []
    jobset["spec"]["replicatedJobs"][0]["replica"] = 2
    assert eks.validation_errors(jobset) == [
        "JobSet/js: spec.replicatedJobs.0: Additional properties are not allowed "
        "('replica' was unexpected)"
    ]


def test_preserve_unknown_fields_stays_open():
    schema = {
        "type": "object",
        "properties": {
            "open": {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
                     "properties": {"a": {"type": "string"}}},
            "closed": {"type": "object", "properties": {"a": {"type": "string"}}},
        },
    }  # fmt: skip
    strict = eks._strict(schema)
    assert "additionalProperties" not in strict["properties"]["open"]
    assert strict["properties"]["closed"]["additionalProperties"] is False
    assert strict["additionalProperties"] is False


@pytest.mark.parametrize(
    ("conditions", "state"),
    [
        ([], "Pending"),
        ([{"type": "Created", "status": "True"}, {"type": "Running", "status": "True"}], "Running"),
        ([{"type": "Running", "status": "False"}, {"type": "Succeeded", "status": "True"}],
         "Succeeded"),
        ([{"type": "Created", "status": "True"}, {"type": "Failed", "status": "True"}], "Failed"),
    ],
)  # fmt: skip
def test_job_state_is_the_newest_true_condition(conditions, state):
    assert eks.job_state({"status": {"conditions": conditions}}) == state


def test_cli_renders_the_validated_job_and_applies_nothing(capsys, monkeypatch):
    monkeypatch.setattr(eks, "kubectl", lambda *a, **k: pytest.fail("kubectl must not run"))
    code = cli.main([
        "run", "allreduce", "--platform", "eks", "--render", "--container", "img:1",
        "--nodes", "3", "--gpus-per-node", "4", "--efa-devices", "4", "--namespace", "ml",
    ])  # fmt: skip
    assert code == 0
    job = yaml.safe_load(capsys.readouterr().out)
    assert eks.validation_errors(job) == []
    assert job["metadata"]["namespace"] == "ml"
    assert job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 2
    container = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": 4, "vpc.amazonaws.com/efa": 4}
    assert container["args"][-4:] == ["--max-bytes", "1G", "--iters", "20"]


def test_eks_runs_need_an_image():
    with pytest.raises(MlclusterError, match="give --container IMAGE"):
        eks.run_case("ddp", kubeconfig=None, render_only=True)


def test_a_case_that_is_not_torch_is_refused():
    with pytest.raises(MlclusterError, match="jax is not a torch case"):
        eks.run_case("jax", kubeconfig=None, image="img:1", render_only=True)


# --- apply and follow, with a stand-in kubectl (no API server can run here) ----------------------

FAKE_KUBECTL = r"""#!/bin/sh
dir="$(dirname "$0")"
printf '%s\n' "$*" >> "$dir/calls"
case " $* " in
  *" apply "*) cat > "$dir/applied.yaml"; echo "pytorchjob.kubeflow.org/x created" ;;
  *" get pytorchjob "*)
    n=$(cat "$dir/polls" 2>/dev/null || echo 0); n=$((n + 1)); echo "$n" > "$dir/polls"
    if [ "$n" -lt 2 ]; then state=Running; else state="${FAKE_FINAL:-Succeeded}"; fi
    printf '{"status": {"conditions": [{"type": "Created", "status": "True"},'
    printf ' {"type": "%s", "status": "True"}]}}\n' "$state" ;;
  *" logs "*)
    echo 'W0101 torchrun noise'
    echo '{"event": "step", "step": 1, "loss": 2.5}'
    echo '{"event": "summary", "world_size": 16, "first_loss": 2.5, "final_loss": 1.25}' ;;
  *" delete "*) echo deleted ;;
  *) echo "unexpected: $*" >&2; exit 9 ;;
esac
"""


@pytest.fixture
def fake_kubectl(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "kubectl"
    script.write_text(FAKE_KUBECTL)
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.setattr(eks, "POLL_S", 0)
    return bin_dir


def test_apply_follow_and_report(fake_kubectl, tmp_path):
    report = tmp_path / "report.json"
    code = eks.run_case(
        "ddp", kubeconfig=tmp_path / "kubeconfig", nodes=2, gpus_per_node=8, image="img:1",
        efa_devices=32, report=report, extra_args=["--steps", "5"],
    )  # fmt: skip
    assert code == 0
    calls = (fake_kubectl / "calls").read_text().splitlines()
    kc = f"--kubeconfig {tmp_path / 'kubeconfig'}"
    data = json.loads(report.read_text())
    job = data["job_id"]
    assert calls == [
        f"{kc} apply --validate=strict -f -",
        f"{kc} get pytorchjob -n default {job} -o json",
        f"{kc} get pytorchjob -n default {job} -o json",
        f"{kc} logs -n default -l training.kubeflow.org/job-name={job},"
        "training.kubeflow.org/replica-type=master --tail=-1",
    ]
    applied = yaml.safe_load((fake_kubectl / "applied.yaml").read_text())
    assert applied["metadata"]["name"] == job and eks.validation_errors(applied) == []
    assert data["state"] == "Succeeded" and data["platform"] == "eks"
    assert data["summary"]["final_loss"] == 1.25
    assert data["steps"] == [{"event": "step", "step": 1, "loss": 2.5}]


def test_a_failed_job_exits_1(fake_kubectl, monkeypatch):
    monkeypatch.setenv("FAKE_FINAL", "Failed")
    assert eks.run_case("allreduce", kubeconfig=None, image="img:1", nodes=1) == 1


def test_the_wheel_carries_the_crd_schemas(tmp_path):
    import shutil
    import subprocess
    import sys
    import zipfile

    from mlcluster.paths import project_root

    src = tmp_path / "src"
    shutil.copytree(
        project_root() / "src", src / "src", ignore=shutil.ignore_patterns("*.egg-info")
    )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(project_root() / name, src / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path / "wheels"), str(src)],
        check=True, capture_output=True,
    )  # fmt: skip
    (wheel,) = (tmp_path / "wheels").glob("mlcluster-*.whl")
    shipped = {n for n in zipfile.ZipFile(wheel).namelist() if n.startswith("mlcluster/k8s_")}
    assert shipped == {f"mlcluster/k8s_schemas/{name}" for name in eks.CRD_SCHEMAS.values()}
