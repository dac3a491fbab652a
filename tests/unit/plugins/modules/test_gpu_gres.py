"""Unit tests of the mlcluster.core.gpu_gres module (no GPU or driver needed)."""

from __future__ import annotations

import ctypes
import json
import subprocess

import pytest
from ansible.module_utils.testing import patch_module_args

from mlcluster.paths import load_plugin

gpu_gres = load_plugin("modules", "gpu_gres")

NVIDIA_SMI_XML = """<?xml version="1.0" ?>
<nvidia_smi_log>
  <driver_version>535.129.03</driver_version>
  <attached_gpus>2</attached_gpus>
  <gpu id="00000000:53:00.0">
    <product_name>NVIDIA H100 80GB HBM3</product_name>
    <uuid>GPU-aaaa</uuid>
    <minor_number>0</minor_number>
    <fb_memory_usage><total>81559 MiB</total></fb_memory_usage>
  </gpu>
  <gpu id="00000000:64:00.0">
    <product_name>NVIDIA H100 80GB HBM3</product_name>
    <uuid>GPU-bbbb</uuid>
    <minor_number>N/A</minor_number>
    <fb_memory_usage><total>81559 MiB</total></fb_memory_usage>
  </gpu>
</nvidia_smi_log>
"""


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("NVIDIA H100 80GB HBM3", "h100"),
        ("NVIDIA H200", "h200"),
        ("NVIDIA A100-SXM4-80GB", "a100"),
        ("Tesla V100-SXM2-16GB", "v100"),
        ("Tesla T4", "t4"),
        ("NVIDIA A10G", "a10g"),
        ("NVIDIA L40S", "l40s"),
        ("NVIDIA GH200 480GB", "gh200"),
        ("NVIDIA GeForce RTX 4090", "rtx_4090"),
        ("NVIDIA RTX A6000", "rtx_a6000"),
        ("Quadro RTX 8000", "rtx_8000"),
    ],
)
def test_gres_type_is_short_and_a_substring_of_slurms_name(name, expected):
    assert gpu_gres.gres_type(name) == expected
    # Slurm's NVML autodetection matches a configured type that is a substring of the
    # detected name in lower case with spaces replaced by underscores.
    assert expected in name.lower().replace(" ", "_")


def test_parse_nvidia_smi_xml():
    gpus, driver = gpu_gres.parse_nvidia_smi_xml(NVIDIA_SMI_XML)
    assert driver == "535.129.03"
    assert [g["uuid"] for g in gpus] == ["GPU-aaaa", "GPU-bbbb"]
    assert gpus[0]["memory_mib"] == 81559
    # A minor number of N/A falls back to the index.
    assert [g["minor"] for g in gpus] == [0, 1]


def test_parse_nvidia_smi_xml_rejects_garbage():
    with pytest.raises(gpu_gres.DetectionError, match="unreadable XML"):
        gpu_gres.parse_nvidia_smi_xml("NVIDIA-SMI has failed")


def test_summarise_mixed_models():
    gpus = [
        {"index": 0, "name": "NVIDIA A100-SXM4-80GB", "uuid": "a", "memory_mib": 1, "minor": 1},
        {"index": 1, "name": "NVIDIA A100-SXM4-80GB", "uuid": "b", "memory_mib": 1, "minor": 0},
        {"index": 2, "name": "Tesla V100-SXM2-16GB", "uuid": "c", "memory_mib": 1, "minor": 2},
    ]
    result = gpu_gres.summarise(gpus, "535", "nvml")
    assert result["available"] is True
    assert result["count"] == 3
    assert result["gres"] == "gpu:a100:2,gpu:v100:1"
    assert result["types"] == {"a100": 2, "v100": 1}
    assert result["model"] == "NVIDIA A100-SXM4-80GB"
    assert result["devices"] == ["/dev/nvidia0", "/dev/nvidia1", "/dev/nvidia2"]


def test_summarise_with_type_override():
    gpus = [{"index": 0, "name": "NVIDIA H100 80GB HBM3", "uuid": "a", "memory_mib": 1, "minor": 0}]
    assert gpu_gres.summarise(gpus, "535", "nvml", "hopper")["gres"] == "gpu:hopper:1"


class _Function:
    """A callable that, like a ctypes foreign function, accepts a ``restype``."""

    def __init__(self, function):
        self.function = function
        self.restype = None

    def __call__(self, *args):
        return self.function(*args)


class FakeNvml:
    """Stands in for libnvidia-ml: fills the ctypes out-parameters like the real library."""

    def __init__(self, names, init_error=0):
        self.names = names
        self.init_error = init_error
        self.shutdown = False
        for name in dir(self):
            if name.startswith("nvml"):
                setattr(self, name, _Function(getattr(self, name)))

    @staticmethod
    def _target(ref):
        return ref._obj if hasattr(ref, "_obj") else ref

    def nvmlErrorString(self, code):
        return {9: b"Driver Not Loaded"}.get(code, b"Unknown Error")

    def nvmlInit_v2(self):
        return self.init_error

    def nvmlShutdown(self):
        self.shutdown = True
        return 0

    def nvmlSystemGetDriverVersion(self, buffer, _length):
        buffer.value = b"550.54.15"
        return 0

    def nvmlDeviceGetCount_v2(self, count):
        self._target(count).value = len(self.names)
        return 0

    def nvmlDeviceGetHandleByIndex_v2(self, index, handle):
        self._target(handle).value = index.value + 1
        return 0

    def _index(self, handle):
        return handle.value - 1

    def nvmlDeviceGetName(self, handle, buffer, _length):
        buffer.value = self.names[self._index(handle)].encode()
        return 0

    def nvmlDeviceGetUUID(self, handle, buffer, _length):
        buffer.value = f"GPU-{self._index(handle)}".encode()
        return 0

    def nvmlDeviceGetMinorNumber(self, handle, minor):
        self._target(minor).value = 7 - self._index(handle)
        return 0

    def nvmlDeviceGetMemoryInfo(self, handle, memory):
        self._target(memory).total = 143771 * 1024 * 1024
        return 0


def test_query_nvml_reads_every_gpu_and_shuts_down():
    lib = FakeNvml(["NVIDIA H200"] * 2)
    gpus, driver = gpu_gres.query_nvml(loader=lambda _name: lib)
    assert driver == "550.54.15"
    assert [(g["index"], g["minor"], g["uuid"]) for g in gpus] == [(0, 7, "GPU-0"), (1, 6, "GPU-1")]
    assert gpus[0]["memory_mib"] == 143771
    assert lib.shutdown


def test_query_nvml_driver_not_loaded():
    lib = FakeNvml([], init_error=9)
    with pytest.raises(gpu_gres.DetectionError, match="Driver Not Loaded"):
        gpu_gres.query_nvml(loader=lambda _name: lib)


def test_query_nvml_without_library():
    def loader(_name):
        raise OSError("libnvidia-ml.so.1: cannot open shared object file")

    with pytest.raises(gpu_gres.DetectionError, match=r"^no NVML library libnvidia-ml\.so\.1$"):
        gpu_gres.query_nvml(loader=loader)


def test_query_nvidia_smi_missing(monkeypatch):
    monkeypatch.setattr(gpu_gres.shutil, "which", lambda _name: None)
    with pytest.raises(gpu_gres.DetectionError, match=r"^no nvidia-smi$"):
        gpu_gres.query_nvidia_smi("nvidia-smi")


def test_query_nvidia_smi_failure_reports_last_line(monkeypatch):
    monkeypatch.setattr(gpu_gres.shutil, "which", lambda name: f"/usr/bin/{name}")

    def run(*_args, **_kwargs):
        return subprocess.CompletedProcess(
            [],
            9,
            stdout="NVIDIA-SMI has failed because it couldn't communicate with the "
            "NVIDIA driver.\n",
            stderr="",
        )

    with pytest.raises(gpu_gres.DetectionError, match=r"exit 9.*couldn't communicate"):
        gpu_gres.query_nvidia_smi("nvidia-smi", run=run)


def test_query_nvidia_smi_success(monkeypatch):
    monkeypatch.setattr(gpu_gres.shutil, "which", lambda name: f"/usr/bin/{name}")

    def run(cmd, **_kwargs):
        assert cmd == ["/usr/bin/nvidia-smi", "-q", "-x"]
        return subprocess.CompletedProcess(cmd, 0, stdout=NVIDIA_SMI_XML, stderr="")

    gpus, driver = gpu_gres.query_nvidia_smi("nvidia-smi", run=run)
    assert len(gpus) == 2 and driver == "535.129.03"


def _fail(message):
    def raiser(*_args):
        raise gpu_gres.DetectionError(message)

    return raiser


def test_detect_falls_back_to_nvidia_smi():
    result = gpu_gres.detect(
        "auto",
        "nvidia-smi",
        nvml=_fail("no nvml"),
        smi=lambda _exe: gpu_gres.parse_nvidia_smi_xml(NVIDIA_SMI_XML),
    )
    assert result["method"] == "nvidia-smi"
    assert result["gres"] == "gpu:h100:2"


def test_detect_without_driver_is_graceful():
    result = gpu_gres.detect("auto", "nvidia-smi", nvml=_fail("no nvml"), smi=_fail("no smi"))
    assert result["available"] is False
    assert result["gres"] == ""
    assert result["count"] == 0
    assert result["method"] == "none"
    assert "no nvml" in result["reason"] and "no smi" in result["reason"]


def test_detect_driver_without_gpus():
    result = gpu_gres.detect("nvml", "nvidia-smi", nvml=lambda: ([], "550.54.15"))
    assert result["available"] is False
    assert result["driver_version"] == "550.54.15"
    assert "no GPU" in result["reason"]


def _run_module(capsys, args):
    with patch_module_args(args), pytest.raises(SystemExit) as exit_info:
        gpu_gres.main()
    return exit_info.value.code, json.loads(capsys.readouterr().out)


def test_module_on_a_node_without_driver(capsys, monkeypatch):
    monkeypatch.setattr(gpu_gres, "query_nvml", _fail("no nvml"))
    monkeypatch.setattr(gpu_gres.shutil, "which", lambda _name: None)
    code, result = _run_module(capsys, {"_ansible_check_mode": True})
    assert code == 0
    assert result["changed"] is False
    assert result["available"] is False
    assert result["gres"] == ""


def test_module_rejects_a_bad_type(capsys):
    code, result = _run_module(capsys, {"gres_type": "h100:8"})
    assert code == 1
    assert result["failed"] is True
    assert "gres_type" in result["msg"]


def test_nvml_memory_struct_layout():
    # nvmlMemory_t is three unsigned long longs: total, free, used.
    assert ctypes.sizeof(gpu_gres._NvmlMemory) == 24
