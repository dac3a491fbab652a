"""`mlcluster status` against a Prometheus HTTP API on loopback that answers what a deployed
local cluster's Prometheus answers (the integration test asks the real one)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from mlcluster.paths import project_root


def vector(*samples):
    return [{"metric": labels, "value": [1764658200.0, value]} for labels, value in samples]


ANSWERS = {
    "up": vector(
        ({"job": "node", "node": "compute1", "instance": "10.0.0.2:9100"}, "1"),
        ({"job": "node", "node": "compute2", "instance": "10.0.0.3:9100"}, "0"),
        ({"job": "node", "node": "controller", "instance": "10.0.0.1:9100"}, "1"),
        ({"job": "slurm", "node": "controller", "instance": "localhost:9341"}, "1"),
        ({"job": "prometheus", "node": "controller", "instance": "localhost:9090"}, "1"),
    ),
    "slurm_node_state == 1": vector(
        ({"node": "compute1", "partition": "compute", "state": "allocated"}, "1"),
        ({"node": "compute2", "partition": "compute", "state": "drained"}, "1"),
    ),
    "slurm_jobs": vector(
        ({"partition": "compute", "state": "running"}, "1"),
        ({"partition": "compute", "state": "pending"}, "2"),
    ),
    "slurm_up": vector(({"job": "slurm", "node": "controller"}, "1")),
}
ALERTS = [
    {
        "labels": {"alertname": "SlurmNodeDrained", "node": "compute2", "severity": "warning"},
        "annotations": {"summary": "Slurm node compute2 is drained"},
        "state": "firing",
        "activeAt": "2026-12-02T06:50:00Z",
    },
    {
        "labels": {"alertname": "NodeDown", "job": "node", "node": "compute2"},
        "annotations": {"summary": "compute2: node exporter unreachable"},
        "state": "pending",
        "activeAt": "2026-12-02T06:51:00Z",
    },
]


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        url = urllib.parse.urlparse(self.path)
        if url.path == "/api/v1/query":
            expr = urllib.parse.parse_qs(url.query)["query"][0]
            data = {"resultType": "vector", "result": ANSWERS[expr]}
        elif url.path == "/api/v1/alerts":
            data = {"alerts": ALERTS}
        else:
            self.send_error(404)
            return
        body = json.dumps({"status": "success", "data": data}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def prometheus():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def inventory(tmp_path, port):
    path = tmp_path / "hosts.yml"
    hosts = {"controller": {"ansible_host": "127.0.0.1", "prometheus_port": port}}
    path.write_text(
        yaml.safe_dump(
            {
                "all": {
                    "children": {
                        "slurm_controller": {"hosts": hosts},
                        "slurm_compute": {"hosts": {"c1": {}}},
                    }
                }
            }
        )
    )
    return path


def status(*args):
    return subprocess.run(
        [sys.executable, "-m", "mlcluster.cli", "status", *args],
        cwd=project_root(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_status_text_from_the_inventory_controller(prometheus, tmp_path):
    proc = status("-i", str(inventory(tmp_path, prometheus)))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        f"Prometheus http://127.0.0.1:{prometheus}",
        "Nodes up: 2/3",
        "  compute1    exporters: node=up  Slurm: allocated (compute)",
        "  compute2    exporters: node=DOWN  Slurm: drained (compute)",
        "  controller  exporters: node=up prometheus=up slurm=up  Slurm: -",
        "Jobs: running 1, pending 2 (compute: pending 2, running 1)",
        "Alerts firing: 1 (pending: 1)",
        "  SlurmNodeDrained  Slurm node compute2 is drained",
    ]


def test_status_json(prometheus, tmp_path):
    proc = status("-i", str(inventory(tmp_path, prometheus)), "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["prometheus"] == f"http://127.0.0.1:{prometheus}"
    assert data["nodes"][1] == {
        "exporters": {"node": False},
        "slurm": {"compute": "drained"},
        "name": "compute2",
        "up": False,
    }
    assert [n["name"] for n in data["nodes"]] == ["compute1", "compute2", "controller"]
    assert data["slurm_up"] is True
    assert data["jobs"] == {"compute": {"pending": 2, "running": 1}}
    assert [(a["name"], a["state"]) for a in data["alerts"]] == [
        ("SlurmNodeDrained", "firing"),
        ("NodeDown", "pending"),
    ]
    assert data["alerts"][0]["labels"] == {"node": "compute2", "severity": "warning"}


def test_status_prometheus_unreachable_exits_3(tmp_path):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = status("--prometheus", f"http://127.0.0.1:{port}", "-i", str(tmp_path))
    assert proc.returncode == 3
    assert proc.stderr.startswith(f"mlcluster: error: Prometheus at http://127.0.0.1:{port} did")


def test_status_inventory_without_controller_is_bad_input(tmp_path):
    path = tmp_path / "hosts.yml"
    path.write_text(yaml.safe_dump({"all": {"children": {"slurm_compute": {"hosts": {"c1": {}}}}}}))
    proc = status("-i", str(path))
    assert proc.returncode == 2
    assert "has no host in group slurm_controller, where Prometheus runs" in proc.stderr
