"""What the roles would write and run on targets that cannot be reached from here (NVIDIA's CUDA
repository, the EFA installer, the Neuron and FSx Lustre repositories): rendered by
tests/bake/render.yml from the roles' own templates and variables with each target's facts,
and checked line by line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import run_playbook

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rendered")
    run = run_playbook(
        HERE / "render.yml", HERE / "render_inventory.yml", out, extravars={"render_dir": str(out)}
    )
    assert run.status == "successful", run.stdout[-4000:]
    return out


def lines(rendered: Path, target: str, name: str) -> list[str]:
    """The file's lines without the `Ansible managed` header."""
    return [
        line
        for line in (rendered / target / name).read_text().splitlines()
        if not line.startswith("#")
    ]


def variables(rendered: Path, target: str) -> dict:
    return json.loads((rendered / target / "vars.json").read_text())


# ---- NVIDIA CUDA repository ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "distro"), [("ubuntu2204", "ubuntu2204"), ("ubuntu2404", "ubuntu2404")]
)
def test_cuda_repository_apt(rendered, target, distro):
    assert lines(rendered, target, "cuda.sources") == [
        "Types: deb",
        f"URIs: https://developer.download.nvidia.com/compute/cuda/repos/{distro}/x86_64/",
        "Suites: /",
        "Signed-By: /usr/share/keyrings/cuda-archive-keyring.asc",
    ]
    assert lines(rendered, target, "cuda-repository") == [
        "Package: *",
        "Pin: release l=NVIDIA CUDA",
        "Pin-Priority: 600",
    ]
    assert lines(rendered, target, "nvidia-driver") == [
        "Package: nvidia-* libnvidia-* libxnvctrl* xserver-xorg-video-nvidia-*",
        "Pin: version 580.95.05-*",
        "Pin-Priority: 1001",
    ]


def test_cuda_repository_dnf(rendered):
    assert lines(rendered, "al2023", "cuda.repo") == [
        "[cuda-amzn2023-x86_64]",
        "name=NVIDIA CUDA amzn2023 x86_64",
        "baseurl=https://developer.download.nvidia.com/compute/cuda/repos/amzn2023/x86_64",
        "enabled=1",
        "gpgcheck=1",
        "gpgkey=file:///etc/pki/rpm-gpg/RPM-GPG-KEY-NVIDIA-CUDA",
    ]


def test_cuda_repository_follows_the_mirror(rendered):
    assert lines(rendered, "ubuntu2204-mirror", "cuda.sources")[1] == (
        "URIs: http://mirror.example.internal/mlcluster/nvidia/compute/cuda/repos/ubuntu2204/x86_64/"
    )


def test_driver_cuda_and_nccl_packages_are_pinned(rendered):
    ubuntu, amazon = variables(rendered, "ubuntu2404"), variables(rendered, "al2023")
    assert ubuntu["__nvidia_driver_effective_source"] == "nvidia-repo"
    assert ubuntu["__nvidia_driver_repo_packages"] == [
        "nvidia-headless-580-open=580.95.05-*",
        "nvidia-utils-580=580.95.05-*",
        "nvidia-fabricmanager-580=580.95.05-*",
        "libnvidia-nscq-580=580.95.05-*",
    ]
    assert ubuntu["__nvidia_driver_headers"] == ["linux-headers-6.14.0-1011-aws"]
    assert amazon["__nvidia_driver_repo_packages"] == [
        "kmod-nvidia-open-dkms-580.95.05",
        "nvidia-driver-cuda-580.95.05",
        "nvidia-persistenced-580.95.05",
        "nvidia-fabric-manager-580.95.05",
        "libnvidia-nscq-580.95.05",
    ]
    assert ubuntu["__cuda_toolkit_packages"] == ["cuda-toolkit-12-9=12.9.1-*"]
    assert amazon["__cuda_toolkit_packages"] == ["cuda-toolkit-12-9-12.9.1"]
    assert ubuntu["__nccl_repo_packages"] == [
        "libnccl2=2.29.3-1+cuda12.9",
        "libnccl-dev=2.29.3-1+cuda12.9",
    ]
    assert amazon["__nccl_repo_packages"] == [
        "libnccl-2.29.3-1+cuda12.9",
        "libnccl-devel-2.29.3-1+cuda12.9",
    ]
    assert ubuntu["__dcgm_packages"] == [
        "datacenter-gpu-manager-4-core=1:4.2.3-*",
        "datacenter-gpu-manager-4-cuda12=1:4.2.3-*",
    ]


# ---- EFA installer and the builds from source ---------------------------------------------------


def test_efa_installer_download_and_command(rendered):
    rendered_vars = variables(rendered, "ubuntu2204")
    assert rendered_vars["__efa_effective_source"] == "installer"
    assert rendered_vars["__efa_download"] == {
        "url": "https://efa-installer.amazonaws.com/aws-efa-installer-1.41.0.tar.gz",
        "sha256": "3506354cdfbe31ff552fe75f5d0d9bb7efd29cf79bd99457347d29c751c38f9f",
        "checksum": "sha256:3506354cdfbe31ff552fe75f5d0d9bb7efd29cf79bd99457347d29c751c38f9f",
        "commit": "",
        "filename": "aws-efa-installer-1.41.0.tar.gz",
    }
    # GPU image on a VM: no prompt, no device check, GPUDirect, the kernel module built.
    assert rendered_vars["__efa_installer_argv"] == ["./efa_installer.sh", "-y", "-n", "-g"]
    assert variables(rendered, "ubuntu2204-mirror")["__efa_download"]["url"] == (
        "http://mirror.example.internal/mlcluster/efa/aws-efa-installer-1.41.0.tar.gz"
    )


def test_aws_ofi_nccl_paths_and_build(rendered):
    assert (
        variables(rendered, "ubuntu2204")["__aws_ofi_nccl_lib_dir"]
        == "/opt/amazon/ofi-nccl/lib/x86_64-linux-gnu"
    )
    assert variables(rendered, "al2023")["__aws_ofi_nccl_lib_dir"] == "/opt/amazon/ofi-nccl/lib64"
    assert variables(rendered, "al2023")["__aws_ofi_nccl_configure_argv"] == [
        "./configure",
        "--prefix=/opt/aws-ofi-nccl",
        "--with-libfabric=/opt/amazon/efa",
        "--with-cuda=/usr/local/cuda",
        "--enable-platform-aws",
        "--disable-tests",
    ]


def test_source_builds_are_checksummed(rendered):
    rendered_vars = variables(rendered, "ubuntu2404")
    assert rendered_vars["__nccl_tests_download"]["checksum"] == (
        "sha256:38974e70342150ede0e3fb8fd24bfe60ccbde90fa20241716ba8bb338e6b61a0"
    )
    assert (
        rendered_vars["__gdrcopy_download"]["url"]
        == "https://github.com/NVIDIA/gdrcopy/archive/v2.5.1.tar.gz"
    )
    assert rendered_vars["__gdrcopy_make_argv"] == [
        "make",
        "-j192",
        "prefix=/opt/gdrcopy",
        "CUDA=/usr/local/cuda",
        "lib",
        "lib_install",
        "exes",
        "exes_install",
    ]


# ---- NVIDIA Container Toolkit -------------------------------------------------------------------


def test_container_toolkit_repository(rendered):
    assert lines(rendered, "ubuntu2404", "nvidia-container-toolkit.sources") == [
        "Types: deb",
        "URIs: https://nvidia.github.io/libnvidia-container/stable/deb/amd64/",
        "Suites: /",
        "Signed-By: /usr/share/keyrings/nvidia-container-toolkit-keyring.asc",
    ]
    assert lines(rendered, "al2023", "nvidia-container-toolkit.repo") == [
        "[nvidia-container-toolkit]",
        "name=NVIDIA Container Toolkit",
        "baseurl=https://nvidia.github.io/libnvidia-container/stable/rpm/$basearch",
        "enabled=1",
        "gpgcheck=0",
        "repo_gpgcheck=1",
        "gpgkey=file:///etc/pki/rpm-gpg/RPM-GPG-KEY-nvidia-container-toolkit",
    ]
    assert json.loads((rendered / "ubuntu2204" / "daemon.json").read_text())["runtimes"] == {
        "nvidia": {"path": "nvidia-container-runtime", "args": []}
    }


# ---- Neuron -------------------------------------------------------------------------------------


def test_neuron_repository_and_packages(rendered):
    assert lines(rendered, "ubuntu2204", "neuron.sources") == [
        "Types: deb",
        "URIs: https://apt.repos.neuron.amazonaws.com",
        "Suites: jammy",
        "Components: main",
        "Signed-By: /usr/share/keyrings/neuron-keyring.asc",
    ]
    assert lines(rendered, "al2023", "neuron.repo") == [
        "[neuron]",
        "name=AWS Neuron",
        "baseurl=https://yum.repos.neuron.amazonaws.com",
        "enabled=1",
        "gpgcheck=1",
        "gpgkey=file:///etc/pki/rpm-gpg/RPM-GPG-KEY-AMAZON-AWS-NEURON",
    ]
    assert variables(rendered, "ubuntu2204")["__neuron_package_specs"] == [
        "aws-neuronx-dkms=2.30.2.0*",
        "aws-neuronx-runtime-lib=2.34.10.0*",
        "aws-neuronx-collectives=2.34.10.0*",
        "aws-neuronx-tools=2.32.28.0*",
    ]


# ---- FSx for Lustre -----------------------------------------------------------------------------


def test_lustre_client(rendered):
    assert lines(rendered, "ubuntu2404", "fsx-lustre-client.sources") == [
        "Types: deb",
        "URIs: https://fsx-lustre-client-repo.s3.amazonaws.com/ubuntu",
        "Suites: noble",
        "Components: main",
        "Signed-By: /usr/share/keyrings/fsx-lustre-client.asc",
    ]
    ubuntu = variables(rendered, "ubuntu2204")
    assert ubuntu["__lustre_client_packages"] == [
        "lustre-client-modules-6.8.0-1021-aws",
        "lustre-client-modules-aws",
    ]
    assert ubuntu["__lustre_client_key_url"] == (
        "https://fsx-lustre-client-repo-public-keys.s3.amazonaws.com/fsx-ubuntu-public-key.asc"
    )
    assert variables(rendered, "al2023")["__lustre_client_packages"] == ["lustre-client"]


# ---- enroot -------------------------------------------------------------------------------------


def test_enroot_packages_per_os_and_settings(rendered):
    assert variables(rendered, "ubuntu2204")["__enroot_pyxis_downloads"] == [
        "enroot_deb",
        "enroot_caps_deb",
    ]
    assert variables(rendered, "al2023")["__enroot_pyxis_downloads"] == [
        "enroot_rpm",
        "enroot_caps_rpm",
    ]
    assert "ENROOT_SQUASH_OPTIONS -comp lz4 -noD" in lines(rendered, "al2023", "enroot.conf")


@pytest.mark.parametrize("target", ["ubuntu2204", "ubuntu2404"])
def test_enroot_is_built_from_its_pinned_commit(rendered, target, versions):
    rendered_vars = variables(rendered, target)
    # versions.yml lists no release packages (their digests could not be computed): source.
    assert rendered_vars["__enroot_pyxis_enroot_source"] == "source"
    # enroot's Debian package layout (pkg/deb/rules): /usr/bin, /etc/enroot, /usr/share/enroot.
    assert rendered_vars["__enroot_pyxis_enroot_make_args"] == [
        "prefix=",
        "exec_prefix=/usr",
        "datarootdir=/usr/share",
    ]
    assert {"make", "gcc", "libtool", "automake", "libmd-dev", "patch", "libcap2-bin"} <= set(
        rendered_vars["__enroot_pyxis_enroot_build_packages"]
    )
    assert {"curl", "gawk", "jq", "parallel", "squashfs-tools", "zstd"} <= set(
        rendered_vars["__enroot_pyxis_packages"]
    )
    pins = versions["components"]["enroot_pyxis"]["downloads"]
    archives = json.loads((rendered / target / "source_archives.json").read_text())
    src = "/var/cache/mlcluster/enroot-pyxis"
    assert [(a["name"], a["dest"]) for a in archives] == [
        ("enroot", f"{src}/enroot"),
        ("enroot_makeself", f"{src}/enroot/deps/makeself"),
        ("enroot_libbsd", f"{src}/enroot/deps/libbsd"),
        ("enroot_musl", f"{src}/enroot/deps/musl"),
        ("enroot_linux_headers", f"{src}/enroot/deps/linux-headers"),
        ("pyxis", f"{src}/pyxis"),
    ]
    for archive in archives:
        commit = pins[archive["name"]]["commit"]
        assert archive["download"]["commit"] == commit
        assert archive["download"]["checksum"] == ""
        assert commit in archive["download"]["url"]
    by_name = {a["name"]: a["download"]["url"] for a in archives}
    assert by_name["enroot"] == (
        "https://github.com/NVIDIA/enroot/archive/4dd13f69358cbc878135354ba3eac78db4a3970f.tar.gz"
    )
    assert by_name["pyxis"] == (
        "https://github.com/NVIDIA/pyxis/archive/e006b893e4b63303da154bf1800076dcd6a64bc9.tar.gz"
    )
    assert by_name["enroot_musl"].startswith("https://git.musl-libc.org/cgit/musl/snapshot/")
    assert by_name["enroot_libbsd"].startswith("https://gitlab.freedesktop.org/libbsd/libbsd/")


def test_enroot_release_packages_win_when_listed(rendered):
    assert (rendered / "ubuntu2204" / "enroot_source_with_packages").read_text() == "packages\n"


def test_source_archives_follow_the_mirror(rendered):
    archives = json.loads((rendered / "ubuntu2204-mirror" / "source_archives.json").read_text())
    assert {a["download"]["url"].split("/mlcluster/", 1)[1].split("/", 1)[0] for a in archives} == {
        "github",
        "freedesktop_gitlab",
        "musl",
    }


# ---- nccl-tests ---------------------------------------------------------------------------------


def test_nccl_tests_are_built_with_the_efa_installers_mpi(rendered):
    rendered_vars = variables(rendered, "ubuntu2204")
    argv = rendered_vars["__nccl_tests_make_argv"]
    assert argv[:4] == ["make", "-j192", "CUDA_HOME=/usr/local/cuda", "NCCL_HOME=/usr"]
    assert argv[-2:] == ["MPI=1", "MPI_HOME=/opt/amazon/openmpi"]
    assert rendered_vars["__nccl_tests_claim"] == {
        "version": "2.17.6",
        "prefix": "/opt/nccl-tests",
        "mpi": True,
        "mpi_home": "/opt/amazon/openmpi",
    }
