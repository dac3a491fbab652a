"""The runner layer: events, summary, report, exit codes and bad input, on real ansible runs."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path

import pytest

from mlcluster import cli
from mlcluster.errors import MlclusterError
from mlcluster.runner import (
    EXIT_CANCELED,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_UNREACHABLE,
    RunResult,
    RunState,
    check_inventory,
    fact_cache_dir,
    run_playbook,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
LOCAL_HOSTS = FIXTURES / "local-hosts.yml"


def playbook(name: str) -> str:
    return str(FIXTURES / "playbooks" / name)


def test_event_handler_counts_per_host():
    state = RunState()
    events = [
        {"event": "playbook_on_play_start", "event_data": {"play": "P"}},
        {"event": "playbook_on_task_start", "event_data": {"task": "T1"}},
        {"event": "runner_on_ok", "event_data": {"host": "a", "res": {"changed": True}}},
        {"event": "runner_on_ok", "event_data": {"host": "b", "res": {"changed": False}}},
        {
            "event": "runner_on_failed",
            "event_data": {"host": "b", "task": "T1", "res": {"msg": "boom\n  twice"}},
        },
        {
            "event": "runner_on_failed",
            "event_data": {"host": "a", "ignore_errors": True, "res": {"msg": "ignored"}},
        },
        {"event": "runner_on_skipped", "event_data": {"host": "a"}},
        {"event": "runner_on_unreachable", "event_data": {"host": "c", "res": {"msg": "no"}}},
    ]
    for event in events:
        assert state.handle(event) is True
    assert state.play == "P" and state.task == "T1"
    assert state.summary() == {
        "a": {"ok": 2, "changed": 1, "failures": 0, "unreachable": 0, "skipped": 1},
        "b": {"ok": 1, "changed": 0, "failures": 1, "unreachable": 0, "skipped": 0},
        "c": {"ok": 0, "changed": 0, "failures": 0, "unreachable": 1, "skipped": 0},
    }
    assert state.errors == ["b: T1: boom twice", "c: unreachable: no"]


def test_summary_prefers_final_stats():
    state = RunState()
    state.handle({"event": "runner_on_ok", "event_data": {"host": "a", "res": {}}})
    state.handle(
        {
            "event": "playbook_on_stats",
            "event_data": {
                "ok": {"a": 5},
                "changed": {"a": 2},
                "failures": {},
                "dark": {},
                "skipped": {"a": 1},
                "processed": {"a": 1},
            },
        }
    )
    assert state.summary() == {
        "a": {"ok": 5, "changed": 2, "failures": 0, "unreachable": 0, "skipped": 1}
    }


def test_successful_run_report(tmp_path):
    result = run_playbook(playbook("ok.yml"), LOCAL_HOSTS)
    assert result.status == "successful"
    assert result.exit_code == EXIT_OK
    expected = {"ok": 2, "changed": 1, "failures": 0, "unreachable": 0, "skipped": 1}
    assert result.hosts == {"alpha": expected, "beta": expected}
    report_file = tmp_path / "r.json"
    result.write_report(report_file)
    report = json.loads(report_file.read_text())
    assert report["rc"] == 0 and report["status"] == "successful"
    assert report["hosts"]["alpha"] == expected
    assert Path(report["artifact_dir"]).is_dir()


def test_failed_host_gives_nonzero_exit():
    result = run_playbook(playbook("fail.yml"), LOCAL_HOSTS)
    assert result.exit_code == EXIT_FAILED
    assert result.hosts["beta"]["failures"] == 1
    assert result.hosts["alpha"] == {
        "ok": 1,
        "changed": 0,
        "failures": 0,
        "unreachable": 0,
        "skipped": 1,
    }
    assert result.errors == ["beta: Fail on the second host: deliberate failure on beta"]


def test_the_implicit_localhost_is_reported_only_when_something_happened_there():
    quiet = run_playbook(playbook("localhost.yml"), LOCAL_HOSTS)
    assert quiet.exit_code == EXIT_OK
    assert sorted(quiet.hosts) == ["alpha", "beta"]
    acting = run_playbook(playbook("localhost.yml"), LOCAL_HOSTS, extravars={"localhost_acts": 1})
    assert acting.hosts["localhost"] == {
        "ok": 1,
        "changed": 0,
        "failures": 0,
        "unreachable": 0,
        "skipped": 0,
    }
    assert sorted(acting.hosts) == ["alpha", "beta", "localhost"]


def test_an_error_printed_outside_a_task_result_is_the_reason_given():
    # A task file that does not parse fails the run with no host's task failed: the reason is
    # only in what Ansible printed, and the result must carry it.
    result = run_playbook(playbook("broken_include.yml"), LOCAL_HOSTS)
    assert result.exit_code != EXIT_OK
    assert len(result.errors) == 1
    assert "YAML parsing failed" in result.errors[0]
    assert "tasks/broken.txt:5" in result.errors[0]


def _gathered(result) -> bool:
    stdout = next(Path(result.artifact_dir).rglob("stdout")).read_text()
    return "TASK [Gathering Facts]" in stdout


def test_facts_are_kept_between_runs_of_an_inventory_until_flushed(tmp_path, monkeypatch):
    monkeypatch.setenv("MLCLUSTER_STATE", str(tmp_path / "state"))
    first = run_playbook(playbook("gather.yml"), LOCAL_HOSTS)
    assert first.exit_code == EXIT_OK and _gathered(first)
    cache = fact_cache_dir(LOCAL_HOSTS)
    assert cache.parent == tmp_path / "state" / "facts"
    assert sorted(p.name.split("_", 1)[-1] for p in cache.iterdir()) == ["alpha", "beta"]
    again = run_playbook(playbook("gather.yml"), LOCAL_HOSTS)
    assert again.exit_code == EXIT_OK and not _gathered(again)
    flushed = run_playbook(playbook("gather.yml"), LOCAL_HOSTS, flush_cache=True)
    assert flushed.exit_code == EXIT_OK and _gathered(flushed)
    # Another inventory of the same host names has its own facts.
    other = tmp_path / "other.yml"
    other.write_text(LOCAL_HOSTS.read_text())
    assert fact_cache_dir(other) != cache
    assert _gathered(run_playbook(playbook("gather.yml"), other))


def test_unreachable_host_gives_its_own_exit():
    result = run_playbook(playbook("ok.yml"), FIXTURES / "unreachable-hosts.yml")
    assert result.exit_code == EXIT_UNREACHABLE
    assert result.hosts["ghost"]["unreachable"] == 1
    assert result.errors and result.errors[0].startswith("ghost: unreachable:")


def test_check_mode_changes_nothing(tmp_path):
    result = run_playbook(playbook("ok.yml"), LOCAL_HOSTS, check=True)
    assert result.exit_code == EXIT_OK
    # command is skipped in check mode: nothing may change.
    assert all(h["changed"] == 0 for h in result.hosts.values())


def test_interrupt_cancels_cleanly():
    timer = threading.Timer(3.0, lambda: signal.raise_signal(signal.SIGINT))
    timer.start()
    try:
        result = run_playbook(playbook("slow.yml"), LOCAL_HOSTS)
    finally:
        timer.cancel()
    assert result.status == "canceled"
    assert result.exit_code == EXIT_CANCELED
    assert result.elapsed_s < 30


def test_runs_are_kept_in_their_own_artifact_dirs():
    first = run_playbook(playbook("ok.yml"), LOCAL_HOSTS)
    second = run_playbook(playbook("ok.yml"), LOCAL_HOSTS)
    assert first.artifact_dir != second.artifact_dir
    # the event handler keeps every event in the artifacts (it returns True)
    events = list((Path(second.artifact_dir) / "job_events").glob("*.json"))
    assert len(events) >= 10, events


@pytest.mark.parametrize("name", ["missing.yml", "missing-dir"])
def test_missing_inventory_is_a_clear_error(tmp_path, name):
    with pytest.raises(MlclusterError, match="does not exist"):
        check_inventory(tmp_path / name)


def test_empty_inventory_dir_is_a_clear_error(tmp_path):
    with pytest.raises(MlclusterError, match="holds no inventory file"):
        check_inventory(tmp_path)


def test_unreadable_inventory_is_a_clear_error(tmp_path, monkeypatch):
    inv = tmp_path / "hosts.yml"
    inv.write_text("all: {}\n")
    monkeypatch.setattr("os.access", lambda *_: False)
    with pytest.raises(MlclusterError, match="not readable"):
        check_inventory(inv)


def test_cli_deploy_with_missing_inventory(capsys, tmp_path):
    code = cli.main(["deploy", "-i", str(tmp_path / "nope")])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("mlcluster: error: inventory ") and "does not exist" in err


@pytest.mark.parametrize("argv", [["frobnicate"], ["deploy", "--frob"], ["local", "sideways"]])
def test_cli_unknown_command_or_flag(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_cli_bake_rejects_bad_var(capsys):
    assert (
        cli.main(
            [
                "bake",
                "ami",
                "--flavor",
                "gpu",
                "--os",
                "ubuntu22.04",
                "--var",
                "novalue",
            ]
        )
        == 2
    )
    assert "--var takes KEY=VALUE" in capsys.readouterr().err


def test_cli_local_without_podman(monkeypatch, capsys):
    monkeypatch.setattr("shutil.which", lambda _name: None)
    assert cli.main(["local", "up", "--name", "unit"]) == 2
    assert "podman is not installed" in capsys.readouterr().err


def test_check_mode_does_not_leak_into_the_next_run():
    run_playbook(playbook("ok.yml"), LOCAL_HOSTS, check=True)
    result = run_playbook(playbook("ok.yml"), LOCAL_HOSTS)
    assert result.hosts["alpha"]["changed"] == 1


def test_old_runs_are_rotated(monkeypatch):
    # The default (KEEP_RUNS), not the test session's MLCLUSTER_KEEP_RUNS.
    monkeypatch.delenv("MLCLUSTER_KEEP_RUNS")
    monkeypatch.setattr("mlcluster.runner.KEEP_RUNS", 2)
    dirs = [
        Path(run_playbook(playbook("ok.yml"), LOCAL_HOSTS).artifact_dir).parents[1]
        for _ in range(3)
    ]
    assert not dirs[0].exists()
    assert dirs[1].exists() and dirs[2].exists()


def test_mlcluster_keep_runs_keeps_more(monkeypatch):
    monkeypatch.setenv("MLCLUSTER_KEEP_RUNS", "3")
    monkeypatch.setattr("mlcluster.runner.KEEP_RUNS", 1)
    dirs = [
        Path(run_playbook(playbook("ok.yml"), LOCAL_HOSTS).artifact_dir).parents[1]
        for _ in range(4)
    ]
    assert [d.exists() for d in dirs] == [False, True, True, True]


def test_cli_run_passes_only_arguments_after_double_dash(monkeypatch):
    seen = {}

    def fake_run_case(case, inventory, **kwargs):
        seen.update(case=case, inventory=inventory, **kwargs)
        return 0

    monkeypatch.setattr("mlcluster.workload_run.run_case", fake_run_case)
    assert (
        cli.main(["run", "fsdp", "--nodes", "2", "--report", "r.json", "--", "--steps", "3"]) == 0
    )
    assert seen == {
        "case": "fsdp",
        "inventory": Path("inventory/local"),
        "nodes": 2,
        "report": Path("r.json"),
        "extra_args": ["--steps", "3"],
        "gpus_per_node": None,
        "partition": None,
        "container": None,
        "timeout_min": 60,
    }


def _result(status="successful", rc=0, **hosts):
    counters = dict.fromkeys(("ok", "changed", "failures", "unreachable", "skipped"), 0)
    return RunResult(
        rc=rc,
        status=status,
        hosts={name: {**counters, **values} for name, values in hosts.items()},
        errors=[],
        elapsed_s=1.0,
        artifact_dir="/tmp/a",
        playbook="site.yml",
        inventory="/tmp/i",
    )


@pytest.mark.parametrize(
    ("result", "exit_code"),
    [
        (_result(a={"ok": 3}), 0),
        (_result(a={"ok": 3}, b={"failures": 1}), 1),
        (_result(a={"unreachable": 1}, b={"ok": 2}), 3),
        # a failed host outweighs an unreachable one
        (_result(a={"unreachable": 1}, b={"failures": 1}), 1),
        # ansible-playbook failed without a host failing (a syntax error, a bad --limit)
        (_result("failed", 4, a={"ok": 1}), 1),
        (_result("successful", 2), 1),
        (_result("timeout", 0), 1),
        # Ctrl-C: interrupted, whatever the hosts did before
        (_result("canceled", -1, a={"failures": 1}, b={"unreachable": 1}), 130),
    ],
)
def test_exit_codes_as_documented(result, exit_code):
    assert (EXIT_OK, EXIT_FAILED, EXIT_UNREACHABLE, EXIT_CANCELED) == (0, 1, 3, 130)
    assert result.exit_code == exit_code
    assert result.report()["exit_code"] == exit_code


@pytest.mark.parametrize(
    ("hosts", "exit_code"),
    [({"head": {"ok": 4}}, 0), ({"head": {"failures": 1}}, 1), ({"head": {"unreachable": 1}}, 3)],
)
def test_cli_deploy_exits_with_the_runs_code_and_writes_the_report(
    monkeypatch, capsys, tmp_path, hosts, exit_code
):
    seen = {}

    def fake_run_playbook(playbook, inventory, **kwargs):
        seen.update(playbook=playbook, inventory=inventory, **kwargs)
        return _result("successful" if exit_code == 0 else "failed", min(exit_code, 4), **hosts)

    monkeypatch.setattr("mlcluster.runner.run_playbook", fake_run_playbook)
    report = tmp_path / "report.json"
    argv = ["deploy", "-i", "inv", "--limit", "head", "--tags", "slurm", "--check"]
    assert cli.main([*argv, "--report", str(report)]) == exit_code
    assert (seen["playbook"], seen["inventory"]) == ("site.yml", "inv")
    assert (seen["limit"], seen["tags"], seen["check"]) == ("head", "slurm", True)
    written = json.loads(report.read_text())
    assert (written["exit_code"], written["hosts"]["head"]) == (
        exit_code,
        _result(**hosts).hosts["head"],
    )
    assert "head" in capsys.readouterr().out


def test_cli_deploy_interrupted_exits_130(monkeypatch):
    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("mlcluster.runner.run_playbook", interrupted)
    assert cli.main(["deploy", "-i", "inv"]) == 130


def test_a_generic_failure_message_carries_the_commands_stderr():
    from mlcluster.runner import _message

    res = {
        "msg": "failed to validate",
        "stderr": "slurmd: error: Parsing error at unrecognized key: BogusKey\n",
    }
    assert _message({"res": res}) == (
        "failed to validate: slurmd: error: Parsing error at unrecognized key: BogusKey"
    )
    # stderr already in the message is not repeated
    assert _message({"res": {"msg": "boom", "stderr": "boom"}}) == "boom"


def test_a_loops_failure_reports_its_failed_items():
    from mlcluster.runner import _message

    res = {
        "msg": "One or more items failed",
        "results": [
            {"failed": True, "msg": "no package foo"},
            {"failed": False, "msg": "ok"},
            "not a result",
            {"failed": True, "msg": ["first", "second"]},
        ],
    }
    assert _message({"res": res}) == "no package foo; first; second"


def test_long_messages_are_cut():
    from mlcluster.runner import _message

    assert _message({"res": {"msg": "x" * 700}}) == "x" * 600
    stderr = "e" * 300 + "f" * 400
    assert _message({"res": {"msg": "failed", "stderr": stderr}}) == "failed: " + "f" * 400
    assert _message({"res": {"reason": "gone"}}) == "gone"
    assert _message({}) == ""


def test_report_rounds_the_elapsed_time():
    result = _result(a={"ok": 1})
    result.elapsed_s = 1.26
    assert result.report() == {
        "rc": 0,
        "status": "successful",
        "exit_code": 0,
        "playbook": "site.yml",
        "inventory": "/tmp/i",
        "elapsed_s": 1.3,
        "artifact_dir": "/tmp/a",
        "hosts": {"a": {"ok": 1, "changed": 0, "failures": 0, "unreachable": 0, "skipped": 0}},
        "errors": [],
        "stats": {},
    }


def test_the_plays_set_stats_reach_the_report_and_the_summary():
    from rich.console import Console

    from mlcluster.display import print_summary
    from mlcluster.runner import RunState

    state = RunState()
    decisions = {"c1": {"nvidia_driver": "not applicable: no NVIDIA GPU on the PCI bus"}}
    state.handle(
        {
            "event": "playbook_on_stats",
            "event_data": {
                "ok": {"c1": 3},
                "processed": {"c1": 1},
                "artifact_data": {"accelerators": decisions},
            },
        }
    )
    result = _result(c1={"ok": 3})
    result.custom_stats = state.custom_stats
    assert result.report()["stats"] == {"accelerators": decisions}
    console = Console(width=200, record=True)
    print_summary(result, console)
    assert "c1 nvidia_driver: not applicable: no NVIDIA GPU on the PCI bus" in console.export_text()


def test_the_local_inventory_says_how_to_start_the_cluster(tmp_path, monkeypatch):
    monkeypatch.setenv("MLCLUSTER_ROOT", str(tmp_path))
    local = tmp_path / "inventory" / "local"
    with pytest.raises(MlclusterError) as exc:
        check_inventory(local)
    assert str(exc.value) == (
        f"inventory {local} does not exist (start the local cluster first: `mlcluster local up`)"
    )
    (local / "group_vars").mkdir(parents=True)
    with pytest.raises(MlclusterError) as exc:
        check_inventory(local)
    assert str(exc.value) == (
        f"inventory {local} holds no inventory file: the local cluster is not up "
        "(`mlcluster local up` writes hosts.yml)"
    )
    (local / "hosts").write_text("[all]\n")
    assert check_inventory(local) == local.resolve()


def test_an_inventory_dir_needs_an_inventory_file_not_just_any_file(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "hosts.yml").mkdir()
    with pytest.raises(MlclusterError) as exc:
        check_inventory(tmp_path)
    assert str(exc.value) == f"inventory {tmp_path} holds no inventory file"
    (tmp_path / "inventory.ini").write_text("[all]\n")
    assert check_inventory(tmp_path) == tmp_path.resolve()


def test_a_missing_playbook_is_a_clear_error():
    with pytest.raises(MlclusterError, match=r"^playbook playbooks/nope\.yml not found in "):
        run_playbook("playbooks/nope.yml", LOCAL_HOSTS)


def test_a_report_goes_into_new_directories(tmp_path):
    report = tmp_path / "reports" / "today" / "deploy.json"
    _result(a={"ok": 1}).write_report(report)
    assert json.loads(report.read_text())["hosts"]["a"]["ok"] == 1
    assert [p.name for p in report.parent.iterdir()] == ["deploy.json"]


def test_the_first_run_creates_the_runs_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("MLCLUSTER_STATE", str(tmp_path / "state"))
    result = run_playbook(playbook("ok.yml"), LOCAL_HOSTS)
    assert result.exit_code == EXIT_OK
    assert Path(result.artifact_dir).is_relative_to(tmp_path / "state" / "runs")


def test_summary_counts_zero_for_a_host_missing_from_a_stat():
    state = RunState()
    state.handle(
        {
            "event": "playbook_on_stats",
            "event_data": {"processed": {"a": 1}, "ok": {}, "changed": {}, "skipped": {}},
        }
    )
    assert state.summary() == {
        "a": {"ok": 0, "changed": 0, "failures": 0, "unreachable": 0, "skipped": 0}
    }


def test_only_skipped_events_count_as_skipped():
    state = RunState()
    state.handle({"event": "runner_on_start", "event_data": {"host": "a", "task": "T"}})
    state.handle({"event": "runner_on_skipped", "event_data": {}})
    assert state.summary() == {}
