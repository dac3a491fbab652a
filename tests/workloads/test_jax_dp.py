from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from workload_helpers import child_env, free_port, json_lines, only, run, steps

pytest.importorskip("jax")

# SGD: its steps scale with the gradient, so summed instead of averaged gradients would show.
ARGS = ["-m", "mlcluster_workloads.jax_dp", "--optimizer", "sgd", "--lr", "0.1", "--steps", "30"]


def load(path) -> dict[str, np.ndarray]:
    with np.load(path) as archive:
        return {name: archive[name] for name in archive.files}


def test_two_processes_average_gradients(tmp_path):
    port = free_port()
    processes = []
    for process_id in range(2):
        # Slurm's variables, as srun sets them; the coordinator comes from the flag.
        env = {**child_env(), "SLURM_PROCID": str(process_id), "SLURM_NTASKS": "2"}
        command = [
            sys.executable,
            *ARGS,
            "--batch-size=32",
            f"--coordinator=127.0.0.1:{port}",
            f"--dump-params={tmp_path / 'two'}",
        ]
        processes.append(
            subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
        )
    outputs = [p.communicate(timeout=180) for p in processes]
    for process, (_, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr[-4000:]
    assert outputs[1][0] == ""  # only process 0 reports

    records = json_lines(outputs[0][0])
    summary = only(records, "summary")
    assert summary["process_count"] == 2 and summary["world_size"] == 2
    assert summary["global_batch"] == 64
    assert [r["step"] for r in steps(records)] == list(range(1, 31))
    assert summary["final_loss"] < 0.7 * summary["first_loss"]

    first, second = load(tmp_path / "two" / "params-0.npz"), load(tmp_path / "two" / "params-1.npz")
    for name in first:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)

    # One process reading both halves (batch 64) takes the same steps: the two processes
    # really averaged their gradients rather than each training on its own half.
    alone = run(
        [
            sys.executable,
            *ARGS,
            "--batch-size=64",
            f"--dump-params={tmp_path / 'one'}",
        ]
    )
    alone_loss = [r["loss"] for r in steps(json_lines(alone.stdout))]
    np.testing.assert_allclose([r["loss"] for r in steps(records)], alone_loss, rtol=1e-5)
    reference = load(tmp_path / "one" / "params-0.npz")
    for name in first:
        np.testing.assert_allclose(first[name], reference[name], rtol=1e-5, atol=1e-6)
