#!/usr/bin/python
"""Detect NVIDIA GPUs and describe them as Slurm generic resources (GRES)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: gpu_gres
author: mlcluster developers
short_description: Detect NVIDIA GPUs and describe them as Slurm GRES
description:
  - Asks the NVIDIA driver which GPUs the node has, through NVML (C(libnvidia-ml.so.1), loaded
    with ctypes, no Python bindings needed) or, where NVML cannot be loaded, through
    C(nvidia-smi -q -x).
  - Returns the GPU count, models, device files and a Slurm GRES string such as C(gpu:h100:8)
    for the node line in C(slurm.conf).
  - A node without an NVIDIA driver (no library, no C(nvidia-smi), driver not loaded, no GPU) is
    not an error; the module returns C(available=false), an empty GRES string and the reason,
    so that a role can say why it configures no GPU GRES.
  - Never changes the node; supports check mode.
version_added: 0.1.0
options:
  method:
    description:
      - How to ask the driver. C(auto) tries NVML, then C(nvidia-smi).
    type: str
    choices: [auto, nvml, nvidia-smi]
    default: auto
  nvidia_smi:
    description: Name or path of C(nvidia-smi), used by the C(nvidia-smi) method.
    type: str
    default: nvidia-smi
  gres_type:
    description:
      - GRES type to use for every GPU instead of the one derived from the model name
        (for example C(h100) from C(NVIDIA H100 80GB HBM3)).
      - Slurm's NVML autodetection accepts a type that is a substring of the detected name in
        lower case with spaces replaced by underscores; the derived types are.
    type: str
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
notes:
  - Works on nodes without GPUs, without a driver and inside containers.
"""

EXAMPLES = r"""
- name: Detect GPUs
  mlcluster.core.gpu_gres:
  register: gpu

- name: Say what was found
  ansible.builtin.debug:
    msg: "{{ gpu.gres if gpu.available else 'no GPU GRES: ' ~ gpu.reason }}"

- name: Force the GRES type name
  mlcluster.core.gpu_gres:
    gres_type: h100
"""

RETURN = r"""
available:
  description: Whether a driver answered and reported at least one GPU.
  returned: always
  type: bool
  sample: true
reason:
  description: Why no GPU is available (empty when C(available) is true).
  returned: always
  type: str
  sample: "no usable NVIDIA driver: no NVML library libnvidia-ml.so.1, no nvidia-smi"
method:
  description: Which method answered (C(nvml), C(nvidia-smi)), or C(none).
  returned: always
  type: str
  sample: nvml
driver_version:
  description: NVIDIA driver version, empty without a driver.
  returned: always
  type: str
  sample: "535.129.03"
count:
  description: Number of GPUs.
  returned: always
  type: int
  sample: 8
model:
  description: Name of the most common GPU model, empty without GPUs.
  returned: always
  type: str
  sample: NVIDIA H100 80GB HBM3
types:
  description: GPU count per GRES type.
  returned: always
  type: dict
  sample: {h100: 8}
gres:
  description: GRES string for the node line of slurm.conf, empty without GPUs.
  returned: always
  type: str
  sample: gpu:h100:8
devices:
  description: Device files of the GPUs, ordered by minor number.
  returned: always
  type: list
  elements: str
  sample: [/dev/nvidia0, /dev/nvidia1]
gpus:
  description: One entry per GPU.
  returned: always
  type: list
  elements: dict
  contains:
    index:
      description: NVML index.
      type: int
    name:
      description: Model name reported by the driver.
      type: str
    uuid:
      description: GPU UUID.
      type: str
    memory_mib:
      description: Framebuffer memory in MiB.
      type: int
    minor:
      description: Minor number of the device file.
      type: int
    device:
      description: Device file.
      type: str
    type:
      description: GRES type of this GPU.
      type: str
"""

import ctypes  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import xml.etree.ElementTree as ET  # noqa: E402
from collections import Counter  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

NVML_LIBRARY = "libnvidia-ml.so.1"
NVML_SUCCESS = 0
_NVML_BUFFER = 96
# Vendor and product-line words that carry no model information.
_NAME_PREFIXES = ("nvidia_", "tesla_", "geforce_", "quadro_")
# Model families whose number follows a separate word: "RTX 4090", "RTX A6000".
_TWO_WORD_FAMILIES = ("rtx", "gtx", "titan")


class DetectionError(Exception):
    """The driver could not be asked (no library, no nvidia-smi, driver not loaded)."""


def gres_type(name: str) -> str:
    """Short GRES type for a model name, a substring of Slurm's autodetected type.

    >>> gres_type("NVIDIA H100 80GB HBM3")
    'h100'
    """
    slug = name.strip().lower().replace(" ", "_")
    stripped = True
    while stripped:
        stripped = False
        for prefix in _NAME_PREFIXES:
            if slug.startswith(prefix):
                slug = slug[len(prefix) :]
                stripped = True
    family = re.match("(" + "|".join(_TWO_WORD_FAMILIES) + ")[_-]", slug)
    start = family.end() if family else 0
    model = re.match(r"[a-z0-9.]+", slug[start:])
    if not model:
        return re.sub(r"[^a-z0-9_.-]", "", slug) or "gpu"
    return slug[: start + model.end()]


def summarise(
    gpus: list[dict], driver_version: str, method: str, override_type: str | None = None
) -> dict:
    """Turn per-GPU records into the module's result."""
    for gpu in gpus:
        gpu["type"] = override_type or gres_type(gpu["name"])
        gpu["device"] = f"/dev/nvidia{gpu['minor']}"
    gpus = sorted(gpus, key=lambda g: g["index"])
    types = Counter(g["type"] for g in gpus)
    models = Counter(g["name"] for g in gpus)
    return {
        "available": bool(gpus),
        "reason": "" if gpus else "the NVIDIA driver is loaded but reports no GPU",
        "method": method,
        "driver_version": driver_version,
        "count": len(gpus),
        "model": models.most_common(1)[0][0] if gpus else "",
        "types": dict(sorted(types.items())),
        "gres": ",".join(f"gpu:{t}:{n}" for t, n in sorted(types.items())),
        "devices": [g["device"] for g in sorted(gpus, key=lambda g: g["minor"])],
        "gpus": gpus,
    }


class _NvmlMemory(ctypes.Structure):
    _fields_ = [
        ("total", ctypes.c_ulonglong),
        ("free", ctypes.c_ulonglong),
        ("used", ctypes.c_ulonglong),
    ]


def query_nvml(loader=ctypes.CDLL) -> tuple[list[dict], str]:
    """GPUs and driver version through NVML."""
    try:
        lib = loader(NVML_LIBRARY)
    except OSError as exc:
        detail = "" if "cannot open shared object file" in str(exc) else f" ({exc})"
        raise DetectionError(f"no NVML library {NVML_LIBRARY}{detail}") from exc
    lib.nvmlErrorString.restype = ctypes.c_char_p

    def call(function: str, *args) -> None:
        ret = getattr(lib, function)(*args)
        if ret != NVML_SUCCESS:
            message = lib.nvmlErrorString(ret)
            text = message.decode() if isinstance(message, bytes) else str(message)
            raise DetectionError(f"NVML {function}: {text} (error {ret})")

    call("nvmlInit_v2")
    try:
        buffer = ctypes.create_string_buffer(_NVML_BUFFER)
        call("nvmlSystemGetDriverVersion", buffer, ctypes.c_uint(_NVML_BUFFER))
        driver = buffer.value.decode()
        count = ctypes.c_uint(0)
        call("nvmlDeviceGetCount_v2", ctypes.byref(count))
        gpus = []
        for index in range(count.value):
            handle = ctypes.c_void_p()
            call("nvmlDeviceGetHandleByIndex_v2", ctypes.c_uint(index), ctypes.byref(handle))
            name = ctypes.create_string_buffer(_NVML_BUFFER)
            call("nvmlDeviceGetName", handle, name, ctypes.c_uint(_NVML_BUFFER))
            uuid = ctypes.create_string_buffer(_NVML_BUFFER)
            call("nvmlDeviceGetUUID", handle, uuid, ctypes.c_uint(_NVML_BUFFER))
            minor = ctypes.c_uint(0)
            call("nvmlDeviceGetMinorNumber", handle, ctypes.byref(minor))
            memory = _NvmlMemory()
            call("nvmlDeviceGetMemoryInfo", handle, ctypes.byref(memory))
            gpus.append(
                {
                    "index": index,
                    "name": name.value.decode(),
                    "uuid": uuid.value.decode(),
                    "memory_mib": memory.total // (1024 * 1024),
                    "minor": minor.value,
                }
            )
    finally:
        lib.nvmlShutdown()
    return gpus, driver


def parse_nvidia_smi_xml(text: str) -> tuple[list[dict], str]:
    """GPUs and driver version from ``nvidia-smi -q -x``."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise DetectionError(f"nvidia-smi -q -x returned unreadable XML ({exc})") from exc
    driver = (root.findtext("driver_version") or "").strip()
    gpus = []
    for index, gpu in enumerate(root.findall("gpu")):
        memory = (gpu.findtext("fb_memory_usage/total") or "0").split()[0]
        minor = (gpu.findtext("minor_number") or "").strip()
        gpus.append(
            {
                "index": index,
                "name": (gpu.findtext("product_name") or "").strip(),
                "uuid": (gpu.findtext("uuid") or "").strip(),
                "memory_mib": int(memory) if memory.isdigit() else 0,
                # "N/A" on some virtualised GPUs: the index is the best remaining guess.
                "minor": int(minor) if minor.isdigit() else index,
            }
        )
    return gpus, driver


def query_nvidia_smi(executable: str, run=subprocess.run) -> tuple[list[dict], str]:
    path = shutil.which(executable)
    if not path:
        raise DetectionError(f"no {executable}")
    try:
        proc = run([path, "-q", "-x"], capture_output=True, text=True, timeout=60, check=False)
    except subprocess.TimeoutExpired as exc:
        raise DetectionError(f"{executable} -q -x did not answer within 60 s") from exc
    if proc.returncode != 0:
        detail = (proc.stdout or proc.stderr or "").strip().splitlines()
        raise DetectionError(
            f"{executable} failed (exit {proc.returncode})" + (f": {detail[-1]}" if detail else "")
        )
    return parse_nvidia_smi_xml(proc.stdout)


def detect(
    method: str,
    nvidia_smi: str,
    override_type: str | None = None,
    nvml=query_nvml,
    smi=query_nvidia_smi,
) -> dict:
    attempts = {"nvml": lambda: nvml(), "nvidia-smi": lambda: smi(nvidia_smi)}
    order = ["nvml", "nvidia-smi"] if method == "auto" else [method]
    reasons = []
    for name in order:
        try:
            gpus, driver = attempts[name]()
        except DetectionError as exc:
            reasons.append(str(exc))
            continue
        return summarise(gpus, driver, name, override_type)
    result = summarise([], "", "none")
    result["reason"] = "no usable NVIDIA driver: " + ", ".join(reasons)
    return result


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "method": {"type": "str", "default": "auto", "choices": ["auto", "nvml", "nvidia-smi"]},
            "nvidia_smi": {"type": "str", "default": "nvidia-smi"},
            "gres_type": {"type": "str"},
        },
        supports_check_mode=True,
    )
    override = module.params["gres_type"]
    if override is not None and not re.fullmatch(r"[A-Za-z0-9_.-]+", override):
        module.fail_json(msg=f"gres_type {override!r} may only hold letters, digits, '_', '.', '-'")
    result = detect(module.params["method"], module.params["nvidia_smi"], override)
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
