"""versions and envreport against a fake host: files under a temporary root, commands on a
temporary PATH."""

from __future__ import annotations

import json
import shlex
import stat
import sys

import pytest
from mlcluster_workloads import envreport, versions
from mlcluster_workloads.probe import Host
from workload_helpers import json_lines


def put(root, path: str, content: str | bytes) -> None:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        target.write_bytes(content)
    else:
        target.write_text(content)


def command(bin_dir, name: str, output: str, exit_code: int = 0) -> None:
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / name
    # printf is a shell builtin: the fake PATH holds no cat
    script.write_text(f"#!/bin/sh\nprintf '%s\\n' {shlex.quote(output)}\nexit {exit_code}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)


@pytest.fixture
def gpu_node(tmp_path):
    root, bin_dir = tmp_path / "root", tmp_path / "bin"
    put(
        root,
        "/proc/driver/nvidia/version",
        "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  570.133.20  Release Build\n"
        "GCC version:  gcc version 11.4.0\n",
    )
    put(root, "/sys/module/nvidia/version", "570.133.20\n")
    put(root, "/usr/local/cuda/version.json", json.dumps({"cuda": {"version": "12.8.1"}}))
    put(root, "/usr/local/lib/libnccl.so.2.26.2", b"")
    put(root, "/usr/local/lib/libnccl.so.2.21.5", b"")
    put(root, "/usr/local/lib/libnccl.so.2", b"")
    put(
        root,
        "/opt/amazon/efa_installed_packages",
        "# EFA installer version: 1.41.0\n# Debug packages installed: no\nlibfabric-aws-2.1.0\n",
    )
    put(root, "/sys/module/efa/version", "2.15.3g\n")
    put(
        root,
        "/opt/amazon/ofi-nccl/lib/libnccl-net-ofi.so",
        b"\x7fELF\x00NET/OFI Initializing aws-ofi-nccl 1.14.2-aws\x00more",
    )
    for name in ("infiniband/rdmap16s27", "infiniband/mlx5_0"):
        (root / "sys/class" / name / "device").mkdir(parents=True)
    drivers = root / "sys/bus/pci/drivers"
    (drivers / "efa").mkdir(parents=True)
    (drivers / "mlx5_core").mkdir()
    (root / "sys/class/infiniband/rdmap16s27/device/driver").symlink_to(drivers / "efa")
    (root / "sys/class/infiniband/mlx5_0/device/driver").symlink_to(drivers / "mlx5_core")
    command(
        bin_dir, "fi_info", "fi_info: 2.1.0amzn3.0\nlibfabric: 2.1.0amzn3.0\nlibfabric api: 2.1"
    )
    command(
        bin_dir,
        "nvidia-smi",
        "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-1)\nGPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-2)",
    )
    return Host(root=root, path=str(bin_dir))


def test_versions_on_a_gpu_node(gpu_node):
    report = versions.report(gpu_node)
    expected = {
        "nvidia_driver": ("570.133.20", "/proc/driver/nvidia/version"),
        "nvidia_kernel_module": ("570.133.20", "/sys/module/nvidia/version"),
        "cuda_toolkit": ("12.8.1", "/usr/local/cuda/version.json"),
        "nccl_library": ("2.26.2", "/usr/local/lib/libnccl.so.*"),  # the newest of two
        "efa_installer": ("1.41.0", "/opt/amazon/efa_installed_packages"),
        "efa_kernel_module": ("2.15.3g", "/sys/module/efa/version"),
        "aws_ofi_nccl": (
            "1.14.2-aws",
            "/opt/amazon/ofi-nccl/lib/libnccl-net-ofi.so (its embedded package string)",
        ),
    }
    for field, (version, source) in expected.items():
        assert report[field] == {"status": "present", "version": version, "source": source}
    assert report["libfabric"]["version"] == "2.1.0amzn3.0"
    assert report["neuron_kernel_module"] == {
        "status": "absent",
        "looked_for": ["/sys/module/neuron/version"],
    }


def test_versions_falls_back_to_nvidia_smi(tmp_path):
    command(tmp_path / "bin", "nvidia-smi", "535.129.03")
    host = Host(root=tmp_path / "empty", path=str(tmp_path / "bin"))
    assert versions.nvidia_driver(host) == {
        "status": "present",
        "version": "535.129.03",
        "source": "nvidia-smi --query-gpu=driver_version",
    }


def test_versions_on_a_bare_host_says_absent_and_where_it_looked(tmp_path):
    report = versions.report(Host(root=tmp_path, path=str(tmp_path / "no-bin")))
    for field in (
        "nvidia_driver",
        "nvidia_kernel_module",
        "cuda_toolkit",
        "efa_installer",
        "efa_kernel_module",
        "libfabric",
        "aws_ofi_nccl",
        "neuron_kernel_module",
        "neuron_tools",
    ):
        assert report[field]["status"] == "absent", field
        assert report[field]["looked_for"], field
    assert report["nvidia_driver"]["looked_for"] == [
        "/proc/driver/nvidia/version",
        "nvidia-smi on PATH",
    ]
    assert report["python"]["version"] == ".".join(map(str, sys.version_info[:3]))


def test_versions_finds_aws_ofi_nccl_where_the_efa_installer_puts_it_on_ubuntu(tmp_path):
    """The directories and the version string are the image manifest's (module_utils/parsers)."""
    library = "/opt/amazon/ofi-nccl/lib/x86_64-linux-gnu/libnccl-net.so"
    put(tmp_path, library, b"\x7fELF\x00aws-ofi-nccl-v1.13.0\x00")
    assert versions.aws_ofi_nccl(Host(root=tmp_path)) == {
        "status": "present",
        "version": "1.13.0",
        "source": f"{library} (its embedded package string)",
    }
    looked_for = versions.aws_ofi_nccl(Host(root=tmp_path / "empty"))["looked_for"]
    assert looked_for[0] == (
        "/opt/amazon/ofi-nccl/lib/x86_64-linux-gnu/"
        "{libnccl-net-ofi.so,libnccl-net.so,libnccl-net-aws-ofi.so}"
    )
    assert "/usr/local/lib/{libnccl-net-ofi.so,libnccl-net.so,libnccl-net-aws-ofi.so}" in looked_for


def test_versions_reads_cuda_from_the_newest_versioned_home(tmp_path):
    """The image manifest's CUDA homes (parsers.cuda_homes): without /usr/local/cuda, the
    newest /usr/local/cuda-X.Y by number, read from its nvcc where it has no version.json."""
    root = tmp_path / "root"
    for release, build in (("12.9", "12.9.86"), ("12.10", "12.10.41"), ("9.2", "9.2.148")):
        nvcc_dir = root / f"usr/local/cuda-{release}/bin"
        nvcc_dir.mkdir(parents=True)
        command(nvcc_dir, "nvcc", f"Cuda compilation tools, release {release}, V{build}")
    host = Host(root=root, path=str(tmp_path / "no-bin"))
    assert versions.cuda_toolkit(host) == {
        "status": "present",
        "version": "12.10.41",
        "source": "/usr/local/cuda-12.10/bin/nvcc --version",
    }
    put(root, "/usr/local/cuda-12.10/version.json", json.dumps({"cuda": {"version": "12.10.0"}}))
    assert versions.cuda_toolkit(host)["source"] == "/usr/local/cuda-12.10/version.json"
    assert versions.cuda_toolkit(Host(root=tmp_path / "empty", path=str(tmp_path / "no-bin"))) == {
        "status": "absent",
        "looked_for": ["/usr/local/cuda/{version.json,bin/nvcc}", "nvcc on PATH"],
    }


def test_versions_prefers_the_efa_installers_fi_info(tmp_path):
    """/opt/amazon/efa/bin/fi_info (the libfabric NCCL loads) before a distribution's on PATH."""
    root, bin_dir = tmp_path / "root", tmp_path / "bin"
    (root / "opt/amazon/efa/bin").mkdir(parents=True)
    command(
        root / "opt/amazon/efa/bin", "fi_info", "fi_info: 2.1.0amzn3.0\nlibfabric: 2.1.0amzn3.0"
    )
    command(bin_dir, "fi_info", "fi_info: 1.17.0\nlibfabric: 1.17.0")
    assert versions.libfabric(Host(root=root, path=str(bin_dir))) == {
        "status": "present",
        "version": "2.1.0amzn3.0",
        "source": f"{root}/opt/amazon/efa/bin/fi_info --version",
    }
    assert versions.libfabric(Host(root=tmp_path / "empty", path=str(bin_dir))) == {
        "status": "present",
        "version": "1.17.0",
        "source": f"{bin_dir}/fi_info --version",
    }
    assert versions.libfabric(Host(root=tmp_path / "empty", path=str(tmp_path / "no-bin"))) == {
        "status": "absent",
        "looked_for": ["/opt/amazon/efa/bin/fi_info --version", "fi_info --version (PATH)"],
    }


def test_versions_falls_back_to_the_linker_cache(tmp_path):
    """Libraries outside the searched directories, found through ``ldconfig -p`` as the image
    manifest finds them."""
    root, bin_dir = tmp_path / "root", tmp_path / "bin"
    command(
        bin_dir,
        "ldconfig",
        "3 libs found in cache `/etc/ld.so.cache'\n"
        "\tlibnccl.so.2 (libc6,x86-64) => /opt/site/lib/libnccl.so.2\n"
        "\tlibnccl-net.so (libc6,x86-64) => /opt/site/lib/libnccl-net.so\n"
        "\tlibgone.so.1 (libc6,x86-64) => /opt/site/lib/libgone.so.1",
    )
    put(root, "/opt/site/lib/libnccl.so.2", b"\x7fELF\x00NCCL version 2.27.7+cuda12.9\x00")
    put(root, "/opt/site/lib/libnccl-net.so", b"\x7fELF\x00aws-ofi-nccl 1.14.2-aws\x00")
    host = Host(root=root, path=str(bin_dir))
    assert versions.nccl_library(host) == {
        "status": "present",
        "version": "2.27.7",
        "source": "/opt/site/lib/libnccl.so.2 (ldconfig -p; its embedded version string)",
    }
    assert versions.aws_ofi_nccl(host) == {
        "status": "present",
        "version": "1.14.2-aws",
        "source": "/opt/site/lib/libnccl-net.so (its embedded package string)",
    }
    # The cache's paths are read under the host's root: an entry whose file is gone is not used.
    looked_for = versions.aws_ofi_nccl(Host(root=tmp_path / "empty", path=str(bin_dir)))
    assert looked_for["looked_for"][-1] == (
        "ldconfig -p {libnccl-net-ofi.so,libnccl-net.so,libnccl-net-aws-ofi.so}"
    )


def test_versions_reads_nccl_from_the_nccl_roles_wheel_prefix_first(tmp_path):
    """/opt/nccl/lib (libnccl.so.2 only, from the wheel) before a distribution's libnccl."""
    put(tmp_path, "/opt/nccl/lib/libnccl.so.2", b"\x7fELF\x00NCCL version 2.27.7+cuda12.9\x00")
    put(tmp_path, "/usr/lib/x86_64-linux-gnu/libnccl.so.2.21.5", b"")
    assert versions.nccl_library(Host(root=tmp_path)) == {
        "status": "present",
        "version": "2.27.7",
        "source": "/opt/nccl/lib/libnccl.so.2 (its embedded version string)",
    }


def test_versions_of_packages_count_installed_ones_only(tmp_path):
    """dpkg's entry of a package removed with its configuration left (rc) is not a version;
    rpm's is read as the image manifest reads it."""
    bin_dir = tmp_path / "bin"
    command(bin_dir, "dpkg-query", "aws-neuronx-tools\t2.26.1.0\trc ")
    command(bin_dir, "rpm", "aws-neuronx-tools\t0:2.27.3.0-1")
    host = Host(root=tmp_path / "root", path=str(bin_dir))
    assert versions.neuron_tools(host) == {
        "status": "present",
        "version": "2.27.3.0-1",
        "source": "rpm -q aws-neuronx-tools",
    }


def test_envreport_finds_efa_devices_by_driver(gpu_node):
    report = envreport.report(gpu_node)
    assert report["efa"] == {
        "status": "present",
        "version": 1,
        "source": "/sys/class/infiniband/*/device/driver -> efa",
        "devices": ["rdmap16s27"],
        "libfabric_efa_provider": True,
    }
    assert report["gpus_nvidia_smi"]["version"] == 2
    assert report["mpi"] == {"status": "absent", "looked_for": ["mpirun on PATH"]}
    assert report["neuron_devices"]["status"] == "absent"


def test_envreport_here(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    report = envreport.report(Host(path=""))
    torch_report = report["torch"]
    assert torch_report["status"] == "present"
    assert torch_report["backends"]["gloo"] is True
    assert torch_report["device_count"] == len(torch_report["devices"])
    assert report["launcher_env"]["SLURM_JOB_ID"] == "42"


@pytest.mark.parametrize("module", [versions, envreport])
def test_main_prints_one_json_object(module, capsys):
    module.main([])
    (record,) = json_lines(capsys.readouterr().out)
    assert record["event"] == module.__name__.rsplit(".", 1)[-1]
