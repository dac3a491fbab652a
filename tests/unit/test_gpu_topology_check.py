"""The GPU node check's reading of `nvidia-smi topo -m` (src/mlcluster/nodechecks).

The one-GPU text is what an H200 machine's driver 580.159.04 printed (its header underlined with
terminal escapes even into a pipe): the check read 0 GPUs there before the escapes were removed.
"""

from __future__ import annotations

from mlcluster.nodechecks.test_gpu_node import topology_gpus

ONE_GPU = (
    "\t\x1b[4mGPU0\tCPU Affinity\tNUMA Affinity\tGPU NUMA ID\x1b[0m\n"
    "GPU0\t X \t0-15\t0\t\tN/A\n"
    "\n"
    "Legend:\n\n"
    "  X    = Self\n"
    "  SYS  = Connection traversing PCIe as well as the SMP interconnect between NUMA nodes\n"
    "  NV#  = Connection traversing a bonded set of # NVLinks\n"
)

EIGHT_GPUS_AND_NICS = (
    "\t\x1b[4mGPU0\tGPU1\tGPU2\tGPU3\tGPU4\tGPU5\tGPU6\tGPU7\tNIC0\tNIC1\tCPU Affinity"
    "\tNUMA Affinity\tGPU NUMA ID\x1b[0m\n"
    + "".join(
        f"GPU{i}\t" + "\t".join(" X " if j == i else "NV18" for j in range(8))
        + "\tPXB\tSYS\t0-47\t0\t\tN/A\n"
        for i in range(8)
    )
    + "NIC0\t" + "PXB\t" * 8 + " X \tSYS\n"
    + "\nNIC Legend:\n\n  NIC0: rdmap16s27\n  NIC1: rdmap32s27\n"
)  # fmt: skip


def test_one_gpu_with_the_underlined_header() -> None:
    assert topology_gpus(ONE_GPU) == ["GPU0"]


def test_eight_gpus_beside_nics() -> None:
    assert topology_gpus(EIGHT_GPUS_AND_NICS) == [f"GPU{i}" for i in range(8)]


def test_the_same_without_escapes() -> None:
    plain = ONE_GPU.replace("\x1b[4m", "").replace("\x1b[0m", "")
    assert topology_gpus(plain) == ["GPU0"]


def test_no_matrix_no_gpus() -> None:
    assert topology_gpus("No devices were found\n") == []
