"""Write the `## FSDP on one GPU` section of docs/benchmarks.md from bench/gpu_lane.sh's results.

    .venv/bin/python -m bench.gpu_report RESULTS_DIR [--machine TEXT]

RESULTS_DIR holds what `RESULTS=DIR bash bench/gpu_lane.sh` wrote: fsdp-<config>-b<batch>[-nr]-
<mode>.jsonl (the fsdp runs), torchtitan-*.jsonl (torchtitan's trainer on the same model),
ddp-gpu.jsonl and nvidia-smi.txt (the CSV of `nvidia-smi --query-gpu=name,driver_version,
memory.total --format=csv`). Figures come from the runs' own summary lines; nothing is typed in
by hand.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench.report import write_section

TITLE = "FSDP on one GPU"


def events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def summary(path: Path, event: str) -> dict | None:
    return next((e for e in events(path) if e.get("event") == event), None)


def summaries(results: Path) -> list[dict]:
    rows = [s for p in sorted(results.glob("fsdp-*.jsonl")) if (s := summary(p, "summary"))]
    # compiled, largest batch first
    return sorted(rows, key=lambda s: (s["config"], not s["compile"], -s["global_batch"]))


def torchtitan_rows(results: Path) -> list[dict]:
    found = (summary(p, "torchtitan_summary") for p in sorted(results.glob("torchtitan-*.jsonl")))
    return [s for s in found if s]


def stack_rows(results: Path) -> list[dict]:
    """The other cases' summaries on the same model: deepspeed-*.jsonl, megatron-*.jsonl."""
    paths = sorted(results.glob("deepspeed-*.jsonl")) + sorted(results.glob("megatron-*.jsonl"))
    return [s for p in paths if (s := summary(p, "summary"))]


def profile_row(results: Path) -> dict | None:
    paths = sorted(results.glob("profile-*.jsonl"))
    return summary(paths[0], "gpu_profile") if paths else None


def gpu_line(results: Path) -> str:
    smi = results / "nvidia-smi.txt"
    if not smi.exists():
        return ""
    lines = [line for line in smi.read_text().splitlines() if line and not line.startswith("name")]
    return "; ".join(
        f"{name.strip()}, driver {driver.strip()}, {mem.strip()}"
        for name, driver, mem in (line.split(",") for line in lines)
    )


def setting(r: dict) -> str:
    parts = [
        "compile" if r["compile"] else "eager",
        f"batch {r['global_batch']}",
        "kept gathered" if r.get("reshard_after_forward") is False else "resharded",
    ]
    if r.get("activation_checkpointing"):
        parts.append("activation checkpointing")
    return ", ".join(parts)


def render(
    rows: list[dict],
    gpu: str,
    machine: str,
    titan: list[dict] | None = None,
    ddp: dict | None = None,
    stacks: list[dict] | None = None,
    profile: dict | None = None,
) -> str:
    if not rows:
        raise SystemExit("no fsdp summary line found")
    first = rows[0]
    head = (
        f"`bash bench/gpu_lane.sh` (then `python -m bench.gpu_report`) on {machine}"
        f"{' (' + gpu + ')' if gpu else ''}. Llama-style `{first['config']}` model "
        f"({first['params'] / 1e9:.2f} B parameters), FSDP2 on one device, {first['param_dtype']} "
        f"parameters, fp32 gradient reduction, fused AdamW, sequence {first['seq_len']}, "
        f"{first['steps']} steps of which the first {first['steps'] - first['averaged_steps']} "
        "are warm-up and not averaged. FLOPs are 6 x matmul parameters + attention per token "
        f"({first['flops_per_token'] / 1e9:.2f} GFLOP/token); MFU against {first['peak_tflops']:g} "
        f"TFLOP/s ({first['peak_tflops_source']}). 'kept gathered': "
        "`--no-reshard-after-forward`.\n\n"
    )
    table = [
        "| fsdp | step time | tokens/s | TFLOP/s per GPU | MFU | peak memory | loss first / last |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        table.append(
            f"| {setting(r)} | {r['step_time_s'] * 1e3:.0f} ms | "
            f"{r['tokens_per_s']:,.0f} | {r['tflops_per_device']:.0f} | {r['mfu']:.1%} | "
            f"{r['peak_mem_bytes'] / 2**30:.1f} GiB | "
            f"{r['first_loss']:.3f} / {r['final_loss']:.3f} |"
        )
    text = head + "\n".join(table) + "\n"
    others = [
        "| stack, same model and sequence | step time | tokens/s | TFLOP/s per GPU | MFU "
        "| peak memory | loss first / last |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    notes = []
    for t in titan or []:
        untied = t["params"] - t.get("params_ours", t["params"])
        others.append(
            f"| torchtitan {t['torchtitan']}, FSDP2, "
            f"{'compile' if t['compile'] else 'eager'}, batch {t['batch']} | "
            f"{t['step_time_s'] * 1e3:.0f} ms | {t['tokens_per_s']:,.0f} | "
            f"{t['tflops_per_gpu']:.0f} | {t['mfu']:.1%} | {t['peak_memory_gib']:.1f} GiB | "
            f"{t['loss_first']:.3f} / {t['loss_last']:.3f} |"
        )
        notes.append(
            f"torchtitan {t['torchtitan']} runs its own trainer (`bench/torchtitan_1b.py`: our "
            "config registered as a llama3 flavour, our synthetic tokens through its data loader, "
            "FSDP2 applied on the one GPU); its TFLOP/s and MFU are its own figures (its FLOP "
            f"count); by ours, MFU {t.get('mfu_ours', t['mfu']):.1%}"
            + (
                f". Its llama3 cannot tie the output head to the embedding: "
                f"{t['params'] / 1e9:.2f} B parameters, {untied / 1e6:.1f} M more than ours "
                "(no more FLOPs, more optimizer work and memory)"
                if untied
                else ""
            )
            + "."
        )
        if rows:
            notes[-1] += (
                f" Its loss falls much faster on the same tokens ({t['loss_first']:.3f} to "
                f"{t['loss_last']:.3f} against {rows[0]['first_loss']:.3f} to "
                f"{rows[0]['final_loss']:.3f} for fsdp's first row): the models differ in the "
                "head and the initialisation, so the two compare in throughput, not in loss."
            )
    for r in stacks or []:
        if r["case"] == "deepspeed":
            name = f"DeepSpeed {r.get('deepspeed', '')} ZeRO-{r.get('zero_stage')}, eager"
        else:
            name = (
                f"megatron-core {r.get('megatron_core', '')}, tp {r.get('tp', 1)}, "
                f"pp {r.get('pp', 1)}"
            )
        others.append(
            f"| {name}, batch {r['global_batch']} | {r['step_time_s'] * 1e3:.0f} ms | "
            f"{r['tokens_per_s']:,.0f} | {r['tflops_per_device']:.0f} | {r['mfu']:.1%} | "
            f"{r['peak_mem_bytes'] / 2**30:.1f} GiB | "
            f"{r['first_loss']:.3f} / {r['final_loss']:.3f} |"
        )
    if len(others) > 2:
        text += "\n" + "\n".join(others) + "\n"
    for note in notes:
        text += "\n" + note + "\n"
    if profile:
        kinds = ", ".join(
            f"{kind} {ms:.1f} ms" for kind, ms in profile["kernel_ms_per_step_by_kind"].items()
        )
        text += (
            f"\nWhere a step goes (`bench/gpu_profile.py`, torch.profiler over 5 steps, fsdp "
            f"{'compiled' if profile['compile'] else 'eager'}, batch {profile['batch']}): "
            f"{profile['wall_ms_per_step']:.1f} ms of wall time, the GPU busy "
            f"{profile['gpu_busy_ms_per_step']:.1f} ms ({profile['gpu_busy_fraction']:.1%}; "
            f"idle {profile['gpu_idle_ms_per_step']:.1f} ms: launch gaps, CPU work, "
            f"synchronisation), {profile['kernels_per_step']} kernels a step. Kernel time by "
            f"kind: {kinds}.\n"
        )
    if ddp:
        text += (
            f"\n`ddp` on the GPU ({ddp['steps']} steps, {ddp.get('param_dtype', 'fp32')}): "
            f"loss {ddp['first_loss']:.4f} / {ddp['final_loss']:.4f}, "
            f"{ddp['samples_per_s']:,.0f} samples/s.\n"
        )
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument(
        "--machine",
        default=f"the device machine, {time.strftime('%Y-%m-%d')}",
        help="where the results were measured",
    )
    args = parser.parse_args(argv)
    ddp_file = args.results / "ddp-gpu.jsonl"
    ddp = summary(ddp_file, "summary") if ddp_file.exists() else None
    write_section(
        TITLE,
        render(
            summaries(args.results),
            gpu_line(args.results),
            args.machine,
            torchtitan_rows(args.results),
            ddp,
            stack_rows(args.results),
            profile_row(args.results),
        ),
    )


if __name__ == "__main__":
    main()
