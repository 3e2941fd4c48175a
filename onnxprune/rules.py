"""The per-op channel rule registry: the only place that knows how a channel axis flows through
each ONNX op. Adding an op is adding one entry to ``REGISTRY``.

A rule has two halves:

* ``analyze(node, ctx)`` — reads input layouts from the :class:`~onnxprune.analysis.AnalysisContext`
  and declares producers, output layouts, joins, consumers, or stops (unprunable, with a reason);
* ``rewrite(node, rw)`` — given the kept channel positions of the node's tensors
  (``rw.keep(name)``, None when unchanged), slices per-channel constants and patches attributes and
  shape constants.

Consumer rules (Conv, Gemm, MatMul) additionally expose the layer as a linear map for the solver:
``weight_matrix`` (m × C·g, the effective weight), ``rows`` (the input laid out as rows × C·g) and
``write_weights`` (store a re-fitted matrix and bias change back in the op's own layout).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import onnx

from onnxprune.graph import Graph, attr, node_label, set_attr
from onnxprune.im2col import conv_pads, im2col, transposed_im2col
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
        ctx.stop_inputs(node, f"flows into {_where(node)}, which has no channel rule")

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
            ctx.stop_inputs(node, f"{_where(node)} takes channels on a parameter input")
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
            ctx.stop(layouts, f"{_where(node)}: tensor ranks unknown")
            return
        axes = {lay.axis + out_rank - r for (_, lay), r in zip(carriers, ranks)}
        if len(axes) != 1:
            ctx.stop(layouts, f"{_where(node)} combines channels on different axes")
            return
        axis = axes.pop()
        out_shape = g.shape(node.output[0])
        length = layouts[0].length
        # A size-1 channel operand that broadcasts over a wider axis is not a join.
        wide = [lay for lay in layouts if lay.length == length]
        narrow = [lay for lay in layouts if lay.length != length]
        if narrow:
            if all(lay.length == 1 for lay in narrow) and not any(lay.length == 1 for lay in wide):
                ctx.stop(narrow, f"{_where(node)} broadcasts a single channel")
            else:
                ctx.stop(layouts, f"{_where(node)} combines channel axes of different sizes")
                return
        for i, x in enumerate(node.input):
            if not x or ctx.layout(x):
                continue
            shp = g.shape(x)
            if shp is None:
                ctx.stop(layouts, f"{_where(node)}: shape of operand '{x}' unknown")
                return
            k = axis - (out_rank - len(shp))
            if k < 0 or shp[k] == 1:
                continue
            if g.const(x) is not None and shp[k] == length:
                continue
            if g.const(x) is None and ctx.shapes.dim(x, k) == Dim(1):
                continue  # proven to broadcast (an attention mask [b, 1, 1, s])
            ctx.stop(layouts, f"{_where(node)}: operand '{x}' spans the channel axis but is not "
                              "made by a prunable layer (e.g. a residual stream whose other "
                              "users are not all handled: its width is kept)")
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
            ctx.stop_inputs(node, f"{_where(node)} takes channels on a parameter input")
            return
        if lay is None:
            return
        if lay.axis != 1 or lay.g != 1:
            ctx.stop(lay, f"{_where(node)} normalises axis 1, not the channel axis")
            return
        if any(_const_input(node, i, ctx.graph) is None for i in self.param_inputs
               if i < len(node.input) and node.input[i]):
            ctx.stop(lay, f"{_where(node)} has run-time parameters")
            return
        ctx.set_layout(node.output[0], lay)

    def rewrite(self, node, rw):
        keep = rw.keep(node.input[0])
        if keep is None:
            return
        for i in self.param_inputs:
            if i < len(node.input) and node.input[i]:
                rw.set_input(node, i, np.take(rw.value(node, i), keep, axis=0))


class LayerNorm(OnData):
    def flow(self, node, ctx, lay):
        rank = ctx.graph.rank(node.input[0])
        if rank is None or lay.axis >= _norm(attr(node, "axis", -1), rank):
            ctx.stop(lay, f"{_where(node)} normalises over the channel axis")
            return
        ctx.set_layout(node.output[0], lay)


def _constant_weight(node, ctx, lay: Layout | None) -> np.ndarray | None:
    """The constant weight (input 1) of a convolution, or None after stopping what flows in
    when the weight or the bias is computed at run time or carries channels itself."""
    g = ctx.graph
    if any(ctx.layout(x) for x in node.input[1:]):
        ctx.stop_inputs(node, f"{_where(node)} takes channels on its weight or bias")
        return None
    w = g.const(node.input[1])
    if w is None:
        ctx.stop(lay, f"{_where(node)} has a run-time weight")
        return None
    if len(node.input) > 2 and node.input[2] and g.const(node.input[2]) is None:
        ctx.stop(lay, f"{_where(node)} has a run-time bias")
        return None
    return w


class Conv(Rule):
    """Conv: producer of out-channels (group=1), consumer of in-channels (group=1), and
    pass-through for depthwise convolutions (group = C_in = C_out)."""

    @staticmethod
    def _depthwise(node, w: np.ndarray, lay: Layout | None) -> bool:
        group = int(attr(node, "group", 1))
        return group > 1 and w.shape[1] == 1 and w.shape[0] == group and (
            lay is None or lay.length == group)

    def analyze(self, node, ctx):
        lay = ctx.layout(node.input[0])
        w = _constant_weight(node, ctx, lay)
        if w is None:
            return
        group = int(attr(node, "group", 1))
        if lay is not None:
            if lay.axis != 1 or lay.g != 1:
                ctx.stop(lay, f"{_where(node)} reads channels on axis {lay.axis}, not 1")
            elif group == 1:
                ctx.add_consumer(node, 0, lay, kind="conv", g=int(np.prod(w.shape[2:])))
            elif self._depthwise(node, w, lay):
                ctx.set_layout(node.output[0], lay)
                return
            else:
                ctx.stop(lay, f"{_where(node)} is a grouped convolution (group={group}), "
                              "which couples channels in blocks")
        if group == 1:
            ctx.new_block(node, node.output[0], int(w.shape[0]), axis=1)

    def rewrite(self, node, rw):
        keep = rw.keep_cols(node.output[0])
        if keep is None:
            return
        rw.set_input(node, 1, np.take(rw.value(node, 1), keep, axis=0))
        if len(node.input) > 2 and node.input[2]:
            rw.set_input(node, 2, np.take(rw.value(node, 2), keep, axis=0))
        if int(attr(node, "group", 1)) > 1:
            set_attr(node, "group", int(len(keep)))

    # consumer interface
    def has_bias_slot(self, node, graph: Graph) -> bool:
        return True

    def weight_matrix(self, node, graph: Graph) -> np.ndarray:
        w = graph.const(node.input[1]).astype(np.float64)
        return w.reshape(w.shape[0], -1)

    def rows(self, node, graph: Graph, x: np.ndarray, select: Callable[[int, int], np.ndarray]):
        w_shape = graph.const(node.input[1]).shape
        kernel = tuple(int(k) for k in (attr(node, "kernel_shape") or w_shape[2:]))
        nd = len(kernel)
        strides = tuple(attr(node, "strides") or (1,) * nd)
        dil = tuple(attr(node, "dilations") or (1,) * nd)
        pads = conv_pads(node_auto_pad=attr(node, "auto_pad", b"NOTSET"),
                         pads=attr(node, "pads"), in_spatial=x.shape[2:], kernel=kernel,
                         strides=strides, dilations=dil)
        return im2col(x, kernel, strides, dil, pads, select)

    def write_weights(self, node, rw, W: np.ndarray, bias_delta: np.ndarray | None) -> None:
        old = rw.value(node, 1)
        rw.set_input(node, 1, W.reshape((W.shape[0], -1) + tuple(old.shape[2:])))
        self.write_bias(node, rw, bias_delta)

    @staticmethod
    def write_bias(node, rw, bias_delta: np.ndarray | None) -> None:
        """Add ``bias_delta`` to the bias input 2 (created when absent)."""
        if bias_delta is None:
            return
        if len(node.input) > 2 and node.input[2]:
            rw.set_input(node, 2, rw.value(node, 2) + bias_delta)
        else:
            rw.add_input(node, 2, bias_delta, suffix="bias")


class ConvTranspose(Rule):
    """ConvTranspose (weight ``C_in × C_out/group × k…``): producer of out-channels and consumer of
    in-channels (group = 1). As a consumer its rows are the patches of the equivalent plain
    convolution of the upsampled input with the flipped kernel
    (:func:`onnxprune.im2col.transposed_im2col`); explicit pads only (``auto_pad`` and
    ``output_shape`` are refused as a consumer)."""

    def analyze(self, node, ctx):
        lay = ctx.layout(node.input[0])
        w = _constant_weight(node, ctx, lay)
        if w is None:
            return
        group = int(attr(node, "group", 1))
        if lay is not None:
            auto = attr(node, "auto_pad", b"NOTSET")
            if lay.axis != 1 or lay.g != 1:
                ctx.stop(lay, f"{_where(node)} reads channels on axis {lay.axis}, not 1")
            elif group != 1:
                ctx.stop(lay, f"{_where(node)} is a grouped transposed convolution "
                              f"(group={group}), which couples channels in blocks")
            elif auto not in (b"NOTSET", "NOTSET") or attr(node, "output_shape") is not None:
                ctx.stop(lay, f"{_where(node)} sets auto_pad/output_shape; only explicit pads "
                              "are supported when its input channels are pruned")
            else:
                ctx.add_consumer(node, 0, lay, kind="conv", g=int(np.prod(w.shape[2:])))
        if group == 1:
            ctx.new_block(node, node.output[0], int(w.shape[1]), axis=1)

    def rewrite(self, node, rw):
        keep = rw.keep_cols(node.output[0])
        if keep is None:
            return
        rw.set_input(node, 1, np.take(rw.value(node, 1), keep, axis=1))
        if len(node.input) > 2 and node.input[2]:
            rw.set_input(node, 2, np.take(rw.value(node, 2), keep, axis=0))

    # consumer interface
    def has_bias_slot(self, node, graph: Graph) -> bool:
        return True

    @staticmethod
    def _flip(w: np.ndarray) -> np.ndarray:
        """``C × M × k…`` ↔ ``M × C × k…`` with the kernel flipped (an involution)."""
        return np.flip(np.swapaxes(w, 0, 1), axis=tuple(range(2, w.ndim)))

    def weight_matrix(self, node, graph: Graph) -> np.ndarray:
        w = self._flip(graph.const(node.input[1]).astype(np.float64))
        return w.reshape(w.shape[0], -1)

    def rows(self, node, graph: Graph, x: np.ndarray, select: Callable[[int, int], np.ndarray]):
        w_shape = graph.const(node.input[1]).shape
        kernel = tuple(int(k) for k in (attr(node, "kernel_shape") or w_shape[2:]))
        nd = len(kernel)
        pads = attr(node, "pads") or [0] * (2 * nd)
        return transposed_im2col(x, kernel, tuple(attr(node, "strides") or (1,) * nd),
                                 tuple(attr(node, "dilations") or (1,) * nd),
                                 [(int(pads[i]), int(pads[i + nd])) for i in range(nd)],
                                 tuple(attr(node, "output_padding") or (0,) * nd), select)

    def write_weights(self, node, rw, W: np.ndarray, bias_delta: np.ndarray | None) -> None:
        old = rw.value(node, 1)
        rw.set_input(node, 1, self._flip(W.reshape((W.shape[0], -1) + tuple(old.shape[2:]))))
        Conv.write_bias(node, rw, bias_delta)


class Recurrent(Rule):
    """LSTM / GRU / RNN (weights ``W [dirs, gates·hidden, input]``): consumer of the input's
    last axis. Every gate of every direction reads ``W x_t`` with the same ``x_t``, so the input
    weights of all gates stack into one linear layer ``W.reshape(dirs·gates·hidden, input)``,
    one row per time step and sample; the recurrence (``R``) is untouched. A bias change goes
    into ``W_b``, the first half of ``B [dirs, 2·gates·hidden]`` (added to ``W x_t`` in every
    gate, also for GRU's ``linear_before_reset``)."""

    def analyze(self, node, ctx):
        lay = ctx.layout(node.input[0])
        if any(ctx.layout(x) for x in node.input[1:]):
            ctx.stop_inputs(node, f"{_where(node)} takes channels on its weights or states")
            return
        if lay is None:
            return
        g = ctx.graph
        rank = g.rank(node.input[0])
        W, R = g.const(node.input[1]), g.const(node.input[2])
        B = g.const(node.input[3]) if len(node.input) > 3 and node.input[3] else None
        if W is None or R is None or (len(node.input) > 3 and node.input[3] and B is None):
            ctx.stop(lay, f"{_where(node)} has run-time weights")
        elif rank != 3 or lay.axis != 2 or lay.g != 1:
            ctx.stop(lay, f"{_where(node)} reads channels on axis {lay.axis}, not the input axis")
        else:
            ctx.add_consumer(node, 0, lay, kind="linear", g=1)

    def has_bias_slot(self, node, graph: Graph) -> bool:
        return True

    def weight_matrix(self, node, graph):
        W = graph.const(node.input[1]).astype(np.float64)
        return W.reshape(-1, W.shape[-1])

    def rows(self, node, graph, x, select):
        flat = x.reshape(-1, x.shape[-1])
        return flat[select(len(flat), 1)]

    def write_weights(self, node, rw, W, bias_delta):
        old = rw.value(node, 1)
        rw.set_input(node, 1, W.reshape(old.shape[0], old.shape[1], -1))
        if bias_delta is None:
            return
        dirs, gh = old.shape[0], old.shape[1]
        delta = bias_delta.reshape(dirs, gh)
        if len(node.input) > 3 and node.input[3]:
            B = rw.value(node, 3).copy()
            B[:, :gh] += delta
            rw.set_input(node, 3, B)
        else:
            rw.add_input(node, 3, np.concatenate([delta, np.zeros_like(delta)], axis=1),
                         suffix="bias")


class Gemm(Rule):
    """Y = α·A'·B' + β·C: consumer of A's features, producer of the N output features."""

    def analyze(self, node, ctx):
        g = ctx.graph
        lay = ctx.layout(node.input[0])
        if any(ctx.layout(x) for x in node.input[1:]):
            ctx.stop_inputs(node, f"{_where(node)} takes channels on B or C")
            return
        b = g.const(node.input[1])
        if b is None:
            ctx.stop(lay, f"{_where(node)} has a run-time B operand")
            return
        transB = int(attr(node, "transB", 0))
        n_out = int(b.shape[0] if transB else b.shape[1])
        c_name = node.input[2] if len(node.input) > 2 else ""
        c_shape = g.shape(c_name) if c_name else None
        if c_name and g.const(c_name) is None:
            ctx.stop(lay, f"{_where(node)} has a run-time C operand")
            return
        if lay is not None:
            if int(attr(node, "transA", 0)) or lay.axis != 1:
                ctx.stop(lay, f"{_where(node)} reads features on axis 0 (transA=1)")
            else:
                ctx.add_consumer(node, 0, lay, kind="gemm", g=lay.g)
        if c_shape is not None and len(c_shape) == 2 and c_shape[1] != n_out and c_shape[1] != 1:
            return
        ctx.new_block(node, node.output[0], n_out, axis=1)

    def rewrite(self, node, rw):
        keep = rw.keep_cols(node.output[0])  # output features (g per element: heads)
        if keep is None:
            return
        transB = int(attr(node, "transB", 0))
        rw.set_input(node, 1, np.take(rw.value(node, 1), keep, axis=0 if transB else 1))
        if len(node.input) > 2 and node.input[2]:
            c = rw.value(node, 2)
            if c.ndim >= 1 and c.shape[-1] == rw.layout(node.output[0]).length and c.shape[-1] > 1:
                rw.set_input(node, 2, np.take(c, keep, axis=c.ndim - 1))

    def has_bias_slot(self, node, graph: Graph) -> bool:
        return True

    def weight_matrix(self, node, graph: Graph) -> np.ndarray:
        b = graph.const(node.input[1]).astype(np.float64)
        alpha = float(attr(node, "alpha", 1.0))
        return alpha * (b if int(attr(node, "transB", 0)) else b.T)

    def rows(self, node, graph, x, select):
        return x.reshape(x.shape[0], -1)[select(x.shape[0], 1)]

    def write_weights(self, node, rw, W, bias_delta):
        alpha = float(attr(node, "alpha", 1.0))
        beta = float(attr(node, "beta", 1.0))
        stored = W / alpha
        rw.set_input(node, 1, stored if int(attr(node, "transB", 0)) else stored.T)
        if bias_delta is None:
            return
        if len(node.input) > 2 and node.input[2]:
            rw.set_input(node, 2, rw.value(node, 2) + bias_delta / beta)
        else:
            rw.add_input(node, 2, bias_delta / beta, suffix="bias")


class MatMul(Rule):
    """Y = X·W with a constant 2-D W: consumer of X's last axis, producer of W's columns.

    With two run-time operands (attention: ``Q·Kᵀ`` and ``P·V`` on ``[b, heads, s, ·]``) the
    MatMul is batched over the leading axes: element i of a batch axis of A only meets element i
    of the same axis of B, so channels (heads) on a batch axis of both operands are *joined*
    (Q, K and V heads become one index space) and stay on that axis of Y. Channels on A's row axis
    (or B's column axis) pass to Y's row (column) axis when the other operand carries none. A
    channel axis that is contracted (A's last, B's second to last) stops.
    """

    token_rows = True

    def _batched(self, node, ctx, la: Layout | None, lb: Layout | None) -> None:
        g = ctx.graph
        ra, rb, ro = g.rank(node.input[0]), g.rank(node.input[1]), g.rank(node.output[0])
        lays = [lay for lay in (la, lb) if lay is not None]
        if ra is None or rb is None or ro is None or ra < 2 or rb < 2:
            ctx.stop(lays, f"{_where(node)}: operand ranks unknown")
            return
        if (la is not None and la.axis == ra - 1) or (lb is not None and lb.axis == rb - 2):
            ctx.stop(lays, f"{_where(node)} contracts the channel axis of a run-time operand "
                           "(the other operand is not a constant weight)")
            return
        if any(lay.g != 1 for lay in lays):
            ctx.stop(lays, f"{_where(node)} multiplies flattened channels")
            return
        out_axis = {}
        for lay, r, side in ((la, ra, "A"), (lb, rb, "B")):
            if lay is None:
                continue
            if side == "A" and lay.axis == r - 2:
                out_axis[side] = ro - 2
            elif side == "B" and lay.axis == r - 1:
                out_axis[side] = ro - 1
            else:
                out_axis[side] = lay.axis + ro - r
        if len(out_axis) == 2:
            if out_axis["A"] != out_axis["B"] or out_axis["A"] >= ro - 2:
                ctx.stop(lays, f"{_where(node)} multiplies channels on different axes")
                return
            joined = ctx.join(node, [la, lb])
            if joined is not None:
                ctx.set_layout(node.output[0], joined.with_axis(out_axis["A"]))
            return
        side, lay = ("A", la) if la is not None else ("B", lb)
        axis = out_axis[side]
        if axis < ro - 2:  # a batch axis: the other operand must broadcast along it
            other = node.input[1] if side == "A" else node.input[0]
            r_other = rb if side == "A" else ra
            shp = g.shape(other)
            k = axis - (ro - r_other)
            if k >= 0 and (shp is None or shp[k] != 1):
                ctx.stop(lay, f"{_where(node)} multiplies channels with a run-time tensor that is "
                              "not pruned with them")
                return
        ctx.touch(node)
        ctx.set_layout(node.output[0], lay.with_axis(axis))

    def analyze(self, node, ctx):
        g = ctx.graph
        la, lb = ctx.layout(node.input[0]), ctx.layout(node.input[1])
        w = g.const(node.input[1])
        if w is None and g.const(node.input[0]) is None:
            if la is not None or lb is not None:
                self._batched(node, ctx, la, lb)
            return
        if lb is not None:
            ctx.stop([la, lb], f"{_where(node)} multiplies channels on its right-hand operand")
            return
        if w is None or w.ndim != 2:
            ctx.stop(la, f"{_where(node)} multiplies channels by a constant that is not a 2-D "
                         "weight")
            return
        rank = g.rank(node.input[0])
        if la is not None:
            if rank is None or la.axis != rank - 1:
                ctx.stop(la, f"{_where(node)} contracts an axis other than the channel axis")
            else:
                ctx.add_consumer(node, 0, la, kind="matmul", g=la.g)
        out_rank = g.rank(node.output[0]) or rank
        if out_rank is not None and out_rank >= 1:
            ctx.new_block(node, node.output[0], int(w.shape[1]), axis=out_rank - 1)

    def rewrite(self, node, rw):
        if rw.graph.const(node.input[1]) is None:
            return  # batched MatMul of two run-time tensors: nothing to slice
        keep = rw.keep_cols(node.output[0])  # output features (g per element: heads)
        if keep is not None:
            rw.set_input(node, 1, np.take(rw.value(node, 1), keep, axis=1))

    @staticmethod
    def _bias_add(node, graph: Graph):
        """The Add that adds a constant bias of shape (N,) right after this MatMul, if any."""
        y = node.output[0]
        users = graph.users(y)
        if len(users) != 1 or y in graph.graph_outputs or users[0][0].op_type != "Add":
            return None
        add, idx = users[0]
        other = 1 - idx
        c = graph.const(add.input[other]) if len(add.input) == 2 else None
        n_out = graph.const(node.input[1]).shape[1]
        if c is None or c.size != n_out or c.shape[-1] != n_out:
            return None
        return add, other

    def has_bias_slot(self, node, graph: Graph) -> bool:
        return self._bias_add(node, graph) is not None

    def weight_matrix(self, node, graph):
        return graph.const(node.input[1]).astype(np.float64).T

    def rows(self, node, graph, x, select):
        k = x.shape[-1]
        per_sample = int(np.prod(x.shape[1:-1])) if x.ndim > 2 else 1
        flat = x.reshape(x.shape[0], per_sample, k)
        idx = select(x.shape[0], per_sample)
        return flat.reshape(-1, k)[idx]

    def write_weights(self, node, rw, W, bias_delta):
        rw.set_input(node, 1, W.T)
        if bias_delta is not None:
            add, other = self._bias_add(node, rw.graph)
            c = rw.value(add, other)
            rw.set_input(add, other, c + bias_delta.reshape(c.shape))


class Pool(OnData):
    """Spatial pooling on NCHW: channel i stays channel i."""

    def flow(self, node, ctx, lay):
        if lay.axis != 1 or lay.g != 1:
            ctx.stop(lay, f"{_where(node)} pools an axis that carries channels")
            return
        if len(node.output) > 1 and node.output[1] and ctx.graph.users(node.output[1]):
            ctx.stop(lay, f"{_where(node)}: its Indices output encodes channel positions")
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
            ctx.stop(lay, f"{_where(node)}: reduction axes unknown")
            return
        if not axes:
            if int(attr(node, "noop_with_empty_axes", 0)):
                ctx.set_layout(node.output[0], lay)
            else:
                ctx.stop(lay, f"{_where(node)} reduces over all axes, channels included")
            return
        axes = [_norm(a, rank) for a in axes]
        if lay.axis in axes:
            ctx.stop(lay, f"{_where(node)} reduces over the channel axis")
            return
        keepdims = int(attr(node, "keepdims", 1))
        new_axis = lay.axis if keepdims else lay.axis - sum(a < lay.axis for a in axes)
        ctx.set_layout(node.output[0], lay.with_axis(new_axis))


class Resize(OnData):
    """Resize/Upsample with a unit scale on the channel axis (sizes constants are patched)."""

    def flow(self, node, ctx, lay):
        g = ctx.graph
        if any(ctx.layout(x) for x in node.input[1:]):
            ctx.stop_inputs(node, f"{_where(node)} takes channels on a parameter input")
            return
        if attr(node, "axes") is not None:
            axes = [_norm(int(a), g.rank(node.input[0]) or 0) for a in attr(node, "axes")]
            if lay.axis not in axes:
                ctx.set_layout(node.output[0], lay)
                return
            ctx.stop(lay, f"{_where(node)} resizes the channel axis")
            return
        scale_idx = 1 if node.op_type == "Upsample" else 2
        scales = _const_input(node, scale_idx, g)
        sizes = _const_input(node, 3, g) if node.op_type == "Resize" else None
        has_sizes = node.op_type == "Resize" and len(node.input) > 3 and node.input[3]
        if scales is not None and scales.size:
            if float(scales.reshape(-1)[lay.axis]) != 1.0:
                ctx.stop(lay, f"{_where(node)} resizes the channel axis")
                return
        elif has_sizes:
            if sizes is None or int(sizes.reshape(-1)[lay.axis]) != lay.length:
                ctx.stop(lay, f"{_where(node)}: output sizes are computed at run time")
                return
        elif attr(node, "scales") is not None:  # Upsample-7
            if float(attr(node, "scales")[lay.axis]) != 1.0:
                ctx.stop(lay, f"{_where(node)} resizes the channel axis")
                return
        else:
            ctx.stop(lay, f"{_where(node)}: scales are computed at run time")
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
            ctx.stop(lay, f"{_where(node)}: pads are computed at run time")
            return
        pads = [int(p) for p in np.asarray(pads).reshape(-1)]
        axes = [_norm(a, rank) for a in axes] if axes else list(range(rank))
        n = len(axes)
        for j, a in enumerate(axes):
            if a == lay.axis and (pads[j] != 0 or pads[j + n] != 0):
                ctx.stop(lay, f"{_where(node)} pads the channel axis")
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
            ctx.stop(lays, f"{_where(node)}: rank unknown")
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
                                   "unknown")
                    return
                parts.append(ctx.external_block(x, dim, axis))
            if len(gs) != 1:
                ctx.stop(lays, f"{_where(node)} concatenates flattened and plain channels")
                return
            ctx.set_layout(node.output[0], Layout.concat(axis, parts, g=gs.pop()))
        elif not on_axis and all(lay is not None for lay in lays):
            joined = ctx.join(node, lays)  # concatenation along another axis: same channels
            if joined is not None:
                ctx.set_layout(node.output[0], joined)
        else:
            ctx.stop(lays, f"{_where(node)} mixes channel and non-channel inputs")


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
            ctx.stop_inputs(node, f"{_where(node)} takes channels on its split input")
            return
        rank = ctx.graph.rank(node.input[0])
        axis = _norm(int(attr(node, "axis", 0)), rank or 0)
        if axis != lay.axis:
            for o in node.output:
                ctx.set_layout(o, lay)
            return
        sizes = self._sizes(node, ctx.graph, lay.length)
        if sizes is None or any(s % lay.g for s in sizes) or sum(sizes) != lay.length:
            ctx.stop(lay, f"{_where(node)}: split sizes unknown or not whole channels")
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
            ctx.stop_inputs(node, f"{_where(node)} takes channels on a parameter input")
            return
        rank = ctx.graph.rank(node.input[0])
        params = self._params(node, ctx.graph, rank or 0) if rank is not None else None
        if attr(node, "starts") is not None or params is None:
            ctx.stop(lay, f"{_where(node)}: slice parameters are not constants")
            return
        starts, ends, axes, steps = params
        if lay.axis not in axes:
            ctx.set_layout(node.output[0], lay)
            return
        j = axes.index(lay.axis)
        if steps[j] != 1:
            ctx.stop(lay, f"{_where(node)} slices the channel axis with step {steps[j]}")
            return
        a, b = self._clamp(starts[j], lay.length), self._clamp(ends[j], lay.length)
        b = max(a, b)
        if a % lay.g or b % lay.g:
            ctx.stop(lay, f"{_where(node)} cuts through a flattened channel")
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
            ctx.stop(lay, f"{_where(node)}: input shape unknown")
            return
        a = _norm(int(attr(node, "axis", 1)), len(shp))
        k = lay.axis
        between, after = shp[a:k], shp[k + 1:]
        if a > k or not all(isinstance(d, int) for d in list(between) + list(after)) \
                or math.prod(between) != 1 or (a == 0 and k > 0):
            ctx.stop(lay, f"{_where(node)} merges the channel axis with the batch axis")
            return
        ctx.set_layout(node.output[0], Layout(1, lay.spans, lay.g * math.prod(after)))


class Reshape(Rule):
    """Reshape of a tensor carrying channels, proven with symbolic shapes (``onnxprune.shapes``).

    Input ``[P…, C·g, R…]`` (channel axis k, P the leading dimensions, R the trailing ones).
    The output must start with dimensions whose product is ``ΠP`` (they may be merged or split:
    ``[s, b, h, d] → [s·b, h·d]``); what follows is one of

    * ``[C·g·ΠR]`` — flatten (``(N, C, H, W) → (N, C·H·W)``; heads ``[b, s, h, d] → [b, s, h·d]``):
      channel c ↦ entries ``c·g·ΠR … (c+1)·g·ΠR − 1``, so ``g ← g·ΠR``;
    * ``[C·g, R'…]`` with ``ΠR' = ΠR`` — the channel axis is kept;
    * ``[C, g]`` — a split into heads (``[b, s, h·d] → [b, s, h, d]``): each element (head) is now
      one index of the new axis, its ``g = d`` entries on the next axis. When the producers still
      make single channels (first analysis round, ``g = 1``), the rule asks for units of ``d``
      (:meth:`~onnxprune.analysis.AnalysisContext.request_unit`) and stops until the next round.

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
        from onnxprune.shapes import Dim, prod
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
                if lay.g == d and h == lay.channels:
                    return "split", kk, Layout(kk, lay.spans, 1)
                if lay.g == 1:
                    return "unit", kk, d
                return (f"splits {lay.channels} elements of {lay.g} entries into {h} × {d}, "
                        "which does not line up")
        return "mixes the channel axis with other axes"

    @staticmethod
    def locate(graph: Graph, shapes, tensor: str, i: int):
        """(owner node or None, input index, flat index) of the literal holding entry ``i`` of
        the shape tensor ``tensor``; "dynamic" if it is computed; None if unknown."""
        if graph.const(tensor) is not None:
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
                if graph.const(x) is not None:
                    return (prod_node, j, i - pos)
                return Reshape.locate(graph, shapes, x, i - pos) if graph.producer.get(
                    x) is not None and graph.producer[x].op_type == "Concat" else "dynamic"
            pos += len(v)
        return None

    def analyze(self, node, ctx):
        lay = ctx.layout(node.input[0])
        g = ctx.graph
        if ctx.layout(node.input[1]):
            ctx.stop_inputs(node, f"{_where(node)} takes channels on its shape input")
            return
        entries = ctx.shapes.value(node.input[1]) or []
        reads = [(i, e.source, ctx.layout(e.source[0])) for i, e in enumerate(entries)
                 if e.source is not None and ctx.layout(e.source[0]) is not None
                 and ctx.layout(e.source[0]).axis == e.source[1]]
        if lay is None:
            for _, src, other in reads:
                ctx.stop(other, f"the channel count of '{src[0]}' is read at run time by "
                                f"{_where(node)}, which reshapes a tensor without those channels")
            return
        plan = self.plan(node, g, ctx.shapes, lay)
        if isinstance(plan, str):
            ctx.stop([lay] + [o for _, _, o in reads], f"{_where(node)}: {plan}")
            return
        case, kk, new = plan
        if case == "unit":
            ctx.request_unit(node, lay, new)
            ctx.stop(lay, f"{_where(node)} splits channels into groups of {new} (heads), but "
                          "their producers cannot make them in such groups")
            return
        if kk >= len(entries) and not entries:
            ctx.stop(lay, f"{_where(node)}: target shape unknown")
            return
        for i, src, other in reads:
            if i != kk:
                ctx.stop([lay, other], f"{_where(node)} reads the channel count of '{src[0]}' "
                                       "into another axis")
                return
        e = entries[kk] if kk < len(entries) else None
        if e is None:
            ctx.stop(lay, f"{_where(node)}: target shape unknown")
            return
        zero = e.dim is not None and e.dim.static == 0 and not int(attr(node, "allowzero", 0))
        minus = e.dim is not None and e.dim.static == -1
        if reads:
            other = reads[0][2]
            if other.g != new.g or other.channels != new.channels or ctx.join(
                    node, [new.with_axis(other.axis), other]) is None:
                ctx.stop([lay, other], f"{_where(node)} reads a channel count of other channels "
                                       "at run time")
                return
        elif not (zero or minus) and e.source is None:
            if not isinstance(self.locate(g, ctx.shapes, node.input[1], kk), tuple):
                ctx.stop(lay, f"{_where(node)}: target shape is computed at run time and "
                              "encodes the channel count")
                return
        elif zero and kk != lay.axis:
            ctx.stop(lay, f"{_where(node)} copies the channel count into another axis")
            return
        elif e.source is not None:
            ctx.stop(lay, f"{_where(node)}: target shape is computed at run time and encodes "
                          "the channel count")
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
        entries = rw.shapes.value(node.input[1])
        e = entries[kk]
        if e.source is not None or e.dim is None or e.dim.static in (0, -1):
            return
        where = self.locate(rw.graph, rw.shapes, node.input[1], kk)
        if not isinstance(where, tuple):
            return
        owner, idx, flat = where
        value = int(len(keep) * new.g)
        if owner is None:  # the Reshape reads the literal directly
            arr = np.asarray(rw.value(node, 1)).copy()
            arr.reshape(-1)[flat] = value
            rw.set_input(node, 1, arr)
            return
        owner = rw.private_producer(node, 1, owner, (idx, flat, value))
        arr = np.asarray(rw.value(owner, idx)).copy()
        arr.reshape(-1)[flat] = value
        rw.set_input(owner, idx, arr)


class Transpose(OnData):
    def flow(self, node, ctx, lay):
        rank = ctx.graph.rank(node.input[0])
        if rank is None:
            ctx.stop(lay, f"{_where(node)}: rank unknown")
            return
        perm = [int(p) for p in (attr(node, "perm") or list(range(rank))[::-1])]
        ctx.set_layout(node.output[0], lay.with_axis(perm.index(lay.axis)))


class Squeeze(OnData):
    def flow(self, node, ctx, lay):
        shp = ctx.graph.shape(node.input[0])
        axes = _axes_arg(node, ctx.graph, 1)
        if axes is False or shp is None:
            ctx.stop(lay, f"{_where(node)}: axes unknown")
            return
        if axes is None:
            axes = [i for i, d in enumerate(shp) if d == 1]
        axes = [_norm(a, len(shp)) for a in axes]
        if lay.axis in axes:
            ctx.stop(lay, f"{_where(node)} squeezes the channel axis")
            return
        ctx.set_layout(node.output[0], lay.with_axis(lay.axis - sum(a < lay.axis for a in axes)))


class Unsqueeze(OnData):
    def flow(self, node, ctx, lay):
        out_rank = ctx.graph.rank(node.output[0])
        axes = _axes_arg(node, ctx.graph, 1)
        if not axes or out_rank is None:
            ctx.stop(lay, f"{_where(node)}: axes unknown")
            return
        axes = {_norm(a, out_rank) for a in axes}
        kept_positions = [i for i in range(out_rank) if i not in axes]
        ctx.set_layout(node.output[0], lay.with_axis(kept_positions[lay.axis]))


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
            ctx.stop(lay, f"{_where(node)} reads the shape of a channel tensor of unknown rank")
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
            ctx.stop(lay, f"the channel count is read at run time by {_where(user)}")
            return


class Softmax(OnData):
    def flow(self, node, ctx, lay):
        rank = ctx.graph.rank(node.input[0])
        opset = ctx.graph.opset
        axis = _norm(int(attr(node, "axis", -1 if opset >= 13 else 1)), rank or 1)
        covers = lay.axis == axis if opset >= 13 else lay.axis >= axis
        if rank is None or covers:
            ctx.stop(lay, f"{_where(node)} normalises across channels")
            return
        ctx.set_layout(node.output[0], lay)


_UNARY = (
    "Relu LeakyRelu Sigmoid HardSigmoid HardSwish Tanh Elu Selu Celu ThresholdedRelu Softplus "
    "Softsign Erf Gelu Mish Exp Log Sqrt Reciprocal Neg Abs Floor Ceil Round Sign Sin Cos "
    "Identity Cast IsNaN IsInf Not Shrink Swish"
).split()
_ELEMENTWISE = ("Add Sub Mul Div Pow PRelu Max Min Sum Mean Equal Less Greater And Or Mod "
                "Where").split()
_REDUCE = ("ReduceMean ReduceSum ReduceMax ReduceMin ReduceProd ReduceL1 ReduceL2 ReduceLogSum "
           "ReduceLogSumExp ReduceSumSquare ArgMax ArgMin").split()
_POOL = "MaxPool AveragePool LpPool GlobalAveragePool GlobalMaxPool GlobalLpPool".split()

REGISTRY: dict[tuple[str, str], Rule] = {}
for _op in _UNARY:
    REGISTRY[("", _op)] = PassThrough()
REGISTRY[("", "Clip")] = PassThrough(data_inputs=(0,))
REGISTRY[("", "Dropout")] = PassThrough(data_inputs=(0,))
REGISTRY[("", "CastLike")] = PassThrough(data_inputs=(0,))
for _op in _ELEMENTWISE:
    REGISTRY[("", _op)] = Elementwise()
for _op in _REDUCE:
    REGISTRY[("", _op)] = Reduce()
for _op in _POOL:
    REGISTRY[("", _op)] = Pool()
REGISTRY.update({
    ("", "BatchNormalization"): PerChannelParams(param_inputs=(1, 2, 3, 4)),
    ("", "InstanceNormalization"): PerChannelParams(param_inputs=(1, 2)),
    ("", "LayerNormalization"): LayerNorm(),
    ("", "Conv"): Conv(),
    ("", "ConvTranspose"): ConvTranspose(),
    ("", "LSTM"): Recurrent(),
    ("", "GRU"): Recurrent(),
    ("", "RNN"): Recurrent(),
    ("", "Gemm"): Gemm(),
    ("", "MatMul"): MatMul(),
    ("", "Resize"): Resize(),
    ("", "Upsample"): Resize(),
    ("", "Pad"): Pad(),
    ("", "Concat"): Concat(),
    ("", "Split"): Split(),
    ("", "Slice"): Slice(),
    ("", "Flatten"): Flatten(),
    ("", "Reshape"): Reshape(),
    ("", "Transpose"): Transpose(),
    ("", "Squeeze"): Squeeze(),
    ("", "Unsqueeze"): Unsqueeze(),
    ("", "Shape"): ShapeOp(),
    ("", "Softmax"): Softmax(),
    ("", "LogSoftmax"): Softmax(),
    ("", "Hardmax"): Softmax(),
})
for _op in ("QuickGelu", "FastGelu", "Gelu"):  # onnxruntime contrib ops seen in exports
    REGISTRY[("com.microsoft", _op)] = PassThrough()

CONSUMER_KINDS = {"conv": Conv, "gemm": Gemm, "matmul": MatMul}


def rule_for(node: onnx.NodeProto) -> Rule | None:
    domain = node.domain if node.domain not in ("ai.onnx",) else ""
    return REGISTRY.get((domain, node.op_type))
