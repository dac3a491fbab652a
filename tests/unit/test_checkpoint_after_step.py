"""checkpoint.after_step without torch or JAX: when the end of a training step saves (the
cadence, a stop), what the save is given, the ``checkpoint`` event it reports, and when the loop
must stop. The save, the reporter and the collective are fakes that record their calls."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pytest
from mlcluster_workloads import checkpoint

GLOBAL_BATCH = 96
SAVE_S = 2.5  # what each fake save takes on the fake clock


def arguments(*argv: str) -> argparse.Namespace:
    """The options the cases parse, with the checkpoint defaults."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    checkpoint.add_arguments(parser)
    return parser.parse_args(list(argv))


class FakeReporter:
    case = "fake_case"

    def __init__(self) -> None:
        self.emitted: list[dict] = []

    def emit(self, record: dict) -> None:
        self.emitted.append(record)


class FakeRun:
    """One run's fakes: ``saves`` and ``any_rank_calls`` record the calls, ``others_stop`` is
    what the collective says when this rank has no stop of its own (a signal on another rank)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, others_stop: bool = False) -> None:
        self.clock = 100.0
        monkeypatch.setattr(time, "perf_counter", lambda: self.clock)
        self.reporter = FakeReporter()
        self.stop = checkpoint.StopRequest(install=False)
        self.saves: list[tuple[int, dict]] = []
        self.any_rank_calls: list[bool] = []
        self.others_stop = others_stop

    def save(self, step: int, train: dict) -> Path:
        self.saves.append((step, train))
        self.clock += SAVE_S
        return Path(f"/ckpt/step-{step:08d}")

    def any_rank(self, flag: bool) -> bool:
        self.any_rank_calls.append(flag)
        return flag or self.others_stop

    def after_step(self, args: argparse.Namespace, step: int, *, checkpointing: bool = True):
        return checkpoint.after_step(
            args,
            step,
            stop=self.stop,
            any_rank=self.any_rank,
            save=self.save if checkpointing else None,
            reporter=self.reporter,
            global_batch=GLOBAL_BATCH,
        )


def saved(step: int) -> tuple[int, dict]:
    return (step, {"step": step, "samples_consumed": step * GLOBAL_BATCH})


def event(step: int) -> dict:
    return {
        "event": "checkpoint",
        "case": "fake_case",
        "step": step,
        "path": f"/ckpt/step-{step:08d}",
        "save_s": SAVE_S,
    }


def test_saves_every_n_steps_and_never_stops(monkeypatch, capsys):
    run = FakeRun(monkeypatch)
    args = arguments("--steps", "12", "--checkpoint-dir", "/ckpt", "--checkpoint-every", "5")
    assert [run.after_step(args, step) for step in range(1, 13)] == [False] * 12
    assert run.saves == [saved(5), saved(10)]
    assert run.reporter.emitted == [event(5), event(10)]
    assert run.any_rank_calls == [False] * 12
    assert capsys.readouterr().err == ""


def test_default_cadence_is_every_ten_steps(monkeypatch):
    run = FakeRun(monkeypatch)
    args = arguments("--steps", "20", "--checkpoint-dir", "/ckpt")
    for step in range(1, 21):
        run.after_step(args, step)
    assert run.saves == [saved(10), saved(20)]


def test_every_zero_saves_only_when_stopping(monkeypatch):
    run = FakeRun(monkeypatch)
    args = arguments("--checkpoint-dir", "/ckpt", "--checkpoint-every", "0")
    assert [run.after_step(args, step) for step in range(1, 11)] == [False] * 10
    assert run.saves == [] and run.reporter.emitted == []


def test_last_step_is_saved_only_when_due(monkeypatch):
    run = FakeRun(monkeypatch)
    args = arguments("--steps", "7", "--checkpoint-dir", "/ckpt", "--checkpoint-every", "5")
    assert run.after_step(args, 7) is False
    assert run.saves == [] and run.reporter.emitted == []


def test_stop_signal_saves_then_stops(monkeypatch, capsys):
    run = FakeRun(monkeypatch)
    args = arguments("--steps", "12", "--checkpoint-dir", "/ckpt", "--checkpoint-every", "5")
    assert run.after_step(args, 2) is False
    run.stop.signal = "SIGTERM"
    assert run.after_step(args, 3) is True
    assert run.saves == [saved(3)]
    assert run.reporter.emitted == [event(3)]
    assert run.any_rank_calls == [False, True]
    assert capsys.readouterr().err == "stopping after step 3 (SIGTERM)\n"


def test_stop_signal_on_another_rank_stops_this_one(monkeypatch, capsys):
    run = FakeRun(monkeypatch, others_stop=True)
    args = arguments("--steps", "12", "--checkpoint-dir", "/ckpt")
    assert run.after_step(args, 4) is True
    assert run.saves == [saved(4)]
    assert run.any_rank_calls == [False]
    assert capsys.readouterr().err == "stopping after step 4 (as asked)\n"


def test_stop_at_the_last_step_saves_and_lets_the_run_end(monkeypatch, capsys):
    run = FakeRun(monkeypatch)
    run.stop.signal = "SIGUSR1"
    args = arguments("--steps", "7", "--checkpoint-dir", "/ckpt", "--checkpoint-every", "5")
    assert run.after_step(args, 7) is False
    assert run.saves == [saved(7)]
    assert run.reporter.emitted == [event(7)]
    assert capsys.readouterr().err == ""


def test_stop_after_step_stops_without_asking_the_other_ranks(monkeypatch, capsys):
    run = FakeRun(monkeypatch)
    args = arguments("--steps", "12", "--checkpoint-dir", "/ckpt", "--stop-after-step", "6")
    assert [run.after_step(args, step) for step in range(5, 7)] == [False, True]
    assert run.saves == [saved(6)]
    assert run.reporter.emitted == [event(6)]
    assert run.any_rank_calls == [False]  # step 5 asked; step 6 is decided by the flag alone
    assert capsys.readouterr().err == "stopping after step 6 (as asked)\n"


def test_without_a_checkpointer_nothing_is_saved_but_a_stop_still_stops(monkeypatch, capsys):
    run = FakeRun(monkeypatch)
    args = arguments("--steps", "12", "--checkpoint-every", "5")
    assert run.after_step(args, 5, checkpointing=False) is False
    run.stop.signal = "SIGTERM"
    assert run.after_step(args, 6, checkpointing=False) is True
    assert run.saves == [] and run.reporter.emitted == []
    assert capsys.readouterr().err == "stopping after step 6 (SIGTERM)\n"
