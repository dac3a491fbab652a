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
from pathlib import Path

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


def launch_ranks(*args: str, nproc: int = 2, timeout: float = 240) -> subprocess.CompletedProcess:
    """Start ``nproc`` ranks of ``python ARGS`` with the variables torchrun would set.

    Cheaper than torchrun (no launcher process importing torch: it matters on 2 shared cores);
    the cases read the same variables either way, and test_ddp runs the real torchrun.
    Returns rank 0's result; fails the test if any rank fails.
    """
    port = free_port()
    processes, outputs, results = [], [], []
    with contextlib.ExitStack() as stack:
        for rank in range(nproc):
            env = {
                **child_env(),
                "RANK": str(rank),
                "LOCAL_RANK": str(rank),
                "WORLD_SIZE": str(nproc),
                "LOCAL_WORLD_SIZE": str(nproc),
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
            }
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
