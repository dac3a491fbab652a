"""`mlcluster run`: the rendered job, the inventory lookup and the metrics parsing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlcluster import workload_run
from mlcluster.errors import MlclusterError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def test_render_script_runs_the_case_from_the_shared_venv():
    script = workload_run.render_script("jax", 2, ["--steps", "5"], "mlcluster-jax-1")
    assert "#SBATCH --nodes=2" in script
    assert "#SBATCH --output=/fsx/mlcluster/jobs/%x-%j.out" in script
    assert "/fsx/mlcluster/venv/bin/python \\" in script
    assert "-m mlcluster_workloads.jax_dp --coordinator=$head_node:" in script
    assert "--gpus-per-node" not in script


def test_render_script_uses_torchrun_for_ddp():
    script = workload_run.render_script("ddp", 2, ["--steps", "5"], "mlcluster-ddp-1")
    assert "/fsx/mlcluster/venv/bin/torchrun" in script
    assert "--rdzv_backend=c10d" in script
    assert "-m mlcluster_workloads.ddp --steps 5" in script


def test_parse_metrics_keeps_steps_and_summary_only():
    lines = [
        "some log line",
        json.dumps({"event": "step", "step": 1, "loss": 2.0}),
        "{not json",
        json.dumps({"event": "step", "step": 2, "loss": 1.0}),
        json.dumps({"event": "summary", "first_loss": 2.0, "final_loss": 1.0}),
    ]
    steps, summary = workload_run.parse_metrics("\n".join(lines))
    assert [s["step"] for s in steps] == [1, 2]
    assert summary == {"event": "summary", "first_loss": 2.0, "final_loss": 1.0}


def test_summary_table_says_mfu_unknown_without_a_peak():
    from rich.console import Console

    console = Console(width=120, record=True)
    summary = {
        "world_size": 2,
        "first_loss": 2.0,
        "final_loss": 0.5,
        "samples_per_s": 100.0,
        "tokens_per_s": None,
        "tflops_per_device": 0.001,
        "mfu": None,
        "step_time_s": 0.2,
    }
    console.print(workload_run.summary_table("ddp", "7", "COMPLETED", [{}, {}], summary))
    text = console.export_text()
    assert "ddp (job 7): COMPLETED" in text
    assert "0.5000" in text
    assert "unknown (no peak for this device)" in text


def test_controller_target_from_inventory(tmp_path):
    inv = tmp_path / "hosts.yml"
    inv.write_text(
        "all:\n  vars:\n    ansible_user: admin\n"
        "    ansible_ssh_private_key_file: /keys/id\n"
        "    ansible_ssh_common_args: -o StrictHostKeyChecking=no\n"
        "  children:\n    slurm_controller:\n      hosts:\n"
        "        head:\n          ansible_host: 10.0.0.5\n"
    )
    target = workload_run.controller_target(inv)
    assert (target.host, target.address, target.user) == ("head", "10.0.0.5", "admin")
    assert target.ssh_args[-4:] == ["-i", "/keys/id", "-o", "StrictHostKeyChecking=no"]


def test_controller_target_needs_a_controller(tmp_path):
    inv = tmp_path / "hosts.yml"
    inv.write_text("all:\n  hosts:\n    lonely: {}\n")
    with pytest.raises(MlclusterError, match="no host in group slurm_controller"):
        workload_run.controller_target(inv)
