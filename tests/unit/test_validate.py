"""mlcluster validate: the summary table, the report and the exit codes (no nodes needed)."""

from __future__ import annotations

import json
from types import SimpleNamespace

from mlcluster import validate


def _report(nodeid, outcome, when="call", message=""):
    crash = SimpleNamespace(message=message)
    return SimpleNamespace(
        nodeid=nodeid,
        when=when,
        outcome=outcome,
        failed=outcome == "failed",
        skipped=outcome == "skipped",
        passed=outcome == "passed",
        duration=0.5,
        longrepr=("file", 1, "Skipped: a login node runs no Slurm daemon")
        if outcome == "skipped"
        else SimpleNamespace(reprcrash=crash),
    )


def test_collector_records_node_check_and_message():
    collector = validate._Collector()
    base = "src/mlcluster/nodechecks/test_slurm_node.py::"
    collector.pytest_runtest_logreport(_report(base + "test_munge[ansible://compute1]", "passed"))
    collector.pytest_runtest_logreport(
        _report(
            base + "test_node_usable[ansible://compute2]",
            "failed",
            message="AssertionError: compute2: drain|x",
        )
    )
    collector.pytest_runtest_logreport(
        _report(base + "test_slurm_daemons[ansible://login1]", "skipped", when="setup")
    )
    # Only the call phase of a passing test counts once.
    collector.pytest_runtest_logreport(
        _report(base + "test_munge[ansible://compute1]", "passed", when="teardown")
    )
    assert [(c.node, c.check, c.outcome, c.message) for c in collector.checks] == [
        ("compute1", "test_munge", "passed", ""),
        ("compute2", "test_node_usable", "failed", "compute2: drain|x"),
        ("login1", "test_slurm_daemons", "skipped", "a login node runs no Slurm daemon"),
    ]


def test_summary_table_has_a_row_per_node_and_lists_failures():
    checks = [
        validate.Check("compute1", "test_munge", "passed"),
        validate.Check("compute1", "test_node_usable", "failed", "compute1: down*|Not responding"),
        validate.Check("controller", "test_munge", "passed"),
        validate.Check("controller", "test_node_usable", "skipped"),
    ]
    table = validate.summary_table(checks).splitlines()
    assert table[0].split(" | ") == ["node      ", "munge", "node_usable"]
    assert table[2].split(" | ")[:3] == ["compute1  ", "ok   ", "FAIL       "]
    assert table[3].split(" | ")[:3] == ["controller", "ok   ", "-          "]
    assert table[-1] == "FAIL compute1: node_usable: compute1: down*|Not responding"


def test_exit_codes_and_report(tmp_path, monkeypatch):
    assert validate.run_validate(tmp_path / "missing", say=lambda _m: None) == validate.EXIT_NOT_RUN

    collector = validate._Collector()
    collector.checks = [
        validate.Check("compute1", "test_munge", "passed"),
        validate.Check("compute1", "test_clock", "failed", "off by 3 s"),
    ]
    monkeypatch.setattr(validate, "run_checks", lambda _inv, level="quick": (1, collector))
    report = tmp_path / "report.json"
    out = []
    assert validate.run_validate(tmp_path, report, say=out.append) == validate.EXIT_FAILED
    data = json.loads(report.read_text())
    assert (data["passed"], data["failed"], data["skipped"]) == (1, 1, 0)
    assert data["checks"][1] == {
        "node": "compute1",
        "check": "test_clock",
        "outcome": "failed",
        "message": "off by 3 s",
        "duration_s": 0.0,
    }
    assert out[-1].strip() == "1 passed, 1 failed, 0 skipped on 1 nodes"

    collector.checks = []
    assert validate.run_validate(tmp_path, None, say=out.append) == validate.EXIT_NOT_RUN
