from __future__ import annotations

import dataclasses
import io
import sys

import numpy as np
import pytest
import torch
from dist_worker import FSDP, STEP, fsdp_config
from mlcluster_workloads import dist, fsdp
from mlcluster_workloads.checkpoint import MARKER
from mlcluster_workloads.data import SyntheticTokens, write_token_file
from mlcluster_workloads.llama import CONFIGS, Transformer
from workload_helpers import (
    WORKER,
    assert_disjoint_blocks_of_the_global_batch,
    assert_loss_is_the_global_mean,
    assert_parameters_synchronised,
    assert_rates_are_the_flops_over_the_step_time,
    json_lines,
    launch_ranks,
    only,
    rank_reports,
    run,
    steps,
)

TINY_RUN = ["--config", "tiny", "--seq-len", "32", "--batch-size", "2", "--lr", "3e-3"]
STEPS, CHECKPOINT_EVERY, STOP_AFTER = 12, 4, 8

# The entry point on 2 ranks and alone on the global batch, judged by --debug-report. SGD without
# clipping: its steps scale with the gradient, so summed instead of averaged gradients would show.
SGD_RUN = ["-m", "mlcluster_workloads.fsdp", "--config", "tiny", "--seq-len", "32"]
SGD_RUN += ["--optimizer", "sgd", "--lr", "0.5", "--grad-clip", "0", "--steps", "4"]
SGD_STEPS, SGD_LOCAL_BATCH, PEAK_TFLOPS = 4, 2, 0.5
TINY_PARAMETERS = {"tok_embeddings.weight", "norm.weight", "output.weight"} | {
    f"layers.{layer}.{name}.weight"
    for layer in (0, 1)
    for name in (
        "attention.wq",
        "attention.wk",
        "attention.wv",
        "attention.wo",
        "attention_norm",
        "feed_forward.w1",
        "feed_forward.w2",
        "feed_forward.w3",
        "ffn_norm",
    )
}
# tiny at 32 tokens: 6 * 1_703_936 matmul weights + 12 * 2 layers * 8 heads * 32 dims * 32 tokens
# = 10_420_224 FLOPs per token (test_metrics counts the weights by hand), times 32 tokens
TINY_FLOPS_PER_SAMPLE = 10_420_224 * 32


def reference_model() -> Transformer:
    config = dataclasses.replace(CONFIGS[FSDP["config"]], max_seq_len=FSDP["seq_len"])
    model = Transformer(config)  # plain, unsharded, on CPU
    model.init_weights(FSDP["seed"])
    return model


def test_sharded_initialisation_equals_unsharded(distributed_steps):
    initial = torch.load(distributed_steps / "fsdp-rank0.pt", weights_only=False)["initial"]
    reference = reference_model()
    assert initial.keys() == dict(reference.named_parameters()).keys()
    for name, param in reference.named_parameters():
        torch.testing.assert_close(initial[name], param.detach(), rtol=0, atol=0, msg=name)


def test_gradients_equal_a_single_process_step_on_the_global_batch(distributed_steps):
    ranks = [
        torch.load(distributed_steps / f"fsdp-rank{r}.pt", weights_only=False) for r in range(2)
    ]
    first, second = (r["indices"].tolist() for r in ranks)
    global_batch = list(range(STEP * 2 * FSDP["batch"], (STEP + 1) * 2 * FSDP["batch"]))
    assert set(first).isdisjoint(second)
    assert sorted(first + second) == global_batch

    reference = reference_model()
    source = SyntheticTokens(reference.config.vocab_size, FSDP["seq_len"], seed=FSDP["seed"])
    tokens = torch.from_numpy(source.batch(np.array(global_batch)))
    loss = fsdp.loss_and_backward(reference, tokens[:, :-1], tokens[:, 1:])
    # the mean of the two ranks' losses is the global batch's loss
    assert (ranks[0]["loss"] + ranks[1]["loss"]) / 2 == pytest.approx(loss.item(), rel=1e-6)
    for rank in ranks:
        for name, param in reference.named_parameters():
            torch.testing.assert_close(rank["grads"][name], param.grad, msg=name)


@pytest.fixture(scope="module")
def sgd_two_ranks(tmp_path_factory):
    report = tmp_path_factory.mktemp("fsdp-two")
    result = launch_ranks(
        *SGD_RUN,
        f"--batch-size={SGD_LOCAL_BATCH}",
        f"--peak-tflops={PEAK_TFLOPS}",
        f"--debug-report={report}",
    )
    return json_lines(result.stdout), rank_reports(report, 2)


@pytest.fixture(scope="module")
def sgd_alone(tmp_path_factory):
    report = tmp_path_factory.mktemp("fsdp-one")
    result = run(
        [
            sys.executable,
            *SGD_RUN,
            f"--batch-size={2 * SGD_LOCAL_BATCH}",
            f"--debug-report={report}",
        ]
    )
    return json_lines(result.stdout), rank_reports(report, 1)[0]


def test_entry_point_ranks_read_disjoint_blocks_of_the_global_batch(sgd_two_ranks, sgd_alone):
    assert_disjoint_blocks_of_the_global_batch(
        sgd_two_ranks[1], sgd_alone[1], local_batch=SGD_LOCAL_BATCH, steps=SGD_STEPS
    )


def test_entry_point_parameters_equal_one_process_on_the_global_batch(sgd_two_ranks, sgd_alone):
    assert_parameters_synchronised(
        sgd_two_ranks[1], sgd_alone[1], names=TINY_PARAMETERS, rtol=1e-4, atol=1e-5
    )


def test_entry_point_reports_the_mean_loss_over_ranks(sgd_two_ranks, sgd_alone):
    assert_loss_is_the_global_mean(sgd_two_ranks[0], sgd_two_ranks[1], sgd_alone[0], rtol=1e-5)


def test_tflops_and_mfu_are_the_hand_count_over_the_step_time(sgd_two_ranks):
    assert_rates_are_the_flops_over_the_step_time(
        sgd_two_ranks[0],
        flops_per_sample=TINY_FLOPS_PER_SAMPLE,
        global_batch=2 * SGD_LOCAL_BATCH,
        world_size=2,
        peak_tflops=PEAK_TFLOPS,
    )


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    directory = tmp_path_factory.mktemp("uninterrupted")
    result = launch_ranks(
        "-m",
        "mlcluster_workloads.fsdp",
        *TINY_RUN,
        "--steps",
        str(STEPS),
        "--checkpoint-dir",
        str(directory),
        "--checkpoint-every",
        str(CHECKPOINT_EVERY),
        "--keep-checkpoints",
        "2",
    )
    return json_lines(result.stdout), directory


def test_loss_falls(uninterrupted):
    records, _ = uninterrupted
    summary = only(records, "summary")
    assert [r["step"] for r in steps(records)] == list(range(1, STEPS + 1))
    assert summary["world_size"] == 2 and summary["global_batch"] == 4
    assert summary["final_loss"] < 0.7 * summary["first_loss"]
    # --seq-len reaches the data: 4 sequences of 32 tokens per step
    for record in steps(records):
        assert record["tokens_per_s"] == pytest.approx(record["samples_per_s"] * 32)
    assert summary["flops_per_token"] == 6 * 1_703_936 + 12 * 2 * 8 * 32 * 32


def test_checkpoints_are_complete_and_pruned(uninterrupted):
    records, directory = uninterrupted
    saved = [r["step"] for r in records if r["event"] == "checkpoint"]
    assert saved == [4, 8, 12]
    kept = sorted(p.name for p in directory.iterdir())
    assert kept == ["step-00000008", "step-00000012"]  # --keep-checkpoints 2
    assert all((directory / name / MARKER).is_file() for name in kept)
    assert len(list((directory / "step-00000012").glob("*.distcp"))) == 2  # one per rank


def test_stopped_run_resumes_with_the_same_loss_trajectory(uninterrupted, tmp_path):
    records, _ = uninterrupted
    expected = {r["step"]: r["loss"] for r in steps(records)}
    common = [*TINY_RUN, "--steps", str(STEPS), "--checkpoint-dir", str(tmp_path)]
    common += ["--checkpoint-every", str(CHECKPOINT_EVERY), "--keep-checkpoints", "0"]

    first = json_lines(
        launch_ranks(
            "-m", "mlcluster_workloads.fsdp", *common, "--stop-after-step", str(STOP_AFTER)
        ).stdout
    )
    assert [r["step"] for r in steps(first)] == list(range(1, STOP_AFTER + 1))
    assert only(first, "summary")["stopped_early"] is True
    # A save killed half-way leaves a newer directory without the marker: it must be ignored.
    (tmp_path / "step-00000010").mkdir()
    (tmp_path / "step-00000010" / "__0_0.distcp").write_bytes(b"partial")

    second = json_lines(launch_ranks("-m", "mlcluster_workloads.fsdp", *common).stdout)
    assert only(second, "resume")["step"] == STOP_AFTER
    resumed = steps(second)
    assert [r["step"] for r in resumed] == list(range(STOP_AFTER + 1, STEPS + 1))
    # same model, optimizer state and data position: the losses match bit for bit
    assert {r["step"]: r["loss"] for r in resumed} == {
        step: loss for step, loss in expected.items() if step > STOP_AFTER
    }
    assert only(second, "summary")["resumed_from_step"] == STOP_AFTER


def test_runs_alone_on_a_token_file(tmp_path):
    vocabulary = CONFIGS["tiny"].vocab_size
    path = tmp_path / "tokens.bin"
    write_token_file(path, np.arange(4000) % vocabulary, dtype="uint32")
    result = run(
        [
            sys.executable,
            "-m",
            "mlcluster_workloads.fsdp",
            *TINY_RUN,
            "--steps",
            "3",
            "--data-file",
            str(path),
            "--data-dtype",
            "uint32",
        ]
    )
    records = json_lines(result.stdout)
    assert [r["step"] for r in steps(records)] == [1, 2, 3]
    assert only(records, "summary")["world_size"] == 1


def test_rejects_tokens_outside_the_vocabulary(tmp_path):
    path = tmp_path / "tokens.bin"
    write_token_file(path, np.full(200, 600), dtype="uint16")  # tiny's vocabulary is 512
    args = fsdp.parse_args([*TINY_RUN, "--steps", "1", "--data-file", str(path)])
    ctx = dist.init("gloo", "cpu")  # alone: a one-rank group on an in-memory store
    try:
        with pytest.raises(SystemExit, match="outside the tiny vocabulary"):
            fsdp.run(args, ctx, io.StringIO())
    finally:
        dist.shutdown()


def test_learning_rate_warmup():
    assert [fsdp.learning_rate(s, peak=1.0, warmup_steps=4) for s in (1, 2, 4, 9)] == [
        0.25,
        0.5,
        1.0,
        1.0,
    ]
    assert fsdp.learning_rate(1, peak=0.1, warmup_steps=0) == 0.1


# 2-D parallelism: 4 ranks as 2 data-parallel groups of 2 tensor-parallel ranks (--tp 2).
TP, TP_WORLD = 2, 4


@pytest.fixture(scope="module")
def tp_steps(tmp_path_factory):
    """One step of dist_worker.py on the ("dp", "tp") mesh, tied embeddings."""
    out = tmp_path_factory.mktemp("tp-steps")
    launch_ranks(str(WORKER), str(out), str(TP), nproc=TP_WORLD)
    return [
        torch.load(out / f"fsdp-tp{TP}-rank{r}.pt", weights_only=False) for r in range(TP_WORLD)
    ]


def test_tensor_parallel_gradients_equal_a_single_process_step(tp_steps):
    # ranks 0, 1 form data-parallel rank 0 and read its block; ranks 2, 3 the other block
    indices = [r["indices"].tolist() for r in tp_steps]
    first_block = list(range(STEP * 2 * FSDP["batch"], STEP * 2 * FSDP["batch"] + FSDP["batch"]))
    second_block = [i + FSDP["batch"] for i in first_block]
    assert indices == [first_block, first_block, second_block, second_block]

    config = fsdp_config(TP)
    assert config.tie_embeddings
    reference = Transformer(config)
    reference.init_weights(FSDP["seed"])
    source = SyntheticTokens(config.vocab_size, FSDP["seq_len"], seed=FSDP["seed"])
    tokens = torch.from_numpy(source.batch(np.array(first_block + second_block)))
    loss = fsdp.loss_and_backward(reference, tokens[:, :-1], tokens[:, 1:])
    # the two ranks of a tensor-parallel group compute the same loss, on their block
    assert tp_steps[0]["loss"] == tp_steps[1]["loss"]
    assert tp_steps[2]["loss"] == tp_steps[3]["loss"]
    assert (tp_steps[0]["loss"] + tp_steps[2]["loss"]) / 2 == pytest.approx(loss.item(), rel=1e-6)
    names = [name for name, _ in reference.named_parameters()]
    assert "output.weight" not in names  # still tied: one parameter
    for rank in tp_steps:
        assert list(rank["initial"]) == list(rank["grads"]) == names
        for name, param in reference.named_parameters():
            torch.testing.assert_close(rank["initial"][name], param.detach(), rtol=0, atol=0)
            torch.testing.assert_close(rank["grads"][name], param.grad, msg=name)


@pytest.fixture(scope="module")
def sgd_tensor_parallel(tmp_path_factory):
    report = tmp_path_factory.mktemp("fsdp-tp")
    result = launch_ranks(
        *SGD_RUN,
        f"--batch-size={SGD_LOCAL_BATCH}",
        f"--tp={TP}",
        f"--peak-tflops={PEAK_TFLOPS}",
        f"--debug-report={report}",
        nproc=TP_WORLD,
    )
    return json_lines(result.stdout), rank_reports(report, TP_WORLD)


def test_entry_point_tensor_parallel_groups_share_data_parallel_groups_split_it(
    sgd_tensor_parallel, sgd_alone
):
    ranks, alone = sgd_tensor_parallel[1], sgd_alone[1]
    for step in range(SGD_STEPS):
        blocks = [rank["steps"][step]["indices"] for rank in ranks]
        assert blocks[0] == blocks[1] and blocks[2] == blocks[3], f"step {step + 1}"
        assert len(blocks[0]) == SGD_LOCAL_BATCH and set(blocks[0]).isdisjoint(blocks[2])
        assert blocks[0] + blocks[2] == alone["steps"][step]["indices"], f"step {step + 1}"


def test_entry_point_tensor_parallel_parameters_equal_one_process(sgd_tensor_parallel, sgd_alone):
    assert_parameters_synchronised(
        sgd_tensor_parallel[1], sgd_alone[1], names=TINY_PARAMETERS, rtol=1e-4, atol=1e-5
    )
    records, ranks = sgd_tensor_parallel
    reported = [r["loss"] for r in steps(records)]
    np.testing.assert_allclose(reported, [r["loss"] for r in steps(sgd_alone[0])], rtol=1e-5)
    for step, loss in enumerate(reported):
        local = [rank["steps"][step]["local_loss"] for rank in ranks]
        assert local[0] == local[1] and local[2] == local[3]
        assert loss == pytest.approx((local[0] + local[2]) / 2, rel=1e-6)


def test_entry_point_tensor_parallel_flops_are_per_device_of_all_ranks(sgd_tensor_parallel):
    records, _ = sgd_tensor_parallel
    summary = only(records, "summary")
    assert (summary["world_size"], summary["dp"], summary["tp"]) == (4, 2, 2)
    assert summary["global_batch"] == 2 * SGD_LOCAL_BATCH  # dp x the per-rank batch
    assert_rates_are_the_flops_over_the_step_time(
        records,
        flops_per_sample=TINY_FLOPS_PER_SAMPLE,
        global_batch=2 * SGD_LOCAL_BATCH,
        world_size=TP_WORLD,
        peak_tflops=PEAK_TFLOPS,
    )


def test_tensor_parallel_degree_must_divide_the_world_and_the_model():
    with pytest.raises(SystemExit, match=r"^--tp 3 must divide the world size 4$"):
        fsdp.make_mesh("cpu", 4, 3)
    with pytest.raises(
        SystemExit,
        match=r"^--tp 3 must divide n_heads 8, n_kv_heads 4, vocab_size 512, seq_len 32$",
    ):
        fsdp.check_tensor_parallel(CONFIGS["tiny"], 3, 32)
    with pytest.raises(SystemExit, match=r"^--tp 8 must divide n_kv_heads 4$"):
        fsdp.check_tensor_parallel(CONFIGS["tiny"], 8, 64)
    fsdp.check_tensor_parallel(CONFIGS["tiny"], 4, 64)  # heads, kv heads, ffn, vocab, tokens
