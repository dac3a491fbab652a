#!/bin/bash
# SageMaker HyperPod OnCreate script: configures this node with mlcluster's playbooks.
#
# HyperPod runs it as root on every node when the cluster is created and when a node is
# replaced, from the lifecycle folder it downloaded from the instance group's SourceS3Uri
# (uploaded by `mlcluster hyperpod lifecycle --bucket s3://BUCKET/PREFIX`). The work is done by
# mlcluster_lifecycle.py beside it; a non-zero exit fails the node and HyperPod reports it.
# Log: /var/log/provision/provisioning.log. Arguments are passed on (e.g. --dry-run, or
# ansible-playbook options such as --tags slurm).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
log="${MLCLUSTER_LIFECYCLE_ROOT:-}/var/log/provision/provisioning.log"
mkdir -p "$(dirname "$log")"

if ! command -v python3 >/dev/null; then
  echo "$(date -Is) mlcluster-lifecycle ERROR python3 is not installed on this node" | tee -a "$log" >&2
  exit 1
fi

exec python3 "$here/mlcluster_lifecycle.py" hyperpod \
  --provisioning-parameters "$here/provisioning_parameters.json" "$@"
