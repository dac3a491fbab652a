"""The wheelhouse module's input digest: what makes it rebuild, and what must not."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import zipfile

import pytest

from mlcluster.paths import load_plugin, project_root

wheelhouse = load_plugin("modules", "wheelhouse")


def make_project(root):
    (root / "src" / "pkg").mkdir(parents=True)
    (root / "pyproject.toml").write_text('[project]\nname = "pkg"\nversion = "0.1"\n')
    (root / "src" / "pkg" / "__init__.py").write_text("VALUE = 1\n")
    return root


def test_build_output_does_not_change_the_digest(tmp_path):
    # A fresh clone's first wheel build writes build/ and *.egg-info into the source tree; had
    # they counted, the second deploy would rebuild and reinstall the wheel (changed != 0).
    source = make_project(tmp_path / "proj")
    before = wheelhouse.inputs_digest(["numpy==2.0.0"], [str(source)])
    (source / "build" / "lib" / "pkg").mkdir(parents=True)
    (source / "build" / "lib" / "pkg" / "__init__.py").write_text("VALUE = 1\n")
    (source / "src" / "pkg.egg-info").mkdir()
    (source / "src" / "pkg.egg-info" / "PKG-INFO").write_text("Name: pkg\n")
    (source / "src" / "pkg" / "__pycache__").mkdir()
    (source / "src" / "pkg" / "__pycache__" / "x.pyc").write_bytes(b"\0")
    assert wheelhouse.inputs_digest(["numpy==2.0.0"], [str(source)]) == before


def test_sources_and_requirements_change_the_digest(tmp_path):
    source = make_project(tmp_path / "proj")
    before = wheelhouse.inputs_digest(["numpy==2.0.0"], [str(source)])
    assert wheelhouse.inputs_digest(["numpy==2.1.0"], [str(source)]) != before
    (source / "src" / "pkg" / "__init__.py").write_text("VALUE = 2\n")
    assert wheelhouse.inputs_digest(["numpy==2.0.0"], [str(source)]) != before


# --- The hash lock, with real pip on wheels made here (no index: --no-index everywhere). ---


def make_wheel(directory, name, version, requires=(), body="VALUE = 1\n"):
    """A minimal pure-Python wheel, with a RECORD that matches its files."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": body,
        f"{dist}/METADATA": "Metadata-Version: 2.1\n"
        f"Name: {name}\nVersion: {version}\n" + "".join(f"Requires-Dist: {r}\n" for r in requires),
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: mlcluster-tests\n"
        "Root-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        raw = hashlib.sha256(text.encode()).digest()
        digest = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = "\n".join(record) + "\n"
    wheel = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


def run_module(args):
    env = {**os.environ, "PYTHONPATH": str(project_root() / "collections")}
    module = project_root() / "collections/ansible_collections/mlcluster/core/plugins/modules"
    module = module / "wheelhouse.py"
    args_file = args["path"] + ".args.json"
    with open(args_file, "w") as handle:
        json.dump({"ANSIBLE_MODULE_ARGS": args}, handle)
    done = subprocess.run(
        [sys.executable, str(module), args_file], capture_output=True, text=True, env=env
    )
    return json.loads(done.stdout)


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def index(tmp_path):
    """A find-links directory standing in for the package index: alpha needs beta."""
    index = tmp_path / "index"
    index.mkdir()
    make_wheel(index, "alpha", "1.0", requires=["beta>=2"])
    make_wheel(index, "beta", "2.1")
    make_wheel(index, "beta", "1.0")
    return index


def fill(tmp_path, index):
    return run_module(
        {
            "path": str(tmp_path / "wheelhouse"),
            "requirements": ["alpha==1.0"],
            "pip_args": f"--no-index --find-links {index}",
            "python": sys.executable,
        }
    )


def pip_install_locked(tmp_path):
    wheelhouse = tmp_path / "wheelhouse"
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--require-hashes",
            "--no-index",
            "--find-links",
            str(wheelhouse),
            "-r",
            str(wheelhouse / "requirements.lock"),
            "--target",
            str(tmp_path / "target"),
        ],
        capture_output=True,
        text=True,
    )


def test_the_lock_pins_every_resolved_wheel_by_its_sha256(tmp_path, index):
    result = fill(tmp_path, index)
    wheelhouse = tmp_path / "wheelhouse"
    assert result["changed"] is True, result
    # The dependency is resolved (beta 2.1, not the 1.0 beside it) and pinned by the file's hash.
    assert result["locked"] == [
        f"alpha==1.0 --hash=sha256:{sha256(wheelhouse / 'alpha-1.0-py3-none-any.whl')}",
        f"beta==2.1 --hash=sha256:{sha256(wheelhouse / 'beta-2.1-py3-none-any.whl')}",
    ]
    lock = (wheelhouse / "requirements.lock").read_text().splitlines()
    assert lock[1:] == result["locked"] and lock[0].startswith("#")
    # A second fill changes nothing; the lock is what the first wrote.
    again = fill(tmp_path, index)
    assert (again["changed"], again["locked"]) == (False, result["locked"])
    done = pip_install_locked(tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "target" / "beta" / "__init__.py").read_text() == "VALUE = 1\n"


def test_a_wheel_changed_after_it_was_fetched_is_refused(tmp_path, index):
    fill(tmp_path, index)
    wheelhouse = tmp_path / "wheelhouse"
    # Another beta 2.1 (a planted payload) in place of the one fetched, same file name.
    (wheelhouse / "beta-2.1-py3-none-any.whl").unlink()
    make_wheel(wheelhouse, "beta", "2.1", body="import os  # planted\n")
    done = pip_install_locked(tmp_path)
    assert done.returncode != 0
    assert "DO NOT MATCH THE HASHES" in done.stderr and "beta" in done.stderr, done.stderr
    assert not (tmp_path / "target" / "beta").exists()


def test_a_wheelhouse_stamped_before_the_lock_existed_is_filled_again(tmp_path, index):
    fill(tmp_path, index)
    (tmp_path / "wheelhouse" / "requirements.lock").unlink()
    result = fill(tmp_path, index)
    assert result["changed"] is True and len(result["locked"]) == 2


def test_a_report_item_without_a_sha256_fails_the_lock():
    item = {"metadata": {"name": "Beta_Pkg", "version": "2"}, "download_info": {"archive_info": {}}}
    report = {"install": [item]}
    with pytest.raises(ValueError, match="no sha256 for Beta_Pkg 2"):
        wheelhouse.lock_lines(report)
    report["install"][0]["download_info"]["archive_info"]["hash"] = "sha256=ab"
    assert wheelhouse.lock_lines(report) == ["beta-pkg==2 --hash=sha256:ab"]
