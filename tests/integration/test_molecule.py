"""The repository's molecule scenario (molecule/default): check, converge, idempotence, verify
on a local cluster of its own, run the way a developer runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_molecule_default_scenario():
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    # molecule.yml reads the cluster's inventory from the checkout's .mlcluster, where
    # create.yml's `mlcluster local up --name molecule` writes it without MLCLUSTER_STATE.
    env.pop("MLCLUSTER_STATE", None)
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "molecule"), "test", "--scenario-name", "default"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    # The sequence really ran its idempotence and verify steps.
    assert "idempotence" in output and "verify" in output
