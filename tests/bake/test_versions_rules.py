"""The compatibility rules over versions.yml (plugins/filter/versions.py): one test per rule,
each feeding a manifest that breaks it and expecting a clear message."""

from __future__ import annotations

import copy

import pytest

from .conftest import load_plugin

rules = load_plugin("filter", "versions")


@pytest.fixture
def manifest(versions) -> dict:
    """A consistent gpu manifest: the shipped one, with the checksums it still lacks filled in."""
    data = copy.deepcopy(versions)
    for download in data["components"]["enroot_pyxis"]["downloads"].values():
        download["sha256"] = download["sha256"] or "0" * 64
    return data


def errors(manifest: dict, flavor: str = "gpu", **kwargs) -> list[str]:
    return rules.version_errors(manifest, flavor, **kwargs)


def test_consistent_manifest_passes(manifest):
    assert errors(manifest) == []


def test_shipped_manifest_bakes_the_local_flavour(versions):
    assert rules.version_errors(versions, "local") == []


def test_shipped_manifest_names_the_checksums_still_to_be_verified(versions):
    """The shipped versions.yml lacks the enroot/pyxis checksums; the gpu bake says exactly that."""
    found = rules.version_errors(versions, "gpu")
    assert found
    assert all(
        message.startswith("enroot_pyxis.downloads.") and "no sha256" in message
        for message in found
    )


def test_fabric_manager_must_equal_the_driver(manifest):
    manifest["components"]["nvidia_driver"]["fabricmanager"] = "580.82.07"
    assert errors(manifest) == [
        "nvidia_driver: Fabric Manager 580.82.07 differs from the driver 580.95.05; "
        "they must be the same version or nvidia-fabricmanager refuses to start on NVSwitch "
        "systems."
    ]


def test_cuda_needs_its_minimum_driver(manifest):
    manifest["components"]["nvidia_driver"].update(version="570.172.08", fabricmanager="570.172.08")
    assert errors(manifest) == [
        "cuda_toolkit: CUDA 12.9.1 needs NVIDIA driver >= 575.57.08; versions.yml pins 570.172.08. "
        "Raise nvidia_driver.version (and fabricmanager) or lower cuda_toolkit.version."
    ]


def test_cuda_minimum_falls_back_to_the_ga_release(manifest):
    manifest["components"]["cuda_toolkit"]["version"] = "13.0.0"
    assert errors(manifest)[0].startswith("nccl: NCCL 2.29.3 is built for CUDA 12.9")
    manifest["components"]["nvidia_driver"].update(version="575.57.08", fabricmanager="575.57.08")
    assert (
        "cuda_toolkit: CUDA 13.0.0 needs NVIDIA driver >= 580.65.06; versions.yml pins 575.57.08."
        in " ".join(errors(manifest))
    )


def test_unknown_cuda_release_is_not_guessed(manifest):
    manifest["components"]["cuda_toolkit"]["version"] = "12.7.0"
    assert errors(manifest) == [
        "cuda_toolkit: no minimum driver is known for CUDA 12.7.0; add it to CUDA_MIN_DRIVER in "
        "plugins/filter/versions.py from the CUDA release notes."
    ]


def test_nccl_must_be_built_for_the_cuda_major_in_use(manifest):
    manifest["components"]["nccl"]["cuda"] = "13.0"
    assert (
        "nccl: NCCL 2.29.3 is built for CUDA 13.0 but the image has CUDA 12.9.1; "
        "use the NCCL build for CUDA 12.x." in errors(manifest)
    )


def test_nccl_wheel_must_match_the_cuda_build(manifest):
    wheel = manifest["components"]["nccl"]["downloads"]["wheel"]
    wheel["path"] = wheel["path"].replace("nvidia_nccl_cu12", "nvidia_nccl_cu13")
    assert errors(manifest) == [
        "nccl: the wheel nvidia_nccl_cu13-2.29.3-py3-none-manylinux_2_18_x86_64.whl is for CUDA 13 "
        "but nccl.cuda says 12.9."
    ]


def test_aws_ofi_nccl_needs_the_libfabric_it_was_built_for(manifest):
    manifest["components"]["efa"]["bundles"]["libfabric"] = "1.18.1amzn1.0"
    assert errors(manifest) == [
        "aws_ofi_nccl: aws-ofi-nccl 1.14.2 needs libfabric >= 1.22.0; EFA installer 1.41.0 ships "
        "libfabric 1.18.1amzn1.0."
    ]


def test_aws_ofi_nccl_needs_a_recent_enough_nccl(manifest):
    manifest["components"]["aws_ofi_nccl"]["requires"]["nccl"] = "2.30.0"
    assert errors(manifest) == [
        "aws_ofi_nccl: aws-ofi-nccl 1.14.2 needs NCCL >= 2.30.0; versions.yml pins NCCL 2.29.3."
    ]


def test_aws_ofi_nccl_is_bundled_or_buildable(manifest):
    ofi = manifest["components"]["aws_ofi_nccl"]
    ofi["version"] = "1.16.0"
    del ofi["downloads"]
    assert errors(manifest) == [
        "aws_ofi_nccl: version 1.16.0 is not the one EFA installer 1.41.0 bundles (1.14.2) and no "
        "source download is given to build it."
    ]


def test_aws_ofi_nccl_needs_efa_in_the_flavour(manifest):
    manifest["flavors"]["gpu"].remove("efa")
    assert (
        "aws_ofi_nccl: the plugin needs libfabric from the efa component, which this flavour lacks."
        in errors(manifest)
    )


def test_every_download_has_a_sha256(manifest):
    manifest["components"]["efa"]["downloads"]["installer"]["sha256"] = None
    assert errors(manifest) == [
        "efa.downloads.installer: no sha256; fill it in versions.yml (sha256sum of "
        "https://efa-installer.amazonaws.com/aws-efa-installer-1.41.0.tar.gz)."
    ]


def test_a_sha256_is_64_hex_digits(manifest):
    manifest["components"]["gdrcopy"]["downloads"]["source"]["sha256"] = "C6D5EBB7"
    assert errors(manifest) == [
        "gdrcopy.downloads.source: sha256 'C6D5EBB7' is not 64 lower-case hex digits."
    ]


def test_downloads_derive_from_a_mirrorable_source(manifest):
    manifest["components"]["nccl"]["downloads"]["tests"] = {
        "url": "https://github.com/NVIDIA/nccl-tests/archive/v2.17.6.tar.gz",
        "sha256": "0" * 64,
    }
    assert errors(manifest) == [
        "nccl.downloads.tests: give `source` and `path` instead of `url`, so that "
        "mlcluster_mirror_base can redirect the download to a site mirror."
    ]


def test_download_sources_must_be_known(manifest):
    manifest["components"]["efa"]["downloads"]["installer"]["source"] = "s3"
    assert errors(manifest) == [
        "efa.downloads.installer: source 's3' is not one of the sources in versions.yml "
        "(efa, fsx_lustre, fsx_lustre_keys, github, neuron_apt, neuron_yum, nvidia, "
        "nvidia_container, pypi)."
    ]


def test_download_paths_are_relative_to_their_source(manifest):
    manifest["components"]["efa"]["downloads"]["installer"]["path"] = "https://example.com/efa.tgz"
    assert errors(manifest) == [
        "efa.downloads.installer: `path` must be a path below its source, not 'https://example.com/efa.tgz'."
    ]


def test_mirror_base_must_be_a_url(manifest):
    assert errors(manifest, mirror_base="mirror.internal/ml") == [
        "mlcluster_mirror_base 'mirror.internal/ml' must be an http:// or https:// URL."
    ]


def test_flavour_components_need_an_entry(manifest):
    del manifest["components"]["dcgm"]
    assert errors(manifest) == [
        "dcgm: the flavour gpu contains it but versions.yml has no components.dcgm entry."
    ]


def test_unknown_flavour(manifest):
    assert errors(manifest, "tpu") == [
        "unknown image flavour 'tpu'; versions.yml defines cpu, gpu, local, neuron"
    ]


def test_rules_only_judge_what_the_flavour_contains(manifest):
    """A broken NVIDIA pairing does not block a CPU image."""
    manifest["components"]["nvidia_driver"]["fabricmanager"] = "1.0"
    assert errors(manifest, "cpu") == []


def test_download_resolves_to_upstream_url_and_checksum(versions):
    assert rules.download(versions, "efa", "installer") == {
        "url": "https://efa-installer.amazonaws.com/aws-efa-installer-1.41.0.tar.gz",
        "sha256": "3506354cdfbe31ff552fe75f5d0d9bb7efd29cf79bd99457347d29c751c38f9f",
        "checksum": "sha256:3506354cdfbe31ff552fe75f5d0d9bb7efd29cf79bd99457347d29c751c38f9f",
        "filename": "aws-efa-installer-1.41.0.tar.gz",
    }


def test_download_and_repositories_follow_the_mirror_base(versions):
    mirror = "http://mirror.internal/ml/"
    assert rules.download(versions, "nccl", "tests", mirror)["url"] == (
        "http://mirror.internal/ml/github/NVIDIA/nccl-tests/archive/v2.17.6.tar.gz"
    )
    assert rules.source_url(versions, "nvidia", mirror) == "http://mirror.internal/ml/nvidia"
    assert rules.source_url(versions, "nvidia") == "https://developer.download.nvidia.com"


def test_unknown_download_is_an_error(versions):
    with pytest.raises(ValueError, match=r"versions\.yml has no download efa\.downloads\.rpm"):
        rules.download(versions, "efa", "rpm")


def test_version_tuple():
    assert rules.version_tuple("2.1.0amzn2.0") == (2, 1, 0)
    assert rules.version_tuple("1:4.2.3-1") == (4, 2, 3)
    assert rules.version_tuple("580.95.05") == (580, 95, 5)
    assert rules.version_tuple("n/a") == ()
