"""The ``mlcluster`` command."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from . import __version__, bakeami, platforms
from .errors import MlclusterError

LOCAL_INVENTORY = "inventory/local"


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cmd_deploy(args) -> int:
    from .display import ProgressDisplay, print_summary
    from .inputs import check_report_path
    from .runner import run_playbook

    report = check_report_path(args.report)
    result = run_playbook(
        "site.yml",
        args.inventory,
        limit=args.limit,
        tags=args.tags,
        check=args.check,
        display=ProgressDisplay(),
        flush_cache=args.flush_cache,
    )
    print_summary(result)
    if report:
        result.write_report(report)
    return result.exit_code


def cmd_local(args) -> int:
    from . import local

    if args.local_command == "up":
        local.up(
            name=args.name,
            computes=args.computes,
            login=args.login,
            subnet=args.subnet,
            base_image=args.base_image,
            say=_say,
            platform=args.platform,
        )
    elif args.local_command == "down":
        local.down(name=args.name, say=_say)
    elif args.local_command == "bundle":
        print(
            local.make_bundle(
                name=args.name, image=args.image, bundle=args.bundle, user=args.user, say=_say
            )
        )
    else:
        rows = local.status(name=args.name)
        if args.json:
            print(json.dumps(rows, indent=2))
        elif not rows:
            print(f"cluster {args.name}: not up")
        else:
            table = Table(title=f"local cluster {args.name}", title_justify="left")
            for column in ("hostname", "group", "state", "ip", "systemd", "container"):
                table.add_column(column)
            for row in rows:
                table.add_row(
                    *(row[c] for c in ("hostname", "group", "state", "ip", "systemd", "container"))
                )
            Console().print(table)
    return 0


def _parse_vars(pairs: list[str]) -> dict[str, object]:
    """KEY=VALUE pairs; a VALUE that is JSON (a list, a number) keeps its type."""
    out: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise MlclusterError(f"--var takes KEY=VALUE, not {pair!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def cmd_bake_local(args) -> int:
    from . import images

    if args.flavor or args.os:
        flavor = args.flavor or bakeami.flavors("local")[0]
        os_name = args.os or bakeami.platform_matrix()[flavor]["os"][0]
        bakeami.check_platform(flavor, os_name, "local")
    tag = images.ensure_node_image(base_image=args.base_image, force=args.force, say=_say)
    print(tag)
    return 0


def cmd_bake_ami(args) -> int:
    variables = _parse_vars(args.var)
    if args.validate_only:
        print(bakeami.preflight(args.flavor, args.os, variables))
        return 0
    print(bakeami.build_ami(args.flavor, args.os, variables))
    return 0


def cmd_validate(args) -> int:
    from . import validate
    from .inputs import check_report_path

    return validate.run_validate(
        Path(args.inventory),
        check_report_path(args.report),
        level=args.level,
        drain=args.drain,
    )


def cmd_status(args) -> int:
    from . import status

    return status.run_status(Path(args.inventory), prometheus=args.prometheus, as_json=args.json)


def cmd_run(args) -> int:
    from . import workload_run
    from .inputs import check_report_path

    if args.platform == "eks":
        from . import eks

        return eks.run_from_args(args)
    return workload_run.run_case(
        args.case,
        Path(args.inventory),
        nodes=args.nodes,
        report=check_report_path(args.report),
        extra_args=args.args,
        gpus_per_node=args.gpus_per_node,
        partition=args.partition,
        container=args.container,
        timeout_min=args.timeout,
    )


def runnable_cases() -> list[str] | None:
    """The cases `mlcluster run` offers: the registry's (mlcluster_workloads.cases). None where
    the mlcluster-workloads package is not installed: every other command works without it, and
    `mlcluster run` says how to install it (workload_run)."""
    try:
        from mlcluster_workloads import cases
    except ImportError:
        return None
    return cases.runnable()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlcluster",
        description="Bake images, configure Slurm clusters and prove distributed training works.",
    )
    parser.add_argument("--version", action="version", version=f"mlcluster {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    deploy = sub.add_parser("deploy", help="configure a cluster: run site.yml on an inventory")
    deploy.add_argument(
        "-i",
        "--inventory",
        default=LOCAL_INVENTORY,
        help=f"inventory file or directory (default {LOCAL_INVENTORY})",
    )
    deploy.add_argument("--limit", help="only these hosts/groups (Ansible pattern)")
    deploy.add_argument("--tags", help="only tasks with these tags (comma-separated)")
    deploy.add_argument("--check", action="store_true", help="check mode: change nothing")
    deploy.add_argument(
        "--flush-cache",
        action="store_true",
        help="gather the hosts' facts again (they are kept between runs for an hour)",
    )
    deploy.add_argument("--report", help="write a JSON report to this file")
    deploy.set_defaults(func=cmd_deploy)

    local = sub.add_parser("local", help="the local cluster (podman containers)")
    local_sub = local.add_subparsers(dest="local_command", required=True, metavar="ACTION")
    up = local_sub.add_parser("up", help="start (or grow) the local cluster")
    up.add_argument("--computes", type=int, default=2, help="number of compute nodes (2)")
    up.add_argument("--login", action="store_true", help="add a login node")
    up.add_argument("--subnet", help="private network (default 10.213.0.0/24)")
    up.add_argument(
        "--base-image", help="podman image to bake from (default: debootstrapped Debian 12)"
    )
    up.add_argument(
        "--platform",
        choices=["mlcluster", "hyperpod"],
        default="mlcluster",
        help="hyperpod: nodes laid out as SageMaker HyperPod's (Slurm under /opt/slurm, "
        "resource_config.json), configured by the lifecycle script alone, controller first",
    )
    bundle = local_sub.add_parser(
        "bundle",
        help="unpack an image as an OCI bundle on /fsx for `srun --container` / `run --container`",
    )
    bundle.add_argument("--image", help="podman image (default: the cluster's node image)")
    bundle.add_argument("--bundle", default="node", help="bundle name under /fsx/containers")
    bundle.add_argument("--user", default="mluser", help="the user whose jobs run it (mluser)")
    for action in (
        up,
        local_sub.add_parser("down", help="remove everything `up` created"),
        local_sub.add_parser("status", help="show the nodes"),
        bundle,
    ):
        action.add_argument("--name", default="mlc", help="cluster name (default mlc)")
    local_sub.choices["status"].add_argument("--json", action="store_true")
    local.set_defaults(func=cmd_local)

    bake = sub.add_parser("bake", help="bake a node image with Packer")
    bake_sub = bake.add_subparsers(dest="target", required=True, metavar="{local,ami}")
    # Each target takes only its own flags; flavours and operating systems: versions.yml's
    # platform matrix, those of the target.
    bake_local = bake_sub.add_parser("local", help="the local cluster's podman node image")
    bake_local.add_argument("--flavor", choices=bakeami.flavors("local"))
    bake_local.add_argument("--os", choices=bakeami.operating_systems("local"))
    bake_local.add_argument("--base-image", help="podman image to bake from")
    bake_local.add_argument("--force", action="store_true", help="bake even if up to date")
    bake_local.set_defaults(func=cmd_bake_local)
    bake_ami = bake_sub.add_parser("ami", help="an AMI for AWS (packer/ami)")
    bake_ami.add_argument("--flavor", required=True, choices=bakeami.flavors("ami"))
    bake_ami.add_argument("--os", required=True, choices=bakeami.operating_systems("ami"))
    bake_ami.add_argument(
        "--var",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Packer variable (repeatable)",
    )
    bake_ami.add_argument(
        "--validate-only",
        action="store_true",
        help="check offline, build nothing: platform matrix, version rules, packer validate",
    )
    bake_ami.set_defaults(func=cmd_bake_ami)

    validate = sub.add_parser("validate", help="run the node checks against an inventory")
    validate.add_argument("-i", "--inventory", default=LOCAL_INVENTORY)
    validate.add_argument("--report", help="write a JSON report to this file")
    validate.add_argument(
        "--level",
        choices=["quick", "standard", "full"],
        default="quick",
        help="quick: daemons, devices, libraries; standard: + DCGM diag -r 1; "
        "full: + DCGM diag -r 3 and a two-node fabric ping-pong (fi_pingpong) through Slurm",
    )
    validate.add_argument(
        "--drain",
        action="store_true",
        help="drain compute nodes with a failed check in Slurm, the check as the reason",
    )
    validate.set_defaults(func=cmd_validate)

    status = sub.add_parser("status", help="the cluster at a glance, from its Prometheus")
    status.add_argument("-i", "--inventory", default=LOCAL_INVENTORY)
    status.add_argument(
        "--prometheus",
        metavar="URL",
        help="Prometheus to ask (default: the inventory's slurm_controller host, port "
        "prometheus_port or 9090)",
    )
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    status.set_defaults(func=cmd_status)

    run = sub.add_parser(
        "run", help="run a distributed-training test case through Slurm (or EKS: --platform eks)"
    )
    run.add_argument("case", choices=runnable_cases())
    run.add_argument("-i", "--inventory", default=LOCAL_INVENTORY)
    run.add_argument("--nodes", type=int, default=2)
    run.add_argument(
        "--gpus-per-node",
        type=int,
        help="GPUs (and torch ranks) per node (default: the partition's GPU GRES, 0 on CPU nodes)",
    )
    run.add_argument("--partition", help="Slurm partition (default: the default partition)")
    run.add_argument(
        "--container",
        metavar="IMAGE|BUNDLE",
        help="run in a container: an absolute path is an OCI bundle on the nodes (Slurm's "
        "oci.conf runtime), anything else an image for pyxis/enroot",
    )
    run.add_argument(
        "--timeout",
        type=float,
        default=60,
        metavar="MIN",
        help="cancel the job and exit 1 if it has not ended after MIN minutes, pending and "
        "requeued time included (default 60)",
    )
    run.add_argument("--report", help="write the metrics summary as JSON to this file")
    run.epilog = (
        "Arguments after -- go to the test case (default: a small run sized for the nodes' "
        "CPUs or GPUs; cases that checkpoint write to /fsx/mlcluster/checkpoints/JOB)."
    )
    run.add_argument(
        "--platform",
        choices=["slurm", "eks"],
        default="slurm",
        help="slurm: sbatch over SSH (default); eks: a PyTorchJob through kubectl (docs/eks.md)",
    )
    from . import eks

    eks.add_run_arguments(run)
    run.set_defaults(func=cmd_run)
    platforms.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # Everything after `--` belongs to the test case of `mlcluster run`.
    case_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    args = parser.parse_args(argv)
    args.args = case_args
    try:
        return args.func(args)
    except MlclusterError as exc:
        print(f"mlcluster: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("mlcluster: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
