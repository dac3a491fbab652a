"""The shipped versions.yml against the compatibility rules (plugins/filter/versions.py): every
image flavour passes them, and its downloads resolve to the upstream or mirror URL. Each rule's
own firing test is in the fast suite: tests/unit/plugins/filter/test_versions.py."""

from __future__ import annotations

import pytest
import yaml

from mlcluster.paths import load_plugin

from .conftest import ROOT

rules = load_plugin("filter", "versions")


def _flavors() -> list[str]:
    return list(
        yaml.safe_load((ROOT / "versions.yml").read_text())["mlcluster_versions"]["flavors"]
    )


@pytest.mark.parametrize("flavor", _flavors())
def test_shipped_manifest_passes_every_rule(versions, flavor):
    assert rules.version_errors(versions, flavor) == []


def test_download_resolves_to_upstream_url_and_checksum(versions):
    assert rules.download(versions, "efa", "installer") == {
        "url": "https://efa-installer.amazonaws.com/aws-efa-installer-1.41.0.tar.gz",
        "sha256": "3506354cdfbe31ff552fe75f5d0d9bb7efd29cf79bd99457347d29c751c38f9f",
        "checksum": "sha256:3506354cdfbe31ff552fe75f5d0d9bb7efd29cf79bd99457347d29c751c38f9f",
        "commit": "",
        "filename": "aws-efa-installer-1.41.0.tar.gz",
    }


def test_download_and_repositories_follow_the_mirror_base(versions):
    mirror = "http://mirror.internal/ml/"
    assert rules.download(versions, "nccl", "tests", mirror)["url"] == (
        "http://mirror.internal/ml/github/NVIDIA/nccl-tests/archive/v2.17.6.tar.gz"
    )
    assert rules.source_url(versions, "nvidia", mirror) == "http://mirror.internal/ml/nvidia"
    assert rules.source_url(versions, "nvidia") == "https://developer.download.nvidia.com"
