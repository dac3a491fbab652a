"""Hostile strings fed to every renderer of the Python driver and of the slurm_conf filters:
newlines, `;`, `$( )`, backticks, quotes, `#`, rich markup. Each one is either refused with a
message naming the value, or comes out as exactly one inert value (one shell word, one Slurm
value on its line, the same text on the terminal). The sbatch renderer has its own
(tests/unit/test_launch_hostile.py)."""

from __future__ import annotations

import io
import json
import shlex
from types import SimpleNamespace

import pytest
import yaml
from rich.console import Console

from mlcluster import job_report, workload_run
from mlcluster.display import ProgressDisplay, counters_table, print_summary
from mlcluster.errors import MlclusterError
from mlcluster.jobfollow import JobFollower, parse_scontrol
from mlcluster.paths import load_plugin
from mlcluster.runner import EXIT_FAILED, RunResult, RunState, run_playbook

from .test_slurm_rendered import CGROUP_V2, NO_GPU, _inventory, _node, _render_role
from .test_workload_run import JOB_ID, FakeController, scontrol_line

slurm_conf = load_plugin("filter", "slurm_conf")

HOSTILE = [
    "a\nInclude /etc/evil.conf",
    "a\rNodeName=evil",
    "tab\there",
    "nul\x00byte",
    "esc\x1b[31mred",
    "semi; rm -rf /",
    "$(touch /tmp/pwned)",
    "`id`",
    'quote"d',
    "single'quote",
    '"a" Evil=1 "b"',
    "comment # rest",
    "[/bold] and [red]x[/red]",
    "[link=file:///etc/passwd]click",
]
# What makes each one unsafe on a line of a Slurm config file (None: safe there).
SLURM_VERDICT = {
    "a\nInclude /etc/evil.conf": "a newline or another control character",
    "a\rNodeName=evil": "a newline or another control character",
    "tab\there": "a newline or another control character",
    "nul\x00byte": "a newline or another control character",
    "esc\x1b[31mred": "a newline or another control character",
    'quote"d': "a double quote inside it (it would end the quoting)",
    '"a" Evil=1 "b"': "a double quote inside it (it would end the quoting)",
    "comment # rest": "a '#' (Slurm reads the rest of the line as a comment)",
}


def test_every_hostile_string_has_a_verdict_written_here():
    assert set(SLURM_VERDICT) <= set(HOSTILE)


# ---- slurm_conf filters ----------------------------------------------------------------------


@pytest.mark.parametrize("value", HOSTILE)
def test_slurm_conf_lines_refuses_or_keeps_one_value_on_one_line(value):
    # the value alone, and as an item of a list (joined with commas, quoted as a whole)
    for setting, plain in ((value, value), (["ok", value], f"ok,{value}")):
        why = SLURM_VERDICT.get(value)
        if why:
            with pytest.raises(ValueError) as exc:
                slurm_conf.slurm_conf_lines({"SlurmctldParameters": setting})
            assert str(exc.value) == (
                f"Slurm setting SlurmctldParameters: the value {value!r} holds {why}"
            )
            continue
        # one value: a word, or one double-quoted string with no quote inside
        expected = f'"{plain}"' if " " in plain else plain
        assert slurm_conf.slurm_conf_lines({"SlurmctldParameters": setting}) == [
            f"SlurmctldParameters={expected}"
        ]


@pytest.mark.parametrize("key", ["Bad Key", "Key\nInclude", "Key=1", "#Key", "", "Ke;y", 7])
def test_slurm_conf_lines_refuses_a_key_that_is_not_a_word(key):
    with pytest.raises(ValueError) as exc:
        slurm_conf.slurm_conf_lines({key: "1"})
    assert str(exc.value) == f"Slurm setting {key!r}: a key is letters, digits and '_' only"


NODE = {
    "inventory_hostname": "c1",
    "ansible_facts": {
        "hostname": "c1",
        "processor_vcpus": 2,
        "processor_count": 1,
        "processor_cores": 2,
        "processor_threads_per_core": 1,
        "memtotal_mb": 1000,
        "default_ipv4": {"address": "10.0.0.1"},
    },
}


@pytest.mark.parametrize("name", [*HOSTILE, "debug NodeName=evil", "x=y"])
def test_partition_and_node_names_must_be_one_word(name):
    nodes = [slurm_conf.slurm_node(NODE, 0)]
    with pytest.raises(ValueError) as exc:
        slurm_conf.slurm_partition_list(
            [{"name": name, "group": "g"}], nodes, {"g": ["c1"]}, "", {}
        )
    assert str(exc.value) == (
        f"partition {name!r}: a name is letters, digits, '_', '.' and '-' only"
    )
    with pytest.raises(ValueError, match=r"^partition .*: a name is letters"):
        slurm_conf.slurm_partition_list([], nodes, {}, name, {})
    host = {**NODE, "ansible_facts": {**NODE["ansible_facts"], "hostname": name}}
    with pytest.raises(ValueError) as exc:
        slurm_conf.slurm_node(host, 0)
    assert str(exc.value) == f"node {name!r}: a name is letters, digits, '_', '.' and '-' only"


def test_a_hostile_node_config_value_is_refused_where_it_is_rendered():
    host = {**NODE, "slurm_node_config": {"Features": "gpu\nNodeName=evil CPUs=999"}}
    params = slurm_conf.slurm_node(host, 0)["params"]
    with pytest.raises(ValueError, match=r"^Slurm setting Features: the value 'gpu\\nNodeName"):
        slurm_conf.slurm_conf_lines(params)


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        (
            {"slurm_config": {"SlurmctldParameters": "enable_configless\nInclude /etc/evil"}},
            "Slurm setting SlurmctldParameters: the value 'enable_configless\\nInclude "
            "/etc/evil' holds a newline or another control character",
        ),
        (
            {"slurm_partitions": [{"name": "debug\nNodeName=evil", "group": "slurm_compute"}]},
            "partition 'debug\\nNodeName=evil': a name is letters, digits, '_', '.' and '-' only",
        ),
    ],
)
def test_the_slurm_role_refuses_a_hostile_value_before_writing_slurm_conf(
    tmp_path, variables, message
):
    """The role's own tasks and templates through ansible-runner: the run fails naming the
    value, and no slurm.conf is written."""
    inventory = _inventory(
        {"ctl": "192.168.5.2"},
        {"compute1": _node("compute1", "192.168.5.11", 2, 1, 2, 1, 3900, NO_GPU, CGROUP_V2)},
        {
            "slurm_configless": True,
            "slurm_accounting_enabled": False,
            "slurm_healthcheck_enabled": False,
            "slurm_partitions": [{"name": "debug", "group": "slurm_compute", "default": True}],
            **variables,
        },
    )
    playbook = _render_role(tmp_path)
    hosts = tmp_path / "hosts.yml"
    hosts.write_text(yaml.safe_dump(inventory, sort_keys=False))
    out = tmp_path / "out"
    out.mkdir()
    result = run_playbook(str(playbook), hosts, extravars={"render_dir": str(out)})
    assert result.exit_code == EXIT_FAILED
    assert result.errors and all(message in error for error in result.errors), result.errors
    assert not (out / "slurm.conf").exists()


# ---- the CLI's shell commands ----------------------------------------------------------------


@pytest.mark.parametrize("name", HOSTILE)
def test_the_upload_passes_any_job_name_as_one_shell_word(name):
    target = FakeController()
    target.upload_rc = 1
    with pytest.raises(MlclusterError):
        workload_run.upload_script(target, name, "#!/bin/bash\n")
    words = shlex.split(target.commands[0])
    assert words[:5] == ["runuser", "-u", "mluser", "--", "sh"]
    assert words[-1] == f"/fsx/mlcluster/jobs/{name}"
    assert len(words) == 9


@pytest.mark.parametrize("printed", ["42 42; rm -rf /", "$(id)", "4242\n4243", "", "abc;x"])
def test_a_job_id_that_is_not_a_number_is_refused(printed):
    target = FakeController()
    target.sbatch = (0, printed, "")
    with pytest.raises(MlclusterError) as exc:
        workload_run.submit(target, "/fsx/mlcluster/jobs/j.Xq3bR7tZ.sbatch")
    assert str(exc.value) == f"sbatch on head printed no job id: {printed.strip()!r}"


@pytest.mark.parametrize("partition", HOSTILE)
def test_a_partition_reaches_sinfo_as_one_shell_word(partition):
    target = FakeController(sinfo="p1 (null) p1\n")
    workload_run.partition_gpus(target, partition)
    words = shlex.split(target.commands[0])
    assert words == ["sinfo", "-h", "-N", "-p", partition, "-o", "%N %G %P"]


# ---- the terminal: the same text, no markup error --------------------------------------------


# How the terminal shows the control characters of HOSTILE: as text, never sent to it.
SHOWN = {"\x00": "\\x00", "\x1b": "\\x1b", "\t": "\\x09", "\r": "\\x0d"}


def shown(text: str) -> str:
    for char, escaped in SHOWN.items():
        text = text.replace(char, escaped)
    return text


@pytest.mark.parametrize("text", HOSTILE)
def test_the_displays_print_hostile_text_as_it_is(text):
    # the failure message is one line (runner._message joins whitespace)
    visible = shown(" ".join(text.split()))
    state = RunState()
    state.handle({"event": "playbook_on_play_start", "event_data": {"play": text}})
    state.handle(
        {
            "event": "runner_on_failed",
            "event_data": {"host": "h", "task": "t", "res": {"msg": text}},
        }
    )
    lines = io.StringIO()
    display = ProgressDisplay(Console(file=lines, width=400))
    display.update(state)
    assert lines.getvalue().splitlines()[-1].split("] ", 1)[1] == f"FAILED h: t: {visible}"
    assert "\x1b" not in lines.getvalue() and "\x00" not in lines.getvalue()
    live = io.StringIO()
    terminal = ProgressDisplay(Console(file=live, width=400, force_terminal=True))
    terminal.start(state)
    terminal.update(state)
    terminal.stop(state)
    result = RunResult(1, "failed", state.summary(), state.errors, 1.0, "/a", text, "/i")
    summary = Console(width=400, record=True, file=io.StringIO())
    print_summary(result, summary)
    assert f"error h: t: {visible}" in summary.export_text().splitlines()
    console = Console(width=400, record=True, file=io.StringIO())
    console.print(
        counters_table(
            {text: dict.fromkeys(("ok", "changed", "failures", "unreachable", "skipped"), 0)}
        )
    )
    console.print(job_report.summary_table("ddp", "7", text, [], {"source": text}))
    exported = console.export_text()
    assert "\x1b" not in exported and "\x00" not in exported
    assert shown(text).splitlines()[0] in exported
    follower = JobFollower(JOB_ID)
    for line in follower.observe(parse_scontrol(scontrol_line("PENDING", reason="Priority"))):
        console.print(line, markup=False)
    assert "job 4242 PENDING (Priority)" in console.export_text()


@pytest.mark.parametrize("text", HOSTILE)
def test_a_job_output_with_hostile_text_reaches_the_report_unchanged(monkeypatch, tmp_path, text):
    fake = FakeController(sacct="FAILED|c1\n", output=f"RuntimeError: {text}\n")
    monkeypatch.setattr(workload_run, "controller_target", lambda _inventory: fake)
    monkeypatch.setattr(
        workload_run,
        "run_playbook",
        lambda *_a, **_k: SimpleNamespace(exit_code=0),
    )
    monkeypatch.setattr(workload_run.time, "sleep", lambda _s: None)
    inventory = tmp_path / "hosts.yml"
    inventory.write_text("all: {}\n")
    report = tmp_path / "r.json"
    console = Console(width=400, record=True, file=io.StringIO())
    code = workload_run.run_case("ddp", inventory, console=console, report=report)
    assert code == EXIT_FAILED
    first_line = f"RuntimeError: {text}".splitlines()[0]
    assert json.loads(report.read_text())["reason"] == first_line.strip()
    assert fake.commands[-1].startswith("cat /fsx/mlcluster/jobs/")
    assert not [c for c in fake.commands if text in c]
