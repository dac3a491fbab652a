"""OCI bundles for Slurm's own container support (``srun --container=PATH``).

A bundle is a directory holding ``rootfs/`` and ``config.json`` (the OCI runtime spec). Slurm
runs every container rootless, as the job's user, with the runtime that ``oci.conf`` names
(the slurm role writes one for runc), and does not copy the bundle: it must be on every node,
so it goes on the shared filesystem. ``mlcluster local bundle`` unpacks a podman image there
for the local cluster; on a real cluster any tool that writes a bundle does (``umoci unpack``,
``skopeo copy`` + ``umoci``, or ``runc spec --rootless`` over an unpacked root filesystem).

The spec made here:
- a user namespace that maps the container's root to the job user (rootless runc can map only
  its own ids, and needs the container's uid 0 mapped), so the job runs as root inside and
  files it writes on ``/fsx`` belong to the user outside;
- no network or UTS namespace: jobs talk to the other nodes over the host network, as Slurm
  requires, under the node's own hostname;
- the shared filesystem bound at the same path, ``/dev/shm`` as a tmpfs large enough for
  collective libraries, and the node's ``/etc/hosts`` and ``resolv.conf`` so node names resolve.
"""

from __future__ import annotations

import json
from typing import Any

OCI_VERSION = "1.0.2"


def runtime_spec(
    uid: int,
    gid: int,
    shared_mounts: tuple[str, ...] = ("/fsx",),
    shm_size: str = "1g",
) -> dict[str, Any]:
    """The config.json of a rootless bundle for the user ``uid``:``gid``."""
    if uid < 0 or gid < 0:
        raise ValueError("uid and gid must be >= 0")
    for path in shared_mounts:
        if not path.startswith("/") or path == "/":
            raise ValueError(f"shared mount {path!r} must be an absolute path below /")
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"],
        },
        {
            "destination": "/dev/shm",
            "type": "tmpfs",
            "source": "shm",
            "options": ["nosuid", "noexec", "nodev", "mode=1777", f"size={shm_size}"],
        },
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": []},
        # A user namespace cannot mount a new sysfs; bind the node's, read-only.
        {
            "destination": "/sys",
            "type": "none",
            "source": "/sys",
            "options": ["rbind", "nosuid", "noexec", "nodev", "ro"],
        },
        {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["mode=1777"]},
    ]
    for path in ("/etc/hosts", "/etc/resolv.conf"):
        mounts.append(
            {"destination": path, "type": "none", "source": path, "options": ["bind", "ro"]}
        )
    for path in shared_mounts:
        mounts.append(
            {"destination": path, "type": "none", "source": path, "options": ["rbind", "rw"]}
        )
    spec: dict[str, Any] = {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            # Slurm replaces the arguments and the environment with the job step's.
            "args": ["/bin/sh"],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "cwd": "/",
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": True},
        "mounts": mounts,
        "linux": {
            "uidMappings": [{"containerID": 0, "hostID": uid, "size": 1}],
            "gidMappings": [{"containerID": 0, "hostID": gid, "size": 1}],
            "namespaces": [
                {"type": "pid"},
                {"type": "ipc"},
                {"type": "mount"},
                {"type": "user"},
            ],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys"],
        },
    }
    return spec


def render(spec: dict[str, Any]) -> str:
    return json.dumps(spec, indent=2) + "\n"


def passwd_ids(passwd_text: str, user: str) -> tuple[int, int]:
    """The uid and gid of ``user`` in an /etc/passwd text."""
    for line in passwd_text.splitlines():
        fields = line.split(":")
        if len(fields) >= 4 and fields[0] == user:
            return int(fields[2]), int(fields[3])
    raise ValueError(f"no user {user!r} in the image's /etc/passwd")
