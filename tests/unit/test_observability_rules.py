"""Prometheus's configuration, the alert rules and Alertmanager's configuration as the
prometheus role renders them, checked by the real promtool and amtool, and the rules
unit-tested with `promtool test rules`: each alert fires after its `for:` and resolves.

The files come out of Ansible itself: a throw-away role made of the prometheus role's
defaults, vars and templates and the files task of its configure.yml (its configuration files,
with their `validate:` commands: promtool and amtool run there too), on localhost through
ansible-runner, for a pretend cluster given in the inventory below.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from mlcluster.paths import project_root
from mlcluster.runner import EXIT_OK, run_playbook

ROLE = project_root() / "roles" / "prometheus"
# The configuration files of the role's files task (mlcluster.core.files), by path.
RENDERED = {
    "/etc/prometheus/rules/mlcluster.rules.yml",
    "/etc/prometheus/prometheus.yml",
    "/etc/prometheus/alertmanager.yml",
}
ALERTS = {
    "NodeDown",
    "ExporterDown",
    "MountMissing",
    "DiskFilling",
    "ClockUnsynchronised",
    "SlurmNodeDrained",
    "SlurmNodeDown",
    "SlurmUnreachable",
    "GpuXidError",
    "GpuMissing",
    "EfaDeviceMissing",
    "EfaErrorsRising",
}

pytestmark = pytest.mark.skipif(
    not (shutil.which("promtool") and shutil.which("amtool")),
    reason="promtool/amtool missing: scripts/setup.sh installs them (Debian's prometheus, "
    "prometheus-alertmanager)",
)


def _host(address, gpus=0):
    return {
        "ansible_host": address,
        "pretend_node": {"counts": {"nvidia_gpus": gpus, "efa_devices": 0}},
    }


INVENTORY = {
    "all": {
        "vars": {
            "ansible_connection": "local",
            "ansible_python_interpreter": "{{ ansible_playbook_python }}",
        },
        "children": {
            "slurm_controller": {"hosts": {"head": _host("10.1.0.10")}},
            "slurm_login": {"hosts": {}},
            "slurm_compute": {
                "hosts": {"gpu1": _host("10.1.0.21", gpus=8), "cpu1": _host("10.1.0.31")}
            },
        },
    }
}


def render(root: Path, extravars: dict | None = None) -> dict[str, str]:
    tasks = yaml.safe_load((ROLE / "tasks" / "configure.yml").read_text())
    writers = [task for task in tasks if "mlcluster.core.files" in task]
    assert len(writers) == 1, "configure.yml no longer writes its files in one files task"
    files = [f for f in writers[0]["mlcluster.core.files"]["files"] if f["dest"] in RENDERED]
    assert {f["dest"] for f in files} == RENDERED, "the files task lacks a configuration file"
    role = root / "roles" / "prometheus_render"
    (role / "tasks").mkdir(parents=True)
    for part in ("defaults", "vars", "templates"):
        (role / part).symlink_to(ROLE / part)
    owner, group = pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name
    task = {
        "name": writers[0]["name"],
        "mlcluster.core.files": {
            "files": [
                {
                    **f,
                    "dest": f"{{{{ render_dir }}}}/{Path(f['dest']).name}",
                    "owner": owner,
                    "group": group,
                }
                for f in files
            ]
        },
    }
    steps = [task]
    (role / "tasks" / "main.yml").write_text(yaml.safe_dump(steps, sort_keys=False))
    playbook = root / "render.yml"
    playbook.write_text(
        yaml.safe_dump(
            [
                {
                    "name": "Take on the pretend nodes' facts",
                    "hosts": "all",
                    "gather_facts": False,
                    "tasks": [
                        {
                            "name": "Pretend node facts",
                            "ansible.builtin.set_fact": {
                                "mlcluster_node": "{{ pretend_node }}",
                                "cacheable": True,
                            },
                        }
                    ],
                },
                {
                    "name": "Render",
                    "hosts": "slurm_controller",
                    "gather_facts": False,
                    "roles": [{"role": str(role)}],
                },
            ],
            sort_keys=False,
        )
    )
    hosts = root / "hosts.yml"
    hosts.write_text(yaml.safe_dump(INVENTORY, sort_keys=False))
    out = root / "out"
    out.mkdir()
    result = run_playbook(
        str(playbook), hosts, extravars={"render_dir": str(out), **(extravars or {})}
    )
    assert result.exit_code == EXIT_OK, result.errors
    return {path.name: path.read_text() for path in out.iterdir()}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    return render(tmp_path_factory.mktemp("prometheus-render"))


def promtool(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["promtool", *args], capture_output=True, text=True, cwd=cwd, timeout=120, check=False
    )


def test_scrape_configuration_has_every_node_and_exporter(rendered, tmp_path):
    config = yaml.safe_load(rendered["prometheus.yml"])
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["node"]["static_configs"] == [
        {"targets": ["10.1.0.10:9100"], "labels": {"node": "head"}},
        {"targets": ["10.1.0.21:9100"], "labels": {"node": "gpu1"}},
        {"targets": ["10.1.0.31:9100"], "labels": {"node": "cpu1"}},
    ]
    # dcgm-exporter only where the node has GPUs.
    assert jobs["dcgm"]["static_configs"] == [
        {"targets": ["10.1.0.21:9400"], "labels": {"node": "gpu1"}}
    ]
    assert jobs["slurm"]["honor_labels"] is True
    assert jobs["slurm"]["static_configs"] == [
        {"targets": ["localhost:9341"], "labels": {"node": "head"}}
    ]
    assert config["global"] == {"scrape_interval": "15s", "evaluation_interval": "15s"}
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yml"]
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == [
        "localhost:9093"
    ]
    path = tmp_path / "prometheus.yml"
    path.write_text(rendered["prometheus.yml"])
    check = promtool("check", "config", "--syntax-only", str(path))
    assert check.returncode == 0, check.stdout + check.stderr


def test_remote_write_to_amazon_managed_prometheus_with_sigv4(tmp_path):
    url = "https://aps-workspaces.us-west-2.amazonaws.com/workspaces/ws-1234/api/v1/remote_write"
    files = render(
        tmp_path,
        {"prometheus_remote_write": [{"url": url, "sigv4": {"region": "us-west-2"}}]},
    )
    config = yaml.safe_load(files["prometheus.yml"])
    assert config["remote_write"] == [{"url": url, "sigv4": {"region": "us-west-2"}}]
    path = tmp_path / "prometheus.yml"
    path.write_text(files["prometheus.yml"])
    assert promtool("check", "config", "--syntax-only", str(path)).returncode == 0


def test_a_bad_remote_write_is_refused_before_the_file_is_written(tmp_path):
    """promtool check config, as the template's validate, refuses an entry Prometheus would
    refuse (sigv4 and basic_auth together), so the role fails instead of writing it."""
    with pytest.raises(AssertionError) as failed:
        render(
            tmp_path,
            {
                "prometheus_remote_write": [
                    {
                        "url": "https://example.invalid/api/v1/write",
                        "sigv4": {"region": "us-west-2"},
                        "basic_auth": {"username": "u", "password": "p"},
                    }
                ]
            },
        )
    message = str(failed.value.args[0])
    assert "at most one of basic_auth, authorization, oauth2, & sigv4 must be configured" in (
        message
    ), message


def test_alertmanager_configuration_checks(rendered, tmp_path):
    config = yaml.safe_load(rendered["alertmanager.yml"])
    assert config == {
        "route": {
            "receiver": "default",
            "group_by": ["alertname", "node"],
            "group_wait": "30s",
            "group_interval": "5m",
            "repeat_interval": "4h",
        },
        "receivers": [{"name": "default"}],
    }
    path = tmp_path / "alertmanager.yml"
    path.write_text(rendered["alertmanager.yml"])
    check = subprocess.run(
        ["amtool", "check-config", str(path)], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_every_alert_has_a_for_duration_in_the_defaults(rendered):
    rules = yaml.safe_load(rendered["mlcluster.rules.yml"])
    names = {r["alert"] for group in rules["groups"] for r in group["rules"]}
    assert names == ALERTS
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    assert set(defaults["prometheus_alert_for"]) == ALERTS
    durations = {r["alert"]: r["for"] for group in rules["groups"] for r in group["rules"]}
    assert durations["NodeDown"] == "2m" and durations["SlurmNodeDrained"] == "5m"


def _alert(name, labels, summary, severity):
    return {
        "exp_labels": {"alertname": name, "severity": severity, **labels},
        "exp_annotations": {"summary": summary},
    }


def _fs(metric, mountpoint, fstype, values):
    labels = f'job="node",node="c1",mountpoint="{mountpoint}",fstype="{fstype}"'
    return {"series": f"node_filesystem_{metric}{{{labels}}}", "values": values}


def _check(name, at, alerts=()):
    return {"eval_time": at, "alertname": name, "exp_alerts": list(alerts)}


GPU_MISSING = "{node}: fewer GPUs than the 2 it was deployed with (a GPU fell off the bus?)"
CLOCK = "clock not synchronised (NCCL timeouts and Slurm credentials need one time)"

# Series in promtool's notation: every value is one sample at 15 s steps from 0
# ("0x12" is 0 thirteen times). Each test below says when the condition starts and ends.
RULE_TESTS = [
    {
        # compute1's node exporter stops answering at 30 s and is back at 3m45s: NodeDown
        # (for 2m) is pending until 2m30s, fires then, and resolves once it answers.
        "interval": "15s",
        "input_series": [
            {"series": 'up{job="node",node="compute1"}', "values": "1 1 0x12 1x8"},
            {"series": 'up{job="node",node="compute2"}', "values": "1x22"},
        ],
        "alert_rule_test": [
            _check("NodeDown", "2m15s"),
            _check(
                "NodeDown",
                "2m30s",
                [
                    _alert(
                        "NodeDown",
                        {"job": "node", "node": "compute1"},
                        "compute1: node exporter unreachable",
                        "critical",
                    )
                ],
            ),
            _check("NodeDown", "4m"),
        ],
    },
    {
        # compute2 drained from 1m to 7m (scontrol update state=drain, then resume):
        # SlurmNodeDrained (for 5m) fires at 6m and is gone at 7m15s. compute1 stays idle.
        "interval": "1m",
        "input_series": [
            {
                "series": 'slurm_node_state{node="compute2",partition="compute",state="idle"}',
                "values": "1 _x6 1x3",
            },
            {
                "series": 'slurm_node_state{node="compute2",partition="compute",state="drained"}',
                "values": "_ 1x5 stale",
            },
            {
                "series": 'slurm_node_state{node="compute1",partition="compute",state="idle"}',
                "values": "1x10",
            },
        ],
        "alert_rule_test": [
            _check("SlurmNodeDrained", "5m"),
            _check(
                "SlurmNodeDrained",
                "6m",
                [
                    _alert(
                        "SlurmNodeDrained",
                        {"node": "compute2", "state": "drained"},
                        "Slurm node compute2 is drained",
                        "warning",
                    )
                ],
            ),
            _check("SlurmNodeDrained", "7m15s"),
        ],
    },
    {
        # A node in two partitions down from 0: one alert, not one per partition.
        "interval": "1m",
        "input_series": [
            {
                "series": 'slurm_node_state{node="gpu1",partition="gpu",state="down"}',
                "values": "1x5",
            },
            {
                "series": 'slurm_node_state{node="gpu1",partition="all",state="down"}',
                "values": "1x5",
            },
        ],
        "alert_rule_test": [
            _check("SlurmNodeDown", "1m"),
            _check(
                "SlurmNodeDown",
                "2m",
                [
                    _alert(
                        "SlurmNodeDown",
                        {"node": "gpu1", "state": "down"},
                        "Slurm node gpu1 is down",
                        "critical",
                    )
                ],
            ),
        ],
    },
    {
        # gpu1 was deployed with 2 GPUs; GPU 1 falls off the bus at 3m (DCGM reports one).
        # GpuMissing (for 2m) fires at 5m. gpu2's dcgm-exporter reports nothing at all from
        # the start: that is also GPUs missing. cpu1 expects none and has none: no alert.
        "interval": "1m",
        "input_series": [
            {"series": 'mlcluster_node_gpus_expected{job="node",node="gpu1"}', "values": "2x8"},
            {"series": 'mlcluster_node_gpus_expected{job="node",node="gpu2"}', "values": "2x8"},
            {"series": 'mlcluster_node_gpus_expected{job="node",node="cpu1"}', "values": "0x8"},
            {"series": 'DCGM_FI_DEV_GPU_TEMP{job="dcgm",node="gpu1",gpu="0"}', "values": "40x8"},
            {
                "series": 'DCGM_FI_DEV_GPU_TEMP{job="dcgm",node="gpu1",gpu="1"}',
                "values": "40 40 40 stale",
            },
        ],
        "alert_rule_test": [
            _check(
                "GpuMissing",
                "4m",
                [
                    _alert(
                        "GpuMissing",
                        {"node": "gpu2"},
                        GPU_MISSING.format(node="gpu2"),
                        "critical",
                    )
                ],
            ),
            _check(
                "GpuMissing",
                "5m",
                [
                    _alert(
                        "GpuMissing",
                        {"node": "gpu1"},
                        GPU_MISSING.format(node="gpu1"),
                        "critical",
                    ),
                    _alert(
                        "GpuMissing",
                        {"node": "gpu2"},
                        GPU_MISSING.format(node="gpu2"),
                        "critical",
                    ),
                ],
            ),
        ],
    },
    {
        # XID 79 on GPU 3 at 2m: fires at once (for 0s) and clears when DCGM reports 0.
        "interval": "1m",
        "input_series": [
            {
                "series": 'DCGM_FI_DEV_XID_ERRORS{job="dcgm",node="gpu1",gpu="3"}',
                "values": "0 0 79 79 0",
            },
        ],
        "alert_rule_test": [
            _check("GpuXidError", "1m"),
            _check(
                "GpuXidError",
                "2m",
                [
                    _alert(
                        "GpuXidError",
                        {"job": "dcgm", "node": "gpu1", "gpu": "3"},
                        "gpu1 GPU 3: XID 79",
                        "critical",
                    )
                ],
            ),
            _check("GpuXidError", "4m"),
        ],
    },
    {
        # Retransmits rise between 10m and 12m, rdma bytes rise always (not an error):
        # EfaErrorsRising fires 5m after the first increase and ends 10m after the last.
        "interval": "1m",
        "input_series": [
            {
                "series": 'efa_hw_counter_total{job="node",node="n1",device="rdmap0",port="1",'
                'counter="retrans_pkts"}',
                "values": "5x10 6 7 8x20",
            },
            {
                "series": 'efa_hw_counter_total{job="node",node="n1",device="rdmap0",port="1",'
                'counter="rdma_read_bytes"}',
                "values": "0+1000x30",
            },
        ],
        "alert_rule_test": [
            _check("EfaErrorsRising", "15m"),
            _check(
                "EfaErrorsRising",
                "16m",
                [
                    _alert(
                        "EfaErrorsRising",
                        {
                            "job": "node",
                            "node": "n1",
                            "device": "rdmap0",
                            "port": "1",
                            "counter": "retrans_pkts",
                        },
                        "n1 rdmap0: EFA retrans_pkts rising",
                        "warning",
                    )
                ],
            ),
            _check("EfaErrorsRising", "25m"),
        ],
    },
    {
        # An EFA device gone (2 expected, 1 seen from 1m).
        "interval": "1m",
        "input_series": [
            {
                "series": 'mlcluster_node_efa_devices_expected{job="node",node="n1"}',
                "values": "2x5",
            },
            {"series": 'efa_devices{job="node",node="n1"}', "values": "2 1x4"},
        ],
        "alert_rule_test": [
            _check("EfaDeviceMissing", "2m"),
            _check(
                "EfaDeviceMissing",
                "3m",
                [
                    _alert(
                        "EfaDeviceMissing",
                        {"node": "n1"},
                        "n1: fewer EFA devices than the 2 it was deployed with",
                        "critical",
                    )
                ],
            ),
        ],
    },
    {
        # /fsx unmounted from 1m to 4m.
        "interval": "1m",
        "input_series": [
            {
                "series": 'mlcluster_node_mount_present{job="node",node="c1",mountpoint="/fsx"}',
                "values": "1 0 0 0 1 1",
            },
        ],
        "alert_rule_test": [
            _check("MountMissing", "2m"),
            _check(
                "MountMissing",
                "3m",
                [
                    _alert(
                        "MountMissing",
                        {"job": "node", "node": "c1", "mountpoint": "/fsx"},
                        "c1: /fsx is not mounted",
                        "critical",
                    )
                ],
            ),
            _check("MountMissing", "4m"),
        ],
    },
    {
        # /scratch goes from 50% free to 5% free at 5m; a read-only filesystem that is full
        # is not "filling"; tmpfs is left out.
        "interval": "5m",
        "input_series": [
            _fs("avail_bytes", "/scratch", "ext4", "50 5 5 5 5 5 5"),
            _fs("size_bytes", "/scratch", "ext4", "100x6"),
            _fs("readonly", "/scratch", "ext4", "0x6"),
            _fs("avail_bytes", "/ro", "ext4", "0x6"),
            _fs("size_bytes", "/ro", "ext4", "100x6"),
            _fs("readonly", "/ro", "ext4", "1x6"),
            _fs("avail_bytes", "/run", "tmpfs", "0x6"),
            _fs("size_bytes", "/run", "tmpfs", "100x6"),
        ],
        "alert_rule_test": [
            _check("DiskFilling", "15m"),
            _check(
                "DiskFilling",
                "20m",
                [
                    _alert(
                        "DiskFilling",
                        {"job": "node", "node": "c1", "mountpoint": "/scratch", "fstype": "ext4"},
                        "c1: /scratch has less than 10% free",
                        "warning",
                    )
                ],
            ),
        ],
    },
    {
        # Clock unsynchronised from 0 with a 16 s max error: fires after 5m of history +
        # 10m of `for:`; a synchronised node (c2) never fires.
        "interval": "1m",
        "input_series": [
            {"series": 'node_timex_sync_status{job="node",node="c1"}', "values": "0x20"},
            {"series": 'node_timex_maxerror_seconds{job="node",node="c1"}', "values": "16x20"},
            {"series": 'node_timex_sync_status{job="node",node="c2"}', "values": "1x20"},
            {"series": 'node_timex_maxerror_seconds{job="node",node="c2"}', "values": "0.1x20"},
        ],
        "alert_rule_test": [
            _check("ClockUnsynchronised", "9m"),
            _check(
                "ClockUnsynchronised",
                "10m",
                [
                    _alert(
                        "ClockUnsynchronised",
                        {"job": "node", "node": "c1"},
                        "c1: " + CLOCK,
                        "warning",
                    )
                ],
            ),
        ],
    },
    {
        # The Slurm commands fail (slurmctld down) from 1m; the exporter itself is down on
        # another host from 0 (ExporterDown, for 5m).
        "interval": "1m",
        "input_series": [
            {"series": 'slurm_up{job="slurm",node="head"}', "values": "1 0x6"},
            {"series": 'up{job="dcgm",node="gpu1"}', "values": "0x6"},
        ],
        "alert_rule_test": [
            _check(
                "SlurmUnreachable",
                "3m",
                [
                    _alert(
                        "SlurmUnreachable",
                        {"job": "slurm", "node": "head"},
                        "sinfo, scontrol, squeue or sdiag failed on head",
                        "critical",
                    )
                ],
            ),
            _check("ExporterDown", "4m"),
            _check(
                "ExporterDown",
                "5m",
                [
                    _alert(
                        "ExporterDown",
                        {"job": "dcgm", "node": "gpu1"},
                        "gpu1: dcgm exporter unreachable",
                        "warning",
                    )
                ],
            ),
        ],
    },
]


def test_rules_check(rendered, tmp_path):
    path = tmp_path / "mlcluster.rules.yml"
    path.write_text(rendered["mlcluster.rules.yml"])
    check = promtool("check", "rules", str(path))
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 12 rules found" in check.stdout


def test_rules_fire_and_resolve_at_the_right_times(rendered, tmp_path):
    (tmp_path / "mlcluster.rules.yml").write_text(rendered["mlcluster.rules.yml"])
    tests = {
        "rule_files": ["mlcluster.rules.yml"],
        "evaluation_interval": "15s",
        "tests": RULE_TESTS,
    }
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(tests, sort_keys=False))
    result = promtool("test", "rules", "tests.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    # Every alert of the rules is exercised above.
    assert {c["alertname"] for t in RULE_TESTS for c in t["alert_rule_test"]} == ALERTS
