#!/usr/bin/env python3
"""Configure this node with mlcluster's playbooks: HyperPod's and ParallelCluster's lifecycle step.

Runs on the node itself, as root, with the node's own python3 (standard library only, Python 3.8
and later: the HyperPod and ParallelCluster AMIs' system Python). It learns what the node is
from what the platform wrote on it, writes a local inventory with this node as the target of a
`-c local` run, and runs `ansible-playbook site.yml -c local --limit <this node>` from the
project copy delivered beside it (`mlcluster/`, uploaded by `mlcluster hyperpod lifecycle`).

  hyperpod:         /opt/ml/config/resource_config.json (or $SAGEMAKER_RESOURCE_CONFIG_PATH)
                    gives every node's instance group and address; provisioning_parameters.json
                    says which instance group is the controller, the login nodes, each partition.
  hyperpod-eks:     the same resource config gives this node's instance group; HyperPod joins
                    the node to its EKS cluster, the inventory holds it alone in eks_nodes.
  parallelcluster:  /etc/parallelcluster/cfnconfig gives the node type (HeadNode, ComputeFleet,
                    LoginNode) and the head node's name and address; --queue the compute queue.

Every step is logged to /var/log/provision/provisioning.log. Any error ends the run with one
clear message and exit status 1 (2 for a wrong command line), which the platform reports as a
failed node. Running it again is safe: the inventory is rewritten whole, the Ansible run is
idempotent and a second concurrent run waits for the first.

MLCLUSTER_LIFECYCLE_ROOT (tests and simulations) prefixes every absolute path it reads or writes;
MLCLUSTER_NODE_IP and MLCLUSTER_NODE_NAME stand in for the node's own addresses and hostname.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESOURCE_CONFIG = "/opt/ml/config/resource_config.json"
CFNCONFIG = "/etc/parallelcluster/cfnconfig"
LOG_FILE = "/var/log/provision/provisioning.log"
STATE_DIR = "/opt/mlcluster"
# Ansible 12 (ansible-core 2.19) runs its controller on Python 3.11 or later.
PYTHONS = ("python3.13", "python3.12", "python3.11")

log = logging.getLogger("mlcluster-lifecycle")


class LifecycleError(Exception):
    """A problem the person who set up the cluster can act on."""


def host_path(path: str) -> Path:
    """An absolute node path, under MLCLUSTER_LIFECYCLE_ROOT when that is set."""
    return Path(os.environ.get("MLCLUSTER_LIFECYCLE_ROOT", "/")) / path.lstrip("/")


# --- what the platform and the user wrote ------------------------------------------------------


def load_json(path: Path, what: str) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LifecycleError(f"{what} {path} does not exist") from None
    except OSError as e:
        raise LifecycleError(f"{what} {path} cannot be read: {e.strerror}") from None
    try:
        data = json.loads(text)
    except ValueError as e:
        raise LifecycleError(f"{what} {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise LifecycleError(f"{what} {path} must hold a JSON object, not {type(data).__name__}")
    return data


def read_resource_config(path: Path) -> list:
    """[{name, instance_type, instances: [ip, ...]}] from HyperPod's resource_config.json."""
    data = load_json(path, "resource config")
    groups = data.get("InstanceGroups")
    if not isinstance(groups, list) or not groups:
        raise LifecycleError(f"resource config {path} has no InstanceGroups list")
    out = []
    for i, group in enumerate(groups):
        where = f"resource config {path}: InstanceGroups[{i}]"
        if not isinstance(group, dict) or not isinstance(group.get("Name"), str):
            raise LifecycleError(f"{where} has no Name")
        instances = group.get("Instances")
        if not isinstance(instances, list):
            raise LifecycleError(f"{where} ({group['Name']}) has no Instances list")
        ips = []
        for j, instance in enumerate(instances):
            ip = instance.get("CustomerIpAddress") if isinstance(instance, dict) else None
            if not isinstance(ip, str) or not ip:
                raise LifecycleError(f"{where}.Instances[{j}] has no CustomerIpAddress")
            ips.append(ip)
        out.append(
            {"name": group["Name"], "instance_type": group.get("InstanceType", ""), "ips": ips}
        )
    return out


def read_provisioning_parameters(path: Path) -> dict:
    """{controller, login (or None), workers: {instance group: partition}, fsx (or None)}."""
    data = load_json(path, "provisioning parameters")
    manager = data.get("workload_manager", "slurm")
    if manager != "slurm":
        raise LifecycleError(f"{path}: workload_manager is {manager!r}; mlcluster configures slurm")
    controller = data.get("controller_group")
    if not isinstance(controller, str) or not controller:
        raise LifecycleError(
            f"{path}: controller_group (the head node's instance group) is missing"
        )
    login = data.get("login_group") or None
    if login is not None and not isinstance(login, str):
        raise LifecycleError(f"{path}: login_group must be an instance group name")
    workers = data.get("worker_groups")
    if not isinstance(workers, list) or not workers:
        raise LifecycleError(f"{path}: worker_groups must list the compute instance groups")
    partitions = {}
    for i, worker in enumerate(workers):
        group = worker.get("instance_group_name") if isinstance(worker, dict) else None
        partition = worker.get("partition_name") if isinstance(worker, dict) else None
        if (
            not isinstance(group, str)
            or not isinstance(partition, str)
            or not group
            or not partition
        ):
            raise LifecycleError(
                f"{path}: worker_groups[{i}] needs instance_group_name and partition_name"
            )
        partitions[group] = partition
    fsx = None
    if data.get("fsx_dns_name"):
        if not data.get("fsx_mountname"):
            raise LifecycleError(f"{path}: fsx_dns_name is set but fsx_mountname is not")
        fsx = {"dns_name": data["fsx_dns_name"], "mount_name": data["fsx_mountname"]}
    return {"controller": controller, "login": login, "workers": partitions, "fsx": fsx}


def read_cfnconfig(path: Path) -> dict:
    """ParallelCluster's /etc/parallelcluster/cfnconfig: shell `key=value` lines."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LifecycleError(f"{path} does not exist: is this a ParallelCluster node?") from None
    values = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            words = shlex.split(value) if value else [""]
            values[key] = words[0] if words else ""
    for key in ("cfn_node_type", "cfn_head_node", "cfn_head_node_private_ip"):
        if not values.get(key):
            raise LifecycleError(f"{path} has no {key}")
    return values


# --- this node ---------------------------------------------------------------------------------


def own_ips() -> set:
    """The node's IPv4 addresses: `hostname -I`, and the source address of its default route."""
    if os.environ.get("MLCLUSTER_NODE_IP"):
        return {ip.strip() for ip in os.environ["MLCLUSTER_NODE_IP"].split(",") if ip.strip()}
    ips = set()
    with contextlib.suppress(OSError):
        ips.update(
            subprocess.run(["hostname", "-I"], capture_output=True, text=True).stdout.split()
        )
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))  # no packet is sent; this picks the route's source
            ips.add(s.getsockname()[0])
    except OSError:
        pass
    return ips


def own_name() -> str:
    return os.environ.get("MLCLUSTER_NODE_NAME") or socket.gethostname().split(".")[0]


def ip_hostname(ip: str) -> str:
    """HyperPod nodes are named ip-10-1-2-3 (their Slurm NodeName too)."""
    return "ip-" + ip.replace(".", "-")


def group_name(prefix: str, name: str) -> str:
    return prefix + re.sub(r"[^A-Za-z0-9_]", "_", name)


# --- the inventory -----------------------------------------------------------------------------


def inventory(nodes: list, self_name: str, all_vars: dict) -> dict:
    """An Ansible YAML inventory of ``nodes`` [{name, ip, role, group, vars}].

    Compute nodes go into their group under slurm_compute; ``self_name`` is the local target.
    """
    controller, login, compute = {}, {}, {}
    for node in nodes:
        host = {"ansible_host": node["ip"], **node["vars"]}
        if node["name"] == self_name:
            host["ansible_connection"] = "local"
        if node["role"] == "controller":
            controller[node["name"]] = host
        elif node["role"] == "login":
            login[node["name"]] = host
        else:
            compute.setdefault(node["group"], {"hosts": {}})["hosts"][node["name"]] = host
    return {
        "all": {
            "vars": all_vars,
            "children": {
                "slurm": {
                    "children": {
                        "slurm_controller": {"hosts": controller},
                        "slurm_login": {"hosts": login},
                        "slurm_compute": {"children": compute},
                    }
                }
            },
        }
    }


def hyperpod_plan(resource_config: list, params: dict, ips: set) -> tuple:
    """(inventory, this node's name, its role) for a HyperPod node."""
    known = {params["controller"]: "controller", **{g: "compute" for g in params["workers"]}}
    if params["login"]:
        known[params["login"]] = "login"
    nodes, self_name, self_role = [], None, None
    for group in resource_config:
        role = known.get(group["name"])
        mine = ips.intersection(group["ips"])
        if role is None:
            if mine:
                raise LifecycleError(
                    f"this node ({', '.join(sorted(mine))}) is in instance group {group['name']!r},"
                    " which provisioning_parameters.json does not name (controller_group "
                    f"{params['controller']!r}, login_group {params['login']!r}, worker_groups "
                    f"{sorted(params['workers'])})"
                )
            log.warning(
                "instance group %s is not in provisioning_parameters.json: left out", group["name"]
            )
            continue
        for ip in group["ips"]:
            node = {
                "name": ip_hostname(ip),
                "ip": ip,
                "role": role,
                "group": group_name("hyperpod_", group["name"]),
                "vars": {
                    "hyperpod_instance_group": group["name"],
                    "hyperpod_instance_type": group["instance_type"],
                    "hyperpod_private_ip": ip,
                },
            }
            nodes.append(node)
            if ip in ips:
                self_name = node["name"]
                self_role = role
                if role == "compute":
                    self_role += f" (partition {params['workers'][group['name']]})"
    if self_name is None:
        raise LifecycleError(
            f"none of this node's addresses ({', '.join(sorted(ips)) or 'none found'}) is a"
            " CustomerIpAddress in the resource config"
        )
    missing = sorted(set(known) - {g["name"] for g in resource_config})
    if params["controller"] in missing:
        raise LifecycleError(
            f"the resource config has no controller instance group {params['controller']!r}"
        )
    for group in missing:
        log.warning("instance group %s of provisioning_parameters.json has no nodes", group)
    partitions = [
        {"name": partition, "group": group_name("hyperpod_", group)}
        for group, partition in params["workers"].items()
        if group not in missing
    ]
    if not partitions:
        raise LifecycleError("the resource config has none of the worker_groups' instance groups")
    partitions[0]["default"] = True
    all_vars = {"mlcluster_platform": "hyperpod", "slurm_partitions": partitions}
    if params["fsx"]:
        all_vars["lustre_client_mounts"] = [{**params["fsx"], "path": "/fsx"}]
    return inventory(nodes, self_name, all_vars), self_name, self_role


def hyperpod_eks_plan(resource_config: list, ips: set) -> tuple:
    """(inventory, this node's name, its role) for a node of a HyperPod cluster on EKS.

    HyperPod joins the node to the EKS cluster and labels it itself; the inventory holds this
    node alone, in eks_nodes, with the join left to HyperPod (eks_node_join false)."""
    for group in resource_config:
        for ip in sorted(ips.intersection(group["ips"])):
            host = {
                "ansible_host": ip,
                "ansible_connection": "local",
                "hyperpod_instance_group": group["name"],
                "hyperpod_instance_type": group["instance_type"],
                "hyperpod_private_ip": ip,
            }
            all_vars = {
                "mlcluster_platform": "hyperpod_eks",
                "mlcluster_required_groups": ["eks_nodes"],
                "eks_node_join": False,
            }
            doc = {
                "all": {
                    "vars": all_vars,
                    "children": {"eks_nodes": {"hosts": {ip_hostname(ip): host}}},
                }
            }
            return doc, ip_hostname(ip), f"EKS worker of instance group {group['name']}"
    raise LifecycleError(
        f"none of this node's addresses ({', '.join(sorted(ips)) or 'none found'}) is a"
        " CustomerIpAddress in the resource config"
    )


def slurm_nodes() -> list:
    """[(node name, address, [partitions])] from the platform's own Slurm, [] without one.

    On a ParallelCluster head or login node, ParallelCluster has configured Slurm before
    OnNodeConfigured runs; its node list (static and dynamic nodes alike) is the cluster's.
    """
    scontrol = (
        os.environ.get("MLCLUSTER_SCONTROL")
        or next((p for p in ("/opt/slurm/bin/scontrol",) if os.path.exists(p)), None)
        or shutil.which("scontrol")
    )
    if not scontrol:
        return []
    try:
        result = subprocess.run(
            [scontrol, "show", "nodes", "--oneliner"], capture_output=True, text=True, timeout=120
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        log.warning("cannot list Slurm's nodes with %s: %s", scontrol, e)
        return []
    if result.returncode != 0:
        log.warning("%s show nodes failed: %s", scontrol, result.stderr.strip())
        return []
    nodes = []
    for line in result.stdout.splitlines():
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        partitions = [p for p in fields.get("Partitions", "").split(",") if p]
        if fields.get("NodeName") and partitions:
            nodes.append((fields["NodeName"], fields.get("NodeAddr", ""), partitions))
    return nodes


def parallelcluster_plan(
    cfn: dict, queue: str | None, name: str, ips: set, cluster_nodes: list = ()
) -> tuple:
    """(inventory, this node's name, its role) for a ParallelCluster node.

    A compute node knows itself and the head node. The head and login nodes also list
    ``cluster_nodes`` (slurm_nodes()) as compute nodes, each in the group of its first
    partition (its queue); without them the run requires only the slurm_controller group.
    """
    head_ip = cfn["cfn_head_node_private_ip"]
    head = {
        "name": cfn["cfn_head_node"].split(".")[0],
        "ip": head_ip,
        "role": "controller",
        "group": "",
        "vars": {},
    }
    node_type = cfn["cfn_node_type"]
    all_vars = {"mlcluster_platform": "parallelcluster"}
    computes = [
        {
            "name": node,
            "ip": address or node,
            "role": "compute",
            "group": group_name("pcluster_queue_", partitions[0]),
            "vars": {"pcluster_queue": partitions[0]},
        }
        for node, address, partitions in cluster_nodes
    ]
    if node_type in ("HeadNode", "MasterServer", "LoginNode"):
        queues = sorted({n["vars"]["pcluster_queue"] for n in computes})
        if queues:
            all_vars["slurm_partitions"] = [
                {"name": q, "group": group_name("pcluster_queue_", q)} for q in queues
            ]
            all_vars["slurm_partitions"][0]["default"] = True
        else:
            log.warning("no compute nodes known (no scontrol): slurm_compute is empty")
            all_vars["mlcluster_required_groups"] = ["slurm_controller"]
    if node_type in ("HeadNode", "MasterServer"):
        return inventory([head, *computes], head["name"], all_vars), head["name"], "controller"
    ip = sorted(ips)[0] if ips else "127.0.0.1"
    if node_type == "LoginNode":
        me = {"name": name, "ip": ip, "role": "login", "group": "", "vars": {}}
        return inventory([head, me, *computes], name, all_vars), name, "login"
    if node_type != "ComputeFleet":
        raise LifecycleError(
            f"unknown cfn_node_type {node_type!r} (HeadNode, ComputeFleet, LoginNode)"
        )
    if not queue:
        raise LifecycleError(
            "a compute node needs --queue QUEUE (the queue's OnNodeConfigured Args pass it)"
        )
    me = {
        "name": name,
        "ip": ip,
        "role": "compute",
        "group": group_name("pcluster_queue_", queue),
        "vars": {"pcluster_queue": queue},
    }
    all_vars["slurm_partitions"] = [{"name": queue, "group": me["group"], "default": True}]
    return inventory([head, me], name, all_vars), name, f"compute (queue {queue})"


def write_inventory(doc: dict, platform: str, state: Path, project: Path) -> Path:
    """Write <state>/inventory/hosts.yml beside a link to inventory/<platform>/group_vars."""
    directory = state / "inventory"
    directory.mkdir(parents=True, exist_ok=True)
    group_vars = directory / "group_vars"
    source = project / "inventory" / platform / "group_vars"
    if group_vars.is_symlink() or group_vars.exists():
        if not group_vars.is_symlink() or os.readlink(group_vars) != str(source):
            raise LifecycleError(f"{group_vars} exists and is not a link to {source}")
    elif source.is_dir():
        group_vars.symlink_to(source)
    path = directory / "hosts.yml"
    tmp = path.with_suffix(".yml.tmp")
    # JSON is YAML: the standard library writes it, Ansible's yaml inventory reads it.
    tmp.write_text(
        "# Written by mlcluster_lifecycle.py from what the platform wrote on this node.\n"
        + json.dumps(doc, indent=2, sort_keys=True)
        + "\n",
        encoding="utf-8",
    )
    tmp.replace(path)
    return path


# --- Ansible -----------------------------------------------------------------------------------


def ansible_requirement(project: Path) -> str:
    """The project's own `ansible` requirement, read from its pyproject.toml."""
    try:
        text = (project / "pyproject.toml").read_text(encoding="utf-8")
    except OSError as e:
        raise LifecycleError(f"{project}/pyproject.toml cannot be read: {e.strerror}") from None
    match = re.search(r'^\s*"(ansible\s*[<>=~!][^"]*)"', text, re.MULTILINE)
    if not match:
        raise LifecycleError(f"{project}/pyproject.toml names no ansible requirement")
    return match.group(1)


def bootstrap_commands(project: Path, venv: Path) -> list:
    """Commands that make <venv>/bin/ansible-playbook: a venv of a Python Ansible supports."""
    python = next((shutil.which(p) for p in PYTHONS if shutil.which(p)), None)
    commands = []
    if python is None:
        if not shutil.which("apt-get"):
            raise LifecycleError(
                "Ansible needs Python 3.11 or later and none is installed (looked for "
                f"{', '.join(PYTHONS)}); install one or put ansible-playbook on PATH"
            )
        commands.append(["apt-get", "install", "-y", "python3.11", "python3.11-venv"])
        python = "python3.11"
    commands.append([python, "-m", "venv", str(venv)])
    commands.append([str(venv / "bin" / "pip"), "install", "--quiet", ansible_requirement(project)])
    return commands


def find_ansible_playbook(explicit: str | None, venv: Path) -> str | None:
    if explicit:
        return explicit
    ours = venv / "bin" / "ansible-playbook"
    if ours.exists():
        return str(ours)
    return shutil.which("ansible-playbook")


def run_logged(command: list, env: dict | None = None) -> None:
    """Run ``command``, its output into the log line by line; a non-zero exit is an error."""
    log.info("running: %s", shlex.join(command))
    try:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
    except OSError as e:
        raise LifecycleError(f"cannot run {command[0]}: {e.strerror}") from None
    for line in process.stdout:
        log.info("  %s", line.rstrip())
    if process.wait() != 0:
        raise LifecycleError(f"{shlex.join(command)} failed with exit status {process.returncode}")


# --- the command -------------------------------------------------------------------------------


def parse_args(argv: list) -> argparse.Namespace:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--project", type=Path, help="the mlcluster project copy (default: beside this script)"
    )
    common.add_argument(
        "--ansible-playbook", help="this ansible-playbook (default: PATH, else a venv it makes)"
    )
    common.add_argument(
        "--dry-run", action="store_true", help="write the inventory, print the command, run nothing"
    )
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="platform", required=True)
    hp = sub.add_parser("hyperpod", parents=[common], help="a SageMaker HyperPod node (OnCreate)")
    hp.add_argument(
        "--resource-config",
        type=Path,
        help=f"default $SAGEMAKER_RESOURCE_CONFIG_PATH or {RESOURCE_CONFIG}",
    )
    hp.add_argument(
        "--provisioning-parameters", type=Path, default=HERE / "provisioning_parameters.json"
    )
    eks = sub.add_parser(
        "hyperpod-eks", parents=[common], help="a node of a HyperPod cluster on EKS (OnCreate)"
    )
    eks.add_argument(
        "--resource-config",
        type=Path,
        help=f"default $SAGEMAKER_RESOURCE_CONFIG_PATH or {RESOURCE_CONFIG}",
    )
    pc = sub.add_parser(
        "parallelcluster", parents=[common], help="a ParallelCluster node (OnNodeConfigured)"
    )
    pc.add_argument("--cfnconfig", type=Path, help=f"default {CFNCONFIG}")
    pc.add_argument("--queue", help="the Slurm queue of a compute node")
    args, extra = parser.parse_known_args(argv)
    args.extra = extra  # passed on to ansible-playbook (e.g. --tags, -v)
    return args


def default_project() -> Path:
    delivered = HERE / "mlcluster"
    return delivered if delivered.is_dir() else HERE.parents[1]


def setup_logging() -> Path:
    path = host_path(LOG_FILE)
    path.parent.mkdir(parents=True, exist_ok=True)
    for handler in list(log.handlers):  # main() may run more than once in one process
        log.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter("%(asctime)s mlcluster-lifecycle %(levelname)s %(message)s")
    for handler in (logging.FileHandler(path, encoding="utf-8"), logging.StreamHandler(sys.stdout)):
        handler.setFormatter(formatter)
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    return path


def run(args: argparse.Namespace) -> int:
    project = (args.project or default_project()).absolute()
    if not (project / "site.yml").is_file():
        raise LifecycleError(f"{project} is not an mlcluster project (no site.yml)")
    state = host_path(STATE_DIR)
    state.mkdir(parents=True, exist_ok=True)
    with open(state / "lifecycle.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second run waits for the first
        ips = own_ips()
        if args.platform in ("hyperpod", "hyperpod-eks"):
            # The platform's variable names a real path; only the default is under the root.
            config_path = (
                args.resource_config
                or os.environ.get("SAGEMAKER_RESOURCE_CONFIG_PATH")
                or host_path(RESOURCE_CONFIG)
            )
            groups = read_resource_config(Path(config_path))
            if args.platform == "hyperpod-eks":
                doc, name, role = hyperpod_eks_plan(groups, ips)
            else:
                params = read_provisioning_parameters(args.provisioning_parameters)
                doc, name, role = hyperpod_plan(groups, params, ips)
        else:
            cfn = read_cfnconfig(args.cfnconfig or host_path(CFNCONFIG))
            nodes = slurm_nodes() if cfn["cfn_node_type"] != "ComputeFleet" else []
            doc, name, role = parallelcluster_plan(cfn, args.queue, own_name(), ips, nodes)
        log.info("this node is %s: %s", name, role)
        inventory_path = write_inventory(doc, args.platform, state, project)
        log.info("inventory written to %s", inventory_path)

        venv = state / "venv"
        playbook = find_ansible_playbook(args.ansible_playbook, venv)
        if playbook is None:
            for command in bootstrap_commands(project, venv):
                if args.dry_run:
                    print(shlex.join(command))
                else:
                    run_logged(command)
            playbook = str(venv / "bin" / "ansible-playbook")
        command = [
            playbook, "-i", str(inventory_path), "-c", "local", "--limit", name,
            str(project / "site.yml"), *args.extra,
        ]  # fmt: skip
        env = {**os.environ, "ANSIBLE_CONFIG": str(project / "ansible.cfg")}
        if args.dry_run:
            print(f"ANSIBLE_CONFIG={shlex.quote(env['ANSIBLE_CONFIG'])} {shlex.join(command)}")
            return 0
        run_logged(command, env=env)
        log.info("node %s configured", name)
    return 0


def main(argv: list | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        log_path = setup_logging()
    except OSError as e:
        print(f"mlcluster-lifecycle: cannot write the log {LOG_FILE}: {e}", file=sys.stderr)
        return 1
    try:
        return run(args)
    except LifecycleError as e:
        log.error("%s", e)
        log.error("node not configured; the full log is %s", log_path)
        return 1


if __name__ == "__main__":
    sys.exit(main())
