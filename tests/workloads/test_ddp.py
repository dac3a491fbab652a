"""The ddp case's real entry point, on 2 ranks through torchrun and alone on the global batch,
judged by what the processes themselves report (``--debug-report``)."""

from __future__ import annotations

import sys

import pytest
from workload_helpers import (
    assert_disjoint_blocks_of_the_global_batch,
    assert_loss_is_the_global_mean,
    assert_parameters_synchronised,
    assert_rates_are_the_flops_over_the_step_time,
    json_lines,
    only,
    rank_reports,
    run,
    steps,
    torchrun,
)

STEPS, LOCAL_BATCH, PEAK_TFLOPS = 30, 32, 0.5
# SGD: its steps scale with the gradient, so summed instead of averaged gradients would show.
ARGS = ["-m", "mlcluster_workloads.ddp", "--optimizer", "sgd", "--lr", "0.2", "--steps", "30"]
# The default model: in_features 32, two hidden layers of 128, a scalar head.
PARAMETERS = {f"{layer}.{kind}" for layer in (0, 2, 4) for kind in ("weight", "bias")}
# 6 FLOPs per weight per sample (forward 2, backward 4): 6 * (32*128 + 128*128 + 128*1)
FLOPS_PER_SAMPLE = 123_648


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    report = tmp_path_factory.mktemp("ddp-two")
    # The real torchrun here; the other multi-rank tests set its variables themselves.
    result = torchrun(
        *ARGS,
        f"--batch-size={LOCAL_BATCH}",
        f"--peak-tflops={PEAK_TFLOPS}",
        f"--debug-report={report}",
    )
    return json_lines(result.stdout), rank_reports(report, 2)


@pytest.fixture(scope="module")
def alone(tmp_path_factory):
    report = tmp_path_factory.mktemp("ddp-one")
    result = run(
        [sys.executable, *ARGS, f"--batch-size={2 * LOCAL_BATCH}", f"--debug-report={report}"]
    )
    return json_lines(result.stdout), rank_reports(report, 1)[0]


def test_ranks_read_disjoint_blocks_of_the_global_batch(two_ranks, alone):
    assert_disjoint_blocks_of_the_global_batch(
        two_ranks[1], alone[1], local_batch=LOCAL_BATCH, steps=STEPS
    )


def test_parameters_stay_identical_and_equal_one_process_on_the_global_batch(two_ranks, alone):
    assert_parameters_synchronised(two_ranks[1], alone[1], names=PARAMETERS, rtol=1e-4, atol=1e-6)


def test_reported_loss_is_the_mean_over_ranks(two_ranks, alone):
    assert_loss_is_the_global_mean(two_ranks[0], two_ranks[1], alone[0], rtol=1e-4)


def test_tflops_and_mfu_are_the_hand_count_over_the_step_time(two_ranks):
    assert_rates_are_the_flops_over_the_step_time(
        two_ranks[0],
        flops_per_sample=FLOPS_PER_SAMPLE,
        global_batch=2 * LOCAL_BATCH,
        world_size=2,
        peak_tflops=PEAK_TFLOPS,
    )
    for record in steps(two_ranks[0]):
        assert record["samples_per_s"] == pytest.approx(2 * LOCAL_BATCH / record["step_time_s"])


def test_loss_falls_and_stdout_is_json_lines(two_ranks, alone):
    records = two_ranks[0]
    trained = steps(records)
    assert [r["step"] for r in trained] == list(range(1, STEPS + 1))  # rank 0 alone prints
    summary = only(records, "summary")
    assert summary["world_size"] == 2 and summary["global_batch"] == 2 * LOCAL_BATCH
    assert summary["final_loss"] < 0.7 * summary["first_loss"]
    assert summary["averaged_steps"] == STEPS - 2  # two warm-up steps left out
    assert all(r["peak_mem_bytes"] > 0 and r["samples_per_s"] > 0 for r in trained)
    assert only(alone[0], "summary")["mfu"] is None  # CPU without --peak-tflops
