"""The wheelhouse module's input digest: what makes it rebuild, and what must not."""

from __future__ import annotations

from mlcluster.paths import load_plugin

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
