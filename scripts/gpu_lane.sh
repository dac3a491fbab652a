#!/usr/bin/env bash
# GPU lane: on the machine it runs on (one node with NVIDIA GPUs, connection local), runs
#   1. playbooks/gpu_lane.yml with --check: the roles' own GPU detection and read-only probes
#      (nvidia_driver detect, cuda_toolkit and nccl configure probes, the gpu_gres and
#      image_manifest modules); nothing is installed or changed;
#   2. the GPU node checks, src/mlcluster/nodechecks/test_gpu_node.py (testinfra, through mlcluster.validate):
#      GPU count, driver version, persistence mode, CUDA driver API, libnccl;
# and writes the results (at most 6 files) to RESULTS, prints a summary, exits 1 if a check
# failed. Ansible comes from .gpu-carry/site (scripts/gpu_lane_carry.sh) on PYTHONPATH where it
# exists, so that a machine without network or Ansible can run it; else from the repo's .venv.
#
# Environment:
#   RESULTS       results directory (default /tmp/mlcluster-gpu-lane)
#   PYTHON        interpreter (default: python3 with .gpu-carry, else .venv/bin/python)
#   EXPECT_GPUS   GPUs the node must show (default: those the nvidia_driver role finds on the
#                 PCI bus; set it in a container, which may see more of the host's GPUs there)
#   ALLOW_NO_GPU  1: a machine without an NVIDIA GPU passes (the GPU checks are skipped)
#   PERSISTENCED  0: do not require persistence mode (nvidia_driver_persistenced: false)
#   NCCL_PREFIX   NCCL wheel prefix with lib/libnccl.so.2 (default: that of the NVIDIA NCCL
#                 wheel in PYTHON's packages where it has one, else the nccl role's /opt/nccl)
#   GPU_CARRY     the carried directory (default .gpu-carry)
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
root=$PWD
RESULTS=${RESULTS:-/tmp/mlcluster-gpu-lane}
carry=${GPU_CARRY:-$root/.gpu-carry}

if [ -d "$carry/site" ]; then
  PY=${PYTHON:-python3}
  export PYTHONPATH="$carry/site:$root/src${PYTHONPATH:+:$PYTHONPATH}"
elif [ -x .venv/bin/python ]; then
  PY=${PYTHON:-$root/.venv/bin/python}
  export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}"
else
  echo "gpu_lane: no $carry/site (scripts/gpu_lane_carry.sh) and no .venv (scripts/setup.sh)" >&2
  exit 2
fi
# The interpreter itself (not a wrapper such as a pyenv shim): it heads the console scripts.
PY=$("$PY" -c 'import sys; print(sys.executable)') || { echo "gpu_lane: no Python $PY" >&2; exit 2; }
if ! ansible_version=$("$PY" -c 'import ansible.release as r; print(r.__version__)'); then
  echo "gpu_lane: $PY cannot import ansible (PYTHONPATH=$PYTHONPATH)" >&2
  exit 2
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Console scripts for the chosen interpreter: the playbook run and testinfra (which reads the
# inventory with ansible-inventory) call them by name.
mkdir -p "$work/bin"
for cli in playbook inventory; do
  printf '#!%s\nimport sys\nfrom ansible.cli.%s import main\nsys.exit(main())\n' "$PY" "$cli" \
    >"$work/bin/ansible-$cli"
  chmod +x "$work/bin/ansible-$cli"
done
export PATH="$work/bin:$PATH"
export ANSIBLE_CONFIG="$root/ansible.cfg" ANSIBLE_HOME="$work/ansible"
export ANSIBLE_LOCAL_TEMP="$work/tmp" ANSIBLE_REMOTE_TMP="$work/remote-tmp"
export ANSIBLE_NOCOLOR=1 PYTHONDONTWRITEBYTECODE=1
# Ansible refuses to start without a UTF-8 locale (a bare container often has none set).
case "${LC_ALL:-${LC_CTYPE:-${LANG:-}}}" in
  *UTF-8* | *utf8* | *UTF8* | *utf-8*) ;;
  *) export LC_ALL=C.UTF-8 ;;
esac

# The NVIDIA NCCL wheel in PYTHON's packages (nvidia/nccl/lib, or nvidia/cu13/lib for the
# CUDA 13 wheels) has the nccl role's prefix layout: <prefix>/lib/libnccl.so.2.
nccl_prefix=${NCCL_PREFIX:-$("$PY" -c 'import glob, importlib.util, os
spec = importlib.util.find_spec("nvidia")
libs = [path for top in (spec.submodule_search_locations if spec else [])
        for path in sorted(glob.glob(os.path.join(top, "**", "libnccl.so.2"), recursive=True))]
print(os.path.dirname(os.path.dirname(libs[0])) if libs else "")' 2>/dev/null)}
persistenced=true
[ "${PERSISTENCED:-1}" = 0 ] && persistenced=false
allow_no_gpu=false
[ "${ALLOW_NO_GPU:-0}" = 1 ] && allow_no_gpu=true

mkdir -p "$RESULTS"
lane_files=(inventory.yml playbook.log gpu_lane.json gres.json node_checks.json summary.txt)
(cd "$RESULTS" && rm -f "${lane_files[@]}")

# The inventory of this one machine; the node checks' copy adds the GPUs they must find.
write_inventory() {
  {
    echo "all:"
    echo "  hosts:"
    echo "    localhost:"
    echo "      ansible_connection: local"
    echo "      ansible_python_interpreter: \"$PY\""
    echo "      nvidia_driver_persistenced: $persistenced"
    [ -z "$nccl_prefix" ] || echo "      nccl_prefix: \"$nccl_prefix\""
    [ -z "${1:-}" ] || echo "      mlcluster_expected_gpus: $1"
  } >"$RESULTS/inventory.yml"
}

echo "gpu_lane: $PY ($("$PY" -V 2>&1)), ansible-core $ansible_version; results in $RESULTS"
write_inventory
timeout 240 ansible-playbook -i "$RESULTS/inventory.yml" playbooks/gpu_lane.yml --check \
  -e "{\"mlcluster_gpu_lane_results\": \"$RESULTS\", \"mlcluster_gpu_lane_allow_no_gpu\": $allow_no_gpu}" \
  >"$RESULTS/playbook.log" 2>&1
playbook_rc=$?
if [ "$playbook_rc" != 0 ]; then
  echo "gpu_lane: the playbook failed (exit $playbook_rc); the end of playbook.log:"
  tail -n 25 "$RESULTS/playbook.log"
fi

expected=${EXPECT_GPUS:-$("$PY" -c 'import json, sys
print(json.load(open(sys.argv[1]))["nvidia_driver_detect"]["pci_gpus"])' \
  "$RESULTS/gpu_lane.json" 2>/dev/null || echo 0)}
write_inventory "$expected"

# mlcluster validate runs every node check (Slurm's too); the lane runs the GPU ones only, with
# the same collector, and writes the same report.
timeout 240 "$PY" - "$RESULTS" "$playbook_rc" "$work/pytest" <<'EOF' | tee "$RESULTS/summary.txt"
import json
import sys
from dataclasses import asdict
from pathlib import Path

from mlcluster.validate import run_checks, summary_table

results, playbook_rc = Path(sys.argv[1]), int(sys.argv[2])
_, collector = run_checks(
    results / "inventory.yml", ["-k", "test_gpu_node", f"--basetemp={sys.argv[3]}"]
)
checks = collector.checks
counts = {k: sum(c.outcome == k for c in checks) for k in ("passed", "failed", "skipped")}
report = {**counts, "errors": collector.collect_errors, "checks": [asdict(c) for c in checks]}
(results / "node_checks.json").write_text(json.dumps(report, indent=2) + "\n")


def load(name):
    path = results / name
    return json.loads(path.read_text()) if path.exists() else {}


lane, gres = load("gpu_lane.json"), load("gres.json")
print("== GPU lane summary")
if lane:
    host = lane["manifest"]["host"]
    pci = lane["nvidia_driver_detect"]
    print(
        f"host: {host['os']} {host['architecture']}, kernel {host['kernel']}, "
        f"container: {host['in_container']}; Python {lane['python']}, "
        f"ansible-core {lane['ansible_core']}"
    )
    print(f"PCI bus: {pci['pci_gpus']} NVIDIA GPU(s), {pci['pci_nvswitches']} NVSwitch(es)")
if gres.get("available"):
    print(
        f"GPUs ({gres['method']}): {gres['count']} x {gres['model']}, "
        f"driver {gres['driver_version']}, GRES {gres['gres']}"
    )
elif gres:
    print(f"GPUs: no NVIDIA GPU detected ({gres['reason']})")
for name, info in lane.get("manifest", {}).get("components", {}).items():
    where = info.get("library") or info.get("cuda_home") or ""
    found = f"{info.get('version') or 'version unknown'} {where}" if info["present"] else "none"
    print(f"{name}: {found}")
for problem in lane.get("missing", []) + lane.get("mismatches", []):
    print(f"PROBLEM {problem}")
print(f"playbook: {'ok' if playbook_rc == 0 else f'FAILED (exit {playbook_rc})'}")
if checks:
    print(summary_table(checks))
for reason in sorted({c.message for c in checks if c.outcome == "skipped"}):
    print(f"skipped: {reason}")
for error in collector.collect_errors:
    print(f"ERROR {error}")
print(
    f"node checks: {counts['passed']} passed, {counts['failed']} failed, "
    f"{counts['skipped']} skipped"
)
ok = playbook_rc == 0 and checks and not counts["failed"] and not collector.collect_errors
print(f"GPU lane: {'PASS' if ok else 'FAIL'}")
sys.exit(0 if ok else 1)
EOF
