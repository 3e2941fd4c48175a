"""Ops that move channels along or between axes: Resize, Pad, Concat, Split, Slice, Flatten,
Transpose, Squeeze, Unsqueeze."""

from __future__ import annotations

import math

import numpy as np

from onnxprune.graph import Graph, attr, set_attr
from onnxprune.layout import Layout
from onnxprune.rules.base import OnData, Rule, _axes_arg, _const_input, _norm, _where


class Resize(OnData):
    """Resize/Upsample with a unit scale on the channel axis (sizes constants are patched)."""

    def flow(self, node, ctx, lay):
        g = ctx.graph
        if any(ctx.layout(x) for x in node.input[1:]):
            ctx.stop_inputs(node, f"{_where(node)} takes channels on a parameter input",
                            "channels-on-parameter")
            return
        if attr(node, "axes") is not None:
            axes = [_norm(int(a), g.rank(node.input[0]) or 0) for a in attr(node, "axes")]
            if lay.axis not in axes:
                ctx.set_layout(node.output[0], lay)
                return
            ctx.stop(lay, f"{_where(node)} resizes the channel axis", "mixes-channels")
            return
        scale_idx = 1 if node.op_type == "Upsample" else 2
        scales = _const_input(node, scale_idx, g)
        sizes = _const_input(node, 3, g) if node.op_type == "Resize" else None
        has_sizes = node.op_type == "Resize" and len(node.input) > 3 and node.input[3]
        if scales is not None and scales.size:
            if float(scales.reshape(-1)[lay.axis]) != 1.0:
                ctx.stop(lay, f"{_where(node)} resizes the channel axis", "mixes-channels")
                return
        elif has_sizes:
            if sizes is None or int(sizes.reshape(-1)[lay.axis]) != lay.length:
                ctx.stop(lay, f"{_where(node)}: output sizes are computed at run time",
                         "runtime-value")
                return
        elif attr(node, "scales") is not None:  # Upsample-7
            if float(attr(node, "scales")[lay.axis]) != 1.0:
                ctx.stop(lay, f"{_where(node)} resizes the channel axis", "mixes-channels")
                return
        else:
            ctx.stop(lay, f"{_where(node)}: scales are computed at run time", "runtime-value")
            return
        ctx.set_layout(node.output[0], lay)

    def rewrite(self, node, rw):
        keep = rw.keep(node.input[0])
        if keep is None or node.op_type != "Resize" or len(node.input) <= 3 or not node.input[3]:
            return
        lay = rw.layout(node.input[0])
        sizes = rw.value(node, 3).copy()
        sizes[lay.axis] = len(keep) * lay.g
        rw.set_input(node, 3, sizes)


class Pad(OnData):
    def flow(self, node, ctx, lay):
        g = ctx.graph
        rank = g.rank(node.input[0])
        pads = attr(node, "pads")
        if pads is None:
            pads = _const_input(node, 1, g)
        axes = _axes_arg(node, g, 3, attr_name="__none__")
        if pads is None or rank is None or axes is False:
            ctx.stop(lay, f"{_where(node)}: pads are computed at run time", "runtime-value")
            return
        pads = [int(p) for p in np.asarray(pads).reshape(-1)]
        axes = [_norm(a, rank) for a in axes] if axes else list(range(rank))
        n = len(axes)
        for j, a in enumerate(axes):
            if a == lay.axis and (pads[j] != 0 or pads[j + n] != 0):
                ctx.stop(lay, f"{_where(node)} pads the channel axis", "mixes-channels")
                return
        ctx.set_layout(node.output[0], lay)


class Concat(Rule):
    def analyze(self, node, ctx):
        g = ctx.graph
        lays = [ctx.layout(x) for x in node.input]
        if not any(lays):
            return
        rank = g.rank(node.output[0])
        if rank is None:
            ctx.stop(lays, f"{_where(node)}: rank unknown", "unknown-shape")
            return
        axis = _norm(int(attr(node, "axis", 0)), rank)
        on_axis = [lay for lay in lays if lay is not None and lay.axis == axis]
        if on_axis and len(on_axis) == sum(lay is not None for lay in lays):
            gs = {lay.g for lay in on_axis}
            parts = []
            for x, lay in zip(node.input, lays):
                if lay is not None:
                    parts.append(lay)
                    continue
                shp = g.shape(x)
                dim = shp[axis] if shp is not None else None
                if not isinstance(dim, int) or gs != {1}:
                    ctx.stop(lays, f"{_where(node)}: size of input '{x}' on the channel axis "
                                   "unknown", "unknown-shape")
                    return
                parts.append(ctx.external_block(x, dim, axis))
            if len(gs) != 1:
                ctx.stop(lays, f"{_where(node)} concatenates flattened and plain channels",
                         "axis-mismatch")
                return
            ctx.set_layout(node.output[0], Layout.concat(axis, parts, g=gs.pop()))
        elif not on_axis and all(lay is not None for lay in lays):
            joined = ctx.join(node, lays)  # concatenation along another axis: same channels
            if joined is not None:
                ctx.set_layout(node.output[0], joined)
        else:
            ctx.stop(lays, f"{_where(node)} mixes channel and non-channel inputs", "axis-mismatch")


class Split(OnData):
    def _sizes(self, node, g: Graph, length: int):
        s = attr(node, "split")
        if s is None and len(node.input) > 1 and node.input[1]:
            s = g.const(node.input[1])
            if s is None:
                return None
        if s is None:
            n = len(node.output)
            if length % n:
                return None
            return [length // n] * n
        return [int(x) for x in np.asarray(s).reshape(-1)]

    def flow(self, node, ctx, lay):
        if len(node.input) > 1 and ctx.layout(node.input[1]):
            ctx.stop_inputs(node, f"{_where(node)} takes channels on its split input",
                            "channels-on-parameter")
            return
        rank = ctx.graph.rank(node.input[0])
        axis = _norm(int(attr(node, "axis", 0)), rank or 0)
        if axis != lay.axis:
            for o in node.output:
                ctx.set_layout(o, lay)
            return
        sizes = self._sizes(node, ctx.graph, lay.length)
        if sizes is None or any(s % lay.g for s in sizes) or sum(sizes) != lay.length:
            ctx.stop(lay, f"{_where(node)}: split sizes unknown or not whole channels",
                     "unknown-shape")
            return
        pos = 0
        for o, s in zip(node.output, sizes):
            ctx.set_layout(o, lay.cut(pos // lay.g, (pos + s) // lay.g))
            pos += s

    def rewrite(self, node, rw):
        lay = rw.layout(node.input[0])
        keep = rw.keep(node.input[0])
        if keep is None or lay is None:
            return
        rank = rw.graph.rank(node.input[0])
        if _norm(int(attr(node, "axis", 0)), rank or 0) != lay.axis:
            return
        sizes = self._sizes(node, rw.graph, lay.length)
        new, pos = [], 0
        for s in sizes:
            lo, hi = pos // lay.g, (pos + s) // lay.g
            new.append(int(np.sum((keep >= lo) & (keep < hi))) * lay.g)
            pos += s
        if attr(node, "split") is not None:
            set_attr(node, "split", new)
            return
        if attr(node, "num_outputs") is not None:
            for i, a in enumerate(node.attribute):
                if a.name == "num_outputs":
                    del node.attribute[i]
                    break
        arr = np.asarray(new, dtype=np.int64)
        if len(node.input) > 1 and node.input[1]:
            rw.set_input(node, 1, arr)
        else:
            rw.add_input(node, 1, arr, suffix="split")


class Slice(OnData):
    def _params(self, node, g: Graph, rank: int):
        vals = []
        for i in (1, 2, 3, 4):
            if len(node.input) > i and node.input[i]:
                v = g.const(node.input[i])
                if v is None:
                    return None
                vals.append([int(x) for x in np.asarray(v).reshape(-1)])
            else:
                vals.append(None)
        starts, ends, axes, steps = vals
        axes = [_norm(a, rank) for a in axes] if axes is not None else list(range(len(starts)))
        steps = steps if steps is not None else [1] * len(starts)
        return starts, ends, axes, steps

    @staticmethod
    def _clamp(v: int, length: int) -> int:
        if v < 0:
            v += length
        return min(max(v, 0), length)

    def flow(self, node, ctx, lay):
        if any(ctx.layout(x) for x in node.input[1:]):
            ctx.stop_inputs(node, f"{_where(node)} takes channels on a parameter input",
                            "channels-on-parameter")
            return
        rank = ctx.graph.rank(node.input[0])
        params = self._params(node, ctx.graph, rank or 0) if rank is not None else None
        if attr(node, "starts") is not None or params is None:
            ctx.stop(lay, f"{_where(node)}: slice parameters are not constants", "runtime-value")
            return
        starts, ends, axes, steps = params
        if lay.axis not in axes:
            ctx.set_layout(node.output[0], lay)
            return
        j = axes.index(lay.axis)
        if steps[j] != 1:
            ctx.stop(lay, f"{_where(node)} slices the channel axis with step {steps[j]}",
                     "axis-mismatch")
            return
        a, b = self._clamp(starts[j], lay.length), self._clamp(ends[j], lay.length)
        b = max(a, b)
        if a % lay.g or b % lay.g:
            ctx.stop(lay, f"{_where(node)} cuts through a flattened channel", "axis-mismatch")
            return
        ctx.set_layout(node.output[0], lay.cut(a // lay.g, b // lay.g))

    def rewrite(self, node, rw):
        lay = rw.layout(node.input[0])
        keep = rw.keep(node.input[0])
        if keep is None:
            return
        starts, ends, axes, _ = self._params(node, rw.graph, rw.graph.rank(node.input[0]))
        if lay.axis not in axes:
            return
        j = axes.index(lay.axis)
        a, b = self._clamp(starts[j], lay.length), self._clamp(ends[j], lay.length)
        lo, hi = a // lay.g, max(a, b) // lay.g
        new_a = int(np.sum(keep < lo)) * lay.g
        new_b = new_a + int(np.sum((keep >= lo) & (keep < hi))) * lay.g
        for idx, val in ((1, new_a), (2, new_b)):
            arr = np.asarray(rw.value(node, idx)).copy()
            arr.reshape(-1)[j] = val
            rw.set_input(node, idx, arr)


class Flatten(OnData):
    """(N, C, H, W) → (N, C·H·W): channel c ↦ columns c·H·W … (c+1)·H·W − 1."""

    def flow(self, node, ctx, lay):
        shp = ctx.graph.shape(node.input[0])
        if shp is None:
            ctx.stop(lay, f"{_where(node)}: input shape unknown", "unknown-shape")
            return
        a = _norm(int(attr(node, "axis", 1)), len(shp))
        k = lay.axis
        between, after = shp[a:k], shp[k + 1:]
        if a > k or not all(isinstance(d, int) for d in list(between) + list(after)) \
                or math.prod(between) != 1 or (a == 0 and k > 0):
            ctx.stop(lay, f"{_where(node)} merges the channel axis with the batch axis",
                     "mixes-channels")
            return
        ctx.set_layout(node.output[0], Layout(1, lay.spans, lay.g * math.prod(after)))



class Transpose(OnData):
    def flow(self, node, ctx, lay):
        rank = ctx.graph.rank(node.input[0])
        if rank is None:
            ctx.stop(lay, f"{_where(node)}: rank unknown", "unknown-shape")
            return
        perm = [int(p) for p in (attr(node, "perm") or list(range(rank))[::-1])]
        ctx.set_layout(node.output[0], lay.with_axis(perm.index(lay.axis)))


class Squeeze(OnData):
    def flow(self, node, ctx, lay):
        shp = ctx.graph.shape(node.input[0])
        axes = _axes_arg(node, ctx.graph, 1)
        if axes is False or shp is None:
            ctx.stop(lay, f"{_where(node)}: axes unknown", "unknown-shape")
            return
        if axes is None:
            axes = [i for i, d in enumerate(shp) if d == 1]
        axes = [_norm(a, len(shp)) for a in axes]
        if lay.axis in axes:
            ctx.stop(lay, f"{_where(node)} squeezes the channel axis", "mixes-channels")
            return
        ctx.set_layout(node.output[0], lay.with_axis(lay.axis - sum(a < lay.axis for a in axes)))


class Unsqueeze(OnData):
    def flow(self, node, ctx, lay):
        out_rank = ctx.graph.rank(node.output[0])
        axes = _axes_arg(node, ctx.graph, 1)
        if not axes or out_rank is None:
            ctx.stop(lay, f"{_where(node)}: axes unknown", "unknown-shape")
            return
        axes = {_norm(a, out_rank) for a in axes}
        kept_positions = [i for i in range(out_rank) if i not in axes]
        ctx.set_layout(node.output[0], lay.with_axis(kept_positions[lay.axis]))


