#!/usr/bin/env bash
# Builds .gpu-carry/: what scripts/gpu_lane.sh needs to run on a GPU machine that has Python 3.12
# but neither network nor Ansible. A plain `pip install --target` tree (site/) of ansible-core and
# the node checks' test tools, at the versions of the project's venv, built for CPython 3.12 on
# x86-64 Linux so that its compiled parts (PyYAML, MarkupSafe, cffi) load there. gpu_lane.sh puts
# it on PYTHONPATH. The playbook only uses ansible.builtin and the repo's mlcluster.core, so no
# collection from the `ansible` package is copied.
#
# Usage: bash scripts/gpu_lane_carry.sh   (needs .venv, from scripts/setup.sh, and PyPI)
set -euo pipefail
cd "$(dirname "$0")/.."

CARRY=.gpu-carry
TARGET_PYTHON=${TARGET_PYTHON:-3.12}
TARGET_PLATFORM=${TARGET_PLATFORM:-manylinux2014_x86_64}

version_of() { .venv/bin/pip show "$1" 2>/dev/null | sed -n 's/^Version: //p'; }
pins=()
for dist in ansible-core pytest pytest-testinfra; do
  version=$(version_of "$dist")
  [ -n "$version" ] || { echo "gpu_lane_carry: $dist is not in .venv (run scripts/setup.sh)" >&2; exit 2; }
  pins+=("$dist==$version")
done

rm -rf "$CARRY"
mkdir -p "$CARRY"
echo "gpu_lane_carry: ${pins[*]} for CPython $TARGET_PYTHON ($TARGET_PLATFORM)"
# --no-compile: bytecode made by this venv's Python is of no use to another version.
.venv/bin/pip install -q --no-compile --target "$CARRY/site" \
  --python-version "$TARGET_PYTHON" --implementation cp --abi "cp${TARGET_PYTHON/./}" \
  --platform "$TARGET_PLATFORM" --only-binary=:all: "${pins[@]}"

# Console scripts point at this venv's interpreter; gpu_lane.sh writes its own. ansible_test is
# ansible-core's test harness for collections, not needed to run playbooks.
rm -rf "$CARRY/site/bin" "$CARRY/site/ansible_test"
if ! grep -qxF '/.gpu-carry/' "$(git rev-parse --git-path info/exclude)" 2>/dev/null; then
  echo "gpu_lane_carry: add /.gpu-carry/ to .git/info/exclude so that git ignores it" >&2
fi
printf '%s\n' "${pins[@]}" >"$CARRY/PINS"
du -sh "$CARRY"
