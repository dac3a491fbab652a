"""Edges of mlcluster_workloads.metrics that the workloads' tests leave open, found by
mutation testing: the peak memory figure and the stream the JSON lines go to."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
