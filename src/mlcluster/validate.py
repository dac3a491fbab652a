"""`mlcluster validate`: run the node checks (tests/node, testinfra) against an inventory.

The checks run in this process through pytest with a plugin that collects each result; the
summary is a table of nodes by checks, the report a JSON file
``{"passed": n, "failed": n, "skipped": n, "checks": [...]}``. Exit code 0 when every check
passed, 1 when one failed, 2 when the checks could not run at all (no inventory, no hosts).
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from .paths import project_root, venv_bin

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_NOT_RUN = 2

_NODE_ID = re.compile(r"^(?P<file>[^:]+)::(?P<check>[^\[]+)\[(?:ansible://)?(?P<node>[^\]]+)\]$")
_MARK = {"passed": "ok", "failed": "FAIL", "skipped": "-"}


@dataclass
class Check:
    node: str
    check: str
    outcome: str
    message: str = ""
    duration_s: float = 0.0


class _Collector:
    """pytest plugin that records one Check per test (setup errors count as failures)."""

    def __init__(self) -> None:
        self.checks: list[Check] = []
        self.collect_errors: list[str] = []

    def pytest_runtest_logreport(self, report) -> None:
        failed_setup = report.when in ("setup", "teardown") and report.failed
        if (
            report.when != "call"
            and not failed_setup
            and not (report.when == "setup" and report.skipped)
        ):
            return
        match = _NODE_ID.match(report.nodeid)
        node = match["node"] if match else "?"
        check = match["check"] if match else report.nodeid
        if report.skipped:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else ""
            message = str(reason).removeprefix("Skipped: ")
        elif report.failed:
            message = _short(report)
        else:
            message = ""
        self.checks.append(Check(node, check, report.outcome, message, round(report.duration, 2)))

    def pytest_collectreport(self, report) -> None:
        if report.failed:
            self.collect_errors.append(_short(report))


def _short(report) -> str:
    """The assertion's message, not the traceback."""
    crash = getattr(report.longrepr, "reprcrash", None)
    text = crash.message if crash is not None else str(report.longrepr)
    first = text.strip().splitlines()[0] if text.strip() else "failed"
    return first.removeprefix("AssertionError: ")[:300]


def run_checks(inventory: Path, extra_args: list[str] | None = None) -> tuple[int, _Collector]:
    import pytest

    # testinfra reads the inventory with ansible-inventory, from the project's venv.
    os.environ["PATH"] = f"{venv_bin()}{os.pathsep}{os.environ.get('PATH', '')}"
    collector = _Collector()
    args = [
        str(project_root() / "tests" / "node"),
        f"--rootdir={project_root()}",
        "--hosts=ansible://all",
        f"--ansible-inventory={inventory}",
        "-p",
        "no:cacheprovider",
        # The table below replaces pytest's own report.
        "-p",
        "no:terminal",
        "-o",
        "addopts=",
        *(extra_args or []),
    ]
    rc = pytest.main(args, plugins=[collector])
    return int(rc), collector


def summary_table(checks: list[Check]) -> str:
    nodes = sorted({c.node for c in checks})
    names = list(dict.fromkeys(c.check.removeprefix("test_") for c in checks))
    cell = {
        (c.node, c.check.removeprefix("test_")): _MARK.get(c.outcome, c.outcome) for c in checks
    }
    width = max([len("node"), *(len(n) for n in nodes)])
    header = ["node".ljust(width), *names]
    rows = [" | ".join(header)]
    rows.append("-+-".join("-" * len(h) for h in header))
    for node in nodes:
        cells = [node.ljust(width)] + [cell.get((node, n), "").ljust(len(n)) for n in names]
        rows.append(" | ".join(cells))
    failures = [c for c in checks if c.outcome == "failed"]
    if failures:
        rows.append("")
        rows += [f"FAIL {c.node}: {c.check.removeprefix('test_')}: {c.message}" for c in failures]
    return "\n".join(rows)


def run_validate(inventory: Path, report: Path | None = None, say=print) -> int:
    """Run the node checks against INVENTORY, print a table, write REPORT; exit code."""
    inventory = Path(inventory)
    if not inventory.exists():
        say(f"mlcluster validate: inventory {inventory} does not exist")
        return EXIT_NOT_RUN
    rc, collector = run_checks(inventory.resolve())
    checks = collector.checks
    counts = {k: sum(c.outcome == k for c in checks) for k in ("passed", "failed", "skipped")}
    if report is not None:
        report = Path(report)
        report.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            **counts,
            "inventory": str(inventory),
            "errors": collector.collect_errors,
            "checks": [asdict(c) for c in checks],
        }
        report.write_text(json.dumps(payload, indent=2) + "\n")
    if not checks:
        detail = "; ".join(collector.collect_errors) or f"pytest exit code {rc}"
        say(f"mlcluster validate: no check ran ({detail})")
        return EXIT_NOT_RUN
    say(summary_table(checks))
    say(
        f"\n{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped "
        f"on {len({c.node for c in checks})} nodes"
    )
    return EXIT_FAILED if counts["failed"] or collector.collect_errors else EXIT_OK


if __name__ == "__main__":
    sys.exit(run_validate(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else None))
