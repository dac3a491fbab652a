"""The installed packages carry what their commands need outside a checkout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHECKS = ["conftest.py", "test_fabric_node.py", "test_gpu_node.py", "test_slurm_node.py"]
# The image manifest's and the workloads' version report's one prober of the node: the
# workloads package carries the collection's file (a symlink), as its nodes have no collection.
PARSERS = Path("collections/ansible_collections/mlcluster/core/plugins/module_utils/parsers.py")
WORKLOADS_PARSERS = Path("workloads/src/mlcluster_workloads/parsers.py")


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


def test_the_workloads_parsers_are_the_collections_file():
    link = ROOT / WORKLOADS_PARSERS
    assert link.is_symlink(), f"{WORKLOADS_PARSERS} must be a symlink to {PARSERS}, not a copy"
    # Relative, so that it holds in any checkout or copy of the tree.
    assert not os.path.isabs(os.readlink(link))
    assert link.resolve() == (ROOT / PARSERS).resolve()
    import mlcluster_workloads.parsers

    assert Path(mlcluster_workloads.parsers.__file__).resolve() == (ROOT / PARSERS).resolve()


def test_the_workloads_wheel_carries_the_parsers_and_reports_from_them(tmp_path):
    # A copy of the two files' part of the tree that keeps the symlink, so that pip builds
    # from a link as it does in a checkout (roles/workloads' wheelhouse), outside the checkout.
    tree = tmp_path / "tree"
    shutil.copytree(
        ROOT / "workloads",
        tree / "workloads",
        symlinks=True,
        ignore=shutil.ignore_patterns("*.egg-info", "build", "__pycache__"),
    )
    (tree / PARSERS).parent.mkdir(parents=True)
    shutil.copy(ROOT / PARSERS, tree / PARSERS)
    assert (tree / WORKLOADS_PARSERS).is_symlink()
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(wheels), str(tree / "workloads")],
        check=True,
        capture_output=True,
    )  # fmt: skip
    (wheel,) = wheels.glob("mlcluster_workloads-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read("mlcluster_workloads/parsers.py") == (ROOT / PARSERS).read_bytes()
        archive.extractall(tmp_path / "site")
    # From the unpacked wheel alone, without site-packages (a node has neither the collection
    # nor Ansible): the version report reads a driver version through the shared parser.
    node = tmp_path / "node"
    (node / "proc/driver/nvidia").mkdir(parents=True)
    (node / "proc/driver/nvidia/version").write_text(
        "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.95.05  Release Build\n"
    )
    probe = (
        "import sys, json, pathlib, mlcluster_workloads.parsers as p, mlcluster_workloads.versions"
        " as v, mlcluster_workloads.probe as h;"
        "print(p.__file__);"
        "print(json.dumps(v.nvidia_driver(h.Host(root=pathlib.Path(sys.argv[1])))))"
    )
    proc = subprocess.run(
        [sys.executable, "-S", "-c", probe, str(node)],
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    location, report = proc.stdout.splitlines()
    assert location == str(tmp_path / "site" / "mlcluster_workloads" / "parsers.py")
    assert json.loads(report) == {
        "status": "present",
        "version": "580.95.05",
        "source": "/proc/driver/nvidia/version",
    }
