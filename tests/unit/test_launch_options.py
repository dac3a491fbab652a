"""`mlcluster run`'s launch options: GPUs from GRES, default arguments, checkpoints, containers,
the one case registry, and the OCI bundle's runtime spec."""

from __future__ import annotations

import pytest
from mlcluster_workloads import cases

from mlcluster import bundle, cli, workload_run
from mlcluster.errors import MlclusterError


@pytest.mark.parametrize(
    ("gres", "gpus"),
    [
        ("(null)", 0),
        ("gpu:8", 8),
        ("gpu:h100:8(S:0-1)", 8),
        ("gpu:a100:4,gpu:t4:2", 6),
        ("shard:8,gpu:2", 2),
    ],
)
def test_gpus_from_gres_as_sinfo_prints_it(gres, gpus):
    assert workload_run.parse_gres_gpus(gres) == gpus


class FakeController:
    """Answers the sinfo call of partition_gpus like slurmctld would."""

    host = "controller"

    def __init__(self, stdout: str):
        self.stdout = stdout
        self.commands: list[str] = []

    def run(self, command, input_text=None, timeout=120):
        self.commands.append(command)

        class Proc:
            returncode = 0
            stderr = ""

        proc = Proc()
        proc.stdout = self.stdout
        return proc


SINFO = "p5-1 gpu:h100:8(S:0-1) p5\np5-2 gpu:h100:8(S:0-1) p5\ncpu-1 (null) batch*\n"


def test_partition_gpus_reads_the_default_partition_or_the_named_one():
    assert workload_run.partition_gpus(FakeController(SINFO), None) == 0
    target = FakeController("p5-1 gpu:8 p5\np5-2 gpu:4 p5\n")
    # The fewest any node has: a job asks for the same GPUs on every node.
    assert workload_run.partition_gpus(target, "p5") == 4
    assert target.commands == ["sinfo -h -N -p p5 -o '%N %G %P'"]
    with pytest.raises(MlclusterError, match="partition gpu has no nodes"):
        workload_run.partition_gpus(FakeController(""), "gpu")


def test_case_arguments_default_by_device_and_checkpoint_on_fsx():
    # every training case checkpoints under the job's name on /fsx (ddp, jax as fsdp)
    fsx = ["--checkpoint-dir", "/fsx/mlcluster/checkpoints/job"]
    assert workload_run.case_arguments("ddp", [], 0, "job") == ["--steps", "40", *fsx]
    assert workload_run.case_arguments("ddp", [], 8, "job") == ["--steps", "200", *fsx]
    assert workload_run.case_arguments("jax", [], 0, "job") == ["--steps", "40", *fsx]
    # a measurement keeps nothing
    assert workload_run.case_arguments("allreduce", [], 0, "job") == [
        "--max-bytes",
        "16M",
        "--iters",
        "10",
    ]
    assert workload_run.case_arguments("fsdp", ["--", "--steps", "3"], 0, "j-1") == [
        "--steps",
        "3",
        "--checkpoint-dir",
        "/fsx/mlcluster/checkpoints/j-1",
    ]
    # The user's own directory wins, in either spelling.
    assert workload_run.case_arguments("fsdp", ["--checkpoint-dir=/fsx/x"], 0, "j") == [
        "--checkpoint-dir=/fsx/x"
    ]
    # A `--` inside the case's arguments is the case's (nccl-tests' own options follow it).
    assert workload_run.case_arguments("allreduce", ["--iters", "2", "--", "-g", "1"], 0, "j") == [
        "--iters",
        "2",
        "--",
        "-g",
        "1",
    ]


def test_render_script_picks_the_container_mechanism_from_the_value():
    oci = workload_run.render_script("ddp", 2, [], "j", container="/fsx/containers/node")
    assert "srun --container=/fsx/containers/node \\" in oci.splitlines()
    pyxis = workload_run.render_script("ddp", 2, [], "j", container="nvcr.io#nvidia/pytorch:25.01")
    assert (
        "srun --container-image='nvcr.io#nvidia/pytorch:25.01' --container-mounts=/fsx:/fsx \\"
        in pyxis.splitlines()
    )
    gpu = workload_run.render_script("fsdp", 4, [], "j", gpus_per_node=8, partition="p5")
    assert "#SBATCH --gpus-per-node=8" in gpu.splitlines()
    assert "#SBATCH --partition=p5" in gpu.splitlines()
    assert "--nproc_per_node=8" in gpu
    with pytest.raises(MlclusterError, match="nccl_tests needs GPUs"):
        workload_run.render_script("nccl_tests", 2, [], "j", gpus_per_node=0)


def test_the_cli_offers_exactly_the_registry_runnable_cases():
    parser = cli.build_parser()
    run = parser._subparsers._group_actions[0].choices["run"]
    case = next(a for a in run._actions if a.dest == "case")
    assert case.choices == ["ddp", "fsdp", "jax", "allreduce", "nccl_tests"]
    assert case.choices == cases.runnable()
    assert cases.get("jax").module == "jax_dp"
    assert cases.get("jax_dp") is cases.get("jax")


def test_bundle_spec_is_rootless_for_the_job_user_on_the_host_network():
    spec = bundle.runtime_spec(2001, 2000)
    # runc needs the container's root mapped: it is the job user outside.
    assert spec["process"]["user"] == {"uid": 0, "gid": 0}
    assert spec["linux"]["uidMappings"] == [{"containerID": 0, "hostID": 2001, "size": 1}]
    assert spec["linux"]["gidMappings"] == [{"containerID": 0, "hostID": 2000, "size": 1}]
    namespaces = [ns["type"] for ns in spec["linux"]["namespaces"]]
    # No network or UTS namespace: the host's network and the node's hostname.
    assert namespaces == ["pid", "ipc", "mount", "user"]
    binds = {m["destination"]: m["options"] for m in spec["mounts"] if m["type"] == "none"}
    assert binds["/fsx"] == ["rbind", "rw"]
    assert binds["/etc/hosts"] == ["bind", "ro"]
    shm = next(m for m in spec["mounts"] if m["destination"] == "/dev/shm")
    assert "size=1g" in shm["options"]
    assert spec["root"] == {"path": "rootfs", "readonly": True}
    with pytest.raises(ValueError, match="absolute path below /"):
        bundle.runtime_spec(1, 1, shared_mounts=("fsx",))


def test_bundle_user_ids_from_the_image_passwd():
    passwd = "root:x:0:0:root:/root:/bin/bash\nmluser:x:2001:2000::/home/mluser:/bin/bash\n"
    assert bundle.passwd_ids(passwd, "mluser") == (2001, 2000)
    with pytest.raises(ValueError, match="no user 'nobody2'"):
        bundle.passwd_ids(passwd, "nobody2")


def test_failure_reason_is_the_first_line_that_says_why():
    output = "\n".join(
        [
            "usage: python -m mlcluster_workloads.ddp [-h] [--steps STEPS]",
            "python -m mlcluster_workloads.ddp: error: unrecognized arguments: --bad",
            "Traceback (most recent call last):",
            "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: ",
            "srun: error: compute1: task 0: Exited with exit code 1",
        ]
    )
    assert workload_run.failure_reason(output) == (
        "python -m mlcluster_workloads.ddp: error: unrecognized arguments: --bad"
    )
    assert workload_run.failure_reason("PermissionError: [Errno 13] /fsx/x\n") == (
        "PermissionError: [Errno 13] /fsx/x"
    )
    assert workload_run.failure_reason("all fine\n") is None


def test_a_squashfs_path_is_a_pyxis_image_not_a_bundle():
    assert workload_run.is_oci_bundle("/fsx/containers/node")
    assert not workload_run.is_oci_bundle("/fsx/containers/node.sqsh")
    assert not workload_run.is_oci_bundle("nvcr.io#nvidia/pytorch:25.01")
    script = workload_run.render_script("ddp", 2, [], "j", container="/fsx/containers/node.sqsh")
    assert (
        "srun --container-image=/fsx/containers/node.sqsh --container-mounts=/fsx:/fsx \\"
        in script.splitlines()
    )
    target = FakeController("")
    # The file is looked for, then pyxis (srun --help answers nothing here: not loaded).
    with pytest.raises(MlclusterError, match="pyxis is not loaded by Slurm on controller"):
        workload_run.check_container_support(target, "/fsx/containers/node.sqsh")
    assert target.commands[0] == "test -f /fsx/containers/node.sqsh"
