from __future__ import annotations

import stat
import sys
import time

import pytest
from mlcluster_workloads import allreduce
from workload_helpers import FIXTURES, json_lines, launch_ranks, only, run

SAMPLE = FIXTURES / "nccl_tests_all_reduce_2x8.txt"


@pytest.mark.parametrize(
    ("world_size", "factor"), [(1, 0.0), (2, 1.0), (4, 1.5), (8, 1.75), (16, 1.875)]
)
def test_busbw_is_algbw_times_2_n_minus_1_over_n(world_size, factor):
    assert allreduce.allreduce_busbw_gbps(100.0, world_size) == pytest.approx(100.0 * factor)


def test_algbw_is_bytes_per_second_in_1e9():
    # 1 GiB in 4323.4 us, as in the sample's 1073741824-byte row: 248.35 GB/s
    assert allreduce.algbw_gbps(2**30, 4323.4e-6) == pytest.approx(248.35, abs=0.01)


def test_sizes():
    assert allreduce.parse_size("8") == 8
    assert allreduce.parse_size("256K") == 262144
    assert allreduce.parse_size("1g") == 2**30
    assert allreduce.message_sizes(8, 100, 2) == [8, 16, 32, 64]
    assert allreduce.message_sizes(1024, 1024 * 64, 4) == [1024, 4096, 16384, 65536]


def test_parse_sample_log():
    parsed = allreduce.parse_nccl_tests(SAMPLE.read_text())
    assert parsed["world_size"] == 16
    assert parsed["ranks"][8] == {
        "rank": 8,
        "host": "p5-node-2",
        "device": 0,
        "name": "NVIDIA H100 80GB HBM3",
    }
    rows = parsed["rows"]
    assert len(rows) == 32  # 8 B .. 16 GiB by factor 2; the NCCL INFO line is skipped
    assert [r["size_bytes"] for r in rows] == [8 * 2**i for i in range(32)]
    first, gib = rows[0], rows[27]
    assert (first["count"], first["dtype"], first["time_us"]) == (2, "float", 62.0)
    assert first["wrong"] == 0 and first["in_place_time_us"] == 62.25
    assert gib["size_bytes"] == 2**30 and gib["time_us"] == 4323.4
    assert gib["nccl_tests_busbw_gbps"] == 465.67
    # busbw recomputed from size and time agrees with what all_reduce_perf printed, within the
    # rounding of the printed time (at least 4 significant digits) and bandwidth (2 decimals)
    for row in rows:
        printed = row["nccl_tests_busbw_gbps"]
        assert row["busbw_gbps"] == pytest.approx(printed, rel=5e-4, abs=0.006)
    assert parsed["avg_busbw_gbps_reported"] == 157.6847
    assert parsed["out_of_bounds"] == 0


OLD_FORMAT = """\
#                                                 out-of-place                    in-place
#       size         count    type     time   algbw   busbw  error     time   algbw   busbw  error
#        (B)    (elements)             (ms)  (GB/s)  (GB/s)            (ms)  (GB/s)  (GB/s)
     1048576        262144   float    0.050   20.97   31.46  2e-07    0.049   21.40   32.10  2e-07
"""


def test_parse_an_old_log_without_redop_root_and_in_milliseconds():
    (row,) = allreduce.parse_nccl_tests(OLD_FORMAT)["rows"]
    assert row["time_us"] == pytest.approx(50.0)
    assert row["wrong"] == 0  # int(2e-07): the old "error" column is a max error, not a count
    assert row["busbw_gbps"] == 31.46  # no rank lines: the printed busbw is kept


def test_parse_cli_prints_the_rows_as_json(tmp_path):
    result = run([sys.executable, "-m", "mlcluster_workloads.allreduce", "--parse", str(SAMPLE)])
    records = json_lines(result.stdout)
    assert sum(r["event"] == "allreduce" for r in records) == 32
    summary = only(records, "allreduce_summary")
    assert summary["source"] == "nccl-tests" and summary["wrong"] == 0
    assert summary["max_busbw_size_bytes"] == 8 * 2**30


def test_nccl_tests_wrapper_runs_the_binary_with_the_size_flags(tmp_path):
    fake = tmp_path / "all_reduce_perf"
    fake.write_text(f'#!/bin/sh\necho "$@" > {tmp_path / "argv"}\ncat {SAMPLE}\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    result = run(
        [
            sys.executable,
            "-m",
            "mlcluster_workloads.allreduce",
            "--nccl-tests",
            "--nccl-tests-bin",
            str(fake),
            "--min-bytes",
            "8",
            "--max-bytes",
            "16G",
            "--",
            "-g",
            "1",
        ]
    )
    assert (tmp_path / "argv").read_text().split() == [
        "-b",
        "8",
        "-e",
        str(16 * 2**30),
        "-f",
        "2",
        "-g",
        "1",
    ]
    assert len(json_lines(result.stdout)) == 33


SMALL_SWEEP = ["-m", "mlcluster_workloads.allreduce", "--min-bytes", "4K", "--max-bytes", "64K"]
SMALL_SWEEP += ["--iters", "3", "--warmup-iters", "1"]


def test_torch_gloo_two_ranks():
    # factor 8 from 2 bytes: a size below one float32 still reduces one element (4 bytes)
    args = ["-m", "mlcluster_workloads.allreduce", "--min-bytes", "2", "--max-bytes", "32K"]
    args += ["--factor", "8", "--iters", "500", "--warmup-iters", "1"]
    started = time.monotonic()
    records = json_lines(launch_ranks(*args).stdout)
    wall_s = time.monotonic() - started
    rows = [r for r in records if r["event"] == "allreduce"]
    assert [(r["size_bytes"], r["count"]) for r in rows] == [
        (4, 1),
        (16, 4),
        (128, 32),
        (1024, 256),
        (8192, 2048),
    ]
    for row in rows:
        assert row["wrong"] == 0 and row["world_size"] == 2 and row["backend"] == "gloo"
        assert row["busbw_gbps"] == pytest.approx(row["algbw_gbps"])  # 2(n-1)/n = 1 at n = 2
        # in microseconds: no collective between processes completes in under 10 ns (one
        # system call takes longer); seconds converted the wrong way round give about 1e-10
        assert row["time_us"] > 0.01
    # time_us is the time of one all-reduce: the 500 timed ones of every size fit in the
    # processes' whole run (not a speed target: bounds that hold on any machine; a time
    # summed over the iterations instead of averaged would be 500 times too long)
    assert sum(500 * row["time_us"] * 1e-6 for row in rows) < wall_s
    summary = only(records, "allreduce_summary")
    assert (summary["sizes"], summary["wrong"], summary["source"]) == (5, 0, "torch")


# nccl-tests' ring factor 2(n-1)/n, by hand: 6/4 at 4 ranks, 14/8 at 8. At 4 ranks, rank 3 spoils
# one element of every reduced buffer: its count must reach rank 0's report (summed over ranks).
@pytest.mark.parametrize(
    ("world_size", "ring_factor", "corrupt", "wrong"),
    [(4, 1.5, ["--corrupt-rank", "3"], 1), (8, 1.75, [], 0)],
    ids=["4-ranks-rank-3-corrupt", "8-ranks"],
)
def test_busbw_and_the_wrong_count_at_more_ranks(world_size, ring_factor, corrupt, wrong):
    # the last flags win: 3 sizes, enough for the formula, cheap at 8 ranks; the first buffer
    # holds one element, the one the corrupt rank spoils
    sweep = ["--min-bytes", "4", "--max-bytes", "16K", "--factor", "64"]
    result = launch_ranks(*SMALL_SWEEP, *sweep, *corrupt, nproc=world_size, timeout=180)
    records = json_lines(result.stdout)
    rows = [r for r in records if r["event"] == "allreduce"]
    assert [(r["size_bytes"], r["count"]) for r in rows] == [(4, 1), (256, 64), (16384, 4096)]
    for row in rows:
        assert (row["world_size"], row["wrong"]) == (world_size, wrong)
        algbw = row["size_bytes"] / (row["time_us"] * 1e-6) / 1e9
        assert row["algbw_gbps"] == pytest.approx(algbw, rel=1e-9)
        assert row["busbw_gbps"] == pytest.approx(algbw * ring_factor, rel=1e-9)
    summary = only(records, "allreduce_summary")
    busbw = [row["busbw_gbps"] for row in rows]
    assert summary["avg_busbw_gbps"] == pytest.approx(sum(busbw) / 3)
    assert summary["max_busbw_gbps"] == max(busbw)
    assert summary["wrong"] == 3 * wrong
