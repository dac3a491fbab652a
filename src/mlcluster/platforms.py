"""`mlcluster hyperpod ...` and `mlcluster pcluster ...`: the AWS platforms' side of a cluster.

- ``hyperpod lifecycle --bucket s3://B/PREFIX`` uploads the lifecycle scripts and the project's
  playbooks; the prefix is the instance groups' ``SourceS3Uri`` (HyperPod) and holds the
  ``OnNodeConfigured`` script (ParallelCluster).
- ``hyperpod cluster-config FILE.yml`` renders the SageMaker ``CreateCluster`` request from a
  short description and validates it with botocore against the SageMaker service model.
- ``pcluster config FILE.yml`` renders a ParallelCluster 3 cluster configuration and validates
  it with the aws-parallelcluster package's own schema, offline.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from .errors import MlclusterError
from .paths import project_root

# What a node needs to run site.yml, uploaded under <prefix>/mlcluster/.
PROJECT_FILES = ("site.yml", "ansible.cfg", "versions.yml", "pyproject.toml")
PROJECT_TREES = (
    "playbooks",
    "roles",
    "collections",
    "inventory/hyperpod/group_vars",
    "inventory/parallelcluster/group_vars",
)
ON_CREATE = "on_create.sh"
ON_NODE_CONFIGURED = "on_node_configured.sh"


def add_commands(sub) -> None:
    """Add the `hyperpod` and `pcluster` commands to the CLI's subparsers."""
    hyperpod = sub.add_parser(
        "hyperpod", help="SageMaker HyperPod: lifecycle upload, CreateCluster"
    )
    actions = hyperpod.add_subparsers(dest="hyperpod_command", required=True, metavar="ACTION")
    upload = actions.add_parser(
        "lifecycle",
        help="upload the lifecycle scripts and the playbooks to S3 (HyperPod and ParallelCluster)",
    )
    upload.add_argument("--bucket", required=True, metavar="s3://BUCKET/PREFIX")
    upload.add_argument(
        "--provisioning-parameters",
        type=Path,
        help="your provisioning_parameters.json (default: lifecycle/hyperpod/'s example)",
    )
    upload.add_argument("--endpoint-url", help="S3 endpoint (a test server)")
    upload.add_argument("--region", help="AWS region (default: the AWS settings')")
    upload.add_argument("--profile", help="AWS profile")
    upload.set_defaults(func=cmd_hyperpod_lifecycle)

    config = actions.add_parser(
        "cluster-config", help="render and validate the CreateCluster request (JSON)"
    )
    config.add_argument("description", type=Path, metavar="FILE.yml")
    config.add_argument("-o", "--output", type=Path, help="write here instead of stdout")
    config.add_argument(
        "--provisioning-parameters",
        type=Path,
        default=project_root() / "lifecycle/hyperpod/provisioning_parameters.json",
        help="check that the instance groups it names exist (default: the uploaded example)",
    )
    config.set_defaults(func=cmd_hyperpod_cluster_config)

    pcluster = sub.add_parser("pcluster", help="AWS ParallelCluster 3: cluster configuration")
    pc_actions = pcluster.add_subparsers(dest="pcluster_command", required=True, metavar="ACTION")
    pc_config = pc_actions.add_parser(
        "config", help="render and validate a ParallelCluster 3 cluster configuration (YAML)"
    )
    pc_config.add_argument("description", type=Path, metavar="FILE.yml")
    pc_config.add_argument("-o", "--output", type=Path, help="write here instead of stdout")
    pc_config.set_defaults(func=cmd_pcluster_config)


# --- small descriptions ----------------------------------------------------------------------


def read_description(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise MlclusterError(f"{path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise MlclusterError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise MlclusterError(f"{path} must be a YAML mapping")
    return data


def fields(data: dict, where: str, required: tuple, optional: tuple = ()) -> dict:
    """``data`` with its keys checked: all of ``required``, nothing outside the two tuples."""
    if not isinstance(data, dict):
        raise MlclusterError(f"{where} must be a mapping")
    missing = [k for k in required if data.get(k) in (None, "", [])]
    unknown = sorted(set(data) - set(required) - set(optional))
    if missing:
        raise MlclusterError(f"{where}: missing {', '.join(missing)}")
    if unknown:
        allowed = ", ".join((*required, *optional))
        raise MlclusterError(f"{where}: unknown key {', '.join(unknown)} (known: {allowed})")
    return data


def split_s3_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://") or not uri[5:].split("/", 1)[0]:
        raise MlclusterError(f"{uri!r} is not an s3://BUCKET/PREFIX URI")
    bucket, _, prefix = uri[5:].partition("/")
    return bucket, prefix.strip("/")


def write_output(text: str, output: Path | None) -> None:
    if output:
        output.write_text(text, encoding="utf-8")
        print(f"wrote {output}", file=sys.stderr)
    else:
        sys.stdout.write(text)


# --- hyperpod lifecycle --------------------------------------------------------------------------


def upload_plan(provisioning_parameters: Path | None = None) -> list[tuple[Path, str]]:
    """(local file, key below the prefix) for everything the lifecycle upload carries."""
    root = project_root()
    plan = []
    for platform in ("hyperpod", "parallelcluster"):
        for path in sorted((root / "lifecycle" / platform).iterdir()):
            if path.is_file():
                plan.append((path, path.name))
    if provisioning_parameters:
        if not provisioning_parameters.is_file():
            raise MlclusterError(f"{provisioning_parameters} does not exist")
        plan = [(p, k) for p, k in plan if k != "provisioning_parameters.json"]
        plan.append((provisioning_parameters, "provisioning_parameters.json"))
    for name in PROJECT_FILES:
        plan.append((root / name, f"mlcluster/{name}"))
    for tree in PROJECT_TREES:
        for path in sorted((root / tree).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                plan.append((path, f"mlcluster/{path.relative_to(root).as_posix()}"))
    return plan


def upload_lifecycle(
    uri: str,
    provisioning_parameters: Path | None = None,
    endpoint_url: str | None = None,
    region: str | None = None,
    profile: str | None = None,
) -> tuple[list[str], list[str]]:
    """Upload the lifecycle tree to ``uri``: (keys written, stale project keys deleted).

    Keys under <prefix>/mlcluster/ that the project no longer has are deleted, so that a node
    never runs a role file or group_vars file left over from an older upload.
    """
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, prefix = split_s3_uri(uri)
    base = f"{prefix}/" if prefix else ""
    plan = [(path, base + key) for path, key in upload_plan(provisioning_parameters)]
    session = boto3.session.Session(profile_name=profile, region_name=region)
    s3 = session.client("s3", endpoint_url=endpoint_url)

    def put(item):
        path, key = item
        s3.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())
        return key

    try:
        with ThreadPoolExecutor(max_workers=16) as pool:  # a few hundred small files
            keys = list(pool.map(put, plan))
        stale = [
            item["Key"]
            for page in s3.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=f"{base}mlcluster/"
            )
            for item in page.get("Contents", [])
            if item["Key"] not in set(keys)
        ]
        for start in range(0, len(stale), 1000):  # DeleteObjects takes up to 1000 keys
            s3.delete_objects(
                Bucket=bucket,
                Delete={"Objects": [{"Key": k} for k in stale[start : start + 1000]]},
            )
    except (BotoCoreError, ClientError) as e:
        raise MlclusterError(f"upload to {uri} failed: {e}", exit_code=1) from e
    return keys, stale


def cmd_hyperpod_lifecycle(args) -> int:
    keys, stale = upload_lifecycle(
        args.bucket, args.provisioning_parameters, args.endpoint_url, args.region, args.profile
    )
    bucket, prefix = split_s3_uri(args.bucket)
    base = f"s3://{bucket}/{prefix}".rstrip("/")
    print(f"uploaded {len(keys)} files to {base}/, deleted {len(stale)} left from an older upload")
    print(f"HyperPod:        LifeCycleConfig SourceS3Uri {base}/  OnCreate {ON_CREATE}")
    print(f"ParallelCluster: OnNodeConfigured Script {base}/{ON_NODE_CONFIGURED}  Args [{base}]")
    if not bucket.startswith("sagemaker-"):
        print(
            "note: HyperPod's managed instance policy (AmazonSageMakerClusterInstanceRolePolicy)"
            " reads only buckets named sagemaker-*; give the execution role s3:GetObject and"
            f" s3:ListBucket on {bucket} yourself",
            file=sys.stderr,
        )
    return 0


# --- hyperpod cluster-config ---------------------------------------------------------------------


def hyperpod_request(description: dict) -> dict:
    """The CreateCluster request for a description (see docs/hyperpod.md)."""
    fields(
        description,
        "cluster description",
        ("cluster_name", "lifecycle", "execution_role", "instance_groups"),
        ("vpc", "tags", "node_recovery", "on_create"),
    )
    split_s3_uri(description["lifecycle"])
    groups = description["instance_groups"]
    if not isinstance(groups, list):
        raise MlclusterError("instance_groups must be a list")
    life_cycle = {
        "SourceS3Uri": description["lifecycle"],
        "OnCreate": description.get("on_create", ON_CREATE),
    }
    request = {"ClusterName": description["cluster_name"], "InstanceGroups": []}
    for i, group in enumerate(groups):
        fields(
            group,
            f"instance_groups[{i}]",
            ("name", "type", "count"),
            ("threads_per_core", "execution_role", "storage_gb"),
        )
        entry = {
            "InstanceGroupName": group["name"],
            "InstanceType": group["type"],
            "InstanceCount": group["count"],
            "LifeCycleConfig": life_cycle,
            "ExecutionRole": group.get("execution_role", description["execution_role"]),
            "ThreadsPerCore": group.get("threads_per_core", 1),
        }
        if "storage_gb" in group:
            entry["InstanceStorageConfigs"] = [
                {"EbsVolumeConfig": {"VolumeSizeInGB": group["storage_gb"]}}
            ]
        request["InstanceGroups"].append(entry)
    if "vpc" in description:
        vpc = fields(description["vpc"], "vpc", ("security_group_ids", "subnets"))
        request["VpcConfig"] = {
            "SecurityGroupIds": vpc["security_group_ids"],
            "Subnets": vpc["subnets"],
        }
    if "tags" in description:
        request["Tags"] = [{"Key": k, "Value": str(v)} for k, v in description["tags"].items()]
    if "node_recovery" in description:
        request["NodeRecovery"] = description["node_recovery"]
    return request


def validate_with_service_model(service: str, operation: str, params: dict) -> None:
    """botocore's own parameter validation, as a client call would run it, offline."""
    import botocore.session
    from botocore.exceptions import ParamValidationError
    from botocore.validate import validate_parameters

    model = botocore.session.get_session().get_service_model(service)
    try:
        validate_parameters(params, model.operation_model(operation).input_shape)
    except ParamValidationError as e:
        raise MlclusterError(f"the {operation} request is not valid: {e}") from None
    # ParamValidator checks types, required members and minimums; enums it leaves to the service.
    shape = model.operation_model(operation).input_shape
    check_enums(params, shape, "")


def check_enums(value, shape, path: str) -> None:
    enum = shape.metadata.get("enum") if shape.type_name == "string" else None
    if enum and value not in enum:
        raise MlclusterError(
            f"the request is not valid: {path.lstrip('.')} is {value!r}, not one of the"
            f" values the service model allows ({', '.join(enum[:12])}"
            f"{', ...' if len(enum) > 12 else ''})"
        )
    if shape.type_name == "structure" and isinstance(value, dict):
        for key, member in value.items():
            if key in shape.members:
                check_enums(member, shape.members[key], f"{path}.{key}")
    elif shape.type_name == "list" and isinstance(value, list):
        for i, item in enumerate(value):
            check_enums(item, shape.member, f"{path}[{i}]")


def check_provisioning_parameters(request: dict, path: Path) -> None:
    """The instance groups provisioning_parameters.json names must be in the request."""
    try:
        params = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise MlclusterError(f"provisioning parameters {path}: {e}") from None
    named = [params.get("controller_group"), params.get("login_group")]
    named += [w.get("instance_group_name") for w in params.get("worker_groups", [])]
    have = {g["InstanceGroupName"] for g in request["InstanceGroups"]}
    missing = [g for g in named if g and g not in have]
    if missing:
        raise MlclusterError(
            f"{path} names instance group {', '.join(missing)}, which the cluster does not have"
            f" ({', '.join(sorted(have))}); the lifecycle script would fail on those nodes"
        )


def cmd_hyperpod_cluster_config(args) -> int:
    request = hyperpod_request(read_description(args.description))
    validate_with_service_model("sagemaker", "CreateCluster", request)
    if args.provisioning_parameters:
        check_provisioning_parameters(request, args.provisioning_parameters)
    write_output(json.dumps(request, indent=2) + "\n", args.output)
    return 0


# --- pcluster config -----------------------------------------------------------------------------


def pcluster_config(description: dict) -> dict:
    """A ParallelCluster 3 cluster configuration for a description (see docs/parallelcluster.md)."""
    fields(
        description,
        "cluster description",
        ("region", "lifecycle", "head_node", "queues"),
        ("os", "key_name", "fsx", "custom_ami", "tags"),
    )
    bucket, prefix = split_s3_uri(description["lifecycle"])
    base = f"s3://{bucket}/{prefix}".rstrip("/")
    script = f"{base}/{ON_NODE_CONFIGURED}"

    def iam():  # the nodes read the upload; a new dict each time keeps the YAML free of anchors
        return {"S3Access": [{"BucketName": bucket}]}

    head = fields(description["head_node"], "head_node", ("type", "subnet"), ("root_volume_gb",))
    head_node = {
        "InstanceType": head["type"],
        "Networking": {"SubnetId": head["subnet"]},
        "CustomActions": {"OnNodeConfigured": {"Script": script, "Args": [base]}},
        "Iam": iam(),
    }
    if "key_name" in description:
        head_node["Ssh"] = {"KeyName": description["key_name"]}
    if "root_volume_gb" in head:
        head_node["LocalStorage"] = {"RootVolume": {"Size": head["root_volume_gb"]}}

    queues = []
    if not isinstance(description["queues"], list):
        raise MlclusterError("queues must be a list")
    for i, queue in enumerate(description["queues"]):
        fields(queue, f"queues[{i}]", ("name", "subnet", "compute_resources"))
        resources = []
        efa = False
        for j, resource in enumerate(queue["compute_resources"]):
            fields(
                resource,
                f"queues[{i}].compute_resources[{j}]",
                ("name", "type", "max"),
                ("min", "efa", "gpudirect_rdma"),
            )
            entry = {
                "Name": resource["name"],
                "InstanceType": resource["type"],
                "MinCount": resource.get("min", 0),
                "MaxCount": resource["max"],
            }
            if resource.get("efa"):
                efa = True
                entry["Efa"] = {"Enabled": True}
                if resource.get("gpudirect_rdma"):
                    entry["Efa"]["GdrSupport"] = True
            resources.append(entry)
        networking = {"SubnetIds": [queue["subnet"]]}
        if efa:  # EFA needs the nodes in one cluster placement group
            networking["PlacementGroup"] = {"Enabled": True}
        queues.append(
            {
                "Name": queue["name"],
                "ComputeResources": resources,
                "Networking": networking,
                "CustomActions": {
                    "OnNodeConfigured": {"Script": script, "Args": [base, "--queue", queue["name"]]}
                },
                "Iam": iam(),
            }
        )

    config = {
        "Region": description["region"],
        "Image": {"Os": description.get("os", "ubuntu2204")},
        "HeadNode": head_node,
        "Scheduling": {"Scheduler": "slurm", "SlurmQueues": queues},
    }
    if "custom_ami" in description:
        config["Image"]["CustomAmi"] = description["custom_ami"]
    if "fsx" in description:
        config["SharedStorage"] = [fsx_lustre(description["fsx"])]
    if "tags" in description:
        config["Tags"] = [{"Key": k, "Value": str(v)} for k, v in description["tags"].items()]
    return config


def fsx_lustre(fsx: dict) -> dict:
    """FSx for Lustre at /fsx: an existing file system, or a new one ParallelCluster creates."""
    fields(
        fsx,
        "fsx",
        (),
        ("file_system_id", "capacity_gb", "deployment_type", "throughput_mb_per_tib"),
    )
    if fsx.get("file_system_id"):
        settings = {"FileSystemId": fsx["file_system_id"]}
    else:
        settings = {
            "StorageCapacity": fsx.get("capacity_gb", 1200),
            "DeploymentType": fsx.get("deployment_type", "PERSISTENT_2"),
            "PerUnitStorageThroughput": fsx.get("throughput_mb_per_tib", 250),
        }
    return {
        "MountDir": "/fsx",
        "Name": "fsx",
        "StorageType": "FsxLustre",
        "FsxLustreSettings": settings,
    }


@contextlib.contextmanager
def _region(region: str):
    """The schema's post-load hooks ask boto3 for the region (no AWS call is made)."""
    saved = os.environ.get("AWS_DEFAULT_REGION")
    os.environ["AWS_DEFAULT_REGION"] = region
    try:
        yield
    finally:
        if saved is None:
            del os.environ["AWS_DEFAULT_REGION"]
        else:
            os.environ["AWS_DEFAULT_REGION"] = saved


def validate_pcluster_config(config: dict, cluster_name: str = "mlcluster") -> None:
    """Load ``config`` with aws-parallelcluster's ClusterSchema, as `pcluster` does, offline."""
    try:
        from marshmallow import ValidationError
        from pcluster.schemas.cluster_schema import ClusterSchema
    except ImportError:
        raise MlclusterError(
            "validating a ParallelCluster configuration needs the aws-parallelcluster package"
            " (pip install 'aws-parallelcluster>=3.16.1,<3.17', as the project's test extra does)"
        ) from None
    # The schema reads the config as YAML gives it: plain types only.
    config = yaml.safe_load(yaml.safe_dump(config))
    try:
        with _region(str(config.get("Region", "us-east-1"))):
            ClusterSchema(cluster_name=cluster_name).load(config)
    except ValidationError as e:
        problems = "; ".join(f"{path}: {message}" for path, message in flatten(e.messages))
        raise MlclusterError(
            f"the ParallelCluster configuration is not valid: {problems}"
        ) from None


def flatten(messages, path: str = ""):
    """marshmallow's nested error messages as (dotted path, message) pairs."""
    if isinstance(messages, dict):
        for key, value in messages.items():
            name = f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}" if path else key
            yield from flatten(value, name)
    elif isinstance(messages, list) and all(isinstance(m, str) for m in messages):
        yield path or "(config)", " ".join(messages)
    elif isinstance(messages, list):
        for i, value in enumerate(messages):
            yield from flatten(value, f"{path}[{i}]")
    else:
        yield path or "(config)", str(messages)


def cmd_pcluster_config(args) -> int:
    config = pcluster_config(read_description(args.description))
    validate_pcluster_config(config)
    write_output(yaml.safe_dump(config, sort_keys=False), args.output)
    return 0
