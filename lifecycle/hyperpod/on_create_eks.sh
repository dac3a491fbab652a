#!/bin/bash
# SageMaker HyperPod OnCreate script for a cluster orchestrated by EKS: configures this node
# with mlcluster's playbooks (base, accelerators, role eks_node; nothing of Slurm). HyperPod
# joins the node to the EKS cluster and labels it itself (docs/eks.md, "HyperPod on EKS").
# Name it as the instance groups' OnCreate (LifeCycleConfig.OnCreate: on_create_eks.sh) after
# `mlcluster hyperpod lifecycle --bucket s3://BUCKET/PREFIX`. The work is done by
# mlcluster_lifecycle.py beside it; a non-zero exit fails the node and HyperPod reports it.
# Log: /var/log/provision/provisioning.log. Arguments are passed on (e.g. --dry-run).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
log="${MLCLUSTER_LIFECYCLE_ROOT:-}/var/log/provision/provisioning.log"
mkdir -p "$(dirname "$log")"

if ! command -v python3 >/dev/null; then
  echo "$(date -Is) mlcluster-lifecycle ERROR python3 is not installed on this node" | tee -a "$log" >&2
  exit 1
fi

exec python3 "$here/mlcluster_lifecycle.py" hyperpod-eks "$@"
