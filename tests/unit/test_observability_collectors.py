"""The node collector (EFA counters, mounts) and the Slurm exporter, run for real on made-up
inputs: a sysfs tree made in the test, and Slurm 22.05's command output as the commands print
it."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import subprocess
import sys
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

ROOT = Path(__file__).resolve().parents[2]
NODE_COLLECTOR = ROOT / "roles/node_exporter/files/mlcluster-node-collector"
SLURM_EXPORTER = ROOT / "roles/slurm_exporter/files/mlcluster-slurm-exporter"


def load(path: Path):
    loader = importlib.machinery.SourceFileLoader(path.name.replace("-", "_"), str(path))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def samples(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def make_device(sysfs: Path, name: str, driver: str, counters: dict[str, str]) -> None:
    dev = sysfs / "class/infiniband" / name
    (dev / "device").mkdir(parents=True)
    drivers = sysfs / "bus/pci/drivers" / driver
    drivers.mkdir(parents=True, exist_ok=True)
    (dev / "device/driver").symlink_to(drivers)
    hw = dev / "ports/1/hw_counters"
    hw.mkdir(parents=True)
    for counter, value in counters.items():
        (hw / counter).write_text(value)


def run_collector(tmp_path: Path, sysfs: Path, *mounts: str) -> str:
    proc_mounts = tmp_path / "mounts"
    proc_mounts.write_text(
        "overlay / overlay rw 0 0\n/dev/vdb /fsx ext4 rw 0 0\n/dev/vdc /my\\040data xfs rw 0 0\n"
    )
    out = tmp_path / "out.prom"
    args = ["--sysfs", str(sysfs), "--output", str(out), "--proc-mounts", str(proc_mounts)]
    for mount in mounts:
        args += ["--mount", mount]
    subprocess.run([sys.executable, str(NODE_COLLECTOR), *args], check=True, timeout=60)
    return out.read_text()


def test_efa_counters_of_efa_devices_only(tmp_path):
    sysfs = tmp_path / "sys"
    make_device(
        sysfs,
        "rdmap16s27",
        "efa",
        {"rdma_read_bytes": "123456\n", "rdma_write_wr_err": "0\n", "retrans_pkts": "7\n"},
    )
    make_device(sysfs, "mlx5_0", "mlx5_core", {"rx_write_requests": "5\n"})
    text = run_collector(tmp_path, sysfs)
    assert samples(text) == [
        "efa_devices 1.0",
        f'efa_collector_info{{status="ok",sysfs="{sysfs}"}} 1.0',
        'efa_hw_counter_total{counter="rdma_read_bytes",device="rdmap16s27",port="1"} 123456.0',
        'efa_hw_counter_total{counter="rdma_write_wr_err",device="rdmap16s27",port="1"} 0.0',
        'efa_hw_counter_total{counter="retrans_pkts",device="rdmap16s27",port="1"} 7.0',
    ]


def test_no_efa_device_is_said_not_zeroed(tmp_path):
    sysfs = tmp_path / "sys"
    make_device(sysfs, "mlx5_0", "mlx5_core", {"rx_write_requests": "5\n"})
    text = run_collector(tmp_path, sysfs)
    assert samples(text) == [
        "efa_devices 0.0",
        f'efa_collector_info{{status="no device",sysfs="{sysfs}"}} 1.0',
    ]
    # And with no /sys/class/infiniband at all (a node without any RDMA driver).
    assert samples(run_collector(tmp_path, tmp_path / "empty"))[0] == "efa_devices 0.0"


def test_mounts_present_and_missing(tmp_path):
    text = run_collector(tmp_path, tmp_path / "empty", "/fsx", "/scratch", "/my data", "/fsx/")
    assert [s for s in samples(text) if s.startswith("mlcluster_node_mount_present")] == [
        'mlcluster_node_mount_present{mountpoint="/fsx"} 1.0',
        'mlcluster_node_mount_present{mountpoint="/fsx/"} 1.0',
        'mlcluster_node_mount_present{mountpoint="/my data"} 1.0',
        'mlcluster_node_mount_present{mountpoint="/scratch"} 0.0',
    ]


# Slurm 22.05's output for a controller and two compute nodes in partition `compute`
# (the default, so squeue shows it without the star sinfo's %P would add).
SINFO = """compute1|compute|allocated|2/0/0/2
compute2|compute|drained|0/0/2/2
gpu1|gpu|mixed|4/60/0/64
gpu1|compute|mixed|4/60/0/64
"""
SCONTROL = (
    "NodeName=compute1 Arch=x86_64 CoresPerSocket=1 CPUAlloc=2 CPUEfctv=2 CPUTot=2 "
    "Gres=(null) State=ALLOCATED Partitions=compute CfgTRES=cpu=2,mem=1000M,billing=2 "
    "AllocTRES=cpu=2 Reason=(null)\n"
    "NodeName=compute2 Arch=x86_64 CPUAlloc=0 CPUTot=2 State=IDLE+DRAIN Partitions=compute "
    "CfgTRES=cpu=2,mem=1000M,billing=2 AllocTRES= Reason=disk full [root@2026-12-02T06:00:00]\n"
    "NodeName=gpu1 CPUAlloc=4 CPUTot=64 Gres=gpu:8 State=MIXED Partitions=gpu,compute "
    "CfgTRES=cpu=64,mem=500G,billing=64,gres/gpu=8 AllocTRES=cpu=4,gres/gpu=2 Reason=(null)\n"
)
SQUEUE = """12|compute|RUNNING|None|2
13|compute|PENDING|Resources|2
14|compute|PENDING|Resources|4
15|gpu|PENDING|Priority|8
16|gpu|RUNNING|None|4
"""
SDIAG = """*******************************************************
sdiag output at Wed Dec 02 06:50:00 2026 (1764658200)
Data since      Wed Dec 02 00:00:00 2026 (1764633600)
*******************************************************
Server thread count:  3
Agent queue size:     0
Agent count:          0
Agent thread count:   0
DBD Agent queue size: 0

Jobs submitted: 16
Jobs started:   12
Jobs completed: 10
Jobs canceled:  1
Jobs failed:    0

Job states ts:  Wed Dec 02 06:49:52 2026 (1764658192)
Jobs pending:   3
Jobs running:   2

Main schedule statistics (microseconds):
	Last cycle:   95
	Max cycle:    1402
	Total cycles: 210
	Mean cycle:   141
	Mean depth cycle:  2
	Cycles per minute: 1
	Last queue length: 3

Backfilling stats
	Total backfilled jobs (since last slurm start): 4
	Total backfilled jobs (since last stats cycle start): 0
	Total backfilled heterogeneous job components: 0
	Total cycles: 30
	Last cycle when: Wed Dec 02 06:49:30 2026 (1764658170)
	Last cycle: 812
	Max cycle:  2300
	Mean cycle: 640
	Last depth cycle: 3
	Last queue length: 3

Latency for 1000 calls to gettimeofday(): 17 microseconds

Remote Procedure Call statistics by message type
	REQUEST_PARTITION_INFO                  ( 2009) count:42   ave_time:123  total_time:5166
"""


def exporter_text(outputs: dict) -> list[str]:
    exporter = load(SLURM_EXPORTER)

    class Fixed:
        def collect(self):
            yield from exporter.metrics(outputs)

    registry = CollectorRegistry()
    registry.register(Fixed())
    return samples(generate_latest(registry).decode())


def test_slurm_exporter_nodes_cpus_gpus_jobs_scheduler():
    text = exporter_text({"sinfo": SINFO, "scontrol": SCONTROL, "squeue": SQUEUE, "sdiag": SDIAG})
    assert text == [
        "slurm_up 1.0",
        'slurm_node_state{node="compute1",partition="compute",state="allocated"} 1.0',
        'slurm_node_state{node="compute2",partition="compute",state="drained"} 1.0',
        'slurm_node_state{node="gpu1",partition="gpu",state="mixed"} 1.0',
        'slurm_node_state{node="gpu1",partition="compute",state="mixed"} 1.0',
        'slurm_nodes{partition="compute",state="allocated"} 1.0',
        'slurm_nodes{partition="compute",state="drained"} 1.0',
        'slurm_nodes{partition="compute",state="mixed"} 1.0',
        'slurm_nodes{partition="gpu",state="mixed"} 1.0',
        'slurm_partition_cpus{partition="compute",state="allocated"} 6.0',
        'slurm_partition_cpus{partition="compute",state="idle"} 60.0',
        'slurm_partition_cpus{partition="compute",state="other"} 2.0',
        'slurm_partition_cpus{partition="compute",state="total"} 68.0',
        'slurm_partition_cpus{partition="gpu",state="allocated"} 4.0',
        'slurm_partition_cpus{partition="gpu",state="idle"} 60.0',
        'slurm_partition_cpus{partition="gpu",state="other"} 0.0',
        'slurm_partition_cpus{partition="gpu",state="total"} 64.0',
        'slurm_partition_gpus{partition="compute",state="allocated"} 2.0',
        'slurm_partition_gpus{partition="compute",state="idle"} 6.0',
        'slurm_partition_gpus{partition="compute",state="total"} 8.0',
        'slurm_partition_gpus{partition="gpu",state="allocated"} 2.0',
        'slurm_partition_gpus{partition="gpu",state="idle"} 6.0',
        'slurm_partition_gpus{partition="gpu",state="total"} 8.0',
        'slurm_jobs{partition="compute",state="pending"} 2.0',
        'slurm_jobs{partition="compute",state="running"} 1.0',
        'slurm_jobs{partition="gpu",state="pending"} 1.0',
        'slurm_jobs{partition="gpu",state="running"} 1.0',
        'slurm_job_cpus{partition="compute",state="pending"} 6.0',
        'slurm_job_cpus{partition="compute",state="running"} 2.0',
        'slurm_job_cpus{partition="gpu",state="pending"} 8.0',
        'slurm_job_cpus{partition="gpu",state="running"} 4.0',
        'slurm_jobs_pending{partition="compute",reason="Resources"} 2.0',
        'slurm_jobs_pending{partition="gpu",reason="Priority"} 1.0',
        "slurm_scheduler_agent_queue_size 0.0",
        'slurm_scheduler_backfilled_jobs{scheduler="backfill"} 4.0',
        'slurm_scheduler_cycles{scheduler="backfill"} 30.0',
        'slurm_scheduler_cycles{scheduler="main"} 210.0',
        "slurm_scheduler_jobs_canceled 1.0",
        "slurm_scheduler_jobs_completed 10.0",
        "slurm_scheduler_jobs_failed 0.0",
        "slurm_scheduler_jobs_started 12.0",
        "slurm_scheduler_jobs_submitted 16.0",
        'slurm_scheduler_last_cycle_microseconds{scheduler="backfill"} 812.0',
        'slurm_scheduler_last_cycle_microseconds{scheduler="main"} 95.0',
        'slurm_scheduler_last_queue_length{scheduler="backfill"} 3.0',
        'slurm_scheduler_last_queue_length{scheduler="main"} 3.0',
        'slurm_scheduler_max_cycle_microseconds{scheduler="backfill"} 2300.0',
        'slurm_scheduler_max_cycle_microseconds{scheduler="main"} 1402.0',
        'slurm_scheduler_mean_cycle_microseconds{scheduler="backfill"} 640.0',
        'slurm_scheduler_mean_cycle_microseconds{scheduler="main"} 141.0',
        "slurm_scheduler_threads 3.0",
    ]


def test_slurm_node_state_flags_stripped_and_idle_partition_has_zero_jobs():
    exporter = load(SLURM_EXPORTER)
    assert [exporter.node_state(s) for s in ("idle*", "down~", "drained", "MIXED#")] == [
        "idle",
        "down",
        "drained",
        "mixed",
    ]
    text = exporter_text(
        {"sinfo": "compute1|compute|idle*|0/2/0/2\n", "scontrol": "", "squeue": "", "sdiag": ""}
    )
    assert 'slurm_node_state{node="compute1",partition="compute",state="idle"} 1.0' in text
    assert [s for s in text if s.startswith("slurm_jobs{")] == [
        'slurm_jobs{partition="compute",state="pending"} 0.0',
        'slurm_jobs{partition="compute",state="running"} 0.0',
    ]


def test_failed_command_sets_slurm_up_0_and_keeps_the_others(capsys):
    exporter = load(SLURM_EXPORTER)
    answers = {"sinfo": SINFO, "scontrol": SCONTROL, "squeue": None, "sdiag": SDIAG}

    def runner(argv, timeout):
        assert timeout == 3.0
        return answers[argv[0]]

    registry = CollectorRegistry()
    registry.register(exporter.SlurmCollector(timeout=3.0, runner=runner))
    text = samples(generate_latest(registry).decode())
    assert text[0] == "slurm_up 0.0"
    assert not any(s.startswith("slurm_jobs") for s in text)
    assert 'slurm_nodes{partition="compute",state="drained"} 1.0' in text
    assert any(s.startswith("slurm_scrape_duration_seconds ") for s in text)


def test_real_command_failure_is_reported_not_raised(capsys):
    exporter = load(SLURM_EXPORTER)
    assert exporter.run([sys.executable, "-c", "import sys; sys.exit(3)"], 10) is None
    assert exporter.run(["/nonexistent/sinfo"], 10) is None
    assert exporter.run([sys.executable, "-c", "print('a|b')"], 10) == "a|b\n"
    assert "exited 3" in capsys.readouterr().err
