"""`mlcluster run`: the rendered batch scripts line by line, the inventory lookup, the metrics
parsing, and the whole run against a fake controller (no SSH) that answers scontrol, sacct,
sinfo and cat as a Slurm controller would, down to the exit status when the job fails
(tests/unit/test_run_follow.py: requeues, deadline, Ctrl-C, SSH failures, the script upload)."""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from rich.console import Console

from mlcluster import cli, job_report, workload_run
from mlcluster.errors import MlclusterError
from mlcluster.runner import EXIT_FAILED, EXIT_OK

HEADER = [
    "# Rendered by mlcluster_workloads.launch.",
    "set -euo pipefail",
    "",
    "export OMP_NUM_THREADS=1",
    "export PYTHONUNBUFFERED=1",
    "",
    'head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
    "",
]
TORCHRUN_CPU = (
    "  /fsx/mlcluster/venv/bin/torchrun --nnodes=$SLURM_JOB_NUM_NODES --nproc_per_node=1"
    " --rdzv_backend=c10d --rdzv_endpoint=$head_node:29500 --rdzv_id=$SLURM_JOB_ID"
    " --rdzv_conf=join_timeout=300 \\"
)
# Training cases: requeued output appends, SIGUSR1 before the time limit, the trap that saves and
# requeues, the step in the background (launch.py renders them; tests/workloads/test_launch.py
# has the whole script).
REQUEUE = ["#SBATCH --requeue", "#SBATCH --open-mode=append"]
TRAINING = [*REQUEUE, "#SBATCH --signal=B:USR1@120"]
TRAP = [
    "# SIGUSR1 arrives 120 s before the time limit (--signal): SIGTERM",
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
]
BACKGROUND = ["step_pid=$!", 'wait "$step_pid"']


def script_lines(case, nodes, job_name, gpus_per_node=0, extra_args=(), **kwargs):
    args = workload_run.case_arguments(case, list(extra_args), gpus_per_node, job_name)
    return workload_run.render_script(
        case, nodes, args, job_name, gpus_per_node=gpus_per_node, **kwargs
    ).splitlines()


def test_ddp_on_cpu_nodes():
    assert script_lines("ddp", 2, "mlcluster-ddp-1") == [
        "#!/bin/bash",
        "#SBATCH --job-name=mlcluster-ddp-1",
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --exclusive",
        *TRAINING,
        "#SBATCH --output=/fsx/mlcluster/jobs/%x-%j.out",
        *HEADER,
        *TRAP,
        "srun \\",
        TORCHRUN_CPU,
        "  -m mlcluster_workloads.ddp --dist-timeout=300 --steps 40"
        " --checkpoint-dir /fsx/mlcluster/checkpoints/mlcluster-ddp-1 &",
        *BACKGROUND,
    ]


def test_jax_runs_one_process_per_node_with_the_first_node_as_coordinator():
    assert script_lines("jax", 3, "mlcluster-jax-1", extra_args=["--", "--steps", "5"]) == [
        "#!/bin/bash",
        "#SBATCH --job-name=mlcluster-jax-1",
        "#SBATCH --nodes=3",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --exclusive",
        *TRAINING,
        "#SBATCH --output=/fsx/mlcluster/jobs/%x-%j.out",
        *HEADER,
        *TRAP,
        "srun \\",
        "  /fsx/mlcluster/venv/bin/python \\",
        "  -m mlcluster_workloads.jax_dp --coordinator=$head_node:12355 --dist-timeout=300"
        " --steps 5 --checkpoint-dir /fsx/mlcluster/checkpoints/mlcluster-jax-1 &",
        *BACKGROUND,
    ]


def test_fsdp_on_gpu_nodes_in_a_pyxis_image_checkpoints_on_fsx():
    lines = script_lines(
        "fsdp",
        2,
        "mlcluster-fsdp-1",
        gpus_per_node=8,
        partition="p5",
        container="nvcr.io#nvidia/pytorch:25.01-py3",
    )
    assert lines == [
        "#!/bin/bash",
        "#SBATCH --job-name=mlcluster-fsdp-1",
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --exclusive",
        "#SBATCH --partition=p5",
        *TRAINING,
        "#SBATCH --output=/fsx/mlcluster/jobs/%x-%j.out",
        *HEADER,
        *TRAP,
        "srun --container-image='nvcr.io#nvidia/pytorch:25.01-py3' --container-mounts=/fsx:/fsx \\",
        "  /fsx/mlcluster/venv/bin/torchrun --nnodes=$SLURM_JOB_NUM_NODES --nproc_per_node=8"
        " --rdzv_backend=c10d --rdzv_endpoint=$head_node:29500 --rdzv_id=$SLURM_JOB_ID"
        " --rdzv_conf=join_timeout=300 \\",
        "  -m mlcluster_workloads.fsdp --dist-timeout=300 --config 1b --steps 50"
        " --checkpoint-dir /fsx/mlcluster/checkpoints/mlcluster-fsdp-1 &",
        *BACKGROUND,
    ]


def test_a_given_checkpoint_dir_is_kept():
    assert workload_run.case_arguments("fsdp", ["--checkpoint-dir=/fsx/mine"], 0, "j") == [
        "--checkpoint-dir=/fsx/mine"
    ]


def test_allreduce_in_an_oci_bundle():
    assert script_lines("allreduce", 2, "mlcluster-allreduce-1", container="/fsx/bundles/torch")[
        -3:
    ] == [
        "srun --container=/fsx/bundles/torch \\",
        TORCHRUN_CPU,
        "  -m mlcluster_workloads.allreduce --max-bytes 16M --iters 10",
    ]


def test_nccl_tests_run_one_mpi_rank_per_gpu():
    assert script_lines("nccl_tests", 2, "mlcluster-nccl-tests-1", gpus_per_node=8) == [
        "#!/bin/bash",
        "#SBATCH --job-name=mlcluster-nccl-tests-1",
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=8",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --exclusive",
        *REQUEUE,
        "#SBATCH --output=/fsx/mlcluster/jobs/%x-%j.out",
        *HEADER,
        "/fsx/mlcluster/venv/bin/python -m mlcluster_workloads.allreduce --nccl-tests"
        " --nccl-tests-bin=/opt/nccl-tests/bin/all_reduce_perf --launcher='srun --mpi=pmix'"
        " --min-bytes 8 --max-bytes 16G -- -g 1 -n 20",
    ]


def test_a_bad_spec_is_bad_input():
    with pytest.raises(MlclusterError, match="needs GPUs") as exc:
        workload_run.render_script("nccl_tests", 2, [], "j", gpus_per_node=0)
    assert exc.value.exit_code == 2


def test_parse_metrics_keeps_steps_and_summary_only():
    lines = [
        "some log line",
        json.dumps({"event": "step", "step": 1, "loss": 2.0}),
        "{not json",
        json.dumps({"event": "rank", "rank": 1}),
        json.dumps({"event": "step", "step": 2, "loss": 1.0}),
        json.dumps({"event": "summary", "first_loss": 2.0, "final_loss": 1.0}),
    ]
    steps, summary = job_report.parse_metrics("\n".join(lines))
    assert [s["step"] for s in steps] == [1, 2]
    assert summary == {"event": "summary", "first_loss": 2.0, "final_loss": 1.0}


@pytest.mark.parametrize(
    ("gres", "gpus"),
    [("(null)", 0), ("gpu", 0), ("gpu:8", 8), ("gpu:h100:8(S:0-1)", 8), ("gpu:a10g:2,gpu:t4:1", 3)],
)
def test_parse_gres_gpus(gres, gpus):
    assert workload_run.parse_gres_gpus(gres) == gpus


def test_summary_table_rows():
    console = Console(width=120, record=True)
    summary = {
        "world_size": 2,
        "first_loss": 2.0,
        "final_loss": 0.5,
        "samples_per_s": 1234.5,
        "tokens_per_s": None,
        "tflops_per_device": 0.001,
        "mfu": None,
        "step_time_s": 0.2,
    }
    console.print(job_report.summary_table("ddp", "7", "COMPLETED", [{}, {}], summary))
    text = console.export_text()
    rows = {
        cells[0]: cells[1]
        for line in text.splitlines()
        if len(cells := [c.strip() for c in line.strip("│┃ ").split("│")]) == 2
    }
    assert text.splitlines()[0].strip() == "ddp (job 7): COMPLETED"
    assert rows == {
        "world size": "2",
        "steps": "2",
        "first loss": "2.0000",
        "final loss": "0.5000",
        "samples/s": "1,234.5",
        "tokens/s": "n/a (not a token model)",
        "TFLOP/s per device": "0.0010",
        "MFU": "unknown (no peak for this device)",
        "step time (s)": "0.200",
    }


def test_controller_target_from_inventory(tmp_path):
    inv = tmp_path / "hosts.yml"
    inv.write_text(
        "all:\n  vars:\n    ansible_user: admin\n"
        "    ansible_ssh_private_key_file: /keys/id\n"
        "    ansible_ssh_common_args: -o StrictHostKeyChecking=no\n"
        "  children:\n    slurm_controller:\n      hosts:\n"
        "        head:\n          ansible_host: 10.0.0.5\n"
    )
    target = workload_run.controller_target(inv)
    assert (target.host, target.address, target.user) == ("head", "10.0.0.5", "admin")
    assert target.ssh_args == [
        "-o",
        "BatchMode=yes",
        "-o",
        "ConnectTimeout=10",
        "-i",
        "/keys/id",
        "-o",
        "StrictHostKeyChecking=no",
    ]


def test_the_job_user_and_root_come_from_the_inventory_or_the_roles_defaults(tmp_path):
    """`mlcluster run` writes, submits and reads where the workloads role installed the cases,
    as its user: the inventory's workloads_user/workloads_root, else the role's defaults."""
    inv = tmp_path / "hosts.yml"
    inv.write_text(
        "all:\n  vars:\n    workloads_user: alice\n    workloads_root: /lustre/ml/\n"
        "  children:\n    slurm_controller:\n      hosts:\n        head: {}\n"
    )
    target = workload_run.controller_target(inv)
    assert (target.job_user, target.workloads_root, target.jobs_dir) == (
        "alice", "/lustre/ml", "/lustre/ml/jobs"
    )  # fmt: skip
    assert workload_run.as_job_user(target) == "runuser -u alice --"
    args = workload_run.case_arguments("ddp", [], 0, "j", target.workloads_root)
    assert args[-2:] == ["--checkpoint-dir", "/lustre/ml/checkpoints/j"]
    script = workload_run.render_script("ddp", 2, args, "j", workloads_root=target.workloads_root)
    assert "#SBATCH --output=/lustre/ml/jobs/%x-%j.out" in script.splitlines()
    assert "  /lustre/ml/venv/bin/torchrun --nnodes=$SLURM_JOB_NUM_NODES " in script

    defaults = yaml.safe_load(
        (Path(__file__).parents[2] / "roles/workloads/defaults/main.yml").read_text()
    )
    inv.write_text("all:\n  children:\n    slurm_controller:\n      hosts:\n        head: {}\n")
    target = workload_run.controller_target(inv)
    assert (target.job_user, target.workloads_root) == (
        defaults["workloads_user"], defaults["workloads_root"]
    )  # fmt: skip


@pytest.mark.parametrize(
    ("var", "value", "message"),
    [
        (
            "workloads_user",
            "bob; rm -rf /",
            "workloads_user 'bob; rm -rf /' on head is not a user name",
        ),
        ("workloads_root", "fsx/ml", "workloads_root 'fsx/ml' on head is not an absolute path"),
        (
            "workloads_root",
            "/fsx/$(id)",
            "workloads_root '/fsx/$(id)' on head is not an absolute path",
        ),
        ("workloads_root", "{{ root }}/ml", "workloads_root '{{ root }}/ml' on head is not an"),
    ],
)
def test_a_job_user_or_root_that_is_not_plain_is_bad_input(tmp_path, var, value, message):
    inv = tmp_path / "hosts.yml"
    inv.write_text(
        f"all:\n  vars:\n    {var}: {json.dumps(value)}\n"
        "  children:\n    slurm_controller:\n      hosts:\n        head: {}\n"
    )
    with pytest.raises(MlclusterError) as exc:
        workload_run.controller_target(inv)
    assert exc.value.exit_code == 2
    assert str(exc.value).startswith(f"inventory {inv}: {message}")


def test_controller_target_needs_a_controller(tmp_path):
    inv = tmp_path / "hosts.yml"
    inv.write_text("all:\n  hosts:\n    lonely: {}\n")
    with pytest.raises(MlclusterError, match="no host in group slurm_controller"):
        workload_run.controller_target(inv)


# ---- the whole run against a fake controller ------------------------------------------------

JOB_ID = "4242"
NOW = 1_700_000_000
STEP = json.dumps({"event": "step", "step": 1, "loss": 2.5})
SUMMARY = json.dumps(
    {"event": "summary", "world_size": 2, "first_loss": 2.5, "final_loss": 0.4, "mfu": None}
)
CPU_PARTITION = "compute1 (null) batch*\ncompute2 (null) batch*\n"
INVALID_JOB = "slurm_load_jobs error: Invalid job id specified\n"
# The random part mktemp gives the batch script's name on the fake controller.
RANDOM = "Xq3bR7tZ"


def scontrol_line(state, reason="None", restarts=0, nodes="(null)", requeue=1):
    """`scontrol -o show job` of a job of `mlcluster run`, as Slurm 22.05 prints it (cut)."""
    return (
        f"JobId={JOB_ID} JobName=mlcluster-ddp-{NOW} UserId=mluser(2001) GroupId=mluser(2000) "
        f"MCS_label=N/A Priority=4294901759 Nice=0 Account=(null) QOS=normal JobState={state} "
        f"Reason={reason} Dependency=(null) Requeue={requeue} Restarts={restarts} BatchFlag=1 "
        "Reboot=0 ExitCode=0:0 RunTime=00:00:07 TimeLimit=UNLIMITED TimeMin=N/A "
        "AllocNode:Sid=controller:2911 ReqNodeList=(null) ExcNodeList=(null) "
        f"NodeList={nodes} BatchHost=compute1 NumNodes=2 NumCPUs=2 NumTasks=2 CPUs/Task=1 "
        "ReqB:S:C:T=0:0:*:* TRES=cpu=2,mem=1600M,node=2,billing=2 "
        f"Command=/fsx/mlcluster/jobs/mlcluster-ddp-{NOW}.{RANDOM}.sbatch "
        "WorkDir=/fsx/mlcluster/jobs Power=\n"
    )


class FakeController:
    """Answers the commands `mlcluster run` sends over SSH like a Slurm controller would."""

    host, user = "head", "root"
    job_user, workloads_root = workload_run.JOB_USER, workload_run.WORKLOADS_ROOT
    jobs_dir = f"{workloads_root}/jobs"

    def __init__(self, squeue=("PENDING", "RUNNING"), sacct="", output="", sinfo=CPU_PARTITION):
        # scontrol's answers in turn: a state (a line with it) or a whole line; then the job
        # has left slurmctld and sacct answers
        self.squeue = list(squeue)
        self.sacct, self.output, self.sinfo = sacct, output, sinfo
        self.bundles: set[str] = set()
        self.sleeps: list[float] = []
        self.pyxis = True
        self.upload_rc = 0
        self.sbatch = (0, f"{JOB_ID};hetero\n", "")
        self.uploads: dict[str, str] = {}
        self.commands: list[str] = []

    def run(self, command: str, input_text: str | None = None, timeout: float = 120):
        self.commands.append(command)
        rc, out, err = 0, "", ""
        if command.startswith("runuser -u mluser -- sh -c "):
            prefix = shlex.split(command)[-1]
            self.uploads[f"{prefix}.sbatch"] = input_text
            rc, out = self.upload_rc, f"{prefix}.{RANDOM}.sbatch\n" * (not self.upload_rc)
            err = f"mktemp: failed to create file via template '{prefix}.XXXXXXXX': "
            err += "Permission denied"
        elif command.startswith("test -f "):
            rc = 0 if command.split()[2].removesuffix("/config.json") in self.bundles else 1
        elif command.startswith("srun --help"):
            out = "1\n" if self.pyxis else "0\n"
        elif "sbatch --parsable" in command:
            rc, out, err = self.sbatch
        elif command.startswith("sinfo "):
            out = self.sinfo
        elif command == f"scontrol -o show job {JOB_ID}":
            if self.squeue:
                answer = self.squeue.pop(0)
                out = answer if "JobState=" in answer else scontrol_line(answer)
            else:
                rc, err = 1, INVALID_JOB
        elif command == f"scancel {JOB_ID}":
            pass
        elif command.startswith(f"sacct -n -X -P -j {JOB_ID} "):
            out = self.sacct
        elif command.startswith("cat /fsx/mlcluster/jobs/mlcluster-"):
            out = self.output
        else:
            raise AssertionError(f"unexpected command on the controller: {command}")
        return subprocess.CompletedProcess(command, rc, out, err)


@pytest.fixture
def controller(monkeypatch, tmp_path):
    """A fake controller behind `mlcluster run`; the install playbook succeeds."""
    fake = FakeController()
    monkeypatch.setattr(workload_run, "controller_target", lambda _inventory: fake)
    monkeypatch.setattr(
        workload_run, "run_playbook", lambda *_a, **_k: SimpleNamespace(exit_code=EXIT_OK)
    )
    monkeypatch.setattr(
        workload_run,
        "time",
        SimpleNamespace(time=lambda: NOW, monotonic=time.monotonic, sleep=fake.sleeps.append),
    )
    fake.inventory = tmp_path / "hosts.yml"
    fake.inventory.write_text("all: {}\n")
    return fake


def run(controller, case="ddp", **kwargs):
    console = Console(width=200, record=True)
    code = workload_run.run_case(case, controller.inventory, console=console, **kwargs)
    return code, console.export_text()


def test_a_completed_job_exits_zero_with_its_report(controller, tmp_path):
    controller.sacct = "COMPLETED\n"
    controller.output = f"starting\n{STEP}\n{SUMMARY}\n"
    report = tmp_path / "out" / "run" / "metrics.json"
    code, text = run(controller, report=report)
    assert code == EXIT_OK
    # the live status line is gone once the job has ended; two polls waited 2 s each
    assert "elapsed" not in text
    assert controller.sleeps == [2, 2]
    assert report.read_text().startswith('{\n  "case": "ddp",\n')
    assert f"submitted ddp as job {JOB_ID} on 2 node(s), 0 GPU(s) each" in text
    assert "ended" not in text
    script = controller.uploads[f"/fsx/mlcluster/jobs/mlcluster-ddp-{NOW}.sbatch"]
    assert script.splitlines()[-3] == (
        "  -m mlcluster_workloads.ddp --dist-timeout=300 --steps 40"
        f" --checkpoint-dir /fsx/mlcluster/checkpoints/mlcluster-ddp-{NOW} &"
    )
    # scontrol while slurmctld holds the job, then sacct once it has left the queue
    polls = [c for c in controller.commands if c.startswith(("scontrol", "sacct"))]
    assert polls == [f"scontrol -o show job {JOB_ID}"] * 3 + [
        f"sacct -n -X -P -j {JOB_ID} -o State,NodeList"
    ]
    assert f"job {JOB_ID} PENDING\n" in text and f"job {JOB_ID} COMPLETED\n" in text
    assert json.loads(report.read_text()) == {
        "case": "ddp",
        "job_id": JOB_ID,
        "state": "COMPLETED",
        "reason": None,
        "requeues": 0,
        "events": [f"job {JOB_ID} PENDING", f"job {JOB_ID} RUNNING", f"job {JOB_ID} COMPLETED"],
        "nodes": 2,
        "gpus_per_node": 0,
        "partition": None,
        "container": None,
        "args": [
            "--steps",
            "40",
            "--checkpoint-dir",
            f"/fsx/mlcluster/checkpoints/mlcluster-ddp-{NOW}",
        ],
        "output": f"/fsx/mlcluster/jobs/mlcluster-ddp-{NOW}-{JOB_ID}.out",
        "summary": json.loads(SUMMARY),
        "steps": [json.loads(STEP)],
    }


@pytest.mark.parametrize(
    ("sacct", "state"),
    [
        ("FAILED\n", "FAILED"),
        ("CANCELLED by 1000\n", "CANCELLED"),
        ("TIMEOUT\n", "TIMEOUT"),
        ("OUT_OF_MEMORY\n", "OUT_OF_MEMORY"),
        ("NODE_FAIL\n", "NODE_FAIL"),
    ],
)
def test_a_job_that_does_not_complete_exits_non_zero_with_the_reason(controller, sacct, state):
    controller.sacct = sacct
    controller.output = (
        f"{STEP}\nTraceback (most recent call last):\n"
        "RuntimeError: Connection reset by peer (gloo)\n"
    )
    code, text = run(controller)
    assert code == EXIT_FAILED
    assert f"ddp (job {JOB_ID}): {state}" in text
    reason = "RuntimeError: Connection reset by peer (gloo)"
    tail = text[text.index(f"job {JOB_ID} ended {state}: {reason}") :].splitlines()
    assert tail[1] == "last output lines:"
    assert tail[2:] == [
        STEP,
        "Traceback (most recent call last):",
        "RuntimeError: Connection reset by peer (gloo)",
    ]


def test_a_completed_job_without_its_summary_is_a_failure(controller):
    controller.sacct = "COMPLETED\n"
    controller.output = f"{STEP}\n"
    code, text = run(controller)
    assert code == EXIT_FAILED
    assert f"job {JOB_ID} ended COMPLETED\nlast output lines:" in text


def test_the_cli_exits_with_the_failed_jobs_status(controller, capsys):
    controller.sacct = "FAILED\n"
    controller.output = "RuntimeError: boom\n"
    assert cli.main(["run", "ddp", "-i", str(controller.inventory)]) == EXIT_FAILED
    out = capsys.readouterr().out
    assert (
        f"job {JOB_ID} ended FAILED: RuntimeError: boom\nlast output lines:\nRuntimeError: boom"
        in out
    )


def test_a_rejected_submission_is_an_error_with_sbatchs_message(controller):
    controller.sbatch = (1, "", "sbatch: error: invalid partition specified: p6\n")
    with pytest.raises(MlclusterError) as exc:
        run(controller, partition="p6", gpus_per_node=0)
    assert str(exc.value) == "sbatch failed on head: sbatch: error: invalid partition specified: p6"
    assert not [c for c in controller.commands if c.startswith(("scontrol", "sacct"))]


def test_a_failed_install_stops_before_submitting(controller, monkeypatch):
    monkeypatch.setattr(
        workload_run, "run_playbook", lambda *_a, **_k: SimpleNamespace(exit_code=EXIT_FAILED)
    )
    monkeypatch.setattr("mlcluster.display.print_summary", lambda _result: None)
    with pytest.raises(MlclusterError, match="installing the test cases failed") as exc:
        run(controller)
    assert exc.value.exit_code == EXIT_FAILED
    assert controller.commands == []


def test_gpus_per_node_come_from_the_partitions_gres(controller):
    controller.sinfo = "p5-1 gpu:h100:8(S:0-1) p5\np5-2 gpu:h100:4 p5\n"  # sinfo -p p5
    controller.sacct = "COMPLETED\n"
    controller.output = f"{SUMMARY}\n"
    code, text = run(controller, partition="p5")
    assert code == EXIT_OK
    assert "on 2 node(s), 4 GPU(s) each" in text
    script = controller.uploads[f"/fsx/mlcluster/jobs/mlcluster-ddp-{NOW}.sbatch"]
    assert "#SBATCH --gpus-per-node=4" in script.splitlines()
    assert script.splitlines()[-3] == (
        "  -m mlcluster_workloads.ddp --dist-timeout=300 --steps 200"
        f" --checkpoint-dir /fsx/mlcluster/checkpoints/mlcluster-ddp-{NOW} &"
    )


@pytest.mark.parametrize(
    ("partition", "where"), [(None, "the default partition"), ("batch", "batch")]
)
def test_a_gpu_case_on_a_cpu_partition_is_bad_input(controller, partition, where):
    with pytest.raises(MlclusterError) as exc:
        run(controller, case="nccl_tests", partition=partition)
    assert str(exc.value) == (
        f"nccl_tests needs GPUs and {where} has none (Slurm GRES); on CPU nodes run "
        "`mlcluster run allreduce`"
    )
    assert exc.value.exit_code == 2
    assert not any("sbatch" in c for c in controller.commands)


def test_one_node_is_enough_and_a_report_may_go_to_an_existing_dir(controller, tmp_path):
    controller.sacct = "FAILED\n"
    report = tmp_path / "failed.json"
    code, _text = run(controller, nodes=1, report=report)
    assert code == EXIT_FAILED
    script = controller.uploads[f"/fsx/mlcluster/jobs/mlcluster-ddp-{NOW}.sbatch"]
    assert "#SBATCH --nodes=1" in script.splitlines()
    written = json.loads(report.read_text())
    assert (written["state"], written["nodes"], written["summary"]) == ("FAILED", 1, None)


def test_summary_table_without_a_summary_says_unknown():
    console = Console(width=120, record=True)
    console.print(job_report.summary_table("ddp", "7", "FAILED", [], None))
    values = [
        line.strip("│ ").split("│")[1].strip()
        for line in console.export_text().splitlines()
        if line.startswith("│")
    ]
    assert values == [
        "unknown",
        "0",
        "unknown",
        "unknown",
        "unknown",
        "n/a (not a token model)",
        "unknown",
        "unknown (no peak for this device)",
        "unknown",
    ]


def test_nodes_below_one_is_bad_input(controller):
    with pytest.raises(MlclusterError, match="--nodes must be at least 1") as exc:
        run(controller, nodes=0)
    assert exc.value.exit_code == 2


def test_poll_job_reads_scontrol_then_sacct():
    target = FakeController(squeue=["RUNNING"], sacct="")
    assert workload_run.poll_job(target, JOB_ID).state == "RUNNING"
    assert workload_run.poll_job(target, JOB_ID) is None
    target.sacct = "COMPLETED|compute[1-2]\nCOMPLETED|compute[1-2]\n"
    status = workload_run.poll_job(target, JOB_ID)
    assert (status.state, status.nodes, status.finished) == ("COMPLETED", "compute[1-2]", True)


def test_a_failed_upload_is_an_error(controller):
    controller.upload_rc = 1
    with pytest.raises(MlclusterError) as exc:
        run(controller)
    assert str(exc.value) == (
        "cannot write the batch script in /fsx/mlcluster/jobs on head as mluser: mktemp: failed "
        f"to create file via template '/fsx/mlcluster/jobs/mlcluster-ddp-{NOW}.XXXXXXXX': "
        "Permission denied"
    )
    assert not [c for c in controller.commands if "sbatch --parsable" in c]


def test_negative_gpus_per_node_is_bad_input(controller):
    with pytest.raises(MlclusterError, match="--gpus-per-node must be 0 or more") as exc:
        run(controller, gpus_per_node=-1)
    assert exc.value.exit_code == 2


def test_only_the_default_partitions_nodes_count_without_a_partition(controller):
    controller.sinfo = "c1 (null) batch*\nshort line\np5-1 gpu:h100:8 p5\n"
    assert workload_run.partition_gpus(controller, None) == 0
    assert controller.commands[-1] == "sinfo -h -N -o '%N %G %P'"
    controller.sinfo = "p5-1 gpu:h100:8 p5\n"
    assert workload_run.partition_gpus(controller, "p5") == 8
    assert controller.commands[-1] == "sinfo -h -N -p p5 -o '%N %G %P'"


def test_a_partition_without_nodes_is_bad_input(controller):
    controller.sinfo = ""
    with pytest.raises(MlclusterError) as exc:
        workload_run.partition_gpus(controller, "p6")
    assert (str(exc.value), exc.value.exit_code) == ("partition p6 has no nodes (sinfo on head)", 2)
    with pytest.raises(MlclusterError, match=r"^the default partition has no nodes"):
        workload_run.partition_gpus(controller, None)


def test_sinfo_failing_is_an_error():
    class Broken(FakeController):
        def run(self, command, input_text=None, timeout=120):
            return subprocess.CompletedProcess(command, 1, "", "sinfo: error: slurmctld down\n")

    with pytest.raises(MlclusterError) as exc:
        workload_run.partition_gpus(Broken(), None)
    assert str(exc.value) == "sinfo failed on head: sinfo: error: slurmctld down"


def test_a_job_in_an_oci_bundle(controller):
    controller.bundles.add("/fsx/bundles/torch")
    controller.sacct = "COMPLETED\n"
    controller.output = f"{SUMMARY}\n"
    code, text = run(controller, container="/fsx/bundles/torch")
    assert code == EXIT_OK
    assert "0 GPU(s) each, in /fsx/bundles/torch; output" in text
    assert "test -f /fsx/bundles/torch/config.json" in controller.commands
    script = controller.uploads[f"/fsx/mlcluster/jobs/mlcluster-ddp-{NOW}.sbatch"]
    assert "srun --container=/fsx/bundles/torch \\" in script.splitlines()


def test_a_missing_bundle_is_bad_input_before_submitting(controller):
    with pytest.raises(MlclusterError) as exc:
        run(controller, container="/fsx/bundles/none")
    assert exc.value.exit_code == 2
    assert str(exc.value).startswith("/fsx/bundles/none is not an OCI bundle on head")
    assert not controller.uploads


def test_an_image_needs_pyxis(controller):
    controller.pyxis = False
    with pytest.raises(MlclusterError) as exc:
        run(controller, container="nvcr.io#nvidia/pytorch:25.01-py3")
    assert exc.value.exit_code == 2
    assert "pyxis is not loaded by Slurm on head" in str(exc.value)
    controller.pyxis = True
    workload_run.check_container_support(controller, "nvcr.io#nvidia/pytorch:25.01-py3")


def test_the_failure_shows_the_last_twenty_output_lines(controller):
    controller.sacct = "FAILED\n"
    controller.output = "".join(f"line {i}\n" for i in range(1, 31))
    _code, text = run(controller)
    tail = text[text.index("last output lines:") :].splitlines()[1:]
    assert tail == [f"line {i}" for i in range(11, 31)]


def test_allreduce_summary_table():
    console = Console(width=120, record=True)
    steps = [
        {
            "event": "allreduce",
            "world_size": 4,
            "size_bytes": 1024,
            "time_us": 50.0,
            "busbw_gbps": 0.031,
        },
        {
            "event": "allreduce",
            "size_bytes": 1048576,
            "time_us": 1500.25,
            "busbw_gbps": 1.048,
        },
    ]
    summary = {
        "event": "allreduce_summary",
        "source": "torch",
        "sizes": 2,
        "avg_busbw_gbps": 0.5396,
        "max_busbw_gbps": 1.048,
        "max_busbw_size_bytes": 1048576,
        "wrong": 0,
    }
    console.print(job_report.summary_table("allreduce", "9", "COMPLETED", steps, summary))
    rows = [
        [c.strip() for c in line.strip("│ ").split("│")]
        for line in console.export_text().splitlines()
        if line.startswith("│")
    ]
    assert rows == [
        ["ranks", "4"],
        ["source", "torch"],
        ["sizes", "2"],
        ["avg busbw (GB/s)", "0.540"],
        ["max busbw (GB/s)", "1.048"],
        ["at size (bytes)", "1,048,576"],
        ["wrong elements", "0"],
        ["1,024 B", "50.0 us  busbw 0.031 GB/s"],
        ["1,048,576 B", "1,500.2 us  busbw 1.048 GB/s"],
    ]


def test_ssh_target_runs_the_command_on_the_controller(monkeypatch):
    seen = {}

    def fake_run(argv, **kwargs):
        seen.update(argv=argv, **kwargs)
        return subprocess.CompletedProcess(argv, seen.get("rc", 0), "out", "err")

    monkeypatch.setattr(workload_run.subprocess, "run", fake_run)
    target = workload_run.Target("head", "10.0.0.5", "admin", ["-o", "BatchMode=yes"])
    assert target.run("hostname", input_text="x", timeout=5).stdout == "out"
    assert seen == {
        "argv": ["ssh", "-o", "BatchMode=yes", "admin@10.0.0.5", "hostname"],
        "input": "x",
        "capture_output": True,
        "text": True,
        "timeout": 5,
        "check": False,
    }
    seen["rc"] = 255
    with pytest.raises(MlclusterError) as exc:
        target.run("hostname")
    assert str(exc.value) == "controller head (10.0.0.5) unreachable over SSH: err"
    seen["rc"] = 1
    assert target.run("false").returncode == 1


def test_controller_target_with_a_port_and_defaults(tmp_path):
    inv = tmp_path / "hosts.yml"
    inv.write_text(
        "all:\n  children:\n    slurm_controller:\n      hosts:\n"
        "        head:\n          ansible_port: 2222\n"
    )
    target = workload_run.controller_target(inv)
    assert (target.address, target.user) == ("head", "root")
    assert target.ssh_args == ["-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-p", "2222"]


def test_an_unreadable_inventory_is_an_error(tmp_path):
    inv = tmp_path / "hosts.yml"
    inv.write_text("all:\n  children: [\n")
    with pytest.raises(MlclusterError) as exc:
        workload_run.controller_target(inv)
    assert str(exc.value).startswith(f"inventory {inv} could not be parsed: YAML parsing failed: ")
