from __future__ import annotations

import torch
import torch.nn.functional as F
from dist_worker import DDP, STEP
from mlcluster_workloads import ddp
from mlcluster_workloads.data import ShardedSampler, TeacherRegression
from workload_helpers import json_lines, only, steps, torchrun


def test_gradients_equal_a_single_process_step_on_the_global_batch(distributed_steps):
    ranks = [
        torch.load(distributed_steps / f"ddp-rank{r}.pt", weights_only=False) for r in range(2)
    ]
    assert [r["world_size"] for r in ranks] == [2, 2]

    # the ranks read disjoint halves of exactly the global batch of this step
    first, second = (set(r["indices"].tolist()) for r in ranks)
    assert len(first) == len(second) == DDP["batch"]
    assert first.isdisjoint(second)
    global_batch = ShardedSampler(
        DDP["num_samples"], 2 * DDP["batch"], 0, 1, seed=DDP["seed"], shuffle=True
    ).indices(STEP)
    assert first | second == set(global_batch.tolist())

    x, y = map(
        torch.from_numpy,
        TeacherRegression(
            num_samples=DDP["num_samples"], in_features=DDP["in_features"], seed=DDP["seed"]
        ).arrays(),
    )
    reference = ddp.build_model(DDP["in_features"], DDP["hidden"], DDP["depth"], seed=DDP["seed"])
    index = torch.from_numpy(global_batch)
    F.mse_loss(reference(x[index]), y[index]).backward()
    for rank in ranks:
        assert rank["grads"].keys() == dict(reference.named_parameters()).keys()
        for name, param in reference.named_parameters():
            torch.testing.assert_close(rank["grads"][name], param.grad, msg=name)


def test_loss_falls_and_stdout_is_json_lines():
    # The real torchrun here; the other multi-rank tests set its variables themselves.
    result = torchrun("-m", "mlcluster_workloads.ddp", "--steps", "30", "--batch-size", "32")
    records = json_lines(result.stdout)
    trained = steps(records)
    assert [r["step"] for r in trained] == list(range(1, 31))  # rank 0 alone prints
    summary = only(records, "summary")
    assert summary["world_size"] == 2 and summary["global_batch"] == 64
    assert summary["final_loss"] < 0.7 * summary["first_loss"]
    assert summary["mfu"] is None  # CPU without --peak-tflops
    assert summary["averaged_steps"] == 28  # two warm-up steps left out
    assert all(r["peak_mem_bytes"] > 0 and r["samples_per_s"] > 0 for r in trained)
