"""Helpers for running the workloads as separate processes (torchrun with gloo on localhost).

Every child runs with one intra-op thread: the suite must fit on a 2-core machine beside other
work, and single-threaded CPU kernels are also deterministic, which the exact-equality
assertions (resumed loss trajectories) rely on.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).parent
WORKER = HERE / "dist_worker.py"
FIXTURES = HERE / "fixtures"


def child_env() -> dict[str, str]:
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])),
    }


def run(command: list[str], *, timeout: float = 240) -> subprocess.CompletedProcess:
    result = subprocess.run(
        command, capture_output=True, text=True, env=child_env(), timeout=timeout, check=False
    )
    if result.returncode != 0:
        pytest.fail(
            f"{' '.join(command)} exited {result.returncode}\n"
            f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-6000:]}"
        )
    return result


def torchrun(*args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    return run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
            *args,
        ]
    )


def torchrun_env(rank: int, nproc: int, port: int) -> dict[str, str]:
    return {
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": str(nproc),
        "LOCAL_WORLD_SIZE": str(nproc),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }


def srun_env(rank: int, nproc: int, port: int) -> dict[str, str]:
    """What srun sets for a jax_dp process, with the coordinator the sbatch script passes."""
    return {
        "SLURM_PROCID": str(rank),
        "SLURM_NTASKS": str(nproc),
        "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
    }


def launch_ranks(
    *args: str,
    nproc: int = 2,
    timeout: float = 240,
    rank_env: Callable[[int, int, int], dict[str, str]] = torchrun_env,
) -> subprocess.CompletedProcess:
    """Start ``nproc`` ranks of ``python ARGS`` with the variables torchrun (or ``rank_env``)
    would set.

    Cheaper than torchrun (no launcher process importing torch: it matters on 2 shared cores);
    the cases read the same variables either way, and test_ddp runs the real torchrun.
    Returns rank 0's result; fails the test if any rank fails.
    """
    port = free_port()
    processes, outputs, results = [], [], []
    with contextlib.ExitStack() as stack:
        for rank in range(nproc):
            env = {**child_env(), **rank_env(rank, nproc, port)}
            # Files, not pipes: a rank blocked on a full pipe would hang its peers' collectives.
            stdout = stack.enter_context(tempfile.TemporaryFile("w+"))
            stderr = stack.enter_context(tempfile.TemporaryFile("w+"))
            outputs.append((stdout, stderr))
            process = subprocess.Popen(
                [sys.executable, *args], stdout=stdout, stderr=stderr, env=env
            )
            stack.callback(lambda p=process: p.poll() is None and p.kill())
            processes.append(process)
        for process, (stdout, stderr) in zip(processes, outputs, strict=True):
            process.wait(timeout=timeout)
            stdout.seek(0)
            stderr.seek(0)
            results.append(
                subprocess.CompletedProcess(
                    process.args, process.returncode, stdout.read(), stderr.read()
                )
            )
    for rank, result in enumerate(results):
        if result.returncode != 0:
            pytest.fail(
                f"rank {rank} of {' '.join(args)} exited {result.returncode}\n"
                f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-6000:]}"
            )
    for rank, result in enumerate(results[1:], start=1):
        assert result.stdout == "", f"rank {rank} wrote to stdout: {result.stdout[:300]}"
    return results[0]


def json_lines(stdout: str) -> list[dict]:
    """Every stdout line must be one JSON object: the cases promise prefix-free output."""
    lines = stdout.splitlines()
    assert lines, "no output on stdout"
    return [json.loads(line) for line in lines]


def steps(records: list[dict]) -> list[dict]:
    return [r for r in records if r["event"] == "step"]


def only(records: list[dict], event: str) -> dict:
    found = [r for r in records if r["event"] == event]
    assert len(found) == 1, f"expected one {event!r} record, got {len(found)}"
    return found[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rank_reports(directory: Path, world_size: int) -> list[dict]:
    """What each rank wrote with ``--debug-report``: its JSON record, plus ``params`` read from
    its ``.npz``."""
    reports = []
    for rank in range(world_size):
        record = json.loads((directory / f"rank-{rank}.json").read_text())
        assert (record["rank"], record["world_size"]) == (rank, world_size)
        with np.load(directory / f"rank-{rank}.npz") as archive:
            record["params"] = {name: archive[name] for name in archive.files}
        reports.append(record)
    return reports


# Data-parallel equivalence, checked from what the processes themselves reported: a run on
# ``world_size`` ranks (``ranks``: their debug reports, ``records``: rank 0's JSON lines) against
# a one-process run of the same case on the whole global batch (``alone``, ``alone_records``).


def assert_disjoint_blocks_of_the_global_batch(
    ranks: list[dict], alone: dict, *, local_batch: int, steps: int
) -> None:
    """Every step, each rank read its own ``local_batch`` samples, no sample on two ranks, and
    together, rank by rank, exactly the samples the lone process read."""
    assert len(alone["steps"]) == steps
    for rank in ranks:
        assert [s["step"] for s in rank["steps"]] == list(range(1, steps + 1))
    for step in range(steps):
        blocks = [rank["steps"][step]["indices"] for rank in ranks]
        assert all(len(block) == local_batch for block in blocks)
        union = set().union(*blocks)
        assert len(union) == local_batch * len(ranks), f"step {step + 1}: ranks share samples"
        together = [index for block in blocks for index in block]
        assert together == alone["steps"][step]["indices"], f"step {step + 1}"


def assert_parameters_synchronised(
    ranks: list[dict], alone: dict, *, names: set[str], rtol: float, atol: float
) -> None:
    """The ranks end with bit-identical parameters, equal to the lone process's."""
    assert len({rank["param_digest"] for rank in ranks}) == 1, "ranks' parameters differ"
    assert alone["params"].keys() == names
    for rank in ranks:
        assert rank["params"].keys() == names
        for name in sorted(names):
            np.testing.assert_allclose(
                rank["params"][name], alone["params"][name], rtol=rtol, atol=atol, err_msg=name
            )


def assert_loss_is_the_global_mean(
    records: list[dict], ranks: list[dict], alone_records: list[dict], *, rtol: float
) -> None:
    """The loss rank 0 reports is the mean of the ranks' own losses (not their sum, not rank 0's
    alone) and equals the loss the lone process reports on the whole global batch."""
    reported = [r["loss"] for r in steps(records)]
    local = np.array([[s["local_loss"] for s in rank["steps"]] for rank in ranks])
    # the ranks' losses differ enough that a sum or one rank's loss could not pass for the mean
    assert np.abs(local - local.mean(axis=0)).max() > 100 * rtol * local.max(), (
        "the ranks' own losses are (nearly) equal: did they read the same samples?"
    )
    np.testing.assert_allclose(reported, local.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(reported, [r["loss"] for r in steps(alone_records)], rtol=rtol)


def assert_rates_are_the_flops_over_the_step_time(
    records: list[dict],
    *,
    flops_per_sample: int,
    global_batch: int,
    world_size: int,
    peak_tflops: float,
    warmup_steps: int = 2,
) -> None:
    """TFLOP/s per device and MFU, each step's and the summary's, from the FLOP count the test
    gives (counted by hand) and the step times the case measured."""
    trained = steps(records)
    assert trained, "no step records"
    for record in trained:
        flops = flops_per_sample * global_batch / record["step_time_s"] / world_size
        assert record["tflops_per_device"] == pytest.approx(flops / 1e12, rel=1e-9)
        assert record["mfu"] == pytest.approx(flops / 1e12 / peak_tflops, rel=1e-9)
    measured = trained[warmup_steps:]
    summary = only(records, "summary")
    assert summary["averaged_steps"] == len(measured) > 0
    total_time = sum(r["step_time_s"] for r in measured)
    flops = flops_per_sample * global_batch * len(measured) / total_time / world_size
    assert summary["step_time_s"] == pytest.approx(total_time / len(measured), rel=1e-9)
    assert summary["tflops_per_device"] == pytest.approx(flops / 1e12, rel=1e-9)
    assert summary["mfu"] == pytest.approx(flops / 1e12 / peak_tflops, rel=1e-9)
