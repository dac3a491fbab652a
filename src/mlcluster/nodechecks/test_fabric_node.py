"""Does this node's EFA device work with libfabric's efa provider?

A node with an EFA device (an RDMA device bound to the ``efa`` driver under
``/sys/class/infiniband``) must show the ``efa`` provider to ``fi_info``, which is what NCCL's
aws-ofi-nccl plugin and MPI use. A node without one reports "not applicable" with why; the
two-node fabric ping-pong is a cluster check of `mlcluster validate --level full`.
"""

from __future__ import annotations

import pytest

# Each RDMA device's driver, by device name.
_RDMA_DRIVERS = (
    'for dev in /sys/class/infiniband/*; do [ -e "$dev/device/driver" ] || continue; '
    'echo "$(basename "$dev") $(basename "$(readlink -f "$dev/device/driver")")"; done'
)


@pytest.fixture
def efa_devices(host) -> list[str]:
    result = host.run(_RDMA_DRIVERS)
    devices = [line.split()[0] for line in result.stdout.splitlines() if line.endswith(" efa")]
    if not devices:
        pytest.skip("not applicable: no EFA device (no RDMA device bound to the efa driver)")
    return devices


def test_efa_provider(host, efa_devices):
    result = host.run("timeout 60 fi_info -p efa -t FI_EP_RDM")
    assert result.rc == 0, (
        f"{len(efa_devices)} EFA device(s) ({', '.join(efa_devices)}) but fi_info -p efa fails: "
        f"{(result.stderr or result.stdout).strip().splitlines()[-1:] or ['no output']}"
    )
    providers = {
        line.split(":", 1)[1].strip()
        for line in result.stdout.splitlines()
        if line.strip().startswith("provider:")
    }
    assert providers == {"efa"}, f"fi_info -p efa lists providers {sorted(providers)}"
