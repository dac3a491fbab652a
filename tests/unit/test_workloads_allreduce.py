"""mlcluster_workloads.allreduce without torch: sizes and the sweep's bounds, the bandwidth
formulas, measurements and summaries, all_reduce_perf logs (microseconds, milliseconds, a
missing units row, a truncated row) and the --parse / --nccl-tests command line, with
expectations worked out by hand. Mutation testing (scripts/mutate.py allreduce) found each of
these open or covered only by the slow torch tests in tests/workloads/test_allreduce.py."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from mlcluster_workloads import allreduce
from mlcluster_workloads.allreduce import message_sizes, parse_size


@pytest.mark.parametrize(
    ("min_bytes", "max_bytes", "factor"), [(8, 64, 1), (0, 64, 2), (64, 8, 2), (-8, 8, 2)]
)
def test_each_bad_bound_alone_is_rejected(min_bytes, max_bytes, factor):
    with pytest.raises(ValueError, match="need 1 <= min_bytes <= max_bytes and factor >= 2"):
        message_sizes(min_bytes, max_bytes, factor)


def test_the_sweep_ends_at_the_largest_size_within_max():
    assert message_sizes(8, 64, 2) == [8, 16, 32, 64]
    assert message_sizes(8, 63, 2) == [8, 16, 32]
    assert message_sizes(1, 1, 2) == [1]
    assert message_sizes(1, 100, 10) == [1, 10, 100]


@pytest.mark.parametrize(("text", "size"), [("8", 8), ("256K", 262144), ("128m", 134217728)])
def test_sizes_are_powers_of_1024(text, size):
    assert parse_size(text) == size


def test_a_size_that_is_not_one_says_what_is_expected():
    with pytest.raises(argparse.ArgumentTypeError, match=r"not a size: '1T' \(e\.g\. 8, 256K"):
        parse_size("1T")
    assert parse_size(" 2G ") == 2 * 2**30


def test_bandwidths_by_hand():
    # 3e9 bytes in 1.5 s: 2 GB/s; the ring factor 2(n-1)/n: 0 at 1 rank, 3/2 at 4, 7/4 at 8
    assert allreduce.algbw_gbps(3 * 10**9, 1.5) == 2.0
    assert [allreduce.allreduce_busbw_gbps(8.0, n) for n in (1, 2, 4, 8)] == [0.0, 8.0, 12.0, 14.0]


def test_a_measurement_by_hand():
    row = allreduce.measurement(
        source="torch",
        size_bytes=4000,
        count=1000,
        dtype="float32",
        time_us=2.0,
        world_size=4,
        wrong=1,
        backend="gloo",
    )
    # 4000 bytes in 2 us: 2 GB/s; busbw 2 * 3/2 at 4 ranks
    assert row == {
        "event": "allreduce",
        "source": "torch",
        "size_bytes": 4000,
        "count": 1000,
        "dtype": "float32",
        "time_us": 2.0,
        "algbw_gbps": pytest.approx(2.0, rel=1e-12),
        "busbw_gbps": pytest.approx(3.0, rel=1e-12),
        "wrong": 1,
        "world_size": 4,
        "backend": "gloo",
    }


def test_summary_by_hand():
    rows = [
        {"size_bytes": 10, "busbw_gbps": 1.0, "wrong": 0},
        {"size_bytes": 20, "busbw_gbps": 3.5, "wrong": None},  # validation off: N/A
        {"size_bytes": 30, "busbw_gbps": 1.5, "wrong": 2},
    ]
    assert allreduce.summary(rows, source="x") == {
        "event": "allreduce_summary",
        "sizes": 3,
        "avg_busbw_gbps": 2.0,
        "max_busbw_gbps": 3.5,
        "max_busbw_size_bytes": 20,
        "wrong": 2,
        "source": "x",
    }
    assert allreduce.summary([]) == {
        "event": "allreduce_summary",
        "sizes": 0,
        "avg_busbw_gbps": None,
        "max_busbw_gbps": None,
        "max_busbw_size_bytes": None,
        "wrong": 0,
    }


def test_cli_defaults():
    args = allreduce.parse_args([])
    assert vars(args) == {
        "nccl_tests": False,
        "parse": None,
        "nccl_tests_bin": "all_reduce_perf",
        "launcher": "",
        "min_bytes": 1024,
        "max_bytes": 64 * 2**20,
        "factor": 2,
        "iters": 20,
        "warmup_iters": 5,
        "dtype": "float32",
        "backend": "auto",
        "device": "auto",
        "corrupt_rank": None,
        "extra": [],
    }


# --- all_reduce_perf logs, written out by hand -------------------------------------------------
# The current format (redop, root, #wrong; times in us) from 4 ranks on two hosts, with NCCL's
# own lines where they turn up in real logs: before the table and between its rows.

HEADER = """\
# nThread 1 nGpus 1 minBytes 1048576 maxBytes 2097152 step: 2(factor) warmup iters: 5 iters: 20 agg iters: 1 validation: 1 graph: 0
#
# Using devices
#  Rank  0 Group  0 Pid   1000 on     node-a device  0 [0x53] NVIDIA H100 80GB HBM3
#  Rank  1 Group  0 Pid   1001 on     node-a device  1 [0x64] NVIDIA H100 80GB HBM3
#  Rank  2 Group  0 Pid   2000 on     node-b device  0 [0x53] NVIDIA A100-SXM4-80GB
#  Rank  3 Group  0 Pid   2001 on     node-b device  3 [0x64] NVIDIA A100-SXM4-80GB
node-a:1000:1000 [0] NCCL INFO Bootstrap : Using eth0:10.0.0.1<0>
#
#                                                              out-of-place                       in-place
#       size         count      type   redop    root     time   algbw   busbw #wrong     time   algbw   busbw #wrong
"""  # noqa: E501
UNITS_US = "#        (B)    (elements)                               (us)  (GB/s)  (GB/s)            (us)  (GB/s)  (GB/s)\n"  # noqa: E501
ROWS = """\
     1048576        262144     float     sum      -1   100.00   10.49   15.73      0   125.00    8.39   12.58      0
node-a:1000:1100 [0] NCCL INFO comm 0x1 rank 0 nranks 4 cudaDev 0 busId 53000 - Init COMPLETE
     2097152        524288     float     sum      -1   250.00    8.39   12.58      3   200.00   10.49   15.73    N/A
"""  # noqa: E501
TRAILER = """\
# Out of bounds values : 3 FAILED
# Avg bus bandwidth    : 14.155
#
"""
US_LOG = HEADER + UNITS_US + ROWS + TRAILER

# 1 MiB in 100 us: 10.48576 GB/s, busbw x 3/2 at 4 ranks; 2 MiB in 250 us: 8.388608 GB/s
US_ROWS = [
    {
        "event": "allreduce",
        "source": "nccl-tests",
        "size_bytes": 1048576,
        "count": 262144,
        "dtype": "float",
        "time_us": 100.0,
        "nccl_tests_algbw_gbps": 10.49,
        "nccl_tests_busbw_gbps": 15.73,
        "wrong": 0,
        "in_place_time_us": 125.0,
        "in_place_busbw_gbps": 12.58,
        "world_size": 4,
        "algbw_gbps": pytest.approx(10.48576, rel=1e-9),
        "busbw_gbps": pytest.approx(15.72864, rel=1e-9),
    },
    {
        "event": "allreduce",
        "source": "nccl-tests",
        "size_bytes": 2097152,
        "count": 524288,
        "dtype": "float",
        "time_us": 250.0,
        "nccl_tests_algbw_gbps": 8.39,
        "nccl_tests_busbw_gbps": 12.58,
        "wrong": 3,
        "in_place_time_us": 200.0,
        "in_place_busbw_gbps": 15.73,
        "world_size": 4,
        "algbw_gbps": pytest.approx(8.388608, rel=1e-9),
        "busbw_gbps": pytest.approx(12.582912, rel=1e-9),
    },
]
RANKS = [
    {"rank": 0, "host": "node-a", "device": 0, "name": "NVIDIA H100 80GB HBM3"},
    {"rank": 1, "host": "node-a", "device": 1, "name": "NVIDIA H100 80GB HBM3"},
    {"rank": 2, "host": "node-b", "device": 0, "name": "NVIDIA A100-SXM4-80GB"},
    {"rank": 3, "host": "node-b", "device": 3, "name": "NVIDIA A100-SXM4-80GB"},
]


def test_parse_a_log_in_microseconds():
    assert allreduce.parse_nccl_tests(US_LOG) == {
        "ranks": RANKS,
        "world_size": 4,
        "rows": US_ROWS,
        "avg_busbw_gbps_reported": 14.155,
        "out_of_bounds": 3,
    }


def test_a_log_without_its_units_row_is_read_in_microseconds():
    # the unit of every current release; the units row may be cut from a pasted excerpt
    parsed = allreduce.parse_nccl_tests(HEADER + ROWS)
    assert [(r["time_us"], r["in_place_time_us"]) for r in parsed["rows"]] == [
        (100.0, 125.0),
        (250.0, 200.0),
    ]


def test_a_truncated_last_row_is_left_out():
    # a job killed while all_reduce_perf printed: no trailer, a row cut short
    cut = HEADER + UNITS_US + ROWS + "     4194304       1048576     float     sum      -1   41"
    parsed = allreduce.parse_nccl_tests(cut)
    assert parsed["rows"] == US_ROWS
    assert (parsed["avg_busbw_gbps_reported"], parsed["out_of_bounds"]) == (None, None)


MS_LOG = """\
#                                                 out-of-place                    in-place
#       size         count    type     time   algbw   busbw  error     time   algbw   busbw  error
#        (B)    (elements)             (ms)  (GB/s)  (GB/s)            (ms)  (GB/s)  (GB/s)
     1048576        262144   float    0.050   20.97   31.46  2e-07    0.040   26.21   39.32  N/A
[ip-10-0-0-1:12345] 7 more processes have sent help message help-mpi-btl-base.txt / btl:no-nics
"""


def test_parse_an_old_log_in_milliseconds_without_ranks():
    # run under mpirun: Open MPI's aggregated help message has as many fields as the old table
    # and a number second, but it is not a row
    (row,) = allreduce.parse_nccl_tests(MS_LOG)["rows"]
    # 0.050 ms = 50 us: 1048576 B / 50e-6 s = 20.97152 GB/s; no rank lines, so no ring factor:
    # the printed busbw is kept
    assert row == {
        "event": "allreduce",
        "source": "nccl-tests",
        "size_bytes": 1048576,
        "count": 262144,
        "dtype": "float",
        "time_us": pytest.approx(50.0, rel=1e-12),
        "nccl_tests_algbw_gbps": 20.97,
        "nccl_tests_busbw_gbps": 31.46,
        "wrong": 0,  # int(2e-07): the old "error" column is a max error, not a count
        "in_place_time_us": pytest.approx(40.0, rel=1e-12),
        "in_place_busbw_gbps": 39.32,
        "world_size": None,
        "algbw_gbps": pytest.approx(20.97152, rel=1e-9),
        "busbw_gbps": 31.46,
    }


# --- the command line, as a process: its stdout holds only the JSON lines ------------------------


def _cli(*args: str, path: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": path} if path is not None else None
    command = [sys.executable, "-m", "mlcluster_workloads.allreduce", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)


def _summary_of_the_us_log(**extra):
    return {
        "event": "allreduce_summary",
        "sizes": 2,
        "avg_busbw_gbps": pytest.approx((15.72864 + 12.582912) / 2, rel=1e-9),
        "max_busbw_gbps": pytest.approx(15.72864, rel=1e-9),
        "max_busbw_size_bytes": 1048576,
        "wrong": 3,
        "source": "nccl-tests",
        "avg_busbw_gbps_reported": 14.155,
        "out_of_bounds": 3,
        "ranks": RANKS,
        **extra,
    }


def test_parse_cli_writes_each_row_and_the_summary(tmp_path):
    log = tmp_path / "all_reduce_perf.log"
    log.write_text(US_LOG)
    proc = _cli("--parse", str(log))
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout.endswith("\n")
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert records == [*US_ROWS, _summary_of_the_us_log()]


def test_parse_cli_refuses_a_log_without_rows(tmp_path):
    log = tmp_path / "empty.log"
    log.write_text(HEADER + UNITS_US + TRAILER)
    proc = _cli("--parse", str(log))
    assert (proc.returncode, proc.stdout) == (1, "")
    assert (
        proc.stderr.strip().splitlines()[-1] == "no all_reduce_perf table rows found in the output"
    )


def _fake_binary(tmp_path: Path, body: str) -> Path:
    fake = tmp_path / "bin" / "all_reduce_perf"
    fake.parent.mkdir(exist_ok=True)
    fake.write_text("#!/bin/sh\n" + body)
    fake.chmod(0o755)
    return fake


def test_nccl_tests_cli_runs_the_binary_found_on_path(tmp_path):
    log = tmp_path / "out.log"
    log.write_text(US_LOG)
    fake = _fake_binary(tmp_path, f'echo "$LAUNCHED $*" >&2\ncat {log}\n')
    proc = _cli(
        "--nccl-tests",
        "--launcher",
        "env LAUNCHED=yes",
        "--min-bytes",
        "1M",
        "--max-bytes",
        "2M",
        "--",
        "-g",
        "1",
        path=f"{fake.parent}:{os.environ['PATH']}",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [
        f"running: env LAUNCHED=yes {fake} -b 1048576 -e 2097152 -f 2 -g 1",
        "yes -b 1048576 -e 2097152 -f 2 -g 1",
    ]
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert records == [*US_ROWS, _summary_of_the_us_log()]


def test_nccl_tests_cli_without_the_binary_says_so(tmp_path):
    proc = _cli("--nccl-tests", "--nccl-tests-bin", "no-such-all_reduce_perf")
    assert (proc.returncode, proc.stdout) == (1, "")
    assert proc.stderr.strip().splitlines()[-1] == (
        "no-such-all_reduce_perf is not on PATH: build nccl-tests or pass --nccl-tests-bin"
    )


def test_a_failing_binary_stops_the_run_with_its_exit_status(tmp_path, capsys):
    fake = _fake_binary(tmp_path, "echo partial table\necho NCCL WARN failed >&2\nexit 3\n")
    with pytest.raises(SystemExit, match=rf"^{re.escape(str(fake))} exited with 3$"):
        allreduce.run_nccl_tests(
            str(fake), min_bytes=8, max_bytes=64, factor=4, launcher="", extra=[]
        )
    # what the binary printed goes to stderr, for the job's log
    assert capsys.readouterr().err.splitlines() == [
        f"running: {fake} -b 8 -e 64 -f 4",
        "NCCL WARN failed",
        "partial table",
    ]


def test_a_binary_that_succeeds_returns_its_stdout(tmp_path, capsys):
    fake = _fake_binary(tmp_path, 'echo "table $*"\n')
    out = allreduce.run_nccl_tests(
        str(fake), min_bytes=8, max_bytes=64, factor=4, launcher="", extra=["-g", "2"]
    )
    assert out == "table -b 8 -e 64 -f 4 -g 2\n"
    assert capsys.readouterr().err == f"running: {fake} -b 8 -e 64 -f 4 -g 2\n"
