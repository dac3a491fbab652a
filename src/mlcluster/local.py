"""The local cluster: rootful podman containers with systemd as PID 1.

One controller, N compute nodes and an optional login node on a private network with fixed
addresses and names, a shared volume at /fsx (like FSx for Lustre on HyperPod or
ParallelCluster) and SSH keys generated per cluster. ``up`` writes an inventory with the same
groups the real inventories use; ``down`` removes exactly what ``up`` created.

SSH host keys are checked like on any other cluster: each node's host key is made here before
the node first boots, copied into it, and recorded in the cluster's known_hosts file, which the
inventory and every SSH command of this module use with ``StrictHostKeyChecking=yes``.
"""

from __future__ import annotations

import ipaddress
import json
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from . import images, podman
from .errors import MlclusterError
from .paths import project_root, state_dir

DEFAULT_NAME = "mlc"
LABEL = "io.mlcluster.cluster"
SSH_WAIT_S = 90


@dataclass
class Node:
    hostname: str
    group: str
    ip: str
    container: str


@dataclass
class ClusterState:
    name: str
    subnet: str
    network: str
    volume: str
    image: str
    nodes: list[Node] = field(default_factory=list)
    # "mlcluster", or "hyperpod": nodes laid out and configured as HyperPod does it.
    platform: str = "mlcluster"

    @classmethod
    def load(cls, path: Path) -> ClusterState:
        data = json.loads(path.read_text())
        data["nodes"] = [Node(**n) for n in data["nodes"]]
        return cls(**data)

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        tmp.replace(path)


def cluster_dir(name: str) -> Path:
    return state_dir() / "clusters" / name


def inventory_dir(name: str) -> Path:
    """``inventory/local`` for the default cluster; a private directory for the others."""
    if name == DEFAULT_NAME:
        return project_root() / "inventory" / "local"
    return cluster_dir(name) / "inventory"


def default_subnet(name: str) -> str:
    if name == DEFAULT_NAME:
        return "10.213.0.0/24"
    return f"10.213.{zlib.crc32(name.encode()) % 200 + 20}.0/24"


PLATFORMS = ("mlcluster", "hyperpod")


def plan_nodes(
    name: str, subnet: str, computes: int, login: bool, platform: str = "mlcluster"
) -> list[Node]:
    net = ipaddress.ip_network(subnet)
    if net.num_addresses < 256:
        raise MlclusterError(f"subnet {subnet} is too small: use a /24 or larger")
    if not 1 <= computes <= 64:
        raise MlclusterError(f"--computes must be between 1 and 64, not {computes}")
    base = net.network_address
    nodes = [Node("controller", "slurm_controller", str(base + 10), f"{name}-controller")]
    if login:
        nodes.append(Node("login1", "slurm_login", str(base + 11), f"{name}-login1"))
    nodes += [
        Node(f"compute{i}", "slurm_compute", str(base + 20 + i), f"{name}-compute{i}")
        for i in range(1, computes + 1)
    ]
    if platform == "hyperpod":
        # HyperPod names each node after its address (ip-10-1-2-3), also in Slurm.
        for node in nodes:
            node.hostname = "ip-" + node.ip.replace(".", "-")
    return nodes


_STALE_IPAM = re.compile(
    r"ip address (?P<ip>\S+) is already allocated to container ID (?P<owner>[0-9a-f]+)"
)


def _start_container(container: str) -> None:
    try:
        podman.run(["start", container])
    except MlclusterError as err:
        raise stale_address_error(err) or err from err


def stale_address_error(err: MlclusterError) -> MlclusterError | None:
    """A clear error when netavark still holds the node's address for a container that is gone."""
    match = _STALE_IPAM.search(str(err))
    if match is None or podman.exists("container", match["owner"]):
        return None
    return MlclusterError(
        f"{err}\nAddress {match['ip']} is still recorded for container {match['owner'][:12]}, "
        "which no longer exists: netavark's address database "
        "(/run/containers/networks/ipam.db) kept a stale entry, as after podman was killed "
        "or /run outlived a reboot. With no other podman container running, remove that file "
        "(or reboot) and run `mlcluster local up` again."
    )


def node_mac(ip: str) -> str:
    """A locally administered unicast MAC made from the node's IPv4 address (unique per network)."""
    return "02:42:" + ":".join(f"{octet:02x}" for octet in ipaddress.IPv4Address(ip).packed)


def _keygen(path: Path, comment: str) -> Path:
    """An ed25519 key pair at ``path`` (and ``path.pub``), made once."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
            check=True,
        )
    return path


def _ssh_key(name: str) -> Path:
    return _keygen(cluster_dir(name) / "id_ed25519", f"mlcluster-{name}")


HOST_KEY = "ssh_host_ed25519_key"


def host_key_path(name: str, hostname: str) -> Path:
    return cluster_dir(name) / "hostkeys" / hostname / HOST_KEY


def known_hosts_path(name: str) -> Path:
    return cluster_dir(name) / "known_hosts"


def known_hosts_text(entries: list[tuple[str, str]]) -> str:
    """known_hosts lines for (address, public key line) pairs; the key's comment is dropped."""
    lines = []
    for address, public in entries:
        fields = public.split()
        if len(fields) < 2 or not fields[0].startswith("ssh-"):
            raise MlclusterError(f"not an SSH public key for {address}: {public.strip()[:60]!r}")
        lines.append(f"{address} {fields[0]} {fields[1]}")
    return "\n".join(lines) + "\n"


def _recorded_host_key(state: ClusterState, node: Node) -> str:
    """The public host key of a running node: the one made for it here, or, for a node started
    before host keys were made here, the one it made itself, read through the container runtime
    (a channel that needs no trust in the network)."""
    path = host_key_path(state.name, node.hostname)
    if path.exists():
        return path.with_suffix(".pub").read_text()
    probe = podman.run(
        ["exec", node.container, "cat", f"/etc/ssh/{HOST_KEY}.pub"], check=False, timeout=30
    )
    if probe.returncode != 0 or not probe.stdout.strip():
        raise MlclusterError(
            f"cannot read the SSH host key of {node.container} (podman exec exit "
            f"{probe.returncode}: {probe.stderr.strip()[-200:]}); `mlcluster local down --name "
            f"{state.name}` and up again gives every node a host key recorded at creation"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".pub").write_text(probe.stdout)
    return probe.stdout


def write_known_hosts(state: ClusterState) -> Path:
    entries = [(node.ip, _recorded_host_key(state, node)) for node in state.nodes]
    path = known_hosts_path(state.name)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(known_hosts_text(entries))
    tmp.replace(path)
    return path


def _start_node(
    state: ClusterState,
    node: Node,
    all_nodes: list[Node],
    privileged: bool,
    pubkey: str,
    extra_args: list[str] = (),
) -> None:
    args = [
        "create",
        "--name",
        node.container,
        "--hostname",
        node.hostname,
        "--network",
        state.network,
        "--ip",
        node.ip,
        # A MAC of its own: left random, the node's udev (MACAddressPolicy=persistent) rewrites it
        # from the machine id, which made every node share one MAC and the bridge flap between them.
        "--mac-address",
        node_mac(node.ip),
        "--volume",
        f"{state.volume}:/fsx",
        "--systemd=always",
        "--cgroupns=private",
        "--label",
        f"{LABEL}={state.name}",
        "--label",
        f"io.mlcluster.group={node.group}",
        "--tmpfs",
        "/tmp:rw,exec,size=2g",
    ]
    if privileged:
        # Needed for Slurm's cgroup plugins (writable controllers) and for sysctls.
        args.append("--privileged")
    for other in all_nodes:
        args += ["--add-host", f"{other.hostname}:{other.ip}"]
    args += extra_args
    args.append(state.image)
    podman.run(args)
    # A machine id of its own before systemd first starts (the image's is empty): systemd would
    # otherwise derive the same one on every node.
    with tempfile.TemporaryDirectory() as tmp:
        machine_id = Path(tmp) / "machine-id"
        machine_id.write_text(uuid.uuid4().hex + "\n")
        machine_id.chmod(0o444)
        podman.run(["cp", str(machine_id), f"{node.container}:/etc/machine-id"])
    # Its SSH host key, made here so that it is known before the node answers on the network
    # (the image has none; sshd's `ssh-keygen -A` adds only the other key types at boot).
    host_key = _keygen(host_key_path(state.name, node.hostname), f"root@{node.hostname}")
    for path in (host_key, host_key.with_suffix(".pub")):
        podman.run(["cp", str(path), f"{node.container}:/etc/ssh/{path.name}"])
    _start_container(node.container)
    podman.run(
        [
            "exec",
            "-i",
            node.container,
            "sh",
            "-c",
            "install -d -m 0700 /root/.ssh && cat > /root/.ssh/authorized_keys && "
            "chmod 0600 /root/.ssh/authorized_keys",
        ],
        input_text=pubkey,
    )


def _port_open(ip: str, port: int = 22) -> bool:
    try:
        with socket.create_connection((ip, port), timeout=1):
            return True
    except OSError:
        return False


def wait_for_ssh(name: str, nodes: list[Node], timeout: float = SSH_WAIT_S) -> None:
    key = _ssh_key(name)
    deadline = time.monotonic() + timeout
    pending = list(nodes)
    refusals: dict[str, str] = {}
    while pending and time.monotonic() < deadline:
        for node in list(pending):
            if not _port_open(node.ip):
                continue
            probe = subprocess.run(
                ["ssh", *ssh_options(key), f"root@{node.ip}", "true"],
                capture_output=True,
                timeout=15,
                check=False,
            )
            if probe.returncode == 0:
                pending.remove(node)
            else:
                refusals[node.hostname] = probe.stderr.decode(errors="replace").strip()
        if pending:
            time.sleep(0.5)
    if pending:
        names = ", ".join(n.hostname for n in pending)
        logs = podman.run(["logs", "--tail", "5", pending[0].container], check=False).stdout
        said = refusals.get(pending[0].hostname)
        raise MlclusterError(
            f"node(s) {names} unreachable over SSH after {timeout:.0f} s"
            + (f"; ssh said: {said}" if said else "")
            + f"; last log lines of {pending[0].container}:\n{logs.strip()}"
        )


def ssh_options(key: Path, known_hosts: Path | None = None) -> list[str]:
    """SSH options for the cluster whose key is ``key``: only the host keys recorded in its
    known_hosts file (beside the key unless given) are accepted."""
    known_hosts = known_hosts or key.with_name("known_hosts")
    return [
        "-i",
        str(key),
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        f"UserKnownHostsFile={known_hosts}",
        "-o",
        "LogLevel=ERROR",
        "-o",
        "ConnectTimeout=5",
        "-o",
        "BatchMode=yes",
    ]


def write_inventory(state: ClusterState) -> Path:
    key = _ssh_key(state.name)
    groups: dict[str, dict] = {
        "slurm_controller": {"hosts": {}},
        "slurm_login": {"hosts": {}},
        "slurm_compute": {"hosts": {}},
    }
    for node in state.nodes:
        groups[node.group]["hosts"][node.hostname] = {"ansible_host": node.ip}
    inventory = {
        "all": {
            "vars": {
                "ansible_user": "root",
                "ansible_ssh_private_key_file": str(key),
                "ansible_ssh_common_args": shlex.join(ssh_options(key)[2:]),
                "mlcluster_local_cluster": state.name,
            },
            "children": {"slurm": {"children": groups}},
        }
    }
    inv_dir = inventory_dir(state.name)
    inv_dir.mkdir(parents=True, exist_ok=True)
    if state.name != DEFAULT_NAME:
        shared = project_root() / "inventory" / "local" / "group_vars"
        link = inv_dir / "group_vars"
        if shared.is_dir() and not link.exists():
            link.symlink_to(shared)
    path = inv_dir / "hosts.yml"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(
        "# Written by `mlcluster local up`; do not edit (it is rewritten on every up).\n"
        + yaml.safe_dump(inventory, sort_keys=False)
    )
    tmp.replace(path)
    return path


def _require_running(name: str, node: Node) -> None:
    """A restarted node that exits at once (its systemd failed to boot) is named with its last
    log lines, before anything waits on it."""
    for _ in range(10):
        time.sleep(0.5)
        if not podman.inspect(node.container)["State"]["Running"]:
            logs = podman.run(["logs", "--tail", "10", node.container], check=False)
            raise MlclusterError(
                f"node {node.hostname} ({node.container}) stopped right after it was started "
                f"again; its last log lines:\n{(logs.stdout + logs.stderr).strip()}\n"
                f"`mlcluster local down --name {name}` and up again makes the cluster anew"
            )


def _remove_orphans(name: str, say) -> None:
    """Remove the containers of an earlier cluster of this name whose state is gone (its state
    directory deleted, or left by a run that was killed before a reboot): nothing here holds their
    SSH keys, so they cannot be reached, and starting them would only fail later. The network and
    the /fsx volume stay (they carry the cluster's label and hold no keys)."""
    orphans = [ctr["Names"][0] for ctr in podman.containers_with_label(f"{LABEL}={name}")]
    if not orphans:
        return
    say(
        f"cluster {name}: no state recorded here; removing its containers left from an earlier "
        f"run: {', '.join(sorted(orphans))}"
    )
    for ctr_name in orphans:
        podman.run(["rm", "-f", "-t", "5", ctr_name])


def up(
    name: str = DEFAULT_NAME,
    computes: int = 2,
    login: bool = False,
    subnet: str | None = None,
    base_image: str | None = None,
    privileged: bool = True,
    say=print,
    platform: str = "mlcluster",
) -> ClusterState:
    podman.valid_name(name)
    if platform not in PLATFORMS:
        raise MlclusterError(f"--platform must be one of {', '.join(PLATFORMS)}, not {platform}")
    podman.require_podman()
    podman.ensure_host_setup(say)
    state_file = cluster_dir(name) / "state.json"
    previous = ClusterState.load(state_file) if state_file.exists() else None
    if previous and previous.platform != platform:
        raise MlclusterError(
            f"cluster {name} runs as platform {previous.platform}; `mlcluster local down "
            f"--name {name}` first to bring it up as {platform}"
        )
    if platform == "hyperpod" and login:
        raise MlclusterError("--platform hyperpod simulates a controller and workers; no --login")
    if previous and platform == "hyperpod":
        raise MlclusterError(
            f"cluster {name} is a simulated HyperPod cluster, made whole by its lifecycle: "
            f"`mlcluster local down --name {name}` and up again to change it"
        )
    if previous and subnet and subnet != previous.subnet:
        raise MlclusterError(
            f"cluster {name} already runs on {previous.subnet}; `mlcluster local down` first "
            f"to move it to {subnet}"
        )
    subnet = previous.subnet if previous else (subnet or default_subnet(name))
    if previous:
        # Growing or restarting a running cluster keeps its nodes and login choice.
        login = login or any(n.group == "slurm_login" for n in previous.nodes)
        computes = max(computes, sum(n.group == "slurm_compute" for n in previous.nodes))
    nodes = plan_nodes(name, subnet, computes, login, platform)
    image = images.ensure_node_image(base_image=base_image, say=say)
    extra_args = []
    if platform == "hyperpod":
        from . import local_hyperpod

        extra_args = local_hyperpod.ansible_mounts()
    state = ClusterState(
        name=name,
        subnet=subnet,
        network=f"{name}-net",
        volume=f"{name}-fsx",
        image=image,
        nodes=nodes,
        platform=platform,
    )
    cluster_dir(name).mkdir(parents=True, exist_ok=True)
    # Record what is about to exist before creating it, so `down` can always clean up.
    state.save(state_file)
    for kind, obj in (("network", state.network), ("volume", state.volume)):
        if podman.exists(kind, obj) and obj not in podman.names_with_label(kind, f"{LABEL}={name}"):
            raise MlclusterError(
                f"a podman {kind} named {obj} exists but is not cluster {name}'s (it has no label "
                f"{LABEL}={name}); remove or rename it, or use another --name"
            )
    with podman.network_lock():
        if not podman.exists("network", state.network):
            podman.run(
                [
                    "network",
                    "create",
                    "--subnet",
                    subnet,
                    "--label",
                    f"{LABEL}={name}",
                    state.network,
                ]
            )
            podman.name_bridge(state.network, f"mlc{zlib.crc32(name.encode()):08x}")
    if not podman.exists("volume", state.volume):
        podman.run(["volume", "create", "--label", f"{LABEL}={name}", state.volume])
    if previous is None:
        _remove_orphans(name, say)
    pubkey = _ssh_key(name).with_suffix(".pub").read_text()
    started = []
    for node in nodes:
        if podman.exists("container", node.container):
            running = podman.inspect(node.container)["State"]["Running"]
            if not running:
                _start_container(node.container)
                _require_running(name, node)
            continue
        _start_node(state, node, nodes, privileged, pubkey, extra_args)
        started.append(node.hostname)
    write_known_hosts(state)
    wait_for_ssh(name, nodes)
    inv = write_inventory(state)
    if started:
        # New containers may have other addresses and hardware than the cached facts say.
        from .runner import fact_cache_dir

        for source in (inv.parent, inv):  # the inventory named by its directory or its file
            shutil.rmtree(fact_cache_dir(source), ignore_errors=True)
    if platform == "hyperpod":
        local_hyperpod.prepare(state, say)
        local_hyperpod.run_lifecycle(state, say)
    say(
        f"cluster {name}: {len(nodes)} nodes up ({', '.join(started) or 'none new'} started); "
        f"inventory {inv}"
    )
    return state


def down(name: str = DEFAULT_NAME, say=print) -> list[str]:
    podman.valid_name(name)
    podman.require_podman()
    removed = []
    for ctr in podman.containers_with_label(f"{LABEL}={name}"):
        ctr_name = ctr["Names"][0]
        podman.run(["rm", "-f", "-t", "5", ctr_name])
        removed.append(f"container {ctr_name}")
    # What carries the cluster's label, and without -f: a network or volume still in use (by a
    # container that is not this cluster's) stays, and podman says why.
    for kind in ("network", "volume"):
        with podman.network_lock():
            for obj in podman.names_with_label(kind, f"{LABEL}={name}"):
                podman.run([kind, "rm", obj])
                removed.append(f"{kind} {obj}")
    inv = inventory_dir(name) / "hosts.yml"
    if inv.exists():
        inv.unlink()
        removed.append(f"inventory {inv}")
    if cluster_dir(name).exists():
        shutil.rmtree(cluster_dir(name))
        removed.append(f"keys and state {cluster_dir(name)}")
    say(f"cluster {name}: removed " + (", ".join(removed) if removed else "nothing (not up)"))
    return removed


# What runc/crun print when `podman exec` cannot put the new process into the container's
# cgroup: seen on cgroup v1 hosts once a node's own systemd has rearranged its cgroups ("error
# adding pid N to cgroups: ... libpod-<id>/cgroup.procs: no such file or directory").
EXEC_CGROUP_FAULT = re.compile(r"cgroup\.procs|error adding pid \d+ to cgroups")


def node_exec(
    name: str,
    container: str,
    argv: list[str],
    *,
    env: dict[str, str] | None = None,
    input_text: str | None = None,
    check: bool = True,
    timeout: float = 600,
) -> subprocess.CompletedProcess:
    """Run ``argv`` as root on a node of cluster ``name``: through ``podman exec``, else, where
    exec fails to join the container's cgroup (EXEC_CGROUP_FAULT), over the node's own SSH
    with the cluster's key (its sshd runs inside the container and still answers)."""
    args = ["exec", "-i"] if input_text is not None else ["exec"]
    for key, value in (env or {}).items():
        args += ["-e", f"{key}={value}"]
    proc = podman.run(
        [*args, container, *argv], check=False, input_text=input_text, timeout=timeout
    )
    if proc.returncode != 0 and EXEC_CGROUP_FAULT.search(proc.stderr or ""):
        state_file = cluster_dir(name) / "state.json"
        nodes = ClusterState.load(state_file).nodes if state_file.exists() else []
        ip = next((n.ip for n in nodes if n.container == container), None)
        key = cluster_dir(name) / "id_ed25519"
        if ip and key.exists():
            assignments = [f"{k}={shlex.quote(v)}" for k, v in (env or {}).items()]
            command = " ".join([*assignments, shlex.join(argv)])
            try:
                proc = subprocess.run(
                    ["ssh", *ssh_options(key), f"root@{ip}", command],
                    input=input_text,
                    capture_output=True,
                    text=True,
                    timeout=timeout,
                    check=False,
                )
            except subprocess.TimeoutExpired as exc:
                raise MlclusterError(
                    f"{container}: `{command}` did not finish in {timeout:.0f} s"
                ) from exc
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout or "").strip().splitlines()
        raise MlclusterError(
            f"{container}: `{shlex.join(argv)[:80]}` failed (exit {proc.returncode}): "
            + (detail[-1] if detail else "no output")
        )
    return proc


def _systemd_state(name: str, container: str) -> str:
    """``systemctl is-system-running`` on a node (node_exec: over SSH where exec fails)."""
    probe = node_exec(name, container, ["systemctl", "is-system-running"], check=False, timeout=30)
    return probe.stdout.strip() or "unknown"


def status(name: str = DEFAULT_NAME) -> list[dict]:
    podman.valid_name(name)
    podman.require_podman()
    rows = []
    for ctr in sorted(podman.containers_with_label(f"{LABEL}={name}"), key=lambda c: c["Names"][0]):
        ctr_name = ctr["Names"][0]
        info = podman.inspect(ctr_name)
        running = info["State"]["Running"]
        nets = info["NetworkSettings"].get("Networks") or {}
        ip = next((n.get("IPAddress") for n in nets.values()), "")
        systemd = _systemd_state(name, ctr_name) if running else "-"
        rows.append(
            {
                "container": ctr_name,
                "hostname": info["Config"]["Hostname"],
                "group": info["Config"]["Labels"].get("io.mlcluster.group", ""),
                "state": info["State"]["Status"],
                "ip": ip,
                "systemd": systemd,
            }
        )
    return rows


BUNDLES_DIR = "containers"


def make_bundle(
    name: str = DEFAULT_NAME,
    image: str | None = None,
    bundle: str = "node",
    user: str = "mluser",
    say=print,
) -> str:
    """Unpack ``image`` (default: the cluster's node image) as an OCI bundle for ``user`` on the
    cluster's shared volume; return its path on the nodes (``/fsx/containers/BUNDLE``).
    Unchanged image: nothing is done."""
    from . import bundle as oci

    podman.valid_name(name)
    podman.valid_name(bundle)
    podman.require_podman()
    state_file = cluster_dir(name) / "state.json"
    if not state_file.exists():
        raise MlclusterError(f"cluster {name} is not up (`mlcluster local up --name {name}`)")
    state = ClusterState.load(state_file)
    image = image or state.image
    if not podman.exists("image", image):
        raise MlclusterError(f"image {image} is not in podman's store")
    image_id = podman.inspect(image)["Id"]
    inspect = podman.run(["volume", "inspect", state.volume, "--format", "{{.Mountpoint}}"])
    mount = Path(inspect.stdout.strip())
    target = mount / BUNDLES_DIR / bundle
    on_nodes = f"/fsx/{BUNDLES_DIR}/{bundle}"
    stamp = target / ".mlcluster-image"
    if stamp.exists() and stamp.read_text().strip() == f"{image_id} {user}":
        say(f"bundle {on_nodes}: up to date ({image})")
        return on_nodes
    say(f"bundle {on_nodes}: unpacking {image}")
    (mount / BUNDLES_DIR).mkdir(mode=0o755, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{bundle}-", dir=mount / BUNDLES_DIR))
    try:
        rootfs = work / "rootfs"
        rootfs.mkdir()
        ctr = podman.run(["create", "--label", f"{LABEL}={name}", image, "/bin/true"]).stdout
        ctr = ctr.strip()
        try:
            export = subprocess.Popen(["podman", "export", ctr], stdout=subprocess.PIPE)
            untar = subprocess.run(
                ["tar", "-x", "--numeric-owner", "-C", str(rootfs), "--exclude=./dev/*"],
                stdin=export.stdout,
                capture_output=True,
                text=True,
                check=False,
            )
            export.stdout.close()
            if export.wait() != 0 or untar.returncode != 0:
                raise MlclusterError(f"unpacking {image} failed: {untar.stderr.strip()}")
        finally:
            podman.run(["rm", "-f", ctr], check=False)
        uid, gid = oci.passwd_ids((rootfs / "etc" / "passwd").read_text(), user)
        spec = oci.runtime_spec(uid, gid)
        # The root filesystem is read-only in the container: mount points must exist in it.
        for mount in spec["mounts"]:
            point = rootfs / mount["destination"].lstrip("/")
            if mount["type"] == "none" and Path(mount["source"]).is_file():
                point.parent.mkdir(parents=True, exist_ok=True)
                point.touch(exist_ok=True)
            else:
                point.mkdir(parents=True, exist_ok=True)
        (work / "config.json").write_text(oci.render(spec))
        (work / ".mlcluster-image").write_text(f"{image_id} {user}\n")
        work.chmod(0o755)
        if target.exists():
            old = target.with_name(f".{bundle}-old-{uuid.uuid4().hex[:8]}")
            target.rename(old)
            shutil.rmtree(old)
        work.rename(target)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    say(f"bundle {on_nodes}: ready (rootless, for {user} uid {uid})")
    return on_nodes
