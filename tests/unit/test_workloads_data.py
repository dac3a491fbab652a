"""Edges of mlcluster_workloads.data that its correctness tests (tests/workloads) leave open,
found by mutation testing: input checks, the teacher's scale, the token cycle's direction and
the token file's bounds. NumPy only, so they run with the unit tests."""

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


@pytest.mark.parametrize(("num_samples", "local_batch"), [(0, 1), (1, 0), (-3, 4)])
def test_sampler_needs_samples_and_a_batch(num_samples, local_batch):
    with pytest.raises(ValueError, match="num_samples and local_batch must be positive"):
        ShardedSampler(num_samples, local_batch, 0, 1)


def test_the_smallest_sampler():
    assert ShardedSampler(1, 1, 0, 1).indices(3).tolist() == [0]


def test_teacher_targets_have_unit_scale_and_the_given_noise():
    """tanh of inputs scaled by 1/sqrt(fan-in) has std about 0.64 (not saturated, ~1.0), and
    the output layer's 1/sqrt(64) keeps the targets there; the noise is what noise_std says."""
    _x, clean = TeacherRegression(noise_std=0.0).arrays()
    _x, noisy = TeacherRegression(noise_std=0.05).arrays()
    assert 0.55 < float(clean.std()) < 0.75
    assert 0.045 < float((noisy - clean).std()) < 0.055
    assert (clean.dtype, clean.shape) == (np.float32, (8192, 1))


def test_synthetic_windows_walk_the_cycle_forwards():
    tokens = SyntheticTokens(vocab_size=11, seq_len=6, seed=3)
    assert tokens.num_windows == 1_099_511_627_776  # 2**40: any index may be read
    position = {int(token): i for i, token in enumerate(tokens._cycle)}
    for window in tokens.batch(np.arange(20)):
        for current, following in itertools.pairwise(window):
            assert position[int(following)] == (position[int(current)] + 1) % 11


def test_token_file_windows_and_its_minimum(tmp_path):
    path = tmp_path / "tokens.bin"
    write_token_file(path, np.arange(8))
    # 8 tokens: one window of 4 inputs + 1 target; the next would need token 9
    assert TokenFile(path, 4).num_windows == 1
    write_token_file(path, np.arange(3))
    with pytest.raises(ValueError) as exc:
        TokenFile(path, 4)
    assert str(exc.value) == f"{path} holds 3 tokens, too few for one window of 5"


def test_token_ids_must_fit_the_dtype(tmp_path):
    path = tmp_path / "tokens.bin"
    write_token_file(path, np.array([0, 65535]))
    assert np.fromfile(path, dtype="<u2").tolist() == [0, 65535]
    for tokens in (np.array([-1, 5]), np.array([65536])):
        with pytest.raises(ValueError, match="token ids do not fit uint16"):
            write_token_file(path, tokens)
