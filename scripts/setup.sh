#!/usr/bin/env bash
# One-time set-up of a Debian 12 / Ubuntu 22.04+ machine for mlcluster: the host packages the
# local cluster needs (rootful podman, runc, debootstrap, packer) and the Python venv (.venv)
# with the CLI, Ansible, the test tools and the workloads. Safe to re-run: it skips what is
# already done.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  podman runc containernetworking-plugins uidmap   # rootful podman nodes (runc: cgroup v1 hosts)
  debootstrap                                      # the Debian 12 base image
  packer                                           # bakes the node image (Debian's 1.6.6)
  openssh-client iproute2 rsync jq git ca-certificates
  python3 python3-venv python3-dev gcc             # the venv
  prometheus prometheus-alertmanager               # promtool, amtool: the alert rules' tests
)

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "setup: mlcluster needs Python >= 3.11 ($PY is $("$PY" --version 2>&1))" >&2
  exit 2
fi

stamp=.venv/.mlcluster-setup
want=$(cat pyproject.toml workloads/pyproject.toml 2>/dev/null | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: creating the Python venv in .venv (ansible, test tools, torch CPU, jax)"
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  extras=".[test,workloads]"
  .venv/bin/pip install -q -e "$extras"
  if [ -f workloads/pyproject.toml ]; then
    .venv/bin/pip install -q -e ./workloads
  fi
  echo "$want" > "$stamp"
fi
echo "setup: done (.venv/bin/mlcluster)"
