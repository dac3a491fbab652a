"""`mlcluster run CASE`: install the test cases, submit one through Slurm, follow it, summarise.

The batch script is rendered by ``mlcluster_workloads.launch`` (the same renderer users call),
submitted with ``sbatch`` on the first Slurm controller over SSH, followed through ``squeue``
and the job's output on the shared filesystem, and judged from ``sacct`` and the metrics lines
the case prints (one JSON object per step, a summary at the end).
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .errors import MlclusterError
from .paths import venv_bin
from .runner import EXIT_FAILED, EXIT_OK, check_inventory, run_playbook

WORKLOADS_ROOT = "/fsx/mlcluster"
CASE_MODULES = {"ddp": "ddp", "fsdp": "fsdp", "jax": "jax_dp", "allreduce": "allreduce"}
# Small enough for CPU nodes; pass arguments after `--` to change them.
CPU_DEFAULT_ARGS = {
    "ddp": ["--steps", "40"],
    "fsdp": ["--config", "tiny", "--steps", "20", "--seq-len", "128"],
    "jax": ["--steps", "40"],
    "allreduce": ["--max-bytes", "16M", "--iters", "10"],
}
TERMINAL = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "OUT_OF_MEMORY",
    "NODE_FAIL",
    "PREEMPTED",
    "BOOT_FAIL",
    "DEADLINE",
}


@dataclass
class Target:
    """How to reach the first Slurm controller, read from the inventory."""

    host: str
    address: str
    user: str
    ssh_args: list[str]

    def run(self, command: str, input_text: str | None = None, timeout: float = 120):
        proc = subprocess.run(
            ["ssh", *self.ssh_args, f"{self.user}@{self.address}", command],
            input=input_text,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if proc.returncode == 255:
            raise MlclusterError(
                f"controller {self.host} ({self.address}) unreachable over SSH: "
                f"{proc.stderr.strip()}"
            )
        return proc


def controller_target(inventory: Path) -> Target:
    proc = subprocess.run(
        [str(venv_bin() / "ansible-inventory"), "-i", str(inventory), "--list"],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise MlclusterError(f"cannot read inventory {inventory}: {proc.stderr.strip()}")
    data = json.loads(proc.stdout)
    hosts = (data.get("slurm_controller") or {}).get("hosts") or []
    if not hosts:
        raise MlclusterError(f"inventory {inventory} has no host in group slurm_controller")
    host = hosts[0]
    hostvars = data.get("_meta", {}).get("hostvars", {}).get(host, {})
    ssh_args = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]
    if hostvars.get("ansible_ssh_private_key_file"):
        ssh_args += ["-i", str(hostvars["ansible_ssh_private_key_file"])]
    if hostvars.get("ansible_port"):
        ssh_args += ["-p", str(hostvars["ansible_port"])]
    ssh_args += shlex.split(str(hostvars.get("ansible_ssh_common_args", "")))
    return Target(
        host=host,
        address=str(hostvars.get("ansible_host", host)),
        user=str(hostvars.get("ansible_user", "root")),
        ssh_args=ssh_args,
    )


def render_script(case: str, nodes: int, args: list[str], job_name: str) -> str:
    try:
        from mlcluster_workloads.launch import WorkloadSpec, render_sbatch
    except ImportError as exc:  # pragma: no cover - the venv always has it
        raise MlclusterError(
            "the mlcluster-workloads package is not installed in this venv "
            "(bash scripts/setup.sh installs it)"
        ) from exc
    spec = WorkloadSpec(
        case=CASE_MODULES[case],
        args=tuple(args),
        nodes=nodes,
        gpus_per_node=0,
        venv=f"{WORKLOADS_ROOT}/venv",
        output_dir=f"{WORKLOADS_ROOT}/jobs",
        job_name=job_name,
        env={"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"},
    )
    return render_sbatch(spec)


def parse_metrics(output: str) -> tuple[list[dict], dict | None]:
    steps, summary = [], None
    for line in output.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("event") == "step":
            steps.append(record)
        elif record.get("event") == "summary":
            summary = record
    return steps, summary


def summary_table(
    case: str, job_id: str, state: str, steps: list[dict], summary: dict | None
) -> Table:
    table = Table(title=f"{case} (job {job_id}): {state}", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    summary = summary or {}

    def fmt(value, spec=",.1f"):
        if value is None:
            return "unknown"
        return format(value, spec) if isinstance(value, int | float) else str(value)

    rows = [
        ("world size", fmt(summary.get("world_size"), "d")),
        ("steps", fmt(len(steps), "d")),
        ("first loss", fmt(summary.get("first_loss"), ".4f")),
        ("final loss", fmt(summary.get("final_loss"), ".4f")),
        ("samples/s", fmt(summary.get("samples_per_s"))),
        (
            "tokens/s",
            fmt(summary.get("tokens_per_s"))
            if summary.get("tokens_per_s") is not None
            else "n/a (not a token model)",
        ),
        ("TFLOP/s per device", fmt(summary.get("tflops_per_device"), ".4f")),
        (
            "MFU",
            fmt(summary.get("mfu"), ".1%")
            if summary.get("mfu") is not None
            else "unknown (no peak for this device)",
        ),
        ("step time (s)", fmt(summary.get("step_time_s"), ".3f")),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table


def run_case(
    case: str,
    inventory: Path,
    nodes: int = 2,
    report: Path | None = None,
    extra_args: list[str] | None = None,
    console: Console | None = None,
) -> int:
    from .display import ProgressDisplay, print_summary

    console = console or Console()
    inv = check_inventory(inventory)
    if nodes < 1:
        raise MlclusterError("--nodes must be at least 1")
    args = [a for a in (extra_args or []) if a != "--"] or CPU_DEFAULT_ARGS[case]
    install = run_playbook("playbooks/workloads.yml", inv, display=ProgressDisplay())
    if install.exit_code != EXIT_OK:
        print_summary(install)
        raise MlclusterError("installing the test cases failed (see above)", exit_code=EXIT_FAILED)
    target = controller_target(inv)
    job_name = f"mlcluster-{case}-{int(time.time())}"
    script = render_script(case, nodes, args, job_name)
    script_path = f"{WORKLOADS_ROOT}/jobs/{job_name}.sbatch"
    upload = target.run(f"cat > {script_path} && chown mluser: {script_path}", input_text=script)
    if upload.returncode != 0:
        raise MlclusterError(f"cannot write {script_path} on {target.host}: {upload.stderr}")
    submit = target.run(
        f"cd {WORKLOADS_ROOT}/jobs && su mluser -c 'sbatch --parsable {script_path}'"
    )
    if submit.returncode != 0:
        raise MlclusterError(f"sbatch failed on {target.host}: {submit.stderr.strip()}")
    job_id = submit.stdout.strip().split(";")[0]
    output_path = f"{WORKLOADS_ROOT}/jobs/{job_name}-{job_id}.out"
    console.print(
        f"submitted {case} as job {job_id} on {nodes} node(s); output {output_path}",
        highlight=False,
    )

    state, output, started = "PENDING", "", time.monotonic()
    with Live(Text(""), console=console, transient=True, refresh_per_second=2) as live:
        while True:
            state = job_state(target, job_id) or state
            output = target.run(f"cat {output_path} 2>/dev/null").stdout
            steps, _ = parse_metrics(output)
            last = steps[-1] if steps else {}
            live.update(
                Text(
                    f"job {job_id} {state}  elapsed {time.monotonic() - started:4.0f} s  "
                    f"step {last.get('step', '-')}  loss {last.get('loss', '-')}"
                )
            )
            if state in TERMINAL:
                break
            time.sleep(2)
    steps, summary = parse_metrics(output)
    console.print(summary_table(case, job_id, state, steps, summary))
    ok = state == "COMPLETED" and summary is not None
    if not ok:
        tail = "\n".join(output.strip().splitlines()[-20:])
        console.print(
            f"[red]job {job_id} ended {state}[/red]; last output lines:\n{tail}", highlight=False
        )
    if report:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(
            json.dumps(
                {
                    "case": case,
                    "job_id": job_id,
                    "state": state,
                    "nodes": nodes,
                    "args": args,
                    "output": output_path,
                    "summary": summary,
                    "steps": steps,
                },
                indent=2,
            )
            + "\n"
        )
    return EXIT_OK if ok else EXIT_FAILED


def job_state(target: Target, job_id: str) -> str | None:
    """The job's state from squeue while it is queued or running, then from sacct."""
    queued = target.run(f"squeue -h -j {job_id} -o %T 2>/dev/null").stdout.strip()
    if queued:
        return queued.split()[0]
    acct = target.run(f"sacct -n -X -P -j {job_id} -o State 2>/dev/null").stdout.strip()
    if acct:
        return acct.splitlines()[0].split()[0]
    return None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run_case(sys.argv[1], Path(sys.argv[2])))
