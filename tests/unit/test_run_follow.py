"""`mlcluster run` under faults: a job followed through requeues (the state machine on Slurm's
own outputs and the whole run), pending reasons, the deadline, Ctrl-C (scancel, exit 130), SSH
failures and timeouts against real ssh processes (one line, exit 3, no traceback), the job's
own error (the failing rank's first exception), and the batch script written by the job user
under a random name (run for real through runuser and mktemp)."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console

from mlcluster import cli, workload_run
from mlcluster.errors import MlclusterError, Unreachable
from mlcluster.jobfollow import JobFollower, failure_reason, parse_sacct, parse_scontrol
from mlcluster.runner import EXIT_CANCELED, EXIT_FAILED, EXIT_OK

from .test_workload_run import JOB_ID, NOW, RANDOM, STEP, SUMMARY, FakeController, scontrol_line

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SCRIPT = f"/fsx/mlcluster/jobs/mlcluster-ddp-{NOW}.{RANDOM}.sbatch"


# ---- the state machine on Slurm's outputs ---------------------------------------------------


def looks(*lines: str) -> list[str]:
    follower = JobFollower(JOB_ID)
    said = []
    for line in lines:
        said += follower.observe(parse_scontrol(line))
    return said


def test_a_pending_job_says_why_and_a_running_one_where():
    assert looks(
        scontrol_line("PENDING", "Priority"),
        scontrol_line("PENDING", "Priority"),
        scontrol_line("PENDING", "Resources"),
        scontrol_line("RUNNING", nodes="compute[1-2]"),
        scontrol_line("RUNNING", nodes="compute[1-2]"),
        scontrol_line("COMPLETING", nodes="compute[1-2]"),
        scontrol_line("COMPLETED", nodes="compute[1-2]"),
    ) == [
        f"job {JOB_ID} PENDING (Priority)",
        f"job {JOB_ID} PENDING (Resources)",
        f"job {JOB_ID} RUNNING on compute[1-2]",
        f"job {JOB_ID} COMPLETING on compute[1-2]",
        f"job {JOB_ID} COMPLETED",
    ]


def test_a_node_failure_with_requeue_is_followed_until_the_job_runs_again():
    follower = JobFollower(JOB_ID)
    sequence = [
        scontrol_line("RUNNING", nodes="compute[1-2]"),
        scontrol_line("NODE_FAIL", "NodeDown", nodes="compute[1-2]"),
        scontrol_line("REQUEUED", "BeginTime", restarts=1),
        scontrol_line("PENDING", "BeginTime", restarts=1),
        scontrol_line("RUNNING", restarts=1, nodes="compute[1,3]"),
        scontrol_line("COMPLETED", restarts=1, nodes="compute[1,3]"),
    ]
    said, finished = [], []
    for line in sequence:
        status = parse_scontrol(line)
        said += follower.observe(status)
        finished.append(status.finished)
    assert said == [
        f"job {JOB_ID} RUNNING on compute[1-2]",
        f"job {JOB_ID} NODE_FAIL: Slurm requeues it",
        f"job {JOB_ID} requeued (NODE_FAIL), waiting: REQUEUED",
        f"job {JOB_ID} PENDING (BeginTime)",
        f"job {JOB_ID} RUNNING on compute[1,3]",
        f"job {JOB_ID} COMPLETED",
    ]
    # neither NODE_FAIL nor the requeue ends the follow: only COMPLETED does
    assert finished == [False, False, False, False, False, True]
    assert follower.requeues == 1


def test_a_requeue_between_two_looks_takes_its_cause_from_accounting():
    follower = JobFollower(JOB_ID)
    follower.observe(parse_scontrol(scontrol_line("RUNNING", nodes="compute[1-2]")))
    pending = parse_scontrol(scontrol_line("PENDING", "BeginTime", restarts=1))
    assert follower.restarted(pending)
    # sacct -D: one line per run, oldest first
    ended = workload_run.previous_run_end("NODE_FAIL\nPENDING\n")
    assert follower.observe(pending, ended) == [
        f"job {JOB_ID} requeued (NODE_FAIL), waiting: PENDING (BeginTime)"
    ]
    assert workload_run.previous_run_end("PENDING\n") == ""
    # Accounting may not list the current run yet: the restart count says which line it is.
    assert workload_run.previous_run_end("NODE_FAIL\n", restarts=1) == "NODE_FAIL"
    assert workload_run.previous_run_end("NODE_FAIL\nPENDING\n", restarts=1) == "NODE_FAIL"
    assert workload_run.previous_run_end("NODE_FAIL\nCOMPLETED\n", restarts=1) == "NODE_FAIL"
    assert workload_run.previous_run_end("PREEMPTED\nNODE_FAIL\n", restarts=2) == "NODE_FAIL"
    # A run accounting has not closed yet is no cause.
    assert workload_run.previous_run_end("RUNNING\n", restarts=1) == ""


@pytest.mark.parametrize(
    ("line", "finished"),
    [
        (scontrol_line("NODE_FAIL", requeue=0), True),
        (scontrol_line("NODE_FAIL", requeue=1), False),
        (scontrol_line("PREEMPTED", requeue=1), False),
        (scontrol_line("FAILED", "NonZeroExitCode", requeue=1), True),
        (scontrol_line("TIMEOUT", "TimeLimit", requeue=1), True),
        (scontrol_line("REQUEUE_HOLD", "JobHeldAdmin", requeue=1), False),
    ],
    ids=["node-fail", "node-fail-requeue", "preempted", "failed", "timeout", "requeue-hold"],
)
def test_which_states_end_the_follow(line, finished):
    assert parse_scontrol(line).finished is finished


def test_accounting_ends_a_job_that_left_the_queue_in_a_requeueable_state():
    status = parse_sacct("NODE_FAIL|compute[1-2]\n")
    assert (status.state, status.nodes, status.left_queue, status.finished) == (
        "NODE_FAIL",
        "compute[1-2]",
        True,
        True,
    )
    assert parse_sacct("CANCELLED by 2001|None assigned\n").state == "CANCELLED"
    assert parse_sacct("\n") is None


# ---- the whole run ---------------------------------------------------------------------------


class Controller(FakeController):
    """The fake controller, plus scancel and accounting of every run (sacct -D)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.cancelled = 0
        self.duplicates = ""
        self.fail_polls = 0

    def run(self, command, input_text=None, timeout=120):
        if command.startswith("scontrol") and self.fail_polls:
            self.fail_polls -= 1
            self.commands.append(command)
            raise Unreachable("controller head (10.0.0.5) unreachable over SSH: Connection reset")
        if command == f"sacct -D -n -X -P -j {JOB_ID} -o State":
            self.commands.append(command)
            return subprocess.CompletedProcess(command, 0, self.duplicates, "")
        if command == f"scancel {JOB_ID}":
            self.cancelled += 1
        return super().run(command, input_text, timeout)


class Clock:
    """monotonic() that moves on by ``step`` seconds at every call."""

    def __init__(self, step: float):
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


@pytest.fixture
def controller(monkeypatch, tmp_path):
    fake = Controller()
    monkeypatch.setattr(workload_run, "controller_target", lambda _inventory: fake)
    monkeypatch.setattr(
        workload_run, "run_playbook", lambda *_a, **_k: SimpleNamespace(exit_code=EXIT_OK)
    )
    fake.clock = Clock(0.001)
    monkeypatch.setattr(
        workload_run,
        "time",
        SimpleNamespace(time=lambda: NOW, monotonic=fake.clock, sleep=fake.sleeps.append),
    )
    fake.inventory = tmp_path / "hosts.yml"
    fake.inventory.write_text("all: {}\n")
    return fake


def run(controller, **kwargs):
    console = Console(width=200, record=True)
    code = workload_run.run_case("ddp", controller.inventory, console=console, **kwargs)
    return code, console.export_text()


def test_a_requeued_job_is_followed_to_its_end(controller, tmp_path):
    controller.squeue = [
        scontrol_line("PENDING", "Resources"),
        scontrol_line("RUNNING", nodes="compute[1-2]"),
        scontrol_line("PENDING", "BeginTime", restarts=1),
        scontrol_line("PENDING", "BeginTime", restarts=1),
        scontrol_line("RUNNING", restarts=1, nodes="compute[1,3]"),
    ]
    controller.duplicates = "NODE_FAIL\nRUNNING\n"
    controller.sacct = "COMPLETED|compute[1,3]\n"
    controller.output = f"{STEP}\n{SUMMARY}\n"
    report = tmp_path / "r.json"
    code, text = run(controller, report=report)
    assert code == EXIT_OK
    lines = text.splitlines()
    start = lines.index(f"job {JOB_ID} PENDING (Resources)")
    assert lines[start : start + 5] == [
        f"job {JOB_ID} PENDING (Resources)",
        f"job {JOB_ID} RUNNING on compute[1-2]",
        f"job {JOB_ID} requeued (NODE_FAIL), waiting: PENDING (BeginTime)",
        f"job {JOB_ID} RUNNING on compute[1,3]",
        f"job {JOB_ID} COMPLETED",
    ]
    written = __import__("json").loads(report.read_text())
    assert (written["state"], written["requeues"]) == ("COMPLETED", 1)
    assert written["events"] == lines[start : start + 5]
    assert controller.cancelled == 0


def test_the_deadline_cancels_the_job_and_exits_1(controller):
    controller.squeue = [scontrol_line("PENDING", "Resources")] * 1000
    controller.clock.step = 7  # seconds per clock read: past one minute within a few polls
    code, text = run(controller, timeout_min=1)
    assert code == EXIT_FAILED
    assert controller.cancelled == 1
    assert (
        f"job {JOB_ID} ended PENDING: not finished within --timeout 1 min: job {JOB_ID} "
        "cancelled (scancel on head)"
    ) in text
    assert text.count(f"job {JOB_ID} PENDING (Resources)") == 1


@pytest.mark.parametrize("minutes", ["0", "-5"])
def test_a_deadline_of_no_time_is_bad_input(controller, capsys, minutes):
    argv = ["run", "ddp", "-i", str(controller.inventory), "--timeout", minutes]
    assert cli.main(argv) == 2
    assert capsys.readouterr().err == "mlcluster: error: --timeout must be more than 0 minutes\n"
    assert controller.commands == []


def test_ctrl_c_cancels_the_job_and_exits_130(controller, capsys):
    controller.squeue = [scontrol_line("RUNNING", nodes="compute[1-2]")] * 10

    def interrupted(_seconds):
        raise KeyboardInterrupt

    workload_run.time.sleep = interrupted
    assert cli.main(["run", "ddp", "-i", str(controller.inventory)]) == EXIT_CANCELED
    assert controller.cancelled == 1
    assert controller.commands[-1] == f"scancel {JOB_ID}"
    out = capsys.readouterr().out
    assert f"interrupted: job {JOB_ID} cancelled (scancel on head)\n" in out


def test_ctrl_c_with_the_controller_gone_says_how_to_cancel(controller, capsys):
    controller.squeue = [scontrol_line("RUNNING")] * 10

    def interrupted(_seconds):
        controller.fail_polls = 99
        raise KeyboardInterrupt

    workload_run.time.sleep = interrupted
    real_run = controller.run

    def scancel_unreachable(command, input_text=None, timeout=120):
        if command.startswith("scancel"):
            raise Unreachable("controller head (10.0.0.5) unreachable over SSH: No route to host")
        return real_run(command, input_text, timeout)

    controller.run = scancel_unreachable
    assert cli.main(["run", "ddp", "-i", str(controller.inventory)]) == EXIT_CANCELED
    assert (
        f"interrupted: could not cancel job {JOB_ID} (controller head (10.0.0.5) unreachable "
        f"over SSH: No route to host): run `scancel {JOB_ID}` on head\n"
    ) in capsys.readouterr().out


def test_ssh_failures_while_following_are_retried(controller):
    controller.squeue = [scontrol_line("RUNNING", nodes="compute[1-2]")]
    controller.fail_polls = 3
    controller.sacct = "COMPLETED|compute[1-2]\n"
    controller.output = f"{SUMMARY}\n"
    code, text = run(controller)
    assert code == EXIT_OK
    assert f"job {JOB_ID} COMPLETED" in text
    assert controller.fail_polls == 0


def test_a_controller_lost_for_longer_than_the_grace_ends_with_exit_3(controller, capsys):
    controller.squeue = [scontrol_line("RUNNING", nodes="compute[1-2]")]
    controller.fail_polls = 10_000
    controller.clock.step = 5
    assert cli.main(["run", "ddp", "-i", str(controller.inventory)]) == 3
    err = capsys.readouterr().err
    assert err == (
        "mlcluster: error: controller head (10.0.0.5) unreachable over SSH: Connection reset; "
        f"gave up following job {JOB_ID} after 60 s of this (it may still be running: "
        f"`squeue -j {JOB_ID}` on head)\n"
    )


def test_slurmctld_not_answering_is_retried(controller):
    answers = iter(
        [
            subprocess.CompletedProcess(
                "",
                1,
                "",
                "slurm_load_jobs error: Unable to contact slurm controller (connect failure)\n",
            ),
        ]
    )
    real_run = controller.run

    def restarting(command, input_text=None, timeout=120):
        if command.startswith("scontrol"):
            answer = next(answers, None)
            if answer is not None:
                controller.commands.append(command)
                return answer
        return real_run(command, input_text, timeout)

    controller.run = restarting
    controller.squeue = [scontrol_line("RUNNING", nodes="compute[1-2]")]
    controller.sacct = "COMPLETED|compute[1-2]\n"
    controller.output = f"{SUMMARY}\n"
    code, _text = run(controller)
    assert code == EXIT_OK


def test_the_submit_command_runs_sbatch_as_the_job_user(controller):
    controller.sacct = "COMPLETED|compute[1-2]\n"
    controller.output = f"{SUMMARY}\n"
    run(controller)
    upload, submit = controller.commands[1:3]
    assert upload == (
        'runuser -u mluser -- sh -c \'umask 077 && f=$(mktemp --suffix=.sbatch "$1".XXXXXXXX)'
        ' && cat > "$f" && echo "$f"\' sh /fsx/mlcluster/jobs/mlcluster-ddp-1700000000'
    )
    assert submit == f"cd /fsx/mlcluster/jobs && runuser -u mluser -- sbatch --parsable {SCRIPT}"
    assert not [c for c in controller.commands if "chown" in c or c.startswith("cat >")]


def test_a_non_root_ssh_user_goes_through_sudo():
    target = workload_run.Target("head", "10.0.0.5", "ubuntu", [])
    assert workload_run.as_job_user(target) == "sudo -n -u mluser --"


def test_a_path_the_upload_did_not_make_is_refused(controller):
    real_run = controller.run

    def odd(command, input_text=None, timeout=120):
        if command.startswith("runuser -u mluser -- sh -c "):
            return subprocess.CompletedProcess(command, 0, "/etc/shadow\n", "")
        return real_run(command, input_text, timeout)

    controller.run = odd
    with pytest.raises(MlclusterError) as exc:
        run(controller)
    assert str(exc.value) == (
        "cannot write the batch script in /fsx/mlcluster/jobs on head as mluser: /etc/shadow"
    )
    assert not [c for c in controller.commands if "sbatch" in c]


# ---- the upload, for real: runuser and mktemp on this machine -------------------------------


class LocalTarget(workload_run.Target):
    """Runs the command in a local shell, as ssh runs it on the controller."""

    def run(self, command, input_text=None, timeout=120):
        return subprocess.run(
            ["sh", "-c", command], input=input_text, capture_output=True, text=True, check=False
        )


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("runuser"), reason="runuser needs root and util-linux"
)
def test_the_script_is_created_by_the_job_user_under_a_random_name(monkeypatch):
    top = Path(tempfile.mkdtemp(prefix="mlcluster-upload-", dir="/tmp"))
    try:
        top.chmod(0o755)
        jobs = top / "jobs"
        jobs.mkdir()
        shutil.chown(jobs, "nobody")
        secret = top / "secret"
        secret.write_text("root's file\n")
        secret.chmod(0o600)
        # the old, guessable name, planted as a link to a file of root's
        (jobs / "mlcluster-ddp-1.sbatch").symlink_to(secret)
        target = LocalTarget(
            "local", "localhost", "root", [], job_user="nobody", workloads_root=str(top)
        )
        first = workload_run.upload_script(target, "mlcluster-ddp-1", "#!/bin/bash\necho one\n")
        second = workload_run.upload_script(target, "mlcluster-ddp-1", "#!/bin/bash\necho two\n")
        assert first != second
        for path, text in ((first, "one"), (second, "two")):
            info = os.lstat(path)
            assert stat.S_ISREG(info.st_mode)
            assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (65534, 0o600)
            assert Path(path).read_text() == f"#!/bin/bash\necho {text}\n"
            assert Path(path).name.startswith("mlcluster-ddp-1.")
        assert (secret.read_text(), secret.stat().st_uid) == ("root's file\n", 0)
        # a directory the job user cannot write in: a clear error, nothing written as root
        shutil.chown(jobs, "root")
        with pytest.raises(MlclusterError) as exc:
            workload_run.upload_script(target, "mlcluster-ddp-2", "x\n")
        # mktemp quotes the template as the locale says (typographic quotes in UTF-8)
        message = str(exc.value).replace("\u2018", "'").replace("\u2019", "'")
        assert message == (
            f"cannot write the batch script in {jobs} on local as nobody: mktemp: failed to "
            f"create file via template '{jobs}/mlcluster-ddp-2.XXXXXXXX.sbatch': Permission denied"
        )
    finally:
        shutil.rmtree(top)


# ---- SSH failures, real ssh processes --------------------------------------------------------


def test_a_refused_ssh_connection_is_one_line_exit_3():
    target = workload_run.Target(
        "head", "127.0.0.1", "root", ["-o", "BatchMode=yes", "-o", "ConnectTimeout=2", "-p", "9"]
    )
    with pytest.raises(Unreachable) as exc:
        target.run("true")
    assert exc.value.exit_code == 3
    assert str(exc.value) == (
        "controller head (127.0.0.1) unreachable over SSH: ssh: connect to host 127.0.0.1 "
        "port 9: Connection refused"
    )


def test_an_ssh_connection_that_never_answers_times_out_as_one_line():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    accepted = []
    thread = threading.Thread(target=lambda: accepted.append(server.accept()), daemon=True)
    thread.start()
    port = server.getsockname()[1]
    target = workload_run.Target("head", "127.0.0.1", "root", ["-p", str(port)])
    try:
        with pytest.raises(Unreachable) as exc:
            target.run("scontrol -o show job 1", timeout=2)
    finally:
        server.close()
    assert exc.value.exit_code == 3
    assert str(exc.value) == (
        "controller head (127.0.0.1) did not answer over SSH within 2 s (running: scontrol)"
    )


def test_the_cli_with_an_unreachable_controller_exits_3_without_a_traceback(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlcluster.cli",
            "run",
            "ddp",
            "-i",
            str(FIXTURES / "unreachable-controller.yml"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "MLCLUSTER_STATE": str(tmp_path)},
        timeout=300,
        check=False,
    )
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.stderr.splitlines()[-1] == (
        "mlcluster: error: installing the test cases failed (see above)"
    )
    assert "head: unreachable: " in proc.stdout


# ---- the job's own error ---------------------------------------------------------------------

# What a 2-node torchrun job prints when rank 1 cannot write its checkpoint (torch prefixes a
# rank's uncaught exception with [rankN]:, torchrun's ChildFailedError names the root cause).
TORCH_FAILURE = "\n".join(
    [
        '{"event": "step", "step": 39, "loss": 2.1}',
        "[rank1]: Traceback (most recent call last):",
        '[rank1]:   File "/fsx/mlcluster/venv/lib/python3.11/site-packages/mlcluster_workloads/'
        'fsdp.py", line 301, in main',
        "[rank1]:     save(ctx, step)",
        "[rank1]: PermissionError: [Errno 13] Permission denied: '/fsx/other/step_40'",
        "W1202 06:01:02.123000 140 torch/distributed/elastic/multiprocessing/api.py:897] Sending"
        " process 141 closing signal SIGTERM",
        "[rank0]: Traceback (most recent call last):",
        "[rank0]: RuntimeError: [../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection"
        " closed by peer [10.213.0.12]:43321",
        "E1202 06:01:03.456000 140 torch/distributed/elastic/multiprocessing/api.py:869] failed"
        " (exitcode: 1) local_rank: 0 (pid: 141) of binary: /fsx/mlcluster/venv/bin/python",
        "Traceback (most recent call last):",
        '  File "/fsx/mlcluster/venv/bin/torchrun", line 8, in <module>',
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError:",
        "============================================================",
        "mlcluster_workloads.fsdp FAILED",
        "------------------------------------------------------------",
        "Root Cause (first observed failure):",
        "[0]:",
        "  time      : 2026-12-02_06:01:02",
        "  host      : compute2",
        "  rank      : 1 (local_rank: 0)",
        "  exitcode  : 1 (pid: 141)",
        "  error_file: <N/A>",
        "============================================================",
        "srun: error: compute2: task 1: Exited with exit code 1",
        "",
    ]
)


def test_the_failing_ranks_first_exception_is_the_reason():
    assert failure_reason(TORCH_FAILURE) == (
        "rank 1: PermissionError: [Errno 13] Permission denied: '/fsx/other/step_40'"
    )
    # without torchrun's root cause, the first exception of any rank
    without_root = TORCH_FAILURE.split("Traceback (most recent call last):\n  File")[0]
    reordered = without_root.replace("[rank1]", "[rankX]").replace("[rank0]", "[rank1]")
    assert failure_reason(reordered) == (
        "rank 1: RuntimeError: [../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection "
        "closed by peer [10.213.0.12]:43321"
    )
    # torchrun's wrapper alone is not a reason; srun's line then is
    assert failure_reason(
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError:\n"
        "srun: error: compute2: task 1: Exited with exit code 1\n"
    ) == ("srun: error: compute2: task 1: Exited with exit code 1")


def test_the_reason_reaches_the_table_and_the_report(controller, tmp_path):
    controller.sacct = "FAILED|compute[1-2]\n"
    controller.output = TORCH_FAILURE
    report = tmp_path / "r.json"
    code, text = run(controller, report=report)
    assert code == EXIT_FAILED
    reason = "rank 1: PermissionError: [Errno 13] Permission denied: '/fsx/other/step_40'"
    assert f"job {JOB_ID} ended FAILED: {reason}\nlast output lines:" in text
    assert __import__("json").loads(report.read_text())["reason"] == reason


# ---- recorded on a local cluster (Slurm 22.05): `scontrol requeue` of a running ddp job ------

RECORDED = FIXTURES / "slurm"


def test_a_recorded_requeue_is_followed_to_its_end():
    """scontrol -o show job of `mlcluster run ddp -- --steps 150` (job 2), once running, then
    every second after `scontrol requeue 2` (repeated lines left out): COMPLETING with the
    restart count up, PENDING (BeginTime), RUNNING again, COMPLETED."""
    lines = (RECORDED / "scontrol-manual-requeue.txt").read_text().splitlines()
    follower = JobFollower("2")
    said, finished = [], []
    for line in lines:
        status = parse_scontrol(line)
        said += follower.observe(status)
        finished.append(status.finished)
    assert said == [
        "job 2 RUNNING on compute[1-2]",
        "job 2 requeued (requeue), waiting: COMPLETING on compute[1-2]",
        "job 2 PENDING (BeginTime)",
        "job 2 RUNNING on compute[1-2]",
        "job 2 COMPLETED",
    ]
    assert finished == [False] * (len(lines) - 1) + [True]
    assert follower.requeues == 1
    # `sacct -D -n -X -P -j 2 -o State` afterwards: one line per run, oldest first
    sacct = (RECORDED / "sacct-duplicates-requeued.txt").read_text()
    assert sacct == "REQUEUED\nCOMPLETED\n"
    assert workload_run.previous_run_end(sacct) == "REQUEUED"
