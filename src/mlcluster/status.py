"""`mlcluster status`: the cluster at a glance, from its Prometheus.

Nodes and whether each exporter answers (`up`), Slurm's node states and jobs as the Slurm
exporter reports them, and the alerts firing. Prometheus is found from the inventory, where
playbooks/observability.yml puts it: the first host of group `slurm_controller`, at its
`ansible_host` and `prometheus_port` (9090); `--prometheus URL` names it outright.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from .errors import MlclusterError

DEFAULT_PORT = 9090
TIMEOUT = 10


def prometheus_url(inventory: Path) -> str:
    from .inputs import inventory_data
    from .runner import check_inventory

    data = inventory_data(check_inventory(inventory))
    for group in ("slurm_controller",):
        hosts = (data.get(group) or {}).get("hosts") or []
        if hosts:
            host = hosts[0]
            hostvars = data.get("_meta", {}).get("hostvars", {}).get(host, {})
            address = hostvars.get("ansible_host", host)
            port = hostvars.get("prometheus_port", DEFAULT_PORT)
            return f"http://{address}:{port}"
    raise MlclusterError(
        f"inventory {inventory} has no host in group slurm_controller, where Prometheus runs "
        "(or name it: --prometheus URL)"
    )


def _get(url: str, path: str, **params) -> dict:
    full = f"{url.rstrip('/')}{path}"
    if params:
        full += "?" + urllib.parse.urlencode(params)
    try:
        with urllib.request.urlopen(full, timeout=TIMEOUT) as response:
            body = json.load(response)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise MlclusterError(
            f"Prometheus at {url} did not answer ({exc}); is the cluster deployed "
            "(site.yml, tag observability)?",
            exit_code=3,
        ) from exc
    if body.get("status") != "success":
        raise MlclusterError(f"Prometheus at {url} refused {path}: {body.get('error')}")
    return body["data"]


def query(url: str, expr: str) -> list[dict]:
    return _get(url, "/api/v1/query", query=expr)["result"]


def collect(url: str) -> dict:
    """The status as a dict (what --json prints)."""
    nodes: dict[str, dict] = {}
    for sample in query(url, "up"):
        labels = sample["metric"]
        node = nodes.setdefault(labels.get("node", labels["instance"]), {"exporters": {}})
        node["exporters"][labels["job"]] = sample["value"][1] == "1"
    for sample in query(url, "slurm_node_state == 1"):
        labels = sample["metric"]
        node = nodes.setdefault(labels["node"], {"exporters": {}})
        node.setdefault("slurm", {})[labels["partition"]] = labels["state"]
    for name, node in nodes.items():
        node["name"] = name
        node["up"] = node["exporters"].get("node", False)
        node.setdefault("slurm", {})
    jobs: dict[str, dict[str, int]] = {}
    for sample in query(url, "slurm_jobs"):
        labels = sample["metric"]
        jobs.setdefault(labels["partition"], {})[labels["state"]] = int(float(sample["value"][1]))
    slurm_up = query(url, "slurm_up")
    alerts = [
        {
            "name": a["labels"]["alertname"],
            "state": a["state"],
            "labels": {k: v for k, v in a["labels"].items() if k != "alertname"},
            "summary": a.get("annotations", {}).get("summary", ""),
            "active_since": a.get("activeAt", ""),
        }
        for a in _get(url, "/api/v1/alerts")["alerts"]
    ]
    return {
        "prometheus": url,
        "nodes": [nodes[name] for name in sorted(nodes)],
        "slurm_up": bool(slurm_up) and slurm_up[0]["value"][1] == "1",
        "jobs": {p: dict(sorted(s.items())) for p, s in sorted(jobs.items())},
        "alerts": sorted(
            alerts, key=lambda a: (a["state"], a["name"], sorted(a["labels"].items()))
        ),
    }


def render(status: dict) -> str:
    lines = [f"Prometheus {status['prometheus']}"]
    node_rows = [n for n in status["nodes"] if "node" in n["exporters"]]
    up = sum(1 for n in node_rows if n["up"])
    lines.append(f"Nodes up: {up}/{len(node_rows)}")
    width = max((len(n["name"]) for n in status["nodes"]), default=4)
    for node in status["nodes"]:
        exporters = " ".join(
            f"{job}={'up' if ok else 'DOWN'}" for job, ok in sorted(node["exporters"].items())
        )
        slurm = ", ".join(f"{state} ({p})" for p, state in sorted(node["slurm"].items()))
        lines.append(
            f"  {node['name']:<{width}}  exporters: {exporters or '-'}  Slurm: {slurm or '-'}"
        )
    if not status["slurm_up"]:
        lines.append("Slurm: the exporter's commands fail or it is not scraped")
    running = sum(s.get("running", 0) for s in status["jobs"].values())
    pending = sum(s.get("pending", 0) for s in status["jobs"].values())
    per_partition = "; ".join(
        f"{p}: " + ", ".join(f"{state} {n}" for state, n in states.items())
        for p, states in status["jobs"].items()
    )
    lines.append(
        f"Jobs: running {running}, pending {pending}"
        + (f" ({per_partition})" if per_partition else "")
    )
    firing = [a for a in status["alerts"] if a["state"] == "firing"]
    pending_alerts = [a for a in status["alerts"] if a["state"] == "pending"]
    lines.append(
        f"Alerts firing: {len(firing)}"
        + (f" (pending: {len(pending_alerts)})" if pending_alerts else "")
    )
    for alert in firing:
        lines.append(f"  {alert['name']}  {alert['summary']}")
    return "\n".join(lines)


def run_status(inventory: Path, prometheus: str | None = None, as_json: bool = False) -> int:
    url = prometheus or prometheus_url(inventory)
    status = collect(url)
    print(json.dumps(status, indent=2) if as_json else render(status))
    return 0
