"""How the CLI reaches a local node when `podman exec` fails on a cgroup v1 host: a deleted
container cgroup is recreated and exec tried once more (podman.run); a runtime that cannot join
the cgroup at all sends the command over the node's SSH (local.node_exec). Real subprocesses:
a podman and an ssh on PATH that log their arguments, the ssh running the command it is given."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from mlcluster import local, podman
from mlcluster.errors import MlclusterError

CGROUP_JOIN = (
    "Error: runc: exec failed: unable to start container process: error adding pid 13315 to "
    "cgroups: failed to write 13315: openat2 {dir}/cgroup.procs: no such file or directory"
)
LOST_DIR = "/sys/fs/cgroup/systemd/libpod_parent/libpod-ff50530c"


@pytest.fixture
def fakes(tmp_path, monkeypatch):
    """A podman whose exec fails as $FAKE_EXEC_FAILS says (`always`, `once`, or not at all),
    an ssh that runs its last argument locally, and cluster `t` with node t-compute1."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    (bin_dir / "podman").write_text(
        "#!/bin/sh\n"
        f'echo "podman $*" >> {log}\n'
        'if [ "$1" = exec ] && [ -n "$FAKE_EXEC_FAILS" ]; then\n'
        f'  if [ "$FAKE_EXEC_FAILS" = always ] || [ ! -e {tmp_path}/failed-once ]; then\n'
        f"    touch {tmp_path}/failed-once\n"
        '    echo "$FAKE_EXEC_ERROR" >&2; exit 127\n'
        "  fi\n"
        "fi\n"
        "echo from-podman\n"
    )
    (bin_dir / "ssh").write_text(
        f'#!/bin/sh\necho "ssh $*" >> {log}\nfor last; do :; done\nexec sh -c "$last"\n'
    )
    for tool in ("podman", "ssh"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.setenv("MLCLUSTER_STATE", str(tmp_path / "state"))
    cluster = local.cluster_dir("t")
    cluster.mkdir(parents=True)
    (cluster / "id_ed25519").write_text("not a real key\n")
    node = local.Node(
        hostname="compute1", group="slurm_compute", ip="10.89.7.3", container="t-compute1"
    )
    state = local.ClusterState("t", "10.89.7.0/24", "t-net", "t-fsx", "img", nodes=[node])
    state.save(cluster / "state.json")
    return log


def calls(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def test_a_runtime_that_cannot_join_the_cgroup_sends_the_command_over_ssh(fakes, monkeypatch):
    monkeypatch.setenv("FAKE_EXEC_FAILS", "always")
    monkeypatch.setenv(
        "FAKE_EXEC_ERROR", "crun: writing file `cgroup.procs`: Operation not supported"
    )
    out = local.node_exec(
        "t",
        "t-compute1",
        ["sh", "-c", 'cat; echo "$GREETING"'],
        env={"GREETING": "hello, world's $HOME"},
        input_text="from stdin\n",
    )
    assert out.stdout.splitlines() == ["from stdin", "hello, world's $HOME"]
    podman_call, ssh_call = calls(fakes)
    assert (
        podman_call
        == 'podman exec -i -e GREETING=hello, world\'s $HOME t-compute1 sh -c cat; echo "$GREETING"'
    )
    key = local.cluster_dir("t") / "id_ed25519"
    command = (
        "GREETING="
        + shlex.quote("hello, world's $HOME")
        + " "
        + shlex.join(["sh", "-c", 'cat; echo "$GREETING"'])
    )
    assert ssh_call == "ssh " + " ".join([*local.ssh_options(key), "root@10.89.7.3", command])


def test_another_exec_failure_is_not_sent_over_ssh(fakes, monkeypatch):
    monkeypatch.setenv("FAKE_EXEC_FAILS", "always")
    monkeypatch.setenv("FAKE_EXEC_ERROR", "Error: no container with name or ID t-compute1 found")
    with pytest.raises(MlclusterError) as err:
        local.node_exec("t", "t-compute1", ["true"])
    assert str(err.value) == (
        "t-compute1: `true` failed (exit 127): Error: no container with name or ID t-compute1 found"
    )
    assert [c.split()[0] for c in calls(fakes)] == ["podman"]


def test_an_exec_that_found_its_cgroup_deleted_recreates_it_and_tries_once_more(fakes, monkeypatch):
    made = []
    monkeypatch.setattr(podman.Path, "mkdir", lambda self, **kw: made.append((str(self), kw)))
    monkeypatch.setenv("FAKE_EXEC_FAILS", "once")
    monkeypatch.setenv("FAKE_EXEC_ERROR", CGROUP_JOIN.format(dir=LOST_DIR))
    out = podman.run(["exec", "t-compute1", "true"])
    assert out.stdout == "from-podman\n"
    assert made == [(LOST_DIR, {"parents": True, "exist_ok": True})]
    assert calls(fakes) == ["podman exec t-compute1 true"] * 2


def test_a_cgroup_that_stays_lost_is_tried_once_more_only(fakes, monkeypatch):
    monkeypatch.setattr(podman.Path, "mkdir", lambda self, **kw: None)
    monkeypatch.setenv("FAKE_EXEC_FAILS", "always")
    monkeypatch.setenv("FAKE_EXEC_ERROR", CGROUP_JOIN.format(dir=LOST_DIR))
    # node_exec then asks SSH: the runtime still cannot join the cgroup.
    out = local.node_exec("t", "t-compute1", ["echo", "over ssh"])
    assert out.stdout == "over ssh\n"
    assert [c.split()[0] for c in calls(fakes)] == ["podman", "podman", "ssh"]


def test_only_a_container_cgroup_path_is_recreated():
    assert (
        podman.heal_lost_cgroup("openat2 /etc/x/cgroup.procs: no such file or directory") is False
    )
    assert podman.heal_lost_cgroup("Error: no such container") is False
