"""Reshape (proven with symbolic shapes) and the ops that read a channel tensor's shape."""

from __future__ import annotations


import numpy as np

from onnxprune.graph import Graph, attr
from onnxprune.layout import Layout
from onnxprune.shapes import Dim, prod
from onnxprune.rules.base import OnData, Rule, _norm, _where
from onnxprune.rules.layout_ops import Slice


class Reshape(Rule):
    """Reshape of a tensor carrying channels, proven with symbolic shapes (``onnxprune.shapes``).

    Input ``[P…, C·g, R…]`` (channel axis k, P the leading dimensions, R the trailing ones).
    The output must start with dimensions whose product is ``ΠP`` (they may be merged or split:
    ``[s, b, h, d] → [s·b, h·d]``); what follows is one of

    * ``[C·g·ΠR]`` — flatten (``(N, C, H, W) → (N, C·H·W)``; heads ``[b, s, h, d] → [b, s, h·d]``):
      channel c ↦ entries ``c·g·ΠR … (c+1)·g·ΠR − 1``, so ``g ← g·ΠR``;
    * ``[C·g, R'…]`` with ``ΠR' = ΠR`` — the channel axis is kept;
    * ``[C·r, g/r]`` — a split into heads (``[b, s, h·d] → [b, s, h, d]``): each element (a
      head, r = 1) is now one index of the new axis, its ``g = d`` entries on the next axis; an
      element of r heads (grouped-query attention: the Q heads that share one K/V head) spans r
      indices. When the producers still make single channels (first analysis round, ``g = 1``),
      the rule asks for units of ``d`` (:meth:`~onnxprune.analysis.AnalysisContext.request_unit`)
      and stops until the next round;
    * ``[C·g·ΠR₁, R₂…]`` with ``R = R₁ R₂`` — merged with some of the next axes only (the K/V
      heads repeated for their groups of Q heads: ``[b, kv, r, s, d] → [b, kv·r, s, d]``):
      ``g ← g·ΠR₁``.

    The target-shape entry at the channel position is patched when it is a literal (an
    initializer, or a constant piece of a Concat — a Concat shared with other Reshapes is copied
    first); ``-1`` / ``0`` entries adapt by themselves; a run-time ``Shape`` read of the same
    channels (``Gather(Shape(q), 1)``) is self-consistent and joins the two layouts. Any other
    computed entry that encodes the channel count (``Mul(batch, heads)``) cannot be patched and
    stops. Entries elsewhere must not read a channel count.
    """

    @staticmethod
    def plan(node, graph: Graph, shapes, lay: Layout):
        """(case, output axis, new layout) or a reason string. ``case``: "flatten", "keep",
        "split" or "unit" (split requested, producers not yet in heads)."""
        x = node.input[0]
        rank = graph.rank(x)
        outs = shapes.reshape_dims(node)
        if rank is None or outs is None:
            return ("target shape cannot be evaluated (computed at run time from values that are "
                    "not shapes)")
        k = lay.axis
        ins = [shapes.dim(x, i) for i in range(rank)]
        if any(d is None for d in ins[:k]):
            return "leading dimensions unknown"
        lead = prod(ins[:k])
        kk = None
        acc = Dim(1)
        for i in range(len(outs) + 1):
            if acc == lead:
                kk = i
                break
            if i == len(outs) or outs[i] is None:
                break
            acc = acc * outs[i]
        if kk is None:
            return "mixes the channel axis with other axes"
        length = Dim(lay.length)
        after = ins[k + 1:]
        rest = outs[kk:]
        # size-1 axes right before the channel entries belong to neither side
        while len(rest) > 1 and rest[0] == Dim(1) and length != Dim(1):
            kk, rest = kk + 1, rest[1:]
        if any(d is None for d in rest) or any(d is None for d in after):
            return "mixes the channel axis with other axes"
        tail = prod(after)
        if len(rest) == 1 and tail.static is not None and rest[0] == Dim(lay.length * tail.static):
            return "flatten", kk, Layout(kk, lay.spans, lay.g * tail.static)
        if rest and rest[0] == length and prod(rest[1:]) == tail:
            return "keep", kk, Layout(kk, lay.spans, lay.g)
        if tail == Dim(1) and len(rest) >= 2 and all(d.static for d in rest):
            h, d = rest[0].static, prod(rest[1:]).static
            if h * d == lay.length and d > 1:
                if lay.g % d == 0 and h == lay.channels * (lay.g // d):
                    return "split", kk, Layout(kk, lay.spans, lay.g // d)
                if lay.g == 1:
                    return "unit", kk, d
                return (f"splits {lay.channels} elements of {lay.g} entries into {h} × {d}, "
                        "which does not line up")
        if rest and rest[0].static is not None:  # merged with some of the next axes
            part = Dim(1)
            for m, a in enumerate(after, start=1):
                part = part * a
                if part.static is None:
                    break
                if rest[0] == Dim(lay.length * part.static) and prod(rest[1:]) == prod(
                        after[m:]):
                    return "merge", kk, Layout(kk, lay.spans, lay.g * part.static)
        return "mixes the channel axis with other axes"

    @staticmethod
    def locate(graph: Graph, shapes, tensor: str, i: int):
        """(owner node or None, input index, flat index) of the literal holding entry ``i`` of
        the shape tensor ``tensor``; "dynamic" if it is computed; None if unknown."""
        if graph.is_const(tensor):
            return (None, tensor, i)
        prod_node = graph.producer.get(tensor)
        if prod_node is None or prod_node.op_type != "Concat":
            return "dynamic"
        pos = 0
        for j, x in enumerate(prod_node.input):
            v = shapes.value(x)
            if v is None:
                return None
            if pos <= i < pos + len(v):
                if graph.is_const(x):
                    return (prod_node, j, i - pos)
                return Reshape.locate(graph, shapes, x, i - pos) if graph.producer.get(
                    x) is not None and graph.producer[x].op_type == "Concat" else "dynamic"
            pos += len(v)
        return None

    def analyze(self, node, ctx):
        lay = ctx.layout(node.input[0])
        g = ctx.graph
        if ctx.layout(node.input[1]):
            ctx.stop_inputs(node, f"{_where(node)} takes channels on its shape input",
                            "channels-on-parameter")
            return
        entries = ctx.shapes.value(node.input[1]) or []
        reads = [(i, e.source, ctx.layout(e.source[0])) for i, e in enumerate(entries)
                 if e.source is not None and ctx.layout(e.source[0]) is not None
                 and ctx.layout(e.source[0]).axis == e.source[1]]
        if lay is None:
            for _, src, other in reads:
                ctx.stop(other, f"the channel count of '{src[0]}' is read at run time by "
                                f"{_where(node)}, which reshapes a tensor without those channels",
                                "channel-count-read")
            return
        plan = self.plan(node, g, ctx.shapes, lay)
        if isinstance(plan, str):
            ctx.stop([lay] + [o for _, _, o in reads], f"{_where(node)}: {plan}",
                     "unknown-shape" if "unknown" in plan else "mixes-channels")
            return
        case, kk, new = plan
        if case == "unit":
            ctx.request_unit(node, lay, new)
            ctx.stop(lay, f"{_where(node)} splits channels into groups of {new} (heads), but "
                          "their producers cannot make them in such groups", "heads")
            return
        if kk >= len(entries) and not entries:
            ctx.stop(lay, f"{_where(node)}: target shape unknown", "unknown-shape")
            return
        for i, src, other in reads:
            if i != kk:
                ctx.stop([lay, other], f"{_where(node)} reads the channel count of '{src[0]}' "
                                       "into another axis", "channel-count-read")
                return
        e = entries[kk] if kk < len(entries) else None
        if e is None:
            ctx.stop(lay, f"{_where(node)}: target shape unknown", "unknown-shape")
            return
        zero = e.dim is not None and e.dim.static == 0 and not int(attr(node, "allowzero", 0))
        minus = e.dim is not None and e.dim.static == -1
        if reads:
            other = reads[0][2]
            if other.g != new.g or other.channels != new.channels or ctx.join(
                    node, [new.with_axis(other.axis), other]) is None:
                ctx.stop([lay, other], f"{_where(node)} reads a channel count of other channels "
                                       "at run time", "channel-count-read")
                return
        elif not (zero or minus) and e.source is None:
            if not isinstance(self.locate(g, ctx.shapes, node.input[1], kk), tuple):
                ctx.stop(lay, f"{_where(node)}: target shape is computed at run time and "
                              "encodes the channel count", "channel-count-read")
                return
        elif zero and kk != lay.axis:
            ctx.stop(lay, f"{_where(node)} copies the channel count into another axis",
                     "channel-count-read")
            return
        elif e.source is not None:
            ctx.stop(lay, f"{_where(node)}: target shape is computed at run time and encodes "
                          "the channel count", "channel-count-read")
            return
        ctx.set_layout(node.output[0], new)

    def rewrite(self, node, rw):
        keep = rw.keep(node.input[0])
        if keep is None:
            return
        lay = rw.layout(node.input[0])
        plan = self.plan(node, rw.graph, rw.shapes, lay)
        if isinstance(plan, str) or plan[0] == "unit":
            return
        _, kk, new = plan
        patch_shape_entry(node, rw, kk, int(len(keep) * new.g))


def patch_shape_entry(node, rw, i: int, value: int) -> None:
    """Write ``value`` into entry ``i`` of ``node``'s shape input (input 1) where it is a literal
    (:meth:`Reshape.locate`; a Concat shared with other nodes is copied first); ``-1``/``0``
    entries and Shape reads adapt by themselves."""
    e = rw.shapes.value(node.input[1])[i]
    if e.source is not None or e.dim is None or e.dim.static in (0, -1):
        return
    where = Reshape.locate(rw.graph, rw.shapes, node.input[1], i)
    if not isinstance(where, tuple):
        return
    owner, idx, flat = where
    if owner is None:  # the node reads the literal directly
        arr = np.asarray(rw.value(node, 1)).copy()
        arr.reshape(-1)[flat] = value
        rw.set_input(node, 1, arr)
        return
    owner = rw.private_producer(node, 1, owner, (idx, flat, value))
    arr = np.asarray(rw.value(owner, idx)).copy()
    arr.reshape(-1)[flat] = value
    rw.set_input(owner, idx, arr)


class Expand(OnData):
    """Expand of a channel tensor that keeps its channel axis (the other axes broadcast: the K/V
    heads of grouped-query attention repeated for their groups of Q heads,
    ``[b, kv, 1, s, d] → [b, kv, r, s, d]``). The target-shape entry at the channel axis must
    be 1 or the channel count as a literal (patched)."""

    @staticmethod
    def _entry(node, graph: Graph, shapes, lay: Layout):
        """(index of the target-shape entry at the channel axis or None, output axis), or a
        reason string."""
        entries = shapes.value(node.input[1])
        rin, rout = graph.rank(node.input[0]), graph.rank(node.output[0])
        if entries is None or rin is None or rout is None:
            return "target shape cannot be evaluated"
        axis = lay.axis + rout - rin
        i = axis - (rout - len(entries))
        if i < 0:
            return None, axis
        e = entries[i]
        if e.dim == Dim(1):
            return None, axis
        if e.dim == Dim(lay.length) and e.source is None and isinstance(
                Reshape.locate(graph, shapes, node.input[1], i), tuple):
            return i, axis
        return "target shape is computed at run time and encodes the channel count"

    def flow(self, node, ctx, lay):
        if ctx.layout(node.input[1]):
            ctx.stop_inputs(node, f"{_where(node)} takes channels on its shape input",
                            "channels-on-parameter")
            return
        found = self._entry(node, ctx.graph, ctx.shapes, lay)
        if isinstance(found, str):
            ctx.stop(lay, f"{_where(node)}: {found}", "channel-count-read")
            return
        ctx.set_layout(node.output[0], lay.with_axis(found[1]))

    def rewrite(self, node, rw):
        keep = rw.keep(node.input[0])
        if keep is None:
            return
        lay = rw.layout(node.input[0])
        found = self._entry(node, rw.graph, rw.shapes, lay)
        if not isinstance(found, str) and found[0] is not None:
            patch_shape_entry(node, rw, found[0], int(len(keep) * lay.g))



_SHAPE_VECTOR_OPS = {"Gather", "Slice", "Concat", "Unsqueeze", "Squeeze", "Cast", "Identity"}


def _only_reshape_targets(g: Graph, name: str, seen: set[str] | None = None) -> bool:
    """True when the shape vector ``name`` only ends up (through index maps) in target-shape
    inputs of Reshape nodes — which check each read entry themselves."""
    seen = set() if seen is None else seen
    if name in seen:
        return True
    seen.add(name)
    if name in g.graph_outputs or name in g.subgraph_refs or not g.users(name):
        return name not in g.graph_outputs and name not in g.subgraph_refs
    for user, idx in g.users(name):
        if user.op_type == "Reshape" and idx == 1:
            continue
        if user.op_type in _SHAPE_VECTOR_OPS and (idx == 0 or user.op_type == "Concat"):
            if not all(_only_reshape_targets(g, o, seen) for o in user.output if o):
                return False
            continue
        return False
    return True


class ShapeOp(OnData):
    """Shape of a channel tensor is fine as long as only non-channel dims are read from it, or
    the channel count read only feeds Reshape target shapes (the Reshape rule checks that it is
    the same channels' count, at the channel position)."""

    def flow(self, node, ctx, lay):
        g = ctx.graph
        rank = g.rank(node.input[0])
        if rank is None:
            ctx.stop(lay, f"{_where(node)} reads the shape of a channel tensor of unknown rank",
                     "unknown-shape")
            return
        start = _norm(int(attr(node, "start", 0)), rank)
        end = attr(node, "end")
        end = rank if end is None else min(_norm(int(end), rank), rank)
        if not start <= lay.axis < end:
            return
        k = lay.axis - start
        if _only_reshape_targets(g, node.output[0]):
            return
        for user, _ in g.users(node.output[0]):
            if user.op_type == "Gather" and int(attr(user, "axis", 0)) == 0:
                idx = g.const(user.input[1])
                if idx is not None and k not in {_norm(int(i), end - start)
                                                 for i in np.asarray(idx).reshape(-1)}:
                    continue
            if user.op_type == "Slice":
                p = Slice()._params(user, g, 1) if all(
                    g.const(x) is not None for x in user.input[1:] if x) else None
                if p is not None and p[3] == [1]:
                    a = Slice._clamp(p[0][0], end - start)
                    b = Slice._clamp(p[1][0], end - start)
                    if not a <= k < b:
                        continue
            ctx.stop(lay, f"the channel count is read at run time by {_where(user)}",
                     "channel-count-read")
            return


