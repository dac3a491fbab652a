"""Faults during training: the real entry points of ddp and jax on 2 processes, stopped by a real
signal part-way (SIGKILL: a lost node, no chance to save; SIGTERM: Slurm's kill on requeue or
time limit, through the real torchrun), then started again on the same checkpoint directory. The
resumed run must continue from the newest complete checkpoint with no step lost or repeated and
end exactly (bit for bit: single-threaded CPU kernels are deterministic) where an uninterrupted
run of the same seed ends. (fsdp's resume is proven in test_fsdp.py.) The last test runs the
batch script launch.py renders, and its time-limit trap, with stand-ins for srun, scancel and
scontrol.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlcluster_workloads.checkpoint import MARKER, CheckpointDir
from mlcluster_workloads.launch import WorkloadSpec, render_sbatch
from workload_helpers import (
    child_env,
    free_port,
    json_lines,
    launch_ranks,
    only,
    rank_reports,
    srun_env,
    steps,
    torchrun_env,
)

STEPS, EVERY = 80, 4
# Steps of some milliseconds each (a larger MLP than the default), so that the signals, sent when
# rank 0 has printed a few steps, arrive well before the run's last step.
DDP = ["-m", "mlcluster_workloads.ddp", "--hidden", "512", "--depth", "3", "--batch-size", "64"]
JAX = ["-m", "mlcluster_workloads.jax_dp", "--hidden", "512", "--depth", "3", "--batch-size", "64"]
COMMON = ["--steps", str(STEPS), "--checkpoint-every", str(EVERY), "--keep-checkpoints", "0"]


def start(args: list[str], out: Path, *, rank_env=torchrun_env):
    """Start the 2 processes, each in a session of its own (a signal to the session reaches every
    process in it, as slurmstepd signals every process of a step); rank 0's stdout goes to
    ``out``."""
    port, processes, handles = free_port(), [], []
    for rank in range(2):
        handle = open(out if rank == 0 else os.devnull, "w")  # noqa: SIM115
        processes.append(
            subprocess.Popen(
                [sys.executable, *args],
                stdout=handle,
                stderr=subprocess.DEVNULL,
                env={**child_env(), **rank_env(rank, 2, port)},
                start_new_session=True,
            )
        )
        handles.append(handle)
    return processes, handles


def interrupt(args, out: Path, *, after_step: int, sig: int, rank_env=torchrun_env):
    """Run until rank 0 has printed step ``after_step``, then send ``sig`` to every process;
    returns rank 0's JSON lines."""
    with contextlib.ExitStack() as stack:
        processes, handles = start(args, out, rank_env=rank_env)
        for handle in handles:
            stack.callback(handle.close)
        stack.callback(lambda: [p.kill() for p in processes if p.poll() is None])
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            seen = [r["step"] for r in _records(out) if r["event"] == "step"]
            if seen and seen[-1] >= after_step:
                break
            assert processes[0].poll() is None, f"exited {processes[0].returncode} before step"
            time.sleep(0.005)
        else:
            pytest.fail(f"no step {after_step} within 180 s")
        for process in processes:
            os.killpg(process.pid, sig)
        for process in processes:
            process.wait(timeout=120)
    return _records(out)


def _records(path: Path) -> list[dict]:
    text = path.read_text()
    complete = text[: text.rfind("\n") + 1]  # a line being written is not a record yet
    return json_lines(complete) if complete else []


def assert_resumed_exactly(first, second, uninterrupted, directory_steps: list[int], report, full):
    """``second`` resumed from the newest complete checkpoint of ``first`` and ended where the
    uninterrupted run ended."""
    expected = {r["step"]: r["loss"] for r in steps(uninterrupted)}
    resumed_from = only(second, "resume")["step"]
    assert resumed_from == directory_steps[-1] > 0
    assert resumed_from % EVERY == 0 or resumed_from == steps(first)[-1]["step"]
    resumed = steps(second)
    # no step lost, none repeated
    assert [r["step"] for r in resumed] == list(range(resumed_from + 1, STEPS + 1))
    # bit for bit: same parameters, optimizer state and data position at the resumed step
    assert {r["step"]: r["loss"] for r in resumed} == {
        step: loss for step, loss in expected.items() if step > resumed_from
    }
    # and the steps the first run did get through agree too
    assert {r["step"]: r["loss"] for r in steps(first)} == {
        r["step"]: expected[r["step"]] for r in steps(first)
    }
    assert only(second, "summary")["final_loss"] == only(uninterrupted, "summary")["final_loss"]
    assert only(second, "summary")["resumed_from_step"] == resumed_from
    assert [r["param_digest"] for r in report] == [r["param_digest"] for r in full]


@pytest.fixture(scope="module")
def ddp_uninterrupted(tmp_path_factory):
    directory = tmp_path_factory.mktemp("ddp-full")
    report = directory / "report"
    result = launch_ranks(
        *DDP, *COMMON, f"--checkpoint-dir={directory}/ckpt", f"--debug-report={report}"
    )
    return json_lines(result.stdout), rank_reports(report, 2)


def test_ddp_killed_resumes_from_the_newest_complete_checkpoint(ddp_uninterrupted, tmp_path):
    """SIGKILL, as a node that dies: the steps since the last save are done again, from it."""
    uninterrupted, full = ddp_uninterrupted
    args = [*DDP, *COMMON, f"--checkpoint-dir={tmp_path / 'ckpt'}"]
    first = interrupt(args, tmp_path / "first.out", after_step=10, sig=signal.SIGKILL)
    assert not [r for r in first if r["event"] == "summary"]
    saved = CheckpointDir(tmp_path / "ckpt").complete_steps()
    assert saved == list(range(EVERY, saved[-1] + 1, EVERY)) and saved[-1] >= 8
    # a save cut short leaves no directory that looks complete
    assert all((tmp_path / "ckpt" / f"step-{s:08d}" / MARKER).is_file() for s in saved)

    second = json_lines(launch_ranks(*args, f"--debug-report={tmp_path / 'report'}").stdout)
    assert_resumed_exactly(
        first, second, uninterrupted, saved, rank_reports(tmp_path / "report", 2), full
    )


def test_jax_killed_resumes_from_the_newest_complete_checkpoint(tmp_path):
    full_dir = tmp_path / "full"
    uninterrupted_result = launch_ranks(
        *JAX,
        *COMMON,
        f"--checkpoint-dir={full_dir / 'ckpt'}",
        f"--debug-report={full_dir / 'report'}",
        rank_env=srun_env,
    )
    uninterrupted = json_lines(uninterrupted_result.stdout)
    full = rank_reports(full_dir / "report", 2)

    args = [*JAX, *COMMON, f"--checkpoint-dir={tmp_path / 'ckpt'}"]
    first = interrupt(
        args,
        tmp_path / "first.out",
        after_step=10,
        sig=signal.SIGKILL,
        rank_env=srun_env,
    )
    assert not [r for r in first if r["event"] == "summary"]
    saved = CheckpointDir(tmp_path / "ckpt").complete_steps()
    assert saved == list(range(EVERY, saved[-1] + 1, EVERY)) and saved[-1] >= 8

    second = json_lines(
        launch_ranks(*args, f"--debug-report={tmp_path / 'report'}", rank_env=srun_env).stdout
    )
    assert_resumed_exactly(
        first, second, uninterrupted, saved, rank_reports(tmp_path / "report", 2), full
    )


# The batch script as launch.py renders it, run by bash on this machine, with stand-ins for the
# three Slurm commands it calls: srun runs the step's command in a session of its own, scancel
# --signal=TERM signals every process of that session (slurmstepd signals every process of the
# step), scontrol answers `show hostnames` and records the requeue.
SRUN = """#!/bin/bash
while [[ $1 == --* ]]; do shift; done
setsid "$@" &
echo $! > "$RECORD/step.pgid"
wait $!
"""
SCANCEL = """#!/bin/bash
echo "scancel $*" >> "$RECORD/calls"
[ "$1" = --signal=TERM ] && kill -TERM -- "-$(cat "$RECORD/step.pgid")"
exit 0
"""
SCONTROL = """#!/bin/bash
if [ "$1" = show ]; then echo localhost; exit 0; fi
echo "scontrol $*" >> "$RECORD/calls"
"""


def test_batch_script_saves_and_requeues_on_the_time_limit_signal(ddp_uninterrupted, tmp_path):
    """SIGUSR1 to the batch shell (what --signal=B:USR1@120 sends before the time limit): the
    trap has SIGTERM sent to every process of the step (torchrun and its ranks), the ranks save
    after their current step, the job is requeued; the script run again (the requeued job)
    resumes there and ends as the uninterrupted run."""
    uninterrupted, full = ddp_uninterrupted
    bin_dir, record = tmp_path / "bin", tmp_path / "record"
    bin_dir.mkdir()
    record.mkdir()
    for name, text in (("srun", SRUN), ("scancel", SCANCEL), ("scontrol", SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    spec = WorkloadSpec(
        case="ddp",
        args=(
            *DDP[2:],
            *COMMON,
            f"--checkpoint-dir={tmp_path / 'ckpt'}",
            f"--debug-report={tmp_path / 'report'}",
        ),
        nodes=1,
        gpus_per_node=0,
        procs_per_node=2,
        venv=sys.prefix,
        rdzv_port=free_port(),
        env={"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"},
        output_dir=str(tmp_path),
    )
    script = tmp_path / "job.sbatch"
    script.write_text(render_sbatch(spec))
    env = {
        **child_env(),
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "RECORD": str(record),
        "SLURM_JOB_ID": "42",
        "SLURM_JOB_NODELIST": "localhost",
        "SLURM_JOB_NUM_NODES": "1",
    }
    first_out = tmp_path / "first.out"
    with open(first_out, "w") as out:
        batch = subprocess.Popen(
            ["bash", str(script)], stdout=out, stderr=subprocess.DEVNULL, env=env
        )
        try:
            deadline = time.monotonic() + 180
            while not [r for r in steps(_records(first_out)) if r["step"] >= 6]:
                assert batch.poll() is None and time.monotonic() < deadline, "no step 6"
                time.sleep(0.005)
            batch.send_signal(signal.SIGUSR1)
            assert batch.wait(timeout=120) == 0
        finally:
            if batch.poll() is None:
                batch.kill()
    assert (record / "calls").read_text().splitlines() == [
        "scancel --signal=TERM 42",
        "scontrol requeue 42",
    ]
    first = _records(first_out)
    last = steps(first)[-1]["step"]
    # the ranks agreed to stop after the same step and saved it, on the cadence or not
    assert only(first, "summary")["stopped_early"] is True and 6 <= last < STEPS
    assert [r["step"] for r in first if r["event"] == "checkpoint"][-1] == last
    saved = CheckpointDir(tmp_path / "ckpt").complete_steps()
    assert saved[-1] == last

    (record / "calls").unlink()
    second_out = tmp_path / "second.out"
    with open(second_out, "w") as out:
        subprocess.run(
            ["bash", str(script)],
            stdout=out,
            stderr=subprocess.DEVNULL,
            env=env,
            timeout=240,
            check=True,
        )
    assert not (record / "calls").exists()  # finished: nothing cancelled, nothing requeued
    second = _records(second_out)
    expected = {r["step"]: r["loss"] for r in steps(uninterrupted)}
    assert only(second, "resume")["step"] == last
    assert [r["step"] for r in steps(second)] == list(range(last + 1, STEPS + 1))
    assert {r["step"]: r["loss"] for r in steps(second)} == {
        step: loss for step, loss in expected.items() if step > last
    }
    assert only(second, "summary")["final_loss"] == only(uninterrupted, "summary")["final_loss"]
    report = rank_reports(tmp_path / "report", 2)
    assert [r["param_digest"] for r in report] == [r["param_digest"] for r in full]
