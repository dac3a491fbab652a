"""`mlcluster hyperpod ...` and `mlcluster pcluster ...` (src/mlcluster/platforms.py).

The rendered CreateCluster request is validated by botocore against the SageMaker service model
and then sent to a moto server; the ParallelCluster configuration is loaded by the
aws-parallelcluster package's own ClusterSchema. The lifecycle upload goes to moto's S3 over
HTTP and is then downloaded and run (dry run) the way a HyperPod node runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys

import boto3
import pytest
import yaml

from mlcluster import platforms
from mlcluster.errors import MlclusterError
from mlcluster.paths import project_root

ROOT = project_root()
REGION = "us-west-2"  # the aws_env fixture's
# aws-parallelcluster 3.16's schema still uses marshmallow's `default=`.
pytestmark = [
    pytest.mark.usefixtures("aws_env"),
    pytest.mark.filterwarnings("ignore:The 'default' argument to fields is deprecated"),
]

HYPERPOD = {
    "cluster_name": "ml-cluster",
    "lifecycle": "s3://sagemaker-ml-lifecycle/mlcluster",
    "execution_role": "arn:aws:iam::123456789012:role/sagemaker-hyperpod-execution",
    "instance_groups": [
        {"name": "controller-machine", "type": "ml.c5.xlarge", "count": 1},
        {"name": "login-group", "type": "ml.m5.large", "count": 1},
        {"name": "worker-p5", "type": "ml.p5.48xlarge", "count": 4, "threads_per_core": 2},
        {"name": "worker-g5", "type": "ml.g5.12xlarge", "count": 2, "storage_gb": 500},
    ],
    "vpc": {
        "security_group_ids": ["sg-0123456789abcdef0"],
        "subnets": ["subnet-0123456789abcdef0"],
    },
    "tags": {"project": "mlcluster"},
}

PCLUSTER = {
    "region": "us-east-1",
    "lifecycle": "s3://my-bucket/mlcluster",
    "key_name": "mykey",
    "head_node": {"type": "c5.2xlarge", "subnet": "subnet-0123456789abcdef0"},
    "queues": [
        {
            "name": "gpu",
            "subnet": "subnet-0123456789abcdef1",
            "compute_resources": [
                {"name": "p5", "type": "p5.48xlarge", "min": 2, "max": 4, "efa": True}
            ],
        },
        {
            "name": "cpu",
            "subnet": "subnet-0123456789abcdef1",
            "compute_resources": [{"name": "c6i", "type": "c6i.32xlarge", "max": 8}],
        },
    ],
    "fsx": {"capacity_gb": 2400},
}


def cli(*argv):
    """The commands through a parser of their own, as cli.py's main() runs them."""
    parser = argparse.ArgumentParser(prog="mlcluster")
    platforms.add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([str(a) for a in argv])
    try:
        return args.func(args)
    except MlclusterError as exc:
        print(f"mlcluster: error: {exc}", file=sys.stderr)
        return exc.exit_code


def write_yaml(tmp_path, data, name="cluster.yml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


# --- hyperpod cluster-config ---------------------------------------------------------------------


def test_create_cluster_request_is_valid_and_moto_accepts_it(tmp_path, capsys, moto_url):
    assert cli("hyperpod", "cluster-config", write_yaml(tmp_path, HYPERPOD)) == 0
    request = json.loads(capsys.readouterr().out)
    assert request["ClusterName"] == "ml-cluster"
    p5 = request["InstanceGroups"][2]
    assert p5 == {
        "InstanceGroupName": "worker-p5",
        "InstanceType": "ml.p5.48xlarge",
        "InstanceCount": 4,
        "LifeCycleConfig": {
            "SourceS3Uri": "s3://sagemaker-ml-lifecycle/mlcluster",
            "OnCreate": "on_create.sh",
        },
        "ExecutionRole": HYPERPOD["execution_role"],
        "ThreadsPerCore": 2,
    }
    assert request["InstanceGroups"][3]["InstanceStorageConfigs"] == [
        {"EbsVolumeConfig": {"VolumeSizeInGB": 500}}
    ]
    assert request["VpcConfig"]["Subnets"] == ["subnet-0123456789abcdef0"]
    assert request["Tags"] == [{"Key": "project", "Value": "mlcluster"}]

    # The same request, as `aws sagemaker create-cluster --cli-input-json` would send it.
    client = boto3.client("sagemaker", region_name=REGION, endpoint_url=moto_url)
    client.create_cluster(**request)
    nodes = client.list_cluster_nodes(ClusterName="ml-cluster")["ClusterNodeSummaries"]
    assert sorted({n["InstanceGroupName"] for n in nodes}) == [
        "controller-machine",
        "login-group",
        "worker-g5",
        "worker-p5",
    ]


def test_output_file(tmp_path, capsys):
    out = tmp_path / "create-cluster.json"
    assert cli("hyperpod", "cluster-config", write_yaml(tmp_path, HYPERPOD), "-o", out) == 0
    assert json.loads(out.read_text())["ClusterName"] == "ml-cluster"
    assert f"wrote {out}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("change", "message"),
    [
        # botocore's ParamValidator: a type, a required member, a minimum.
        (
            {"instance_groups": [{"name": "w", "type": "ml.g5.xlarge", "count": "four"}]},
            r"Invalid type for parameter InstanceGroups\[0\]\.InstanceCount, value: four",
        ),
        (
            {
                "instance_groups": [
                    {"name": "w", "type": "ml.g5.xlarge", "count": 1, "threads_per_core": 0}
                ]
            },
            r"Invalid value for parameter InstanceGroups\[0\]\.ThreadsPerCore, value: 0,"
            r" valid min value: 1",
        ),
        ({"cluster_name": ""}, r"cluster description: missing cluster_name"),
        # The enum of the service model: an instance type HyperPod does not offer.
        (
            {"instance_groups": [{"name": "w", "type": "ml.p5.49xlarge", "count": 1}]},
            r"InstanceGroups\[0\]\.InstanceType is 'ml\.p5\.49xlarge', not one of the values",
        ),
        # The description itself.
        ({"instance_group": []}, r"unknown key instance_group"),
        ({"lifecycle": "sagemaker-ml-lifecycle/mlcluster"}, r"is not an s3://BUCKET/PREFIX URI"),
    ],
)
def test_bad_cluster_description_is_rejected_naming_the_field(tmp_path, capsys, change, message):
    description = {**HYPERPOD, **change}
    assert cli("hyperpod", "cluster-config", write_yaml(tmp_path, description)) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("mlcluster: error: ")
    assert re.search(message, captured.err), captured.err


def test_instance_groups_must_match_provisioning_parameters(tmp_path, capsys):
    description = {**HYPERPOD, "instance_groups": HYPERPOD["instance_groups"][:3]}
    assert cli("hyperpod", "cluster-config", write_yaml(tmp_path, description)) == 2
    err = capsys.readouterr().err
    assert "names instance group worker-g5, which the cluster does not have" in err


def test_validation_uses_the_service_model_not_a_copy():
    """A required member of the model (ExecutionRole) left out of a hand-made request."""
    request = platforms.hyperpod_request(HYPERPOD)
    del request["InstanceGroups"][0]["ExecutionRole"]
    with pytest.raises(
        MlclusterError, match=r'Missing required parameter in InstanceGroups\[0\]: "ExecutionRole"'
    ):
        platforms.validate_with_service_model("sagemaker", "CreateCluster", request)


# --- pcluster config -----------------------------------------------------------------------------


def test_pcluster_config_is_valid_for_parallelcluster(tmp_path, capsys):
    assert cli("pcluster", "config", write_yaml(tmp_path, PCLUSTER)) == 0
    text = capsys.readouterr().out
    assert "&id" not in text  # no YAML anchors: pcluster reads it as written
    config = yaml.safe_load(text)
    assert config["Region"] == "us-east-1"
    assert config["HeadNode"]["CustomActions"]["OnNodeConfigured"] == {
        "Script": "s3://my-bucket/mlcluster/on_node_configured.sh",
        "Args": ["s3://my-bucket/mlcluster"],
    }
    assert config["HeadNode"]["Iam"] == {"S3Access": [{"BucketName": "my-bucket"}]}
    gpu, cpu = config["Scheduling"]["SlurmQueues"]
    assert gpu["CustomActions"]["OnNodeConfigured"]["Args"] == [
        "s3://my-bucket/mlcluster",
        "--queue",
        "gpu",
    ]
    assert gpu["ComputeResources"] == [
        {
            "Name": "p5",
            "InstanceType": "p5.48xlarge",
            "MinCount": 2,
            "MaxCount": 4,
            "Efa": {"Enabled": True},
        }
    ]
    assert gpu["Networking"]["PlacementGroup"] == {"Enabled": True}
    assert "PlacementGroup" not in cpu["Networking"]
    assert config["SharedStorage"] == [
        {
            "MountDir": "/fsx",
            "Name": "fsx",
            "StorageType": "FsxLustre",
            "FsxLustreSettings": {
                "StorageCapacity": 2400,
                "DeploymentType": "PERSISTENT_2",
                "PerUnitStorageThroughput": 250,
            },
        }
    ]
    # What aws-parallelcluster makes of it: its own config objects.
    from pcluster.schemas.cluster_schema import ClusterSchema

    with platforms._region("us-east-1"):
        loaded = ClusterSchema(cluster_name="mlcluster").load(config)
    assert [q.name for q in loaded.scheduling.queues] == ["gpu", "cpu"]


def test_pcluster_schema_rejects_a_bad_value_naming_the_field(tmp_path, capsys):
    description = json.loads(json.dumps(PCLUSTER))
    description["queues"][0]["compute_resources"][0]["max"] = "lots"
    assert cli("pcluster", "config", write_yaml(tmp_path, description)) == 2
    err = capsys.readouterr().err
    assert "the ParallelCluster configuration is not valid" in err
    assert "Scheduling.SlurmQueues[0].ComputeResources[0].MaxCount: Not a valid integer." in err


def test_pcluster_schema_rejects_unknown_fields_and_bad_combinations():
    config = platforms.pcluster_config(PCLUSTER)
    config["HeadNode"]["Bogus"] = 1
    config["SharedStorage"][0]["FsxLustreSettings"]["DeploymentType"] = "FAST"
    with pytest.raises(MlclusterError) as error:
        platforms.validate_pcluster_config(config)
    assert "HeadNode.Bogus: Unknown field." in str(error.value)
    assert "SharedStorage[0].FsxLustreSettings.DeploymentType: Must be one of" in str(error.value)
    # The schema's own checks between fields, not only types.
    config = platforms.pcluster_config(PCLUSTER)
    config["HeadNode"]["Iam"]["InstanceRole"] = "arn:aws:iam::123456789012:role/head"
    with pytest.raises(MlclusterError, match="S3Access can not be configured when InstanceRole"):
        platforms.validate_pcluster_config(config)


def test_pcluster_description_errors(tmp_path, capsys):
    assert (
        cli(
            "pcluster",
            "config",
            write_yaml(tmp_path, {**PCLUSTER, "head_node": {"type": "c5.xlarge"}}),
        )
        == 2
    )
    assert "head_node: missing subnet" in capsys.readouterr().err
    assert cli("pcluster", "config", tmp_path / "nothing.yml") == 2
    assert "No such file or directory" in capsys.readouterr().err
    (tmp_path / "bad.yml").write_text("region: [us-east-1\n")
    assert cli("pcluster", "config", tmp_path / "bad.yml") == 2
    assert "is not valid YAML" in capsys.readouterr().err


# --- hyperpod lifecycle --------------------------------------------------------------------------


def test_lifecycle_upload_and_a_node_running_what_was_uploaded(tmp_path, capsys, moto_url):
    s3 = boto3.client("s3", region_name=REGION, endpoint_url=moto_url)
    s3.create_bucket(
        Bucket="sagemaker-ml-lifecycle", CreateBucketConfiguration={"LocationConstraint": REGION}
    )
    rc = cli(
        "hyperpod", "lifecycle", "--bucket", "s3://sagemaker-ml-lifecycle/mlcluster",
        "--endpoint-url", moto_url,
    )  # fmt: skip
    assert rc == 0
    out = capsys.readouterr().out
    assert (
        "LifeCycleConfig SourceS3Uri s3://sagemaker-ml-lifecycle/mlcluster/  OnCreate on_create.sh"
        in out
    )
    keys = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket="sagemaker-ml-lifecycle")
        for o in page.get("Contents", [])
    ]
    assert all(k.startswith("mlcluster/") for k in keys)
    names = {k.removeprefix("mlcluster/") for k in keys}
    assert {
        "on_create.sh",
        "provisioning_parameters.json",
        "mlcluster_lifecycle.py",
        "on_node_configured.sh",
        "mlcluster/site.yml",
        "mlcluster/ansible.cfg",
        "mlcluster/versions.yml",
        "mlcluster/pyproject.toml",
        "mlcluster/roles/slurm/defaults/main.yml",
        "mlcluster/playbooks/slurm.yml",
        "mlcluster/collections/ansible_collections/mlcluster/core/plugins/inventory/hyperpod.py",
        "mlcluster/inventory/hyperpod/group_vars/all.yml",
        "mlcluster/inventory/parallelcluster/group_vars/all.yml",
    } <= names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert not [n for n in names if n.startswith(("mlcluster/tests/", "mlcluster/inventory/local"))]

    # A file the project no longer has goes; the upload is the project as it is now.
    s3.put_object(
        Bucket="sagemaker-ml-lifecycle",
        Key="mlcluster/mlcluster/roles/old/tasks/main.yml",
        Body=b"",
    )
    assert (
        cli(
            "hyperpod",
            "lifecycle",
            "--bucket",
            "s3://sagemaker-ml-lifecycle/mlcluster",
            "--endpoint-url",
            moto_url,
        )
        == 0
    )
    assert "deleted 1 left from an older upload" in capsys.readouterr().out
    assert sorted(
        o["Key"]
        for o in s3.list_objects_v2(Bucket="sagemaker-ml-lifecycle", MaxKeys=1000)["Contents"]
    ) == sorted(keys)

    # A node: HyperPod downloads the prefix and runs on_create.sh from it.
    node_dir = tmp_path / "lifecycle"
    for key in keys:
        target = node_dir / key.removeprefix("mlcluster/")
        target.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file("sagemaker-ml-lifecycle", key, str(target))
    (node_dir / "on_create.sh").chmod(0o755)
    root = tmp_path / "node"
    config = root / "opt/ml/config/resource_config.json"
    config.parent.mkdir(parents=True)
    config.write_text(
        json.dumps(
            {
                "InstanceGroups": [
                    {
                        "Name": "controller-machine",
                        "InstanceType": "ml.c5.xlarge",
                        "Instances": [{"CustomerIpAddress": "10.1.0.10"}],
                    },
                    {
                        "Name": "worker-p5",
                        "InstanceType": "ml.p5.48xlarge",
                        "Instances": [{"CustomerIpAddress": "10.1.1.21"}],
                    },
                ]
            }
        )
    )
    result = subprocess.run(
        [str(node_dir / "on_create.sh"), "--dry-run", "--ansible-playbook", "ansible-playbook"],
        env={**os.environ, "MLCLUSTER_LIFECYCLE_ROOT": str(root), "MLCLUSTER_NODE_IP": "10.1.0.10"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    project = node_dir / "mlcluster"
    assert result.stdout.splitlines()[-1] == (
        f"ANSIBLE_CONFIG={project}/ansible.cfg ansible-playbook"
        f" -i {root}/opt/mlcluster/inventory/hosts.yml -c local --limit ip-10-1-0-10"
        f" {project}/site.yml"
    )


def test_lifecycle_upload_errors(tmp_path, capsys, moto_url):
    rc = cli(
        "hyperpod", "lifecycle", "--bucket", "s3://no-such-bucket/x", "--endpoint-url", moto_url
    )
    assert rc == 1
    assert "upload to s3://no-such-bucket/x failed" in capsys.readouterr().err
    assert cli("hyperpod", "lifecycle", "--bucket", "no-scheme/x") == 2
    assert "is not an s3://BUCKET/PREFIX URI" in capsys.readouterr().err


def test_lifecycle_upload_with_own_parameters_and_a_bucket_hyperpod_cannot_read(
    tmp_path, capsys, moto_url
):
    s3 = boto3.client("s3", region_name=REGION, endpoint_url=moto_url)
    s3.create_bucket(Bucket="my-bucket", CreateBucketConfiguration={"LocationConstraint": REGION})
    params = tmp_path / "params.json"
    params.write_text('{"controller_group": "head", "worker_groups": []}')
    rc = cli(
        "hyperpod", "lifecycle", "--bucket", "s3://my-bucket", "--endpoint-url", moto_url,
        "--provisioning-parameters", params,
    )  # fmt: skip
    assert rc == 0
    assert "reads only buckets named sagemaker-*" in capsys.readouterr().err
    body = s3.get_object(Bucket="my-bucket", Key="provisioning_parameters.json")["Body"].read()
    assert json.loads(body)["controller_group"] == "head"
