"""Checkpoints that a killed or requeued run resumes from, shared by the training cases.

Layout: ``<dir>/step-00000010/`` is the complete checkpoint of step 10. A save writes into
``<dir>/.step-00000010.partial/`` first; only after every rank's part is written does rank 0 put
``complete.json`` into it (temporary file, then rename) and rename the directory to its final
name. A run killed mid-save therefore leaves at most a ``.partial`` directory (or, from older
versions, a step directory without the marker), which ``complete_steps`` ignores and the next
save of that step replaces.

What a checkpoint holds is the case's business: the torch cases save model and optimizer with
torch.distributed.checkpoint (DCP, one ``.distcp`` per rank, resharded on load) and each rank's
random-number generators (``rng-<rank>.pt``); the JAX case saves its replicated arrays as one
``state.npz``. The marker records the step, the world size and the training position, so a
resumed run continues with the next step and no optimizer step is lost or repeated.

``after_step`` is the end of every case's training step: whether to save, the save and its
``checkpoint`` event, and whether to stop. ``CheckpointDir``, ``after_step`` and the argument and
signal helpers import neither torch nor JAX (the JAX case uses them); ``Checkpointer``, the torch
one, imports torch when built.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from mlcluster_workloads.metrics import Reporter

MARKER = "complete.json"
# Steps between saves when a run is given --checkpoint-dir but no --checkpoint-every: often
# enough that a lost node costs little, rarely enough that saving stays cheap next to training.
DEFAULT_EVERY = 10
_STEP_DIR = re.compile(r"^step-(\d{8})$")
# What asks a run to save and stop at the end of the current step: SIGTERM (Slurm's kill of a
# job's steps on scancel, requeue or time limit; torchrun passes it on to the ranks) and SIGUSR1
# (the sbatch script's warning before the time limit, `--signal=B:USR1@...`).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The checkpoint and resume options every training case takes."""
    parser.add_argument(
        "--checkpoint-dir",
        help="save here and resume from the newest complete checkpoint (mlcluster run passes "
        "/fsx/mlcluster/checkpoints/JOB)",
    )
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        default=DEFAULT_EVERY,
        help=f"steps between saves when --checkpoint-dir is given (default {DEFAULT_EVERY}); "
        "0: save only when stopped by a signal",
    )
    parser.add_argument("--keep-checkpoints", type=int, default=2, help="0: keep all")
    parser.add_argument("--no-resume", action="store_true", help="start at step 1 regardless")
    parser.add_argument(
        "--stop-after-step",
        type=int,
        default=0,
        help="save and exit after this step as if preempted (tests resumption)",
    )


def due(args: argparse.Namespace, step: int) -> bool:
    """Whether the cadence asks for a save after ``step``."""
    return bool(args.checkpoint_dir and args.checkpoint_every and step % args.checkpoint_every == 0)


class StopRequest:
    """Remembers that a stop signal arrived; the training loop checks between steps (all ranks
    agree through a collective) so that a stop never falls inside a step or a save. The entry
    points install the handlers; a case's training function called in-process (tests) gets one
    that does not (``install=False``), so the caller's own SIGTERM handling stays."""

    def __init__(self, *, install: bool = True) -> None:
        self.signal: str | None = None
        if install:
            for number in STOP_SIGNALS:
                signal.signal(number, self._handle)

    def _handle(self, number: int, frame: Any) -> None:
        if self.signal is None:
            print(f"{signal.Signals(number).name}: stopping after this step", file=sys.stderr)
        self.signal = signal.Signals(number).name

    @property
    def requested(self) -> bool:
        return self.signal is not None


def after_step(
    args: argparse.Namespace,
    step: int,
    *,
    stop: StopRequest,
    any_rank: Callable[[bool], bool],
    save: Callable[[int, dict[str, int]], Path] | None,
    reporter: Reporter,
    global_batch: int,
) -> bool:
    """The end of training step ``step``: save when the cadence asks or the run is stopping, and
    say whether the loop must stop now (True only before the last step: a run stopped at its
    last step simply ends).

    The run stops after ``--stop-after-step`` or when a stop signal reached any rank
    (``any_rank``, the case's collective, makes every rank agree). ``save(step, train)`` writes
    the case's checkpoint with the training position ``train`` and returns its directory; None
    when the run has no ``--checkpoint-dir``. Each save is reported as a ``checkpoint`` event.
    """
    stopping = step == args.stop_after_step or any_rank(stop.requested)
    if save is not None and (stopping or due(args, step)):
        started = time.perf_counter()
        path = save(step, {"step": step, "samples_consumed": step * global_batch})
        reporter.emit(
            {
                "event": "checkpoint",
                "case": reporter.case,
                "step": step,
                "path": str(path),
                "save_s": time.perf_counter() - started,
            }
        )
    if stopping and step < args.steps:
        print(f"stopping after step {step} ({stop.signal or 'as asked'})", file=sys.stderr)
        return True
    return False


class CheckpointDir:
    """The directory layout, completion marker and pruning; no collectives, no framework."""

    def __init__(self, directory: str | os.PathLike, *, keep: int = 2) -> None:
        self.directory = Path(directory)
        self.keep = keep

    def path(self, step: int) -> Path:
        return self.directory / f"step-{step:08d}"

    def staging(self, step: int) -> Path:
        return self.directory / f".step-{step:08d}.partial"

    def complete_steps(self) -> list[int]:
        if not self.directory.is_dir():
            return []
        steps = []
        for entry in self.directory.iterdir():
            match = _STEP_DIR.match(entry.name)
            if match and (entry / MARKER).is_file():
                steps.append(int(match.group(1)))
        return sorted(steps)

    def newest(self) -> int | None:
        found = self.complete_steps()
        return found[-1] if found else None

    def marker(self, step: int) -> dict[str, Any]:
        return json.loads((self.path(step) / MARKER).read_text())

    def begin(self, step: int) -> Path:
        """An empty staging directory for ``step`` (one process calls this, before the others
        write into it)."""
        staging = self.staging(step)
        if staging.exists():  # left by a run killed while saving this very step
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
        return staging

    def commit(self, step: int, record: dict[str, Any]) -> Path:
        """Mark the staged checkpoint complete and give it its final name (one process, after
        every process's part is written)."""
        staging, target = self.staging(step), self.path(step)
        temporary = staging / (MARKER + ".tmp")
        with open(temporary, "w") as handle:
            handle.write(json.dumps({"step": step, "time": time.time(), **record}) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, staging / MARKER)
        if target.exists():  # an incomplete directory of an older version, or a repeated save
            shutil.rmtree(target)
        os.replace(staging, target)
        _fsync_directory(self.directory)
        self.prune()
        return target

    def prune(self) -> None:
        if self.keep <= 0:
            return
        for old in self.complete_steps()[: -self.keep]:
            shutil.rmtree(self.path(old), ignore_errors=True)


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def rng_state() -> dict[str, Any]:
    """This process's Python and NumPy generators (the torch ones are added by the caller)."""
    return {"python": random.getstate(), "numpy": np.random.get_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


class Checkpointer(CheckpointDir):
    """DCP checkpoints of a torch model and optimizer (plain, DDP or FSDP2), the training
    position and every rank's random-number generators."""

    def __init__(self, directory: str | os.PathLike, *, keep: int = 2) -> None:
        super().__init__(directory, keep=keep)
        import torch
        import torch.distributed as dist
        import torch.distributed.checkpoint as dcp

        self._torch, self._dist, self._dcp = torch, dist, dcp

    def latest(self) -> int | None:
        """The newest complete checkpoint's step, as rank 0 sees the directory (broadcast, so
        that ranks agree even where the directory is not on a shared file system)."""
        dist = self._dist
        found = [self.newest() if dist.get_rank() == 0 else None]
        dist.broadcast_object_list(found, src=0)
        return found[0]

    def save(self, step: int, model, optimizer, train: dict[str, int]) -> Path:
        from torch.distributed.checkpoint.state_dict import get_state_dict

        torch, dist = self._torch, self._dist
        rank = dist.get_rank()
        staging = self.staging(step)
        if rank == 0:
            self.begin(step)
        dist.barrier()
        model_state, optimizer_state = get_state_dict(model, optimizer)
        state = {
            "model": model_state,
            "optim": optimizer_state,
            "train": {key: torch.tensor(value) for key, value in train.items()},
        }
        self._dcp.save(state, checkpoint_id=staging)
        generators = {**rng_state(), "torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            generators["cuda"] = torch.cuda.get_rng_state()
        torch.save(generators, staging / f"rng-{rank}.pt")
        dist.barrier()
        if rank == 0:
            self.commit(step, {"world_size": dist.get_world_size(), **train})
        dist.barrier()
        return self.path(step)

    def load(self, step: int, model, optimizer, train_keys: list[str]) -> dict[str, int]:
        """Load model, optimizer and (saved by the same world size) this rank's generators in
        place; returns the saved training position."""
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        torch, dist = self._torch, self._dist
        model_state, optimizer_state = get_state_dict(model, optimizer)
        state = {
            "model": model_state,
            "optim": optimizer_state,
            "train": {key: torch.tensor(0) for key in train_keys},
        }
        self._dcp.load(state, checkpoint_id=self.path(step))
        set_state_dict(
            model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"]
        )
        generators = self.path(step) / f"rng-{dist.get_rank()}.pt"
        if self.marker(step).get("world_size") == dist.get_world_size() and generators.is_file():
            saved = torch.load(generators, weights_only=False)  # our own file
            set_rng_state(saved)
            torch.set_rng_state(saved["torch"])
            if "cuda" in saved and torch.cuda.is_available():
                torch.cuda.set_rng_state(saved["cuda"])
        return {key: int(value) for key, value in state["train"].items()}
