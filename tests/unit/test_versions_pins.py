"""The shipped pins are verifiable: every flavour of the platform matrix passes the version rules
with no null digest (enroot and pyxis are pinned by source commit), a download with neither a
sha256 nor a commit still stops the bake, and the role's archive check
(roles/enroot_pyxis/files/archive_commit.py) tells the archive of the pinned commit from others,
on archives made by `git archive` as GitHub, GitLab and cgit make them."""

from __future__ import annotations

import copy
import importlib.util
import io
import shutil
import subprocess
import tarfile

import pytest
import yaml

from mlcluster.paths import load_plugin, project_root

rules = load_plugin("filter", "versions")
ROOT = project_root()
SCRIPT = ROOT / "roles" / "enroot_pyxis" / "files" / "archive_commit.py"
_spec = importlib.util.spec_from_file_location("archive_commit", SCRIPT)
archive_commit = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(archive_commit)


def shipped() -> dict:
    return yaml.safe_load((ROOT / "versions.yml").read_text())["mlcluster_versions"]


@pytest.fixture
def versions() -> dict:
    return copy.deepcopy(shipped())


@pytest.mark.parametrize("flavor", list(shipped()["platforms"]))
def test_every_flavour_of_the_matrix_passes_the_rules(versions, flavor):
    assert rules.version_errors(versions, flavor) == []


def test_the_eks_pins_pass_their_rule(versions):
    assert versions["eks"]["kube_scheduler"]["version"].startswith(
        f"v{versions['eks']['kubernetes']}."
    )
    assert rules.eks_version_errors(versions) == []


def test_the_shipped_dcgm_exporter_pins_are_held_together(versions):
    """The rule reads the shipped file's own keys: the EKS chart moved alone fails the GPU bake."""
    assert "dcgm" in versions["flavors"]["gpu"]
    versions["eks"]["dcgm_exporter"]["version"] = "9.9.9"
    exporter = versions["components"]["dcgm"]["exporter"]
    assert rules.version_errors(versions, "gpu") == [
        f"dcgm: exporter {exporter} is not the release of the EKS add-on's chart "
        "(eks.dcgm_exporter 9.9.9); Slurm and EKS nodes would export different fields."
    ]


def test_no_download_is_left_unverified(versions):
    for component, entry in versions["components"].items():
        for name, download in (entry.get("downloads") or {}).items():
            assert download.get("sha256") or download.get("commit"), f"{component}.{name}"


def test_enroot_and_pyxis_are_pinned_by_full_commit_ids(versions):
    downloads = versions["components"]["enroot_pyxis"]["downloads"]
    assert downloads["enroot"]["commit"] == "4dd13f69358cbc878135354ba3eac78db4a3970f"  # v3.4.1
    assert downloads["pyxis"]["commit"] == "e006b893e4b63303da154bf1800076dcd6a64bc9"  # v0.19.0
    for name, download in downloads.items():
        assert download["path"].count(download["commit"]) >= 1, name


def test_a_null_digest_without_a_commit_still_stops_the_bake(versions):
    pyxis = versions["components"]["enroot_pyxis"]["downloads"]["pyxis"]
    del pyxis["commit"]
    pyxis["sha256"] = None
    errors = rules.version_errors(versions, "gpu")
    assert len(errors) == 1
    assert errors[0].startswith("enroot_pyxis.downloads.pyxis: no sha256;")
    assert "40-hex `commit`" in errors[0]


def test_a_tag_is_not_a_commit(versions):
    versions["components"]["enroot_pyxis"]["downloads"]["pyxis"]["commit"] = "v0.19.0"
    (error,) = rules.version_errors(versions, "cpu")
    assert "is not a full commit id" in error


def test_the_path_must_be_the_archive_of_the_commit(versions):
    pyxis = versions["components"]["enroot_pyxis"]["downloads"]["pyxis"]
    pyxis["path"] = "NVIDIA/pyxis/archive/refs/tags/v0.19.0.tar.gz"
    (error,) = rules.version_errors(versions, "cpu")
    assert "the path does not name commit e006b893" in error


def test_download_returns_the_commit(versions):
    assert rules.download(versions, "enroot_pyxis", "pyxis")["commit"] == (
        "e006b893e4b63303da154bf1800076dcd6a64bc9"
    )
    assert rules.download(versions, "enroot_pyxis", "pyxis")["checksum"] == ""


# ---- the role's archive check --------------------------------------------------------------------


def git(repo, *args) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.fixture
def repo(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    path = tmp_path / "pyxis"
    path.mkdir()
    git(path, "init", "-q")
    for n in (1, 2):
        (path / "Makefile").write_text(f"all:\n\techo {n}\n")
        git(path, "add", "Makefile")
        git(path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", str(n))
    return path


def git_archive(repo, commit: str, out) -> str:
    """The archive GitHub serves for <repo>/archive/<commit>.tar.gz: `git archive` of the commit
    under <repo>-<commit>/."""
    prefix = f"--prefix=pyxis-{commit}/"
    subprocess.run(
        ["git", "-C", str(repo), "archive", "--format=tar.gz", prefix, "-o", str(out), commit],
        check=True,
    )
    return str(out)


def run_script(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["python3", str(SCRIPT), *map(str, args)], capture_output=True, text=True, check=False
    )


def test_archive_of_the_pinned_commit_passes(repo, tmp_path):
    head = git(repo, "rev-parse", "HEAD")
    archive = git_archive(repo, head, tmp_path / "a.tar.gz")
    proc = run_script(archive, head)
    assert (proc.returncode, proc.stdout.strip()) == (0, head)


def test_archive_of_another_commit_fails_and_says_which(repo, tmp_path):
    head, previous = git(repo, "rev-parse", "HEAD"), git(repo, "rev-parse", "HEAD~1")
    archive = git_archive(repo, previous, tmp_path / "a.tar.gz")
    proc = run_script(archive, head)
    assert proc.returncode == 1
    assert f"was made from commit {previous}, not the pinned {head}" in proc.stderr


def test_without_a_pax_header_the_top_directory_decides(tmp_path):
    commit = "e006b893e4b63303da154bf1800076dcd6a64bc9"
    path = tmp_path / "plain.tar.gz"
    with tarfile.open(path, "w:gz", format=tarfile.GNU_FORMAT) as archive:
        data = b"all:\n"
        info = tarfile.TarInfo(f"pyxis-{commit}/Makefile")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    assert archive_commit.check(str(path), commit) is None
    assert "is not <repo>-" in archive_commit.check(str(path), "0" * 40)


def test_not_an_archive_fails(tmp_path):
    path = tmp_path / "error.html"
    path.write_text("<html>rate limited</html>")
    proc = run_script(path, "0" * 40)
    assert proc.returncode == 1
    assert "is not a readable tar archive" in proc.stderr
