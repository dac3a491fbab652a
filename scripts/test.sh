#!/usr/bin/env bash
# The whole test suite: set-up, lint, then pytest: unit tests, the test cases' correctness
# tests, the bake (templates, version rules, roles on a podman node), and the integration
# tests on local clusters (walking skeleton, Slurm, multi-node training, the molecule
# scenario). Run as root (rootful podman). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
export ANSIBLE_CONFIG="$PWD/ansible.cfg"

echo "== lint"
ruff check .
ruff format --check .
yamllint -s .
ansible-lint --offline --profile production -q

echo "== tests"
if [ "$#" -gt 0 ]; then
  exec pytest -p no:cacheprovider "$@"
fi
# The test cases' correctness tests run in a process of their own: importing Ansible's module
# utilities (the plugin unit tests do) patches sys.intern, which torch.compile's graph
# substitution then refuses.
pytest -p no:cacheprovider --durations=10 tests/workloads
# The unit tests are independent of each other: one worker per core (pytest-xdist).
pytest -p no:cacheprovider -n auto --durations=15 tests/unit
pytest -p no:cacheprovider --durations=15 tests/bake tests/integration
