"""Filters over versions.yml: compatibility rules, download URLs, flavour contents."""

from __future__ import annotations

import re

DOCUMENTATION = r"""
name: version_errors
author: mlcluster developers
short_description: Check the version manifest (versions.yml) for combinations that cannot work
description:
  - Applies the compatibility rules to the C(mlcluster_versions) manifest for one image
    flavour and returns one clear message per broken rule; an empty list means the
    combination may be baked.
  - "Rules: Fabric Manager has exactly the driver's version; the driver is at least the
    minimum the CUDA toolkit needs; NCCL is built for the CUDA major version in use; the
    aws-ofi-nccl plugin gets the libfabric and NCCL versions it needs and is either the one the
    EFA installer bundles or buildable from source; every download of the flavour names a
    known source, a path and either a sha256 or, for a source archive built from a pinned
    commit, a 40-hex C(commit) that its path names; the flavour has a platform (target and
    known operating systems) in C(platforms); the mirror base is an http(s) URL."
  - Companion filters in this file are C(download) (resolve a download to URL, checksum and
    commit), C(source_url) (resolve a repository base), C(flavor_components) and
    C(flavor_platforms) (the distribution and major version of each OS a flavour is built on),
    and C(eks_version_errors) (the EKS add-ons' pins, which no image contains; the Neuron
    scheduler's kube-scheduler is of the minor version C(eks.kubernetes) pins).
positional: _input, flavor
options:
  _input:
    description: The C(mlcluster_versions) dictionary from versions.yml.
    type: dict
    required: true
  flavor:
    description: Image flavour (a key of C(flavors)).
    type: str
    required: true
  mirror_base:
    description: Value of C(mlcluster_mirror_base); empty for the upstream sources.
    type: str
    default: ""
"""

EXAMPLES = r"""
- name: Check the version manifest before anything is installed
  ansible.builtin.assert:
    that: __errors | length == 0
    fail_msg: "{{ __errors | join('\n') }}"
  vars:
    __errors: >-
      {{ mlcluster_versions | mlcluster.core.version_errors('gpu',
         mirror_base=mlcluster_mirror_base | default('')) }}

- name: Check the EKS add-ons' pins before anything is applied
  ansible.builtin.assert:
    that: mlcluster_versions | mlcluster.core.eks_version_errors | length == 0
    fail_msg: "{{ mlcluster_versions | mlcluster.core.eks_version_errors | join('\n') }}"

- name: Download the EFA installer with its checksum
  ansible.builtin.get_url:
    url: "{{ __dl.url }}"
    checksum: "{{ __dl.checksum }}"
    dest: "/var/cache/mlcluster/{{ __dl.filename }}"
    mode: "0644"
  vars:
    __dl: >-
      {{ mlcluster_versions | mlcluster.core.download('efa', 'installer',
         mlcluster_mirror_base | default('')) }}
"""

RETURN = r"""
_value:
  description: >-
    One message per broken rule (version_errors, eks_version_errors); empty when the manifest
    is consistent.
  type: list
  elements: str
"""

# Minimum Linux x86_64 driver for each CUDA toolkit release ("CUDA Toolkit and Corresponding
# Driver Versions", CUDA release notes). A full version (12.9.1) is looked up first, then its
# major.minor GA release. Minor-version compatibility would accept older drivers for some
# features; an image pins the toolkit's own driver so that everything in it works.
CUDA_MIN_DRIVER = {
    "11.8": "520.61.05",
    "12.0": "525.60.13",
    "12.0.1": "525.85.12",
    "12.1": "530.30.02",
    "12.2": "535.54.03",
    "12.2.1": "535.86.09",
    "12.2.2": "535.104.05",
    "12.3": "545.23.06",
    "12.3.1": "545.23.08",
    "12.4": "550.54.14",
    "12.4.1": "550.54.15",
    "12.5": "555.42.02",
    "12.5.1": "555.42.06",
    "12.6": "560.28.03",
    "12.6.1": "560.35.03",
    "12.6.2": "560.35.03",
    "12.6.3": "560.35.05",
    "12.8": "570.26",
    "12.8.1": "570.124.06",
    "12.9": "575.51.03",
    "12.9.1": "575.57.08",
    "13.0": "580.65.06",
    "13.0.1": "580.82.07",
    "13.0.2": "580.95.05",
}

# Components that need no entry under `components` (nothing to pin): eks_node's containerd is
# the distribution's, and the Kubernetes version of an EKS image is `eks.kubernetes`.
VERSIONLESS = frozenset({"tuning", "eks_node"})

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
# How a flavour is baked: Packer on EC2 (packer/ami) or the local cluster's podman image.
TARGETS = ("ami", "local")
_WHEEL_CUDA = re.compile(r"nvidia_nccl_cu(\d+)-")


def version_tuple(value) -> tuple[int, ...]:
    """Leading numeric part of a version: '2.1.0amzn2.0' -> (2, 1, 0), '1:4.2.3-1' -> (4, 2, 3)."""
    text = str(value).split(":", 1)[-1]
    match = re.match(r"\d+(?:\.\d+)*", text)
    if not match:
        return ()
    return tuple(int(part) for part in match.group(0).split("."))


def _major(value) -> int | None:
    parts = version_tuple(value)
    return parts[0] if parts else None


def _components(versions: dict) -> dict:
    return versions.get("components") or {}


def flavor_components(versions: dict, flavor: str) -> list[str]:
    """Components an image flavour contains, in install order."""
    flavors = versions.get("flavors") or {}
    if flavor not in flavors:
        raise ValueError(
            f"unknown image flavour {flavor!r}; versions.yml defines {', '.join(sorted(flavors))}"
        )
    return list(flavors[flavor])


def flavor_platforms(versions: dict, flavor: str) -> list[str]:
    """'<Distribution> <major version>' of each operating system a flavour is built on, as the
    bake preflight compares them with the node's facts ('Ubuntu 22')."""
    platform = (versions.get("platforms") or {}).get(flavor)
    if not platform:
        raise ValueError(f"versions.yml has no platform for the image flavour {flavor!r}")
    names = versions.get("operating_systems") or {}
    return [str(names.get(os_name, os_name)) for os_name in platform.get("os") or []]


def source_url(versions: dict, source: str, mirror_base: str = "") -> str:
    """Base URL of a download source or package repository, honouring the site mirror."""
    sources = versions.get("sources") or {}
    if source not in sources:
        raise ValueError(
            f"unknown download source {source!r}; versions.yml defines {', '.join(sorted(sources))}"
        )
    if mirror_base:
        return f"{mirror_base.rstrip('/')}/{source}"
    return str(sources[source]).rstrip("/")


def download(versions: dict, component: str, name: str, mirror_base: str = "") -> dict:
    """Resolve components.<component>.downloads.<name> to url, sha256, checksum, commit (the
    source commit a commit-pinned archive must carry, else empty) and filename."""
    entry = ((_components(versions).get(component) or {}).get("downloads") or {}).get(name)
    if entry is None:
        raise ValueError(f"versions.yml has no download {component}.downloads.{name}")
    url = f"{source_url(versions, entry['source'], mirror_base)}/{str(entry['path']).lstrip('/')}"
    sha256 = entry.get("sha256")
    return {
        "url": url,
        "sha256": sha256,
        "checksum": f"sha256:{sha256}" if sha256 else "",
        "commit": str(entry.get("commit") or ""),
        "filename": url.rsplit("/", 1)[-1],
    }


def _rule_fabricmanager(comps: dict, present: set) -> list[str]:
    if "nvidia_driver" not in present:
        return []
    driver = comps.get("nvidia_driver") or {}
    fm = driver.get("fabricmanager")
    if fm is not None and str(fm) != str(driver.get("version")):
        return [
            f"nvidia_driver: Fabric Manager {fm} differs from the driver {driver.get('version')}; "
            "they must be the same version or nvidia-fabricmanager refuses to start on NVSwitch "
            "systems."
        ]
    return []


def _rule_cuda_driver(comps: dict, present: set) -> list[str]:
    if not {"nvidia_driver", "cuda_toolkit"} <= present:
        return []
    cuda = str((comps.get("cuda_toolkit") or {}).get("version"))
    driver = str((comps.get("nvidia_driver") or {}).get("version"))
    parts = cuda.split(".")
    minimum = CUDA_MIN_DRIVER.get(cuda) or CUDA_MIN_DRIVER.get(".".join(parts[:2]))
    if minimum is None:
        return [
            f"cuda_toolkit: no minimum driver is known for CUDA {cuda}; add it to CUDA_MIN_DRIVER "
            "in plugins/filter/versions.py from the CUDA release notes."
        ]
    if version_tuple(driver) < version_tuple(minimum):
        return [
            f"cuda_toolkit: CUDA {cuda} needs NVIDIA driver >= {minimum}; "
            f"versions.yml pins {driver}. "
            "Raise nvidia_driver.version (and fabricmanager) or lower cuda_toolkit.version."
        ]
    return []


def _rule_nccl_cuda(comps: dict, present: set) -> list[str]:
    if "nccl" not in present:
        return []
    nccl = comps.get("nccl") or {}
    built_for = _major(nccl.get("cuda"))
    errors = []
    if "cuda_toolkit" in present:
        cuda = (comps.get("cuda_toolkit") or {}).get("version")
        if built_for != _major(cuda):
            errors.append(
                f"nccl: NCCL {nccl.get('version')} is built for CUDA {nccl.get('cuda')} "
                f"but the image has CUDA {cuda}; use the NCCL build for CUDA {_major(cuda)}.x."
            )
    wheel = (nccl.get("downloads") or {}).get("wheel")
    if wheel:
        match = _WHEEL_CUDA.search(str(wheel.get("path", "")))
        if match and int(match.group(1)) != built_for:
            filename = str(wheel["path"]).rsplit("/", 1)[-1]
            errors.append(
                f"nccl: the wheel {filename} is for CUDA {match.group(1)} "
                f"but nccl.cuda says {nccl.get('cuda')}."
            )
        if str(nccl.get("version")) not in str(wheel.get("path", "")):
            errors.append(f"nccl: the wheel path does not name NCCL {nccl.get('version')}.")
    return errors


def _rule_ofi_nccl(comps: dict, present: set) -> list[str]:
    if "aws_ofi_nccl" not in present:
        return []
    ofi = comps.get("aws_ofi_nccl") or {}
    requires = ofi.get("requires") or {}
    efa = comps.get("efa") or {}
    bundles = efa.get("bundles") or {}
    plugin = f"aws_ofi_nccl: aws-ofi-nccl {ofi.get('version')}"
    libfabric, needs_libfabric = bundles.get("libfabric"), requires.get("libfabric")
    errors = []
    if "efa" not in present:
        errors.append(
            "aws_ofi_nccl: the plugin needs libfabric from the efa component, "
            "which this flavour lacks."
        )
    elif (
        needs_libfabric and libfabric and version_tuple(libfabric) < version_tuple(needs_libfabric)
    ):
        errors.append(
            f"{plugin} needs libfabric >= {needs_libfabric}; "
            f"EFA installer {efa.get('version')} ships libfabric {libfabric}."
        )
    if "nccl" in present and requires.get("nccl"):
        nccl_version = (comps.get("nccl") or {}).get("version")
        if version_tuple(nccl_version) < version_tuple(requires["nccl"]):
            errors.append(
                f"{plugin} needs NCCL >= {requires['nccl']}; versions.yml pins NCCL {nccl_version}."
            )
    bundled = bundles.get("aws_ofi_nccl")
    buildable = "source" in (ofi.get("downloads") or {})
    if str(ofi.get("version")) != str(bundled) and not buildable:
        errors.append(
            f"aws_ofi_nccl: version {ofi.get('version')} is not the one "
            f"EFA installer {efa.get('version')} bundles ({bundled}) "
            "and no source download is given to build it."
        )
    return errors


def _rule_dcgm_exporter(versions: dict, present: set) -> list[str]:
    """The image's dcgm-exporter is the release the EKS add-on's chart runs."""
    if "dcgm" not in present:
        return []
    exporter = (_components(versions).get("dcgm") or {}).get("exporter")
    chart = ((versions.get("eks") or {}).get("dcgm_exporter") or {}).get("version")
    if not exporter:
        return ["dcgm: no `exporter` release (the dcgm-exporter package the image installs)."]
    if chart and str(chart) != str(exporter):
        return [
            f"dcgm: exporter {exporter} is not the release of the EKS add-on's chart "
            f"(eks.dcgm_exporter {chart}); Slurm and EKS nodes would export different "
            "fields."
        ]
    return []


def eks_version_errors(versions: dict) -> list[str]:
    """The EKS add-ons' pins (versions.yml, eks) against each other: the second kube-scheduler
    of the Neuron scheduler extension talks to the cluster's API server and reads its
    KubeSchedulerConfiguration, so it is of the cluster's minor version (eks.kubernetes)."""
    eks = versions.get("eks") or {}
    scheduler = (eks.get("kube_scheduler") or {}).get("version")
    if scheduler is None:
        return []
    cluster = version_tuple(eks.get("kubernetes"))[:2]
    if version_tuple(str(scheduler).lstrip("v"))[:2] != cluster or len(cluster) < 2:
        return [
            f"eks: kube_scheduler {scheduler} is not of Kubernetes {eks.get('kubernetes')} "
            "(eks.kubernetes); the Neuron scheduler's kube-scheduler must be the cluster's "
            "minor version."
        ]
    return []


def _rule_downloads(versions: dict, present: set) -> list[str]:
    sources = versions.get("sources") or {}
    errors = []
    for component in sorted(present):
        for name, entry in sorted(
            ((_components(versions).get(component) or {}).get("downloads") or {}).items()
        ):
            label = f"{component}.downloads.{name}"
            entry = entry or {}
            if "url" in entry:
                errors.append(
                    f"{label}: give `source` and `path` instead of `url`, so that "
                    "mlcluster_mirror_base can redirect the download to a site mirror."
                )
                continue
            if entry.get("source") not in sources:
                errors.append(
                    f"{label}: source {entry.get('source')!r} is not one of the sources "
                    f"in versions.yml ({', '.join(sorted(sources))})."
                )
            path = str(entry.get("path") or "")
            if not path or "://" in path:
                errors.append(f"{label}: `path` must be a path below its source, not {path!r}.")
            sha, commit = entry.get("sha256"), entry.get("commit")
            if sha and not _SHA256.match(str(sha)):
                errors.append(f"{label}: sha256 {sha!r} is not 64 lower-case hex digits.")
            if commit and not _COMMIT.match(str(commit)):
                errors.append(
                    f"{label}: commit {commit!r} is not a full commit id (40 lower-case hex "
                    "digits); a tag or branch can move."
                )
            elif commit and str(commit) not in path:
                errors.append(
                    f"{label}: the path does not name commit {commit}; download the archive of "
                    "that commit (<org>/<repo>/archive/<commit>.tar.gz), not of a tag."
                )
            if not sha and not commit:
                url = f"{sources.get(entry.get('source'), '?')}/{path}"
                errors.append(
                    f"{label}: no sha256; fill it in versions.yml (sha256sum of {url}), or pin "
                    "a source archive by its 40-hex `commit`."
                )
    return errors


def _rule_platform(versions: dict, flavor: str) -> list[str]:
    platform = (versions.get("platforms") or {}).get(flavor)
    if not platform:
        return [
            f"platforms: the flavour {flavor} has no platform (target and operating systems) "
            "in versions.yml."
        ]
    known = versions.get("operating_systems") or {}
    errors = []
    if platform.get("target") not in TARGETS:
        errors.append(
            f"platforms.{flavor}: target {platform.get('target')!r} is not one of "
            f"{', '.join(TARGETS)}."
        )
    if not platform.get("os"):
        errors.append(f"platforms.{flavor}: no operating system to bake it on.")
    errors += [
        f"platforms.{flavor}: operating system {os_name!r} is not one of operating_systems "
        f"({', '.join(sorted(known))})."
        for os_name in platform.get("os") or []
        if os_name not in known
    ]
    return errors


def version_errors(versions: dict, flavor: str, mirror_base: str = "") -> list[str]:
    """All broken compatibility rules of ``versions`` for an image ``flavor``."""
    try:
        present = set(flavor_components(versions, flavor))
    except ValueError as exc:
        return [str(exc)]
    comps = _components(versions)
    errors = [
        f"{name}: the flavour {flavor} contains it but versions.yml has no components.{name} entry."
        for name in sorted(present - VERSIONLESS)
        if name not in comps
    ]
    if mirror_base and not re.match(r"^https?://[^/]+", mirror_base):
        errors.append(f"mlcluster_mirror_base {mirror_base!r} must be an http:// or https:// URL.")
    errors += _rule_platform(versions, flavor)
    errors += _rule_fabricmanager(comps, present)
    errors += _rule_cuda_driver(comps, present)
    errors += _rule_nccl_cuda(comps, present)
    errors += _rule_ofi_nccl(comps, present)
    errors += _rule_dcgm_exporter(versions, present)
    errors += _rule_downloads(versions, present)
    return errors


class FilterModule:
    def filters(self):
        return {
            "version_errors": version_errors,
            "eks_version_errors": eks_version_errors,
            "download": download,
            "source_url": source_url,
            "flavor_components": flavor_components,
            "flavor_platforms": flavor_platforms,
        }
