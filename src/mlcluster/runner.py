"""Drive playbooks through ansible-runner: events in, live progress out, a summary at the end.

Results come from ansible-runner's events and final stats, never from parsing stdout. Every run
gets its own artifact directory under ``.mlcluster/runs`` (rotated).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from .errors import MlclusterError
from .inputs import ansible_env, check_tags, check_targets
from .paths import project_root, state_dir

# Run directories kept (the newest); MLCLUSTER_KEEP_RUNS raises it (the tests keep every run
# of a session for the secret scan of tests/integration/test_teardown.py).
KEEP_RUNS = 20
COUNTERS = ("ok", "changed", "failures", "unreachable", "skipped")
EXIT_OK, EXIT_FAILED, EXIT_UNREACHABLE, EXIT_CANCELED = 0, 1, 3, 130


@dataclass
class RunState:
    """What the event handler has seen so far; the display and the summary read it."""

    play: str = ""
    task: str = ""
    started: float = field(default_factory=time.monotonic)
    hosts: dict[str, dict[str, int]] = field(
        default_factory=lambda: defaultdict(lambda: dict.fromkeys(COUNTERS, 0))
    )
    errors: list[str] = field(default_factory=list)
    # Errors Ansible printed outside a host's task result (a task file that does not parse, an
    # undefined variable in a play's hosts): the only reason given when a run fails on them.
    run_errors: list[str] = field(default_factory=list)
    # "host: task" for each task result that reported a change.
    changed_tasks: list[str] = field(default_factory=list)
    stats: dict | None = None
    # The plays' set_stats data (e.g. the configure layer's decisions under "accelerators").
    custom_stats: dict = field(default_factory=dict)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def handle(self, event: dict) -> bool:
        """ansible-runner event handler; returning True keeps the event in the artifacts."""
        kind = event.get("event", "")
        data = event.get("event_data") or {}
        host = data.get("host")
        if kind == "playbook_on_play_start":
            self.play = data.get("play", "")
            self.task = ""
        elif kind == "playbook_on_task_start":
            self.task = data.get("task", "")
        elif kind == "runner_on_ok" and host:
            counters = self.hosts[host]
            counters["ok"] += 1
            if (data.get("res") or {}).get("changed"):
                counters["changed"] += 1
                self.changed_tasks.append(f"{host}: {data.get('task', '')}")
        elif kind == "runner_on_failed" and host:
            if data.get("ignore_errors"):
                self.hosts[host]["ok"] += 1
            else:
                self.hosts[host]["failures"] += 1
                self.errors.append(f"{host}: {data.get('task', '')}: {_message(data)}")
        elif kind == "runner_on_unreachable" and host:
            self.hosts[host]["unreachable"] += 1
            self.errors.append(f"{host}: unreachable: {_message(data)}")
        elif kind == "runner_on_skipped" and host:
            self.hosts[host]["skipped"] += 1
        elif not kind.startswith("runner_") and "[ERROR]" in (event.get("stdout") or ""):
            self.run_errors.append(_printed_error(event["stdout"]))
        if kind == "playbook_on_stats":
            self.stats = {
                k: data.get(k) or {}
                for k in ("ok", "changed", "failures", "dark", "skipped", "processed")
            }
            self.custom_stats = dict(data.get("artifact_data") or {})
        return True

    def summary(self) -> dict[str, dict[str, int]]:
        """Per-host totals: Ansible's final stats when the play recap was reached."""
        if self.stats is None:
            return {h: dict(c) for h, c in sorted(self.hosts.items())}
        names = set(self.stats["processed"]) | set(self.hosts)
        return {
            host: {
                "ok": self.stats["ok"].get(host, 0),
                "changed": self.stats["changed"].get(host, 0),
                "failures": self.stats["failures"].get(host, 0),
                "unreachable": self.stats["dark"].get(host, 0),
                "skipped": self.stats["skipped"].get(host, 0),
            }
            for host in sorted(names)
        }


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _printed_error(stdout: str) -> str:
    """The first lines of an error Ansible printed: the message and where it comes from."""
    lines = [_ANSI.sub("", line).strip() for line in stdout.splitlines()]
    start = next(i for i, line in enumerate(lines) if "[ERROR]" in line)
    kept = [line for line in lines[start : start + 2] if line]
    return " ".join(kept).replace("[ERROR]: ", "")[:600]


def _message(data: dict) -> str:
    res = data.get("res") or {}
    failed_items = [r for r in res.get("results") or [] if isinstance(r, dict) and r.get("failed")]
    if failed_items:
        # A loop's own message is only "One or more items failed": report the items'.
        return "; ".join(_message({"res": item}) for item in failed_items)
    msg = res.get("msg") or res.get("stderr") or res.get("reason") or ""
    if isinstance(msg, list):
        msg = "; ".join(map(str, msg))
    msg = " ".join(str(msg).split())
    stderr = " ".join(str(res.get("stderr") or "").split())
    if stderr and stderr not in msg:
        # A generic message ("failed to validate", "non-zero return code") says nothing of the
        # cause; the command's stderr does (the end of it, where the error usually is).
        msg = f"{msg}: {stderr[-400:]}"
    return msg[:600]


@dataclass
class RunResult:
    rc: int
    status: str
    hosts: dict[str, dict[str, int]]
    errors: list[str]
    elapsed_s: float
    artifact_dir: str
    playbook: str
    inventory: str
    custom_stats: dict = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        if self.status == "canceled":
            return EXIT_CANCELED
        if any(h["failures"] for h in self.hosts.values()):
            return EXIT_FAILED
        if any(h["unreachable"] for h in self.hosts.values()):
            return EXIT_UNREACHABLE
        if self.rc != 0 or self.status != "successful":
            return EXIT_FAILED
        return EXIT_OK

    def report(self) -> dict:
        return {
            "rc": self.rc,
            "status": self.status,
            "exit_code": self.exit_code,
            "playbook": self.playbook,
            "inventory": self.inventory,
            "elapsed_s": round(self.elapsed_s, 1),
            "artifact_dir": self.artifact_dir,
            "hosts": self.hosts,
            "errors": self.errors,
            "stats": self.custom_stats,
        }

    def write_report(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.report(), indent=2) + "\n")
        tmp.replace(path)


def check_inventory(inventory: str | Path) -> Path:
    path = Path(inventory).expanduser()
    if not path.exists():
        hint = ""
        if path.resolve() == (project_root() / "inventory" / "local").resolve():
            hint = " (start the local cluster first: `mlcluster local up`)"
        raise MlclusterError(f"inventory {inventory} does not exist{hint}")
    if path.is_dir():
        if not any(
            p.suffix in {".yml", ".yaml", ".ini", ""} and p.is_file() for p in path.iterdir()
        ):
            hint = ""
            if (path / "group_vars").is_dir() and path.name == "local":
                hint = ": the local cluster is not up (`mlcluster local up` writes hosts.yml)"
            raise MlclusterError(f"inventory {inventory} holds no inventory file{hint}")
    elif not os.access(path, os.R_OK):
        raise MlclusterError(f"inventory {inventory} is not readable")
    return path.resolve()


# Facts gathered by a run are kept between runs (per inventory) for this long: a re-run does not
# gather them again (ansible.cfg's `gathering = smart`). `local up` drops a local cluster's when
# it starts new nodes; `--flush-cache` (flush_cache) drops them for one run.
FACT_CACHE_TIMEOUT_S = 3600


def fact_cache_dir(inventory: str | Path) -> Path:
    """Where the facts of an inventory's hosts are kept between runs."""
    key = hashlib.sha256(str(Path(inventory).resolve()).encode()).hexdigest()[:16]
    return state_dir() / "facts" / key


def _fact_cache_env() -> dict[str, str]:
    # ansible-runner sets the plugin (jsonfile) and its directory (its `fact_cache` argument,
    # by default a new one in each run's artifacts); the timeout is Ansible's.
    return {"ANSIBLE_CACHE_PLUGIN_TIMEOUT": str(FACT_CACHE_TIMEOUT_S)}


def run_playbook(
    playbook: str,
    inventory: str | Path,
    *,
    limit: str | None = None,
    tags: str | None = None,
    check: bool = False,
    extravars: dict | None = None,
    display=None,
    extra_env: dict | None = None,
    flush_cache: bool = False,
) -> RunResult:
    """Run a playbook of the project through ansible-runner and return its result."""
    import ansible_runner

    root = project_root()
    inv = check_inventory(inventory)
    playbook_path = (root / playbook).resolve()  # an absolute playbook stays as it is
    if not playbook_path.is_file():
        raise MlclusterError(f"playbook {playbook} not found in {root}")
    # Bad input stops here, before a run directory exists or a play starts.
    targets = check_targets(inv, limit)
    check_tags(tags, playbook_path, inv)
    ident = time.strftime("%Y%m%d-%H%M%S-") + playbook_path.stem + f"-{uuid.uuid4().hex[:6]}"
    # A private data dir per run: ansible-runner keeps env/ files there (cmdline, extravars)
    # that would otherwise leak into the next run.
    private = state_dir() / "runs" / ident
    private.mkdir(parents=True, exist_ok=True)
    _rotate_runs(private.parent)
    env = {**ansible_env(), **_fact_cache_env(), **(extra_env or {})}
    cmdline = (["--check", "--diff"] if check else []) + (["--flush-cache"] if flush_cache else [])

    state = RunState()
    canceled = {"flag": False}

    def on_sigint(_signum, _frame):
        canceled["flag"] = True

    def handler(event):
        state.handle(event)
        if display is not None:
            display.update(state)
        return True

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        if display is not None:
            display.start(state)
        runner = ansible_runner.run(
            private_data_dir=str(private),
            project_dir=str(root),
            playbook=str(playbook_path),
            inventory=str(inv),
            ident=ident,
            limit=limit,
            tags=tags,
            cmdline=" ".join(cmdline) or None,
            extravars=extravars or {},
            envvars=env,
            # An absolute path: ansible-runner joins it to the artifact directory.
            fact_cache_type="jsonfile",
            fact_cache=str(fact_cache_dir(inv)),
            event_handler=handler,
            cancel_callback=lambda: canceled["flag"],
            quiet=True,
        )
    finally:
        signal.signal(signal.SIGINT, previous)
        if display is not None:
            display.stop(state)
    status = "canceled" if canceled["flag"] else runner.status
    return RunResult(
        rc=runner.rc if runner.rc is not None else -1,
        status=status,
        hosts=_cluster_hosts(state.summary(), targets),
        errors=state.errors or (state.run_errors if status != "successful" else []),
        elapsed_s=state.elapsed,
        artifact_dir=str(Path(runner.config.artifact_dir)),
        playbook=playbook,
        inventory=str(inv),
        custom_stats=state.custom_stats,
    )


def _cluster_hosts(summary: dict[str, dict[str, int]], targets: list[str]) -> dict:
    """The per-host totals of the inventory's hosts, and of a host outside the inventory (the
    implicit localhost of a play on the machine Ansible runs on, such as site.yml's EKS add-ons
    play) only when something happened there: on a Slurm inventory that play skips its one task,
    and a `localhost` row of skips would read as a node of the cluster."""
    return {
        host: counts
        for host, counts in summary.items()
        if host in targets or any(n for key, n in counts.items() if key != "skipped")
    }


def _rotate_runs(runs_dir: Path) -> None:
    """Keep the newest KEEP_RUNS run directories."""
    import shutil

    keep = int(os.environ.get("MLCLUSTER_KEEP_RUNS") or KEEP_RUNS)
    runs = sorted((p for p in runs_dir.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
    for old in runs[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
