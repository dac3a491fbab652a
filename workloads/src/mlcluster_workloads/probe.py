"""Looking things up on a host without failing: files, commands, Python distributions.

Every report field is either ``{"status": "present", "version": ..., "source": ...}`` or
``{"status": "absent", "looked_for": [...]}``, so a missing component says how it was searched
for instead of vanishing from the report. ``Host(root=...)`` reads files under another root and
``Host(path=...)`` finds commands on another PATH; the tests use both. ``which`` and ``glob``
give paths on this machine (under the root), to pass to ``run`` as they are.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def present(version: Any, source: str, **extra: Any) -> dict[str, Any]:
    return {"status": "present", "version": version, "source": source, **extra}


def absent(*looked_for: str) -> dict[str, Any]:
    return {"status": "absent", "looked_for": list(looked_for)}


@dataclass(frozen=True)
class Host:
    root: Path = Path("/")
    path: str | None = None  # PATH for commands; None: this process's

    def file(self, absolute: str) -> Path:
        return self.root / absolute.lstrip("/")

    def read(self, absolute: str) -> str | None:
        try:
            return self.file(absolute).read_text(errors="replace")
        except OSError:
            return None

    def glob(self, pattern: str) -> list[Path]:
        return sorted(self.root.glob(pattern.lstrip("/")))

    def which(self, command: str) -> str | None:
        """The executable to run: a command name looked up on PATH, or a path on this host
        (under root) that is one."""
        if "/" in command:
            return shutil.which(str(self.file(command)))
        return shutil.which(command, path=self.path)

    def run(self, *argv: str, timeout: float = 20.0) -> str | None:
        """stdout (with stderr appended) of a command that exited 0, else None."""
        binary = self.which(argv[0]) if "/" not in argv[0] else argv[0]
        if binary is None:
            return None
        env = dict(os.environ) if self.path is None else {**os.environ, "PATH": self.path}
        try:
            result = subprocess.run(
                [binary, *argv[1:]],
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                env=env,
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return result.stdout + result.stderr if result.returncode == 0 else None


def distribution_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None
