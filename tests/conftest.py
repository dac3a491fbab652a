"""Shared test set-up."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="session")
def _private_state_dir(tmp_path_factory):
    """Keep the tests' run directories and clusters' keys out of the developer's .mlcluster."""
    mp = pytest.MonkeyPatch()
    mp.setenv("MLCLUSTER_STATE", str(tmp_path_factory.mktemp("mlcluster-state")))
    # Every run's artifacts stay for the session: the secret scan reads them all at the end.
    mp.setenv("MLCLUSTER_KEEP_RUNS", "100000")
    yield
    mp.undo()
