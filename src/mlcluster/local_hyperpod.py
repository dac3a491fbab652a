"""A simulated SageMaker HyperPod cluster on the local cluster (`local up --platform hyperpod`).

The nodes are laid out as HyperPod lays them out (docs/slurm.md, "Simulated HyperPod cluster"):
Slurm "pre-installed" under /opt/slurm (the node image's Debian Slurm 22.05 behind
/opt/slurm/bin and /opt/slurm/sbin), its units in /etc/systemd/system, one MUNGE key on every
node, /opt/ml/config/resource_config.json with the platform's field names, the lifecycle
folder (scripts, provisioning_parameters.json and the project copy, as `mlcluster hyperpod
lifecycle` uploads it) where the node downloaded it, and on the controller the slurm.conf the
platform's agent writes. Then, as HyperPod does, the OnCreate script runs on every node,
controller first, and nothing else configures the nodes.

Differences from a real node, each forced by the local cluster: Ansible comes from the host's
venv (mounted read-only; the nodes cannot reach PyPI), the lifecycle runs with
ANSIBLE_SKIP_TAGS=workloads (the test cases need PyPI or the host's wheelhouse) and the
delivered group_vars turn chrony off (the containers share the host's clock).
"""

from __future__ import annotations

import base64
import json
import secrets
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

from . import local, podman
from .errors import MlclusterError

CONTROLLER_GROUP = "controller-machine"
WORKER_GROUP = "worker-group-1"
PARTITION = "dev"
INSTANCE_TYPE = "ml.c5.xlarge"
RESOURCE_CONFIG = "/opt/ml/config/resource_config.json"
# Where the simulated platform puts the lifecycle folder it "downloaded" from SourceS3Uri. The
# script finds everything beside itself, so the place does not matter to it.
LIFECYCLE_DIR = "/opt/ml/lifecycle"
ON_CREATE = f"{LIFECYCLE_DIR}/on_create.sh"
SLURM_PREFIX = "/opt/slurm"
SLURM_CONF = f"{SLURM_PREFIX}/etc/slurm.conf"
LIFECYCLE_LOG = "/var/log/provision/provisioning.log"
# One node's whole site.yml run, on a 2-core host shared with other clusters.
LIFECYCLE_TIMEOUT_S = 1500
LIFECYCLE_ENV = {"ANSIBLE_SKIP_TAGS": "workloads", "ANSIBLE_FORCE_COLOR": "0"}
GROUP_VARS_NOTE = """
# Added by `mlcluster local up --platform hyperpod`, as a user edits group_vars before the
# upload: the local cluster's nodes share the host's clock, there is nothing for chrony to do.
common_chrony_enabled: false
"""

# Run on every node before the lifecycle: what the HyperPod AMI and the platform's agent
# provide. The Debian binaries read /etc/slurm/slurm.conf unless told otherwise; HyperPod's are
# built for /opt/slurm/etc, which the wrappers give them.
PLATFORM_SETUP = r"""
set -eu
install -d -m 0755 /opt/slurm/bin /opt/slurm/sbin /opt/slurm/etc /opt/ml/config
# The daemons are Debian alternatives links, which dpkg -L does not list.
for tool in $(dpkg -L slurm-client | grep -E '^/usr/bin/s[a-z]+$') \
        /usr/sbin/slurmd /usr/sbin/slurmctld; do
    dir=bin; case "$tool" in /usr/sbin/*) dir=sbin ;; esac
    {
        echo '#!/bin/sh'
        echo '# HyperPod-style /opt/slurm (simulated): the image Slurm, built for /etc/slurm.'
        echo ': "${SLURM_CONF:=/opt/slurm/etc/slurm.conf}"'
        echo 'export SLURM_CONF'
        echo "exec $tool \"\$@\""
    } > "/opt/slurm/$dir/$(basename "$tool")"
    chmod 0755 "/opt/slurm/$dir/$(basename "$tool")"
done
echo 'export PATH=/opt/slurm/bin:$PATH' > /etc/profile.d/slurm.sh
for daemon in slurmctld slurmd; do
    cat > /etc/systemd/system/$daemon.service <<EOF
[Unit]
Description=Slurm $daemon (HyperPod AMI, simulated)
After=network-online.target munge.service remote-fs.target
Wants=network-online.target

[Service]
Type=simple
EnvironmentFile=-/etc/sysconfig/$daemon
ExecStart=/opt/slurm/sbin/$daemon -D -s \$$(echo $daemon | tr a-z A-Z)_OPTIONS
ExecReload=/bin/kill -HUP \$MAINPID
KillMode=process
LimitNOFILE=131072
LimitMEMLOCK=infinity
LimitSTACK=infinity
Delegate=yes
TasksMax=infinity

[Install]
WantedBy=multi-user.target
EOF
done
systemctl daemon-reload
install -d -m 0700 -o munge -g munge /etc/munge
base64 -d > /etc/munge/munge.key
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
systemctl enable --now munge >/dev/null 2>&1
ln -sfn "$MLCLUSTER_ANSIBLE" /usr/local/bin/ansible-playbook
"""


def node_name(ip: str) -> str:
    """HyperPod names a node after its address (also its Slurm NodeName)."""
    return "ip-" + ip.replace(".", "-")


def ansible_mounts() -> list[str]:
    """podman --volume arguments that give the nodes the host's Ansible, read-only."""
    venv, base = Path(sys.prefix), Path(sys.base_prefix)
    if not (venv / "bin" / "ansible-playbook").exists():
        raise MlclusterError(
            f"--platform hyperpod runs the nodes' lifecycle with the host's Ansible, and {venv} "
            "has no ansible-playbook: run mlcluster from the project's venv (.venv/bin/mlcluster)"
        )
    mounts = [f"{venv}:{venv}:ro"]
    if base != venv and not str(base).startswith("/usr"):
        mounts.append(f"{base}:{base}:ro")
    return [arg for mount in mounts for arg in ("--volume", mount)]


def resource_config(cluster: str, controller, workers: list) -> dict:
    """resource_config.json as HyperPod's agent writes it (the fields the scripts read)."""

    def instance(group: str, index: int, node) -> dict:
        return {
            "InstanceName": f"{group}-{index}",
            "AgentIpAddress": node.ip,
            "CustomerIpAddress": node.ip,
            "InstanceId": f"i-{secrets.token_hex(8)[:17]}",
        }

    return {
        "ClusterConfig": {
            "ClusterArn": f"arn:aws:sagemaker:us-west-2:000000000000:cluster/{cluster}",
            "ClusterName": cluster,
        },
        "InstanceGroups": [
            {
                "Name": CONTROLLER_GROUP,
                "InstanceType": INSTANCE_TYPE,
                "Instances": [instance(CONTROLLER_GROUP, 1, controller)],
            },
            {
                "Name": WORKER_GROUP,
                "InstanceType": INSTANCE_TYPE,
                "Instances": [instance(WORKER_GROUP, i, n) for i, n in enumerate(workers, 1)],
            },
        ],
    }


def provisioning_parameters() -> dict:
    """The user's provisioning_parameters.json; /fsx is the local cluster's volume, not FSx."""
    return {
        "version": "1.0.0",
        "workload_manager": "slurm",
        "controller_group": CONTROLLER_GROUP,
        "worker_groups": [{"instance_group_name": WORKER_GROUP, "partition_name": PARTITION}],
    }


def platform_slurm_conf(cluster: str, controller, workers: list, hardware: dict) -> str:
    """The controller's slurm.conf as HyperPod's agent writes it: cluster, controller, nodes
    (hardware as `slurmd -C` reports it), one partition per worker group, configless."""
    lines = [
        "# Written by the SageMaker HyperPod cluster agent (simulated by mlcluster local up).",
        f"ClusterName={cluster}",
        f"SlurmctldHost={node_name(controller.ip)}({controller.ip})",
        "SlurmUser=slurm",
        "AuthType=auth/munge",
        "SlurmctldPort=6817",
        "SlurmdPort=6818",
        "SlurmctldParameters=enable_configless",
        "StateSaveLocation=/var/lib/slurm/slurmctld",
        "SlurmdSpoolDir=/var/lib/slurm/slurmd",
        "SlurmctldPidFile=/run/slurmctld.pid",
        "SlurmdPidFile=/run/slurmd.pid",
        "SlurmctldLogFile=/var/log/slurm/slurmctld.log",
        "SlurmdLogFile=/var/log/slurm/slurmd.log",
        "SchedulerType=sched/backfill",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        "ProctrackType=proctrack/cgroup",
        "TaskPlugin=task/cgroup,task/affinity",
        "ReturnToService=2",
        "MpiDefault=none",
        "MailProg=/bin/true",
    ]
    for node in workers:
        lines.append(
            f"NodeName={node_name(node.ip)} NodeHostname={node_name(node.ip)} "
            f"NodeAddr={node.ip} {hardware[node.container]} State=UNKNOWN"
        )
    names = ",".join(node_name(n.ip) for n in workers)
    lines.append(f"PartitionName={PARTITION} Nodes={names} Default=YES MaxTime=INFINITE State=UP")
    return "\n".join(lines) + "\n"


def _hardware(name: str, container: str) -> str:
    """The node's CPUs and memory from `slurmd -C`, as the agent knows them per instance type."""
    out = local.node_exec(name, container, ["slurmd", "-C"]).stdout
    first = out.splitlines()[0].split()
    wanted = ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore")
    params = [p for p in first if p.split("=")[0] in wanted]
    memory = next(int(p.split("=")[1]) for p in first if p.startswith("RealMemory="))
    return " ".join([*params, f"RealMemory={memory * 95 // 100}"])


def _lifecycle_tree(staging: Path, params: dict) -> Path:
    """The lifecycle folder as `mlcluster hyperpod lifecycle` uploads it, in ``staging``."""
    from .platforms import upload_plan

    params_file = staging / "provisioning_parameters.json"
    params_file.write_text(json.dumps(params, indent=2) + "\n")
    tree = staging / "lifecycle"
    for path, key in upload_plan(params_file):
        target = tree / key
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    group_vars = tree / "mlcluster" / "inventory" / "hyperpod" / "group_vars" / "all.yml"
    group_vars.write_text(group_vars.read_text() + GROUP_VARS_NOTE)
    return tree


def _exec(
    name: str, container: str, script: str, env: dict | None = None, input_text: str | None = None
):
    return local.node_exec(name, container, ["bash", "-c", script], env=env, input_text=input_text)


def prepare(state, say=print) -> None:
    """Lay the nodes out as HyperPod does (Slurm under /opt/slurm, the agent's files)."""
    controller = next(n for n in state.nodes if n.group == "slurm_controller")
    workers = [n for n in state.nodes if n.group == "slurm_compute"]
    munge_key = secrets.token_bytes(128)
    ansible = str(Path(sys.prefix) / "bin" / "ansible-playbook")
    config = json.dumps(resource_config(state.name, controller, workers), indent=2)
    with tempfile.TemporaryDirectory() as tmp:
        tree = _lifecycle_tree(Path(tmp), provisioning_parameters())
        for node in state.nodes:
            _exec(
                state.name,
                node.container,
                PLATFORM_SETUP,
                env={"MLCLUSTER_ANSIBLE": ansible},
                input_text=base64.b64encode(munge_key).decode(),
            )
            _exec(
                state.name,
                node.container,
                f"cat > {RESOURCE_CONFIG}",
                input_text=config,
            )
            _exec(
                state.name, node.container, f"rm -rf {LIFECYCLE_DIR} && install -d {LIFECYCLE_DIR}"
            )
            podman.run(["cp", f"{tree}/.", f"{node.container}:{LIFECYCLE_DIR}"])
    hardware = {n.container: _hardware(state.name, n.container) for n in workers}
    conf = platform_slurm_conf(state.name, controller, workers, hardware)
    _exec(state.name, controller.container, f"cat > {SLURM_CONF}", input_text=conf)
    say(
        f"cluster {state.name}: laid out as HyperPod (Slurm under {SLURM_PREFIX}, "
        f"{RESOURCE_CONFIG}, lifecycle in {LIFECYCLE_DIR}, the agent's {SLURM_CONF})"
    )


def run_lifecycle(state, say=print) -> None:
    """Run OnCreate on every node as HyperPod does: the controller first, then the others."""
    order = sorted(state.nodes, key=lambda n: n.group != "slurm_controller")
    for node in order:
        say(f"{node.container}: {ON_CREATE} (log {LIFECYCLE_LOG})")
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in LIFECYCLE_ENV.items())
        result = local.node_exec(
            state.name,
            node.container,
            ["bash", "-c", f"{env} bash {ON_CREATE}"],
            check=False,
            timeout=LIFECYCLE_TIMEOUT_S,
        )
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-25:])
            raise MlclusterError(
                f"{ON_CREATE} failed on {node.container} (exit {result.returncode}), as "
                f"HyperPod would fail the node; its log is {LIFECYCLE_LOG} there:\n{tail}",
                exit_code=1,
            )
