"""Is this node a working member of the Slurm cluster?"""

from __future__ import annotations

import re
import shlex
import time

import pytest

# A node that is down, drained, failing or not responding cannot run jobs.
_UNUSABLE = re.compile(r"^(down|drain|drng|fail|futr|inval|unk)|[*~#]$")


def test_munge(host):
    assert host.service("munge").is_running, "munge is not running"


def test_munge_key(host):
    key = host.file("/etc/munge/munge.key")
    assert key.exists, "no /etc/munge/munge.key"
    assert (key.user, key.group, key.mode) == ("munge", "munge", 0o400)


def test_munge_credential(host):
    result = host.run("munge --no-input | unmunge")
    lines = (result.stderr or result.stdout).strip().splitlines()
    assert result.rc == 0, f"no MUNGE credential round trip: {lines[-1] if lines else result.rc}"


def test_munge_cluster_key(host, groups, controller):
    """A credential made here decodes on the controller: this node holds the cluster's key. (A
    node with another key passes the local round trip, and its slurmd cannot talk to
    slurmctld.)"""
    if "slurm_controller" in groups:
        pytest.skip("the controller's key is the cluster's")
    made = host.run("munge --no-input")
    assert made.rc == 0, f"munge cannot make a credential: {made.stderr.strip()[-200:]}"
    decoded = controller.run(f"printf %s {shlex.quote(made.stdout.strip())} | unmunge")
    said = (decoded.stderr or decoded.stdout).strip().splitlines()
    assert decoded.rc == 0, (
        "MUNGE: the controller cannot decode a credential of this node "
        f"({said[-1] if said else decoded.rc}): its munge.key is not the cluster key"
    )


def test_slurm_daemons(host, groups, node_vars):
    expected = []
    if "slurm_controller" in groups:
        expected.append("slurmctld")
        if node_vars.get("slurm_accounting_enabled", True):
            expected.append("slurmdbd")
    if "slurm_compute" in groups:
        expected.append("slurmd")
    if not expected:
        pytest.skip("a login node runs no Slurm daemon")
    stopped = [name for name in expected if not host.service(name).is_running]
    assert not stopped, f"not running: {', '.join(stopped)}"


def test_node_usable(host, groups, controller):
    if "slurm_compute" not in groups:
        pytest.skip("only compute nodes have a Slurm node state")
    name = host.check_output("hostname -s")
    result = controller.run(f"sinfo --noheader --Node --nodes={name} --format='%t|%E'")
    assert result.rc == 0, result.stderr
    states = {line.strip() for line in result.stdout.splitlines() if line.strip()}
    assert states, f"{name} is not in slurm.conf"
    bad = [s for s in states if _UNUSABLE.search(s.split("|", 1)[0])]
    assert not bad, f"{name}: {', '.join(sorted(bad))}"


def test_clock(host, node_vars):
    if node_vars.get("common_chrony_enabled", True):
        tracking = host.run("chronyc -n tracking")
        assert tracking.rc == 0, f"chronyc tracking failed: {tracking.stderr.strip()}"
        assert re.search(r"^Leap status\s*:\s*Normal", tracking.stdout, re.M), tracking.stdout
        return
    # chrony is off where the node shares the host's kernel clock (the local cluster's
    # containers): the node's clock must then equal the clock of the machine running the checks.
    before = time.time()
    remote = float(host.check_output("date +%s.%N"))
    after = time.time()
    assert before - 1 <= remote <= after + 1, (
        f"node clock {remote:.3f} is off by more than 1 s from {before:.3f}..{after:.3f}"
    )
