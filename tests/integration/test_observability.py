"""Observability on the session's deployed local cluster (site.yml's observability play):
Prometheus on the controller sees every node's exporters, the Slurm metrics are what sinfo and
squeue say, real faults (a drained node, a stopped exporter) fire their alerts in Alertmanager
and resolving them clears them, the EFA collector says "no device", and `mlcluster status`
shows it all. The local inventory's group_vars scrape every 5 s and fire after 20 s."""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request

import pytest

from .conftest import mlcluster

pytestmark = pytest.mark.integration

NODES = ["compute1", "compute2", "controller"]


def get(url: str):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def promql(cluster, expr: str) -> list[dict]:
    url = f"http://{cluster.ip('controller')}:9090/api/v1/query?" + urllib.parse.urlencode(
        {"query": expr}
    )
    body = get(url)
    assert body["status"] == "success", body
    return body["data"]["result"]


def alertmanager_alerts(cluster) -> set[tuple[str, str]]:
    """(alertname, node) of the alerts Alertmanager holds active."""
    alerts = get(f"http://{cluster.ip('controller')}:9093/api/v2/alerts?active=true")
    return {(a["labels"]["alertname"], a["labels"].get("node", "")) for a in alerts}


def wait_for(what: str, probe, timeout: float = 120, interval: float = 2):
    """Poll probe() until it returns something true; its last value otherwise fails."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s (last: {value!r})")
        time.sleep(interval)


def sinfo_states(cluster) -> set[tuple[str, str, str]]:
    out = cluster.ssh("controller", "sinfo -h -N -o '%N|%R|%T'").stdout
    rows = set()
    for line in out.split():
        node, partition, state = line.split("|")
        rows.add((node, partition, state.rstrip("*~#!%$@^-+").lower()))
    return rows


def prometheus_states(cluster) -> set[tuple[str, str, str]]:
    return {
        (s["metric"]["node"], s["metric"]["partition"], s["metric"]["state"])
        for s in promql(cluster, "slurm_node_state == 1")
    }


def test_prometheus_sees_every_nodes_exporters(cluster, deploys):
    def ups():
        samples = promql(cluster, "up")
        found = {(s["metric"]["job"], s["metric"]["node"]): s["value"][1] for s in samples}
        return found if len(found) == 6 and set(found.values()) == {"1"} else None

    found = wait_for("every target up", ups)
    assert sorted(found) == [
        ("alertmanager", "controller"),
        ("node", "compute1"),
        ("node", "compute2"),
        ("node", "controller"),
        ("prometheus", "controller"),
        ("slurm", "controller"),
    ]
    # No GPU on these nodes: nothing to scrape for dcgm-exporter.
    assert promql(cluster, 'up{job="dcgm"}') == []


def test_efa_collector_reports_no_device(cluster, deploys):
    info = wait_for(
        "efa_collector_info on every node",
        lambda: (r := promql(cluster, "efa_collector_info")) and len(r) == 3 and r,
    )
    assert {(s["metric"]["node"], s["metric"]["status"]) for s in info} == {
        (node, "no device") for node in NODES
    }
    assert {(s["metric"]["node"], s["value"][1]) for s in promql(cluster, "efa_devices")} == {
        (node, "0") for node in NODES
    }
    assert promql(cluster, "efa_hw_counter_total") == []
    present = promql(cluster, "mlcluster_node_mount_present")
    assert {(s["metric"]["node"], s["metric"]["mountpoint"], s["value"][1]) for s in present} == {
        (node, "/fsx", "1") for node in NODES
    }


def test_slurm_metrics_are_what_sinfo_and_squeue_say(cluster, deploys):
    wait_for(
        "slurm_node_state equal to sinfo",
        lambda: prometheus_states(cluster) == sinfo_states(cluster),
        timeout=60,
    )
    assert {state for _node, _partition, state in sinfo_states(cluster)} == {"idle"}
    job = cluster.ssh(
        "controller", "sbatch --parsable -N1 -w compute1 --exclusive --wrap 'sleep 300'"
    ).stdout.strip()
    try:
        wait_for(
            "the job running",
            lambda: (
                cluster.ssh("controller", f"squeue -h -j {job} -o %T").stdout.strip() == "RUNNING"
            ),
            timeout=60,
        )
        cpus = cluster.ssh("controller", "sinfo -h -N -n compute1 -o %c").stdout.split()[0]

        def allocated():
            samples = promql(cluster, 'slurm_partition_cpus{state="allocated"}')
            running = promql(cluster, 'slurm_jobs{state="running"}')
            got = (
                {s["metric"]["partition"]: s["value"][1] for s in samples},
                {s["metric"]["partition"]: s["value"][1] for s in running},
            )
            return got if got == ({"batch": cpus}, {"batch": "1"}) else None

        wait_for("the running job's CPUs allocated", allocated, timeout=60)
        assert ("compute1", "batch", "allocated") in prometheus_states(cluster)
        assert prometheus_states(cluster) == sinfo_states(cluster)
    finally:
        cluster.ssh("controller", f"scancel {job}")
    wait_for(
        "back to idle",
        lambda: {s for _n, _p, s in prometheus_states(cluster)} == {"idle"},
        timeout=60,
    )


def test_drained_node_and_stopped_exporter_fire_and_resolve(cluster, deploys, tmp_path):
    cluster.ssh("controller", "scontrol update nodename=compute2 state=drain reason=obs-test")
    cluster.ssh("compute1", "systemctl stop prometheus-node-exporter")
    try:
        wait_for(
            "SlurmNodeDrained and NodeDown firing in Alertmanager",
            lambda: (
                {("SlurmNodeDrained", "compute2"), ("NodeDown", "compute1")}
                <= alertmanager_alerts(cluster)
            ),
            timeout=120,
        )
        status = mlcluster("status", "-i", str(cluster.inventory), "--json")
        data = json.loads(status.stdout)
        nodes = {n["name"]: n for n in data["nodes"]}
        assert nodes["compute1"]["up"] is False and nodes["compute2"]["up"] is True
        assert nodes["compute2"]["slurm"] == {"batch": "drained"}
        firing = {
            (a["name"], a["labels"].get("node")) for a in data["alerts"] if a["state"] == "firing"
        }
        assert {("SlurmNodeDrained", "compute2"), ("NodeDown", "compute1")} <= firing
        text = mlcluster("status", "-i", str(cluster.inventory)).stdout
        assert "Nodes up: 2/3" in text
        assert "  SlurmNodeDrained  Slurm node compute2 is drained" in text.splitlines()
    finally:
        cluster.ssh("controller", "scontrol update nodename=compute2 state=resume")
        cluster.ssh("compute1", "systemctl start prometheus-node-exporter")
    wait_for(
        "both alerts resolved",
        lambda: (
            not {("SlurmNodeDrained", "compute2"), ("NodeDown", "compute1")}
            & alertmanager_alerts(cluster)
        ),
        timeout=120,
    )
    firing = {
        a["labels"]["alertname"]
        for a in get(f"http://{cluster.ip('controller')}:9090/api/v1/alerts")["data"]["alerts"]
    }
    assert not {"SlurmNodeDrained", "NodeDown"} & firing


# The field's usual dcgm-exporter counters for training clusters (NVIDIA's default list plus
# the profiling fields): utilisation, memory, clocks, power, temperatures, XID, ECC and row
# remapping, PCIe, NVLink.
DCGM_FIELDS = {
    "DCGM_FI_DEV_GPU_UTIL",
    "DCGM_FI_DEV_MEM_COPY_UTIL",
    "DCGM_FI_DEV_FB_FREE",
    "DCGM_FI_DEV_FB_USED",
    "DCGM_FI_DEV_SM_CLOCK",
    "DCGM_FI_DEV_MEM_CLOCK",
    "DCGM_FI_DEV_GPU_TEMP",
    "DCGM_FI_DEV_MEMORY_TEMP",
    "DCGM_FI_DEV_POWER_USAGE",
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
    "DCGM_FI_DEV_CLOCKS_EVENT_REASONS",
    "DCGM_FI_DEV_XID_ERRORS",
    "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL",
    "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL",
    "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS",
    "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS",
    "DCGM_FI_DEV_ROW_REMAP_FAILURE",
    "DCGM_FI_DEV_PCIE_REPLAY_COUNTER",
    "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL",
    "DCGM_FI_PROF_GR_ENGINE_ACTIVE",
    "DCGM_FI_PROF_SM_ACTIVE",
    "DCGM_FI_PROF_SM_OCCUPANCY",
    "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE",
    "DCGM_FI_PROF_DRAM_ACTIVE",
    "DCGM_FI_PROF_PCIE_TX_BYTES",
    "DCGM_FI_PROF_PCIE_RX_BYTES",
    "DCGM_FI_PROF_NVLINK_TX_BYTES",
    "DCGM_FI_PROF_NVLINK_RX_BYTES",
}


def test_dcgm_exporter_configured_but_not_started_without_a_gpu(cluster, deploys):
    text = cluster.ssh("compute1", "cat /etc/dcgm-exporter/mlcluster-counters.csv").stdout
    rows = [line.split(", ") for line in text.splitlines() if line and not line.startswith("#")]
    assert {row[0] for row in rows} == DCGM_FIELDS
    assert len(rows) == len(DCGM_FIELDS)
    assert {row[1] for row in rows} == {"gauge", "counter"}
    state = cluster.ssh("compute1", "systemctl is-active mlcluster-dcgm-exporter", check=False)
    assert state.stdout.strip() == "inactive"
    expected = cluster.ssh(
        "compute1", "grep -v '^#' /var/lib/prometheus/node-exporter/mlcluster_node.prom"
    ).stdout.splitlines()
    assert expected == ["mlcluster_node_gpus_expected 0", "mlcluster_node_efa_devices_expected 0"]
