from __future__ import annotations

import itertools

import numpy as np
import pytest
from mlcluster_workloads.data import (
    ShardedSampler,
    SyntheticTokens,
    TeacherRegression,
    TokenFile,
    write_token_file,
)


def test_blocks_by_hand_for_two_ranks():
    # global batch 6 = 2 ranks x 3; step 1 consumes positions 6..11; 10 samples wrap at 10
    rank0 = ShardedSampler(10, 3, 0, 2)
    rank1 = ShardedSampler(10, 3, 1, 2)
    assert rank0.positions(1).tolist() == [6, 7, 8]
    assert rank1.positions(1).tolist() == [9, 10, 11]
    assert rank1.indices(1).tolist() == [9, 0, 1]


@pytest.mark.parametrize("world_size", [2, 3, 4])
@pytest.mark.parametrize("shuffle", [False, True])
def test_ranks_are_disjoint_and_cover_the_global_batch(world_size, shuffle):
    num_samples, local_batch = 120, 5
    samplers = [
        ShardedSampler(num_samples, local_batch, rank, world_size, seed=7, shuffle=shuffle)
        for rank in range(world_size)
    ]
    single = ShardedSampler(num_samples, local_batch * world_size, 0, 1, seed=7, shuffle=shuffle)
    for step in range(3):
        per_rank = [set(s.indices(step).tolist()) for s in samplers]
        for a in range(world_size):
            for b in range(a + 1, world_size):
                assert per_rank[a].isdisjoint(per_rank[b])
        assert set().union(*per_rank) == set(single.indices(step).tolist())
        assert sum(len(r) for r in per_rank) == local_batch * world_size


def test_an_epoch_visits_every_sample_once_when_shuffled():
    sampler = ShardedSampler(24, 4, 0, 1, seed=1, shuffle=True)
    seen = np.concatenate([sampler.indices(step) for step in range(6)])
    assert sorted(seen.tolist()) == list(range(24))
    assert seen.tolist() != list(range(24))  # really permuted
    next_epoch = np.concatenate([sampler.indices(step) for step in range(6, 12)])
    assert next_epoch.tolist() != seen.tolist()  # a new permutation per epoch


def test_sampler_rejects_a_rank_outside_the_world():
    with pytest.raises(ValueError, match="outside"):
        ShardedSampler(10, 2, 2, 2)


def test_teacher_regression_is_deterministic_and_seeded():
    a = TeacherRegression(num_samples=16, in_features=4, seed=3).arrays()
    b = TeacherRegression(num_samples=16, in_features=4, seed=3).arrays()
    c = TeacherRegression(num_samples=16, in_features=4, seed=4).arrays()
    assert a[0].shape == (16, 4) and a[1].shape == (16, 1)
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_teacher_regression_is_float32_inputs_and_targets():
    # A float64 target made DDP fail on CUDA ("Found dtype Double but expected Float") while the
    # CPU path promoted it silently; both arrays must match the model's float32 parameters.
    x, y = TeacherRegression(num_samples=16, in_features=4, seed=3).arrays()
    assert (x.dtype, y.dtype) == (np.float32, np.float32)


def test_synthetic_tokens_follow_one_cycle():
    source = SyntheticTokens(vocab_size=50, seq_len=12, seed=2)
    batch = source.batch(np.array([0, 1, 2]))
    assert batch.shape == (3, 13)  # seq_len + 1: inputs and shifted targets
    successor = {}
    for row in batch:
        for current, following in itertools.pairwise(row):
            assert successor.setdefault(int(current), int(following)) == int(following)
    np.testing.assert_array_equal(batch, source.batch(np.array([0, 1, 2])))
    assert not np.array_equal(batch[0], batch[1])


@pytest.mark.parametrize("dtype", ["uint16", "uint32"])
def test_token_file_windows(tmp_path, dtype):
    tokens = np.arange(1000, 1000 + 41) * (70 if dtype == "uint32" else 1)
    path = tmp_path / "tokens.bin"
    write_token_file(path, tokens, dtype=dtype)
    assert path.stat().st_size == 41 * (2 if dtype == "uint16" else 4)
    source = TokenFile(path, seq_len=8, dtype=dtype)
    assert source.num_windows == 5  # (41 - 1) // 8
    batch = source.batch(np.array([0, 4]))
    assert batch.dtype == np.int64
    np.testing.assert_array_equal(batch[0], tokens[0:9])
    np.testing.assert_array_equal(batch[1], tokens[32:41])


def test_token_file_is_little_endian(tmp_path):
    path = tmp_path / "tokens.bin"
    path.write_bytes(bytes([0x01, 0x02, 0x03, 0x04, 0x05, 0x00]))
    assert TokenFile(path, seq_len=2).batch(np.array([0])).tolist() == [[0x0201, 0x0403, 5]]


def test_token_file_too_short_and_overflow(tmp_path):
    path = tmp_path / "short.bin"
    write_token_file(path, np.array([1, 2, 3]))
    with pytest.raises(ValueError, match="too few"):
        TokenFile(path, seq_len=8)
    with pytest.raises(ValueError, match="do not fit"):
        write_token_file(path, np.array([70000]), dtype="uint16")
