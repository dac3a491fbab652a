"""The installed package carries what its commands need outside a checkout."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHECKS = ["conftest.py", "test_fabric_node.py", "test_gpu_node.py", "test_slurm_node.py"]


def test_validate_runs_the_node_checks_from_an_installed_wheel(tmp_path):
    # Build from a copy, so the checkout gets no build/ directory.
    src = tmp_path / "src"
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(wheels), str(src)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    (wheel,) = wheels.glob("mlcluster-*.whl")
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    assert sorted(p.name for p in (site / "mlcluster" / "nodechecks").glob("*.py")) == sorted(
        ["__init__.py", *CHECKS]
    )
    # From the unpacked wheel alone (no checkout on the path, run elsewhere), validate finds
    # its checks inside the package and pytest collects them.
    probe = (
        "import sys, pytest, mlcluster.validate as v;"
        "print(v.NODE_CHECKS);"
        "sys.exit(pytest.main([str(v.NODE_CHECKS), '--collect-only', '-q', '-p',"
        " 'no:cacheprovider', '--rootdir', str(v.NODE_CHECKS), '-o', 'addopts=',"
        " '--hosts=local://']))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == str(site / "mlcluster" / "nodechecks")
    collected = {line.split("::")[0].rsplit("/", 1)[-1] for line in lines if "::" in line}
    assert collected == {"test_fabric_node.py", "test_gpu_node.py", "test_slurm_node.py"}
