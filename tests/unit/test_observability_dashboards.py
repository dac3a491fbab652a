"""The Grafana dashboards: generated from src/mlcluster/dashboards.py (grafana-foundation-sdk),
committed as JSON, every panel's query parsed by promtool, every metric one that mlcluster's
exporters (or the node exporter) really produce. No Grafana server can be installed here, so
the import itself is not exercised; the JSON is checked for what Grafana's import needs."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import yaml

from mlcluster import dashboards
from mlcluster.paths import project_root

ROOT = project_root()


def test_committed_dashboards_are_generated_from_code(capsys):
    assert dashboards.main(["--check"]) == 0, capsys.readouterr().out
    names = sorted(p.name for p in dashboards.out_dir().glob("*.json"))
    assert names == [
        "mlcluster-efa.json",
        "mlcluster-gpu.json",
        "mlcluster-overview.json",
        "mlcluster-slurm.json",
    ]


def load_all() -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in dashboards.out_dir().glob("*.json")}


def test_dashboards_have_what_grafana_import_needs():
    for uid, board in load_all().items():
        assert board["uid"] == uid and board["title"].startswith("mlcluster: ")
        assert isinstance(board["schemaVersion"], int)
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        ids = [panel["id"] for panel in board["panels"]]
        assert len(ids) == len(set(ids)) and len(ids) >= 6
        for panel in board["panels"]:
            pos = panel["gridPos"]
            assert pos["x"] + pos["w"] <= 24, (uid, panel["title"])
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert panel["type"] in {"timeseries", "stat", "table"}
            ref_ids = [t["refId"] for t in panel["targets"]]
            assert ref_ids == [chr(ord("A") + i) for i in range(len(ref_ids))]
            assert all(t["expr"] for t in panel["targets"])
        # Panels do not overlap.
        cells = set()
        for panel in board["panels"]:
            pos = panel["gridPos"]
            for x in range(pos["x"], pos["x"] + pos["w"]):
                for y in range(pos["y"], pos["y"] + pos["h"]):
                    assert (x, y) not in cells, (uid, panel["title"])
                    cells.add((x, y))


def expressions() -> list[tuple[str, str, str]]:
    return [
        (uid, panel["title"], target["expr"])
        for uid, board in load_all().items()
        for panel in board["panels"]
        for target in panel["targets"]
    ]


@pytest.mark.skipif(not shutil.which("promtool"), reason="promtool missing (scripts/setup.sh)")
def test_every_panel_query_parses(tmp_path):
    """promtool parses each query, as a recording rule (Grafana's variables filled in)."""
    rules = [
        {
            "record": f"dashboard:query:{i}",
            "expr": expr.replace("$__rate_interval", "1m").replace("$node", ".*"),
        }
        for i, (_uid, _title, expr) in enumerate(expressions())
    ]
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    check = subprocess.run(
        ["promtool", "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"SUCCESS: {len(rules)} rules found" in check.stdout
    # A broken query is caught (the check is not vacuous).
    path.write_text(
        yaml.safe_dump(
            {"groups": [{"name": "d", "rules": [{"record": "x:y", "expr": "sum by (node"}]}]}
        )
    )
    broken = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True)
    assert broken.returncode != 0


def test_every_metric_is_one_the_cluster_produces():
    """The mlcluster metrics a panel reads are made by the exporter (the Slurm exporter run on
    Slurm's output) or appear in the collector that writes them; the DCGM fields are in
    dcgm-exporter's counters file."""
    from .test_observability_collectors import SCONTROL, SDIAG, SINFO, SLURM_EXPORTER, SQUEUE, load

    outputs = {"sinfo": SINFO, "scontrol": SCONTROL, "squeue": SQUEUE, "sdiag": SDIAG}
    slurm = {family.name for family in load(SLURM_EXPORTER).metrics(outputs)}
    sources = (ROOT / "roles/node_exporter/files/mlcluster-node-collector").read_text() + (
        ROOT / "roles/node_exporter/templates/var/lib/prometheus/node-exporter"
        "/mlcluster_node.prom.j2"
    ).read_text()
    counters = yaml.safe_load((ROOT / "roles/dcgm_exporter/defaults/main.yml").read_text())
    fields = {row[0] for row in counters["dcgm_exporter_counters"]}
    seen = set()
    for _uid, _title, expr in expressions():
        for name in re.findall(r"\b((?:slurm|efa|mlcluster_node|DCGM_FI)_\w+)", expr):
            seen.add(name)
            if name.startswith("DCGM_FI"):
                assert name in fields, name
            elif name.startswith("slurm_"):
                assert name in slurm, name
            else:
                family = re.sub(r"_total$", "", name)
                assert f'"{family}"' in sources or f"{family} " in sources, name
    assert {"slurm_jobs", "efa_hw_counter_total", "DCGM_FI_DEV_GPU_UTIL"} <= seen
