"""mlcluster_workloads.metrics without torch: the FLOP formulas, the step and summary records
field by field (the rates' wiring: samples, tokens and TFLOP/s per device, MFU and where its
peak comes from), the debug report, the peak memory figure and the stream the JSON lines go to.
Expectations are worked out by hand in each test; mutation testing (scripts/mutate.py metrics)
found each of these open."""

from __future__ import annotations

import argparse
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mlcluster_workloads import metrics


def _high_water_bytes() -> int:
    """The kernel's own high-water mark (VmHWM, KiB), read independently of getrusage."""
    lines = Path("/proc/self/status").read_text().splitlines()
    status = dict(line.split(":", 1) for line in lines if ":" in line)
    return int(status["VmHWM"].split()[0]) * 1024


def test_peak_rss_is_in_bytes():
    # getrusage and VmHWM are updated at different moments and differ by some hundred KiB:
    # close enough to tell bytes from KiB, not to tell x1024 from x1025.
    peak, high_water = metrics.process_peak_rss_bytes(), _high_water_bytes()
    assert abs(peak - high_water) <= 64 * 1024 * 1024, (peak, high_water)


def test_json_lines_keep_the_original_stdout_and_prints_go_to_stderr():
    program = (
        "from mlcluster_workloads import metrics\n"
        "stream = metrics.json_stream()\n"
        "assert metrics.json_stream() is stream\n"
        'stream.write(\'{"event": "step"}\\n\')\n'
        "print('gloo: connected', flush=True)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True, timeout=60
    )
    assert proc.stdout == '{"event": "step"}\n'
    assert proc.stderr == "gloo: connected\n"


# --- the FLOP formulas, with factors chosen so that no two operators give the same count ------


def test_transformer_flops_per_token_by_hand():
    # 6 N = 6 * 1000; attention 12 * L * H * Q * T = 12 * 2 * 3 * 5 * 7 = 2520
    flops = metrics.transformer_flops_per_token(
        matmul_params=1000, n_layers=2, n_heads=3, head_dim=5, seq_len=7
    )
    assert flops == 8520


def test_mlp_flops_per_sample_by_hand():
    # 6 * (2*3 + 4*5) = 156
    assert metrics.mlp_flops_per_sample([(2, 3), (4, 5)]) == 156


def test_a_device_name_finds_its_peak_and_an_unknown_one_none():
    assert metrics.peak_tflops_for("NVIDIA A100-SXM4-40GB") == ("A100", 312.0)
    assert metrics.peak_tflops_for("NVIDIA H100 PCIe") == ("H100 PCIe", 756.0)
    assert metrics.peak_tflops_for("cpu") is None


def test_cli_defaults_and_flags():
    parser = argparse.ArgumentParser()
    metrics.add_arguments(parser)
    defaults = parser.parse_args([])
    assert (defaults.warmup_steps, defaults.peak_tflops, defaults.debug_report) == (2, None, None)
    given = parser.parse_args(
        ["--warmup-steps", "0", "--peak-tflops", "312", "--debug-report", "d"]
    )
    assert (given.warmup_steps, given.peak_tflops, given.debug_report) == (0, 312.0, "d")


# --- the JSON lines' stream --------------------------------------------------------------------


def test_a_json_line_is_out_at_once_even_if_the_process_then_dies():
    # Line-buffered: a rank killed after a step (os._exit skips every flush) has still
    # delivered that step's line.
    program = (
        "import os\n"
        "from mlcluster_workloads import metrics\n"
        'metrics.json_stream().write(\'{"event": "step"}\\n\')\n'
        "os._exit(3)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60
    )
    assert (proc.returncode, proc.stdout) == (3, '{"event": "step"}\n')


# --- where the MFU peak comes from --------------------------------------------------------------

H100 = metrics.Device("NVIDIA H100 80GB HBM3", accelerator=True, peak_memory=lambda: 7)
CPU = metrics.Device("cpu", accelerator=False, peak_memory=lambda: 7)


def reporter(**overrides) -> metrics.Reporter:
    fields = {
        "case": "ddp",
        "world_size": 2,
        "device": CPU,
        "samples_per_step": 6,
        "flops_per_sample": 5 * 10**11,
        "stream": io.StringIO(),
    }
    return metrics.Reporter(**{**fields, **overrides})


@pytest.mark.parametrize(
    ("device", "flag", "peak", "source"),
    [
        (H100, None, 989.0, "table: H100 SXM dense bf16"),
        (H100, 500.0, 500.0, "flag"),  # the flag wins over the table
        (CPU, 4.0, 4.0, "flag"),
        (CPU, None, None, None),
        (metrics.Device("NVIDIA GeForce GTX 1080", accelerator=True), None, None, None),
    ],
    ids=["table", "flag-over-table", "flag-on-cpu", "cpu", "unlisted-gpu"],
)
def test_peak_and_its_source(device, flag, peak, source):
    made = reporter(device=device, peak_tflops=flag)
    assert (made.peak_tflops, made.peak_source) == (peak, source)
    summary = made.summary()
    assert (summary["peak_tflops"], summary["peak_tflops_source"]) == (peak, source)


# --- step and summary records, every field, by hand ------------------------------------------
# 2 devices, 6 samples a step, 5e11 FLOPs a sample, 10 tokens a sample, peak 8 TFLOP/s given.
# The times are binary fractions, so every expected figure below is exact.


def test_step_records_by_hand():
    stream = io.StringIO()
    made = reporter(tokens_per_sample=10, peak_tflops=8.0, stream=stream, extra={"model": "m"})
    returned = made.step(4, 8.5, 0.125)
    # 6 samples in 0.125 s: 48 samples/s, 480 tokens/s, 240 per device;
    # 48 * 5e11 FLOP/s over 2 devices = 12 TFLOP/s per device, MFU 12 / 8 = 1.5
    expected = {
        "event": "step",
        "case": "ddp",
        "step": 4,
        "loss": 8.5,
        "step_time_s": 0.125,
        "samples_per_s": 48.0,
        "tokens_per_s": 480.0,
        "tokens_per_s_per_device": 240.0,
        "tflops_per_device": 12.0,
        "mfu": 1.5,
        "peak_mem_bytes": 7,
        "world_size": 2,
    }
    assert returned == expected
    assert [json.loads(line) for line in stream.getvalue().splitlines()] == [expected]


def test_a_model_without_tokens_has_null_token_rates():
    made = reporter()
    step = made.step(1, 1.0, 0.5)
    summary = made.summary()
    for record in (step, summary):
        assert (record["tokens_per_s"], record["tokens_per_s_per_device"]) == (None, None)
        assert record["mfu"] is None  # CPU, no peak given
    # 6 samples in 0.5 s = 12/s; 12 * 5e11 / 2 devices = 3 TFLOP/s per device
    assert (step["samples_per_s"], step["tflops_per_device"]) == (12.0, 3.0)
    assert (summary["samples_per_s"], summary["tflops_per_device"]) == (12.0, 3.0)


def test_summary_by_hand():
    stream = io.StringIO()
    made = reporter(
        tokens_per_sample=10, peak_tflops=8.0, warmup_steps=1, stream=stream, extra={"model": "m"}
    )
    made.step(1, 9.0, 7.0)  # warm-up: left out of the rates
    made.step(2, 8.0, 0.125)
    made.step(3, 6.0, 0.375)
    returned = made.summary(note="x")
    # measured: steps 2 and 3, 12 samples in 0.5 s: 24 samples/s, a step every 0.25 s;
    # 24 * 5e11 / 2 devices = 6 TFLOP/s per device, MFU 6 / 8 = 0.75; 240 tokens/s, 120 each
    expected = {
        "event": "summary",
        "case": "ddp",
        "steps": 3,
        "first_step": 1,
        "last_step": 3,
        "averaged_steps": 2,
        "first_loss": 9.0,
        "final_loss": 6.0,
        "world_size": 2,
        "device": "cpu",
        "peak_tflops": 8.0,
        "peak_tflops_source": "flag",
        "flops_per_sample": 5 * 10**11,
        "peak_mem_bytes": 7,
        "step_time_s": 0.25,
        "samples_per_s": 24.0,
        "tokens_per_s": 240.0,
        "tokens_per_s_per_device": 120.0,
        "tflops_per_device": 6.0,
        "mfu": 0.75,
        "model": "m",
        "note": "x",
    }
    assert returned == expected
    assert json.loads(stream.getvalue().splitlines()[-1]) == expected


def test_a_summary_with_only_warmup_steps_averages_all_of_them():
    made = reporter(warmup_steps=2)
    made.step(1, 3.0, 0.5)
    made.step(2, 2.0, 1.5)
    summary = made.summary()
    # nothing after the warm-up: both steps, 12 samples in 2 s
    assert (summary["averaged_steps"], summary["samples_per_s"], summary["step_time_s"]) == (
        2,
        6.0,
        1.0,
    )


def test_the_enabled_reporter_writes_one_line_per_record():
    stream = io.StringIO()
    made = reporter(stream=stream)
    made.step(1, 1.0, 1.0)
    made.summary()
    assert [json.loads(line)["event"] for line in stream.getvalue().splitlines()] == [
        "step",
        "summary",
    ]


# --- the debug report ---------------------------------------------------------------------


def test_parameters_digest_tells_models_apart():
    weights = {"b": np.zeros(2, np.float32), "w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    digest = metrics.parameters_digest(weights)
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    # the same values in another order and memory layout: the same digest
    same = {"w": np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3)), "b": np.zeros(2)}
    same["b"] = same["b"].astype(np.float32)
    assert metrics.parameters_digest(same) == digest
    others = [
        {**weights, "w": weights["w"] + 1},  # a value
        {**weights, "w": weights["w"].astype(np.float64)},  # a dtype
        {**weights, "w": weights["w"].reshape(3, 2)},  # a shape
        {"a": weights["b"], "w": weights["w"]},  # a name
    ]
    assert len({metrics.parameters_digest(p) for p in others} | {digest}) == 5


def test_a_disabled_report_records_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    report = metrics.RankReport(None, 0, 2)
    assert report.enabled is False
    report.step(1, np.array([3, 4]), 0.5)
    report.finish({"w": np.ones(2)})
    assert report.record == {"rank": 0, "world_size": 2, "steps": []}
    assert list(tmp_path.iterdir()) == []


def test_every_rank_writes_its_report_into_new_directories(tmp_path):
    directory = tmp_path / "debug" / "run"
    params = {"w": np.array([1.5, -2.0], dtype=np.float32)}
    for rank in (0, 1):  # the second finds the directory made by the first
        report = metrics.RankReport(str(directory), rank, 2)
        assert report.enabled is True
        report.step(1, np.array([rank, rank + 2]), np.float32(0.25 + rank))
        report.step(2, [rank + 4], 0.5)
        report.finish(params)
    assert sorted(p.name for p in directory.iterdir()) == [
        "rank-0.json",
        "rank-0.npz",
        "rank-1.json",
        "rank-1.npz",
    ]
    text = (directory / "rank-1.json").read_text()
    assert text.endswith("}\n") and text.count("\n") == 1
    record = json.loads(text)
    digest = record.pop("param_digest")
    assert record == {
        "rank": 1,
        "world_size": 2,
        "steps": [
            {"step": 1, "indices": [1, 3], "local_loss": 1.25},
            {"step": 2, "indices": [5], "local_loss": 0.5},
        ],
    }
    with np.load(directory / "rank-1.npz") as archive:
        assert archive.files == ["w"]
        np.testing.assert_array_equal(archive["w"], [1.5, -2.0])
    # the digest is of the parameters given: the same on both ranks, another for others
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert json.loads((directory / "rank-0.json").read_text())["param_digest"] == digest
    other = metrics.RankReport(str(tmp_path / "other"), 0, 1)
    other.finish({"w": np.array([1.5, -2.5], dtype=np.float32)})
    assert json.loads((tmp_path / "other" / "rank-0.json").read_text())["param_digest"] != digest
