"""Where a node's accelerator software is looked for, and parsers of command output and file
content about it.

Shared by the collection's modules (image_manifest, node_facts) and by the workloads package,
whose ``mlcluster_workloads/parsers.py`` is this very file (a symlink; its wheel carries the
content), so that the bake's image manifest and the training jobs' version report look in the
same places, in the same order, and read versions the same way. Standard library only, and no
system access except ``search_binary``, which reads a file: the search functions take the
caller's ``glob``/``which``/``read`` (the module's are the system's, the report's are rooted in
its Host) and return where to look, best first.
"""

from __future__ import annotations

import fnmatch
import json
import mmap
import os
import re
from collections.abc import Callable, Iterable, Iterator

# ---------------------------------------------------------------------------------------------
# Where things are
# ---------------------------------------------------------------------------------------------

# Shared libraries of the distribution (Debian/Ubuntu multiarch, Amazon Linux/RHEL) and of
# local installs.
LIBRARY_DIRS = (
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/usr/local/lib",
    "/usr/local/lib64",
)
# libnccl outside LIBRARY_DIRS: the nccl role's prefix (lib/ links into the unpacked wheel, which
# holds libnccl.so.2 only), a source build's tree, a CUDA toolkit that NCCL was unpacked into.
NCCL_LIBRARY_DIRS = ("/opt/nccl/lib", "/opt/nccl/build/lib", "/usr/local/cuda/lib64")
NCCL_LIBRARY = "libnccl.so.2"
# The aws-ofi-nccl plugin: the EFA installer's (lib/<arch>-linux-gnu on Ubuntu, lib64 on Amazon
# Linux: roles/aws_ofi_nccl/vars; lib) and the aws_ofi_nccl role's source build prefix.
OFI_NCCL_LIBRARY_DIRS = (
    "/opt/amazon/ofi-nccl/lib/x86_64-linux-gnu",
    "/opt/amazon/ofi-nccl/lib/aarch64-linux-gnu",
    "/opt/amazon/ofi-nccl/lib64",
    "/opt/amazon/ofi-nccl/lib",
    "/opt/aws-ofi-nccl/lib",
)
# libnccl-net.so is the name NCCL loads with NCCL_NET_PLUGIN unset; the others are the plugin's.
OFI_NCCL_LIBRARIES = ("libnccl-net-ofi.so", "libnccl-net.so", "libnccl-net-aws-ofi.so")
# The package string compiled into the plugin ('aws-ofi-nccl 1.14.2-aws').
OFI_NCCL_VERSION = re.compile(rb"aws-ofi-nccl[ -]v?(\d+\.\d+\.\d+(?:[-+~][0-9A-Za-z]+)*)")
CUDA_HOME = "/usr/local/cuda"
# What a CUDA home holds, relative to it: the toolkit's release and its compiler.
CUDA_VERSION_FILE = "version.json"
CUDA_NVCC = "bin/nvcc"
PROC_DRIVER_VERSION = "/proc/driver/nvidia/version"
EFA_INSTALLED_PACKAGES = "/opt/amazon/efa_installed_packages"
EFA_BIN_DIR = "/opt/amazon/efa/bin"
# fi_info, best first: the EFA installer's (its libfabric is the one NCCL's aws-ofi-nccl plugin
# loads), then one on PATH (a distribution's libfabric).
FI_INFO_COMMANDS = (f"{EFA_BIN_DIR}/fi_info", "fi_info")
# /sbin is not on a Debian user's PATH, and the report runs as the job's user.
LDCONFIG_COMMANDS = ("ldconfig", "/sbin/ldconfig")
SYSFS_ROOT = "/sys"
# The package database queries that parse_dpkg_query and parse_rpm_qa read: the whole database,
# or the packages named after the format.
DPKG_QUERY_FORMAT = "${Package}\t${Version}\t${db:Status-Abbrev}\n"
RPM_QUERY_FORMAT = "%{NAME}\t%{EPOCHNUM}:%{VERSION}-%{RELEASE}\n"


def library_search_dirs(*component_dirs: str) -> tuple[str, ...]:
    """Where a component's library is looked for, in order: its own directories, then
    LIBRARY_DIRS (what its role installed wins over a distribution's copy elsewhere)."""
    return (*component_dirs, *(d for d in LIBRARY_DIRS if d not in component_dirs))


def library_candidates(
    names: Iterable[str], directories: Iterable[str], ldconfig_fn: Callable[[], dict[str, str]]
) -> Iterator[str]:
    """Paths to try for a library, best first: each of ``names`` in each of ``directories``,
    then where the linker cache has that name (``ldconfig_fn()``: parse_ldconfig's mapping,
    asked for once and only when the directories are exhausted for a name)."""
    directories = tuple(directories)
    linker_cache = None
    for name in names:
        for directory in directories:
            yield os.path.join(directory, name)
        if linker_cache is None:
            linker_cache = ldconfig_fn()
        if name in linker_cache:
            yield linker_cache[name]


def cuda_homes(glob_fn: Callable[[str], Iterable[str]], *search_paths: str) -> list[str]:
    """Where a CUDA toolkit is looked for, best first, each once: a caller's ``search_paths``,
    CUDA_HOME (the link NVIDIA's packages point at the default toolkit), then the versioned
    homes ``glob_fn('/usr/local/cuda-*')`` finds, newest version first (12.10 before 12.9).
    nvcc on PATH is the callers' last resort after these."""
    versioned = sorted(
        glob_fn(f"{CUDA_HOME}-*"),
        key=lambda home: (version_key(os.path.basename(home)), home),
        reverse=True,
    )
    return _unique([*search_paths, CUDA_HOME, *versioned])


def cuda_toolkit_version(
    version_json: str | None, nvcc_output: str | None
) -> tuple[str, str] | None:
    """The version of the toolkit at a CUDA home and what it was read from, relative to the
    home: its version.json's release ('12.9.1', CUDA_VERSION_FILE), else its nvcc's
    ('12.9.86', 'bin/nvcc --version'); None when neither answers (no toolkit there)."""
    if version := parse_cuda_version_json(version_json or ""):
        return version, CUDA_VERSION_FILE
    if version := parse_nvcc_version(nvcc_output or ""):
        return version, f"{CUDA_NVCC} --version"
    return None


def fi_info_candidates(which_fn: Callable[[str], str | None]) -> list[str]:
    """The fi_info executables there are, best first (FI_INFO_COMMANDS), each once.
    ``which_fn`` is shutil.which-like: a path is checked as it is, a name looked up on PATH."""
    return _found_commands(which_fn, FI_INFO_COMMANDS)


def ldconfig_candidates(which_fn: Callable[[str], str | None]) -> list[str]:
    """The ldconfig executables there are (LDCONFIG_COMMANDS), as fi_info_candidates."""
    return _found_commands(which_fn, LDCONFIG_COMMANDS)


def kernel_module_version_path(module: str, sysfs_root: str = SYSFS_ROOT) -> str:
    """Where a loaded kernel module's version is (modules without MODULE_VERSION have none)."""
    return os.path.join(sysfs_root, "module", module, "version")


def kernel_module_version(
    read_fn: Callable[[str], str | None], module: str, sysfs_root: str = SYSFS_ROOT
) -> str | None:
    """A loaded kernel module's version; None when it is not loaded or has no version."""
    return (read_fn(kernel_module_version_path(module, sysfs_root)) or "").strip() or None


def _found_commands(which_fn: Callable[[str], str | None], commands: Iterable[str]) -> list[str]:
    return _unique(path for command in commands if (path := which_fn(command)))


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def version_key(version: str) -> tuple[int, ...]:
    """'2.26.2' -> (2, 26, 2): versions compared as numbers (12.10 is newer than 12.9)."""
    return tuple(int(part) for part in re.findall(r"\d+", version))


def search_binary(path: str, pattern: re.Pattern) -> tuple[str, ...] | None:
    """Groups of the first match of a bytes ``pattern`` in a file, mapped rather than read
    (libnccl is hundreds of MB); None when there is no match or the file cannot be read."""
    try:
        with (
            open(path, "rb") as handle,
            mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data,
        ):
            match = pattern.search(data)
            return tuple(group.decode() for group in match.groups()) if match else None
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------
# Parsers
# ---------------------------------------------------------------------------------------------


def parse_ldconfig(text: str) -> dict[str, str]:
    """``ldconfig -p`` -> {soname: path}; the first line of a name wins, as in the cache's
    order."""
    libraries: dict[str, str] = {}
    for line in text.splitlines():
        match = re.match(r"^\s*(\S+)\s.*=>\s*(\S+)$", line)
        if match:
            libraries.setdefault(match.group(1), match.group(2))
    return libraries


def parse_dpkg_query(text: str) -> dict[str, str]:
    """Installed packages {name: version} from ``dpkg-query -W -f DPKG_QUERY_FORMAT``."""
    packages = {}
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) >= 3 and parts[2].strip().startswith("ii"):
            packages[parts[0]] = parts[1]
    return packages


def parse_rpm_qa(text: str) -> dict[str, str]:
    """``rpm -qa --qf RPM_QUERY_FORMAT`` -> {name: version} (a zero epoch dropped)."""
    packages = {}
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) == 2 and parts[0]:
            version = parts[1][2:] if parts[1].startswith("0:") else parts[1]
            packages[parts[0]] = version
    return packages


def strip_epoch(version: str | None) -> str | None:
    if version is None:
        return None
    return version.split(":", 1)[1] if re.match(r"^\d+:", version) else version


def versions_match(expected: str | None, actual: str | None) -> bool:
    """``expected`` equals ``actual`` or is a prefix of it at a component boundary.

    '580.95.05' matches '580.95.05-0ubuntu1' and '1:580.95.05-1.amzn2023'; '12.9' matches
    '12.9.1'; '2.29.3' does not match '2.29.30'.
    """
    if expected is None:
        return True
    if actual is None:
        return False
    expected, actual = str(strip_epoch(str(expected))), str(strip_epoch(str(actual)))
    if actual == expected:
        return True
    return actual.startswith(expected) and actual[len(expected)] in ".-+~_"


def parse_nvcc_version(text: str) -> str | None:
    """'Cuda compilation tools, release 12.9, V12.9.86' -> '12.9.86'."""
    match = re.search(r"release (\d+\.\d+), V(\d+(?:\.\d+)+)", text)
    if match:
        return match.group(2)
    match = re.search(r"release (\d+\.\d+)", text)
    return match.group(1) if match else None


def parse_cuda_version_json(text: str) -> str | None:
    """/usr/local/cuda/version.json -> the toolkit release ('12.9.1')."""
    try:
        data = json.loads(text)
    except ValueError:
        return None
    cuda = data.get("cuda") if isinstance(data, dict) else None
    version = cuda.get("version") if isinstance(cuda, dict) else None
    return version if isinstance(version, str) else None


NCCL_VERSION = re.compile(rb"NCCL version (\d+\.\d+\.\d+)[^+\x00]*\+cuda(\d+\.\d+)")


def parse_nccl_binary(blob) -> tuple[str | None, str | None]:
    """The version string compiled into libnccl ('NCCL version 2.29.3+cuda12.9')."""
    match = NCCL_VERSION.search(blob)
    if not match:
        return None, None
    return match.group(1).decode(), match.group(2).decode()


def parse_nccl_header(text: str) -> str | None:
    """nccl.h -> '2.29.3' from NCCL_MAJOR/NCCL_MINOR/NCCL_PATCH."""
    parts = [
        re.search(rf"#define NCCL_{name}\s+(\d+)", text) for name in ("MAJOR", "MINOR", "PATCH")
    ]
    if not all(parts):
        return None
    return ".".join(part.group(1) for part in parts)


def parse_fi_info_version(text: str) -> str | None:
    """``fi_info --version`` -> the libfabric version ('1.17.0', '2.1.0amzn2.0')."""
    match = re.search(r"^libfabric:\s*(\S+)", text, re.MULTILINE)
    return match.group(1) if match else None


def parse_fi_info_providers(text: str) -> list[str]:
    """``fi_info -l`` -> provider names (core providers, without ;ofi_rxm-style layering)."""
    return sorted(
        {
            line[:-1].split(";")[0]
            for line in text.splitlines()
            if re.match(r"^[A-Za-z0-9_;]+:$", line)
        }
    )


def parse_efa_installed_packages(text: str) -> str | None:
    """/opt/amazon/efa_installed_packages -> the installer version ('1.41.0')."""
    match = re.search(r"EFA installer version:\s*(\S+)", text)
    return match.group(1) if match else None


def parse_dkms_status(text: str) -> list[dict]:
    """``dkms status`` (old and new formats) -> [{module, version, kernel, arch, state}]."""
    entries = []
    for line in text.splitlines():
        match = re.match(
            r"^([^/,\s]+)[/,]\s*([^,:\s]+)(?:,\s*([^,:]+))?(?:,\s*([^:]+))?:\s*(.+)$", line.strip()
        )
        if match:
            module, version, kernel, arch, state = match.groups()
            entries.append(
                {
                    "module": module,
                    "version": version,
                    "kernel": kernel,
                    "arch": arch,
                    "state": state.strip(),
                }
            )
    return entries


def parse_proc_driver_version(text: str) -> str | None:
    """/proc/driver/nvidia/version -> the loaded kernel module's version."""
    match = re.search(r"Kernel Module(?: for \S+)?\s+(\d+\.\d+(?:\.\d+)?)", text)
    return match.group(1) if match else None


def version_from_soname(path: str, stem: str) -> str | None:
    """'/usr/lib/.../libnvidia-ml.so.535.261.03' -> '535.261.03' (for stem 'libnvidia-ml.so')."""
    name = os.path.basename(path)
    if not name.startswith(stem + "."):
        return None
    suffix = name[len(stem) + 1 :]
    return suffix if re.match(r"^\d+(?:\.\d+){1,3}$", suffix) and suffix.count(".") >= 1 else None


def parse_first_version(text: str, pattern: str) -> str | None:
    match = re.search(pattern, text, re.MULTILINE)
    return match.group(1) if match else None


def nouveau_blacklisted(texts: list[str]) -> bool:
    return any(re.search(r"^\s*blacklist\s+nouveau\s*$", text, re.MULTILINE) for text in texts)


def parse_key_values(text: str) -> dict[str, str]:
    """sysctl.d / systemd drop-in style 'key=value' lines (comments and sections skipped)."""
    values = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;[" or "=" not in line:
            continue
        key, value = line.split("=", 1)
        values[key.strip()] = value.strip()
    return values


def split_package_spec(spec: str, installed: dict[str, str]) -> tuple[str, str | None]:
    """Package name and version pattern of an apt or dnf install spec.

    'nvidia-utils-580=580.95.05-*' -> (name, '580.95.05-*');
    'nvidia-driver-cuda-580.95.05' -> ('nvidia-driver-cuda', '580.95.05').
    """
    if "=" in spec:
        name, version = spec.split("=", 1)
        return name, version
    if spec in installed:
        return spec, None
    match = re.match(r"^(.*?)-(\d[\w.:+~]*)$", spec)
    if match:
        return match.group(1), match.group(2)
    return spec, None


def package_version_ok(pattern: str | None, installed_version: str) -> bool:
    if pattern is None:
        return True
    installed = strip_epoch(installed_version) or ""
    pattern = strip_epoch(pattern) or ""
    if any(char in pattern for char in "*?["):
        return fnmatch.fnmatch(installed, pattern)
    return versions_match(pattern, installed)


def compare_claim(
    name: str, claim: dict, info: dict, installed: dict[str, str], expected: str | None
) -> list[str]:
    """Version drift between what a role intended (claim / expected) and what is installed."""
    problems = []
    want = expected if expected is not None else claim.get("version")
    if want is not None and info.get("present"):
        have = info.get("version")
        if have is None:
            problems.append(
                f"{name}: expected version {want}, but the installed version cannot be read back"
            )
        elif not versions_match(str(want), str(have)):
            problems.append(f"{name}: expected version {want}, found {have}")
    for spec in claim.get("packages") or []:
        pkg, pattern = split_package_spec(str(spec), installed)
        if pkg not in installed:
            problems.append(f"{name}: package {pkg} is not installed")
        elif not package_version_ok(pattern, installed[pkg]):
            problems.append(f"{name}: package {pkg} is {installed[pkg]}, expected {pattern}")
    return problems
