"""The jax_dp case's real entry point as two processes (Slurm's variables, gloo collectives on
CPU) and alone on the global batch, judged by what the processes themselves report.

JAX is a dependency of the suite (scripts/setup.sh installs it): a missing JAX fails here rather
than skipping the only multi-process JAX test.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
from workload_helpers import (
    assert_disjoint_blocks_of_the_global_batch,
    assert_loss_is_the_global_mean,
    assert_parameters_synchronised,
    assert_rates_are_the_flops_over_the_step_time,
    json_lines,
    launch_ranks,
    only,
    rank_reports,
    run,
    srun_env,
    steps,
)

STEPS, LOCAL_BATCH, PEAK_TFLOPS = 30, 32, 0.5
# SGD: its steps scale with the gradient, so summed instead of averaged gradients would show.
ARGS = ["-m", "mlcluster_workloads.jax_dp", "--optimizer", "sgd", "--lr", "0.1", "--steps", "30"]
# The default MLP: 32 inputs, two hidden layers of 128, one output.
PARAMETERS = {"w0", "b0", "w1", "b1", "w2", "b2"}
# 6 FLOPs per weight per sample (forward 2, backward 4): 6 * (32*128 + 128*128 + 128*1)
FLOPS_PER_SAMPLE = 123_648


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    report, dumped = tmp_path_factory.mktemp("jax-two"), tmp_path_factory.mktemp("jax-dump")
    result = launch_ranks(
        *ARGS,
        f"--batch-size={LOCAL_BATCH}",
        f"--peak-tflops={PEAK_TFLOPS}",
        f"--debug-report={report}",
        f"--dump-params={dumped}",
        rank_env=srun_env,
        timeout=180,
    )
    return json_lines(result.stdout), rank_reports(report, 2), dumped


@pytest.fixture(scope="module")
def alone(tmp_path_factory):
    report = tmp_path_factory.mktemp("jax-one")
    result = run(
        [sys.executable, *ARGS, f"--batch-size={2 * LOCAL_BATCH}", f"--debug-report={report}"]
    )
    return json_lines(result.stdout), rank_reports(report, 1)[0]


def test_processes_read_disjoint_blocks_of_the_global_batch(two_processes, alone):
    assert_disjoint_blocks_of_the_global_batch(
        two_processes[1], alone[1], local_batch=LOCAL_BATCH, steps=STEPS
    )


def test_parameters_stay_identical_and_equal_one_process_on_the_global_batch(two_processes, alone):
    assert_parameters_synchronised(
        two_processes[1], alone[1], names=PARAMETERS, rtol=1e-5, atol=1e-6
    )


def test_reported_loss_is_the_mean_over_processes(two_processes, alone):
    assert_loss_is_the_global_mean(two_processes[0], two_processes[1], alone[0], rtol=1e-5)


def test_tflops_and_mfu_are_the_hand_count_over_the_step_time(two_processes):
    assert_rates_are_the_flops_over_the_step_time(
        two_processes[0],
        flops_per_sample=FLOPS_PER_SAMPLE,
        global_batch=2 * LOCAL_BATCH,
        world_size=2,
        peak_tflops=PEAK_TFLOPS,
    )


def test_summary_and_dumped_parameters(two_processes):
    records, reports, dumped = two_processes
    summary = only(records, "summary")
    assert summary["process_count"] == 2 and summary["world_size"] == 2
    assert summary["global_batch"] == 2 * LOCAL_BATCH
    assert [r["step"] for r in steps(records)] == list(range(1, STEPS + 1))
    assert summary["final_loss"] < 0.7 * summary["first_loss"]
    for process, report in enumerate(reports):  # --dump-params writes what the report holds
        with np.load(dumped / f"params-{process}.npz") as archive:
            assert set(archive.files) == PARAMETERS
            for name in PARAMETERS:
                np.testing.assert_array_equal(archive[name], report["params"][name])
