"""A wheelhouse that does not say which wheels to trust is refused before anything changes."""

from __future__ import annotations

import subprocess

from mlcluster.paths import project_root


def test_a_wheelhouse_without_a_lock_is_refused_before_anything_is_made(tmp_path):
    wheelhouse = tmp_path / "wheelhouse"
    wheelhouse.mkdir()
    (wheelhouse / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"x")
    root = tmp_path / "fsx"
    play = tmp_path / "play.yml"
    play.write_text(
        f"""
- hosts: localhost
  connection: local
  gather_facts: false
  vars_files: ["{project_root()}/versions.yml"]
  tasks:
    - ansible.builtin.include_role:
        name: workloads
        tasks_from: configure
      vars:
        workloads_stack: cpu
        workloads_root: "{root}"
        workloads_wheelhouse: "{wheelhouse}"
        workloads_wheelhouse_build: false
"""
    )
    done = subprocess.run(
        ["ansible-playbook", "-i", "localhost,", str(play)],
        capture_output=True,
        text=True,
        cwd=project_root(),
    )
    assert done.returncode == 2, done.stdout
    assert f"{wheelhouse} has no requirements.lock, so nothing says which wheels to trust" in (
        done.stdout
    )
    assert "changed=0 " in done.stdout and "failed=1 " in done.stdout, done.stdout
    assert not root.exists()
