"""bench.gpu_report: the GPU lane's result files become the benchmarks section, figures taken
from the runs' own summary lines (nothing typed in)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench import gpu_report, report


def fsdp_summary(*, compile_: bool, batch: int, step_time: float, mfu: float) -> dict:
    return {
        "event": "summary",
        "case": "fsdp",
        "config": "1b",
        "params": 1_235_814_400,
        "param_dtype": "bfloat16",
        "seq_len": 2048,
        "global_batch": batch,
        "steps": 30,
        "averaged_steps": 25,
        "flops_per_token": 8_220_000_000,
        "peak_tflops": 989,
        "peak_tflops_source": "table: H200 SXM dense bf16",
        "compile": compile_,
        "reshard_after_forward": batch != 8,
        "activation_checkpointing": False,
        "step_time_s": step_time,
        "tokens_per_s": batch * 2048 / step_time,
        "tflops_per_device": mfu * 989,
        "mfu": mfu,
        "peak_mem_bytes": 40 * 2**30,
        "first_loss": 12.25,
        "final_loss": 11.9,
    }


def write_jsonl(path: Path, *events: dict) -> None:
    path.write_text("".join(json.dumps(e) + "\n" for e in events))


@pytest.fixture
def results(tmp_path: Path) -> Path:
    step = {"event": "step", "step": 1, "loss": 12.25}
    write_jsonl(
        tmp_path / "fsdp-1b-b4-compile.jsonl",
        step,
        fsdp_summary(compile_=True, batch=4, step_time=0.16, mfu=0.42),
    )
    write_jsonl(
        tmp_path / "fsdp-1b-b8-nr-eager.jsonl",
        step,
        fsdp_summary(compile_=False, batch=8, step_time=0.40, mfu=0.34),
    )
    write_jsonl(
        tmp_path / "fsdp-1b-b8-nr-compile.jsonl",
        step,
        fsdp_summary(compile_=True, batch=8, step_time=0.30, mfu=0.51),
    )
    # a failed run leaves a file without summary: not a row
    write_jsonl(tmp_path / "fsdp-1b-b16-compile.jsonl", step)
    write_jsonl(
        tmp_path / "torchtitan-1b-b8-compile.jsonl",
        {
            "event": "torchtitan_summary",
            "torchtitan": "0.2.0",
            "params": 1_498_482_688,
            "params_ours": 1_235_814_400,
            "batch": 8,
            "seq_len": 2048,
            "compile": True,
            "step_time_s": 0.32,
            "tokens_per_s": 51200.0,
            "tflops_per_gpu": 440.0,
            "mfu": 0.445,
            "mfu_ours": 0.43,
            "peak_memory_gib": 60.5,
            "loss_first": 12.3,
            "loss_last": 11.8,
        },
    )
    write_jsonl(
        tmp_path / "deepspeed-1b-b8-zero3.jsonl",
        step,
        {
            **fsdp_summary(compile_=False, batch=8, step_time=0.5, mfu=0.30),
            "case": "deepspeed",
            "deepspeed": "0.19.8",
            "zero_stage": 3,
        },
    )
    write_jsonl(
        tmp_path / "profile-1b-b8-compile.jsonl",
        {
            "event": "gpu_profile",
            "batch": 8,
            "compile": True,
            "wall_ms_per_step": 245.0,
            "gpu_busy_ms_per_step": 230.0,
            "gpu_idle_ms_per_step": 15.0,
            "gpu_busy_fraction": 0.9388,
            "kernels_per_step": 1200,
            "kernel_ms_per_step_by_kind": {"matmul": 150.0, "attention": 40.25},
        },
    )
    write_jsonl(
        tmp_path / "ddp-gpu.jsonl",
        {"event": "summary", "steps": 200, "first_loss": 1.0, "final_loss": 0.05,
         "samples_per_s": 123456.0},
    )  # fmt: skip
    (tmp_path / "nvidia-smi.txt").write_text(
        "name, driver_version, memory.total [MiB]\nNVIDIA H200, 580.159.04, 143771 MiB\n"
    )
    return tmp_path


def test_the_section_holds_every_run_compiled_and_largest_batch_first(
    results: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n## FSDP on one GPU\n\nold figures\n\n## Other\n\nkept\n")
    monkeypatch.setattr(report, "DOC", doc)
    gpu_report.main([str(results), "--machine", "the H200"])
    text = doc.read_text()
    assert "old figures" not in text
    assert text.endswith("## Other\n\nkept\n")
    section = text.split("## FSDP on one GPU\n\n")[1].split("\n## Other")[0]
    assert section.startswith(
        "`bash bench/gpu_lane.sh` (then `python -m bench.gpu_report`) on the H200 "
        "(NVIDIA H200, driver 580.159.04, 143771 MiB). Llama-style `1b` model (1.24 B parameters)"
    )
    fsdp_table = section.split("| stack, same model")[0]
    rows = [line for line in fsdp_table.splitlines() if line.startswith("| ") and "ms |" in line]
    assert rows == [
        "| compile, batch 8, kept gathered | 300 ms | 54,613 | 504 | 51.0% | 40.0 GiB "
        "| 12.250 / 11.900 |",
        "| compile, batch 4, resharded | 160 ms | 51,200 | 415 | 42.0% | 40.0 GiB "
        "| 12.250 / 11.900 |",
        "| eager, batch 8, kept gathered | 400 ms | 40,960 | 336 | 34.0% | 40.0 GiB "
        "| 12.250 / 11.900 |",
    ]
    assert (
        "| torchtitan 0.2.0, FSDP2, compile, batch 8 | 320 ms | 51,200 | 440 | 44.5% | 60.5 GiB "
        "| 12.300 / 11.800 |" in section
    )
    assert (
        "| DeepSpeed 0.19.8 ZeRO-3, eager, batch 8 | 500 ms | 32,768 | 297 | 30.0% | 40.0 GiB "
        "| 12.250 / 11.900 |" in section
    )
    assert "its TFLOP/s and MFU are its own figures (its FLOP count); by ours, MFU 43.0%" in section
    assert "1.50 B parameters, 262.7 M more than ours" in section
    assert (
        "245.0 ms of wall time, the GPU busy 230.0 ms (93.9%; idle 15.0 ms: launch gaps, CPU "
        "work, synchronisation), 1200 kernels a step. Kernel time by kind: matmul 150.0 ms, "
        "attention 40.2 ms." in section
    )
    assert "`ddp` on the GPU (200 steps, fp32): loss 1.0000 / 0.0500, 123,456 samples/s." in section


def test_no_fsdp_summary_is_an_error(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "fsdp-1b-b4-compile.jsonl", {"event": "step", "step": 1})
    with pytest.raises(SystemExit, match="no fsdp summary line found"):
        gpu_report.render(gpu_report.summaries(tmp_path), "", "here")


def test_the_profile_counts_overlapping_kernels_once_and_sorts_them_by_kind() -> None:
    from bench import gpu_profile

    assert gpu_profile.union_us([(0, 10), (5, 15), (20, 30), (21, 22)]) == 25
    assert gpu_profile.union_us([]) == 0
    assert gpu_profile.kind_of("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x256") == (
        "matmul"
    )
    assert gpu_profile.kind_of("pytorch_flash::flash_bwd_kernel<...>") == "attention"
    assert gpu_profile.kind_of("void at::native::(anonymous)::fused_adam_kernel") == "optimizer"
    assert gpu_profile.kind_of("triton_per_fused__to_copy_mul_rsqrt_0") == (
        "fused element-wise (Triton)"
    )
    assert gpu_profile.kind_of("ncclDevKernel_AllGather_RING_LL") == "communication"
    assert gpu_profile.kind_of("elementwise_kernel") == "other"


def test_a_rewritten_section_keeps_its_hand_written_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text(
        "# Benchmarks\n\n## Slurm converge\n\nold table\n\n"
        f"{report.KEPT}\n\nWhat the figures say: by hand.\n\n## Next\n\nother\n"
    )
    monkeypatch.setattr(report, "DOC", doc)
    report.write_section("Slurm converge", "new table")
    assert doc.read_text() == (
        "# Benchmarks\n\n## Slurm converge\n\nnew table\n\n"
        f"{report.KEPT}\n\nWhat the figures say: by hand.\n\n## Next\n\nother\n"
    )
    report.write_section("Next", "replaced")  # no marker: the whole section is the script's
    assert doc.read_text().endswith("## Next\n\nreplaced\n")
