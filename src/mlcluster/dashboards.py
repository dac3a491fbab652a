"""Grafana dashboards of the cluster, generated from code with grafana-foundation-sdk.

`python -m mlcluster.dashboards` writes observability/dashboards/<uid>.json; `--check` only
says whether the files are up to date (the unit tests run it). Each dashboard picks its
Prometheus data source through a `datasource` variable, so the JSON imports as it is into any
Grafana or Amazon Managed Grafana workspace. The queries use the series of mlcluster's
exporters and their `node` label (roles prometheus, node_exporter, slurm_exporter,
dcgm_exporter; docs/observability.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from mlcluster.paths import project_root

DATASOURCE = "${datasource}"
GRID_WIDTH = 24  # Grafana's grid is 24 columns wide


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""


@dataclass(frozen=True)
class PanelSpec:
    title: str
    kind: str  # timeseries, stat or table
    queries: tuple[Query, ...]
    unit: str = ""
    description: str = ""


@dataclass(frozen=True)
class DashboardSpec:
    uid: str
    title: str
    description: str
    panels: tuple[PanelSpec, ...]
    node_variable: bool = True
    tags: tuple[str, ...] = field(default=("mlcluster",))


NODE = 'node=~"$node"'

DASHBOARDS = (
    DashboardSpec(
        uid="mlcluster-overview",
        title="mlcluster: cluster overview",
        description="Nodes up, Slurm node states, running jobs, alerts firing, CPU, memory, disk.",
        panels=(
            PanelSpec("Nodes up", "stat", (Query('sum(up{job="node"})'),)),
            PanelSpec("Nodes down", "stat", (Query('count(up{job="node"} == 0) or vector(0)'),)),
            PanelSpec("Running jobs", "stat", (Query('sum(slurm_jobs{state="running"})'),)),
            PanelSpec("Pending jobs", "stat", (Query('sum(slurm_jobs{state="pending"})'),)),
            PanelSpec(
                "Alerts firing",
                "stat",
                (Query('count(ALERTS{alertstate="firing"}) or vector(0)'),),
            ),
            PanelSpec(
                "Slurm nodes by state",
                "timeseries",
                (Query("sum by (state) (slurm_nodes)", "{{state}}"),),
            ),
            PanelSpec(
                "CPU busy",
                "timeseries",
                (
                    Query(
                        f'1 - avg by (node) (rate(node_cpu_seconds_total{{mode="idle",{NODE}}}'
                        "[$__rate_interval]))",
                        "{{node}}",
                    ),
                ),
                unit="percentunit",
            ),
            PanelSpec(
                "Memory used",
                "timeseries",
                (
                    Query(
                        f"1 - node_memory_MemAvailable_bytes{{{NODE}}}"
                        f" / node_memory_MemTotal_bytes{{{NODE}}}",
                        "{{node}}",
                    ),
                ),
                unit="percentunit",
            ),
            PanelSpec(
                "Filesystems free",
                "timeseries",
                (
                    Query(
                        f'node_filesystem_avail_bytes{{fstype!~"tmpfs|ramfs",{NODE}}}'
                        f' / node_filesystem_size_bytes{{fstype!~"tmpfs|ramfs",{NODE}}}',
                        "{{node}} {{mountpoint}}",
                    ),
                ),
                unit="percentunit",
            ),
            PanelSpec(
                "Mounts present",
                "table",
                (Query(f"mlcluster_node_mount_present{{{NODE}}}", "{{node}} {{mountpoint}}"),),
            ),
            PanelSpec(
                "Alerts firing by name",
                "table",
                (Query('sum by (alertname, node) (ALERTS{alertstate="firing"})'),),
            ),
        ),
    ),
    DashboardSpec(
        uid="mlcluster-slurm",
        title="mlcluster: Slurm queue",
        description="Jobs by state and partition, pending reasons, CPUs and GPUs, scheduler.",
        node_variable=False,
        panels=(
            PanelSpec(
                "Jobs by state", "timeseries", (Query("sum by (state) (slurm_jobs)", "{{state}}"),)
            ),
            PanelSpec(
                "Jobs by partition",
                "timeseries",
                (Query("sum by (partition, state) (slurm_jobs)", "{{partition}} {{state}}"),),
            ),
            PanelSpec(
                "Pending jobs by reason",
                "timeseries",
                (Query("sum by (reason) (slurm_jobs_pending)", "{{reason}}"),),
            ),
            PanelSpec(
                "CPUs allocated and idle",
                "timeseries",
                (
                    Query(
                        'slurm_partition_cpus{state=~"allocated|idle"}', "{{partition}} {{state}}"
                    ),
                ),
            ),
            PanelSpec(
                "GPUs allocated and idle",
                "timeseries",
                (
                    Query(
                        'slurm_partition_gpus{state=~"allocated|idle"}', "{{partition}} {{state}}"
                    ),
                ),
            ),
            PanelSpec(
                "Node states",
                "table",
                (Query("slurm_node_state == 1", "{{node}} {{partition}} {{state}}"),),
            ),
            PanelSpec(
                "Scheduler cycle (last)",
                "timeseries",
                (Query("slurm_scheduler_last_cycle_microseconds", "{{scheduler}}"),),
                unit="µs",
            ),
            PanelSpec(
                "Scheduler queue length",
                "timeseries",
                (Query("slurm_scheduler_last_queue_length", "{{scheduler}}"),),
            ),
            PanelSpec(
                "Jobs started and completed today",
                "timeseries",
                (
                    Query("slurm_scheduler_jobs_started", "started"),
                    Query("slurm_scheduler_jobs_completed", "completed"),
                    Query("slurm_scheduler_jobs_failed", "failed"),
                ),
            ),
            PanelSpec("Slurm commands answering", "stat", (Query("slurm_up"),)),
        ),
    ),
    DashboardSpec(
        uid="mlcluster-gpu",
        title="mlcluster: GPUs",
        description="DCGM: utilisation, memory, power, temperature, XID errors, NVLink traffic.",
        panels=(
            PanelSpec(
                "GPUs seen / expected",
                "table",
                (
                    Query(f"count by (node) (DCGM_FI_DEV_GPU_TEMP{{{NODE}}})", "seen {{node}}"),
                    Query(f"mlcluster_node_gpus_expected{{{NODE}}}", "expected {{node}}"),
                ),
            ),
            PanelSpec(
                "GPU utilisation",
                "timeseries",
                (Query(f"DCGM_FI_DEV_GPU_UTIL{{{NODE}}}", "{{node}} GPU {{gpu}}"),),
                unit="percent",
            ),
            PanelSpec(
                "Tensor pipe active",
                "timeseries",
                (Query(f"DCGM_FI_PROF_PIPE_TENSOR_ACTIVE{{{NODE}}}", "{{node}} GPU {{gpu}}"),),
                unit="percentunit",
            ),
            PanelSpec(
                "Framebuffer used",
                "timeseries",
                (Query(f"DCGM_FI_DEV_FB_USED{{{NODE}}}", "{{node}} GPU {{gpu}}"),),
                unit="decmbytes",
            ),
            PanelSpec(
                "Power",
                "timeseries",
                (Query(f"DCGM_FI_DEV_POWER_USAGE{{{NODE}}}", "{{node}} GPU {{gpu}}"),),
                unit="watt",
            ),
            PanelSpec(
                "Temperature",
                "timeseries",
                (Query(f"DCGM_FI_DEV_GPU_TEMP{{{NODE}}}", "{{node}} GPU {{gpu}}"),),
                unit="celsius",
            ),
            PanelSpec(
                "XID errors (last value)",
                "table",
                (Query(f"DCGM_FI_DEV_XID_ERRORS{{{NODE}}} != 0", "{{node}} GPU {{gpu}}"),),
            ),
            PanelSpec(
                "NVLink traffic",
                "timeseries",
                (
                    Query(f"DCGM_FI_PROF_NVLINK_TX_BYTES{{{NODE}}}", "tx {{node}} GPU {{gpu}}"),
                    Query(f"DCGM_FI_PROF_NVLINK_RX_BYTES{{{NODE}}}", "rx {{node}} GPU {{gpu}}"),
                ),
                unit="Bps",
            ),
        ),
    ),
    DashboardSpec(
        uid="mlcluster-efa",
        title="mlcluster: EFA",
        description="EFA devices and hardware counters: RDMA traffic, retransmits, errors.",
        panels=(
            PanelSpec(
                "EFA devices seen / expected",
                "table",
                (
                    Query(f"efa_devices{{{NODE}}}", "seen {{node}}"),
                    Query(f"mlcluster_node_efa_devices_expected{{{NODE}}}", "expected {{node}}"),
                ),
            ),
            PanelSpec(
                "Collector status",
                "table",
                (Query(f"efa_collector_info{{{NODE}}}", "{{node}} {{status}}"),),
            ),
            PanelSpec(
                "RDMA read and write",
                "timeseries",
                (
                    Query(
                        f'rate(efa_hw_counter_total{{counter=~"rdma_read_bytes|rdma_write_bytes",{NODE}}}'
                        "[$__rate_interval])",
                        "{{node}} {{device}} {{counter}}",
                    ),
                ),
                unit="Bps",
            ),
            PanelSpec(
                "Send and receive",
                "timeseries",
                (
                    Query(
                        f'rate(efa_hw_counter_total{{counter=~"send_bytes|recv_bytes",{NODE}}}'
                        "[$__rate_interval])",
                        "{{node}} {{device}} {{counter}}",
                    ),
                ),
                unit="Bps",
            ),
            PanelSpec(
                "Retransmits",
                "timeseries",
                (
                    Query(
                        f'rate(efa_hw_counter_total{{counter=~"retrans_.*",{NODE}}}'
                        "[$__rate_interval])",
                        "{{node}} {{device}} {{counter}}",
                    ),
                ),
            ),
            PanelSpec(
                "Errors",
                "timeseries",
                (
                    Query(
                        f'increase(efa_hw_counter_total{{counter=~".*_err|rx_drops|'
                        f'impaired_remote_conn_events|unresponsive_remote_events",{NODE}}}[5m])',
                        "{{node}} {{device}} {{counter}}",
                    ),
                ),
            ),
        ),
    ),
)


def queries(spec: DashboardSpec) -> list[str]:
    return [q.expr for panel in spec.panels for q in panel.queries]


def build(spec: DashboardSpec) -> dict:
    """The dashboard as Grafana's JSON model."""
    from grafana_foundation_sdk.builders import dashboard, prometheus, stat, table, timeseries
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models.dashboard import (
        DashboardCursorSync,
        DataSourceRef,
        GridPos,
        VariableOption,
        VariableRefresh,
    )

    source = DataSourceRef(type_val="prometheus", uid=DATASOURCE)
    board = (
        dashboard.Dashboard(spec.title)
        .uid(spec.uid)
        .description(spec.description)
        .tags(list(spec.tags))
        .refresh("30s")
        .time("now-3h", "now")
        .timezone("browser")
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .with_variable(
            dashboard.DatasourceVariable("datasource")
            .label("Prometheus")
            .type("prometheus")
            .current(VariableOption(selected=True, text="Prometheus", value="Prometheus"))
        )
    )
    if spec.node_variable:
        board = board.with_variable(
            dashboard.QueryVariable("node")
            .label("Node")
            .datasource(source)
            .query({"query": 'label_values(up{job="node"}, node)', "refId": "node"})
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .multi(True)
            .include_all(True)
            .all_value(".*")
            .current(VariableOption(selected=True, text="All", value="$__all"))
        )
    builders = {"timeseries": timeseries.Panel, "stat": stat.Panel, "table": table.Panel}
    x = y = row_height = 0
    for number, panel_spec in enumerate(spec.panels, start=1):
        panel = builders[panel_spec.kind]().id(number).title(panel_spec.title).datasource(source)
        width, height = (4, 4) if panel_spec.kind == "stat" else (12, 8)
        if x + width > GRID_WIDTH:
            x, y = 0, y + row_height
            row_height = 0
        panel = panel.grid_pos(GridPos(h=height, w=width, x=x, y=y))
        x, row_height = x + width, max(row_height, height)
        if panel_spec.description:
            panel = panel.description(panel_spec.description)
        if panel_spec.unit:
            panel = panel.unit(panel_spec.unit)
        for index, query in enumerate(panel_spec.queries):
            target = prometheus.Dataquery().expr(query.expr).ref_id(chr(ord("A") + index))
            target = target.datasource(source)
            if query.legend:
                target = target.legend_format(query.legend)
            if panel_spec.kind in ("stat", "table"):
                target = target.instant()
            panel = panel.with_target(target)
        board = board.with_panel(panel)
    return json.loads(json.dumps(board.build(), cls=JSONEncoder))


def render(spec: DashboardSpec) -> str:
    return json.dumps(build(spec), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def out_dir() -> Path:
    return project_root() / "observability" / "dashboards"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only say whether files are stale")
    args = parser.parse_args(argv)
    stale = []
    for spec in DASHBOARDS:
        path = out_dir() / f"{spec.uid}.json"
        text = render(spec)
        if path.exists() and path.read_text() == text:
            continue
        stale.append(path.relative_to(project_root()).as_posix())
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if args.check and stale:
        print("out of date (run python -m mlcluster.dashboards): " + ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
