from __future__ import annotations

import pytest
from workload_helpers import WORKER, launch_ranks


@pytest.fixture(scope="session")
def distributed_steps(tmp_path_factory):
    """One 2-rank run of dist_worker.py: the DDP and FSDP steps the gradient tests compare."""
    out = tmp_path_factory.mktemp("distributed-steps")
    launch_ranks(str(WORKER), str(out))
    return out
