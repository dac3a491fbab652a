"""Distributed checkpoints (torch.distributed.checkpoint) with a completeness marker.

Layout: ``<dir>/step-00000010/`` holds DCP's files (one ``.distcp`` per rank and ``.metadata``)
for model, optimizer and training position. Rank 0 writes ``complete.json`` into it only after
every rank's save returned, so a run killed mid-save leaves a directory without the marker, which
``latest`` ignores. Resuming reshards, so a checkpoint loads on any world size.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

MARKER = "complete.json"
_STEP_DIR = re.compile(r"^step-(\d{8})$")


class Checkpointer:
    def __init__(self, directory: str | os.PathLike, *, keep: int = 2) -> None:
        self.directory = Path(directory)
        self.keep = keep

    def path(self, step: int) -> Path:
        return self.directory / f"step-{step:08d}"

    def complete_steps(self) -> list[int]:
        if not self.directory.is_dir():
            return []
        steps = []
        for entry in self.directory.iterdir():
            match = _STEP_DIR.match(entry.name)
            if match and (entry / MARKER).is_file():
                steps.append(int(match.group(1)))
        return sorted(steps)

    def latest(self) -> int | None:
        """The newest complete checkpoint's step, as rank 0 sees the directory (broadcast, so
        that ranks agree even where the directory is not on a shared file system)."""
        found = [self.complete_steps()[-1:] if dist.get_rank() == 0 else None]
        dist.broadcast_object_list(found, src=0)
        return found[0][0] if found[0] else None

    def save(
        self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, train: dict[str, int]
    ) -> Path:
        target = self.path(step)
        if dist.get_rank() == 0:
            if target.exists():  # left by a run killed while saving this very step
                shutil.rmtree(target)
            target.mkdir(parents=True)
        dist.barrier()
        model_state, optimizer_state = get_state_dict(model, optimizer)
        state = {
            "model": model_state,
            "optim": optimizer_state,
            "train": {key: torch.tensor(value) for key, value in train.items()},
        }
        dcp.save(state, checkpoint_id=target)
        dist.barrier()
        if dist.get_rank() == 0:
            marker = {"step": step, "world_size": dist.get_world_size(), "time": time.time()}
            temporary = target / (MARKER + ".tmp")
            temporary.write_text(json.dumps({**marker, **train}) + "\n")
            os.replace(temporary, target / MARKER)
            self._prune()
        dist.barrier()
        return target

    def load(
        self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, train_keys: list[str]
    ) -> dict[str, int]:
        """Load model and optimizer in place; returns the saved training position."""
        model_state, optimizer_state = get_state_dict(model, optimizer)
        state = {
            "model": model_state,
            "optim": optimizer_state,
            "train": {key: torch.tensor(0) for key in train_keys},
        }
        dcp.load(state, checkpoint_id=self.path(step))
        set_state_dict(
            model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"]
        )
        return {key: int(value) for key, value in state["train"].items()}

    def _prune(self) -> None:
        if self.keep <= 0:
            return
        for old in self.complete_steps()[: -self.keep]:
            shutil.rmtree(self.path(old), ignore_errors=True)
