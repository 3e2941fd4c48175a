"""What the channel analysis finds (:mod:`onnxprune.analysis`): consumer sites, channel sets,
groups (the unit of selection) and the :class:`Analysis` that holds them with every tensor's
channel layout. Immutable; nothing here reads the graph.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from onnxprune.layout import Layout, Span
from onnxprune.reasons import Reason


@dataclass(frozen=True)
class ConsumerSite:
    """A layer that mixes a group's channels (its weight gets re-fitted)."""

    node: str
    input_index: int
    tensor: str
    layout: Layout
    kind: str
    g: int  # columns per channel at this consumer (layout.g · kernel area)


@dataclass(frozen=True)
class ChannelSet:
    """Blocks united by joins: one index space of ``size`` channels."""

    id: int
    size: int
    producers: tuple[str, ...]
    tensors: tuple[str, ...]
    boundaries: tuple[int, ...]
    reasons: tuple[str, ...]
    kind: str = "channels"

    @property
    def prunable(self) -> bool:
        return not self.reasons


@dataclass(frozen=True)
class Group:
    """Channel sets that share consumers; the unit of selection."""

    name: str
    sets: tuple[ChannelSet, ...]
    offsets: tuple[int, ...]
    consumers: tuple[ConsumerSite, ...]

    @property
    def size(self) -> int:
        return sum(s.size for s in self.sets)

    @property
    def kind(self) -> str:
        """``"heads"`` when the group's elements are attention heads, else ``"channels"``."""
        return "heads" if any(s.kind == "heads" for s in self.sets) else "channels"

    @property
    def prunable(self) -> bool:
        return any(s.prunable and s.size > 1 for s in self.sets) and bool(self.consumers)

    @property
    def reasons(self) -> tuple[Reason, ...]:
        """Why (part of) the group cannot be pruned, each reason once."""
        reasons: list[Reason] = []
        for s in self.sets:
            for r in s.reasons:
                if r not in reasons:
                    reasons.append(r)
        if not reasons and self.size <= 1:
            reasons.append(Reason("a single channel cannot be pruned", "single-channel"))
        return tuple(reasons)

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)

    @property
    def producers(self) -> tuple[str, ...]:
        return tuple(p for s in self.sets for p in s.producers)

    def set_offset(self, set_id: int) -> int:
        for s, off in zip(self.sets, self.offsets):
            if s.id == set_id:
                return off
        raise KeyError(set_id)


@dataclass(frozen=True)
class Analysis:
    groups: tuple[Group, ...]
    layouts: Mapping[str, Layout]
    block_set: Mapping[int, int]  # block id → channel-set id
    touched: tuple[str, ...]  # names of nodes whose rule must run at rewrite time
    block_offset: Mapping[int, int] = field(default_factory=dict)  # block → its first channel
    #                                                                in its set (absent: 0)

    def set_range(self, s: Span) -> tuple[int, int, int]:
        """``(set id, lo, hi)`` of span ``s`` in its channel set's coordinates."""
        off = self.block_offset.get(s.block, 0)
        return self.block_set[s.block], off + s.lo, off + s.hi

    def group_channels(self, group: Group, layout: Layout) -> np.ndarray:
        """Group channel index of every channel position of ``layout``."""
        parts = []
        for s in layout.spans:
            set_id, lo, hi = self.set_range(s)
            off = group.set_offset(set_id)
            parts.append(np.arange(off + lo, off + hi))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def group_of_set(self, set_id: int) -> Group | None:
        for g in self.groups:
            if any(s.id == set_id for s in g.sets):
                return g
        return None

    @property
    def prunable_groups(self) -> tuple[Group, ...]:
        return tuple(g for g in self.groups if g.prunable)

    @property
    def prunable_sites(self) -> list[ConsumerSite]:
        """Every consumer of every prunable group (what a statistics file holds, and what
        bounds the calibration batch: :func:`onnxprune.calibrate.collect`)."""
        return [s for g in self.groups if g.prunable for s in g.consumers]
