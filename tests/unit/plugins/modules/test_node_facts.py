"""Unit tests of mlcluster.core.node_facts and its module_utils (node.py): container detection,
PCI classification, NVMe drives, driver versions, the image manifest, the EFA provider probe and
the configure layer's decisions, all over fake trees in tmp_path."""

from __future__ import annotations

import json

import pytest
from ansible.module_utils.testing import patch_module_args
from bake.stub_devices import (
    EFA,
    TRAINIUM,
    add_nvme,
    add_pci_device,
    flavour_manifest,
    gpu_node_sysfs,
)

from mlcluster.paths import load_plugin

node_facts = load_plugin("modules", "node_facts")
node = load_plugin("module_utils", "node")
accelerators = load_plugin("filter", "accelerators")

GPU_FLAVOUR = [
    "tuning",
    "nvidia_driver",
    "cuda_toolkit",
    "nccl",
    "efa",
    "aws_ofi_nccl",
    "gdrcopy",
    "dcgm",
    "container_runtime",
    "enroot_pyxis",
    "lustre_client",
]


# --- container or not -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({}, None),
        ({"run/systemd/container": "podman\n"}, "podman"),
        ({"run/host/container-manager": "systemd-nspawn\n"}, "systemd-nspawn"),
        ({"proc/1/environ": "PATH=/bin\0container=docker\0"}, "docker"),
        ({"proc/1/environ": "PATH=/bin\0HOME=/\0"}, None),
        ({"run/.containerenv": ""}, "podman"),
        ({".dockerenv": ""}, "docker"),
        # systemd's record wins over the engines' marker files, as in systemd-detect-virt.
        ({"run/systemd/container": "lxc\n", ".dockerenv": ""}, "lxc"),
    ],
)
def test_container_manager(tmp_path, files, expected):
    for name, content in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(content)
    assert node.container_manager(str(tmp_path)) == expected
    assert node.in_container(str(tmp_path)) is (expected is not None)


# --- PCI devices ----------------------------------------------------------------------------


def test_pci_classification_of_an_nvswitch_gpu_node(tmp_path):
    sysfs = gpu_node_sysfs(tmp_path / "sys", gpus=8, nvswitches=4, efa=1)
    add_pci_device(sysfs, "0000:90:00.0", TRAINIUM)
    # NVIDIA's HD audio function (class 0x0403) is not a GPU.
    add_pci_device(sysfs, "0000:10:00.1", ("0x10de", "0x22ba", "0x040300"))
    found = node.classify_pci(node.pci_devices(str(sysfs)))
    assert node.device_counts(found) == {
        "nvidia_gpus": 8,
        "nvswitches": 4,
        "efa_devices": 1,
        "neuron_devices": 1,
    }
    assert found["nvidia_gpus"][0] == {
        "address": "0000:10:00.0",
        "device": "0x2330",
        "driver": "nvidia",
    }
    assert found["efa"] == [{"address": "0000:50:00.0", "device": "0xefa1", "driver": "efa"}]
    assert found["nvswitches"][0]["driver"] is None
    assert found["neuron"][0]["kind"] == "trainium"
    assert node.probe_hardware(str(sysfs))["nvidia_gpus"] == 8


@pytest.mark.parametrize("device", ["0xefa0", "0xefa1", "0xefa2", "0xefa3"])
def test_every_efa_generation_is_an_efa_device(tmp_path, device):
    add_pci_device(tmp_path, "0000:00:06.0", (EFA[0], device, EFA[2]))
    assert node.probe_hardware(str(tmp_path))["efa_devices"] == 1


@pytest.mark.parametrize(
    ("device", "kind"),
    [
        ("0x7064", "inferentia"),
        ("0x7264", "inferentia2"),
        ("0x7364", "trainium2"),
        ("0x1234", None),
    ],
)
def test_neuron_device_ids(tmp_path, device, kind):
    add_pci_device(tmp_path, "0000:00:1e.0", ("0x1d0f", device, "0x088000"))
    found = node.classify_pci(node.pci_devices(str(tmp_path)))["neuron"]
    assert [entry["kind"] for entry in found] == ([kind] if kind else [])


def test_no_pci_tree_means_no_devices(tmp_path):
    assert node.probe_hardware(str(tmp_path / "missing")) == {
        "nvidia_gpus": 0,
        "nvswitches": 0,
        "efa_devices": 0,
        "neuron_devices": 0,
    }


# --- NVMe, drivers, manifest, EFA provider ---------------------------------------------------


def test_local_nvme_drives_and_their_mounts(tmp_path):
    add_nvme(tmp_path, "nvme0n1", "Amazon Elastic Block Store", 209715200)
    add_nvme(tmp_path, "nvme1n1", "Amazon EC2 NVMe Instance Storage", 7500000000)
    add_nvme(tmp_path, "nvme2n1", "Amazon EC2 NVMe Instance Storage", 7500000000)
    mounts = (
        "/dev/nvme0n1p1 / ext4 rw 0 0\n"
        "/dev/nvme1n1 /opt/dlami/nvme ext4 rw 0 0\n"
        "/dev/nvme2n1p1 /scratch\\040two xfs rw 0 0\n"
        "proc /proc proc rw 0 0\n"
    )
    drives = node.nvme_drives(str(tmp_path), mounts)
    assert [(d["name"], d["local"], d["mountpoints"]) for d in drives] == [
        ("nvme0n1", False, ["/"]),
        ("nvme1n1", True, ["/opt/dlami/nvme"]),
        ("nvme2n1", True, ["/scratch two"]),
    ]
    assert drives[1]["size_bytes"] == 7500000000 * 512
    assert drives[1]["model"] == "Amazon EC2 NVMe Instance Storage"


def test_driver_versions_from_sysfs_and_proc(tmp_path):
    sysfs, proc = tmp_path / "sys", tmp_path / "proc"
    (sysfs / "module" / "efa").mkdir(parents=True)
    (sysfs / "module" / "efa" / "version").write_text("2.13.0g\n")
    (proc / "driver" / "nvidia").mkdir(parents=True)
    (proc / "driver" / "nvidia" / "version").write_text(
        "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.95.05  Release Build\n"
    )
    versions = node.driver_versions(str(sysfs), str(proc))
    assert versions["efa"] == "2.13.0g"
    assert versions["nvidia"] == "580.95.05"
    assert versions["neuron"] is None
    (sysfs / "module" / "nvidia").mkdir()
    (sysfs / "module" / "nvidia" / "version").write_text("580.95.06\n")
    assert node.driver_versions(str(sysfs), str(proc))["nvidia"] == "580.95.06"


def test_manifest_present_absent_and_broken(tmp_path):
    path = tmp_path / "manifest.json"
    assert node.read_manifest(str(path)) == {
        "present": False,
        "path": str(path),
        "flavor": None,
        "components": [],
        "reason": f"no image manifest at {path}",
    }
    path.write_text("{not json")
    assert node.read_manifest(str(path))["reason"].startswith(f"{path} is not JSON")
    path.write_text(
        json.dumps(
            {
                "flavor": "local",
                "components": {
                    "tuning": {"present": True, "version": None},
                    "efa": {"present": True, "version": "1.17.0"},
                    "nccl": {"present": False, "version": None},
                },
            }
        )
    )
    assert node.read_manifest(str(path)) == {
        "present": True,
        "path": str(path),
        "flavor": "local",
        "components": ["efa", "tuning"],
        "versions": {"efa": "1.17.0", "tuning": None},
        "reason": None,
    }


def test_efa_provider_result():
    assert (
        node.efa_provider_result(None, 1, "", "")["reason"] == "fi_info (libfabric) not installed"
    )
    found = node.efa_provider_result(
        "/opt/amazon/efa/bin/fi_info",
        0,
        "provider: efa\n    fabric: efa\n    domain: rdmap16s27-rdm\n    domain: rdmap16s27-dgrm\n",
        "",
    )
    assert found == {
        "present": True,
        "fi_info": "/opt/amazon/efa/bin/fi_info",
        "reason": "efa provider found (rdmap16s27-dgrm, rdmap16s27-rdm)",
    }
    # What Debian's libfabric says on a machine without an EFA device.
    missing = node.efa_provider_result(
        "/usr/bin/fi_info", 61, "", "fi_getinfo: -61 (No data available)\n"
    )
    assert missing["present"] is False
    assert missing["reason"] == "fi_info -p efa: fi_getinfo: -61 (No data available)"
    assert node.efa_provider_result("/usr/bin/fi_info", 2, "", "")["reason"] == (
        "fi_info -p efa: exit status 2"
    )


def test_node_facts_of_a_stub_gpu_node(tmp_path):
    sysfs = gpu_node_sysfs(tmp_path / "sys")
    add_nvme(sysfs, "nvme1n1", "Amazon EC2 NVMe Instance Storage", 1000)
    root = tmp_path / "root"
    (root / "proc" / "self").mkdir(parents=True)
    (root / "proc" / "self" / "mounts").write_text("/dev/nvme1n1 /opt/dlami/nvme xfs rw 0 0\n")
    (root / "run").mkdir()
    (root / "run" / ".containerenv").write_text("")
    manifest = flavour_manifest(tmp_path / "manifest.json", "gpu", GPU_FLAVOUR)
    facts = node.node_facts(str(sysfs), str(manifest), root=str(root))
    assert facts["in_container"] is True
    assert facts["container_manager"] == "podman"
    assert facts["counts"] == {
        "nvidia_gpus": 8,
        "nvswitches": 4,
        "efa_devices": 1,
        "neuron_devices": 0,
    }
    assert facts["local_nvme_mounts"] == ["/opt/dlami/nvme"]
    assert facts["manifest"]["flavor"] == "gpu"
    assert facts["efa_provider"]["reason"] == "fi_info -p efa not run"


# --- the configure layer's decisions ---------------------------------------------------------


def statuses(plan):
    return {entry["name"]: entry["status"] for entry in plan}


def test_plan_on_a_local_cpu_node():
    facts = {
        "in_container": True,
        "counts": {"nvidia_gpus": 0, "nvswitches": 0, "efa_devices": 0, "neuron_devices": 0},
        "manifest": {"present": True, "flavor": "local", "components": ["efa", "tuning"]},
        "efa_provider": {
            "present": False,
            "reason": "fi_info -p efa: fi_getinfo: -61 (No data available)",
        },
    }
    plan = node.accelerator_plan(facts)
    not_in_image = "not applicable: not in the image (flavour local)"
    assert statuses(plan) == {
        "tuning": "configured",
        "nvidia_driver": not_in_image,
        "fabricmanager": not_in_image,
        "cuda_toolkit": not_in_image,
        "nccl": not_in_image,
        "efa": "not applicable: no EFA device on the PCI bus; "
        "fi_info -p efa: fi_getinfo: -61 (No data available)",
        "aws_ofi_nccl": not_in_image,
        "gdrcopy": not_in_image,
        "dcgm": not_in_image,
        "neuron": not_in_image,
        "container_runtime": not_in_image,
        "enroot_pyxis": not_in_image,
        "lustre_client": not_in_image,
    }
    assert [e["role"] for e in plan if e["configure"]] == ["tuning"]


def test_plan_on_an_nvswitch_gpu_node(tmp_path):
    sysfs = gpu_node_sysfs(tmp_path / "sys")
    manifest = flavour_manifest(tmp_path / "manifest.json", "gpu", GPU_FLAVOUR)
    facts = node.node_facts(str(sysfs), str(manifest), root=str(tmp_path / "root"))
    plan = accelerators.FilterModule().filters()["accelerator_plan"](facts)
    assert [e["role"] for e in plan if e["configure"]] == [
        "tuning",
        "nvidia_driver",
        "cuda_toolkit",
        "nccl",
        "efa",
        "aws_ofi_nccl",
        "gdrcopy",
        "dcgm",
        "container_runtime",
        "enroot_pyxis",
    ]
    assert statuses(plan)["fabricmanager"] == "configured"
    assert statuses(plan)["neuron"] == "not applicable: not in the image (flavour gpu)"
    assert (
        statuses(plan)["lustre_client"]
        == "not applicable: no lustre_client_mounts in the inventory"
    )
    mounts = [{"dns_name": "fs", "mount_name": "m", "path": "/fsx"}]
    assert statuses(node.accelerator_plan(facts, mounts))["lustre_client"] == "configured"
    assert statuses(node.accelerator_plan(facts, fabricmanager="never"))["fabricmanager"] == (
        "not applicable: nvidia_driver_fabricmanager is never"
    )


def test_plan_without_nvswitches_or_manifest(tmp_path):
    sysfs = gpu_node_sysfs(tmp_path / "sys", gpus=1, nvswitches=0, efa=0)
    manifest = flavour_manifest(tmp_path / "manifest.json", "gpu", GPU_FLAVOUR)
    facts = node.node_facts(str(sysfs), str(manifest), root=str(tmp_path))
    assert (
        statuses(node.accelerator_plan(facts))["fabricmanager"]
        == "not applicable: no NVSwitch on the PCI bus"
    )
    assert (
        statuses(node.accelerator_plan(facts, fabricmanager="always"))["fabricmanager"]
        == "configured"
    )
    facts["manifest"] = node.read_manifest(str(tmp_path / "none.json"))
    assert {e["status"] for e in node.accelerator_plan(facts)} == {
        f"not applicable: no image manifest at {tmp_path / 'none.json'}"
    }
    # A lustre mount in a container: the kernel module belongs to the host.
    facts = node.node_facts(str(sysfs), str(manifest), root=str(tmp_path))
    facts["in_container"] = True
    assert statuses(node.accelerator_plan(facts, [{"path": "/fsx"}]))["lustre_client"] == (
        "not applicable: in a container (the Lustre kernel module belongs to the host)"
    )


# --- the module ------------------------------------------------------------------------------


def _run_module(capsys, args):
    with patch_module_args(args), pytest.raises(SystemExit) as exit_info:
        node_facts.main()
    return exit_info.value.code, json.loads(capsys.readouterr().out)


def test_module_returns_the_facts_in_check_mode(capsys, tmp_path, monkeypatch):
    sysfs = gpu_node_sysfs(tmp_path / "sys", gpus=2, nvswitches=0, efa=1)
    manifest = flavour_manifest(tmp_path / "manifest.json", "gpu", GPU_FLAVOUR)
    monkeypatch.setattr(node_facts, "find_fi_info", lambda: None)
    code, result = _run_module(
        capsys,
        {"sysfs_root": str(sysfs), "manifest_path": str(manifest), "_ansible_check_mode": True},
    )
    assert code == 0
    assert result["changed"] is False
    facts = result["ansible_facts"]["mlcluster_node"]
    assert facts["counts"]["nvidia_gpus"] == 2
    assert facts["counts"]["efa_devices"] == 1
    assert facts["efa_provider"] == {
        "present": False,
        "fi_info": None,
        "reason": "fi_info (libfabric) not installed",
    }


def test_module_runs_fi_info_for_the_efa_provider(capsys, tmp_path, monkeypatch):
    calls = []

    def run_command(self, argv, **_kwargs):
        calls.append(argv)
        return 0, "provider: efa\n    domain: rdmap0s6-rdm\n", ""

    monkeypatch.setattr(node_facts, "find_fi_info", lambda: "/opt/amazon/efa/bin/fi_info")
    monkeypatch.setattr(node_facts.AnsibleModule, "run_command", run_command)
    _, result = _run_module(
        capsys, {"sysfs_root": str(tmp_path), "manifest_path": str(tmp_path / "m")}
    )
    assert calls == [["/opt/amazon/efa/bin/fi_info", "-p", "efa"]]
    assert result["ansible_facts"]["mlcluster_node"]["efa_provider"]["present"] is True


def test_module_rejects_an_unknown_option(capsys):
    code, result = _run_module(capsys, {"sysfs": "/sys"})
    assert code == 1
    assert "sysfs" in result["msg"]


def test_module_reads_the_install_records(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(node_facts, "find_fi_info", lambda: None)
    installed = tmp_path / "installed"
    installed.mkdir()
    (installed / "munge").write_text("ab" * 32 + "\n")
    (installed / "slurm").write_text("cd" * 32 + "\n")
    (installed / ".munge.tmp").write_text("half-written")
    args = {"sysfs_root": str(tmp_path), "manifest_path": str(tmp_path / "m")}
    _, result = _run_module(capsys, {**args, "installed_dir": str(installed)})
    assert result["ansible_facts"]["mlcluster_node"]["installed"] == {
        "munge": "ab" * 32,
        "slurm": "cd" * 32,
    }
    _, result = _run_module(capsys, {**args, "installed_dir": str(tmp_path / "none")})
    assert result["ansible_facts"]["mlcluster_node"]["installed"] == {}


def test_fi_info_is_the_efa_installers_first(monkeypatch):
    found = {
        "/opt/amazon/efa/bin/fi_info": "/opt/amazon/efa/bin/fi_info",
        "fi_info": "/usr/bin/fi_info",
    }
    monkeypatch.setattr(node_facts.shutil, "which", found.get)
    assert node_facts.find_fi_info() == "/opt/amazon/efa/bin/fi_info"
    monkeypatch.setattr(node_facts.shutil, "which", {"fi_info": "/usr/bin/fi_info"}.get)
    assert node_facts.find_fi_info() == "/usr/bin/fi_info"
    monkeypatch.setattr(node_facts.shutil, "which", lambda _command: None)
    assert node_facts.find_fi_info() is None
