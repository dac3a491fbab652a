from __future__ import annotations

import io
import json

import pytest
from mlcluster_workloads import metrics
from mlcluster_workloads.llama import CONFIGS, LlamaConfig


def test_tiny_config_flops_by_hand():
    # tiny: dim 256, 2 layers, 8 heads of 32, 4 kv heads, ffn 768, vocab 512.
    # per layer: wq 256*256 + wk 256*128 + wv 256*128 + wo 256*256 = 196608
    #            w1, w2, w3: 3 * 256*768 = 589824            -> 786432 per layer
    # two layers 1572864, output head 256*512 = 131072      -> 1703936 matmul weights
    config = CONFIGS["tiny"]
    assert config.matmul_params() == 1_703_936
    # 6 N = 10223616; attention 12 * L * H * Q * T = 12 * 2 * 8 * 32 * 64 = 393216 at T = 64
    assert (
        metrics.transformer_flops_per_token(
            matmul_params=config.matmul_params(),
            n_layers=2,
            n_heads=8,
            head_dim=32,
            seq_len=64,
        )
        == 10_223_616 + 393_216
    )
    # distinct parameters add the embedding (512*256) and 5 norm vectors of 256
    assert config.total_params() == 1_703_936 + 131_072 + 1_280


def test_matmul_params_are_the_models_linear_weights():
    import torch
    from mlcluster_workloads.llama import Transformer

    for config in (CONFIGS["tiny"], LlamaConfig(64, 3, 4, 1, 96, 100, tie_embeddings=True)):
        model = Transformer(config)
        linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
        distinct = sum(p.numel() for p in model.parameters())
        assert linear == config.matmul_params()
        assert distinct == config.total_params()


def test_published_parameter_counts():
    # the parameter counts of the released Llama 3.2 1B (tied embeddings) and Llama 3 8B
    assert CONFIGS["1b"].total_params() == 1_235_814_400
    assert CONFIGS["8b"].total_params() == 8_030_261_248


def test_mlp_flops_per_sample():
    assert metrics.mlp_flops_per_sample([(32, 128), (128, 1)]) == 6 * (32 * 128 + 128)


@pytest.mark.parametrize(
    ("name", "label", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", "H100 SXM", 989.0),
        ("NVIDIA H100 PCIe", "H100 PCIe", 756.0),
        ("NVIDIA H100 NVL", "H100 NVL", 835.0),
        ("NVIDIA H200", "H200 SXM", 989.0),
        ("NVIDIA A100-SXM4-80GB", "A100", 312.0),
        ("NVIDIA B200", "B200", 2250.0),
        ("NVIDIA L40S", "L40S", 362.0),
        ("NVIDIA L4", "L4", 121.0),
        ("Trainium2", "Trainium2", 667.0),
        ("Trainium1", "Trainium1", 190.0),
    ],
)
def test_peak_table(name, label, peak):
    assert metrics.peak_tflops_for(name) == (label, peak)


def test_unknown_device_has_no_peak():
    assert metrics.peak_tflops_for("NVIDIA GeForce GTX 1080") is None


def make_reporter(stream, **overrides):
    fields = {
        "case": "fsdp",
        "world_size": 4,
        "device": metrics.Device("NVIDIA H100 80GB HBM3", accelerator=True, peak_memory=lambda: 7),
        "samples_per_step": 8,
        "flops_per_sample": 10**12,
        "tokens_per_sample": 100,
        "warmup_steps": 1,
        "stream": stream,
    }
    return metrics.Reporter(**{**fields, **overrides})


def test_step_and_summary_records():
    stream = io.StringIO()
    reporter = make_reporter(stream)
    reporter.step(1, 5.0, 10.0)  # warm-up: left out of the averages
    reporter.step(2, 4.0, 2.0)
    reporter.step(3, 3.0, 2.0)
    reporter.summary(note="x")
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [r["event"] for r in records] == ["step", "step", "step", "summary"]
    step = records[1]
    # 8 samples in 2 s over 4 devices at 1 TFLOP per sample: 1 TFLOP/s per device
    assert step["samples_per_s"] == 4.0
    assert step["tokens_per_s"] == 400.0
    assert step["tokens_per_s_per_device"] == 100.0
    assert step["tflops_per_device"] == pytest.approx(1.0)
    assert step["mfu"] == pytest.approx(1.0 / 989.0)
    assert step["peak_mem_bytes"] == 7
    summary = records[-1]
    assert summary["averaged_steps"] == 2
    assert summary["step_time_s"] == 2.0
    assert summary["first_loss"] == 5.0 and summary["final_loss"] == 3.0
    assert summary["peak_tflops_source"] == "table: H100 SXM dense bf16"
    assert summary["note"] == "x"


def test_cpu_mfu_is_null_unless_a_peak_is_given():
    cpu = metrics.Device("cpu", accelerator=False, peak_memory=lambda: 0)
    stream = io.StringIO()
    assert make_reporter(stream, device=cpu).step(1, 1.0, 1.0)["mfu"] is None
    given = make_reporter(stream, device=cpu, peak_tflops=4.0).step(1, 1.0, 1.0)
    # 8 samples/s * 1 TFLOP / 4 devices = 2 TFLOP/s per device against 4
    assert given["mfu"] == pytest.approx(0.5)


def test_only_the_enabled_reporter_writes():
    stream = io.StringIO()
    reporter = make_reporter(stream, enabled=False)
    reporter.step(1, 1.0, 1.0)
    reporter.summary()
    assert stream.getvalue() == ""


def test_summary_without_steps_has_null_rates():
    summary = make_reporter(io.StringIO()).summary()
    assert summary["steps"] == 0 and summary["final_loss"] is None
    assert all(summary[key] is None for key in metrics.RATE_KEYS)
