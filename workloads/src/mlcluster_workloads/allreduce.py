"""All-reduce bandwidth over message sizes, with torch.distributed or NVIDIA's nccl-tests.

    torchrun --nproc_per_node=8 -m mlcluster_workloads.allreduce --max-bytes 1G
    python -m mlcluster_workloads.allreduce --nccl-tests -- -g 8      # all_reduce_perf on PATH
    python -m mlcluster_workloads.allreduce --parse nccl-tests.log    # a saved all_reduce_perf log

Each size prints one JSON line ``{"event": "allreduce", ...}`` and the run ends with
``{"event": "allreduce_summary", ...}``, the same schema for all three sources. Bandwidths use
nccl-tests' definitions: algbw = bytes / time (1 GB = 1e9 bytes), and for all-reduce
busbw = algbw * 2 (n - 1) / n, the rate each rank's links must sustain in a ring.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import subprocess
import sys
import time
from typing import Any

from mlcluster_workloads import metrics

_SIZE = re.compile(r"^(\d+)([KMG]?)$", re.IGNORECASE)
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}


def parse_size(text: str) -> int:
    """Sizes as nccl-tests takes them: 8, 256K, 128M, 1G (powers of 1024)."""
    match = _SIZE.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 8, 256K, 128M, 1G)")
    return int(match.group(1)) * _UNITS[match.group(2).upper()]


def message_sizes(min_bytes: int, max_bytes: int, factor: int) -> list[int]:
    if factor < 2 or min_bytes < 1 or max_bytes < min_bytes:
        raise ValueError("need 1 <= min_bytes <= max_bytes and factor >= 2")
    sizes = [min_bytes]
    while sizes[-1] * factor <= max_bytes:
        sizes.append(sizes[-1] * factor)
    return sizes


def algbw_gbps(size_bytes: int, time_s: float) -> float:
    return size_bytes / time_s / 1e9


def allreduce_busbw_gbps(algbw: float, world_size: int) -> float:
    """nccl-tests' bus bandwidth for all-reduce: algbw * 2 (n - 1) / n."""
    return algbw * 2 * (world_size - 1) / world_size


def measurement(
    *,
    source: str,
    size_bytes: int,
    count: int,
    dtype: str,
    time_us: float,
    world_size: int,
    wrong: int | None,
    **extra: Any,
) -> dict[str, Any]:
    algbw = algbw_gbps(size_bytes, time_us / 1e6)
    return {
        "event": "allreduce",
        "source": source,
        "size_bytes": size_bytes,
        "count": count,
        "dtype": dtype,
        "time_us": time_us,
        "algbw_gbps": algbw,
        "busbw_gbps": allreduce_busbw_gbps(algbw, world_size),
        "wrong": wrong,
        "world_size": world_size,
        **extra,
    }


def summary(rows: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    busbw = [row["busbw_gbps"] for row in rows]
    return {
        "event": "allreduce_summary",
        "sizes": len(rows),
        "avg_busbw_gbps": sum(busbw) / len(busbw) if busbw else None,
        "max_busbw_gbps": max(busbw) if busbw else None,
        "max_busbw_size_bytes": rows[busbw.index(max(busbw))]["size_bytes"] if busbw else None,
        "wrong": sum(row["wrong"] or 0 for row in rows),
        **extra,
    }


# --- nccl-tests -----------------------------------------------------------------------------


def parse_nccl_tests(text: str) -> dict[str, Any]:
    """Rows, ranks and trailer of an ``all_reduce_perf`` log, in this module's schema.

    Columns are found by name from the header row, so logs with or without the ``redop`` and
    ``root`` columns parse; the time unit comes from the units row (us, or ms in old releases).
    Lines that are not table rows (NCCL INFO output, MPI noise) are skipped. The reported
    busbw is recomputed from size and time with the all-reduce formula and checked against the
    printed one by the tests; the printed values are kept as ``nccl_tests_*``.
    """
    columns: list[str] | None = None
    time_scale_us = 1.0
    ranks: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    avg_busbw = None
    out_of_bounds = None
    rank_line = re.compile(
        r"^#\s+Rank\s+(\d+)\s+Group\s+\d+\s+Pid\s+\d+\s+on\s+(\S+)\s+device\s+(\d+)\s+\[[^\]]*\]\s+(.+?)\s*$"
    )
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            body = stripped.lstrip("#").split()
            if "size" in body and "count" in body and "type" in body:
                columns = body
            elif columns and body and body[0] == "(B)":
                time_scale_us = 1000.0 if "(ms)" in body else 1.0
            elif match := rank_line.match(stripped):
                ranks.append(
                    {
                        "rank": int(match.group(1)),
                        "host": match.group(2),
                        "device": int(match.group(3)),
                        "name": match.group(4),
                    }
                )
            elif match := re.match(r"^#\s*Avg bus bandwidth\s*:\s*([\d.]+)", stripped):
                avg_busbw = float(match.group(1))
            elif match := re.match(r"^#\s*Out of bounds values\s*:\s*(\d+)", stripped):
                out_of_bounds = int(match.group(1))
            continue
        if columns is None:
            continue
        fields = stripped.split()
        if len(fields) != len(columns) or not fields[0].isdigit():
            continue
        rows.append(_nccl_tests_row(columns, fields, time_scale_us, len(ranks) or None))
    world_size = len(ranks) or None
    return {
        "ranks": ranks,
        "world_size": world_size,
        "rows": rows,
        "avg_busbw_gbps_reported": avg_busbw,
        "out_of_bounds": out_of_bounds,
    }


def _nccl_tests_row(
    columns: list[str], fields: list[str], time_scale_us: float, world_size: int | None
) -> dict[str, Any]:
    def positions(name: str) -> list[int]:
        return [i for i, column in enumerate(columns) if column == name]

    wrong_name = "#wrong" if "#wrong" in columns else "error"
    out_of_place, in_place = (
        {name: fields[positions(name)[which]] for name in ("time", "algbw", "busbw", wrong_name)}
        for which in (0, 1)
    )

    def number(text: str) -> float | None:
        try:
            return float(text)
        except ValueError:  # "N/A" when validation is off
            return None

    def wrong(text: str) -> int | None:
        value = number(text)
        return None if value is None else int(value)

    size = int(fields[positions("size")[0]])
    row = {
        "event": "allreduce",
        "source": "nccl-tests",
        "size_bytes": size,
        "count": int(fields[positions("count")[0]]),
        "dtype": fields[positions("type")[0]],
        "time_us": float(out_of_place["time"]) * time_scale_us,
        "nccl_tests_algbw_gbps": float(out_of_place["algbw"]),
        "nccl_tests_busbw_gbps": float(out_of_place["busbw"]),
        "wrong": wrong(out_of_place[wrong_name]),
        "in_place_time_us": float(in_place["time"]) * time_scale_us,
        "in_place_busbw_gbps": float(in_place["busbw"]),
        "world_size": world_size,
    }
    row["algbw_gbps"] = algbw_gbps(size, row["time_us"] / 1e6)
    row["busbw_gbps"] = (
        allreduce_busbw_gbps(row["algbw_gbps"], world_size)
        if world_size
        else row["nccl_tests_busbw_gbps"]
    )
    return row


def run_nccl_tests(
    binary: str, *, min_bytes: int, max_bytes: int, factor: int, launcher: str, extra: list[str]
) -> str:
    command = [
        *shlex.split(launcher),
        binary,
        "-b",
        str(min_bytes),
        "-e",
        str(max_bytes),
        "-f",
        str(factor),
        *extra,
    ]
    print("running: " + shlex.join(command), file=sys.stderr)
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    sys.stderr.write(result.stderr)
    if result.returncode != 0:
        sys.stderr.write(result.stdout)
        raise SystemExit(f"{binary} exited with {result.returncode}")
    return result.stdout


# --- torch.distributed ------------------------------------------------------------------------


def run_torch(args: argparse.Namespace, out) -> None:
    import torch
    import torch.distributed as torch_dist

    from mlcluster_workloads import dist

    ctx = dist.init(args.backend, args.device)
    try:
        dtype = getattr(torch, args.dtype)
        element = torch.empty((), dtype=dtype).element_size()
        rows = []
        for size in message_sizes(args.min_bytes, args.max_bytes, args.factor):
            count = max(1, size // element)
            # Every rank contributes ones: the sum, the world size, is exact in every dtype
            # offered, and a rank left out of the reduction shows as a wrong element.
            buffer = torch.ones((count,), dtype=dtype, device=ctx.device)
            torch_dist.all_reduce(buffer)
            if ctx.rank == args.corrupt_rank:  # test-only: one bad element the check must count
                buffer[0] += 1
            wrong = int((buffer != ctx.world_size).sum().item())
            buffer.zero_()  # sums of zeros cannot overflow however many iterations run
            for _ in range(args.warmup_iters):
                torch_dist.all_reduce(buffer)
            dist.synchronize(ctx.device)
            torch_dist.barrier()
            started = time.perf_counter()
            for _ in range(args.iters):
                torch_dist.all_reduce(buffer)
            dist.synchronize(ctx.device)
            elapsed = (time.perf_counter() - started) / args.iters
            # The slowest rank's time is the collective's time.
            slowest = torch.tensor([elapsed], dtype=torch.float64, device=ctx.device)
            torch_dist.all_reduce(slowest, op=torch_dist.ReduceOp.MAX)
            total_wrong = torch.tensor([wrong], dtype=torch.int64, device=ctx.device)
            torch_dist.all_reduce(total_wrong)
            row = measurement(
                source="torch",
                size_bytes=count * element,
                count=count,
                dtype=args.dtype,
                time_us=slowest.item() * 1e6,
                world_size=ctx.world_size,
                wrong=int(total_wrong.item()),
                backend=ctx.backend,
            )
            rows.append(row)
            if ctx.is_main:
                out.write(json.dumps(row) + "\n")
        if ctx.is_main:
            out.write(
                json.dumps(
                    summary(rows, source="torch", backend=ctx.backend, device=str(ctx.device))
                )
                + "\n"
            )
    finally:
        dist.shutdown()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m mlcluster_workloads.allreduce",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--nccl-tests", action="store_true", help="run all_reduce_perf instead")
    source.add_argument("--parse", metavar="LOG", help="convert a saved all_reduce_perf log")
    parser.add_argument("--nccl-tests-bin", default="all_reduce_perf")
    parser.add_argument(
        "--launcher", default="", help="prefix for all_reduce_perf, e.g. 'srun --mpi=pmix'"
    )
    parser.add_argument("--min-bytes", type=parse_size, default=parse_size("1K"))
    parser.add_argument("--max-bytes", type=parse_size, default=parse_size("64M"))
    parser.add_argument("--factor", type=int, default=2)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup-iters", type=int, default=5)
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    parser.add_argument("--backend", choices=("auto", "gloo", "nccl"), default="auto")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument(
        "--corrupt-rank",
        type=int,
        default=None,
        metavar="RANK",
        help="for testing the check: this rank spoils one element of every reduced buffer, so "
        "each size must report wrong = 1",
    )
    parser.add_argument("extra", nargs="*", help="after --: more all_reduce_perf arguments")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out = metrics.json_stream()
    if args.parse or args.nccl_tests:
        if args.parse:
            with open(args.parse) as log:
                text = log.read()
        else:
            binary = shutil.which(args.nccl_tests_bin)
            if binary is None:
                raise SystemExit(
                    f"{args.nccl_tests_bin} is not on PATH: build nccl-tests or pass "
                    "--nccl-tests-bin"
                )
            text = run_nccl_tests(
                binary,
                min_bytes=args.min_bytes,
                max_bytes=args.max_bytes,
                factor=args.factor,
                launcher=args.launcher,
                extra=args.extra,
            )
        parsed = parse_nccl_tests(text)
        if not parsed["rows"]:
            raise SystemExit("no all_reduce_perf table rows found in the output")
        for row in parsed["rows"]:
            out.write(json.dumps(row) + "\n")
        out.write(
            json.dumps(
                summary(
                    parsed["rows"],
                    source="nccl-tests",
                    avg_busbw_gbps_reported=parsed["avg_busbw_gbps_reported"],
                    out_of_bounds=parsed["out_of_bounds"],
                    ranks=parsed["ranks"],
                )
            )
            + "\n"
        )
        return
    run_torch(args, out)


if __name__ == "__main__":
    main()
