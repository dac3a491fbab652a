"""The walking skeleton end to end: local up, deploy twice, check the nodes, local down."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from mlcluster import local

from .conftest import ROOT, mlcluster

pytestmark = pytest.mark.integration


def test_status_lists_every_node_running(cluster):
    rows = {r["hostname"]: r for r in cluster.status()}
    assert sorted(rows) == ["compute1", "compute2", "controller"]
    assert {r["group"] for r in rows.values()} == {"slurm_controller", "slurm_compute"}
    assert all(r["state"] == "running" and r["systemd"] == "running" for r in rows.values())


def test_status_reads_systemd_over_ssh_where_podman_exec_fails(cluster, tmp_path, monkeypatch):
    """On cgroup v1 hosts ``podman exec`` into a node fails ("writing file `cgroup.procs`"):
    ``local status`` then asks the node's own sshd. A podman on PATH whose ``exec`` fails that
    way, the real one for everything else."""
    real = shutil.which("podman")
    wrapper = tmp_path / "bin" / "podman"
    wrapper.parent.mkdir()
    wrapper.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = exec ]; then\n'
        "  echo 'Error: crun: writing file `cgroup.procs`: Operation not supported' >&2\n"
        "  exit 126\n"
        "fi\n"
        f'exec {real} "$@"\n'
    )
    wrapper.chmod(0o755)
    env = {**os.environ, "PATH": f"{wrapper.parent}:{os.environ['PATH']}"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlcluster.cli",
            "local",
            "status",
            "--name",
            cluster.name,
            "--json",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    rows = {r["hostname"]: r["systemd"] for r in json.loads(proc.stdout)}
    assert rows == {"compute1": "running", "compute2": "running", "controller": "running"}
    # The wrapper is what answered exec: through it, exec fails.
    failed = subprocess.run([str(wrapper), "exec", "x", "true"], capture_output=True, check=False)
    assert failed.returncode == 126
    # node_exec, which the HyperPod simulation runs its lifecycle with, carries the command's
    # environment and standard input over SSH too.
    monkeypatch.setenv("PATH", env["PATH"])
    out = local.node_exec(
        cluster.name,
        f"{cluster.name}-compute1",
        ["sh", "-c", 'cat; echo "$GREETING"; hostname'],
        env={"GREETING": "hello, world's $HOME"},
        input_text="from stdin\n",
    )
    assert out.stdout.splitlines() == ["from stdin", "hello, world's $HOME", "compute1"]


def test_inventory_has_the_real_groups(cluster):
    import yaml

    inv = yaml.safe_load((cluster.inventory / "hosts.yml").read_text())
    groups = inv["all"]["children"]["slurm"]["children"]
    assert sorted(groups["slurm_compute"]["hosts"]) == ["compute1", "compute2"]
    assert list(groups["slurm_controller"]["hosts"]) == ["controller"]


def test_every_node_has_its_own_mac_and_machine_id(cluster):
    # One machine id baked into the image gave every node the same MAC (udev derives it from
    # the machine id) and SSH to the nodes flapped; each node must be its own machine.
    seen = {
        row["hostname"]: cluster.ssh(
            row["hostname"], "cat /etc/machine-id /sys/class/net/eth0/address"
        ).stdout.split()
        for row in cluster.status()
    }
    assert len(seen) == 3
    machine_ids = {ident for ident, _mac in seen.values()}
    macs = {mac for _ident, mac in seen.values()}
    assert len(machine_ids) == 3 and all(len(i) == 32 for i in machine_ids)
    assert macs == {local.node_mac(row["ip"]) for row in cluster.status()}


def test_first_deploy_succeeds(deploys):
    first = deploys[0]
    assert first["rc"] == 0 and first["status"] == "successful"
    assert sorted(first["hosts"]) == ["compute1", "compute2", "controller"]
    assert all(h["failures"] == 0 and h["unreachable"] == 0 for h in first["hosts"].values())


def test_configure_layer_decides_every_accelerator_role_per_node(deploys):
    """site.yml's configure layer, read from the deploy report: on these CPU nodes of the local
    flavour every accelerator role is not applicable, with the reason; tuning is configured."""
    not_in_image = "not applicable: not in the image (flavour local)"
    for report in deploys:
        decisions = report["stats"]["accelerators"]
        assert sorted(decisions) == ["compute1", "compute2", "controller"]
        for host, statuses in decisions.items():
            assert statuses.pop("efa").startswith("not applicable: no EFA device on the PCI bus; ")
            assert statuses == {
                "tuning": "configured",
                **dict.fromkeys(
                    [
                        "nvidia_driver",
                        "fabricmanager",
                        "cuda_toolkit",
                        "nccl",
                        "aws_ofi_nccl",
                        "gdrcopy",
                        "dcgm",
                        "neuron",
                        "container_runtime",
                        "enroot_pyxis",
                        "lustre_client",
                    ],
                    not_in_image,
                ),
            }, host


def test_second_deploy_changes_nothing(deploys):
    second = deploys[1]
    assert second["status"] == "successful"
    assert {h: c["changed"] for h, c in second["hosts"].items()} == {
        "compute1": 0,
        "compute2": 0,
        "controller": 0,
    }


def test_nodes_have_their_hostname_ip_and_names(cluster, deploys):
    for row in cluster.status():
        host = row["hostname"]
        assert cluster.ssh(host, "hostname").stdout.strip() == host
        assert row["ip"] in cluster.ssh(host, "ip -4 -o addr show eth0").stdout
        # Every node resolves every other node by name (common role's /etc/hosts block).
        resolved = cluster.ssh(host, "getent hosts controller compute1 compute2").stdout
        ips = {r["hostname"]: r["ip"] for r in cluster.status()}
        assert {tuple(line.split()) for line in resolved.splitlines()} == {
            (ips[name], name) for name in ("controller", "compute1", "compute2")
        }


def test_fsx_is_shared(cluster, deploys):
    token = os.urandom(8).hex()
    cluster.ssh("compute1", f"echo {token} > /fsx/skeleton-check")
    assert cluster.ssh("compute2", "cat /fsx/skeleton-check").stdout.strip() == token
    assert cluster.ssh("controller", "cat /fsx/skeleton-check").stdout.strip() == token


def test_srun_runs_on_both_compute_nodes(cluster, deploys):
    out = cluster.ssh("controller", "su mluser -c 'srun -N2 hostname'").stdout.split()
    assert sorted(out) == ["compute1", "compute2"]


def test_common_role_applied(cluster, deploys):
    limits = cluster.ssh("compute1", "cat /etc/security/limits.d/90-mlcluster.conf").stdout
    assert "soft memlock" in limits and "soft nofile" in limits
    assert cluster.ssh("compute1", "id -u mluser").stdout.strip() == "2001"
    assert cluster.ssh("compute2", "id -u slurm").stdout.strip() == "402"
    assert cluster.ssh("compute1", "sysctl -n net.core.somaxconn").stdout.strip() == "4096"


def test_validate_passes_on_every_node(cluster, deploys, tmp_path):
    # The node checks a user points at a real inventory, here at the deployed local cluster,
    # at the deepest level: with the two-node fabric ping-pong through Slurm.
    report_path = tmp_path / "checks.json"
    proc = mlcluster(
        "validate", "-i", str(cluster.inventory), "--level", "full", "--report", str(report_path)
    )
    report = json.loads(report_path.read_text())
    assert report["failed"] == 0 and report["errors"] == [], proc.stdout
    outcomes = {
        (c["node"], c["check"].removeprefix("test_")): c["outcome"] for c in report["checks"]
    }
    for node in ("controller", "compute1", "compute2"):
        for check in ("munge", "munge_key", "munge_credential", "slurm_daemons", "clock"):
            assert outcomes[(node, check)] == "passed", (node, check, outcomes)
        # Only compute nodes carry jobs: neither down nor drained there, skipped elsewhere; the
        # controller's MUNGE key is the one the others' is compared with.
        expected = "skipped" if node == "controller" else "passed"
        assert outcomes[(node, "node_usable")] == expected, (node, outcomes)
        assert outcomes[(node, "munge_cluster_key")] == expected, (node, outcomes)
        # No GPU is expected on these nodes: the GPU checks say so rather than pass.
        assert outcomes[(node, "gpu_count")] == "skipped"
    messages = {(c["node"], c["check"]): c["message"] for c in report["checks"]}
    assert messages[("compute1", "test_efa_provider")] == (
        "not applicable: no EFA device (no RDMA device bound to the efa driver)"
    )
    # No EFA here: libfabric's tcp provider carries the ping-pong, and the check says so.
    assert outcomes[("cluster", "fabric_pingpong")] == "passed"
    assert re.fullmatch(
        r"tcp: 64k messages at [\d.]+ MB/s, [\d.]+ us each"
        r" \(no EFA: the fabric path checked over tcp\)",
        messages[("cluster", "test_fabric_pingpong")],
    )
    assert "0 failed" in proc.stdout


def test_validate_drains_a_node_whose_check_fails(cluster, deploys, tmp_path):
    """A real fault (MUNGE stopped on compute2): `validate --drain` drains it with the reason."""
    report_path = tmp_path / "checks.json"
    cluster.ssh("compute2", "systemctl stop munge")
    try:
        proc = mlcluster(
            "validate",
            "-i",
            str(cluster.inventory),
            "--drain",
            "--report",
            str(report_path),
            check=False,
        )
        assert proc.returncode == 1, proc.stdout
        reason = "mlcluster validate: munge: munge is not running"
        assert json.loads(report_path.read_text())["drained"] == [
            {"node": "compute2", "slurm_node": "compute2", "reason": reason}
        ]
        # Drained with the check as reason. Without MUNGE its slurmd cannot answer slurmctld's
        # pings either, so within SlurmdTimeout (20 s) the node is also NOT_RESPONDING (sinfo's
        # `drain*`), and later DOWN: the DRAIN flag and the reason are what validate set.
        node = cluster.ssh("controller", "scontrol show node compute2 -o").stdout
        flags = re.search(r"\bState=(\S+)", node).group(1).split("+")
        assert "DRAIN" in flags, node
        assert flags[0] in {"IDLE", "DOWN"} and set(flags[1:]) <= {"DRAIN", "NOT_RESPONDING"}, node
        reason_now = cluster.ssh("controller", "sinfo -h -N -n compute2 -o '%E'").stdout.strip()
        assert reason_now == reason
        # The healthy node stays in service.
        other = cluster.ssh("controller", "sinfo -h -N -n compute1 -o '%t'").stdout.strip()
        assert other == "idle"
    finally:
        cluster.ssh("compute2", "systemctl start munge")
        cluster.ssh("controller", "scontrol update NodeName=compute2 State=RESUME")
    assert _idle_again(cluster, "compute2") == "idle"


def test_validate_drains_a_node_whose_munge_key_changed(cluster, deploys, tmp_path):
    """A real fault: compute1's MUNGE key replaced by another (munged runs, its own credentials
    decode, nothing on the node looks wrong): `validate --drain` drains it, the reason naming
    MUNGE. The key is put back from a copy on the node."""
    report_path = tmp_path / "checks.json"
    key = "/etc/munge/munge.key"
    cluster.ssh(
        "compute1",
        f"cp -p {key} /root/munge.key.bak && dd if=/dev/urandom of={key} bs=128 count=1 "
        "status=none && systemctl restart munge",
    )
    try:
        proc = mlcluster(
            "validate", "-i", str(cluster.inventory), "--drain", "--report", str(report_path),
            check=False,
        )  # fmt: skip
        assert proc.returncode == 1, proc.stdout
        report = json.loads(report_path.read_text())
        failed = {(c["node"], c["check"]): c["message"] for c in report["checks"]
                  if c["outcome"] == "failed"}  # fmt: skip
        # The controller can no longer decode the node's messages either: once slurmctld's
        # next ping fails (timing), the node reads "not responding" (a trailing "*") and
        # node_usable fails too, a consequence of the same fault. Nothing else may fail.
        usable = failed.pop(("compute1", "test_node_usable"), None)
        assert set(failed) == {("compute1", "test_munge_cluster_key")}, report["checks"]
        assert usable is None or re.fullmatch(r"compute1: \w+\*\|.*", usable), usable
        reason = (
            "mlcluster validate: munge_cluster_key: MUNGE: the controller cannot decode a "
            "credential of this node (unmunge: Error: Invalid credential): its munge.key is not "
            "the cluster key"
        )
        assert report["drained"] == [
            {"node": "compute1", "slurm_node": "compute1", "reason": reason}
        ]
        assert cluster.ssh("controller", "sinfo -h -N -n compute1 -o '%E'").stdout.strip() == (
            reason
        )
    finally:
        cluster.ssh("compute1", f"mv /root/munge.key.bak {key} && systemctl restart munge")
        cluster.ssh("controller", "scontrol update NodeName=compute1 State=RESUME")
    assert _idle_again(cluster, "compute1") == "idle"


def _idle_again(cluster, node: str, tries: int = 30) -> str:
    """The node's sinfo state once it is idle again (resumed), or the last one seen."""
    state = ""
    for _ in range(tries):
        state = cluster.ssh("controller", f"sinfo -h -N -n {node} -o '%t'").stdout.strip()
        if state == "idle":
            break
        time.sleep(2)
    return state
