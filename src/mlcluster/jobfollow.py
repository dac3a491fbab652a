"""Following a Slurm batch job from outside: its state, why it waits, requeues, and why it failed.

A job is read with ``scontrol -o show job`` while slurmctld still holds it (state, pending
reason, restart count, nodes, the job's requeue flag), then from ``sacct`` once it has left.
A state from which Slurm requeues a job (NODE_FAIL, PREEMPTED, BOOT_FAIL) ends the follow only
when the job is not requeueable or has left the queue in it; a requeued job is followed until
it runs again and ends.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# Ends of a job: it will not run again.
FINAL = frozenset(
    {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "DEADLINE", "SPECIAL_EXIT"}
)
# Ends of one run of a job, after which Slurm requeues a requeueable job.
REQUEUEABLE = frozenset({"NODE_FAIL", "PREEMPTED", "BOOT_FAIL"})
# States of a job Slurm has requeued and not yet started again.
REQUEUED = frozenset({"REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED"})
# All the ends sacct may report for a job that has left the queue.
TERMINAL = FINAL | REQUEUEABLE

_FIELD = re.compile(r"(\w+)=(\S*)")


@dataclass(frozen=True)
class JobStatus:
    """One look at a job."""

    state: str
    reason: str = ""
    restarts: int = 0
    nodes: str = ""
    requeue: bool = False
    # Read from accounting: the job has left slurmctld's queue.
    left_queue: bool = False

    @property
    def finished(self) -> bool:
        if self.state in FINAL:
            return True
        if self.state in REQUEUEABLE:
            return self.left_queue or not self.requeue
        return False


def parse_scontrol(line: str) -> JobStatus:
    """A job from ``scontrol -o show job ID`` (one line of Key=Value fields)."""
    fields = dict(_FIELD.findall(line))
    state = fields.get("JobState", "UNKNOWN")
    reason = fields.get("Reason", "")
    nodes = fields.get("NodeList", "")
    return JobStatus(
        state=state,
        reason="" if reason in ("None", "(null)") else reason,
        restarts=int(fields.get("Restarts", "0") or 0),
        nodes="" if nodes in ("(null)", "") else nodes,
        requeue=fields.get("Requeue") == "1",
    )


def parse_sacct(output: str) -> JobStatus | None:
    """A job from ``sacct -n -X -P -o State,NodeList`` (``CANCELLED by 2001|compute[1-2]``)."""
    for line in output.splitlines():
        parts = line.strip().split("|")
        if not parts[0]:
            continue
        nodes = parts[1] if len(parts) > 1 and parts[1] not in ("None assigned", "(null)") else ""
        return JobStatus(state=parts[0].split()[0], nodes=nodes, left_queue=True)
    return None


# States of a run that has not ended (in accounting, the requeued job's current run).
_ACTIVE = frozenset(
    {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUE_HOLD", "RESIZING"}
)


def previous_run_end(sacct_duplicates: str, restarts: int | None = None) -> str:
    """How the run before the current one ended, from ``sacct -D -n -X -P -o State`` (one line
    per run of a requeued job, oldest first): ``NODE_FAIL``, ``PREEMPTED``, ``REQUEUED``.
    Given the job's restart count, the run before the current one is line ``restarts`` whether
    accounting lists the current run yet or not; without it, the line before the last."""
    states = [line.split()[0] for line in sacct_duplicates.splitlines() if line.strip()]
    if restarts is not None and 1 <= restarts <= len(states):
        state = states[restarts - 1]
    else:
        state = states[-2] if len(states) > 1 else ""
    return "" if state in _ACTIVE else state


def describe(status: JobStatus) -> str:
    """``PENDING (Resources)``, ``RUNNING on compute[1-2]``."""
    text = status.state
    if status.state == "PENDING" and status.reason:
        text += f" ({status.reason})"
    elif status.nodes and status.state in ("RUNNING", "COMPLETING", "CONFIGURING"):
        text += f" on {status.nodes}"
    return text


@dataclass
class JobFollower:
    """Turns successive looks at a job into the lines worth telling a person."""

    job_id: str
    last: JobStatus | None = None
    requeues: int = 0
    # Why the last run ended when Slurm requeued the job (NODE_FAIL, PREEMPTED, ...).
    requeued_after: str = ""
    history: list[str] = field(default_factory=list)

    def restarted(self, status: JobStatus) -> bool:
        """Whether this look shows a run more than the last one did."""
        return self.last is not None and status.restarts > self.last.restarts

    def observe(self, status: JobStatus, ended_as: str = "") -> list[str]:
        """Lines to print for this look (a change of state, a requeue); none if nothing new.
        ``ended_as``: how the previous run ended, from accounting, when this look was not the
        first to show the requeue's cause (Slurm may requeue between two looks)."""
        previous, self.last = self.last, status
        lines: list[str] = []
        restarted = previous is not None and status.restarts > previous.restarts
        entered_requeue = status.state in REQUEUED and (
            previous is None or previous.state not in REQUEUED
        )
        if restarted or entered_requeue:
            self.requeues += 1
            why = self.requeued_after or ended_as or "requeue"
            self.requeued_after = ""
            then = "running again" if status.state == "RUNNING" else "waiting"
            lines.append(f"job {self.job_id} requeued ({why}), {then}: {describe(status)}")
        elif previous is None or describe(previous) != describe(status):
            if status.state in REQUEUEABLE and not status.finished:
                lines.append(f"job {self.job_id} {status.state}: Slurm requeues it")
            else:
                lines.append(f"job {self.job_id} {describe(status)}")
        if status.state in REQUEUEABLE:
            self.requeued_after = status.state
        self.history.extend(lines)
        return lines


_RANK = re.compile(r"^\[rank(\d+)\]: ?(.*)$")
_ROOT_CAUSE_RANK = re.compile(r"Root Cause \(first observed failure\):.*?rank\s*:\s*(\d+)", re.S)
# A Python exception line: ``PermissionError: ...``, ``torch.distributed.DistBackendError: ...``
_EXCEPTION = re.compile(
    r"^(?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception|Exit|Interrupt)(?::|$)"
)
# torchrun's report that a rank failed: the rank's own exception says why.
_WRAPPERS = ("ChildFailedError",)
_SAYS_WHY = re.compile(r"(: error: |^srun: error: |^slurmstepd: error: )")


def _is_exception(line: str) -> bool:
    return bool(_EXCEPTION.match(line)) and not any(w in line.split(":")[0] for w in _WRAPPERS)


def failure_reason(output: str) -> str | None:
    """Why a failed job failed: the first exception of the rank torchrun names as the root
    cause (torch prefixes a rank's uncaught exception with ``[rankN]:``), else the first line
    that says why: an exception, an argparse error, an srun/slurmstepd error."""
    root = _ROOT_CAUSE_RANK.search(output)
    lines = [line.strip() for line in output.splitlines()]
    if root:
        for line in lines:
            match = _RANK.match(line)
            if match and match.group(1) == root.group(1) and _is_exception(match.group(2)):
                return f"rank {match.group(1)}: {match.group(2)}"
    for line in lines:
        match = _RANK.match(line)
        text = match.group(2) if match else line
        if _is_exception(text) or _SAYS_WHY.search(text):
            return f"rank {match.group(1)}: {text}" if match else text
    return None
