"""One case registry (mlcluster_workloads.cases): the CLI's choices, `mlcluster run`, the EKS
path and the launcher read it and decide nothing by a case's name, so a case added there alone
is offered, given its default arguments and rendered; the registry and the renderers import
without torch, and the CLI works without the workloads package."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from mlcluster_workloads import cases, launch

from mlcluster import cli, workload_run

ROOT = Path(__file__).resolve().parents[2]
# The registry's readers: none of them may name a case or a case's module.
READERS = [
    ROOT / "src/mlcluster/cli.py",
    ROOT / "src/mlcluster/workload_run.py",
    ROOT / "src/mlcluster/eks.py",
    ROOT / "workloads/src/mlcluster_workloads/launch.py",
]


def run_case_choices() -> list[str] | None:
    parser = cli.build_parser()
    run = parser._subparsers._group_actions[0].choices["run"]
    return next(a for a in run._actions if a.dest == "case").choices


@pytest.fixture
def added_case(monkeypatch):
    """Register cases the way a new one is added: entries in cases.CASES, nothing else."""

    def add(**fields) -> cases.Case:
        case = cases.Case(**fields)
        monkeypatch.setitem(cases.CASES, case.name, case)
        return case

    return add


@pytest.mark.parametrize("reader", READERS, ids=lambda p: p.name)
def test_no_reader_names_a_case_or_its_module(reader):
    names = set(cases.CASES) | set(cases.ALIASES)
    modules = {f"mlcluster_workloads.{case.module}" for case in cases.CASES.values()}
    strings = [
        node.value
        for node in ast.walk(ast.parse(reader.read_text()))
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    ]
    assert not [s for s in strings if s in names], "decide by a registry field, not a name"
    assert not [s for s in strings if any(m in s for m in modules)]


def test_the_cli_offers_the_registry_runnable_cases():
    assert run_case_choices() == cases.runnable()
    assert "deepspeed" in cases.CASES and "deepspeed" not in cases.runnable()


def test_a_case_added_to_the_registry_alone_is_offered_defaulted_and_rendered(added_case):
    added_case(
        name="mamba",
        module="mamba_lm",
        launcher="torchrun",
        summary="a state-space language model",
        cpu_args=("--steps", "3"),
        gpu_args=("--steps", "30"),
        checkpoints=True,
    )
    assert run_case_choices()[-1] == "mamba"
    assert workload_run.case_arguments("mamba", [], 0, "j") == [
        "--steps", "3", "--checkpoint-dir", "/fsx/mlcluster/checkpoints/j",
    ]  # fmt: skip
    assert workload_run.case_arguments("mamba", [], 8, "j")[:2] == ["--steps", "30"]
    script = workload_run.render_script("mamba", 2, ["--steps", "3"], "j", gpus_per_node=8)
    assert "  -m mlcluster_workloads.mamba_lm --dist-timeout=300 --steps 3 &" in script
    assert "#SBATCH --signal=B:USR1@120" in script.splitlines()
    spec = launch.WorkloadSpec(case="mamba", container_image="img:1")
    assert (
        "mlcluster_workloads.mamba_lm"
        in launch.pytorchjob(spec)["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"][
            "containers"
        ][0]["args"]
    )


def test_coordinator_and_mpi_cases_come_from_their_fields(added_case):
    added_case(
        name="flax", module="flax_dp", launcher="per_node", summary="s", coordinator=True,
        checkpoints=True,
    )  # fmt: skip
    flax = launch.render_sbatch(launch.WorkloadSpec(case="flax", startup_timeout=77))
    assert (
        "  -m mlcluster_workloads.flax_dp --coordinator=$head_node:12355 --dist-timeout=77 &"
        in (flax.splitlines())
    )
    added_case(
        name="bus", module="allreduce", launcher="mpi", summary="s", needs_gpu=True,
        program="/opt/bus/bin/all_gather_perf",
    )  # fmt: skip
    bus = launch.render_sbatch(launch.WorkloadSpec(case="bus", gpus_per_node=4))
    assert "#SBATCH --ntasks-per-node=4" in bus.splitlines()
    assert "--nccl-tests-bin=/opt/bus/bin/all_gather_perf" in bus
    with pytest.raises(ValueError, match="a PyTorchJob runs only"):
        launch.pytorchjob(launch.WorkloadSpec(case="bus", container_image="img:1"))
    assert "bus" not in cases.launched_by("torchrun")


def test_registry_fields_hold_what_the_readers_decided_by_name():
    assert [n for n, c in cases.CASES.items() if c.coordinator] == ["jax"]
    nccl = cases.get("nccl_tests")
    assert (nccl.module, nccl.program) == ("allreduce", "/opt/nccl-tests/bin/all_reduce_perf")
    assert nccl.cpu_substitute in cases.runnable()
    assert not cases.get(nccl.cpu_substitute).needs_gpu
    for case in cases.CASES.values():
        assert (case.program is not None) == (case.launcher == "mpi"), case.name
        assert (
            case.module and (ROOT / f"workloads/src/mlcluster_workloads/{case.module}.py").is_file()
        )
        assert case.metrics in cases.METRIC_EVENTS, case.name
    assert [n for n, c in cases.CASES.items() if c.metrics == "bandwidth"] == [
        "allreduce", "nccl_tests",
    ]  # fmt: skip


def test_the_package_base_install_brings_no_training_stack():
    project = tomllib.loads((ROOT / "workloads/pyproject.toml").read_text())["project"]
    assert project["dependencies"] == ["PyYAML>=6,<7"]
    assert {"torch", "jax", "deepspeed"} <= set(project["optional-dependencies"])


def python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=ROOT
    )


def test_registry_and_renderers_import_without_torch_jax_or_numpy():
    proc = python(
        "import sys\n"
        "for name in ('torch', 'jax', 'numpy', 'deepspeed'): sys.modules[name] = None\n"
        "from mlcluster_workloads import cases, launch\n"
        "for name in cases.runnable():\n"
        "    launch.render_sbatch(launch.WorkloadSpec(case=name))\n"
        "print(len(cases.runnable()))\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(len(cases.runnable()))


def test_the_cli_works_without_the_workloads_package_and_run_says_how_to_install_it():
    proc = python(
        "import sys\n"
        "sys.modules['mlcluster_workloads'] = None\n"
        "from mlcluster import cli\n"
        "print(cli.runnable_cases())\n"
        "sys.exit(cli.main(['run', 'ddp', '-i', 'inventory/sample']))\n"
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "None"
    assert "mlcluster-workloads package is not installed" in proc.stderr
    assert "pip install ./workloads" in proc.stderr


def test_the_readme_names_the_cases_run_offers():
    """The README repeats the list for readers; it must be the registry's."""
    sentence = re.search(
        r"`run` takes the cases (.+?) \(GPUs only\) from one",
        ROOT.joinpath("README.md").read_text().replace("\n", " "),
    )
    named = re.findall(r"`([a-z_]+)`", sentence.group(1))
    assert named == cases.runnable()
    assert [n for n in cases.runnable() if cases.get(n).needs_gpu] == named[-1:]
