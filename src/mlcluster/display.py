"""Live progress while a playbook runs, and the per-host summary table at the end.

Everything that comes from a run (host names, task names, error messages) is printed as plain
text, never as rich markup: a message such as ``[/bold]`` would otherwise end the display with
a MarkupError.
"""

from __future__ import annotations

import sys

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .runner import COUNTERS, RunResult, RunState


def printable(text: str) -> str:
    """Control characters (an escape sequence, a NUL) shown as ``\\xNN``, not sent to the
    terminal; newlines kept."""
    return "".join(c if c.isprintable() or c == "\n" else f"\\x{ord(c):02x}" for c in text)


def counters_table(hosts: dict[str, dict[str, int]], title: str | None = None) -> Table:
    table = Table(title=Text(printable(title)) if title else None, title_justify="left")
    table.add_column("host")
    for name in COUNTERS:
        table.add_column(name, justify="right")
    for host, counts in sorted(hosts.items()):
        style = "red" if counts["failures"] or counts["unreachable"] else None
        table.add_row(Text(printable(host)), *(str(counts[c]) for c in COUNTERS), style=style)
    return table


class ProgressDisplay:
    """A live panel on a terminal; one line per play and per failure otherwise."""

    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.live: Live | None = None
        self._last_play = None
        self._errors_shown = 0

    def _render(self, state: RunState):
        head = Text.assemble(
            ("play ", "bold"),
            printable(state.play or "-"),
            ("   task ", "bold"),
            printable(state.task or "-"),
            ("   elapsed ", "bold"),
            f"{state.elapsed:5.0f} s",
        )
        return Group(head, counters_table(dict(state.hosts)))

    def start(self, state: RunState) -> None:
        if self.console.is_terminal:
            self.live = Live(
                self._render(state), console=self.console, refresh_per_second=4, transient=True
            )
            self.live.start()

    def update(self, state: RunState) -> None:
        if self.live is not None:
            self.live.update(self._render(state))
            return
        if state.play and state.play != self._last_play:
            self._last_play = state.play
            self._line(state, f"PLAY {state.play}")
        for error in state.errors[self._errors_shown :]:
            self._line(state, f"FAILED {error}")
        self._errors_shown = len(state.errors)

    def _line(self, state: RunState, text: str) -> None:
        self.console.print(
            f"[{state.elapsed:6.1f}s] {printable(text)}", highlight=False, markup=False
        )

    def stop(self, state: RunState) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None


def print_summary(result: RunResult, console: Console | None = None) -> None:
    console = console or Console(file=sys.stdout)
    console.print(
        counters_table(
            result.hosts, title=f"{result.playbook}: {result.status}, {result.elapsed_s:.0f} s"
        )
    )
    accelerators = result.custom_stats.get("accelerators") or {}
    for host, roles in sorted(accelerators.items()):
        for role, status in roles.items():
            console.print(f"{host} {role}: {status}", highlight=False, markup=False)
    for error in result.errors:
        console.print(Text.assemble(("error", "red"), " ", printable(error)), highlight=False)
    console.print(f"artifacts: {result.artifact_dir}", highlight=False, markup=False)
