"""`mlcluster validate`'s levels: the fabric ping-pong's parsing and the CLI's choices."""

from __future__ import annotations

from mlcluster import cli, validate

PINGPONG = """\
provider tcp
provider tcp
bytes   #sent   #ack     total       time     MB/sec    usec/xfer   Mxfers/sec
64k     200     =200     25m         2.34s     11.22    5841.56       0.00
bytes   #sent   #ack     total       time     MB/sec    usec/xfer   Mxfers/sec
64k     200     =200     25m         2.33s     11.24    5830.52       0.00
"""


def test_pingpong_table_of_both_tasks():
    assert validate.parse_pingpong(PINGPONG) == {
        "provider": "tcp",
        "rows": [
            {"bytes": "64k", "mb_per_s": 11.22, "usec_per_xfer": 5841.56},
            {"bytes": "64k", "mb_per_s": 11.24, "usec_per_xfer": 5830.52},
        ],
    }
    assert validate.parse_pingpong("srun: error: compute2: task 1: Exited with exit code 1\n") == {
        "provider": None,
        "rows": [],
    }


def test_levels_offered_by_the_cli_are_the_node_checks_levels():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "node_conftest", validate.NODE_CHECKS / "conftest.py"
    )
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)
    parser = cli.build_parser()
    sub = parser._subparsers._group_actions[0].choices["validate"]
    level = next(a for a in sub._actions if a.dest == "level")
    assert tuple(level.choices) == validate.LEVELS == conftest.LEVELS
    args = parser.parse_args(["validate", "--level", "full", "--drain"])
    assert (args.level, args.drain) == ("full", True)


def test_an_unknown_level_runs_nothing(tmp_path):
    inventory = tmp_path / "hosts.yml"
    inventory.write_text("all: {}\n")
    said = []
    assert validate.run_validate(inventory, level="deep", say=said.append) == validate.EXIT_NOT_RUN
    assert said == ["mlcluster validate: level 'deep' is not one of quick, standard, full"]
