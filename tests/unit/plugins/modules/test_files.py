"""Unit tests of the mlcluster.core.files module on a scratch tree, as the user running them."""

from __future__ import annotations

import grp
import json
import os
import pwd
import stat

import pytest
from ansible.module_utils.testing import patch_module_args

from mlcluster.paths import load_plugin

files = load_plugin("modules", "files")

OWNER = pwd.getpwuid(os.getuid()).pw_name
GROUP = grp.getgrgid(os.getgid()).gr_name


def run(capsys, check=False, diff=False, **args):
    args = {**args, "_ansible_check_mode": check, "_ansible_diff": diff}
    with patch_module_args(args), pytest.raises(SystemExit) as exit_info:
        files.main()
    return exit_info.value.code, json.loads(capsys.readouterr().out)


def spec(dest, content, mode="0644", **extra):
    return {
        "dest": str(dest),
        "content": content,
        "owner": OWNER,
        "group": GROUP,
        "mode": mode,
        **extra,
    }


def mode_of(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_writes_what_differs_then_nothing(tmp_path, capsys):
    same = tmp_path / "same.conf"
    same.write_text("kept\n")
    same.chmod(0o644)
    args = {
        "directories": [
            {"path": str(tmp_path / "d" / "e"), "owner": OWNER, "group": GROUP, "mode": "1777"}
        ],
        "files": [spec(same, "kept\n"), spec(tmp_path / "new.conf", "a=1\n", mode="0600")],
    }
    rc, out = run(capsys, **args)
    assert rc == 0
    assert out["changed_files"] == [str(tmp_path / "new.conf")]
    assert out["changed_directories"] == [str(tmp_path / "d" / "e")]
    assert (tmp_path / "new.conf").read_text() == "a=1\n"
    assert mode_of(tmp_path / "new.conf") == 0o600
    assert mode_of(tmp_path / "d" / "e") == 0o1777
    rc, out = run(capsys, **args)
    assert (rc, out["changed"], out["changed_files"], out["changed_directories"]) == (
        0,
        False,
        [],
        [],
    )


def test_a_mode_alone_is_corrected_in_place(tmp_path, capsys):
    path = tmp_path / "f"
    path.write_text("x\n")
    path.chmod(0o666)
    inode = os.stat(path).st_ino
    rc, out = run(capsys, files=[spec(path, "x\n")])
    assert (rc, out["changed_files"]) == (0, [str(path)])
    assert (mode_of(path), os.stat(path).st_ino) == (0o644, inode)


def test_check_mode_reports_and_writes_nothing(tmp_path, capsys):
    path = tmp_path / "f"
    path.write_text("old\n")
    gone = tmp_path / "gone"
    gone.write_text("x")
    rc, out = run(
        capsys,
        check=True,
        diff=True,
        files=[spec(path, "new\n")],
        absent=[str(gone)],
        directories=[{"path": str(tmp_path / "d"), "owner": OWNER, "group": GROUP}],
    )
    assert rc == 0 and out["changed"] is True
    assert (out["changed_files"], out["removed"]) == ([str(path)], [str(gone)])
    assert out["diff"] == [
        {"before_header": str(path), "after_header": str(path), "before": "old\n", "after": "new\n"}
    ]
    assert path.read_text() == "old\n" and gone.exists() and not (tmp_path / "d").exists()


def test_a_failed_check_leaves_every_file_as_it_was(tmp_path, capsys):
    first, second, gone = tmp_path / "a.conf", tmp_path / "b.conf", tmp_path / "old.conf"
    first.write_text("a=old\n")
    second.write_text("b=old\n")
    gone.write_text("x\n")
    rc, out = run(
        capsys,
        files=[spec(first, "a=new\n"), spec(second, "b=bad\n", validate="grep -qv bad %s")],
        absent=[str(gone)],
    )
    assert rc == 1
    assert out["msg"].startswith(f"{second}: the new content fails its check")
    # Neither file replaced, nothing removed, no temporary file left beside them.
    assert first.read_text() == "a=old\n" and second.read_text() == "b=old\n" and gone.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.conf", "b.conf", "old.conf"]


def test_the_check_sees_the_new_content_under_the_files_extension(tmp_path, capsys):
    path = tmp_path / "rules.yml"
    rc, out = run(
        capsys,
        files=[
            spec(
                path, "ok\n", validate="sh -c 'case %s in *.yml) grep -q ok %s;; *) exit 3;; esac'"
            )
        ],
    )
    assert (rc, out["changed_files"]) == (0, [str(path)]), out
    assert path.read_text() == "ok\n"


def test_a_link_is_replaced_never_followed(tmp_path, capsys):
    target = tmp_path / "target"
    target.write_text("precious\n")
    link = tmp_path / "conf"
    link.symlink_to(target)
    rc, out = run(capsys, files=[spec(link, "mine\n")])
    assert (rc, out["changed_files"]) == (0, [str(link)])
    assert not link.is_symlink() and link.read_text() == "mine\n"
    assert target.read_text() == "precious\n"


def test_absent_removes_files_and_refuses_a_directory(tmp_path, capsys):
    path = tmp_path / "drop-in.conf"
    path.write_text("x\n")
    rc, out = run(capsys, absent=[str(path), str(tmp_path / "never-there")])
    assert (rc, out["removed"], path.exists()) == (0, [str(path)], False)
    rc, out = run(capsys, absent=[str(tmp_path)])
    assert rc == 1 and out["msg"] == f"{tmp_path} is a directory: absent removes files only"


def test_bad_input_fails_before_anything_is_written(tmp_path, capsys):
    good = tmp_path / "good"
    rc, out = run(capsys, files=[spec(good, "x\n"), spec(tmp_path / "bad", "y\n", mode="rw")])
    assert (
        rc == 1 and out["msg"] == f"{tmp_path / 'bad'}: mode 'rw' is not an octal mode such as 0644"
    )
    assert not good.exists()
    rc, out = run(capsys, files=[{**spec(good, "x\n"), "owner": "no-such-user-here"}])
    assert (
        rc == 1
        and out["msg"]
        == "no such user or group on this node: getpwnam(): name not found: 'no-such-user-here'"
    )
