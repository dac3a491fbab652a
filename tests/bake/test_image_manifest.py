"""The read-back logic of the image_manifest module: parsers over real command output and
files, the version comparisons, and the module itself run on this machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlcluster.paths import load_plugin

from .conftest import ROOT

m = load_plugin("modules", "image_manifest")
parsers = load_plugin("module_utils", "parsers")


def test_dpkg_query_keeps_installed_packages_only():
    text = (
        "nvidia-smi\t535.261.03-1\tii \n"
        "libnccl2\t2.29.3-1+cuda12.9\tii \n"
        "nvidia-kernel-dkms\t535.261.03-1\trc \n"
        "broken\n"
    )
    assert m.parse_dpkg_query(text) == {
        "nvidia-smi": "535.261.03-1",
        "libnccl2": "2.29.3-1+cuda12.9",
    }


def test_rpm_qa_drops_a_zero_epoch():
    text = "kmod-nvidia-open-dkms\t3:580.95.05-1.amzn2023\nlibnccl\t0:2.29.3-1+cuda12.9\n"
    assert m.parse_rpm_qa(text) == {
        "kmod-nvidia-open-dkms": "3:580.95.05-1.amzn2023",
        "libnccl": "2.29.3-1+cuda12.9",
    }


@pytest.mark.parametrize(
    ("expected", "actual", "ok"),
    [
        ("580.95.05", "580.95.05", True),
        ("580.95.05", "580.95.05-0ubuntu1", True),
        ("580.95.05", "3:580.95.05-1.amzn2023", True),
        ("12.9", "12.9.1", True),
        ("2.29.3", "2.29.30", False),
        ("1.41.0", "1.40.0", False),
        ("2.29.3", None, False),
        (None, "anything", True),
    ],
)
def test_versions_match(expected, actual, ok):
    assert m.versions_match(expected, actual) is ok


def test_nvcc_version():
    text = (
        "nvcc: NVIDIA (R) Cuda compiler driver\n"
        "Copyright (c) 2005-2025 NVIDIA Corporation\n"
        "Built on Tue_May_27_02:21:03_PDT_2025\n"
        "Cuda compilation tools, release 12.9, V12.9.86\n"
        "Build cuda_12.9.r12.9/compiler.36037853_0\n"
    )
    assert m.parse_nvcc_version(text) == "12.9.86"
    assert m.parse_nvcc_version("Cuda compilation tools, release 11.8") == "11.8"


def test_cuda_version_json():
    text = json.dumps(
        {"cuda": {"name": "CUDA SDK", "version": "12.9.1"}, "cuda_cudart": {"version": "12.9.79"}}
    )
    assert m.parse_cuda_version_json(text) == "12.9.1"
    for broken in ("not json", "[]", '{"cuda": "12.9"}', '{"cuda": {"version": 12.9}}', "{}"):
        assert m.parse_cuda_version_json(broken) is None, broken


def test_nccl_version_from_the_library_bytes():
    blob = b"\x00garbage\x00NCCL version 2.29.3+cuda12.9\x00Mismatched NCCL version\x00"
    assert m.parse_nccl_binary(blob) == ("2.29.3", "12.9")
    assert m.parse_nccl_binary(b"NCCL version %d.%d") == (None, None)


def test_versions_in_library_files(tmp_path):
    """search_binary maps the file: NCCL's and aws-ofi-nccl's version strings, and None for a
    file without one, an empty file (which cannot be mapped) and a missing one."""
    files = {
        "libnccl.so.2": b"\x7fELF\x00NCCL version 2.29.3+cuda12.9\x00",
        "libnccl-net-ofi.so": b"\x7fELF\x00NET/OFI Initializing aws-ofi-nccl 1.14.2-aws\x00",
        "libnccl-net.so": b"/build/aws-ofi-nccl-v1.13.0.tar.gz\x00",
        "plain.so": b"\x7fELF\x00nothing here\x00",
        "empty.so": b"",
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    search = parsers.search_binary
    assert search(str(tmp_path / "libnccl.so.2"), parsers.NCCL_VERSION) == ("2.29.3", "12.9")
    ofi = parsers.OFI_NCCL_VERSION
    assert search(str(tmp_path / "libnccl-net-ofi.so"), ofi) == ("1.14.2-aws",)
    assert search(str(tmp_path / "libnccl-net.so"), ofi) == ("1.13.0",)
    for name in ("plain.so", "empty.so", "missing.so"):
        assert search(str(tmp_path / name), ofi) is None, name


def test_library_search_order():
    """A component's own directories first, then the distribution's, each once."""
    assert parsers.library_search_dirs() == parsers.LIBRARY_DIRS
    assert parsers.library_search_dirs("/opt/nccl/lib", "/usr/lib64") == (
        "/opt/nccl/lib",
        "/usr/lib64",
        *(d for d in parsers.LIBRARY_DIRS if d != "/usr/lib64"),
    )
    # The union of what the image manifest and the workloads' version report looked in.
    assert {"/usr/lib", "/usr/local/lib64", "/usr/lib/aarch64-linux-gnu"} <= set(
        parsers.LIBRARY_DIRS
    )
    assert set(parsers.NCCL_LIBRARY_DIRS) == {
        "/opt/nccl/lib",
        "/opt/nccl/build/lib",
        "/usr/local/cuda/lib64",
    }
    assert "/opt/amazon/ofi-nccl/lib/x86_64-linux-gnu" in parsers.OFI_NCCL_LIBRARY_DIRS


def test_library_candidates_ask_the_linker_cache_once_and_last():
    """Per name: the directories in order, then the linker cache's entry, asked for once and
    only when a name's directories are exhausted (the callers stop at the first that exists)."""
    asked = []

    def ldconfig():
        asked.append(True)
        return {"libnccl-net.so": "/usr/lib/x86_64-linux-gnu/libnccl-net.so"}

    candidates = parsers.library_candidates(
        ["libnccl-net-ofi.so", "libnccl-net.so"], ["/opt/aws-ofi-nccl/lib", "/usr/lib64"], ldconfig
    )
    assert next(candidates) == "/opt/aws-ofi-nccl/lib/libnccl-net-ofi.so"
    assert next(candidates) == "/usr/lib64/libnccl-net-ofi.so"
    assert asked == []
    assert list(candidates) == [
        "/opt/aws-ofi-nccl/lib/libnccl-net.so",
        "/usr/lib64/libnccl-net.so",
        "/usr/lib/x86_64-linux-gnu/libnccl-net.so",
    ]
    assert asked == [True]


def test_linker_cache():
    """``ldconfig -p`` (glibc 2.36): the first entry of a name wins, as ld.so would pick it."""
    text = (
        "543 libs found in cache `/etc/ld.so.cache'\n"
        "\tlibnccl.so.2 (libc6,x86-64) => /opt/nccl/lib/libnccl.so.2\n"
        "\tlibnccl.so.2 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libnccl.so.2\n"
        "\tlibnvidia-ml.so.1 (libc6,x86-64, OS ABI: Linux 3.2.0) => "
        "/lib/x86_64-linux-gnu/libnvidia-ml.so.1\n"
        "Cache generated by: ldconfig (GNU libc) stable release version 2.36\n"
    )
    assert parsers.parse_ldconfig(text) == {
        "libnccl.so.2": "/opt/nccl/lib/libnccl.so.2",
        "libnvidia-ml.so.1": "/lib/x86_64-linux-gnu/libnvidia-ml.so.1",
    }
    assert parsers.parse_ldconfig("") == {}


def test_ldconfig_and_fi_info_candidates():
    """The EFA installer's fi_info before one on PATH (its libfabric is the one NCCL loads);
    ldconfig on PATH before /sbin's; what which_fn does not find is left out, each path once."""
    found = {
        "/opt/amazon/efa/bin/fi_info": "/opt/amazon/efa/bin/fi_info",
        "fi_info": "/usr/bin/fi_info",
        "/sbin/ldconfig": "/sbin/ldconfig",
    }
    which = found.get
    assert parsers.fi_info_candidates(which) == ["/opt/amazon/efa/bin/fi_info", "/usr/bin/fi_info"]
    assert parsers.fi_info_candidates({"fi_info": "/usr/bin/fi_info"}.get) == ["/usr/bin/fi_info"]
    # PATH holds the installer's bin directory: one candidate.
    on_path = dict.fromkeys(parsers.FI_INFO_COMMANDS, "/opt/amazon/efa/bin/fi_info")
    assert parsers.fi_info_candidates(on_path.get) == ["/opt/amazon/efa/bin/fi_info"]
    assert parsers.fi_info_candidates(lambda _command: None) == []
    assert parsers.ldconfig_candidates(which) == ["/sbin/ldconfig"]
    assert parsers.ldconfig_candidates({"ldconfig": "/usr/sbin/ldconfig", **found}.get) == [
        "/usr/sbin/ldconfig",
        "/sbin/ldconfig",
    ]


def test_cuda_homes_in_order():
    """Search paths, /usr/local/cuda, then the versioned homes newest first by number (a
    string sort put cuda-12.9 before cuda-13.0 and cuda-9.2 first); each once."""
    globbed = {
        "/usr/local/cuda-*": [
            "/usr/local/cuda-12.10",
            "/usr/local/cuda-12.9",
            "/usr/local/cuda-13.0",
            "/usr/local/cuda-9.2",
        ]
    }

    def glob_fn(pattern):
        return globbed.get(pattern, [])

    assert parsers.cuda_homes(glob_fn) == [
        "/usr/local/cuda",
        "/usr/local/cuda-13.0",
        "/usr/local/cuda-12.10",
        "/usr/local/cuda-12.9",
        "/usr/local/cuda-9.2",
    ]
    assert parsers.cuda_homes(glob_fn, "/opt/cuda", "/usr/local/cuda-12.9")[:4] == [
        "/opt/cuda",
        "/usr/local/cuda-12.9",
        "/usr/local/cuda",
        "/usr/local/cuda-13.0",
    ]
    assert parsers.cuda_homes(lambda _pattern: []) == ["/usr/local/cuda"]


def test_cuda_toolkit_version_prefers_the_release():
    release = json.dumps({"cuda": {"version": "12.9.1"}})
    nvcc = "Cuda compilation tools, release 12.9, V12.9.86\n"
    assert parsers.cuda_toolkit_version(release, nvcc) == ("12.9.1", "version.json")
    assert parsers.cuda_toolkit_version(None, nvcc) == ("12.9.86", "bin/nvcc --version")
    assert parsers.cuda_toolkit_version("not json", nvcc) == ("12.9.86", "bin/nvcc --version")
    assert parsers.cuda_toolkit_version(release, None) == ("12.9.1", "version.json")
    assert parsers.cuda_toolkit_version(None, None) is None
    assert parsers.cuda_toolkit_version("{}", "nvcc: command not found") is None


def test_kernel_module_versions():
    files = {"/sys/module/efa/version": "2.13.0g\n", "/sys/module/gdrdrv/version": "\n"}
    assert parsers.kernel_module_version_path("efa") == "/sys/module/efa/version"
    assert (
        parsers.kernel_module_version_path("nvidia", "/tmp/sys") == "/tmp/sys/module/nvidia/version"
    )
    assert parsers.kernel_module_version(files.get, "efa") == "2.13.0g"
    assert parsers.kernel_module_version(files.get, "gdrdrv") is None  # loaded, unversioned
    assert parsers.kernel_module_version(files.get, "nvidia") is None  # not loaded
    assert parsers.kernel_module_version(files.get, "efa", "/tmp/sys") is None


def test_version_key_compares_numbers():
    assert parsers.version_key("2.26.2") == (2, 26, 2)
    assert parsers.version_key("cuda-12.10") > parsers.version_key("cuda-12.9")
    assert parsers.version_key("unversioned") == ()


def test_package_queries_give_what_their_parsers_read():
    dpkg_line = (
        parsers.DPKG_QUERY_FORMAT.replace("${Package}", "libnccl2")
        .replace("${Version}", "2.29.3-1+cuda12.9")
        .replace("${db:Status-Abbrev}", "ii ")
    )
    assert parsers.parse_dpkg_query(dpkg_line) == {"libnccl2": "2.29.3-1+cuda12.9"}
    rpm_line = (
        parsers.RPM_QUERY_FORMAT.replace("%{NAME}", "libnccl")
        .replace("%{EPOCHNUM}", "0")
        .replace("%{VERSION}", "2.29.3")
        .replace("%{RELEASE}", "1+cuda12.9")
    )
    assert parsers.parse_rpm_qa(rpm_line) == {"libnccl": "2.29.3-1+cuda12.9"}


def test_nccl_version_from_the_header():
    text = (
        "#define NCCL_MAJOR 2\n#define NCCL_MINOR 29\n#define NCCL_PATCH 3\n"
        '#define NCCL_SUFFIX ""\n'
    )
    assert m.parse_nccl_header(text) == "2.29.3"


def test_fi_info_version_and_providers():
    assert (
        m.parse_fi_info_version("fi_info: 1.17.0\nlibfabric: 1.17.0\nlibfabric api: 1.17\n")
        == "1.17.0"
    )
    assert (
        m.parse_fi_info_version("fi_info: 2.1.0amzn2.0\nlibfabric: 2.1.0amzn2.0\n")
        == "2.1.0amzn2.0"
    )
    listing = (
        "efa:\n    version: 121.0\nshm:\n    version: 200.0\n"
        "ofi_rxm;tcp:\n    version: 121.0\ntcp:\n"
    )
    assert m.parse_fi_info_providers(listing) == ["efa", "ofi_rxm", "shm", "tcp"]


def test_efa_installed_packages():
    text = (
        "# EFA installer version: 1.41.0\n# Debug packages installed: no\n# Packages installed:\n"
        "efa-config_1.18-1_all efa-profile_1.7-1_all libfabric-aws-bin_2.1.0amzn2.0_amd64\n"
    )
    assert m.parse_efa_installed_packages(text) == "1.41.0"


def test_dkms_status_old_and_new_formats():
    text = (
        "nvidia-current-open/535.261.03: added\n"
        "nvidia/580.95.05, 6.8.0-1021-aws, x86_64: installed\n"
        "efa, 2.15.0, 6.1.141-165.249.amzn2023.x86_64, x86_64: installed (original_module exists)\n"
    )
    assert m.parse_dkms_status(text) == [
        {
            "module": "nvidia-current-open",
            "version": "535.261.03",
            "kernel": None,
            "arch": None,
            "state": "added",
        },
        {
            "module": "nvidia",
            "version": "580.95.05",
            "kernel": "6.8.0-1021-aws",
            "arch": "x86_64",
            "state": "installed",
        },
        {
            "module": "efa",
            "version": "2.15.0",
            "kernel": "6.1.141-165.249.amzn2023.x86_64",
            "arch": "x86_64",
            "state": "installed (original_module exists)",
        },
    ]


def test_loaded_driver_version():
    text = (
        "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.95.05  Release Build  "
        "(dvs-builder@U16-I3-C04-2-1)  Tue Sep 23 09:06:44 UTC 2025\n"
        "GCC version:  gcc version 12.3.0\n"
    )
    assert m.parse_proc_driver_version(text) == "580.95.05"
    assert (
        m.parse_proc_driver_version(
            "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.261.03  Mon Jul  7 2025"
        )
        == "535.261.03"
    )


def test_version_from_soname():
    path = "/usr/lib/x86_64-linux-gnu/nvidia/current/libnvidia-ml.so.535.261.03"
    assert m.version_from_soname(path, "libnvidia-ml.so") == "535.261.03"
    assert m.version_from_soname("/opt/gdrcopy/lib/libgdrapi.so.2.5.1", "libgdrapi.so") == "2.5.1"
    assert m.version_from_soname("/usr/lib/libnvidia-ml.so.1", "libnvidia-ml.so") is None
    assert m.version_from_soname("libnccl.so.2.26.2", "libnccl.so") == "2.26.2"
    assert m.version_from_soname("libnccl.so.2", "libnccl.so") is None


def test_nouveau_blacklist_and_key_values():
    assert m.nouveau_blacklisted(["# comment\n", "blacklist nouveau\noptions nouveau modeset=0\n"])
    assert not m.nouveau_blacklisted(["# blacklist nouveau\n"])
    assert m.parse_key_values(
        "#\n[Manager]\nDefaultLimitMEMLOCK=infinity\nkernel.yama.ptrace_scope = 0\n"
    ) == {
        "DefaultLimitMEMLOCK": "infinity",
        "kernel.yama.ptrace_scope": "0",
    }


def test_package_specs_of_apt_and_dnf():
    installed = {"nvidia-driver-cuda": "3:580.95.05-1.amzn2023", "nvidia-smi": "535.261.03-1"}
    assert m.split_package_spec("nvidia-utils-580=580.95.05-*", installed) == (
        "nvidia-utils-580",
        "580.95.05-*",
    )
    assert m.split_package_spec("nvidia-driver-cuda-580.95.05", installed) == (
        "nvidia-driver-cuda",
        "580.95.05",
    )
    assert m.split_package_spec("nvidia-smi", installed) == ("nvidia-smi", None)
    assert m.package_version_ok("580.95.05-*", "580.95.05-0ubuntu1")
    assert m.package_version_ok("1:4.2.3-*", "1:4.2.3-1")
    assert m.package_version_ok("580.95.05", "3:580.95.05-1.amzn2023")
    assert not m.package_version_ok("580.95.05-*", "580.82.07-0ubuntu1")


def test_claims_against_what_is_installed():
    claim = {
        "version": "2.29.3",
        "packages": ["libnccl2=2.29.3-1+cuda12.9", "libnccl-dev=2.29.3-1+cuda12.9"],
    }
    info = {"present": True, "version": "2.28.9"}
    installed = {"libnccl2": "2.28.9-1+cuda12.9"}
    assert m.compare_claim("nccl", claim, info, installed, None) == [
        "nccl: expected version 2.29.3, found 2.28.9",
        "nccl: package libnccl2 is 2.28.9-1+cuda12.9, expected 2.29.3-1+cuda12.9",
        "nccl: package libnccl-dev is not installed",
    ]
    assert m.compare_claim("nccl", claim, {"present": True, "version": "2.28.9"}, {}, "2.28.9")[
        :1
    ] == ["nccl: package libnccl2 is not installed"]
    assert (
        m.compare_claim("efa", {"version": None}, {"present": True, "version": "1.17.0"}, {}, None)
        == []
    )


def _run_module(args: dict, *, check: bool) -> dict:
    """Run the module on this machine through ansible's ad-hoc command."""
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1",
        "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.json",
    }
    cmd = [
        str(Path(sys.executable).parent / "ansible"),
        "localhost",
        "-c",
        "local",
        "-i",
        "localhost,",
        "-e",
        f"ansible_python_interpreter={sys.executable}",
        "-m",
        "mlcluster.core.image_manifest",
        "-a",
        json.dumps(args),
    ]
    if check:
        cmd.append("--check")
    proc = subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False, timeout=120
    )
    result = json.loads(proc.stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"]
    assert not result.get("failed"), result
    return result


def test_module_reports_missing_components_and_writes_only_when_asked(tmp_path):
    dest = tmp_path / "manifest.json"
    # Components a development machine does not have (it may well have nvcc or a driver).
    args = {
        "components": ["neuron", "lustre_client"],
        "dest": str(dest),
        "claims_dir": str(tmp_path),
        "extra": {"flavor": "neuron"},
    }

    checked = _run_module(args, check=True)
    assert checked["changed"] and not dest.exists()
    assert checked["missing"] == [
        "neuron: no Neuron runtime (aws-neuronx-runtime-lib)",
        "lustre_client: no lfs",
    ]

    written = _run_module(args, check=False)
    assert written["changed"]
    manifest = json.loads(dest.read_text())
    assert manifest["flavor"] == "neuron"
    assert manifest["components"]["neuron"]["present"] is False
    assert set(manifest["hardware"]) == {
        "nvidia_gpus",
        "nvswitches",
        "efa_devices",
        "neuron_devices",
    }

    again = _run_module(args, check=False)
    assert not again["changed"]


def _fake_tool(directory: Path, name: str, output: str) -> None:
    tool = directory / name
    tool.write_text(f"#!/bin/sh\necho '{output}'\n")
    tool.chmod(0o755)


def test_eks_node_reads_containerd_and_the_kubelet(tmp_path):
    """An EKS worker image: containerd's and the kubelet's versions from their own --version
    (the output of Debian 12's containerd and of a kubelet), the NVIDIA Container Toolkit alone
    counting as the container runtime."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _fake_tool(
        bin_dir,
        "containerd",
        "containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+b1",
    )
    _fake_tool(bin_dir, "kubelet", "Kubernetes v1.33.1-eks-b9b8a4f")
    _fake_tool(bin_dir, "nvidia-ctk", "NVIDIA Container Toolkit CLI version 1.17.8")
    result = _run_module(
        {
            "components": ["eks_node", "container_runtime"],
            "dest": "",
            "claims_dir": str(tmp_path),
            "search_paths": {"eks_node": [str(bin_dir)], "container_runtime": [str(bin_dir)]},
        },
        check=True,
    )
    assert result["missing"] == []
    eks = result["manifest"]["components"]["eks_node"]
    assert (eks["present"], eks["version"], eks["kubelet"]) == (True, "1.6.20", "1.33.1")
    runtime = result["manifest"]["components"]["container_runtime"]
    assert runtime["present"] is True
    assert runtime["nvidia_container_toolkit"] == "1.17.8"


def test_eks_node_without_containerd_is_missing(tmp_path):
    result = _run_module(
        {
            "components": ["eks_node"],
            "dest": "",
            "claims_dir": str(tmp_path),
            "search_paths": {"eks_node": [str(tmp_path)]},
        },
        check=True,
    )
    if result["manifest"]["components"]["eks_node"]["present"]:
        pytest.skip("this machine has containerd on PATH")
    assert result["missing"] == ["eks_node: no containerd"]


def test_cuda_toolkit_is_read_from_the_first_home_that_answers(tmp_path):
    """The search path's homes come first (parsers.cuda_homes); a home whose nvcc does not
    answer is passed over, one with version.json alone is a toolkit with no compiler."""
    silent, release_only = tmp_path / "silent", tmp_path / "release-only"
    (silent / "bin").mkdir(parents=True)
    (silent / "bin" / "nvcc").write_text("#!/bin/sh\nexit 1\n")
    (silent / "bin" / "nvcc").chmod(0o755)
    release_only.mkdir()
    (release_only / "version.json").write_text(json.dumps({"cuda": {"version": "12.9.1"}}))
    result = _run_module(
        {
            "components": ["cuda_toolkit"],
            "dest": "",
            "claims_dir": str(tmp_path),
            "search_paths": {"cuda_toolkit": [str(silent), str(release_only)]},
        },
        check=True,
    )
    assert result["manifest"]["components"]["cuda_toolkit"] == {
        "present": True,
        "version": "12.9.1",
        "cuda_home": str(release_only),
        "nvcc_version": None,
    }
