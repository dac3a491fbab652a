"""Unit tests of the mlcluster.core.sysctl_file module on a stand-in /proc/sys tree."""

from __future__ import annotations

import json

import pytest
from ansible.module_utils.testing import patch_module_args

from mlcluster.paths import load_plugin

sysctl_file = load_plugin("modules", "sysctl_file")

SETTINGS = {
    "net.core.somaxconn": 4096,
    "net.ipv4.tcp_rmem": "4096 87380 67108864",
    "vm.swappiness": 1,
}


@pytest.fixture
def proc(tmp_path, monkeypatch):
    root = tmp_path / "proc-sys"
    values = {
        "net/core/somaxconn": "4096\n",
        # The kernel prints the three numbers with tabs.
        "net/ipv4/tcp_rmem": "4096\t131072\t6291456\n",
        "vm/swappiness": "60\n",
    }
    for rel, value in values.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(value)
    monkeypatch.setattr(sysctl_file, "PROC_SYS", str(root))
    return root


def run(capsys, **args):
    with patch_module_args(args), pytest.raises(SystemExit) as exit_info:
        sysctl_file.main()
    return exit_info.value.code, json.loads(capsys.readouterr().out)


def test_writes_the_file_and_sets_only_the_values_that_differ(proc, tmp_path, capsys):
    path = tmp_path / "90-test.conf"
    code, result = run(capsys, path=str(path), settings=SETTINGS, header="a header")
    assert code == 0
    assert result["changed"] is True and result["written"] is True
    assert result["applied"] == ["net.ipv4.tcp_rmem", "vm.swappiness"]
    assert path.read_text() == (
        "# a header\n"
        "net.core.somaxconn=4096\n"
        "net.ipv4.tcp_rmem=4096 87380 67108864\n"
        "vm.swappiness=1\n"
    )
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    assert (proc / "vm/swappiness").read_text() == "1"
    assert (proc / "net/ipv4/tcp_rmem").read_text() == "4096 87380 67108864"
    # Nothing left to do: the second call changes nothing (tabs and spaces compare equal).
    (proc / "net/ipv4/tcp_rmem").write_text("4096\t87380\t67108864\n")
    code, again = run(capsys, path=str(path), settings=SETTINGS, header="a header")
    assert (code, again["changed"], again["applied"], again["written"]) == (0, False, [], False)


def test_keys_outside_the_pattern_are_written_but_not_set(proc, tmp_path, capsys):
    path = tmp_path / "90-test.conf"
    code, result = run(capsys, path=str(path), settings=SETTINGS, apply_pattern=r"^net\.")
    assert code == 0
    assert result["applied"] == ["net.ipv4.tcp_rmem"]
    assert result["not_applied"] == ["vm.swappiness"]
    assert (proc / "vm/swappiness").read_text() == "60\n"
    assert "vm.swappiness=1" in path.read_text().splitlines()


def test_check_mode_reports_and_changes_nothing(proc, tmp_path, capsys):
    path = tmp_path / "90-test.conf"
    code, result = run(capsys, path=str(path), settings=SETTINGS, _ansible_check_mode=True)
    assert (code, result["changed"], result["written"]) == (0, True, True)
    assert result["applied"] == ["net.ipv4.tcp_rmem", "vm.swappiness"]
    assert not path.exists()
    assert (proc / "vm/swappiness").read_text() == "60\n"


def test_a_key_the_kernel_lacks_fails_before_anything_is_written(proc, tmp_path, capsys):
    path = tmp_path / "90-test.conf"
    settings = {**SETTINGS, "kernel.numa_balancing": 0}
    code, result = run(capsys, path=str(path), settings=settings)
    assert code == 1
    assert result["msg"].startswith("the running kernel has no kernel.numa_balancing (no ")
    assert not path.exists()
    assert (proc / "vm/swappiness").read_text() == "60\n"


@pytest.mark.parametrize("key", ["vm", "net.core.rmem max", "../etc/passwd", "net.core.x\nvm.y"])
def test_rejects_what_is_not_a_sysctl_key(proc, tmp_path, capsys, key):
    code, result = run(capsys, path=str(tmp_path / "f.conf"), settings={key: 1})
    assert code == 1
    assert result["msg"].startswith("not sysctl keys: ")


def test_missing_keys_may_be_skipped(proc, tmp_path, capsys):
    # A container's network namespace has only some of the host's net.* keys.
    path = tmp_path / "95-test.conf"
    settings = {"net.core.somaxconn": 8192, "net.ipv4.tcp_mtu_probing": 1}
    code, result = run(capsys, path=str(path), settings=settings, missing="skip")
    assert code == 0
    assert (result["applied"], result["missing"]) == (
        ["net.core.somaxconn"],
        ["net.ipv4.tcp_mtu_probing"],
    )
    assert "net.ipv4.tcp_mtu_probing=1" in path.read_text().splitlines()
    assert (proc / "net/core/somaxconn").read_text() == "8192"
