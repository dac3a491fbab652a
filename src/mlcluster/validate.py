"""`mlcluster validate`: run the node checks (mlcluster.nodechecks, testinfra) against an inventory.

The checks run in this process through pytest with a plugin that collects each result; the
summary is a table of nodes by checks, the report a JSON file
``{"passed": n, "failed": n, "skipped": n, "checks": [...]}``. Exit code 0 when every check
passed, 1 when one failed, 2 when the checks could not run at all (no inventory, no hosts).

Levels: ``quick`` (daemons, devices, libraries), ``standard`` (adds DCGM's short diagnostic),
``full`` (DCGM's long diagnostic and a two-node fabric ping-pong as a Slurm job: libfabric's
``fi_pingpong`` over the efa provider where the nodes have EFA, over tcp elsewhere, which says
so). With ``drain``, every compute node with a failed check is drained in Slurm with the
check and its message as the reason, so the scheduler stops placing jobs there.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from .paths import venv_bin

# The checks ship inside the package, so an installed wheel can run them.
NODE_CHECKS = Path(__file__).resolve().parent / "nodechecks"

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_NOT_RUN = 2

_NODE_ID = re.compile(r"^(?P<file>[^:]+)::(?P<check>[^\[]+)\[(?:ansible://)?(?P<node>[^\]]+)\]$")
_MARK = {"passed": "ok", "failed": "FAIL", "skipped": "-"}
LEVELS = ("quick", "standard", "full")
CLUSTER = "cluster"

# One task per node: the first node serves, the second connects to it. EFA where fi_info shows
# the efa provider (reliable datagram endpoints), tcp (message endpoints) elsewhere.
_PINGPONG = r"""
prov=tcp; ep=msg
if fi_info -p efa >/dev/null 2>&1; then prov=efa; ep=rdm; fi
server=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
echo "provider $prov"
if [ "$SLURM_PROCID" = 0 ]; then
  exec timeout 60 fi_pingpong -p "$prov" -e "$ep" -I 200 -S 65536
fi
sleep 2
exec timeout 60 fi_pingpong -p "$prov" -e "$ep" -I 200 -S 65536 "$server"
"""


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


def run_checks(
    inventory: Path, extra_args: list[str] | None = None, level: str = "quick"
) -> tuple[int, _Collector]:
    import pytest

    # testinfra reads the inventory with ansible-inventory, from the project's venv.
    os.environ["PATH"] = f"{venv_bin()}{os.pathsep}{os.environ.get('PATH', '')}"
    collector = _Collector()
    args = [
        str(NODE_CHECKS),
        f"--rootdir={NODE_CHECKS}",
        "--hosts=ansible://all",
        f"--ansible-inventory={inventory}",
        "-p",
        "no:cacheprovider",
        # The table below replaces pytest's own report.
        "-p",
        "no:terminal",
        "-o",
        "addopts=",
        # The check's own message as the reason: without the terminal plugin pytest's rewritten
        # comparison asserts lose it (their failure reads only "AssertionError").
        "--assert=plain",
        f"--level={level}",
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


def parse_pingpong(output: str) -> dict:
    """Provider and the client's row of fi_pingpong's table (bytes, MB/s, usec/xfer)."""
    provider = next(
        (line.split()[-1] for line in output.splitlines() if line.startswith("provider ")), None
    )
    rows = []
    for line in output.splitlines():
        fields = line.split()
        if len(fields) >= 8 and fields[1].isdigit() and fields[2].startswith("="):
            rows.append(
                {
                    "bytes": fields[0],
                    "mb_per_s": float(fields[5]),
                    "usec_per_xfer": float(fields[6]),
                }
            )
    return {"provider": provider, "rows": rows}


def fabric_pingpong(inventory: Path) -> Check:
    """A two-node fi_pingpong as a Slurm job, run from the controller."""
    from .errors import MlclusterError
    from .workload_run import controller_target

    name = "test_fabric_pingpong"
    try:
        target = controller_target(inventory)
        command = (
            "cd /tmp && timeout 150 srun -N2 --ntasks-per-node=1 --job-name=mlcluster-pingpong "
            f"bash -c {shlex.quote(_PINGPONG)}"
        )
        proc = target.run(command, timeout=180)
    except MlclusterError as exc:
        return Check(CLUSTER, name, "failed", str(exc))
    result = parse_pingpong(proc.stdout)
    if proc.returncode != 0 or len(result["rows"]) < 2:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return Check(
            CLUSTER, name, "failed", f"fi_pingpong failed (exit {proc.returncode}): {tail[0]}"
        )
    row = result["rows"][0]
    note = "" if result["provider"] == "efa" else " (no EFA: the fabric path checked over tcp)"
    message = (
        f"{result['provider']}: {row['bytes']} messages at {row['mb_per_s']} MB/s, "
        f"{row['usec_per_xfer']} us each{note}"
    )
    return Check(CLUSTER, name, "passed", message)


def drain_failed(inventory: Path, checks: list[Check], say=print) -> list[dict]:
    """Drain every compute node with a failed check, the check and its message as reason."""
    import testinfra

    from .workload_run import controller_target

    failed: dict[str, list[Check]] = {}
    for check in checks:
        if check.outcome == "failed" and check.node != CLUSTER:
            failed.setdefault(check.node, []).append(check)
    if not failed:
        return []
    runner = testinfra.utils.ansible_runner.AnsibleRunner(str(inventory))
    computes = set(runner.get_hosts("slurm_compute"))
    target = controller_target(inventory)
    drained = []
    for node, node_checks in sorted(failed.items()):
        if node not in computes:
            continue
        host = testinfra.get_host(f"ansible://{node}", ansible_inventory=str(inventory))
        slurm_name = host.check_output("hostname -s")
        first = node_checks[0]
        reason = f"mlcluster validate: {first.check.removeprefix('test_')}: {first.message}"
        reason = re.sub(r"[^\w .,:;=/()+-]", "_", reason)[:200]
        proc = target.run(
            f"scontrol update NodeName={shlex.quote(slurm_name)} State=DRAIN "
            f"Reason={shlex.quote(reason)}"
        )
        if proc.returncode != 0:
            say(f"could not drain {slurm_name}: {proc.stderr.strip()}")
            continue
        say(f"drained {slurm_name}: {reason}")
        drained.append({"node": node, "slurm_node": slurm_name, "reason": reason})
    return drained


def run_validate(
    inventory: Path,
    report: Path | None = None,
    say=print,
    level: str = "quick",
    drain: bool = False,
) -> int:
    """Run the node checks against INVENTORY, print a table, write REPORT; exit code."""
    inventory = Path(inventory)
    if not inventory.exists():
        say(f"mlcluster validate: inventory {inventory} does not exist")
        return EXIT_NOT_RUN
    if level not in LEVELS:
        say(f"mlcluster validate: level {level!r} is not one of {', '.join(LEVELS)}")
        return EXIT_NOT_RUN
    rc, collector = run_checks(inventory.resolve(), level=level)
    checks = collector.checks
    if level == "full" and checks:
        checks.append(fabric_pingpong(inventory.resolve()))
    drained = drain_failed(inventory.resolve(), checks, say) if drain and checks else []
    counts = {k: sum(c.outcome == k for c in checks) for k in ("passed", "failed", "skipped")}
    if report is not None:
        report = Path(report)
        report.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            **counts,
            "inventory": str(inventory),
            "level": level,
            "drained": drained,
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
