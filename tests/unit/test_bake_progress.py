"""The image bake says which step it is at while packer runs (it takes minutes)."""

from __future__ import annotations

import os
import sys

from mlcluster.images import _run_logged

SCRIPT = (
    "print('==> docker.node: Creating a temporary directory for sharing data...');"
    "print('    docker.node: TASK [common : Install the baseline packages] ****');"
    "print('    docker.node: ok: [default]');"
    "print('    docker.node: TASK [slurm : Install the Slurm packages] ****');"
    "raise SystemExit(3)"
)


def test_every_step_is_said_and_the_whole_output_logged(tmp_path):
    said = []
    log = tmp_path / "packer.log"
    rc = _run_logged(
        [sys.executable, "-c", SCRIPT], tmp_path, dict(os.environ), log, said.append, 0
    )
    assert rc == 3
    steps = [line.split("] ", 1)[1] for line in said]
    assert steps == [
        "docker.node: Creating a temporary directory for sharing data...",
        "common : Install the baseline packages",
        "slurm : Install the Slurm packages",
    ]
    assert log.read_text().count("\n") == 4


def test_steps_closer_together_than_the_interval_are_said_once(tmp_path):
    said = []
    log = tmp_path / "packer.log"
    _run_logged([sys.executable, "-c", SCRIPT], tmp_path, dict(os.environ), log, said.append, 60)
    assert len(said) == 1 and said[0].endswith("Creating a temporary directory for sharing data...")
