"""Channel layouts: where a group's channels sit along one axis of a tensor.

A tensor that carries prunable channels has a :class:`Layout`: the axis, and along it a sequence of
:class:`Span` s — ranges ``[lo, hi)`` of a *block* (the channels created by one producer, or by a
join of several producers). Concat appends spans, Split/Slice cut them, pass-through ops copy
them. ``g`` is the number of consecutive entries each channel occupies along the axis (1 normally,
``H·W`` after flattening ``(N, C, H, W) → (N, C·H·W)``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Span:
    block: int
    lo: int
    hi: int

    @property
    def size(self) -> int:
        return self.hi - self.lo


@dataclass(frozen=True)
class Layout:
    axis: int
    spans: tuple[Span, ...]
    g: int = 1

    @property
    def channels(self) -> int:
        return sum(s.size for s in self.spans)

    @property
    def length(self) -> int:
        """Extent of the axis: channels · g."""
        return self.channels * self.g

    def with_axis(self, axis: int) -> Layout:
        return replace(self, axis=axis)

    def with_g(self, g: int) -> Layout:
        return replace(self, g=g)

    def cut(self, lo: int, hi: int) -> Layout:
        """Sub-layout of channel positions ``[lo, hi)`` along the axis."""
        out: list[Span] = []
        pos = 0
        for s in self.spans:
            a, b = max(lo, pos), min(hi, pos + s.size)
            if a < b:
                out.append(Span(s.block, s.lo + a - pos, s.lo + b - pos))
            pos += s.size
        return replace(self, spans=tuple(out))

    @staticmethod
    def concat(axis: int, parts: list[Layout], g: int = 1) -> Layout:
        spans: list[Span] = []
        for p in parts:
            spans.extend(p.spans)
        return Layout(axis=axis, spans=tuple(spans), g=g)
