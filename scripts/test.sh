#!/usr/bin/env bash
# The whole test suite: set-up, lint, unit and integration tests (which build and start local
# clusters with podman), the molecule scenarios. Run as root (rootful podman).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
export ANSIBLE_CONFIG="$PWD/ansible.cfg"

echo "== lint"
ruff check .
ruff format --check .
yamllint -s .
ansible-lint --offline --profile production

echo "== tests"
pytest -p no:cacheprovider "$@"
