"""Does this GPU node show the GPUs its inventory expects, with a working driver, CUDA and NCCL?

A node's inventory says how many NVIDIA GPUs it must have with ``mlcluster_expected_gpus``;
where it is unset or 0 no GPU is expected and these checks are skipped. Persistence mode is
expected where ``nvidia_driver_persistenced`` (the nvidia_driver role's option) is on, NCCL
through the dynamic linker or under ``nccl_prefix``/lib (the nccl role's wheel prefix).
"""

from __future__ import annotations

import csv
import json
import re

import pytest

_SMI_FIELDS = ("index", "name", "driver_version", "persistence_mode")
_KERNEL_MODULE = re.compile(r"Kernel Module(?: for \S+)?\s+(\d+\.\d+(?:\.\d+)?)")

# Runs on the node: initialises the CUDA driver API and prints the device count and the CUDA
# version the driver supports, or the name of the error that stopped it.
_CUDA_PROBE = """
import ctypes, sys
cuda = ctypes.CDLL("libcuda.so.1")
def check(function, *args):
    rc = getattr(cuda, function)(*args)
    if rc:
        name = ctypes.c_char_p()
        cuda.cuGetErrorName(rc, ctypes.byref(name))
        sys.exit(f"{function}: {(name.value or b'?').decode()} ({rc})")
count, version = ctypes.c_int(), ctypes.c_int()
check("cuInit", 0)
check("cuDriverGetVersion", ctypes.byref(version))
check("cuDeviceGetCount", ctypes.byref(count))
print(count.value, version.value)
"""

# Runs on the node: loads the libnccl given as argument and prints ncclGetVersion().
_NCCL_PROBE = """
import ctypes, sys
version = ctypes.c_int()
rc = ctypes.CDLL(sys.argv[1]).ncclGetVersion(ctypes.byref(version))
sys.exit(f"ncclGetVersion: error {rc}") if rc else print(version.value)
"""


def _last_line(result) -> str:
    """The last line a failed command printed: the error, not the traceback before it."""
    lines = (result.stderr or result.stdout).strip().splitlines()
    return lines[-1] if lines else f"exit {result.rc}, no output"


@pytest.fixture
def expected_gpus(node_vars) -> int:
    count = int(node_vars.get("mlcluster_expected_gpus") or 0)
    if count <= 0:
        pytest.skip("the inventory expects no GPU here (mlcluster_expected_gpus unset or 0)")
    return count


@pytest.fixture
def python(node_vars) -> str:
    """The node's Python, for the probes that load a library with ctypes."""
    return str(node_vars.get("ansible_python_interpreter") or "python3")


@pytest.fixture
def smi(host, expected_gpus) -> list[dict]:
    """One record per GPU, as nvidia-smi reports it."""
    query = ",".join(_SMI_FIELDS)
    result = host.run(f"timeout 120 nvidia-smi --query-gpu={query} --format=csv,noheader")
    assert result.rc == 0, f"nvidia-smi failed (exit {result.rc}): {_last_line(result)}"
    rows = list(csv.reader(result.stdout.strip().splitlines(), skipinitialspace=True))
    assert rows, "nvidia-smi lists no GPU"
    odd = [row for row in rows if len(row) != len(_SMI_FIELDS)]
    assert not odd, f"nvidia-smi --query-gpu={query} gave {odd[0]}"
    return [dict(zip(_SMI_FIELDS, row, strict=True)) for row in rows]


def test_gpu_count(smi, expected_gpus):
    names = sorted({gpu["name"] for gpu in smi})
    assert len(smi) == expected_gpus, (
        f"nvidia-smi shows {len(smi)} GPU(s) ({', '.join(names)}), "
        f"the inventory expects {expected_gpus}"
    )


def test_gpu_driver_version(host, smi):
    versions = sorted({gpu["driver_version"] for gpu in smi})
    assert len(versions) == 1, f"the GPUs report different driver versions: {versions}"
    proc = host.file("/proc/driver/nvidia/version")
    assert proc.exists, "no /proc/driver/nvidia/version: the NVIDIA kernel module is not loaded"
    loaded = _KERNEL_MODULE.search(proc.content_string)
    assert loaded, f"no kernel module version in /proc/driver/nvidia/version: {proc.content_string}"
    assert loaded[1] == versions[0], (
        f"kernel module {loaded[1]}, nvidia-smi {versions[0]}: the user-space driver does not "
        "belong to the loaded module (reboot or reload the module after a driver update)"
    )


def test_gpu_driver_is_the_baked_one(host, smi):
    manifest = host.file("/etc/mlcluster/manifest.json")
    if not manifest.exists:
        pytest.skip("no /etc/mlcluster/manifest.json: not an image baked by mlcluster")
    baked = json.loads(manifest.content_string)["components"].get("nvidia_driver", {})
    if not baked.get("version"):
        pytest.skip("the image manifest records no NVIDIA driver version")
    running = smi[0]["driver_version"]
    assert running == baked["version"], (
        f"driver {running} runs, the image was baked with {baked['version']}"
    )


def test_gpu_persistence_mode(smi, node_vars):
    if not node_vars.get("nvidia_driver_persistenced", True):
        pytest.skip("nvidia_driver_persistenced is off for this node")
    off = [f"GPU {g['index']}" for g in smi if g["persistence_mode"] != "Enabled"]
    assert not off, f"persistence mode off on {', '.join(off)}: is nvidia-persistenced running?"


def test_cuda_driver(host, python, expected_gpus):
    result = host.run("%s -c %s", python, _CUDA_PROBE)
    assert result.rc == 0, f"the CUDA driver API does not start: {_last_line(result)}"
    count, version = (int(field) for field in result.stdout.split())
    assert count == expected_gpus, (
        f"CUDA sees {count} GPU(s) (driver API {version // 1000}.{version % 1000 // 10}), "
        f"the inventory expects {expected_gpus}"
    )


def test_nccl_library(host, python, node_vars, expected_gpus):
    prefix = str(node_vars.get("nccl_prefix") or "/opt/nccl")
    candidates = [f"{prefix}/lib/libnccl.so.2"]
    linker = host.run("PATH=$PATH:/sbin:/usr/sbin ldconfig -p")
    candidates += re.findall(r"^\s*libnccl\.so\.2 \(.*\) => (\S+)$", linker.stdout, re.M)
    library = next((path for path in candidates if host.file(path).exists), None)
    assert library, f"no libnccl.so.2 known to the dynamic linker nor under {prefix}/lib"
    result = host.run("%s -c %s %s", python, _NCCL_PROBE, library)
    assert result.rc == 0, f"{library} does not load: {_last_line(result)}"
    version = int(result.stdout)
    # ncclGetVersion gives major*10000 + minor*100 + patch from NCCL 2.9 on.
    assert version >= 20900, f"{library} is older than NCCL 2.9 (ncclGetVersion: {version})"


# dcgmi diag run level per validation level: 1 = quick software and deployment checks (seconds),
# 3 = adds the stress tests (PCIe, memory, targeted power/stress: many minutes).
_DCGM_LEVELS = {"standard": 1, "full": 3}


def test_dcgm_diagnostic(host, expected_gpus, level):
    if level not in _DCGM_LEVELS:
        pytest.skip("level quick runs no DCGM diagnostic (--level standard or full)")
    run_level = _DCGM_LEVELS[level]
    result = host.run(f"timeout 3600 dcgmi diag -r {run_level}")
    assert result.rc == 0, (
        f"dcgmi diag -r {run_level} failed (exit {result.rc}): {_last_line(result)}"
    )
    failed = [line.strip() for line in result.stdout.splitlines() if "Fail" in line]
    assert not failed, f"dcgmi diag -r {run_level}: {failed[0]}"


# Terminal escapes: nvidia-smi underlines the matrix's header line (ESC[4m ... ESC[0m) even when
# its output is not a terminal, which glues ESC[4m to the first column's name.
_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def topology_gpus(text: str) -> list[str]:
    """The GPU columns (GPU0, GPU1, ...) of `nvidia-smi topo -m`'s matrix header."""
    for line in _ESCAPE.sub("", text).splitlines():
        columns = line.split()
        # the header names GPU0; GPU0's own row does too, and holds its "X" (self)
        if "GPU0" in columns and "X" not in columns:
            return [column for column in columns if re.fullmatch(r"GPU\d+", column)]
    return []


def test_gpu_topology_and_nvlink(host, smi, expected_gpus):
    """Every GPU appears in the topology matrix; where NVLink exists, no link is inactive."""
    topo = host.run("timeout 120 nvidia-smi topo -m")
    assert topo.rc == 0, f"nvidia-smi topo -m failed: {_last_line(topo)}"
    gpus = topology_gpus(topo.stdout)
    assert len(gpus) == expected_gpus, f"topology shows {len(gpus)} GPUs, not {expected_gpus}"
    links = host.run("timeout 120 nvidia-smi nvlink -s")
    if links.rc != 0 or "Link" not in links.stdout:
        return  # no NVLink on this machine (PCIe only): nothing more to check
    inactive = [line.strip() for line in links.stdout.splitlines() if "inactive" in line.lower()]
    assert not inactive, f"{len(inactive)} NVLink link(s) inactive, e.g. {inactive[0]}"
