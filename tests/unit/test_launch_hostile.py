"""Hostile strings in every value the launcher interpolates: each is refused with a ValueError
before anything is rendered, or comes out inert.

Inert, for a batch script: ``bash -n`` accepts it, its ``#SBATCH`` lines are exactly the
directives expected, and when the script is run (with ``scontrol``, ``scancel`` and ``srun``
replaced by stubs that record their arguments) no injected command runs (a canary file stays
absent), and ``srun`` receives every argument and environment value exactly as given. For a
PyTorchJob: the YAML parses back to the same argument list and environment values.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from mlcluster_workloads.launch import WorkloadSpec, render_pytorchjob, render_sbatch

CANARY = "CANARY"
HOSTILE = [
    "a\nb",
    "x\n#SBATCH --uid=0",
    f"x; touch {CANARY}",
    f"$(touch {CANARY})",
    f"`touch {CANARY}`",
    f"${{IFS}}touch${{IFS}}{CANARY}",
    f"x && touch {CANARY}",
    f"x | touch {CANARY}",
    "'",
    '"',
    "a'b\"c",
    "\\",
    "#",
    "*",
    "~root",
    "a b",
    "[/bold]",
    "x\r",
    "-",
    "",
    "$HOME",
    "!!",
]
# The directives of a training case's script with the fields below set to something plain.
DIRECTIVES = {
    "--job-name",
    "--nodes",
    "--ntasks-per-node",
    "--exclusive",
    "--partition",
    "--time",
    "--requeue",
    "--open-mode",
    "--signal",
    "--output",
}
STUB = """#!/bin/bash
# records its arguments (NUL-separated) and the HOSTILE variable, answers like Slurm would
name=$(basename "$0")
printf '%s\\0' "$@" > "$RECORD/$name.args"
printf '%s' "${HOSTILE-unset}" > "$RECORD/$name.env"
if [ "$name" = scontrol ] && [ "$1" = show ]; then echo node1; fi
exit 0
"""


@pytest.fixture(scope="module")
def stubs(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("stubs")
    for name in ("scontrol", "scancel", "srun"):
        path = directory / name
        path.write_text(STUB)
        path.chmod(0o755)
    return directory


def base(**overrides) -> dict:
    values = {
        "case": "ddp",
        "nodes": 2,
        "gpus_per_node": 0,
        "partition": "cpu",
        "time": "10",
        "job_name": "plain",
        "output_dir": "/fsx/logs",
        "venv": "/fsx/venv",
    }
    return {**values, **overrides}


def run_script(script: str, stubs: Path, work: Path) -> dict[str, list[str] | str]:
    """``bash -n``, then run it; returns what each stub recorded."""
    syntax = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True)
    assert syntax.returncode == 0, syntax.stderr
    record = work / "record"
    record.mkdir()
    path = work / "job.sbatch"
    path.write_text(script)
    env = {
        "PATH": f"{stubs}:/usr/bin:/bin",
        "RECORD": str(record),
        "SLURM_JOB_NODELIST": "node1",
        "SLURM_JOB_NUM_NODES": "1",
        "SLURM_JOB_ID": "7",
        "HOME": str(work),
    }
    done = subprocess.run(["bash", str(path)], cwd=work, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert not (work / CANARY).exists(), "an injected command ran"
    recorded: dict[str, list[str] | str] = {}
    for item in record.iterdir():
        if item.suffix == ".args":
            recorded[item.stem] = item.read_bytes().decode().split("\0")[:-1]
        else:
            recorded[item.stem + ".env"] = item.read_bytes().decode()
    return recorded


def directive_names(script: str) -> list[str]:
    return [
        line.removeprefix("#SBATCH ").split("=")[0]
        for line in script.splitlines()
        if line.startswith("#SBATCH")
    ]


@pytest.mark.parametrize(
    "field", ["job_name", "partition", "time", "output_dir", "venv", "container_image"]
)
@pytest.mark.parametrize("value", HOSTILE, ids=repr)
def test_hostile_fields_are_refused_or_inert(field, value, stubs, tmp_path):
    try:
        spec = WorkloadSpec(**base(**{field: value}))
    except ValueError:
        return  # refused before anything was rendered
    script = render_sbatch(spec)
    assert set(directive_names(script)) <= DIRECTIVES
    assert len(directive_names(script)) == len(DIRECTIVES)
    recorded = run_script(script, stubs, tmp_path)
    if field == "container_image" and value:  # quoted, one argument of srun
        assert f"--container-image={value}" in recorded["srun"]
        return
    # of the hostile strings, the patterns let through only a lone "-" as partition or output
    # directory ("" as container image means none)
    assert (field, value) in {("partition", "-"), ("output_dir", "-"), ("container_image", "")}


@pytest.mark.parametrize("value", HOSTILE, ids=repr)
@pytest.mark.parametrize("case", ["ddp", "jax", "allreduce"])
def test_hostile_arguments_reach_the_case_exactly(case, value, stubs, tmp_path):
    if "\0" in value:
        return
    spec = WorkloadSpec(**base(case=case, args=("--tag", value)))
    recorded = run_script(render_sbatch(spec), stubs, tmp_path)
    assert recorded["srun"][-2:] == ["--tag", value]


def test_hostile_arguments_reach_nccl_tests_exactly(stubs, tmp_path):
    # the MPI path runs the parser in the batch step itself: its python is a stub too
    python = stubs / "python"
    python.write_text(STUB)
    python.chmod(0o755)
    for index, value in enumerate(HOSTILE):
        spec = WorkloadSpec(**base(case="nccl_tests", gpus_per_node=8, venv=None, args=(value,)))
        work = tmp_path / str(index)
        work.mkdir()
        recorded = run_script(render_sbatch(spec), stubs, work)
        assert recorded["python"][-1] == value


@pytest.mark.parametrize("value", HOSTILE, ids=repr)
def test_hostile_env_values_are_refused_or_exact(value, stubs, tmp_path):
    try:
        spec = WorkloadSpec(**base(env={"HOSTILE": value}))
    except ValueError as error:
        assert any(c in value for c in "\n\r"), error
        return
    recorded = run_script(render_sbatch(spec), stubs, tmp_path)
    assert recorded["srun.env"] == value


@pytest.mark.parametrize("key", [*HOSTILE, "1X", "A-B", "A=B", "PATH;x"], ids=repr)
def test_hostile_env_keys_are_refused(key):
    with pytest.raises(ValueError, match="env key"):
        WorkloadSpec(**base(env={key: "v"}))


@pytest.mark.parametrize("value", HOSTILE, ids=repr)
def test_pytorchjob_keeps_hostile_values_as_data(value):
    fields = base(container_image="img:1", venv=None, job_name="plain", args=("--tag", value))
    try:
        spec = WorkloadSpec(**{**fields, "env": {"HOSTILE": value}})
    except ValueError:
        spec = WorkloadSpec(**fields)  # env values must be one line; args need not be
        env_value = None
    else:
        env_value = value
    job = yaml.safe_load(render_pytorchjob(spec))
    container = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    assert container["args"][-2:] == ["--tag", value]
    if env_value is not None:
        assert container["env"] == [{"name": "HOSTILE", "value": value}]
    # names and namespaces are Kubernetes names: a hostile one is refused
    with pytest.raises(ValueError):
        render_pytorchjob(WorkloadSpec(**{**fields, "job_name": value or "UPPER"}))
    with pytest.raises(ValueError, match="namespace"):
        WorkloadSpec(**{**fields, "namespace": value or "UPPER"})


def test_a_newline_in_a_job_name_is_refused_with_the_field_named():
    with pytest.raises(ValueError, match=r"job_name must be letters.*'x\\n#SBATCH --uid=0'"):
        WorkloadSpec(**base(job_name="x\n#SBATCH --uid=0"))
