#!/usr/bin/env python3
"""Mutation testing on demand: plant one small bug at a time in a module and see whether the
fast tests that cover it notice.

    .venv/bin/python scripts/mutate.py                 # every target (workloads last)
    .venv/bin/python scripts/mutate.py runner versions # some targets
    .venv/bin/python scripts/mutate.py --list          # the targets and their tests
    .venv/bin/python scripts/mutate.py slurm_conf --only 12,40 -v   # rerun some mutants

Each mutant changes one thing inside a function body: an arithmetic operator (+ -, * /, //, %),
a comparison (< <=, > >=, == !=, in / not in, is / is not), and/or, a dropped `not`, a negated
if/while/ternary condition, an integer constant (n -> n+1), True/False, a short string
constant (a key or a name, not a message), or a returned value (-> None). Module-level tables,
docstrings, annotations and f-string text are left alone. The mutant replaces the module in a
private copy of the checkout (the working tree is never touched, so other people's test runs are
not disturbed), and the target's tests run there with ``pytest -x``: a failing test or a
timeout (twice: the second time with five times the room, as a loaded machine can slow a run
past the first limit) kills the mutant, passing tests let it survive. docs/testing.md has the
scores and what each survivor means. Not part of CI: a full run takes a while on two cores.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILTERS = "collections/ansible_collections/mlcluster/core/plugins/filter"
WORKLOADS = "workloads/src/mlcluster_workloads"

# name: (module, stages). A stage is one pytest command line; the stages run in turn, the fast
# ones first, and the first that fails kills the mutant, so only survivors pay for the slow ones.
TARGETS: dict[str, tuple[str, list[list[str]]]] = {
    "slurm_conf": (
        f"{FILTERS}/slurm_conf.py",
        [["tests/unit/plugins/filter/test_slurm_conf.py"], ["tests/unit/test_slurm_rendered.py"]],
    ),
    "versions": (f"{FILTERS}/versions.py", [["tests/unit/plugins/filter/test_versions.py"]]),
    "preflight": (
        f"{FILTERS}/preflight.py",
        [
            [
                "tests/unit/test_preflight.py",
                "-k",
                "unknown_role_vars or prefix or suggestions or registered",
            ]
        ],
    ),
    "runner": (
        "src/mlcluster/runner.py",
        [
            # without an ansible-playbook run first, then the real runs
            [
                "tests/unit/test_runner.py",
                "-k",
                "handler or summary or exit_codes or cli or message or inventory or loop "
                "or rounds or any_file or missing_playbook or new_directories",
            ],
            ["tests/unit/test_runner.py"],
        ],
    ),
    "workload_run": ("src/mlcluster/workload_run.py", [["tests/unit/test_workload_run.py"]]),
    "job_report": (
        "src/mlcluster/job_report.py",
        [["tests/unit/test_workload_run.py"], ["tests/unit/test_hostile_strings.py"]],
    ),
    # The workloads' tests import torch and start processes: slowest, so last.
    "metrics": (
        f"{WORKLOADS}/metrics.py",
        [["tests/unit/test_workloads_metrics.py"], ["tests/workloads/test_metrics.py"]],
    ),
    "data": (
        f"{WORKLOADS}/data.py",
        [["tests/unit/test_workloads_data.py"], ["tests/workloads/test_data.py"]],
    ),
    "allreduce": (
        f"{WORKLOADS}/allreduce.py",
        [["tests/unit/test_workloads_allreduce.py"], ["tests/workloads/test_allreduce.py"]],
    ),
}

BINOPS = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.Div,
    ast.Div: ast.Mult,
    ast.FloorDiv: ast.Mult,
    ast.Mod: ast.FloorDiv,
    ast.Pow: ast.Mult,
}
COMPARES = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
}
SYMBOLS = {
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.Div: "/",
    ast.FloorDiv: "//",
    ast.Mod: "%",
    ast.Pow: "**",
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
    ast.Eq: "==",
    ast.NotEq: "!=",
    ast.In: "in",
    ast.NotIn: "not in",
    ast.Is: "is",
    ast.IsNot: "is not",
    ast.And: "and",
    ast.Or: "or",
}
MAX_STRING = 40  # longer strings are messages; their wording is not behaviour
# String mutants (--strings) are many and mostly renamed dict keys; off by default.
STRINGS = False


@dataclass
class Mutant:
    number: int
    line: int
    description: str
    source: str = ""
    outcome: str = ""  # killed | survived | timeout
    seconds: float = 0.0


def _skipped_nodes(tree: ast.Module) -> set[int]:
    """ids of nodes no mutant may touch: docstrings, annotations, f-string text, and
    everything outside function bodies (module tables, class attributes)."""
    skip: set[int] = set()

    def mark(node: ast.AST | None) -> None:
        if node is not None:
            skip.update(id(n) for n in ast.walk(node))

    inside_functions: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for statement in node.body:
                inside_functions.update(id(n) for n in ast.walk(statement))
            mark(node.returns)
            for arg in [*node.args.args, *node.args.kwonlyargs, *node.args.posonlyargs]:
                mark(arg.annotation)
            mark(node.args.vararg and node.args.vararg.annotation)
            mark(node.args.kwarg and node.args.kwarg.annotation)
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                mark(first)
        elif isinstance(node, ast.AnnAssign):
            mark(node.annotation)
        elif isinstance(node, ast.JoinedStr):
            skip.update(id(v) for v in node.values if isinstance(v, ast.Constant))
        elif isinstance(node, ast.If) and _is_main_guard(node):
            mark(node)
    skip.update(id(n) for n in ast.walk(tree) if id(n) not in inside_functions)
    return skip


def _is_main_guard(node: ast.If) -> bool:
    test = node.test
    return (
        isinstance(test, ast.Compare)
        and isinstance(test.left, ast.Name)
        and test.left.id == "__name__"
    )


def _variants(node: ast.AST) -> list[tuple[str, callable]]:
    """(description, apply) for each mutation of this node; apply changes the node in place
    and may return a replacement node."""
    out: list[tuple[str, callable]] = []
    if isinstance(node, ast.BinOp) and type(node.op) in BINOPS:
        new = BINOPS[type(node.op)]
        out.append(
            (
                f"`{SYMBOLS[type(node.op)]}` -> `{SYMBOLS[new]}`",
                lambda n, new=new: setattr(n, "op", new()),
            )
        )
    elif isinstance(node, ast.Compare):
        for i, op in enumerate(node.ops):
            if type(op) in COMPARES:
                new = COMPARES[type(op)]

                def apply(n, i=i, new=new):
                    n.ops[i] = new()

                out.append((f"`{SYMBOLS[type(op)]}` -> `{SYMBOLS[new]}`", apply))
    elif isinstance(node, ast.BoolOp):
        new = ast.Or if isinstance(node.op, ast.And) else ast.And
        out.append(
            (
                f"`{SYMBOLS[type(node.op)]}` -> `{SYMBOLS[new]}`",
                lambda n, new=new: setattr(n, "op", new()),
            )
        )
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        out.append(("`not x` -> `x`", lambda n: n.operand))
    elif isinstance(node, ast.If | ast.While | ast.IfExp):
        out.append(
            (
                "condition negated",
                lambda n: setattr(n, "test", ast.UnaryOp(op=ast.Not(), operand=n.test)),
            )
        )
    elif isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, bool):
            out.append((f"`{value}` -> `{not value}`", lambda n: setattr(n, "value", not n.value)))
        elif isinstance(value, int):
            out.append((f"`{value}` -> `{value + 1}`", lambda n: setattr(n, "value", n.value + 1)))
        elif isinstance(value, float):
            out.append(
                (f"`{value!r}` -> `{value + 1!r}`", lambda n: setattr(n, "value", n.value + 1))
            )
        elif (
            STRINGS
            and isinstance(value, str)
            and value
            and len(value) <= MAX_STRING
            and " " not in value
        ):
            out.append(
                (f"{value!r} -> {value + 'X'!r}", lambda n: setattr(n, "value", n.value + "X"))
            )
    elif (
        isinstance(node, ast.Return)
        and node.value is not None
        and not (isinstance(node.value, ast.Constant) and node.value.value is None)
    ):
        out.append(("returned value -> None", lambda n: setattr(n, "value", None)))
    return out


def mutation_points(source: str) -> list[tuple[int, int, int, str]]:
    """(node index in ast.walk order, variant index, description) of every mutant."""
    tree = ast.parse(source)
    skip = _skipped_nodes(tree)
    points = []
    for index, node in enumerate(ast.walk(tree)):
        if id(node) in skip:
            continue
        for variant, (description, _apply) in enumerate(_variants(node)):
            line = getattr(node, "lineno", 0)
            points.append((index, variant, line, description))
    return points


def mutate(source: str, index: int, variant: int) -> str:
    tree = ast.parse(source)
    nodes = list(ast.walk(tree))
    target = nodes[index]
    _description, apply = _variants(target)[variant]
    replacement = apply(target)
    if replacement is not None:
        _replace(tree, target, replacement)
    return ast.unparse(ast.fix_missing_locations(tree)) + "\n"


def _replace(tree: ast.AST, old: ast.AST, new: ast.AST) -> None:
    for parent in ast.walk(tree):
        for field, value in ast.iter_fields(parent):
            if value is old:
                setattr(parent, field, new)
                return
            if isinstance(value, list):
                for i, item in enumerate(value):
                    if item is old:
                        value[i] = new
                        return
    raise RuntimeError("node to replace not found")


def make_copy(workdir: Path) -> Path:
    """The checkout's files (tracked and untracked, not ignored) under workdir/tree."""
    tree = workdir / "tree"
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for raw in listed:
        if not raw:
            continue
        relative = raw.decode()
        source = ROOT / relative
        if not source.is_file():
            continue
        destination = tree / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, destination)
    return tree


# Each test process (and what it starts) may hold this much heap: a mutant that loops while
# allocating (a sweep whose bound no longer stops it) fails with MemoryError instead of taking
# the shared machine's memory.
MEMORY_LIMIT = 6 * 2**30


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_DATA, (MEMORY_LIMIT, MEMORY_LIMIT))


def run_tests(
    tree: Path, stages: list[list[str]], limits: list[float] | None
) -> tuple[str, list[float], str]:
    """killed, survived or timeout, the seconds each stage that ran took, and the failing
    run's output. ``limits``: each stage's time limit (none for the baseline)."""
    env = {
        **os.environ,
        # The copy's packages and plugins shadow the checkout's editable installs.
        "PYTHONPATH": os.pathsep.join([str(tree / "src"), str(tree / "workloads" / "src")]),
        "MLCLUSTER_ROOT": str(tree),
        "ANSIBLE_CONFIG": str(tree / "ansible.cfg"),
        # A mutant written in the same second as the last, with the same size, must not be
        # replaced by the last one's cached bytecode.
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    durations: list[float] = []
    for number, stage in enumerate(stages):
        command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-x", "-q"]
        command += ["--no-header", "-o", "addopts=", *stage]
        started = time.monotonic()
        # A session of its own, so that a timeout also stops the ranks the tests started.
        proc = subprocess.Popen(
            command,
            cwd=tree,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            preexec_fn=_limit_memory,
        )
        try:
            stdout, stderr = proc.communicate(timeout=limits[number] if limits else None)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            durations.append(time.monotonic() - started)
            return "timeout", durations, ""
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
        durations.append(time.monotonic() - started)
        if proc.returncode == 1:
            return "killed", durations, stdout[-3000:]
        if proc.returncode != 0:
            # 2-5: interrupted, internal error, usage error, no tests: the run itself is broken.
            raise RuntimeError(
                f"pytest {' '.join(stage)} exited {proc.returncode}:\n"
                f"{stdout[-3000:]}{stderr[-3000:]}"
            )
    return "survived", durations, ""


def run_target(
    name: str, tree: Path, only: set[int] | None, verbose: bool, every: int = 1
) -> list[Mutant]:
    module, stages = TARGETS[name]
    path = tree / module
    original = (ROOT / module).read_text()
    points = mutation_points(original)
    # The baseline: the unmutated module, written the way the mutants are (ast.unparse).
    path.write_text(ast.unparse(ast.parse(original)) + "\n")
    outcome, baseline, output = run_tests(tree, stages, None)
    if outcome != "survived":
        raise RuntimeError(f"{name}: the tests fail without any mutant; fix them first:\n{output}")
    # Each stage gets three times its own baseline: a mutant that loops in the fast stage is
    # stopped after seconds, not after the slow stage's minutes.
    limits = [seconds * 3 + 10 for seconds in baseline]
    print(
        f"== {name}: {module}, {len(points)} mutants, tests "
        + " + ".join(f"{seconds:.1f}" for seconds in baseline)
        + " s",
        flush=True,
    )
    mutants = []
    try:
        for number, (index, variant, line, description) in enumerate(points, 1):
            if (only and number not in only) or (number - 1) % every:
                continue
            mutant = Mutant(number, line, description)
            mutant.source = original.splitlines()[line - 1].strip() if line else ""
            path.write_text(mutate(original, index, variant))
            mutant.outcome, durations, _output = run_tests(tree, stages, limits)
            if mutant.outcome == "timeout":
                # On a shared machine a load spike can slow the tests past the limit: only a
                # mutant that runs over it again, with five times the room, counts as looping.
                longer = [limit * 5 for limit in limits]
                mutant.outcome, durations, _output = run_tests(tree, stages, longer)
            mutant.seconds = sum(durations)
            mutants.append(mutant)
            if verbose or mutant.outcome == "survived":
                print(
                    f"  #{number} {mutant.outcome}: line {line} {description}: {mutant.source}",
                    flush=True,
                )
    finally:
        path.write_text(original)
    return mutants


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="*", help=f"default: all of {', '.join(TARGETS)}")
    parser.add_argument("--list", action="store_true", help="list targets and mutant counts")
    parser.add_argument("--only", help="comma-separated mutant numbers (one target)")
    parser.add_argument("--report", type=Path, help="write the results as JSON")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every mutant")
    parser.add_argument("--strings", action="store_true", help="also mutate short string constants")
    parser.add_argument(
        "--every",
        type=int,
        default=1,
        metavar="N",
        help="a sample: only mutants 1, 1+N, 1+2N, ... (for the slow workloads targets)",
    )
    args = parser.parse_args(argv)
    global STRINGS
    STRINGS = args.strings
    names = args.targets or list(TARGETS)
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        parser.error(f"unknown targets {', '.join(unknown)}; known: {', '.join(TARGETS)}")
    if args.list:
        for name in names:
            module, stages = TARGETS[name]
            count = len(mutation_points((ROOT / module).read_text()))
            print(f"{name:14} {count:4} mutants  {module}")
            for stage in stages:
                print(f"{'':20} pytest {' '.join(stage)}")
        return 0
    only = {int(n) for n in args.only.split(",")} if args.only else None
    # Stopped with SIGTERM: unwind, so the private copy is removed.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(143))
    results: dict[str, list[Mutant]] = {}
    with tempfile.TemporaryDirectory(prefix="mlcluster-mutate-") as workdir:
        tree = make_copy(Path(workdir))
        for name in names:
            results[name] = run_target(name, tree, only, args.verbose, args.every)
    print("\nmodule          killed (timeout)  survived  score")
    failed = False
    for name, mutants in results.items():
        killed = sum(m.outcome in ("killed", "timeout") for m in mutants)
        timeouts = sum(m.outcome == "timeout" for m in mutants)
        survived = len(mutants) - killed
        score = killed / len(mutants) if mutants else 1.0
        failed |= survived > 0
        print(f"{name:14} {killed:7} {f'({timeouts})':>9} {survived:9}  {score:6.1%}")
    if args.report:
        args.report.write_text(
            json.dumps(
                {
                    name: [
                        {
                            "number": m.number,
                            "line": m.line,
                            "mutation": m.description,
                            "source": m.source,
                            "outcome": m.outcome,
                            "seconds": round(m.seconds, 1),
                        }
                        for m in mutants
                    ]
                    for name, mutants in results.items()
                },
                indent=2,
            )
            + "\n"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
