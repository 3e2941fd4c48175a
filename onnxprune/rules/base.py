"""Rule base classes and the generic rules: pass-through, elementwise joins, per-channel
parameters, normalisations, pooling, reductions, softmax (see :mod:`onnxprune.rules`)."""

from __future__ import annotations


import numpy as np
import onnx

from onnxprune.graph import Graph, attr, node_label
from onnxprune.layout import Layout
from onnxprune.shapes import Dim

INT64_MAX = 2**63 - 1


def _norm(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _where(node: onnx.NodeProto) -> str:
    return f"{node.op_type} node '{node_label(node)}'"


def _const_input(node, i, graph: Graph):
    return graph.const(node.input[i]) if len(node.input) > i and node.input[i] else None


def _axes_arg(node, graph: Graph, input_index: int, attr_name: str = "axes"):
    """Axes from the attribute (old opsets) or a constant input (new opsets); False if run-time."""
    a = attr(node, attr_name)
    if a is not None:
        return [int(x) for x in a]
    if len(node.input) > input_index and node.input[input_index]:
        v = graph.const(node.input[input_index])
        if v is None:
            return False
        return [int(x) for x in np.asarray(v).reshape(-1)]
    return None


def output_scale(node: onnx.NodeProto, graph: Graph) -> np.ndarray | None:
    """Per-output-channel factor of a BatchNormalization that alone reads ``node``'s output.

    The selection objective measures a consumer's output error where it matters: after the
    per-channel affine map that follows it (γ/√(σ²+ε) of the BatchNormalization).
    """
    y = node.output[0]
    users = graph.users(y)
    if len(users) != 1 or y in graph.graph_outputs:
        return None
    bn, idx = users[0]
    if bn.op_type != "BatchNormalization" or idx != 0:
        return None
    gamma, var = graph.const(bn.input[1]), graph.const(bn.input[4])
    if gamma is None or var is None:
        return None
    eps = float(attr(bn, "epsilon", 1e-5))
    return np.abs(gamma.astype(np.float64)) / np.sqrt(var.astype(np.float64) + eps)


class Rule:
    """Default: channels flowing in stop here (the group becomes unprunable)."""

    #: ``rows`` makes one row per position of ``x.shape[1:-1]`` (tokens of ``[n, seq, k]``), so
    #: a calibration token mask applies to it (:mod:`onnxprune.calibrate`).
    token_rows = False

    def analyze(self, node: onnx.NodeProto, ctx) -> None:
        ctx.stop_inputs(node, f"flows into {_where(node)}, which has no channel rule", "no-rule")

    def rewrite(self, node: onnx.NodeProto, rw) -> None:
        return None


class OnData(Rule):
    """Rules that act only when channels arrive on input 0: ``flow`` gets that layout."""

    def analyze(self, node, ctx):
        lay = ctx.layout(node.input[0])
        if lay is not None:
            self.flow(node, ctx, lay)

    def flow(self, node, ctx, lay: Layout) -> None:
        raise NotImplementedError


class PassThrough(Rule):
    """Unary elementwise ops and friends: channel i stays channel i (all outputs)."""

    def __init__(self, data_inputs: tuple[int, ...] = (0,), outputs: tuple[int, ...] | None = None):
        self.data_inputs = data_inputs
        self.outputs = outputs

    def analyze(self, node, ctx):
        lay = ctx.layout(node.input[0])
        others = [ctx.layout(x) for i, x in enumerate(node.input) if i not in self.data_inputs]
        if any(others):
            ctx.stop_inputs(node, f"{_where(node)} takes channels on a parameter input",
                            "channels-on-parameter")
            return
        if lay is None:
            return
        outs = self.outputs if self.outputs is not None else range(len(node.output))
        for i in outs:
            if i < len(node.output) and node.output[i]:
                ctx.set_layout(node.output[i], lay)


class Elementwise(Rule):
    """Broadcasting n-ary ops (Add, Mul, Sub, Div, PRelu, Max, …).

    Operands carrying layouts are joined (residual Add, SE gating Mul). Constant operands whose
    aligned dimension equals the channel axis are sliced; size-1 dimensions broadcast untouched.
    A run-time operand that is not itself a channel layout but spans the channel axis stops.
    """

    def analyze(self, node, ctx):
        g = ctx.graph
        carriers = [(i, ctx.layout(x)) for i, x in enumerate(node.input) if ctx.layout(x)]
        if not carriers:
            return
        layouts = [lay for _, lay in carriers]
        out_rank = g.rank(node.output[0])
        ranks = [g.rank(node.input[i]) for i, _ in carriers]
        if out_rank is None or any(r is None for r in ranks):
            ctx.stop(layouts, f"{_where(node)}: tensor ranks unknown", "unknown-shape")
            return
        axes = {lay.axis + out_rank - r for (_, lay), r in zip(carriers, ranks)}
        if len(axes) != 1:
            ctx.stop(layouts, f"{_where(node)} combines channels on different axes",
                     "axis-mismatch")
            return
        axis = axes.pop()
        out_shape = g.shape(node.output[0])
        length = layouts[0].length
        # A size-1 channel operand that broadcasts over a wider axis is not a join.
        wide = [lay for lay in layouts if lay.length == length]
        narrow = [lay for lay in layouts if lay.length != length]
        if narrow:
            if all(lay.length == 1 for lay in narrow) and not any(lay.length == 1 for lay in wide):
                ctx.stop(narrow, f"{_where(node)} broadcasts a single channel", "axis-mismatch")
            else:
                ctx.stop(layouts, f"{_where(node)} combines channel axes of different sizes",
                         "axis-mismatch")
                return
        for i, x in enumerate(node.input):
            if not x or ctx.layout(x):
                continue
            shp = g.shape(x)
            if shp is None:
                ctx.stop(layouts, f"{_where(node)}: shape of operand '{x}' unknown",
                         "unknown-shape")
                return
            k = axis - (out_rank - len(shp))
            if k < 0 or shp[k] == 1:
                continue
            if g.is_const(x) and shp[k] == length:
                continue
            if not g.is_const(x) and ctx.shapes.dim(x, k) == Dim(1):
                continue  # proven to broadcast (an attention mask [b, 1, 1, s])
            ctx.stop(layouts, f"{_where(node)}: operand '{x}' spans the channel axis but is not "
                              "made by a prunable layer (e.g. a residual stream whose other "
                              "users are not all handled: its width is kept)", "unhandled-operand")
            return
        joined = ctx.join(node, wide)
        if joined is not None and out_shape is not None:
            ctx.set_layout(node.output[0], joined.with_axis(axis))

    def rewrite(self, node, rw):
        out = node.output[0]
        cols = rw.keep_cols(out)
        if cols is None:
            return
        lay = rw.layout(out)
        out_rank = rw.graph.rank(out)
        for i, x in enumerate(node.input):
            if not x or rw.layout(x) is not None:
                continue
            v = rw.value(node, i)
            if v is None:
                continue
            k = lay.axis - (out_rank - v.ndim)
            if k >= 0 and v.shape[k] == lay.length and lay.length != 1:
                rw.set_input(node, i, np.take(v, cols, axis=k))


class PerChannelParams(Rule):
    """BatchNormalization / InstanceNormalization: channel axis 1, parameter inputs sliced."""

    def __init__(self, param_inputs: tuple[int, ...]):
        self.param_inputs = param_inputs

    def analyze(self, node, ctx):
        lay = ctx.layout(node.input[0])
        if any(ctx.layout(node.input[i]) for i in self.param_inputs if i < len(node.input)):
            ctx.stop_inputs(node, f"{_where(node)} takes channels on a parameter input",
                            "channels-on-parameter")
            return
        if lay is None:
            return
        if lay.axis != 1 or lay.g != 1:
            ctx.stop(lay, f"{_where(node)} normalises axis 1, not the channel axis",
                     "mixes-channels")
            return
        if any(_const_input(node, i, ctx.graph) is None for i in self.param_inputs
               if i < len(node.input) and node.input[i]):
            ctx.stop(lay, f"{_where(node)} has run-time parameters", "runtime-value")
            return
        ctx.set_layout(node.output[0], lay)

    def rewrite(self, node, rw):
        slice_params(node, rw, self.param_inputs)


def slice_params(node, rw, inputs) -> None:
    """Slice the per-channel constant inputs ``inputs`` of ``node`` (axis 0) with the kept
    channels of its input 0; scalars and absent inputs stay."""
    keep = rw.keep(node.input[0])
    if keep is None:
        return
    for i in inputs:
        v = rw.value(node, i) if i < len(node.input) and node.input[i] else None
        if v is not None and v.size > 1:
            rw.set_input(node, i, np.take(v, keep, axis=0))


class QuantizeLinear(OnData):
    """Activation ``QuantizeLinear`` / ``DequantizeLinear``: channel i stays channel i. A scale
    and zero point per tensor pass through; per channel along the channel axis they are sliced
    with the channels. (Quantized *weights* are lifted to float before analysis:
    ``passes.qdq``.)"""

    def flow(self, node, ctx, lay):
        if any(ctx.layout(x) for x in node.input[1:]):
            ctx.stop_inputs(node, f"{_where(node)} takes channels on its scale or zero point",
                            "channels-on-parameter")
            return
        shape = ctx.graph.const_shape(node.input[1]) if len(node.input) > 1 else None
        rank = ctx.graph.rank(node.input[0])
        if shape is None or rank is None:
            ctx.stop(lay, f"{_where(node)} has a run-time scale", "runtime-value")
            return
        size = int(np.prod(shape))
        if size != 1 and (attr(node, "block_size", 0) or lay.g != 1 or len(shape) != 1
                          or _norm(int(attr(node, "axis", 1)), rank) != lay.axis
                          or size != lay.length):
            ctx.stop(lay, f"{_where(node)} quantizes per channel along another axis or in "
                     "blocks", "mixes-channels")
            return
        ctx.set_layout(node.output[0], lay)

    def rewrite(self, node, rw):
        slice_params(node, rw, (1, 2))


class LayerNorm(OnData):
    def flow(self, node, ctx, lay):
        rank = ctx.graph.rank(node.input[0])
        if rank is None or lay.axis >= _norm(attr(node, "axis", -1), rank):
            ctx.stop(lay, f"{_where(node)} normalises over the channel axis", "mixes-channels")
            return
        ctx.set_layout(node.output[0], lay)



class Pool(OnData):
    """Spatial pooling on NCHW: channel i stays channel i."""

    def flow(self, node, ctx, lay):
        if lay.axis != 1 or lay.g != 1:
            ctx.stop(lay, f"{_where(node)} pools an axis that carries channels", "mixes-channels")
            return
        if len(node.output) > 1 and node.output[1] and ctx.graph.users(node.output[1]):
            ctx.stop(lay, f"{_where(node)}: its Indices output encodes channel positions",
                     "mixes-channels")
            return
        ctx.set_layout(node.output[0], lay)


class Reduce(OnData):
    """Reduce*/ArgMax over axes other than the channel axis (e.g. ReduceMean over H, W)."""

    def flow(self, node, ctx, lay):
        rank = ctx.graph.rank(node.input[0])
        if node.op_type in ("ArgMax", "ArgMin"):
            axes = [int(attr(node, "axis", 0))]
        else:
            axes = _axes_arg(node, ctx.graph, 1)
        if axes is False or rank is None:
            ctx.stop(lay, f"{_where(node)}: reduction axes unknown", "unknown-shape")
            return
        if not axes:
            if int(attr(node, "noop_with_empty_axes", 0)):
                ctx.set_layout(node.output[0], lay)
            else:
                ctx.stop(lay, f"{_where(node)} reduces over all axes, channels included",
                         "mixes-channels")
            return
        axes = [_norm(a, rank) for a in axes]
        if lay.axis in axes:
            ctx.stop(lay, f"{_where(node)} reduces over the channel axis", "mixes-channels")
            return
        keepdims = int(attr(node, "keepdims", 1))
        new_axis = lay.axis if keepdims else lay.axis - sum(a < lay.axis for a in axes)
        ctx.set_layout(node.output[0], lay.with_axis(new_axis))



class Softmax(OnData):
    def flow(self, node, ctx, lay):
        rank = ctx.graph.rank(node.input[0])
        opset = ctx.graph.opset
        axis = _norm(int(attr(node, "axis", -1 if opset >= 13 else 1)), rank or 1)
        covers = lay.axis == axis if opset >= 13 else lay.axis >= axis
        if rank is None or covers:
            ctx.stop(lay, f"{_where(node)} normalises across channels", "mixes-channels")
            return
        ctx.set_layout(node.output[0], lay)


