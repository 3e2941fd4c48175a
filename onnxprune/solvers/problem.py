"""The per-group selection problem, as plain arrays.

A *group* has ``C`` channels (indices ``0 … C-1``). Each consumer ``q`` of the group sees some of
them: its input, laid out as rows (samples × positions) by columns, is ``B_q`` with ``g_q``
consecutive columns per channel (``g = kh·kw`` for a k×k convolution, ``H·W`` after a flatten,
1 for a linear layer), in the order given by ``channels`` (``channels[p]`` is the group channel of
column block ``p``). Optionally a trailing all-ones column lets the consumer's bias absorb the mean
of whatever is removed.

Only streamed sufficient statistics are kept (float64):

* ``G = B_qᵀ B_q``  — (n × n), n = len(channels)·g (+1 for the constant column);
* ``H = B_qᵀ T_q``  — (n × m), T_q the consumer's linear output before bias (m outputs);
* ``t_norm2 = ‖T_q‖²``.

For LayerInChange ``T_q = B_q W_qᵀ`` so ``H = G W_qᵀ`` (with a zero row for the constant column).
For the asymmetric variant ``H`` is a cross statistic between two models' activations; the solvers
do not care.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True, eq=False)
class ConsumerStats:
    """Sufficient statistics of one consumer (see module docstring)."""

    G: np.ndarray
    H: np.ndarray
    t_norm2: float
    channels: np.ndarray
    g: int
    has_const: bool
    weight: np.ndarray  # (m, len(channels)*g): the consumer's original effective weight
    out_scale: np.ndarray | None = None  # per-output factor folded into weight/H (e.g. BN γ/σ)
    rows: int = 0  # rows accumulated into G (for cross-validating the ridge; 0 = unknown)
    sensitivity: np.ndarray | None = None  # PFP sensitivity per column block (sampling only)

    def __post_init__(self) -> None:
        n = len(self.channels) * self.g + int(self.has_const)
        if self.G.shape != (n, n):
            raise ValueError(f"G has shape {self.G.shape}, expected {(n, n)}")
        if self.H.shape[0] != n:
            raise ValueError(f"H has {self.H.shape[0]} rows, expected {n}")
        if self.weight.shape != (self.H.shape[1], len(self.channels) * self.g):
            raise ValueError(f"weight has shape {self.weight.shape}, expected "
                             f"{(self.H.shape[1], len(self.channels) * self.g)}")

    @property
    def n_blocks(self) -> int:
        return len(self.channels)

    def columns_of(self, kept_channels: np.ndarray) -> np.ndarray:
        """Column indices (sorted, in consumer order) of the kept group channels, const excluded."""
        mask = np.isin(self.channels, kept_channels)
        blocks = np.nonzero(mask)[0]
        return (blocks[:, None] * self.g + np.arange(self.g)[None, :]).reshape(-1)

    @property
    def const_index(self) -> int | None:
        return self.G.shape[0] - 1 if self.has_const else None


@dataclass(frozen=True, eq=False)
class Problem:
    """A group's selection problem: consumers, segment partition with quotas, forced channels.

    ``segments[c]`` is the segment id of channel ``c``; exactly ``quotas[s]`` channels of segment
    ``s`` are kept (a partition-matroid constraint: each producer, split piece… keeps its share).
    ``forced`` channels are always kept (they belong to unprunable parts of the group) and count
    toward their segment's quota.
    """

    n_channels: int
    consumers: tuple[ConsumerStats, ...]
    segments: np.ndarray
    quotas: np.ndarray
    forced: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    def __post_init__(self) -> None:
        if self.segments.shape != (self.n_channels,):
            raise ValueError("segments must have one entry per channel")
        forced = self.forced if self.forced.size else np.zeros(self.n_channels, dtype=bool)
        object.__setattr__(self, "forced", forced.astype(bool))
        counts = np.bincount(self.segments, minlength=len(self.quotas))
        if np.any(self.quotas > counts) or np.any(self.quotas < 0):
            raise ValueError("a quota exceeds its segment size")
        forced_counts = np.bincount(self.segments[self.forced], minlength=len(self.quotas))
        if np.any(forced_counts > self.quotas):
            raise ValueError("more forced channels than the quota of their segment")

    @property
    def n_keep(self) -> int:
        return int(self.quotas.sum())


def keep_count(size: int, ratio: float) -> int:
    """Channels kept when a fraction ``ratio`` of ``size`` is removed: ⌈(1−ratio)·size⌉, ≥ 1."""
    return max(1, min(size, math.ceil((1.0 - ratio) * size - 1e-9)))
