"""The layers that make and mix channels: Conv, ConvTranspose, LSTM/GRU/RNN, Gemm, MatMul.

Consumer rules additionally expose the layer as a linear map for the solver: ``weight_matrix``
(m × C·g, the effective weight), ``rows`` (the input laid out as rows × C·g) and
``write_weights`` (store a re-fitted matrix and bias change back in the op's own layout)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from onnxprune.graph import Graph, attr, set_attr
from onnxprune.im2col import conv_pads, im2col, transposed_im2col
from onnxprune.layout import Layout
from onnxprune.rules.base import Rule, _where


def _constant_weight(node, ctx, lay: Layout | None) -> np.ndarray | None:
    """The constant weight (input 1) of a convolution, or None after stopping what flows in
    when the weight or the bias is computed at run time or carries channels itself."""
    g = ctx.graph
    if any(ctx.layout(x) for x in node.input[1:]):
        ctx.stop_inputs(node, f"{_where(node)} takes channels on its weight or bias",
                        "channels-on-parameter")
        return None
    w = g.const_shape(node.input[1])
    if w is None:
        ctx.stop(lay, f"{_where(node)} has a run-time weight", "runtime-value")
        return None
    if len(node.input) > 2 and node.input[2] and not g.is_const(node.input[2]):
        ctx.stop(lay, f"{_where(node)} has a run-time bias", "runtime-value")
        return None
    return w


def _slice_out_channels(node, rw, weight_axis: int) -> np.ndarray | None:
    """Keep the kept output channels of a convolution's weight (on ``weight_axis``) and bias;
    returns them (None: nothing removed)."""
    keep = rw.keep_cols(node.output[0])
    if keep is None:
        return None
    rw.set_input(node, 1, np.take(rw.value(node, 1), keep, axis=weight_axis))
    if len(node.input) > 2 and node.input[2]:
        rw.set_input(node, 2, np.take(rw.value(node, 2), keep, axis=0))
    return keep


class Conv(Rule):
    """Conv: producer of out-channels (group=1), consumer of in-channels (group=1), and
    pass-through for depthwise convolutions (group = C_in = C_out)."""

    @staticmethod
    def _depthwise(node, w: tuple[int, ...], lay: Layout | None) -> bool:
        group = int(attr(node, "group", 1))
        return group > 1 and w[1] == 1 and w[0] == group and (
            lay is None or lay.length == group)

    def analyze(self, node, ctx):
        lay = ctx.layout(node.input[0])
        w = _constant_weight(node, ctx, lay)
        if w is None:
            return
        group = int(attr(node, "group", 1))
        if lay is not None:
            if lay.axis != 1 or lay.g != 1:
                ctx.stop(lay, f"{_where(node)} reads channels on axis {lay.axis}, not 1",
                         "axis-mismatch")
            elif group == 1:
                ctx.add_consumer(node, 0, lay, kind="conv", g=int(np.prod(w[2:])))
            elif self._depthwise(node, w, lay):
                ctx.set_layout(node.output[0], lay)
                return
            else:
                ctx.stop(lay, f"{_where(node)} is a grouped convolution (group={group}), "
                              "which couples channels in blocks", "grouped-conv")
        if group == 1:
            ctx.new_block(node, node.output[0], int(w[0]), axis=1)

    def rewrite(self, node, rw):
        keep = _slice_out_channels(node, rw, weight_axis=0)
        if keep is not None and int(attr(node, "group", 1)) > 1:
            set_attr(node, "group", int(len(keep)))

    # consumer interface
    def has_bias_slot(self, node, graph: Graph) -> bool:
        return True

    def weight_matrix(self, node, graph: Graph) -> np.ndarray:
        w = graph.const(node.input[1]).astype(np.float64)
        return w.reshape(w.shape[0], -1)

    def rows(self, node, graph: Graph, x: np.ndarray, select: Callable[[int, int], np.ndarray]):
        w_shape = graph.const_shape(node.input[1])
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
        """Add ``bias_delta`` to the bias input 2; without one, subtract it from the running mean
        of a BatchNormalization that alone reads the output (``BN(x + δ)`` with mean μ is
        ``BN(x)`` with mean μ − δ: no new parameters), else create the bias."""
        if bias_delta is None:
            return
        if len(node.input) > 2 and node.input[2]:
            rw.set_input(node, 2, rw.value(node, 2) + bias_delta)
            return
        y = node.output[0]
        users = rw.graph.users(y)
        if len(users) == 1 and users[0][1] == 0 and y not in rw.graph.graph_outputs \
                and users[0][0].op_type == "BatchNormalization":
            bn = rw.nodes[users[0][0].name]
            mean = rw.value(bn, 3)
            if mean is not None and mean.shape == bias_delta.shape:
                rw.set_input(bn, 3, mean - bias_delta)
                return
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
                ctx.stop(lay, f"{_where(node)} reads channels on axis {lay.axis}, not 1",
                         "axis-mismatch")
            elif group != 1:
                ctx.stop(lay, f"{_where(node)} is a grouped transposed convolution "
                              f"(group={group}), which couples channels in blocks", "grouped-conv")
            elif auto not in (b"NOTSET", "NOTSET") or attr(node, "output_shape") is not None:
                ctx.stop(lay, f"{_where(node)} sets auto_pad/output_shape; only explicit pads "
                              "are supported when its input channels are pruned",
                              "unsupported-attribute")
            else:
                ctx.add_consumer(node, 0, lay, kind="conv", g=int(np.prod(w[2:])))
        if group == 1:
            ctx.new_block(node, node.output[0], int(w[1]), axis=1)

    def rewrite(self, node, rw):
        _slice_out_channels(node, rw, weight_axis=1)

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
        w_shape = graph.const_shape(node.input[1])
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
            ctx.stop_inputs(node, f"{_where(node)} takes channels on its weights or states",
                            "channels-on-parameter")
            return
        if lay is None:
            return
        g = ctx.graph
        rank = g.rank(node.input[0])
        W, R = g.const(node.input[1]), g.const(node.input[2])
        B = g.const(node.input[3]) if len(node.input) > 3 and node.input[3] else None
        if W is None or R is None or (len(node.input) > 3 and node.input[3] and B is None):
            ctx.stop(lay, f"{_where(node)} has run-time weights", "runtime-value")
        elif rank != 3 or lay.axis != 2 or lay.g != 1:
            ctx.stop(lay, f"{_where(node)} reads channels on axis {lay.axis}, not the input axis",
                     "axis-mismatch")
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
            ctx.stop_inputs(node, f"{_where(node)} takes channels on B or C",
                            "channels-on-parameter")
            return
        b = g.const_shape(node.input[1])
        if b is None:
            ctx.stop(lay, f"{_where(node)} has a run-time B operand", "runtime-value")
            return
        transB = int(attr(node, "transB", 0))
        n_out = int(b[0] if transB else b[1])
        c_name = node.input[2] if len(node.input) > 2 else ""
        c_shape = g.shape(c_name) if c_name else None
        if c_name and not g.is_const(c_name):
            ctx.stop(lay, f"{_where(node)} has a run-time C operand", "runtime-value")
            return
        if lay is not None:
            if int(attr(node, "transA", 0)) or lay.axis != 1:
                ctx.stop(lay, f"{_where(node)} reads features on axis 0 (transA=1)",
                         "axis-mismatch")
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
            ctx.stop(lays, f"{_where(node)}: operand ranks unknown", "unknown-shape")
            return
        if (la is not None and la.axis == ra - 1) or (lb is not None and lb.axis == rb - 2):
            ctx.stop(lays, f"{_where(node)} contracts the channel axis of a run-time operand "
                           "(the other operand is not a constant weight)", "runtime-value")
            return
        # elements of g > 1 entries are fine on a batch axis (grouped-query attention: the Q heads
        # sharing a K/V head), not on a row or column axis
        if any(lay.g != 1 and lay.axis >= r - 2 for lay, r in ((la, ra), (lb, rb))
               if lay is not None):
            ctx.stop(lays, f"{_where(node)} multiplies flattened channels", "axis-mismatch")
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
                ctx.stop(lays, f"{_where(node)} multiplies channels on different axes",
                         "axis-mismatch")
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
                              "not pruned with them", "runtime-value")
                return
        ctx.touch(node)
        ctx.set_layout(node.output[0], lay.with_axis(axis))

    def analyze(self, node, ctx):
        g = ctx.graph
        la, lb = ctx.layout(node.input[0]), ctx.layout(node.input[1])
        w = g.const_shape(node.input[1])
        if w is None and not g.is_const(node.input[0]):
            if la is not None or lb is not None:
                self._batched(node, ctx, la, lb)
            return
        if lb is not None:
            ctx.stop([la, lb], f"{_where(node)} multiplies channels on its right-hand operand",
                     "axis-mismatch")
            return
        if w is None or len(w) != 2:
            ctx.stop(la, f"{_where(node)} multiplies channels by a constant that is not a 2-D "
                         "weight", "axis-mismatch")
            return
        rank = g.rank(node.input[0])
        if la is not None:
            if rank is None or la.axis != rank - 1:
                ctx.stop(la, f"{_where(node)} contracts an axis other than the channel axis",
                         "axis-mismatch")
            else:
                ctx.add_consumer(node, 0, la, kind="matmul", g=la.g)
        out_rank = g.rank(node.output[0]) or rank
        if out_rank is not None and out_rank >= 1:
            ctx.new_block(node, node.output[0], int(w[1]), axis=out_rank - 1)

    def rewrite(self, node, rw):
        if not rw.graph.is_const(node.input[1]):
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
        n_out = graph.const_shape(node.input[1])[1]
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


