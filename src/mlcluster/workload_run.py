"""`mlcluster run CASE`: install the test cases, submit one through Slurm, follow it, summarise.

The batch script is rendered by ``mlcluster_workloads.launch`` (the same renderer users call),
written on the first Slurm controller by the job user under a random name (``mktemp``: a new
file, so no planted link is followed) and submitted with ``sbatch`` as that user over SSH; the
job is followed (``mlcluster.jobfollow``: pending reasons, requeues, a deadline) together with
its output on the shared filesystem, and judged from its final state and the metrics lines the
case prints (one JSON object per step, a summary at the end). Ctrl-C cancels the job.
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

import yaml
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.text import Text

from .display import printable
from .errors import MlclusterError, Unreachable
from .inputs import inventory_data
from .jobfollow import (
    JobFollower,
    JobStatus,
    describe,
    failure_reason,
    parse_sacct,
    parse_scontrol,
    previous_run_end,
)
from .paths import project_root
from .runner import EXIT_CANCELED, EXIT_FAILED, EXIT_OK, check_inventory, run_playbook

try:
    from mlcluster_workloads import cases
except ImportError as exc:
    raise MlclusterError(
        "the mlcluster-workloads package is not installed in this venv (bash scripts/setup.sh"
        " installs it; `pip install ./workloads` brings the case registry and the renderers"
        " without torch)"
    ) from exc

from .job_report import parse_metrics, summary_table  # after the check above

# Where the workloads role installs the cases (its venv, jobs/ and checkpoints/ below it) and
# the user jobs run as: the inventory's workloads_root and workloads_user, the role's defaults
# where the inventory sets none (one place for both: roles/workloads/defaults/main.yml).
_ROLE_DEFAULTS = yaml.safe_load(
    (project_root() / "roles" / "workloads" / "defaults" / "main.yml").read_text()
)
WORKLOADS_ROOT = str(_ROLE_DEFAULTS["workloads_root"])
JOB_USER = str(_ROLE_DEFAULTS["workloads_user"])
POLL_S = 2
# How long the controller may be unreachable (or slurmctld not answer) while a job is followed
# before `mlcluster run` gives up following it.
GRACE_S = 60
DEFAULT_TIMEOUT_MIN = 60
EXIT_BAD_INPUT = MlclusterError.exit_code


class SlurmUnavailable(MlclusterError):
    """slurmctld did not answer (restarting, say): worth asking again while a job is followed."""


@dataclass
class Target:
    """How to reach the first Slurm controller, read from the inventory."""

    host: str
    address: str
    user: str
    ssh_args: list[str]
    job_user: str = JOB_USER
    workloads_root: str = WORKLOADS_ROOT

    @property
    def jobs_dir(self) -> str:
        return f"{self.workloads_root}/jobs"

    def run(self, command: str, input_text: str | None = None, timeout: float = 120):
        try:
            proc = subprocess.run(
                ["ssh", *self.ssh_args, f"{self.user}@{self.address}", command],
                input=input_text,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise Unreachable(
                f"controller {self.host} ({self.address}) did not answer over SSH within "
                f"{timeout:.0f} s (running: {command.split()[0]})"
            ) from exc
        if proc.returncode == 255:
            raise Unreachable(
                f"controller {self.host} ({self.address}) unreachable over SSH: "
                f"{' '.join(proc.stderr.split())}"
            )
        return proc


def as_job_user(target: Target) -> str:
    """The prefix that runs a command as the job user (runuser as root, sudo otherwise)."""
    if target.user == "root":
        return f"runuser -u {shlex.quote(target.job_user)} --"
    return f"sudo -n -u {shlex.quote(target.job_user)} --"


def controller_target(inventory: Path) -> Target:
    data = inventory_data(inventory)
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
    job_user = str(hostvars.get("workloads_user", JOB_USER))
    root = str(hostvars.get("workloads_root", WORKLOADS_ROOT)).rstrip("/")
    # Both reach shell commands and the batch script: a plain name and a plain absolute path
    # (a Jinja expression is not evaluated here: ansible-inventory prints it as written).
    if not re.fullmatch(r"[a-z_][a-z0-9_.-]{0,31}", job_user):
        raise MlclusterError(
            f"inventory {inventory}: workloads_user {job_user!r} on {host} is not a user name",
            EXIT_BAD_INPUT,
        )
    if not re.fullmatch(r"(/[\w.+-]+)+", root):
        raise MlclusterError(
            f"inventory {inventory}: workloads_root {root!r} on {host} is not an absolute path "
            "of letters, digits and '_.+-'",
            EXIT_BAD_INPUT,
        )
    return Target(
        host=host,
        address=str(hostvars.get("ansible_host", host)),
        user=str(hostvars.get("ansible_user", "root")),
        ssh_args=ssh_args,
        job_user=job_user,
        workloads_root=root,
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
    workloads_root: str = WORKLOADS_ROOT,
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
            venv=f"{workloads_root}/venv",
            output_dir=f"{workloads_root}/jobs",
            job_name=job_name,
            env={"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"},
        )
    except ValueError as exc:
        raise MlclusterError(str(exc), exit_code=EXIT_BAD_INPUT) from exc
    return render_sbatch(spec)


def case_arguments(
    case: str,
    extra_args: list[str],
    gpus_per_node: int,
    job_name: str,
    workloads_root: str = WORKLOADS_ROOT,
):
    """The case's arguments: the user's, or the registry's defaults for CPU or GPU nodes; a
    case that checkpoints gets ``--checkpoint-dir`` on the shared filesystem unless given."""
    definition = cases.get(case)
    args = list(extra_args)
    if args[:1] == ["--"]:
        args = args[1:]
    if not args:
        args = list(definition.gpu_args if gpus_per_node else definition.cpu_args)
    if definition.checkpoints and not any(a.split("=")[0] == "--checkpoint-dir" for a in args):
        args += ["--checkpoint-dir", f"{workloads_root}/checkpoints/{job_name}"]
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


def upload_script(target: Target, job_name: str, script: str) -> str:
    """Write the batch script on the controller as the job user and return its path.

    ``mktemp`` creates a new file (O_EXCL: a link planted under the name is not followed) with
    a random name, mode 0600, owned by the job user; nothing in the job user's directory is
    ever opened or changed by root.
    """
    create = 'umask 077 && f=$(mktemp --suffix=.sbatch "$1".XXXXXXXX) && cat > "$f" && echo "$f"'
    prefix = f"{target.jobs_dir}/{job_name}"
    upload = target.run(
        f"{as_job_user(target)} sh -c {shlex.quote(create)} sh {shlex.quote(prefix)}",
        input_text=script,
    )
    path = upload.stdout.strip()
    if upload.returncode != 0 or not re.fullmatch(
        re.escape(prefix) + r"\.[A-Za-z0-9]{8}\.sbatch", path
    ):
        raise MlclusterError(
            f"cannot write the batch script in {target.jobs_dir} on {target.host} as "
            f"{target.job_user}: "
            f"{' '.join(upload.stderr.split()) or path or 'no path printed'}"
        )
    return path


def submit(target: Target, script_path: str) -> str:
    sbatch = f"{as_job_user(target)} sbatch --parsable {shlex.quote(script_path)}"
    proc = target.run(f"cd {target.jobs_dir} && {sbatch}")
    if proc.returncode != 0:
        raise MlclusterError(f"sbatch failed on {target.host}: {proc.stderr.strip()}")
    job_id = proc.stdout.strip().split(";")[0]
    # The id goes into later shell commands (scontrol, scancel, the output's path).
    if not re.fullmatch(r"\d+", job_id):
        raise MlclusterError(f"sbatch on {target.host} printed no job id: {proc.stdout.strip()!r}")
    return job_id


def poll_job(target: Target, job_id: str) -> JobStatus | None:
    """The job from slurmctld while it holds the job, then from accounting."""
    proc = target.run(f"scontrol -o show job {job_id}")
    if proc.returncode == 0 and proc.stdout.strip():
        return parse_scontrol(proc.stdout)
    if "Invalid job id" not in proc.stderr:
        raise SlurmUnavailable(
            f"scontrol failed on {target.host}: {' '.join(proc.stderr.split()) or 'no output'}"
        )
    acct = target.run(f"sacct -n -X -P -j {job_id} -o State,NodeList")
    return parse_sacct(acct.stdout) if acct.returncode == 0 else None


class DeadlineReached(Exception):
    pass


def follow_job(
    target: Target,
    job_id: str,
    output_path: str,
    console: Console,
    timeout_s: float,
    follower: JobFollower,
) -> tuple[JobStatus | None, str]:
    """Poll the job and its output until it has ended: a live line (state, pending reason,
    step, loss), a printed line for each change of state and each requeue. Raises
    DeadlineReached after ``timeout_s``, Unreachable after GRACE_S without an answer."""
    started = time.monotonic()
    status, output, trouble_since, trouble = None, "", None, ""
    with Live(Text(""), console=console, transient=True, refresh_per_second=2) as live:
        while True:
            ended_as = ""
            try:
                seen = poll_job(target, job_id)
                if seen is not None and follower.restarted(seen) and not follower.requeued_after:
                    # Slurm requeued the job between two looks: accounting says why.
                    ended_as = previous_run_end(
                        target.run(f"sacct -D -n -X -P -j {job_id} -o State").stdout,
                        seen.restarts,
                    )
                status = seen or status
                read = target.run(f"cat {output_path} 2>/dev/null")
                if read.returncode == 0:
                    output = read.stdout
                trouble_since, trouble = None, ""
            except (Unreachable, SlurmUnavailable) as exc:
                trouble_since = trouble_since or time.monotonic()
                if time.monotonic() - trouble_since >= GRACE_S:
                    raise Unreachable(
                        f"{exc}; gave up following job {job_id} after {GRACE_S} s of this (it "
                        f"may still be running: `squeue -j {job_id}` on {target.host})"
                    ) from exc
                trouble = f"  ({exc}; retrying)"
            for line in follower.observe(status, ended_as) if status else []:
                console.print(printable(line), markup=False, highlight=False, soft_wrap=True)
            if status is not None and status.finished:
                return status, output
            elapsed = time.monotonic() - started
            if elapsed >= timeout_s:
                raise DeadlineReached
            steps, _ = parse_metrics(output)
            last = steps[-1] if steps else {}
            live.update(
                Text(
                    f"job {job_id} {describe(status) if status else 'submitted'}  "
                    f"elapsed {elapsed:4.0f} s  step {last.get('step', '-')}  "
                    f"loss {last.get('loss', '-')}{trouble}"
                )
            )
            time.sleep(POLL_S)


def cancel(target: Target, job_id: str) -> str:
    """scancel the job; what happened, in words."""
    try:
        proc = target.run(f"scancel {job_id}", timeout=30)
    except Unreachable as exc:
        return f"could not cancel job {job_id} ({exc}): run `scancel {job_id}` on {target.host}"
    if proc.returncode != 0:
        return (
            f"could not cancel job {job_id} ({' '.join(proc.stderr.split())}): run "
            f"`scancel {job_id}` on {target.host}"
        )
    return f"job {job_id} cancelled (scancel on {target.host})"


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
    timeout_min: float = DEFAULT_TIMEOUT_MIN,
) -> int:
    from .display import ProgressDisplay, print_summary

    console = console or Console()
    inv = check_inventory(inventory)
    if nodes < 1:
        raise MlclusterError("--nodes must be at least 1", EXIT_BAD_INPUT)
    if gpus_per_node is not None and gpus_per_node < 0:
        raise MlclusterError("--gpus-per-node must be 0 or more", EXIT_BAD_INPUT)
    if not timeout_min > 0:
        raise MlclusterError("--timeout must be more than 0 minutes", EXIT_BAD_INPUT)
    definition = cases.get(case)
    install = run_playbook("playbooks/workloads.yml", inv, display=ProgressDisplay())
    if install.exit_code == EXIT_CANCELED:
        return EXIT_CANCELED
    if install.exit_code != EXIT_OK:
        print_summary(install)
        # 3 when the controller was unreachable, as for a deploy
        raise MlclusterError(
            "installing the test cases failed (see above)", exit_code=install.exit_code
        )
    target = controller_target(inv)
    if gpus_per_node is None:
        gpus_per_node = partition_gpus(target, partition)
    if definition.needs_gpu and not gpus_per_node:
        raise MlclusterError(
            f"{case} needs GPUs and {partition or 'the default partition'} has none "
            "(Slurm GRES)"
            + (
                f"; on CPU nodes run `mlcluster run {definition.cpu_substitute}`"
                if definition.cpu_substitute
                else ""
            ),
            EXIT_BAD_INPUT,
        )
    if container:
        check_container_support(target, container)
    job_name = f"mlcluster-{case.replace('_', '-')}-{int(time.time())}"
    args = case_arguments(case, extra_args or [], gpus_per_node, job_name, target.workloads_root)
    script = render_script(
        case,
        nodes,
        args,
        job_name,
        gpus_per_node=gpus_per_node,
        partition=partition,
        container=container,
        workloads_root=target.workloads_root,
    )
    job_id = submit(target, upload_script(target, job_name, script))
    output_path = f"{target.jobs_dir}/{job_name}-{job_id}.out"
    console.print(
        f"submitted {case} as job {job_id} on {nodes} node(s), {gpus_per_node} GPU(s) each"
        f"{', in ' + container if container else ''}; output {output_path}",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )

    follower = JobFollower(job_id)
    ended = ""
    try:
        status, output = follow_job(
            target, job_id, output_path, console, timeout_min * 60, follower
        )
        state = status.state if status else "UNKNOWN"
    except KeyboardInterrupt:
        console.print(
            f"interrupted: {cancel(target, job_id)}", markup=False, highlight=False, soft_wrap=True
        )
        return EXIT_CANCELED
    except DeadlineReached:
        ended = f"not finished within --timeout {timeout_min:g} min: {cancel(target, job_id)}"
        state = follower.last.state if follower.last else "UNKNOWN"
        output = target.run(f"cat {output_path} 2>/dev/null").stdout
    steps, summary = parse_metrics(output)
    console.print(summary_table(case, job_id, state, steps, summary))
    ok = state == "COMPLETED" and summary is not None and not ended
    reason = None if ok else (ended or failure_reason(output))
    if not ok:
        tail = "\n".join(output.strip().splitlines()[-20:])
        console.print(
            f"[red]job {job_id} ended {escape(state)}[/red]"
            + (f": {escape(printable(reason))}" if reason else "")
            + f"\nlast output lines:\n{escape(printable(tail))}",
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
                    "requeues": follower.requeues,
                    "events": follower.history,
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run_case(sys.argv[1], Path(sys.argv[2])))
