"""Thin wrapper around the podman CLI, and the host set-up rootful podman needs here."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from .errors import MlclusterError

HOST_CONF = Path("/etc/containers/containers.conf.d/50-mlcluster.conf")
# Capability bit of CAP_SYS_RESOURCE in /proc/PID/status.
_CAP_SYS_RESOURCE = 24


def require_podman() -> str:
    path = shutil.which("podman")
    if not path:
        raise MlclusterError(
            "podman is not installed: the local cluster runs its nodes as rootful podman "
            "containers. Install it with `bash scripts/setup.sh` (`apt-get install podman runc`)."
        )
    if os.geteuid() != 0:
        raise MlclusterError(
            "the local cluster needs rootful podman (systemd and Slurm cgroups in the nodes): "
            "run mlcluster as root (e.g. `sudo -E .venv/bin/mlcluster local up`)."
        )
    return path


# On cgroup v1 hybrid hosts, tools that clean up stale cgroups may delete podman's libpod-<id>
# directory under the name=systemd hierarchy while the node keeps running; `podman exec` then
# fails with "openat2 <dir>/cgroup.procs: no such file or directory".
_LOST_CGROUP = re.compile(r"openat2 (/sys/fs/cgroup/[\w./-]+)/cgroup\.procs: no such file")


def heal_lost_cgroup(stderr: str) -> bool:
    """Recreate the container cgroup directory a failed ``podman exec`` names as missing
    (_LOST_CGROUP); whether there was one to recreate."""
    match = _LOST_CGROUP.search(stderr or "")
    if not match:
        return False
    Path(match.group(1)).mkdir(parents=True, exist_ok=True)
    return True


def run(
    args: Sequence[str],
    *,
    check: bool = True,
    input_text: str | None = None,
    capture: bool = True,
    timeout: float | None = 600,
) -> subprocess.CompletedProcess:
    cmd = ["podman", *args]

    def once() -> subprocess.CompletedProcess:
        try:
            return subprocess.run(
                cmd,
                input=input_text,
                text=True,
                capture_output=capture,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise MlclusterError(f"`{' '.join(cmd)}` did not finish in {timeout:.0f} s") from exc

    proc = once()
    # An exec that found its container's cgroup deleted: recreate it and try once more.
    if list(args[:1]) == ["exec"] and proc.returncode != 0 and heal_lost_cgroup(proc.stderr):
        proc = once()
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout or "").strip().splitlines()
        raise MlclusterError(
            f"`{' '.join(cmd[:4])} ...` failed (exit {proc.returncode}): "
            + (detail[-1] if detail else "no output")
        )
    return proc


def exists(kind: str, name: str) -> bool:
    """Whether a podman object (container, network, volume, image) of that name exists."""
    verb = {
        "container": ["container", "exists"],
        "image": ["image", "exists"],
        "volume": ["volume", "exists"],
        "network": ["network", "exists"],
    }[kind]
    return run([*verb, name], check=False).returncode == 0


def inspect(name: str) -> dict:
    return json.loads(run(["inspect", name]).stdout)[0]


def containers_with_label(label: str) -> list[dict]:
    out = run(["ps", "-a", "--filter", f"label={label}", "--format", "json"]).stdout
    return json.loads(out or "[]")


def names_with_label(kind: str, label: str) -> list[str]:
    """Names of the networks or volumes that carry ``label`` (``key=value``)."""
    out = run([kind, "ls", "--filter", f"label={label}", "--format", "{{.Name}}"]).stdout
    return out.split()


def _capabilities() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def _hard_nofile() -> int:
    import resource

    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


def _cgroup_hybrid_or_v1() -> bool:
    return not Path("/sys/fs/cgroup/cgroup.controllers").exists()


def required_host_conf() -> tuple[str, list[str]]:
    """What containers.conf must say on this host, and why (empty when nothing is needed).

    podman asks the runtime for nofile/nproc 1048576 in every container; a host whose root
    lacks CAP_SYS_RESOURCE and has a lower hard limit refuses that. crun refuses cgroup v1
    hybrid hosts; runc handles them.
    """
    reasons: list[str] = []
    containers: list[str] = []
    engine: list[str] = []
    hard = _hard_nofile()
    can_raise = bool(_capabilities() & (1 << _CAP_SYS_RESOURCE))
    if not can_raise and hard < 1048576:
        containers.append(f'default_ulimits = ["nofile={hard}:{hard}", "nproc=32768:32768"]')
        reasons.append(
            f"root cannot raise nofile above {hard} (no CAP_SYS_RESOURCE): containers get "
            f"nofile={hard}"
        )
    info = json.loads(run(["info", "--format", "json"]).stdout)
    runtime = info.get("host", {}).get("ociRuntime", {}).get("name", "")
    if _cgroup_hybrid_or_v1() and runtime != "runc":
        if not shutil.which("runc"):
            raise MlclusterError(
                "this host uses cgroup v1/hybrid, which crun refuses; install runc "
                "(`apt-get install runc`) so the local cluster can use it"
            )
        engine.append('runtime = "runc"')
        reasons.append("cgroup v1/hybrid host: crun refuses it, podman is set to use runc")
    text = ""
    if containers:
        text += "[containers]\n" + "\n".join(containers) + "\n"
    if engine:
        text += "[engine]\n" + "\n".join(engine) + "\n"
    return text, reasons


def ensure_host_setup(say) -> None:
    """Apply the podman settings a restricted host needs; leave friendlier hosts alone."""
    text, reasons = required_host_conf()
    if not text:
        return
    header = "# Written by `mlcluster local up`: settings this host needs for rootful podman.\n"
    wanted = header + "".join(f"# - {r}\n" for r in reasons) + text
    if HOST_CONF.exists() and HOST_CONF.read_text() == wanted:
        return
    HOST_CONF.parent.mkdir(parents=True, exist_ok=True)
    tmp = HOST_CONF.with_suffix(".tmp")
    tmp.write_text(wanted)
    tmp.replace(HOST_CONF)
    for reason in reasons:
        say(f"host set-up: {reason} ({HOST_CONF})")


@contextlib.contextmanager
def network_lock():
    """Serialise network creation and removal between mlcluster processes on this host.

    podman 4.3 (netavark) picks the next free bridge name (podmanN) without a host-wide lock:
    two networks created at once can get the same bridge, and removing either cuts the other
    cluster off (its SSH connections time out).
    """
    path = Path("/run/lock/mlcluster-podman-network.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def name_bridge(network: str, bridge: str) -> None:
    """Give a new netavark network a bridge name of its own (podman 4.3 has no flag for it).

    podman hands out podmanN names again as soon as a network is removed; a late teardown of
    the old network's containers then deletes the bridge the new network is using. A bridge
    named after the cluster is never shared. No-op for CNI or when no config file exists.
    """
    config = Path("/etc/containers/networks") / f"{network}.json"
    if not config.is_file():
        return
    data = json.loads(config.read_text())
    if data.get("network_interface") == bridge:
        return
    data["network_interface"] = bridge
    tmp = config.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=5))
    tmp.replace(config)


def valid_name(name: str) -> str:
    if not re.fullmatch(r"[a-z][a-z0-9-]{0,20}", name):
        raise MlclusterError(
            f"invalid cluster name {name!r}: use 1-21 lowercase letters, digits and dashes, "
            "starting with a letter"
        )
    return name
