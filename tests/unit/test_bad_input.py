"""Bad input to the real CLI (`python -m mlcluster.cli`, a subprocess): one clear message, exit
status 2, and no run started (no run directory under the state directory). Also: run output
that looks like rich markup is printed as text."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from mlcluster import cli
from mlcluster.display import ProgressDisplay, print_summary
from mlcluster.runner import EXIT_FAILED, run_playbook

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
LOCAL_HOSTS = FIXTURES / "local-hosts.yml"
# A host nothing answers for: were a check to let the run through, no play could change this
# machine.
UNREACHABLE = FIXTURES / "unreachable-hosts.yml"


def _tags_in(node) -> set[str]:
    if isinstance(node, list):
        return set().union(*map(_tags_in, node)) if node else set()
    if not isinstance(node, dict):
        return set()
    own = node.get("tags") or []
    return {*([own] if isinstance(own, str) else own)} | _tags_in(list(node.values()))


def site_tags() -> str:
    """The tags written in the playbooks site.yml imports, read here from their YAML (Ansible
    adds ``always``: the roles' argument-spec checks carry it)."""
    root = FIXTURES.parents[1]
    imports = yaml.safe_load((root / "site.yml").read_text())
    found = {"always"}.union(
        *(
            _tags_in(yaml.safe_load((root / play["ansible.builtin.import_playbook"]).read_text()))
            for play in imports
        )
    )
    assert found >= {"common", "accelerators", "munge", "slurm", "preflight", "workloads"}
    return ", ".join(sorted(found))


def mlcluster(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLCLUSTER_STATE": str(tmp_path / "state")}
    return subprocess.run(
        [sys.executable, "-m", "mlcluster.cli", *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def assert_refused(proc: subprocess.CompletedProcess, tmp_path: Path, message: str) -> None:
    assert (proc.returncode, proc.stderr, proc.stdout) == (2, f"mlcluster: error: {message}\n", "")
    # run_playbook makes the run directory first thing once the input is accepted
    assert not (tmp_path / "state" / "runs").exists()


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ("", "is empty"),
        ("\n# nothing but a comment\n", "defines no hosts"),
        ("all:\n  vars:\n    ansible_user: admin\n", "defines no hosts"),
        ("all:\n  children:\n    slurm_compute: {}\n", "defines no hosts"),
    ],
)
def test_an_inventory_without_hosts_is_refused(tmp_path, content, why):
    inv = tmp_path / "hosts.yml"
    inv.write_text(content)
    proc = mlcluster(tmp_path, "deploy", "-i", str(inv))
    assert_refused(
        proc,
        tmp_path,
        f"inventory {inv} {why} (a host belongs under all: hosts: or a group's hosts:)",
    )


def test_malformed_yaml_is_refused_with_the_line_and_column(tmp_path):
    inv = tmp_path / "hosts.yml"
    inv.write_text("all:\n  hosts:\n    a: {\n  - bad\n")
    proc = mlcluster(tmp_path, "deploy", "-i", str(inv))
    assert_refused(
        proc,
        tmp_path,
        f"inventory {inv} could not be parsed: YAML parsing failed: While parsing a flow node "
        f"did not find expected node content (at {inv}:4:3)",
    )


def test_a_malformed_file_in_an_inventory_directory_is_refused(tmp_path):
    inv = tmp_path / "inventory"
    inv.mkdir()
    (inv / "hosts.yml").write_text("all:\n  hosts:\n    good: {}\n")
    (inv / "extra.yml").write_text("all: [\n")
    proc = mlcluster(tmp_path, "deploy", "-i", str(inv))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"mlcluster: error: inventory {inv} could not be parsed: ")
    assert not (tmp_path / "state" / "runs").exists()


def test_a_limit_matching_no_host_is_refused(tmp_path):
    proc = mlcluster(tmp_path, "deploy", "-i", str(LOCAL_HOSTS), "--limit", "nosuchhost")
    assert_refused(
        proc,
        tmp_path,
        f"no host matches --limit nosuchhost in inventory {LOCAL_HOSTS} (hosts: alpha, beta)",
    )


@pytest.mark.parametrize(
    ("tags", "unknown"), [("bogus", "tag bogus"), ("slurm,nope,munge,zzz", "tags nope, zzz")]
)
def test_unknown_tags_are_refused_with_the_known_ones(tmp_path, tags, unknown):
    proc = mlcluster(tmp_path, "deploy", "-i", str(UNREACHABLE), "--tags", tags)
    assert_refused(proc, tmp_path, f"unknown {unknown} for site.yml (known: {site_tags()})")


@pytest.mark.parametrize(
    ("report", "why"),
    [
        ("/sys/mlcluster-report.json", "cannot write in /sys: Permission denied"),
        ("{tmp}/file/r.json", "{tmp}/file is not a directory"),
        ("{tmp}/file/deeper/r.json", "{tmp}/file is not a directory"),
        ("{tmp}", "is a directory, not a file"),
    ],
)
def test_an_unwritable_report_path_is_refused_before_the_run(tmp_path, report, why):
    (tmp_path / "file").write_text("a file, not a directory\n")
    report = report.format(tmp=tmp_path)
    why = why.format(tmp=tmp_path)
    proc = mlcluster(tmp_path, "deploy", "-i", str(UNREACHABLE), "--report", report)
    assert_refused(proc, tmp_path, f"--report {report}{'' if why[0] == 'i' else ':'} {why}")


def test_a_report_in_new_directories_is_accepted(tmp_path):
    from mlcluster.inputs import check_report_path

    report = tmp_path / "new" / "dirs" / "r.json"
    assert check_report_path(str(report)) == report
    # the probe leaves nothing behind and makes no directories
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["validate", "run ddp"])
def test_the_other_commands_check_their_report_path_first(tmp_path, command):
    proc = mlcluster(tmp_path, *command.split(), "-i", str(UNREACHABLE), "--report", "/sys/r.json")
    assert_refused(proc, tmp_path, "--report /sys/r.json: cannot write in /sys: Permission denied")


def _markup_run(terminal: bool):
    progress = io.StringIO()
    display = ProgressDisplay(Console(file=progress, force_terminal=terminal, width=300))
    result = run_playbook(str(FIXTURES / "playbooks" / "markup.yml"), LOCAL_HOSTS, display=display)
    return result, progress.getvalue()


MARKUP_ERROR = (
    "beta: Fail with [/i] in the name: closing tag [/bold] without an opening one, "
    "[red]colour[/red] and [link=x]"
)


@pytest.mark.parametrize("terminal", [False, True])
def test_errors_that_look_like_markup_are_printed_as_text(tmp_path, terminal):
    result, progress = _markup_run(terminal)
    assert result.exit_code == EXIT_FAILED
    assert result.errors == [MARKUP_ERROR]
    if not terminal:
        lines = [line.split("] ", 1)[1] for line in progress.splitlines()]
        assert lines == [
            "PLAY A play [bold]that looks like markup[/bold]",
            f"FAILED {MARKUP_ERROR}",
        ]
    summary = Console(width=300, record=True, file=io.StringIO())
    print_summary(result, summary)
    assert f"error {MARKUP_ERROR}" in summary.export_text().splitlines()
    report = tmp_path / "r.json"
    result.write_report(report)
    assert json.loads(report.read_text())["errors"] == [MARKUP_ERROR]


def test_a_host_name_and_playbook_that_look_like_markup_reach_the_table():
    from mlcluster.display import counters_table

    console = Console(width=120, record=True, file=io.StringIO())
    counts = dict.fromkeys(("ok", "changed", "failures", "unreachable", "skipped"), 0)
    console.print(counters_table({"[/x]": counts}, title="[/site.yml]: failed"))
    text = console.export_text()
    assert text.splitlines()[0].strip() == "[/site.yml]: failed"
    assert "│ [/x] │" in text


def test_main_prints_an_error_message_with_markup_as_it_is(capsys, tmp_path):
    inv = tmp_path / "[bold]hosts.yml"
    inv.write_text("")
    assert cli.main(["deploy", "-i", str(inv)]) == 2
    assert capsys.readouterr().err == (
        f"mlcluster: error: inventory {inv} is empty (a host belongs under all: hosts: or a "
        "group's hosts:)\n"
    )
