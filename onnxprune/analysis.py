"""Channel-group analysis: which channel axes of which tensors must be pruned together.

The analysis walks the graph once in topological order. Each op's rule (``onnxprune.rules``)
reads the layouts of its inputs and declares, through :class:`AnalysisContext`:

* new *blocks* of channels (producers: Conv out-channels, Gemm/MatMul features …);
* the layouts of its outputs (pass-through ops copy, Concat appends, Split/Slice cut, Flatten
  multiplies ``g``);
* *joins*: two layouts that must stay index-aligned (residual Add, SE gating Mul) — their blocks
  are united into one *channel set* (union-find, identity mapping);
* *consumers*: layers that mix the channels and will be re-fitted;
* *stops*: a structure it cannot handle — every block involved becomes unprunable with a reason.

Afterwards every channel set is cut into *segments* at all span boundaries seen (Split/Slice/Concat
ranges: each piece keeps its share of channels), and channel sets that feed a common consumer are
gathered into one *group* (the consumer must be re-fitted on all of its input columns at once).
The group is the unit of selection. Analysis never mutates the model.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxprune.graph import Graph, node_label
from onnxprune.groups import Analysis, ChannelSet, ConsumerSite, Group
from onnxprune.layout import Layout, Span
from onnxprune.reasons import Reason
from onnxprune.shapes import ShapeEval

log = logging.getLogger(__name__)


@dataclass
class _Block:
    size: int
    tensor: str
    producer: str | None
    reasons: list[str] = field(default_factory=list)
    kind: str = "channels"


class AnalysisContext:
    """What a rule may do during analysis (see module docstring)."""

    def __init__(self, graph: Graph, units: Mapping[str, int] | None = None,
                 shapes: ShapeEval | None = None) -> None:
        self.graph = graph
        self.current = ""  # the node being analysed (what a reason is about by default)
        self.units = dict(units or {})  # producer node → channels per element (head_dim)
        self.unit_requests: list[tuple[int, int, str]] = []  # (block, unit, requesting node)
        self.coarser: list[tuple[int, int]] = []  # (block, factor): units × factor next round
        self.shapes = shapes if shapes is not None else ShapeEval(graph)
        self.layouts: dict[str, Layout] = {}
        self.blocks: list[_Block] = []
        self.parent: list[int] = []
        self.offset: list[int] = []  # channel 0 of a block is channel ``offset`` of its parent
        self.consumers: list[ConsumerSite] = []
        self.spans_seen: list[Span] = []
        self.touched: list[str] = []
        self._touched_set: set[str] = set()

    # -- union-find with offsets ---------------------------------------------------------------
    # A channel set is a root block; every other block is a contiguous piece of it (a residual
    # join of a whole block with a split piece of another, as in C2f bottlenecks): channel i of
    # block b is channel ``locate(b)[1] + i`` of its set.
    def locate(self, b: int) -> tuple[int, int]:
        """(root block, offset of ``b``'s channel 0 in the root), compressing the path."""
        path = []
        while self.parent[b] != b:
            path.append(b)
            b = self.parent[b]
        for x in reversed(path):  # nearest the root first: its parent's offset is final
            p = self.parent[x]
            if p != b:
                self.offset[x] += self.offset[p]
                self.parent[x] = b
        return b, (self.offset[path[0]] if path else 0)

    def find(self, b: int) -> int:
        return self.locate(b)[0]

    def _attach(self, child_root: int, root: int, off: int) -> None:
        self.parent[child_root] = root
        self.offset[child_root] = off

    # -- API for rules ---------------------------------------------------------------------------
    def layout(self, name: str) -> Layout | None:
        return self.layouts.get(name) if name else None

    def set_layout(self, name: str, layout: Layout) -> None:
        if name:
            self.layouts[name] = layout
            self.spans_seen.extend(layout.spans)

    def touch(self, node: onnx.NodeProto) -> None:
        if node.name not in self._touched_set:
            self._touched_set.add(node.name)
            self.touched.append(node.name)

    def new_block(self, node: onnx.NodeProto | None, tensor: str, size: int, axis: int
                  ) -> Layout:
        """Channels created by ``node`` along ``axis`` of ``tensor``. When an earlier analysis
        round found that they are split into heads (:meth:`request_unit`), the block's elements
        are heads: ``size / unit`` of them, each ``unit`` consecutive entries (``g``)."""
        b = len(self.blocks)
        unit = self.units.get(node.name, 1) if node is not None else 1
        if unit > 1 and size % unit == 0:
            size, kind = size // unit, "heads"
        else:
            unit, kind = 1, "channels"
        self.blocks.append(_Block(size=size, tensor=tensor,
                                  producer=node.name if node is not None else None,
                                  reasons=[], kind=kind))
        self.parent.append(b)
        self.offset.append(0)
        lay = Layout(axis=axis, spans=(Span(b, 0, size),), g=unit)
        self.set_layout(tensor, lay)
        if node is not None:
            self.touch(node)
        return lay

    def external_block(self, tensor: str, size: int, axis: int) -> Layout:
        """Channels that enter a channel path without a prunable producer (kept whole)."""
        b = len(self.blocks)
        why = Reason(f"channels of '{tensor}' are not made by a prunable layer", "not-produced")
        self.blocks.append(_Block(size=size, tensor=tensor, producer=None, reasons=[why]))
        self.parent.append(b)
        self.offset.append(0)
        return Layout(axis=axis, spans=(Span(b, 0, size),))

    def request_unit(self, node: onnx.NodeProto, layout: Layout, unit: int) -> None:
        """``node`` splits ``layout``'s channels into groups of ``unit`` (attention heads): the
        next analysis round makes the producers of those channels create heads instead."""
        for s in layout.spans:
            self.unit_requests.append((s.block, unit, node.name))

    def stop(self, layouts, reason: str, code: str = "", node: str | None = None) -> None:
        """Make every block in ``layouts`` unprunable with ``reason`` (a :class:`Reason` with
        ``code``, about ``node``: by default the node being analysed)."""
        if not isinstance(reason, Reason):
            reason = Reason(reason, code, self.current if node is None else node)
        if layouts is None:
            return
        if isinstance(layouts, Layout):
            layouts = [layouts]
        for lay in layouts:
            if lay is None:
                continue
            for s in lay.spans:
                rs = self.blocks[s.block].reasons
                if reason not in rs:
                    rs.append(reason)

    def stop_inputs(self, node: onnx.NodeProto, reason: str, code: str) -> None:
        self.stop([self.layout(x) for x in node.input], reason, code, node.name)

    def add_consumer(self, node: onnx.NodeProto, input_index: int, layout: Layout, kind: str,
                     g: int) -> None:
        self.touch(node)
        self.consumers.append(ConsumerSite(node=node.name, input_index=input_index,
                                           tensor=node.input[input_index], layout=layout,
                                           kind=kind, g=g))

    def _alignment(self, x: Span, y: Span) -> tuple[int, int, int] | bool:
        """How spans ``x`` and ``y`` become the same channels: True if they already are, False
        if they cannot, else ``(child root, root, offset)``: a set that the other span covers
        whole becomes a piece of the other's set (equal whole sets: the later one joins the
        earlier)."""
        (rx, ox), (ry, oy) = self.locate(x.block), self.locate(y.block)
        xl, yl = ox + x.lo, oy + y.lo
        if x.size != y.size:
            return False
        if rx == ry:
            return xl == yl
        x_whole = xl == 0 and x.size == self.blocks[rx].size
        y_whole = yl == 0 and y.size == self.blocks[ry].size
        if x_whole and y_whole:
            return (max(rx, ry), min(rx, ry), 0)
        if y_whole:
            return (ry, rx, xl)
        if x_whole:
            return (rx, ry, yl)
        return False

    def _request_coarser(self, layouts: list[Layout]) -> bool:
        """Layouts of equal length whose elements differ only in size — one side's element
        (g entries) is r of the other's (g/r each: the Q heads sharing one K/V head) — line up
        once the finer side's producers make elements r times larger: ask for that in the next
        round (:meth:`new_units`). True if asked."""
        gmax = max(lay.g for lay in layouts)
        coarse = next(lay for lay in layouts if lay.g == gmax)
        fine = [lay for lay in layouts if lay.g != gmax]
        if not fine or any(lay.length != coarse.length or gmax % lay.g
                           or len(lay.spans) != len(coarse.spans)
                           or any(x.size != y.size * (gmax // lay.g)
                                  for x, y in zip(lay.spans, coarse.spans)) for lay in fine):
            return False
        for lay in fine:
            self.coarser.extend((s.block, gmax // lay.g) for s in lay.spans)
        return True

    def join(self, node: onnx.NodeProto, layouts: list[Layout]) -> Layout | None:
        """Index-align several layouts (residual/gating joins). None if they cannot align."""
        first = layouts[0]
        reason = (f"{node.op_type} node '{node_label(node)}' joins channel layouts that do not "
                  "line up")
        reason = Reason(reason, "axis-mismatch", node.name)
        ok = all(other.g == first.g and other.channels == first.channels
                 and len(other.spans) == len(first.spans)
                 and all(self._alignment(x, y) is not False
                         for x, y in zip(first.spans, other.spans))
                 for other in layouts[1:])
        if not ok:
            if self._request_coarser(layouts):
                reason = Reason(f"{node.op_type} node '{node_label(node)}' joins heads with "
                                "elements of several heads (grouped-query attention); the next "
                                "analysis round groups them", "heads", node.name)
            self.stop(layouts, reason)
            return None
        for other in layouts[1:]:
            for x, y in zip(first.spans, other.spans):
                how = self._alignment(x, y)  # again: earlier unions may have moved the roots
                if how is False:
                    self.stop(layouts, reason)
                    return None
                if how is not True:
                    self._attach(*how)
        self.touch(node)
        return first

    def set_span(self, s: Span) -> tuple[int, int, int]:
        """``(set, lo, hi)``: span ``s`` in its channel set's coordinates."""
        r, off = self.locate(s.block)
        return r, off + s.lo, off + s.hi

    # -- results ---------------------------------------------------------------------------------
    def _stop_shared_weights(self) -> None:
        """A layer whose weight tensor another node also reads cannot be sliced or re-fitted
        without a private copy of it, which would leave the model with more parameters than it
        had: its channels stay whole."""
        g = self.graph
        users: dict[str, list[str]] = {}
        for node in g.nodes:
            for x in set(node.input):
                t = g.initializers.get(x)
                if t is not None and np.prod(t.dims) > 1:
                    users.setdefault(x, []).append(node.name)

        def shared(node_name: str) -> str | None:
            node = g.node(node_name)
            for x in node.input[1:]:
                if len(users.get(x, ())) > 1:
                    other = next(u for u in users[x] if u != node_name)
                    return (f"the weight '{x}' of node '{node_label(node)}' is shared with node "
                            f"'{other}' (pruning would copy it and add parameters)")
            return None

        for block in self.blocks:
            why = shared(block.producer) if block.producer else None
            if why and why not in block.reasons:
                block.reasons.append(Reason(why, "shared-weight", block.producer))
        for site in self.consumers:
            why = shared(site.node)
            if why:
                self.stop(site.layout, why, "shared-weight", site.node)

    def finish(self) -> Analysis:
        g = self.graph
        for out in sorted(g.graph_outputs):
            lay = self.layout(out)
            if lay is not None:
                self.stop(lay, f"reaches the graph output '{out}'", "graph-output", "")
        for name in sorted(g.subgraph_refs):
            lay = self.layout(name)
            if lay is not None:
                self.stop(lay, f"'{name}' is used inside a subgraph (If/Loop/Scan)", "subgraph",
                          "")
        self._stop_shared_weights()

        roots = sorted({self.find(b) for b in range(len(self.blocks))})
        members: dict[int, list[int]] = {r: [] for r in roots}
        for b in range(len(self.blocks)):
            members[self.find(b)].append(b)
        consumed: set[int] = set()
        for site in self.consumers:
            consumed.update(self.find(s.block) for s in site.layout.spans)
        bounds: dict[int, set[int]] = {r: {0, self.blocks[r].size} for r in roots}
        for s in self.spans_seen:
            r, lo, hi = self.set_span(s)
            bounds[r].update((lo, hi))

        sets: dict[int, ChannelSet] = {}
        for r in roots:
            reasons: list[str] = []
            for b in members[r]:
                for reason in self.blocks[b].reasons:
                    if reason not in reasons:
                        reasons.append(reason)
            if r not in consumed and not reasons:
                reasons.append(Reason("no layer consumes these channels (nothing to re-fit)",
                                      "not-consumed"))
            sets[r] = ChannelSet(
                id=r, size=self.blocks[r].size,
                producers=tuple(self.blocks[b].producer for b in members[r]
                                if self.blocks[b].producer),
                tensors=tuple(self.blocks[b].tensor for b in members[r]),
                boundaries=tuple(sorted(bounds[r])), reasons=tuple(reasons),
                kind=self.blocks[r].kind)

        # Group channel sets that feed a common consumer.
        gparent = {r: r for r in roots}

        def gfind(x: int) -> int:
            while gparent[x] != x:
                gparent[x] = gparent[gparent[x]]
                x = gparent[x]
            return x

        for site in self.consumers:
            rs = [self.find(s.block) for s in site.layout.spans]
            for r in rs[1:]:
                a, b = gfind(rs[0]), gfind(r)
                if a != b:
                    gparent[max(a, b)] = min(a, b)
        by_group: dict[int, list[int]] = {}
        for r in roots:  # roots ascend in creation (= topological) order
            by_group.setdefault(gfind(r), []).append(r)
        site_group: dict[int, list[ConsumerSite]] = {k: [] for k in by_group}
        for site in self.consumers:
            site_group[gfind(self.find(site.layout.spans[0].block))].append(site)

        groups = []
        for key, rs in by_group.items():
            gsets = tuple(sets[r] for r in rs)
            offsets = tuple(int(x) for x in np.cumsum([0] + [s.size for s in gsets])[:-1])
            name = next((p for s in gsets for p in s.producers), None) or gsets[0].tensors[0]
            groups.append(Group(name=name, sets=gsets, offsets=offsets,
                                consumers=tuple(site_group[key])))
        located = [self.locate(b) for b in range(len(self.blocks))]
        return Analysis(groups=tuple(groups), layouts=dict(self.layouts),
                        block_set={b: r for b, (r, _) in enumerate(located)},
                        touched=tuple(self.touched),
                        block_offset={b: off for b, (_, off) in enumerate(located) if off})


    def new_units(self) -> dict[str, int]:
        """Producer units requested in this round that the next round can apply."""
        members: dict[int, list[int]] = {}
        for b in range(len(self.blocks)):
            members.setdefault(self.find(b), []).append(b)
        units = dict(self.units)
        for block, unit, _ in self.unit_requests:
            for b in members[self.find(block)]:
                prod = self.blocks[b].producer
                if prod is not None and prod not in units and self.blocks[b].size % unit == 0:
                    units[prod] = unit
        for block, factor in self.coarser:  # elements of several heads (grouped-query)
            for b in members[self.find(block)]:
                prod, now = self.blocks[b].producer, self.units.get(self.blocks[b].producer, 1)
                if prod is not None and units.get(prod) == now and self.blocks[b].size % factor == 0:
                    units[prod] = now * factor
        return units


MAX_ROUNDS = 4


def analyze(graph: Graph) -> Analysis:
    """Run every node's rule in topological order and gather the channel groups.

    Attention heads are found in rounds: a Reshape that splits a channel axis of ``h·d`` entries
    into ``(h, d)`` asks for *units* of ``d`` (:meth:`AnalysisContext.request_unit`); the next
    round's producers of those channels then create ``h`` elements of ``g = d`` entries each, which
    flow through the head axis, the attention MatMuls and back. Rounds stop when no new unit is
    requested (at most ``MAX_ROUNDS``).
    """
    from onnxprune.rules import rule_for  # the registry

    shapes = ShapeEval(graph)
    units: dict[str, int] = {}
    for _ in range(MAX_ROUNDS):
        ctx = AnalysisContext(graph, units, shapes)
        for node in graph.nodes:
            rule = rule_for(node)
            has_layout = any(ctx.layout(x) for x in node.input)
            if rule is None:
                if has_layout:
                    ctx.stop_inputs(node, f"flows into {node.op_type} node '{node_label(node)}', "
                                          "which has no channel rule", "no-rule")
                continue
            if has_layout:
                ctx.touch(node)
            ctx.current = node.name
            rule.analyze(node, ctx)
        ctx.current = ""
        new = ctx.new_units()
        if new == units:
            break
        units = new
    return ctx.finish()
