"""Time the local cluster: `local up` from an empty podman store and with the image cached,
the first `deploy` and an idempotent `deploy`. Writes the figures to docs/benchmarks.md.

Run as root from the repository, with no local cluster running:
`.venv/bin/python -m bench.local_cluster`. It removes the mlcluster images (base and node) so
the first `local up` starts from nothing, and uses its own cluster name and state directory.
A private podman store (CONTAINERS_STORAGE_CONF) is not used on purpose: a second podman
runroot "refreshes" the shared container locks and breaks the clusters of the first.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.report import machine, write_section

NAME = "bench"


def timed(args: list[str], env: dict) -> float:
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "mlcluster.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.monotonic() - start
    print(f"{' '.join(args[:2])}: {elapsed:.0f} s (exit {proc.returncode})", flush=True)
    if proc.returncode != 0:
        sys.exit(
            f"mlcluster {' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        )
    return elapsed


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="mlcluster-bench-") as tmp:
        tmp_path = Path(tmp)
        env = dict(os.environ, MLCLUSTER_STATE=str(tmp_path / "state"))
        listed = subprocess.run(
            ["podman", "images", "--format", "{{.Repository}}:{{.Tag}}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        for image in listed:
            if image.startswith(("localhost/mlcluster-base", "localhost/mlcluster-node")):
                subprocess.run(["podman", "rmi", image], capture_output=True, check=True)
        inventory = tmp_path / "state" / "clusters" / NAME / "inventory"
        report = tmp_path / "deploy.json"
        figures = {}
        try:
            figures["local up, empty podman store (debootstrap + packer bake + start)"] = timed(
                ["local", "up", "--name", NAME], env
            )
            timed(["local", "down", "--name", NAME], env)
            figures["local up, image cached"] = timed(["local", "up", "--name", NAME], env)
            figures["deploy, first"] = timed(
                ["deploy", "-i", str(inventory), "--report", str(report)], env
            )
            figures["deploy, idempotent"] = timed(
                ["deploy", "-i", str(inventory), "--report", str(report)], env
            )
            changed = {h: c["changed"] for h, c in json.loads(report.read_text())["hosts"].items()}
        finally:
            subprocess.run(
                [sys.executable, "-m", "mlcluster.cli", "local", "down", "--name", NAME],
                env=env,
                capture_output=True,
                check=False,
            )
    rows = "\n".join(f"| {what} | {secs:.0f} s |" for what, secs in figures.items())
    body = (
        f"`.venv/bin/python -m bench.local_cluster` on {machine()}; one controller and two "
        "compute nodes; everything the README's main command runs before the workloads.\n\n"
        "| step | wall time |\n| --- | --- |\n" + rows + "\n\n"
        f"Second deploy, changed tasks per host: `{json.dumps(changed)}`."
    )
    write_section("Local cluster", body)
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
