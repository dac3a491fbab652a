"""Deterministic data for the training cases, split so that ranks never read the same sample.

Nothing here imports torch or jax; both kinds of case use it.

The global sample stream is a sequence of positions 0, 1, 2, ...; training step ``s`` (counted
from 0) consumes positions ``[s*G, (s+1)*G)`` with ``G = world_size * local_batch``, and rank
``r`` reads the contiguous block ``s*G + r*local_batch + [0, local_batch)`` of it. Position ``p``
is sample ``p mod N`` of epoch ``p // N``, through a per-epoch permutation when shuffling. The
ranks' blocks are disjoint and together are exactly the global batch, whatever the world size, so
a run on one process with the same global batch sees the same samples.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

TOKEN_DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}


class ShardedSampler:
    def __init__(
        self,
        num_samples: int,
        local_batch: int,
        rank: int,
        world_size: int,
        *,
        seed: int = 0,
        shuffle: bool = False,
    ) -> None:
        if num_samples < 1 or local_batch < 1:
            raise ValueError("num_samples and local_batch must be positive")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside a world of {world_size}")
        self.num_samples = num_samples
        self.local_batch = local_batch
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.shuffle = shuffle
        self._permutation: tuple[int, np.ndarray] | None = None

    @property
    def global_batch(self) -> int:
        return self.local_batch * self.world_size

    def positions(self, step: int) -> np.ndarray:
        """Stream positions this rank reads at ``step``."""
        first = step * self.global_batch + self.rank * self.local_batch
        return np.arange(first, first + self.local_batch, dtype=np.int64)

    def indices(self, step: int) -> np.ndarray:
        """Sample indices this rank reads at ``step``."""
        return self.sample_indices(self.positions(step))

    def sample_indices(self, positions: np.ndarray) -> np.ndarray:
        within = positions % self.num_samples
        if not self.shuffle:
            return within
        epochs = positions // self.num_samples
        return np.array(
            [self._epoch_permutation(int(e))[int(i)] for e, i in zip(epochs, within, strict=True)],
            dtype=np.int64,
        )

    def _epoch_permutation(self, epoch: int) -> np.ndarray:
        if self._permutation is None or self._permutation[0] != epoch:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)
            self._permutation = (epoch, order)
        return self._permutation[1]


@dataclass(frozen=True)
class TeacherRegression:
    """``y = teacher(x) + noise`` for a fixed random two-layer tanh teacher; all from ``seed``."""

    num_samples: int = 8192
    in_features: int = 32
    teacher_hidden: int = 64
    noise_std: float = 0.05
    seed: int = 0

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Inputs (num_samples, in_features) and targets (num_samples, 1), float32."""
        rng = np.random.default_rng(self.seed)
        x = rng.standard_normal((self.num_samples, self.in_features), dtype=np.float32)
        w1 = rng.standard_normal((self.in_features, self.teacher_hidden), dtype=np.float32)
        w2 = rng.standard_normal((self.teacher_hidden, 1), dtype=np.float32)
        hidden = np.tanh(x @ (w1 / np.sqrt(self.in_features)))
        y = hidden @ (w2 / np.sqrt(self.teacher_hidden))
        y += self.noise_std * rng.standard_normal(y.shape, dtype=np.float32)
        # np.sqrt(int) is a float64 scalar, which NumPy 2 does not demote: without the cast the
        # targets are float64 and CUDA's mse_loss backward rejects them (CPU silently promotes).
        return x, y.astype(np.float32)


class SyntheticTokens:
    """Windows of ``seq_len + 1`` tokens that walk one fixed random cycle through the vocabulary.

    Window ``i`` starts at a point of the cycle drawn from ``(seed, i)``; every next token is the
    cycle's successor of the current one, so a model can learn the successor table and the loss
    falls from ln(vocab) towards 0. Windows are independent, so any number can be read.
    """

    def __init__(self, vocab_size: int, seq_len: int, *, seed: int = 0) -> None:
        self.vocab_size = vocab_size
        self.seq_len = seq_len
        self.seed = seed
        self.num_windows = 2**40
        self._cycle = np.random.default_rng([seed, 0x5EED]).permutation(vocab_size)

    def batch(self, indices: np.ndarray) -> np.ndarray:
        starts = np.array(
            [np.random.default_rng([self.seed, int(i)]).integers(self.vocab_size) for i in indices],
            dtype=np.int64,
        )
        steps = np.arange(self.seq_len + 1, dtype=np.int64)
        return self._cycle[(starts[:, None] + steps[None, :]) % self.vocab_size]


class TokenFile:
    """A flat little-endian uint16/uint32 file of token ids, read through a memory map.

    Window ``i`` is tokens ``[i*seq_len, i*seq_len + seq_len + 1)``: inputs do not overlap, and
    each window's last target is the next window's first input.
    """

    def __init__(self, path: str | os.PathLike, seq_len: int, *, dtype: str = "uint16") -> None:
        if dtype not in TOKEN_DTYPES:
            raise ValueError(f"token dtype must be one of {sorted(TOKEN_DTYPES)}, not {dtype!r}")
        self.path = os.fspath(path)
        self.seq_len = seq_len
        self.tokens = np.memmap(self.path, dtype=TOKEN_DTYPES[dtype], mode="r")
        self.num_windows = (len(self.tokens) - 1) // seq_len
        if self.num_windows < 1:
            raise ValueError(
                f"{self.path} holds {len(self.tokens)} tokens, too few for one window of "
                f"{seq_len + 1}"
            )

    def batch(self, indices: np.ndarray) -> np.ndarray:
        return np.stack(
            [
                np.asarray(self.tokens[i * self.seq_len : i * self.seq_len + self.seq_len + 1])
                for i in indices
            ]
        ).astype(np.int64)


def write_token_file(path: str | os.PathLike, tokens: np.ndarray, *, dtype: str = "uint16") -> None:
    """Write token ids in the format TokenFile reads (for tools and tests)."""
    target = TOKEN_DTYPES[dtype]
    if tokens.size and (tokens.min() < 0 or tokens.max() > np.iinfo(target).max):
        raise ValueError(f"token ids do not fit {dtype}")
    np.asarray(tokens, dtype=target).tofile(path)
