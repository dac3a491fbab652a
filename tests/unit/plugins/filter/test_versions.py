"""Every compatibility rule of plugins/filter/versions.py (version_errors) fires, with its exact
message, on a small manifest written here that breaks it; the rules' edges (equal versions, a
GA release, components outside the flavour) pass. The shipped versions.yml is checked by
tests/bake/test_versions_rules.py."""

from __future__ import annotations

import copy

import pytest

from mlcluster.paths import load_plugin

versions = load_plugin("filter", "versions")

SHA = "a" * 64
COMMIT = "0123456789abcdef0123456789abcdef01234567"
MANIFEST = {
    "sources": {
        "efa": "https://efa-installer.amazonaws.com",
        "github": "https://github.com/",
        "pypi": "https://files.pythonhosted.org/packages",
    },
    "operating_systems": {"ubuntu2204": "Ubuntu 22", "al2023": "Amazon 2023"},
    "platforms": {
        "gpu": {"target": "ami", "os": ["ubuntu2204", "al2023"]},
        "cpu": {"target": "local", "os": ["ubuntu2204"]},
    },
    "flavors": {
        "gpu": [
            "tuning",
            "nvidia_driver",
            "cuda_toolkit",
            "nccl",
            "efa",
            "aws_ofi_nccl",
            "gdrcopy",
        ],
        "cpu": ["tuning", "efa"],
    },
    "components": {
        "nvidia_driver": {"version": "580.95.05", "fabricmanager": "580.95.05"},
        "cuda_toolkit": {"version": "12.9.1"},
        "nccl": {
            "version": "2.27.7",
            "cuda": "12.9",
            "downloads": {
                "wheel": {
                    "source": "pypi",
                    "path": "ab/cd/nvidia_nccl_cu12-2.27.7-py3-none-manylinux2014_x86_64.whl",
                    "sha256": SHA,
                }
            },
        },
        "efa": {
            "version": "1.41.0",
            "bundles": {"libfabric": "2.1.0amzn3.0", "aws_ofi_nccl": "1.14.2"},
            "downloads": {
                "installer": {
                    "source": "efa",
                    "path": "aws-efa-installer-1.41.0.tar.gz",
                    "sha256": SHA,
                }
            },
        },
        "aws_ofi_nccl": {
            "version": "1.14.2",
            "requires": {"libfabric": "1.22.0", "nccl": "2.19.0"},
        },
        "gdrcopy": {
            "version": "2.5.1",
            "downloads": {
                "source": {
                    "source": "github",
                    "path": f"NVIDIA/gdrcopy/archive/{COMMIT}.tar.gz",
                    "commit": COMMIT,
                }
            },
        },
    },
}


@pytest.fixture
def manifest() -> dict:
    return copy.deepcopy(MANIFEST)


def errors(manifest: dict, flavor: str = "gpu", **kwargs) -> list[str]:
    return versions.version_errors(manifest, flavor, **kwargs)


def comps(manifest: dict) -> dict:
    return manifest["components"]


def test_a_consistent_manifest_passes(manifest):
    assert errors(manifest) == []
    assert errors(manifest, "cpu") == []
    assert errors(manifest, mirror_base="https://mirror.internal/ml") == []


# ---- flavour, platform, mirror ------------------------------------------------------------------


def test_unknown_flavour(manifest):
    assert errors(manifest, "tpu") == ["unknown image flavour 'tpu'; versions.yml defines cpu, gpu"]


def test_flavour_components_need_an_entry_except_the_versionless(manifest):
    del comps(manifest)["gdrcopy"]
    manifest["flavors"]["gpu"].append("cuda_samples")
    assert errors(manifest) == [
        "cuda_samples: the flavour gpu contains it but versions.yml has no components.cuda_samples"
        " entry.",
        "gdrcopy: the flavour gpu contains it but versions.yml has no components.gdrcopy entry.",
    ]


@pytest.mark.parametrize("mirror", ["mirror.internal/ml", "ftp://mirror.internal/ml", "https://"])
def test_mirror_base_must_be_an_http_url(manifest, mirror):
    assert errors(manifest, mirror_base=mirror) == [
        f"mlcluster_mirror_base {mirror!r} must be an http:// or https:// URL."
    ]


def test_a_flavour_needs_a_platform(manifest):
    del manifest["platforms"]["gpu"]
    assert errors(manifest) == [
        "platforms: the flavour gpu has no platform (target and operating systems) in versions.yml."
    ]


def test_platform_target_and_operating_systems_must_be_known(manifest):
    manifest["platforms"]["gpu"] = {"target": "azure", "os": ["ubuntu2204", "rocky9"]}
    assert errors(manifest) == [
        "platforms.gpu: target 'azure' is not one of ami, local.",
        "platforms.gpu: operating system 'rocky9' is not one of operating_systems "
        "(al2023, ubuntu2204).",
    ]


def test_platform_needs_an_operating_system(manifest):
    manifest["platforms"]["gpu"]["os"] = []
    assert errors(manifest) == ["platforms.gpu: no operating system to bake it on."]


def test_flavor_platforms(manifest):
    assert versions.flavor_platforms(manifest, "gpu") == ["Ubuntu 22", "Amazon 2023"]
    with pytest.raises(ValueError, match="no platform for the image flavour 'tpu'"):
        versions.flavor_platforms(manifest, "tpu")


# ---- NVIDIA driver, Fabric Manager, CUDA -------------------------------------------------------


def test_fabric_manager_must_equal_the_driver(manifest):
    comps(manifest)["nvidia_driver"]["fabricmanager"] = "580.82.07"
    assert errors(manifest) == [
        "nvidia_driver: Fabric Manager 580.82.07 differs from the driver 580.95.05; they must be "
        "the same version or nvidia-fabricmanager refuses to start on NVSwitch systems."
    ]


def test_fabric_manager_may_be_left_out(manifest):
    del comps(manifest)["nvidia_driver"]["fabricmanager"]
    assert errors(manifest) == []


def test_cuda_needs_its_minimum_driver(manifest):
    comps(manifest)["nvidia_driver"].update(version="575.57.07", fabricmanager="575.57.07")
    assert errors(manifest) == [
        "cuda_toolkit: CUDA 12.9.1 needs NVIDIA driver >= 575.57.08; versions.yml pins 575.57.07. "
        "Raise nvidia_driver.version (and fabricmanager) or lower cuda_toolkit.version."
    ]


def test_the_minimum_driver_itself_is_enough(manifest):
    comps(manifest)["nvidia_driver"].update(version="575.57.08", fabricmanager="575.57.08")
    assert errors(manifest) == []


def test_cuda_minimum_falls_back_to_the_ga_release(manifest):
    """12.9.2 is not in the table: the 12.9 GA release's minimum (575.51.03) applies."""
    comps(manifest)["cuda_toolkit"]["version"] = "12.9.2"
    comps(manifest)["nvidia_driver"].update(version="575.51.02", fabricmanager="575.51.02")
    assert errors(manifest) == [
        "cuda_toolkit: CUDA 12.9.2 needs NVIDIA driver >= 575.51.03; versions.yml pins 575.51.02. "
        "Raise nvidia_driver.version (and fabricmanager) or lower cuda_toolkit.version."
    ]
    comps(manifest)["nvidia_driver"].update(version="575.51.03", fabricmanager="575.51.03")
    assert errors(manifest) == []


def test_a_flavour_of_only_driver_and_cuda_is_checked(manifest):
    manifest["flavors"]["cuda"] = ["nvidia_driver", "cuda_toolkit"]
    manifest["platforms"]["cuda"] = {"target": "ami", "os": ["al2023"]}
    comps(manifest)["nvidia_driver"].update(version="570.0.0", fabricmanager="570.0.0")
    assert errors(manifest, "cuda") == [
        "cuda_toolkit: CUDA 12.9.1 needs NVIDIA driver >= 575.57.08; versions.yml pins 570.0.0. "
        "Raise nvidia_driver.version (and fabricmanager) or lower cuda_toolkit.version."
    ]


def test_unknown_cuda_release_is_not_guessed(manifest):
    comps(manifest)["cuda_toolkit"]["version"] = "12.7.0"
    assert errors(manifest) == [
        "cuda_toolkit: no minimum driver is known for CUDA 12.7.0; add it to CUDA_MIN_DRIVER in "
        "plugins/filter/versions.py from the CUDA release notes."
    ]


# ---- NCCL -------------------------------------------------------------------------------------


def test_nccl_must_be_built_for_the_cuda_major_in_use(manifest):
    comps(manifest)["cuda_toolkit"]["version"] = "13.0.2"
    assert errors(manifest) == [
        "nccl: NCCL 2.27.7 is built for CUDA 12.9 but the image has CUDA 13.0.2; "
        "use the NCCL build for CUDA 13.x."
    ]


def test_nccl_wheel_must_match_the_cuda_build(manifest):
    wheel = comps(manifest)["nccl"]["downloads"]["wheel"]
    wheel["path"] = wheel["path"].replace("nvidia_nccl_cu12", "nvidia_nccl_cu13")
    assert errors(manifest) == [
        "nccl: the wheel nvidia_nccl_cu13-2.27.7-py3-none-manylinux2014_x86_64.whl is for CUDA 13 "
        "but nccl.cuda says 12.9."
    ]


def test_nccl_wheel_must_name_the_nccl_version(manifest):
    wheel = comps(manifest)["nccl"]["downloads"]["wheel"]
    wheel["path"] = wheel["path"].replace("2.27.7", "2.28.3")
    assert errors(manifest) == ["nccl: the wheel path does not name NCCL 2.27.7."]


def test_nccl_without_cuda_in_the_flavour_checks_only_its_wheel(manifest):
    manifest["flavors"]["gpu"].remove("cuda_toolkit")
    comps(manifest)["nccl"]["cuda"] = "13.0"
    assert errors(manifest) == [
        "nccl: the wheel nvidia_nccl_cu12-2.27.7-py3-none-manylinux2014_x86_64.whl is for CUDA 12 "
        "but nccl.cuda says 13.0."
    ]


# ---- aws-ofi-nccl -----------------------------------------------------------------------------


def test_aws_ofi_nccl_needs_the_libfabric_it_was_built_for(manifest):
    comps(manifest)["efa"]["bundles"]["libfabric"] = "1.21.9amzn1.0"
    assert errors(manifest) == [
        "aws_ofi_nccl: aws-ofi-nccl 1.14.2 needs libfabric >= 1.22.0; EFA installer 1.41.0 ships "
        "libfabric 1.21.9amzn1.0."
    ]
    comps(manifest)["efa"]["bundles"]["libfabric"] = "1.22.0amzn1.0"
    assert errors(manifest) == []


def test_aws_ofi_nccl_needs_a_recent_enough_nccl(manifest):
    comps(manifest)["aws_ofi_nccl"]["requires"]["nccl"] = "2.27.8"
    assert errors(manifest) == [
        "aws_ofi_nccl: aws-ofi-nccl 1.14.2 needs NCCL >= 2.27.8; versions.yml pins NCCL 2.27.7."
    ]
    comps(manifest)["aws_ofi_nccl"]["requires"]["nccl"] = "2.27.7"
    assert errors(manifest) == []


def test_aws_ofi_nccl_is_bundled_or_buildable(manifest):
    comps(manifest)["aws_ofi_nccl"]["version"] = "1.16.0"
    assert errors(manifest) == [
        "aws_ofi_nccl: version 1.16.0 is not the one EFA installer 1.41.0 bundles (1.14.2) and no "
        "source download is given to build it."
    ]
    comps(manifest)["aws_ofi_nccl"]["downloads"] = {
        "source": {
            "source": "github",
            "path": "aws/aws-ofi-nccl/archive/v1.16.0.tar.gz",
            "sha256": SHA,
        }
    }
    assert errors(manifest) == []


def test_aws_ofi_nccl_nccl_requirement_only_where_the_flavour_has_nccl(manifest):
    manifest["flavors"]["gpu"].remove("nccl")
    comps(manifest)["aws_ofi_nccl"]["requires"]["nccl"] = "2.30.0"
    assert errors(manifest) == []


def test_aws_ofi_nccl_needs_efa_in_the_flavour(manifest):
    manifest["flavors"]["gpu"].remove("efa")
    assert errors(manifest) == [
        "aws_ofi_nccl: the plugin needs libfabric from the efa component, which this flavour lacks."
    ]


def test_rules_only_judge_what_the_flavour_contains(manifest):
    """A broken NVIDIA or aws-ofi-nccl pairing does not block a CPU image."""
    comps(manifest)["nvidia_driver"]["fabricmanager"] = "1.0"
    comps(manifest)["cuda_toolkit"]["version"] = "12.7.0"
    comps(manifest)["nccl"]["cuda"] = "11.8"
    comps(manifest)["aws_ofi_nccl"]["version"] = "9.9.9"
    comps(manifest)["gdrcopy"]["downloads"]["source"]["commit"] = "main"
    assert errors(manifest, "cpu") == []


# ---- downloads --------------------------------------------------------------------------------


def _installer(manifest: dict) -> dict:
    return comps(manifest)["efa"]["downloads"]["installer"]


def test_a_download_without_sha256_or_commit(manifest):
    _installer(manifest)["sha256"] = None
    assert errors(manifest) == [
        "efa.downloads.installer: no sha256; fill it in versions.yml (sha256sum of "
        "https://efa-installer.amazonaws.com/aws-efa-installer-1.41.0.tar.gz), or pin a source "
        "archive by its 40-hex `commit`."
    ]


@pytest.mark.parametrize("sha", ["C6D5EBB7", "A" * 64, "a" * 63, "g" * 64])
def test_a_sha256_is_64_lower_case_hex_digits(manifest, sha):
    _installer(manifest)["sha256"] = sha
    assert errors(manifest) == [
        f"efa.downloads.installer: sha256 {sha!r} is not 64 lower-case hex digits."
    ]


@pytest.mark.parametrize("commit", ["v2.5.1", COMMIT[:39], COMMIT.upper()])
def test_a_commit_is_a_full_commit_id(manifest, commit):
    comps(manifest)["gdrcopy"]["downloads"]["source"]["commit"] = commit
    assert errors(manifest) == [
        f"gdrcopy.downloads.source: commit {commit!r} is not a full commit id (40 lower-case hex "
        "digits); a tag or branch can move."
    ]


def test_the_path_names_the_pinned_commit(manifest):
    comps(manifest)["gdrcopy"]["downloads"]["source"]["path"] = (
        "NVIDIA/gdrcopy/archive/v2.5.1.tar.gz"
    )
    assert errors(manifest) == [
        f"gdrcopy.downloads.source: the path does not name commit {COMMIT}; download the archive "
        "of that commit (<org>/<repo>/archive/<commit>.tar.gz), not of a tag."
    ]


def test_downloads_derive_from_a_mirrorable_source(manifest):
    comps(manifest)["efa"]["downloads"]["installer"] = {
        "url": "https://efa-installer.amazonaws.com/aws-efa-installer-1.41.0.tar.gz",
        "sha256": SHA,
    }
    assert errors(manifest) == [
        "efa.downloads.installer: give `source` and `path` instead of `url`, so that "
        "mlcluster_mirror_base can redirect the download to a site mirror."
    ]


def test_download_sources_must_be_known(manifest):
    _installer(manifest)["source"] = "s3"
    assert errors(manifest) == [
        "efa.downloads.installer: source 's3' is not one of the sources in versions.yml "
        "(efa, github, pypi)."
    ]


@pytest.mark.parametrize("path", ["", "https://example.com/efa.tgz"])
def test_download_paths_are_relative_to_their_source(manifest, path):
    _installer(manifest)["path"] = path
    assert errors(manifest) == [
        f"efa.downloads.installer: `path` must be a path below its source, not {path!r}."
    ]


def test_every_broken_rule_is_reported_at_once(manifest):
    comps(manifest)["nvidia_driver"]["fabricmanager"] = "1.0"
    _installer(manifest)["source"] = "s3"
    assert [message.split(":")[0] for message in errors(manifest, mirror_base="x")] == [
        "mlcluster_mirror_base 'x' must be an http",
        "nvidia_driver",
        "efa.downloads.installer",
    ]


# ---- companions -------------------------------------------------------------------------------


def test_download_resolves_url_checksum_commit_and_filename(manifest):
    assert versions.download(manifest, "efa", "installer") == {
        "url": "https://efa-installer.amazonaws.com/aws-efa-installer-1.41.0.tar.gz",
        "sha256": SHA,
        "checksum": f"sha256:{SHA}",
        "commit": "",
        "filename": "aws-efa-installer-1.41.0.tar.gz",
    }
    assert versions.download(manifest, "gdrcopy", "source", "http://mirror.internal/ml/") == {
        "url": f"http://mirror.internal/ml/github/NVIDIA/gdrcopy/archive/{COMMIT}.tar.gz",
        "sha256": None,
        "checksum": "",
        "commit": COMMIT,
        "filename": f"{COMMIT}.tar.gz",
    }


def test_source_url_and_its_errors(manifest):
    assert versions.source_url(manifest, "github") == "https://github.com"
    assert versions.source_url(manifest, "github", "https://m/ml/") == "https://m/ml/github"
    with pytest.raises(
        ValueError, match=r"unknown download source 's3'; versions\.yml defines efa"
    ):
        versions.source_url(manifest, "s3")
    with pytest.raises(ValueError, match=r"has no download efa\.downloads\.rpm"):
        versions.download(manifest, "efa", "rpm")


def test_flavor_components_in_install_order(manifest):
    assert versions.flavor_components(manifest, "cpu") == ["tuning", "efa"]


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("2.1.0amzn2.0", (2, 1, 0)),
        ("1:4.2.3-1", (4, 2, 3)),
        ("580.95.05", (580, 95, 5)),
        ("n/a", ()),
        # only the epoch is cut off
        ("1:2:3.0", (2,)),
    ],
)
def test_version_tuple(text, parts):
    assert versions.version_tuple(text) == parts


def test_the_filters_are_registered():
    assert sorted(versions.FilterModule().filters()) == [
        "download",
        "eks_version_errors",
        "flavor_components",
        "flavor_platforms",
        "source_url",
        "version_errors",
    ]


def test_dcgm_exporter_is_the_eks_charts_release(manifest):
    manifest["flavors"]["gpu"].append("dcgm")
    comps(manifest)["dcgm"] = {"version": "4.2.3", "exporter": "4.1.1"}
    manifest["eks"] = {"dcgm_exporter": {"chart": "dcgm-exporter", "version": "4.1.1"}}
    assert errors(manifest) == []
    manifest["eks"]["dcgm_exporter"]["version"] = "4.2.0"
    assert errors(manifest) == [
        "dcgm: exporter 4.1.1 is not the release of the EKS add-on's chart "
        "(eks.dcgm_exporter 4.2.0); Slurm and EKS nodes would export different fields."
    ]
    del comps(manifest)["dcgm"]["exporter"]
    assert errors(manifest) == [
        "dcgm: no `exporter` release (the dcgm-exporter package the image installs)."
    ]
    # Outside the flavour nothing is asked of it.
    manifest["flavors"]["gpu"].remove("dcgm")
    assert errors(manifest) == []


def test_the_neuron_schedulers_kube_scheduler_is_of_the_clusters_minor_version():
    eks = {"kubernetes": "1.33", "kube_scheduler": {"image": "k", "version": "v1.33.1"}}
    assert versions.eks_version_errors({"eks": eks}) == []
    # Another patch release of the same minor is fine; another minor, older or newer, is not.
    eks["kube_scheduler"]["version"] = "v1.33.7"
    assert versions.eks_version_errors({"eks": eks}) == []
    for other in ("v1.34.0", "v1.32.5", "1.3.3"):
        eks["kube_scheduler"]["version"] = other
        assert versions.eks_version_errors({"eks": eks}) == [
            f"eks: kube_scheduler {other} is not of Kubernetes 1.33 (eks.kubernetes); the Neuron "
            "scheduler's kube-scheduler must be the cluster's minor version."
        ]
    # No scheduler pinned (or no eks section): nothing to compare.
    del eks["kube_scheduler"]
    assert versions.eks_version_errors({"eks": eks}) == []
    assert versions.eks_version_errors({}) == []
