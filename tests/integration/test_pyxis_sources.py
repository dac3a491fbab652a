"""enroot + pyxis built from their pinned public sources on a local cluster, and
`srun --container-image=` across two nodes (issue 8, item 2(b)).

The enroot_pyxis role downloads enroot's and pyxis's archives (and enroot's four dependency
archives) by the URL + commit pin of versions.yml, through `mlcluster_mirror_base` here: the
archives are `git archive` of the pinned commits, made from local git copies of the public
repositories by scripts/serve_sources.py and served over HTTP on the cluster network's gateway.
The role's own download, commit check, build and install run unchanged.

GitHub is not reachable from CI, and CI has no copies of the repositories. The module runs
only when MLCLUSTER_SOURCES_DIR names a directory of <owner>+<name> git copies (on the
development machines: MLCLUSTER_SOURCES_DIR=/work/.mirror); otherwise it skips and says so
(it takes about 15 minutes, which the CI budget has no room for). Deselect it anywhere with
`-m "not sources"`. It brings up a cluster of its
own (MLCLUSTER_PYXIS_CLUSTER, default `px`) and removes it at the end; about 15 minutes on two
cores, most of it compiling musl and libbsd for enroot on three nodes.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import ROOT, Cluster, mlcluster

SOURCES_DIR = os.environ.get("MLCLUSTER_SOURCES_DIR", "")
SOURCES = Path(SOURCES_DIR or "MLCLUSTER_SOURCES_DIR-unset")
REPOS = [
    "NVIDIA/enroot",
    "NVIDIA/pyxis",
    "megastep/makeself",
    "guillemj/libbsd",
    "bminor/musl",
    "sabotage-linux/kernel-headers",
]
MISSING = [r for r in REPOS if not (SOURCES / r.replace("/", "+")).is_dir()]
NAME = os.environ.get("MLCLUSTER_PYXIS_CLUSTER", "px")
IMAGE = "/fsx/containers/node.sqsh"
HOSTS = ["controller", "compute1", "compute2"]
VERSIONS = yaml.safe_load((ROOT / "versions.yml").read_text())["mlcluster_versions"]
PINS = VERSIONS["components"]["enroot_pyxis"]

pytestmark = [
    pytest.mark.integration,
    pytest.mark.sources,
    pytest.mark.skipif(
        not SOURCES_DIR,
        reason=(
            "enroot/pyxis from sources: MLCLUSTER_SOURCES_DIR is not set (a directory of git "
            "copies of the enroot, pyxis and enroot's dependency repositories; CI has none and "
            "cannot reach GitHub)"
        ),
    ),
    pytest.mark.skipif(
        bool(SOURCES_DIR) and bool(MISSING),
        reason=(
            f"enroot/pyxis sources not at hand: no git copies of {', '.join(MISSING)} under "
            f"{SOURCES} (set MLCLUSTER_SOURCES_DIR to a directory of <owner>+<name> copies; "
            "CI has none and cannot reach GitHub)"
        ),
    ),
]

PLAYBOOK = """\
- name: enroot and pyxis from their pinned sources
  hosts: slurm
  become: true
  gather_facts: true
  vars_files:
    - {versions}
  tasks:
    - name: Run the enroot_pyxis role
      ansible.builtin.include_role:
        name: enroot_pyxis
"""


def gateway(network: str) -> str:
    out = subprocess.run(
        [
            "podman",
            "network",
            "inspect",
            network,
            "--format",
            "{{range .Subnets}}{{.Gateway}}{{end}}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.strip()


@pytest.fixture(scope="module")
def px(tmp_path_factory):
    """A deployed cluster of its own with enroot_pyxis applied from the served sources."""
    state = Path(os.environ.get("MLCLUSTER_STATE", ROOT / ".mlcluster"))
    work = tmp_path_factory.mktemp("pyxis")
    # From scratch: a node that has enroot and pyxis already downloads and builds nothing.
    mlcluster("local", "down", "--name", NAME, check=False)
    mlcluster("local", "up", "--name", NAME)
    server = None
    try:
        cluster = Cluster(NAME, state)
        mlcluster("deploy", "-i", str(cluster.inventory))
        cluster_state = json.loads((state / "clusters" / NAME / "state.json").read_text())
        server = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "scripts" / "serve_sources.py"),
                str(work / "mirror"),
                "--bind",
                gateway(cluster_state["network"]),
                "--sources-dir",
                str(SOURCES),
            ],
            stdout=subprocess.PIPE,
            stderr=(work / "served.log").open("w"),
            text=True,
        )
        base = server.stdout.readline().strip()
        assert base.startswith("http://"), "serve_sources.py printed no mirror base"
        playbook = work / "enroot_pyxis.yml"
        playbook.write_text(PLAYBOOK.format(versions=ROOT / "versions.yml"))
        proc = subprocess.run(
            [
                str(Path(sys.executable).parent / "ansible-playbook"),
                "-i",
                str(cluster.inventory),
                str(playbook),
                "-e",
                f"mlcluster_mirror_base={base}",
            ],
            cwd=ROOT,
            env={**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")},
            capture_output=True,
            text=True,
            timeout=3600,
            check=False,
        )
        assert proc.returncode == 0, (
            f"enroot_pyxis role failed:\n{proc.stdout[-5000:]}\n{proc.stderr[-2000:]}"
        )
        (work / "role.log").write_text(proc.stdout)
        yield cluster, (work / "served.log")
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        mlcluster("local", "down", "--name", NAME, check=False)


def test_role_fetched_every_archive_through_the_mirror(px):
    """Each node downloaded each pinned archive by its versions.yml path (the role's own URL
    under mlcluster_mirror_base); the role checked each one's commit or it would have failed."""
    cluster, served = px
    log = served.read_text()
    for name, entry in PINS["downloads"].items():
        if not entry.get("commit"):
            continue
        request = f'"GET /{entry["source"]}/{entry["path"]} HTTP/1.1" 200'
        clients = sorted(line.split()[0] for line in log.splitlines() if request in line)
        assert clients == sorted(cluster.ip(h) for h in HOSTS), (name, clients)


@pytest.mark.parametrize("host", HOSTS)
def test_enroot_and_pyxis_built_from_the_pinned_commits(px, host):
    cluster, _ = px
    assert cluster.ssh(host, "enroot version").stdout.strip() == str(PINS["enroot"])
    claim = json.loads(cluster.ssh(host, "cat /etc/mlcluster/components/enroot_pyxis.json").stdout)
    assert claim["source"] == "source-commit"
    assert claim["enroot_commit"] == PINS["downloads"]["enroot"]["commit"]
    assert claim["pyxis"] == str(PINS["pyxis"])
    assert claim["pyxis_commit"] == PINS["downloads"]["pyxis"]["commit"]
    plug = cluster.ssh(host, "cat /etc/slurm/plugstack.conf.d/pyxis.conf").stdout
    assert "required /usr/local/lib/slurm/spank_pyxis.so" in plug
    # enroot+caps: the helpers carry their capabilities (`make setcap`).
    caps = cluster.ssh(
        host, "getcap /usr/bin/enroot-mksquashovlfs /usr/bin/enroot-aufs2ovlfs"
    ).stdout
    assert "enroot-mksquashovlfs cap_sys_admin=ep" in caps, caps
    assert "enroot-aufs2ovlfs cap_sys_admin,cap_mknod=ep" in caps, caps


def test_srun_container_image_across_two_nodes(px):
    cluster, _ = px
    assert "--container-image" in cluster.ssh("controller", "srun --help").stdout
    # A squashfs of the node image, made on the controller from the image unpacked on /fsx
    # (without its device nodes, which an unprivileged unsquashfs cannot create).
    mlcluster("local", "bundle", "--name", NAME)
    cluster.ssh(
        "controller",
        f"mksquashfs /fsx/containers/node/rootfs {IMAGE} -noappend -comp lz4 -quiet -no-progress "
        f"-wildcards -e 'dev/*' && chmod 644 {IMAGE}",
    )
    # Each task: the image's OS, its rank, its node, the mounted /fsx, its user, and the root
    # of its root mount (enroot's data directory of this container, not the node's /).
    inner = (
        ". /etc/os-release; root=$(awk '$5 == \"/\" {print $4}' /proc/self/mountinfo); "
        'echo "$PRETTY_NAME|$SLURM_PROCID|$(hostname)|$(ls -d /fsx/containers)|$(id -un)|$root"'
    )
    job = (
        f"cd /tmp && srun -N2 --ntasks-per-node=1 --container-image={IMAGE} "
        f"--container-mounts=/fsx:/fsx sh -c {shlex.quote(inner)}"
    )
    proc = cluster.ssh("controller", f"su - mluser -c {shlex.quote(job)}", check=False)
    assert proc.returncode == 0, f"srun --container-image failed: {proc.stdout}\n{proc.stderr}"
    rows = sorted(line.split("|") for line in proc.stdout.splitlines() if line.count("|") == 5)
    assert [r[1] for r in rows] == ["0", "1"], proc.stdout
    assert {r[0] for r in rows} == {"Debian GNU/Linux 12 (bookworm)"}, proc.stdout
    assert [r[2] for r in rows] == ["compute1", "compute2"], proc.stdout
    assert {r[3] for r in rows} == {"/fsx/containers"}, proc.stdout
    assert {r[4] for r in rows} == {"mluser"}, proc.stdout
    assert all(r[5].startswith("/enroot-data/user-") and "/pyxis_" in r[5] for r in rows), rows
