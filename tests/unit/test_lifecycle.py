"""The lifecycle scripts (lifecycle/): what a HyperPod or ParallelCluster node learns about itself,
the inventory it writes and the exact Ansible command it runs.

Each script runs here in a temporary root (MLCLUSTER_LIFECYCLE_ROOT) with the node's address
given (MLCLUSTER_NODE_IP), and with a stand-in `ansible-playbook` that records how it was called;
the written inventory is read back by the real `ansible-inventory`. The real run on nodes is
the local HyperPod-shaped cluster's (tests/integration).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from mlcluster.paths import project_root, venv_bin

ROOT = project_root()
HYPERPOD = ROOT / "lifecycle" / "hyperpod"
PCLUSTER = ROOT / "lifecycle" / "parallelcluster"

spec = importlib.util.spec_from_file_location(
    "mlcluster_lifecycle", HYPERPOD / "mlcluster_lifecycle.py"
)
lifecycle = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lifecycle)

RESOURCE_CONFIG = {
    "ClusterConfig": {
        "ClusterArn": "arn:aws:sagemaker:us-west-2:123456789012:cluster/abcd1234efgh",
        "ClusterName": "ml-cluster",
    },
    "InstanceGroups": [
        {
            "Name": "controller-machine",
            "InstanceType": "ml.c5.xlarge",
            "Instances": [
                {"InstanceName": "controller-machine-1", "CustomerIpAddress": "10.1.0.10"}
            ],
        },
        {
            "Name": "login-group",
            "InstanceType": "ml.m5.large",
            "Instances": [{"InstanceName": "login-group-1", "CustomerIpAddress": "10.1.0.11"}],
        },
        {
            "Name": "worker-p5",
            "InstanceType": "ml.p5.48xlarge",
            "Instances": [
                {"InstanceName": "worker-p5-1", "CustomerIpAddress": "10.1.1.21"},
                {"InstanceName": "worker-p5-2", "CustomerIpAddress": "10.1.1.22"},
            ],
        },
        {
            "Name": "worker-g5",
            "InstanceType": "ml.g5.12xlarge",
            "Instances": [{"InstanceName": "worker-g5-1", "CustomerIpAddress": "10.1.2.31"}],
        },
    ],
}
PARAMS = json.loads((HYPERPOD / "provisioning_parameters.json").read_text())


@pytest.fixture
def node_root(tmp_path, monkeypatch):
    """A node's file system: resource_config.json where the platform's agent writes it."""
    root = tmp_path / "node"
    config = root / "opt/ml/config/resource_config.json"
    config.parent.mkdir(parents=True)
    config.write_text(json.dumps(RESOURCE_CONFIG))
    monkeypatch.setenv("MLCLUSTER_LIFECYCLE_ROOT", str(root))
    monkeypatch.delenv("SAGEMAKER_RESOURCE_CONFIG_PATH", raising=False)
    return root


@pytest.fixture
def fake_ansible(tmp_path):
    """A stand-in ansible-playbook that records its arguments and ANSIBLE_CONFIG."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "ansible-playbook"
    script.write_text(
        "#!/bin/sh\n"
        'printf "%s\\n" "$ANSIBLE_CONFIG" "$@" > "$(dirname "$0")/called"\n'
        'echo "PLAY RECAP ok=12 changed=3"\n'
        'exit "${FAKE_ANSIBLE_RC:-0}"\n'
    )
    script.chmod(0o755)
    return bin_dir


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def script_env(bin_dir, **extra):
    return {**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin", **extra}


def names(groups):
    return sorted(groups)


# --- parsing -------------------------------------------------------------------------------------


def test_resource_config_and_parameters_give_every_node_its_role():
    params = lifecycle.read_provisioning_parameters(HYPERPOD / "provisioning_parameters.json")
    assert params["workers"] == {"worker-p5": "p5", "worker-g5": "g5"}
    config = [
        {
            "name": g["Name"],
            "instance_type": g["InstanceType"],
            "ips": [i["CustomerIpAddress"] for i in g["Instances"]],
        }
        for g in RESOURCE_CONFIG["InstanceGroups"]
    ]
    doc, name, role = lifecycle.hyperpod_plan(config, params, {"10.1.2.31", "172.17.0.1"})
    assert (name, role) == ("ip-10-1-2-31", "compute (partition g5)")
    slurm = doc["all"]["children"]["slurm"]["children"]
    assert names(slurm["slurm_controller"]["hosts"]) == ["ip-10-1-0-10"]
    assert names(slurm["slurm_login"]["hosts"]) == ["ip-10-1-0-11"]
    compute = slurm["slurm_compute"]["children"]
    assert names(compute) == ["hyperpod_worker_g5", "hyperpod_worker_p5"]
    assert names(compute["hyperpod_worker_p5"]["hosts"]) == ["ip-10-1-1-21", "ip-10-1-1-22"]
    me = compute["hyperpod_worker_g5"]["hosts"]["ip-10-1-2-31"]
    assert me == {
        "ansible_connection": "local",
        "ansible_host": "10.1.2.31",
        "hyperpod_instance_group": "worker-g5",
        "hyperpod_instance_type": "ml.g5.12xlarge",
        "hyperpod_private_ip": "10.1.2.31",
    }
    assert "ansible_connection" not in compute["hyperpod_worker_p5"]["hosts"]["ip-10-1-1-21"]
    assert doc["all"]["vars"] == {
        "mlcluster_platform": "hyperpod",
        "slurm_partitions": [
            {"name": "p5", "group": "hyperpod_worker_p5", "default": True},
            {"name": "g5", "group": "hyperpod_worker_g5"},
        ],
        "lustre_client_mounts": [
            {
                "dns_name": "fs-0123456789abcdef0.fsx.us-west-2.amazonaws.com",
                "mount_name": "abcdefgh",
                "path": "/fsx",
            }
        ],
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, r"resource config .*resource_config.json does not exist"),
        ('{"InstanceGroups": [', r"resource config .* is not valid JSON: Expecting value: line 1"),
        ("[]", r"must hold a JSON object, not list"),
        ('{"ClusterConfig": {}}', r"has no InstanceGroups list"),
        ('{"InstanceGroups": [{"Instances": []}]}', r"InstanceGroups\[0\] has no Name"),
        (
            '{"InstanceGroups": [{"Name": "w", "Instances": [{"InstanceName": "w-1"}]}]}',
            r"InstanceGroups\[0\]\.Instances\[0\] has no CustomerIpAddress",
        ),
    ],
)
def test_bad_resource_config_is_a_clear_error(tmp_path, text, message):
    path = tmp_path / "resource_config.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(lifecycle.LifecycleError, match=message):
        lifecycle.read_resource_config(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"controller_group": None},
            r"controller_group \(the head node's instance group\) is missing",
        ),
        ({"worker_groups": []}, r"worker_groups must list the compute instance groups"),
        (
            {"worker_groups": [{"instance_group_name": "w"}]},
            r"worker_groups\[0\] needs instance_group_name and partition_name",
        ),
        ({"workload_manager": "k8s"}, r"workload_manager is 'k8s'; mlcluster configures slurm"),
        ({"fsx_mountname": None}, r"fsx_dns_name is set but fsx_mountname is not"),
    ],
)
def test_bad_provisioning_parameters_are_a_clear_error(tmp_path, change, message):
    params = {k: v for k, v in {**PARAMS, **change}.items() if v is not None}
    path = write(tmp_path / "provisioning_parameters.json", json.dumps(params))
    with pytest.raises(lifecycle.LifecycleError, match=message):
        lifecycle.read_provisioning_parameters(path)


def test_missing_or_malformed_provisioning_parameters(tmp_path):
    with pytest.raises(
        lifecycle.LifecycleError, match=r"provisioning parameters .* does not exist"
    ):
        lifecycle.read_provisioning_parameters(tmp_path / "provisioning_parameters.json")
    path = write(tmp_path / "provisioning_parameters.json", '{"controller_group": "c",}')
    with pytest.raises(lifecycle.LifecycleError, match=r"is not valid JSON: .*line 1 column 26"):
        lifecycle.read_provisioning_parameters(path)


def plan_for(ips, groups=None):
    config = [
        {
            "name": g["Name"],
            "instance_type": g["InstanceType"],
            "ips": [i["CustomerIpAddress"] for i in g["Instances"]],
        }
        for g in (groups or RESOURCE_CONFIG["InstanceGroups"])
    ]
    params = lifecycle.read_provisioning_parameters(HYPERPOD / "provisioning_parameters.json")
    return lifecycle.hyperpod_plan(config, params, set(ips))


def test_own_ip_not_in_the_resource_config():
    with pytest.raises(
        lifecycle.LifecycleError,
        match=r"none of this node's addresses \(10\.9\.9\.9\) is a CustomerIpAddress",
    ):
        plan_for(["10.9.9.9"])


def test_own_instance_group_unknown_to_the_parameters():
    groups = [
        *RESOURCE_CONFIG["InstanceGroups"],
        {
            "Name": "extra",
            "InstanceType": "ml.t3.medium",
            "Instances": [{"CustomerIpAddress": "10.1.3.1"}],
        },
    ]
    with pytest.raises(
        lifecycle.LifecycleError,
        match=r"instance group 'extra', which provisioning_parameters.json does not name",
    ):
        plan_for(["10.1.3.1"], groups)
    # Another node's unknown group is only left out.
    doc, name, _ = plan_for(["10.1.0.10"], groups)
    assert name == "ip-10-1-0-10"
    assert "ip-10-1-3-1" not in json.dumps(doc)


def test_controller_group_absent_from_the_cluster():
    with pytest.raises(
        lifecycle.LifecycleError, match="no controller instance group 'controller-machine'"
    ):
        plan_for(["10.1.1.21"], RESOURCE_CONFIG["InstanceGroups"][2:])


# --- the script end to end -----------------------------------------------------------------------


def run_on_create(node_root, bin_dir, *args, ip="10.1.1.22", **env):
    return subprocess.run(
        [str(HYPERPOD / "on_create.sh"), *args],
        env=script_env(bin_dir, MLCLUSTER_NODE_IP=ip, **env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_on_create_dry_run_writes_the_inventory_and_prints_the_command(node_root, fake_ansible):
    result = run_on_create(node_root, fake_ansible, "--dry-run")
    assert result.returncode == 0, result.stdout + result.stderr
    inventory = node_root / "opt/mlcluster/inventory/hosts.yml"
    assert result.stdout.splitlines()[-1] == (
        f"ANSIBLE_CONFIG={ROOT}/ansible.cfg {fake_ansible}/ansible-playbook -i {inventory}"
        f" -c local --limit ip-10-1-1-22 {ROOT}/site.yml"
    )
    assert not (fake_ansible / "called").exists()
    doc = yaml.safe_load(inventory.read_text())
    p5 = doc["all"]["children"]["slurm"]["children"]["slurm_compute"]["children"][
        "hyperpod_worker_p5"
    ]
    assert p5["hosts"]["ip-10-1-1-22"]["ansible_connection"] == "local"
    assert os.readlink(inventory.parent / "group_vars") == str(
        ROOT / "inventory/hyperpod/group_vars"
    )
    log = (node_root / "var/log/provision/provisioning.log").read_text()
    assert "this node is ip-10-1-1-22: compute (partition p5)" in log


def test_written_inventory_is_read_by_ansible_with_the_platform_group_vars(node_root, fake_ansible):
    assert run_on_create(node_root, fake_ansible, "--dry-run").returncode == 0
    listed = subprocess.run(
        [
            str(venv_bin() / "ansible-inventory"),
            "-i",
            str(node_root / "opt/mlcluster/inventory/hosts.yml"),
            "--list",
        ],
        env={**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    data = json.loads(listed.stdout)
    assert data["slurm_controller"]["hosts"] == ["ip-10-1-0-10"]
    assert sorted(data["slurm_compute"]["children"]) == ["hyperpod_worker_g5", "hyperpod_worker_p5"]
    me = data["_meta"]["hostvars"]["ip-10-1-1-22"]
    assert me["ansible_connection"] == "local"
    assert me["slurm_configless"] is True  # inventory/hyperpod/group_vars/all.yml
    assert me["slurm_node_config"] == {"Features": ["p5", "ml.p5.48xlarge", "efa"]}
    assert me["slurm_partitions"][0] == {
        "name": "p5",
        "group": "hyperpod_worker_p5",
        "default": True,
    }
    # site.yml's preflight plays (groups, role variables, partitions) pass on it.
    preflight = subprocess.run(
        [str(venv_bin() / "ansible-playbook"),
         "-i", str(node_root / "opt/mlcluster/inventory/hosts.yml"),
         "playbooks/preflight.yml", "playbooks/slurm_preflight.yml"],
        cwd=ROOT, env={**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert preflight.returncode == 0, preflight.stdout[-3000:]


def test_on_create_runs_ansible_and_is_safe_to_run_again(node_root, fake_ansible):
    for _ in range(2):
        result = run_on_create(node_root, fake_ansible, "--tags", "slurm", ip="10.1.0.10")
        assert result.returncode == 0, result.stdout + result.stderr
    called = (fake_ansible / "called").read_text().splitlines()
    inventory = node_root / "opt/mlcluster/inventory/hosts.yml"
    assert called == [
        str(ROOT / "ansible.cfg"),
        "-i", str(inventory), "-c", "local", "--limit", "ip-10-1-0-10", str(ROOT / "site.yml"),
        "--tags", "slurm",
    ]  # fmt: skip
    log = (node_root / "var/log/provision/provisioning.log").read_text()
    assert log.count("PLAY RECAP ok=12 changed=3") == 2
    assert log.count("node ip-10-1-0-10 configured") == 2


def test_on_create_failure_is_reported_with_non_zero_exit(node_root, fake_ansible):
    result = run_on_create(node_root, fake_ansible, FAKE_ANSIBLE_RC="2")
    assert result.returncode == 1
    log = (node_root / "var/log/provision/provisioning.log").read_text()
    assert "ERROR " in log and "failed with exit status 2" in log
    assert "node not configured; the full log is" in log


def test_on_create_errors_end_the_run(node_root, fake_ansible):
    (node_root / "opt/ml/config/resource_config.json").write_text("{not json")
    result = run_on_create(node_root, fake_ansible)
    assert result.returncode == 1
    assert "is not valid JSON" in result.stdout
    assert not (fake_ansible / "called").exists()


def test_resource_config_path_from_the_environment(node_root, fake_ansible, tmp_path):
    moved = write(tmp_path / "elsewhere.json", json.dumps(RESOURCE_CONFIG))
    (node_root / "opt/ml/config/resource_config.json").unlink()
    result = run_on_create(
        node_root, fake_ansible, "--dry-run", SAGEMAKER_RESOURCE_CONFIG_PATH=str(moved)
    )
    assert result.returncode == 0, result.stdout


def test_without_ansible_it_makes_a_venv_with_the_projects_ansible(node_root, tmp_path):
    empty_bin = tmp_path / "empty-bin"
    empty_bin.mkdir()
    for name in ("hostname", "dirname", "mkdir", "date", "tee"):
        (empty_bin / name).symlink_to(shutil.which(name))
    for name in ("python3", "python3.11"):
        (empty_bin / name).symlink_to(sys.executable)
    result = subprocess.run(
        [str(HYPERPOD / "on_create.sh"), "--dry-run"],
        env={**os.environ, "PATH": str(empty_bin), "MLCLUSTER_NODE_IP": "10.1.1.21"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    venv = node_root / "opt/mlcluster/venv"
    lines = result.stdout.splitlines()
    assert f"{empty_bin}/python3.11 -m venv {venv}" in lines
    assert f"{venv}/bin/pip install --quiet 'ansible>=12.3,<13'" in lines
    inventory = venv.parent / "inventory/hosts.yml"
    assert lines[-1].endswith(
        f"{venv}/bin/ansible-playbook -i {inventory} -c local --limit ip-10-1-1-21 {ROOT}/site.yml"
    )


# --- ParallelCluster -----------------------------------------------------------------------------

CFNCONFIG = """\
stack_name=parallelcluster-pc1
cfn_region=us-east-1
cfn_scheduler=slurm
cfn_node_type={node_type}
cfn_cluster_user=ubuntu
cfn_head_node=ip-10-0-0-10.ec2.internal
cfn_head_node_private_ip=10.0.0.10
"""


@pytest.mark.parametrize(
    ("node_type", "queue", "me", "role"),
    [
        ("HeadNode", None, "ip-10-0-0-10", "controller"),
        ("ComputeFleet", "gpu", "gpu-st-p5-1", "compute (queue gpu)"),
        ("LoginNode", None, "login-1", "login"),
    ],
)
def test_parallelcluster_node_knows_itself_and_the_head_node(tmp_path, node_type, queue, me, role):
    cfn = lifecycle.read_cfnconfig(
        write(tmp_path / "cfnconfig", CFNCONFIG.format(node_type=node_type))
    )
    doc, name, got_role = lifecycle.parallelcluster_plan(cfn, queue, me, {"10.0.16.21"})
    assert (name, got_role) == (me, role)
    slurm = doc["all"]["children"]["slurm"]["children"]
    assert slurm["slurm_controller"]["hosts"]["ip-10-0-0-10"]["ansible_host"] == "10.0.0.10"
    if node_type == "ComputeFleet":
        host = slurm["slurm_compute"]["children"]["pcluster_queue_gpu"]["hosts"][me]
        assert host == {
            "ansible_connection": "local",
            "ansible_host": "10.0.16.21",
            "pcluster_queue": "gpu",
        }
        assert doc["all"]["vars"]["slurm_partitions"] == [
            {"name": "gpu", "group": "pcluster_queue_gpu", "default": True}
        ]
    else:
        # Compute nodes come and go with Slurm's power saving: the head node requires only itself.
        assert doc["all"]["vars"]["mlcluster_required_groups"] == ["slurm_controller"]


SCONTROL_NODES = """\
NodeName=gpu-st-p5-1 NodeAddr=10.0.16.21 NodeHostName=gpu-st-p5-1 State=IDLE Partitions=gpu
NodeName=gpu-dy-p5-1 NodeAddr=gpu-dy-p5-1 State=IDLE+CLOUD+POWERED_DOWN Partitions=gpu
NodeName=cpu-dy-c6i-1 NodeAddr=cpu-dy-c6i-1 State=IDLE+CLOUD+POWERED_DOWN Partitions=cpu
"""


def test_parallelcluster_head_node_lists_slurms_nodes_and_passes_the_preflight(tmp_path):
    """The head node's inventory holds the nodes ParallelCluster's Slurm knows (scontrol), so
    site.yml's preflight plays pass on it; a node without them would have no slurm_compute."""
    scontrol = write(tmp_path / "scontrol", f"#!/bin/sh\ncat <<'EOF'\n{SCONTROL_NODES}EOF\n")
    scontrol.chmod(0o755)
    root = tmp_path / "node"
    write(root / "etc/parallelcluster/cfnconfig", CFNCONFIG.format(node_type="HeadNode"))
    env = {
        **os.environ,
        "MLCLUSTER_LIFECYCLE_ROOT": str(root),
        "MLCLUSTER_NODE_IP": "10.0.0.10",
        "MLCLUSTER_SCONTROL": str(scontrol),
    }
    result = subprocess.run(
        [sys.executable, str(HYPERPOD / "mlcluster_lifecycle.py"), "parallelcluster", "--dry-run",
         "--ansible-playbook", "ansible-playbook"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    inventory = root / "opt/mlcluster/inventory/hosts.yml"
    doc = yaml.safe_load(inventory.read_text())
    compute = doc["all"]["children"]["slurm"]["children"]["slurm_compute"]["children"]
    assert names(compute["pcluster_queue_gpu"]["hosts"]) == ["gpu-dy-p5-1", "gpu-st-p5-1"]
    assert compute["pcluster_queue_gpu"]["hosts"]["gpu-st-p5-1"]["ansible_host"] == "10.0.16.21"
    assert names(compute["pcluster_queue_cpu"]["hosts"]) == ["cpu-dy-c6i-1"]
    assert doc["all"]["vars"]["slurm_partitions"] == [
        {"name": "cpu", "group": "pcluster_queue_cpu", "default": True},
        {"name": "gpu", "group": "pcluster_queue_gpu"},
    ]
    preflight = subprocess.run(
        [str(venv_bin() / "ansible-playbook"), "-i", str(inventory),
         "playbooks/preflight.yml", "playbooks/slurm_preflight.yml"],
        cwd=ROOT, env={**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert preflight.returncode == 0, preflight.stdout[-3000:]


def test_parallelcluster_errors(tmp_path):
    with pytest.raises(
        lifecycle.LifecycleError, match="does not exist: is this a ParallelCluster node"
    ):
        lifecycle.read_cfnconfig(tmp_path / "cfnconfig")
    with pytest.raises(lifecycle.LifecycleError, match="has no cfn_head_node_private_ip"):
        lifecycle.read_cfnconfig(
            write(tmp_path / "c1", "cfn_node_type=HeadNode\ncfn_head_node=h\n")
        )
    cfn = lifecycle.read_cfnconfig(
        write(tmp_path / "c2", CFNCONFIG.format(node_type="ComputeFleet"))
    )
    with pytest.raises(lifecycle.LifecycleError, match="a compute node needs --queue"):
        lifecycle.parallelcluster_plan(cfn, None, "n", {"10.0.16.21"})
    cfn["cfn_node_type"] = "Batch"
    with pytest.raises(lifecycle.LifecycleError, match="unknown cfn_node_type 'Batch'"):
        lifecycle.parallelcluster_plan(cfn, "q", "n", {"10.0.16.21"})


def test_on_node_configured_fetches_the_upload_and_configures_the_node(tmp_path, fake_ansible):
    """The custom action as ParallelCluster runs it, with `aws s3 sync` served from a folder."""
    bucket = tmp_path / "bucket" / "mlcluster-lifecycle"
    bucket.mkdir(parents=True)
    (bucket / "mlcluster_lifecycle.py").write_bytes(
        (HYPERPOD / "mlcluster_lifecycle.py").read_bytes()
    )
    (bucket / "mlcluster").symlink_to(ROOT)  # the project copy the upload carries
    aws = fake_ansible / "aws"
    aws.write_text(
        "#!/bin/sh\n"
        '[ "$1 $2" = "s3 sync" ] || exit 9\n'
        'src="$5"; dst="$6"\n'
        'cp -a "$FAKE_S3/${src#s3://}." "$dst"\n'
    )
    aws.chmod(0o755)
    root = tmp_path / "node"
    write(root / "etc/parallelcluster/cfnconfig", CFNCONFIG.format(node_type="ComputeFleet"))
    env = script_env(
        fake_ansible,
        FAKE_S3=str(tmp_path / "bucket") + "/",
        MLCLUSTER_LIFECYCLE_ROOT=str(root),
        MLCLUSTER_NODE_IP="10.0.16.21",
        MLCLUSTER_NODE_NAME="gpu-st-p5-1",
    )
    script = str(PCLUSTER / "on_node_configured.sh")
    result = subprocess.run(
        [script, "s3://mlcluster-lifecycle", "--queue", "gpu"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    project = root / "opt/mlcluster/lifecycle/mlcluster"
    called = (fake_ansible / "called").read_text().splitlines()
    assert called == [
        str(project / "ansible.cfg"),
        "-i", str(root / "opt/mlcluster/inventory/hosts.yml"), "-c", "local",
        "--limit", "gpu-st-p5-1", str(project / "site.yml"),
    ]  # fmt: skip
    link = root / "opt/mlcluster/inventory/group_vars"
    assert os.readlink(link) == str(project / "inventory/parallelcluster/group_vars")

    bad = subprocess.run([script], env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1
    assert "usage:" in bad.stderr
    assert "usage:" in (root / "var/log/provision/provisioning.log").read_text()
