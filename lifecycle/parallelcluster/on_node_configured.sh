#!/bin/bash
# AWS ParallelCluster OnNodeConfigured custom action: configures this node with mlcluster's
# playbooks after ParallelCluster has configured it (Slurm, shared storage).
#
# ParallelCluster downloads only this script, so it fetches the rest of the upload of
# `mlcluster hyperpod lifecycle --bucket s3://BUCKET/PREFIX` (mlcluster_lifecycle.py and the
# project copy) itself; the cluster's instance role needs read access to that prefix
# (HeadNode/SlurmQueues Iam.S3Access, which `mlcluster pcluster config` writes). Arguments, from
# the custom action's Args:
#   $1          s3://BUCKET/PREFIX of the upload
#   --queue Q   on compute nodes: the Slurm queue this node belongs to
# The node type and the head node's address come from /etc/parallelcluster/cfnconfig. A
# non-zero exit fails the node, and ParallelCluster reports it.
# Log: /var/log/provision/provisioning.log.
set -euo pipefail

root="${MLCLUSTER_LIFECYCLE_ROOT:-}"
log="$root/var/log/provision/provisioning.log"
mkdir -p "$(dirname "$log")"
fail() {
  echo "$(date -Is) mlcluster-lifecycle ERROR $*" | tee -a "$log" >&2
  exit 1
}

[[ $# -ge 1 && $1 == s3://* ]] || fail "usage: $0 s3://BUCKET/PREFIX [--queue QUEUE] (the custom action's Args)"
source_uri="${1%/}"
shift
command -v python3 >/dev/null || fail "python3 is not installed on this node"
command -v aws >/dev/null || fail "the AWS CLI is not installed on this node"

lifecycle_dir="$root/opt/mlcluster/lifecycle"
mkdir -p "$lifecycle_dir"
# sync makes a re-run fetch only what changed and leave the copy whole.
aws s3 sync --only-show-errors --delete "$source_uri/" "$lifecycle_dir/" >>"$log" 2>&1 \
  || fail "cannot download $source_uri/ (does the instance role have Iam.S3Access to it?)"

exec python3 "$lifecycle_dir/mlcluster_lifecycle.py" parallelcluster "$@"
