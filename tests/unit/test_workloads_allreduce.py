"""Edges of mlcluster_workloads.allreduce that the workloads' tests leave open, found by
mutation testing: the message-size sweep's bounds. No torch needed."""

from __future__ import annotations

import pytest
from mlcluster_workloads.allreduce import message_sizes, parse_size


@pytest.mark.parametrize(
    ("min_bytes", "max_bytes", "factor"), [(8, 64, 1), (0, 64, 2), (64, 8, 2), (-8, 8, 2)]
)
def test_each_bad_bound_alone_is_rejected(min_bytes, max_bytes, factor):
    with pytest.raises(ValueError, match="need 1 <= min_bytes <= max_bytes and factor >= 2"):
        message_sizes(min_bytes, max_bytes, factor)


def test_the_sweep_ends_at_the_largest_size_within_max():
    assert message_sizes(8, 64, 2) == [8, 16, 32, 64]
    assert message_sizes(8, 63, 2) == [8, 16, 32]
    assert message_sizes(1, 1, 2) == [1]
    assert message_sizes(1, 100, 10) == [1, 10, 100]


@pytest.mark.parametrize(("text", "size"), [("8", 8), ("256K", 262144), ("128m", 134217728)])
def test_sizes_are_powers_of_1024(text, size):
    assert parse_size(text) == size
