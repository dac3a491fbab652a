"""`mlcluster run CASE`: install the test cases, submit one through Slurm, follow it, summarise.

The batch script is rendered by ``mlcluster_workloads.launch`` (the same renderer users call),
submitted with ``sbatch`` on the first Slurm controller over SSH, followed through ``squeue``
and the job's output on the shared filesystem, and judged from ``sacct`` and the metrics lines
the case prints (one JSON object per step, a summary at the end).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from .errors import MlclusterError
from .paths import venv_bin
from .runner import EXIT_FAILED, EXIT_OK, check_inventory, run_playbook

try:
    from mlcluster_workloads import cases
except ImportError as exc:  # pragma: no cover - scripts/setup.sh installs it into the venv
    raise MlclusterError(
        "the mlcluster-workloads package is not installed in this venv "
        "(bash scripts/setup.sh installs it)"
    ) from exc

WORKLOADS_ROOT = "/fsx/mlcluster"
# Cases that checkpoint write here by default (one directory per job name, so a requeued job
# resumes from its own checkpoints); the workloads role creates it for the workloads user.
CHECKPOINT_ROOT = f"{WORKLOADS_ROOT}/checkpoints"
EXIT_BAD_INPUT = MlclusterError.exit_code
# Bandwidth cases report per-size rows and a summary of their own.
STEP_EVENTS = {"step", "allreduce"}
SUMMARY_EVENTS = {"summary", "allreduce_summary"}
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


def render_script(
    case: str,
    nodes: int,
    args: list[str],
    job_name: str,
    *,
    gpus_per_node: int = 0,
    partition: str | None = None,
    container: str | None = None,
) -> str:
    """The batch script of a run. ``container``: an absolute path is an OCI bundle on the nodes
    (Slurm's own ``srun --container``), unless it is a squashfs file; that and anything else is
    an image for pyxis/enroot."""
    from mlcluster_workloads.launch import WorkloadSpec, render_sbatch

    bundle = container if container and is_oci_bundle(container) else None
    image = container if container and not bundle else None
    try:
        spec = WorkloadSpec(
            case=case,
            args=tuple(args),
            nodes=nodes,
            gpus_per_node=gpus_per_node,
            partition=partition,
            container_image=image,
            # The venv and the job's output live on the shared filesystem.
            container_mounts=("/fsx:/fsx",) if image else (),
            container_bundle=bundle,
            venv=f"{WORKLOADS_ROOT}/venv",
            output_dir=f"{WORKLOADS_ROOT}/jobs",
            job_name=job_name,
            env={"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"},
        )
    except ValueError as exc:
        raise MlclusterError(str(exc), exit_code=EXIT_BAD_INPUT) from exc
    return render_sbatch(spec)


def case_arguments(case: str, extra_args: list[str], gpus_per_node: int, job_name: str):
    """The case's arguments: the user's, or the registry's defaults for CPU or GPU nodes; a
    case that checkpoints gets ``--checkpoint-dir`` on the shared filesystem unless given."""
    definition = cases.get(case)
    args = list(extra_args)
    if args[:1] == ["--"]:
        args = args[1:]
    if not args:
        args = list(definition.gpu_args if gpus_per_node else definition.cpu_args)
    if definition.checkpoints and not any(a.split("=")[0] == "--checkpoint-dir" for a in args):
        args += ["--checkpoint-dir", f"{CHECKPOINT_ROOT}/{job_name}"]
    return args


def parse_gres_gpus(gres: str) -> int:
    """GPUs in a node's GRES as sinfo prints it (``gpu:8``, ``gpu:h100:8(S:0-1)``, ``(null)``)."""
    total = 0
    for item in gres.split(","):
        parts = item.split("(")[0].split(":")
        if parts[0] == "gpu" and len(parts) > 1 and parts[-1].isdigit():
            total += int(parts[-1])
    return total


def partition_gpus(target: Target, partition: str | None) -> int:
    """GPUs per node in the partition from Slurm's GRES: the fewest any node of it has."""
    part = f" -p {shlex.quote(partition)}" if partition else ""
    proc = target.run(f"sinfo -h -N{part} -o '%N %G %P'")
    if proc.returncode != 0:
        raise MlclusterError(f"sinfo failed on {target.host}: {proc.stderr.strip()}")
    counts = []
    for line in proc.stdout.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        # Without -p, only the default partition (marked with *) counts.
        if partition or fields[2].endswith("*"):
            counts.append(parse_gres_gpus(fields[1]))
    if not counts:
        where = f"partition {partition}" if partition else "the default partition"
        raise MlclusterError(f"{where} has no nodes (sinfo on {target.host})", EXIT_BAD_INPUT)
    return min(counts)


SQUASHFS_SUFFIXES = (".sqsh", ".squashfs")


def is_oci_bundle(container: str) -> bool:
    """An absolute path that is not a squashfs image (which enroot imports itself)."""
    return container.startswith("/") and not container.endswith(SQUASHFS_SUFFIXES)


def check_container_support(target: Target, container: str) -> None:
    """pyxis for images, oci.conf for bundles: say what is missing before submitting."""
    if container.endswith(SQUASHFS_SUFFIXES) and container.startswith("/"):
        proc = target.run(f"test -f {shlex.quote(container)}")
        if proc.returncode != 0:
            raise MlclusterError(f"no squashfs image {container} on {target.host}", EXIT_BAD_INPUT)
    elif is_oci_bundle(container):
        proc = target.run(f"test -f {shlex.quote(container)}/config.json")
        if proc.returncode != 0:
            raise MlclusterError(
                f"{container} is not an OCI bundle on {target.host} (no config.json); make one "
                "with `mlcluster local bundle` or `runc spec` + a rootfs",
                EXIT_BAD_INPUT,
            )
        return
    proc = target.run("srun --help 2>&1 | grep -c -- --container-image || true")
    if proc.stdout.strip() in ("", "0"):
        raise MlclusterError(
            f"--container {container}: pyxis is not loaded by Slurm on {target.host} "
            "(no --container-image in srun --help); give an OCI bundle path instead, or bake "
            "the node image with enroot_pyxis",
            EXIT_BAD_INPUT,
        )


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
        if record.get("event") in STEP_EVENTS:
            steps.append(record)
        elif record.get("event") in SUMMARY_EVENTS:
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

    if summary.get("event") == "allreduce_summary":
        world = steps[0].get("world_size") if steps else None
        for name, value in (
            ("ranks", fmt(world, "d")),
            ("source", fmt(summary.get("source"))),
            ("sizes", fmt(summary.get("sizes"), "d")),
            ("avg busbw (GB/s)", fmt(summary.get("avg_busbw_gbps"), ".3f")),
            ("max busbw (GB/s)", fmt(summary.get("max_busbw_gbps"), ".3f")),
            ("at size (bytes)", fmt(summary.get("max_busbw_size_bytes"), ",d")),
            ("wrong elements", fmt(summary.get("wrong"), "d")),
        ):
            table.add_row(name, value)
        for row in steps:
            table.add_row(
                f"  {row['size_bytes']:,} B",
                f"{row['time_us']:,.1f} us  busbw {row['busbw_gbps']:.3f} GB/s",
            )
        return table

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
    *,
    gpus_per_node: int | None = None,
    partition: str | None = None,
    container: str | None = None,
) -> int:
    from .display import ProgressDisplay, print_summary

    console = console or Console()
    inv = check_inventory(inventory)
    if nodes < 1:
        raise MlclusterError("--nodes must be at least 1", EXIT_BAD_INPUT)
    if gpus_per_node is not None and gpus_per_node < 0:
        raise MlclusterError("--gpus-per-node must be 0 or more", EXIT_BAD_INPUT)
    definition = cases.get(case)
    install = run_playbook("playbooks/workloads.yml", inv, display=ProgressDisplay())
    if install.exit_code != EXIT_OK:
        print_summary(install)
        raise MlclusterError("installing the test cases failed (see above)", exit_code=EXIT_FAILED)
    target = controller_target(inv)
    if gpus_per_node is None:
        gpus_per_node = partition_gpus(target, partition)
    if definition.needs_gpu and not gpus_per_node:
        raise MlclusterError(
            f"{case} needs GPUs and {partition or 'the default partition'} has none "
            "(Slurm GRES); on CPU nodes run `mlcluster run allreduce`",
            EXIT_BAD_INPUT,
        )
    if container:
        check_container_support(target, container)
    job_name = f"mlcluster-{case.replace('_', '-')}-{int(time.time())}"
    args = case_arguments(case, extra_args or [], gpus_per_node, job_name)
    script = render_script(
        case,
        nodes,
        args,
        job_name,
        gpus_per_node=gpus_per_node,
        partition=partition,
        container=container,
    )
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
        f"submitted {case} as job {job_id} on {nodes} node(s), {gpus_per_node} GPU(s) each"
        f"{', in ' + container if container else ''}; output {output_path}",
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
    reason = None if ok else failure_reason(output)
    if not ok:
        tail = "\n".join(output.strip().splitlines()[-20:])
        console.print(
            f"[red]job {job_id} ended {state}[/red]"
            + (f": {escape(reason)}" if reason else "")
            + f"\nlast output lines:\n{escape(tail)}",
            highlight=False,
            soft_wrap=True,
        )
    if report:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(
            json.dumps(
                {
                    "case": case,
                    "job_id": job_id,
                    "state": state,
                    "reason": reason,
                    "nodes": nodes,
                    "gpus_per_node": gpus_per_node,
                    "partition": partition,
                    "container": container,
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


_REASON = re.compile(r"(: error: |^\w*(Error|Exception): |^srun: error: |^slurmstepd: error: )")


def failure_reason(output: str) -> str | None:
    """The first line of a failed job's output that says why: an argparse error, a Python
    exception's message, or an srun/slurmstepd error."""
    for line in output.splitlines():
        line = line.strip()
        if _REASON.search(line):
            return line
    return None


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
