from __future__ import annotations

import pytest
from workload_helpers import WORKER, launch_ranks


@pytest.fixture(scope="session")
def distributed_steps(tmp_path_factory):
    """One 2-rank run of dist_worker.py: the FSDP step that test_fsdp compares with an unsharded
    model."""
    out = tmp_path_factory.mktemp("distributed-steps")
    launch_ranks(str(WORKER), str(out))
    return out
