"""Write the `## FSDP on one GPU` section of docs/benchmarks.md from bench/gpu_fsdp.sh's results.

    .venv/bin/python -m bench.gpu_report RESULTS_DIR [--machine TEXT]

RESULTS_DIR holds what `RESULTS=DIR bash bench/gpu_fsdp.sh` wrote (fsdp-<config>-eager.jsonl,
fsdp-<config>-compile.jsonl) and, if present, nvidia-smi.txt (the CSV of
`nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv`). Figures come from the
runs' own summary lines; nothing is typed in by hand.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench.report import write_section

TITLE = "FSDP on one GPU"


def summaries(results: Path) -> list[dict]:
    rows = []
    for path in sorted(results.glob("fsdp-*.jsonl")):
        events = [
            json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")
        ]
        summary = next((e for e in events if e.get("event") == "summary"), None)
        if summary is not None:
            rows.append(summary)
    # eager before compile
    return sorted(rows, key=lambda s: (s["config"], s["compile"]))


def gpu_line(results: Path) -> str:
    smi = results / "nvidia-smi.txt"
    if not smi.exists():
        return ""
    lines = [line for line in smi.read_text().splitlines() if line and not line.startswith("name")]
    return "; ".join(
        f"{name.strip()}, driver {driver.strip()}, {mem.strip()}"
        for name, driver, mem in (line.split(",") for line in lines)
    )


def render(rows: list[dict], gpu: str, machine: str) -> str:
    if not rows:
        raise SystemExit("no fsdp summary line found")
    first = rows[0]
    head = (
        f"`bash bench/gpu_fsdp.sh` (then `python -m bench.gpu_report`) on {machine}"
        f"{' (' + gpu + ')' if gpu else ''}. Llama-style `{first['config']}` model "
        f"({first['params'] / 1e9:.2f} B parameters), FSDP2 on one device, {first['param_dtype']} "
        f"parameters, sequence {first['seq_len']}, batch {first['global_batch']}, "
        f"{first['steps']} steps of which the first {first['steps'] - first['averaged_steps']} "
        "are warm-up and not averaged. FLOPs are 6 x matmul parameters + attention per token "
        f"({first['flops_per_token'] / 1e9:.2f} GFLOP/token); MFU against {first['peak_tflops']:g} "
        f"TFLOP/s ({first['peak_tflops_source']}).\n\n"
    )
    table = [
        "| torch.compile | step time | tokens/s | TFLOP/s per GPU | MFU | peak memory "
        "| loss first / last |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        table.append(
            f"| {'on' if r['compile'] else 'off'} | {r['step_time_s'] * 1e3:.0f} ms | "
            f"{r['tokens_per_s']:,.0f} | {r['tflops_per_device']:.0f} | {r['mfu']:.1%} | "
            f"{r['peak_mem_bytes'] / 2**30:.1f} GiB | "
            f"{r['first_loss']:.3f} / {r['final_loss']:.3f} |"
        )
    return head + "\n".join(table) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument(
        "--machine",
        default=f"the device machine, {time.strftime('%Y-%m-%d')}",
        help="where the results were measured",
    )
    args = parser.parse_args(argv)
    write_section(TITLE, render(summaries(args.results), gpu_line(args.results), args.machine))


if __name__ == "__main__":
    main()
