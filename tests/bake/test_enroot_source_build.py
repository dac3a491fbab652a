"""enroot built the way roles/enroot_pyxis/tasks/enroot_source.yml builds it, from the commits
versions.yml pins: each archive made by `git archive` of its commit (what GitHub, GitLab and
cgit serve), checked by the role's archive_commit.py, unpacked without its top directory where
`git submodule update` would put it, then `make install` and `make setcap` with the role's make
arguments, into a DESTDIR instead of /.

The sources are not reachable from CI (no GitHub): the test needs local git snapshots of the
six repositories (MLCLUSTER_SOURCE_MIRRORS, a directory of <owner>+<name>/repo bare clones, as
the development machines' /work/.mirror) and the build tools (libmd-dev, autoconf, automake,
libtool, patch, gcc, make, setcap), and MLCLUSTER_SLOW=1 (about 4.5 minutes on 2 busy cores)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from .conftest import ROOT

MIRRORS = Path(os.environ.get("MLCLUSTER_SOURCE_MIRRORS", "/work/.mirror"))
# Download name -> snapshot holding its commit (musl and libbsd: their GitHub mirrors).
SNAPSHOTS = {
    "enroot": "NVIDIA+enroot",
    "enroot_makeself": "megastep+makeself",
    "enroot_libbsd": "guillemj+libbsd",
    "enroot_musl": "bminor+musl",
    "enroot_linux_headers": "sabotage-linux+kernel-headers",
}
# Where the role unpacks each (vars/main.yml __enroot_pyxis_enroot_archives), below the sources.
DEST = {
    "enroot": ".",
    "enroot_makeself": "deps/makeself",
    "enroot_libbsd": "deps/libbsd",
    "enroot_musl": "deps/musl",
    "enroot_linux_headers": "deps/linux-headers",
}
MAKE_ARGS = ["prefix=", "exec_prefix=/usr", "datarootdir=/usr/share"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("MLCLUSTER_SLOW") != "1", reason="set MLCLUSTER_SLOW=1"),
    pytest.mark.skipif(
        not all((MIRRORS / s / "repo").is_dir() for s in SNAPSHOTS.values()),
        reason=f"no git snapshots of enroot and its submodules under {MIRRORS} (GitHub is not "
        "reachable from CI; set MLCLUSTER_SOURCE_MIRRORS)",
    ),
    pytest.mark.skipif(
        not all(shutil.which(t) for t in ("autoreconf", "libtoolize", "patch", "setcap")),
        reason="build tools missing (apt install libmd-dev autoconf automake libtool patch)",
    ),
]


def test_enroot_builds_from_its_pinned_commits(tmp_path):
    downloads = yaml.safe_load((ROOT / "versions.yml").read_text())["mlcluster_versions"][
        "components"
    ]["enroot_pyxis"]["downloads"]
    src = tmp_path / "enroot"
    for name, snapshot in SNAPSHOTS.items():
        commit = downloads[name]["commit"]
        archive = tmp_path / f"{name}.tar.gz"
        git = ["git", "--git-dir", str(MIRRORS / snapshot / "repo"), "archive"]
        prefix = f"--prefix={snapshot}-{commit}/"
        subprocess.run([*git, "--format=tar.gz", prefix, "-o", str(archive), commit], check=True)
        check = subprocess.run(
            ["python3", str(ROOT / "roles/enroot_pyxis/files/archive_commit.py"), archive, commit],
            capture_output=True,
            text=True,
            check=False,
        )
        assert check.returncode == 0, check.stderr
        dest = src / DEST[name]
        dest.mkdir(parents=True, exist_ok=True)
        subprocess.run(["tar", "-xzf", archive, "-C", dest, "--strip-components=1"], check=True)
    root = tmp_path / "root"
    for target in ("install", "setcap"):
        proc = subprocess.run(
            ["make", target, *MAKE_ARGS, f"DESTDIR={root}"],
            cwd=src,
            capture_output=True,
            text=True,
            check=False,
            timeout=1800,
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    version = subprocess.run(
        [root / "usr/bin/enroot", "version"], capture_output=True, text=True, check=True
    )
    assert version.stdout.strip() == "3.4.1"
    assert (root / "etc/enroot/enroot.conf").is_file()
    caps = subprocess.run(
        ["getcap", root / "usr/bin/enroot-aufs2ovlfs"], capture_output=True, text=True, check=True
    )
    assert "cap_sys_admin,cap_mknod=ep" in caps.stdout
