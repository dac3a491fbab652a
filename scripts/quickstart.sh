#!/usr/bin/env bash
# The main job on the local cluster, from a fresh Debian/Ubuntu machine: set up, start the
# cluster (baking its image with Packer the first time), configure it with site.yml (Slurm,
# accounting, the test cases' venv on /fsx), and run the DDP test case across two nodes through
# Slurm, printing its metrics summary.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
mlc=.venv/bin/mlcluster
$mlc local up
$mlc deploy -i inventory/local --report .mlcluster/deploy-report.json
$mlc run ddp -i inventory/local --nodes 2 --report .mlcluster/ddp-report.json
