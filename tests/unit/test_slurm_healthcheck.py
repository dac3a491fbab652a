"""The node health check script (roles/slurm/files/usr/local/sbin/mlcluster-slurm-healthcheck)
run for real with bash, on this host: the drain reason names each failing check, a probe that
hangs is cut off by its time limit, and a drain that cannot reach slurmctld because MUNGE is
what failed says so.

This host has no MUNGE and no Slurm: `munge`, `unmunge` and `scontrol` are small stand-ins put
first on PATH by the check's config file (which the script sources), `scontrol` writing its
arguments to a file. On the local cluster the same script runs against the real daemons
(molecule verify, tests/integration/test_slurm_faults.py).
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from mlcluster.paths import project_root

SCRIPT = project_root() / "roles/slurm/files/usr/local/sbin/mlcluster-slurm-healthcheck"
MUNGE_FAILED = "munge: cannot encode and decode a credential"


def _stub(directory: Path, name: str, body: str) -> None:
    path = directory / name
    path.write_text("#!/bin/bash\n" + body + "\n")
    path.chmod(0o755)


@pytest.fixture
def node(tmp_path):
    """A config for node n1 whose stand-ins behave as each test sets them up."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "scontrol.calls"

    def configure(
        *, munge_ok=True, scontrol_ok=True, state="IDLE", reason="", mounts="/", timeout=10
    ):
        _stub(bin_dir, "munge", "echo CRED" if munge_ok else "exit 1")
        _stub(bin_dir, "unmunge", "cat >/dev/null" if munge_ok else "exit 1")
        show = f"NodeName=n1 State={state} Reason={reason}" if reason else f"State={state}"
        _stub(
            bin_dir,
            "scontrol",
            f'printf "%s\\n" "$*" >> {shlex.quote(str(calls))}\n'
            + (
                '[ "$1" = show ] && echo ' + shlex.quote(show) + "\nexit 0"
                if scontrol_ok
                else "exit 1"
            ),
        )
        config = tmp_path / "healthcheck.conf"
        config.write_text(
            f"PATH={bin_dir}:$PATH\nHC_NODE=n1\nHC_MOUNTS={shlex.quote(mounts)}\n"
            f"HC_GPUS=0\nHC_TIMEOUT={timeout}\n"
        )
        return config

    def run(config):
        proc = subprocess.run(
            ["bash", str(SCRIPT), str(config)], capture_output=True, text=True, timeout=60
        )
        updates = calls.read_text().splitlines() if calls.exists() else []
        return proc, updates

    return configure, run, tmp_path


def test_a_healthy_node_is_left_alone(node):
    configure, run, _ = node
    proc, calls = run(configure())
    assert proc.returncode == 0, proc.stderr
    assert calls == ["show node n1 --oneliner"]


def test_the_drain_reason_names_every_failing_check(node):
    configure, run, tmp_path = node
    missing = tmp_path / "fsx"
    missing.mkdir()
    proc, calls = run(configure(mounts=f"/ {missing}"))
    assert proc.returncode == 1
    reason = f"healthcheck: mount: {missing} is not mounted (or did not answer in 10 s)"
    assert calls == [f"update nodename=n1 state=drain reason={reason}"]
    assert proc.stderr.splitlines() == [f"n1: {reason}"]


def test_a_hung_probe_fails_its_check_at_the_time_limit(node):
    configure, run, tmp_path = node
    # A mount that hangs (a lost Lustre or NFS server): mountpoint never answers.
    _stub(tmp_path / "bin", "mountpoint", "exec sleep 600")
    proc, calls = run(configure(mounts="/fsx", timeout=1))
    assert proc.returncode == 1
    assert calls == [
        "update nodename=n1 state=drain "
        "reason=healthcheck: mount: /fsx is not mounted (or did not answer in 1 s)"
    ]


def test_without_munge_the_check_says_why_it_cannot_drain(node):
    configure, run, _ = node
    # scontrol fails as it does without MUNGE: it cannot authenticate to slurmctld.
    proc, calls = run(configure(munge_ok=False, scontrol_ok=False))
    assert proc.returncode == 1
    assert calls == [f"update nodename=n1 state=drain reason=healthcheck: {MUNGE_FAILED}"]
    assert proc.stderr.splitlines() == [
        f"n1: healthcheck: {MUNGE_FAILED}",
        "n1: cannot drain: scontrol needs MUNGE to reach slurmctld; slurmctld marks the node "
        "NOT_RESPONDING, then DOWN after SlurmdTimeout",
    ]


def test_a_node_this_check_drained_is_resumed_once_it_passes(node):
    configure, run, _ = node
    proc, calls = run(configure(state="IDLE+DRAIN", reason="healthcheck: mount: /fsx gone"))
    assert proc.returncode == 0
    assert calls == ["show node n1 --oneliner", "update nodename=n1 state=resume"]
    # Drained by someone else: left drained.
    proc, calls = run(configure(state="IDLE+DRAIN", reason="maintenance"))
    assert calls[-1] == "show node n1 --oneliner"
