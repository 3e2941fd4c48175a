"""Symbolic shape arithmetic: what the run-time shape computations of a graph evaluate to.

Exporters write target shapes of Reshape nodes as computations on ``Shape`` reads
(``Concat(Unsqueeze(Gather(Shape(x), 0)), …, [12], [32])`` in the legacy torch exporter,
``Concat(Shape(x, 0, 1), Shape(x, 1, 2), [12], [32])`` in the dynamo one), and ONNX shape
inference often cannot tell what they are once a dimension is dynamic. This module evaluates them
symbolically, without running anything:

* a *dimension* is a monomial ``coef · d₁ · d₂ ⋯`` (:class:`Dim`): an integer times a product of
  named symbolic dimensions. A symbol is the canonical source of a dimension: a graph input's
  ``dim_param`` (``("param", "batch")``), or a tensor axis the walk cannot see through;
* :meth:`ShapeEval.dim` finds the canonical source of ``tensor.shape[axis]`` by walking back
  through ops that keep that axis (element-wise ops, MatMul batch/row axes, Transpose, Gather,
  Squeeze/Unsqueeze, Reshape through its own target shape …), so that
  ``Shape(query_output)[0]`` and ``Shape(input_ids)[0]`` are recognised as the same batch size;
* :meth:`ShapeEval.value` evaluates a 1-D int64 shape tensor built from ``Shape`` reads,
  constants, ``Gather``/``Slice``/``Concat``/``Unsqueeze``/``Squeeze``/``Cast`` and ``Mul`` into a
  list of :class:`Entry` (the dimension, and for a ``Shape`` read its raw source — the tensor and
  axis it was read from — so that callers can tell run-time reads of a channel count);
* :meth:`ShapeEval.reshape_dims` resolves a Reshape's output dimensions (``0`` copies, ``-1``
  divides the input's size by the other entries when the quotient is a monomial).

Two dimensions are equal when their monomials are identical; anything the evaluator cannot prove
is ``None`` (callers then treat the structure as unprovable). The evaluator only reads the graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxprune import weights
from onnxprune.graph import Graph, attr

Symbol = tuple[str, ...]


@dataclass(frozen=True)
class Dim:
    """``coef · Π syms`` (syms sorted, with repetition)."""

    coef: int
    syms: tuple[Symbol, ...] = ()

    @property
    def static(self) -> int | None:
        return self.coef if not self.syms else None

    def __mul__(self, other: Dim) -> Dim:
        return Dim(self.coef * other.coef, tuple(sorted(self.syms + other.syms)))

    def divide(self, other: Dim) -> Dim | None:
        """``self / other`` if it is a monomial with an integer coefficient."""
        if other.coef == 0 or self.coef % other.coef:
            return None
        rest = list(self.syms)
        for s in other.syms:
            if s not in rest:
                return None
            rest.remove(s)
        return Dim(self.coef // other.coef, tuple(rest))


def prod(dims) -> Dim:
    out = Dim(1)
    for d in dims:
        out = out * d
    return out


@dataclass(frozen=True)
class Entry:
    """One element of an evaluated shape tensor: its dimension (None: unknown) and, when it is
    a plain ``Shape`` read, the (tensor, axis) it was read from."""

    dim: Dim | None
    source: tuple[str, int] | None = None
    literal: bool = False  # a constant of the graph (patchable), not computed at run time


_SAME_SHAPE = set(
    "Relu LeakyRelu Sigmoid HardSigmoid HardSwish Tanh Elu Selu Celu Softplus Softsign Erf Gelu "
    "Mish Exp Log Sqrt Reciprocal Neg Abs Floor Ceil Round Sign Identity Cast CastLike Dropout "
    "Softmax LogSoftmax LayerNormalization IsNaN IsInf Not Clip BatchNormalization "
    "QuantizeLinear DequantizeLinear".split())
#: Ops on ``[N, C, spatial…]`` whose output keeps the input's batch axis 0.
_BATCH_FIRST = set("Conv ConvTranspose MaxPool AveragePool LpPool GlobalAveragePool GlobalMaxPool "
                   "GlobalLpPool InstanceNormalization LRN DepthToSpace SpaceToDepth".split())
_BROADCAST = set("Add Sub Mul Div Pow Max Min Sum Mean Equal Less Greater LessOrEqual GreaterOrEqual "
                 "And Or Xor Where PRelu Mod".split())


class ShapeEval:
    """Memoised symbolic evaluation over one :class:`Graph` (see module docstring)."""

    MAX_DEPTH = 400

    def __init__(self, graph: Graph) -> None:
        self.g = graph
        self._dims: dict[tuple[str, int], Dim | None] = {}
        self._values: dict[str, list[Entry] | None] = {}
        self._declared: dict[str, tuple] = {}
        for vi in graph.model.graph.input:
            t = vi.type.tensor_type
            if t.HasField("shape"):
                self._declared[vi.name] = tuple(
                    int(d.dim_value) if d.HasField("dim_value") else
                    (("param", d.dim_param) if d.HasField("dim_param") else None)
                    for d in t.shape.dim)

    # -- dimensions ------------------------------------------------------------------------------
    def dim(self, tensor: str, axis: int, _depth: int = 0) -> Dim | None:
        rank = self.g.rank(tensor)
        if rank is None:
            return None
        if axis < 0:
            axis += rank
        if not 0 <= axis < rank:
            return None
        key = (tensor, axis)
        if key not in self._dims:
            self._dims[key] = None  # cycle guard
            self._dims[key] = self._dim(tensor, axis, _depth)
        return self._dims[key]

    def _leaf(self, tensor: str, axis: int) -> Dim:
        if tensor in self._declared:
            d = self._declared[tensor][axis] if axis < len(self._declared[tensor]) else None
            if isinstance(d, int):
                return Dim(d)
            if d is not None:
                return Dim(1, (d,))
            return Dim(1, (("axis", tensor, str(axis)),))
        c = self.g.const(tensor)
        if c is not None:
            return Dim(int(c.shape[axis]))
        s = self.g.shape(tensor)
        # Inferred static sizes are trusted except on axis 0: the graph index infers shapes with a
        # concrete batch of 1 (see graph._concrete_batch). Walks through the ops that move axes
        # (Transpose, Reshape …) come first, so a batch axis moved elsewhere is still found.
        if s is not None and isinstance(s[axis], int) and axis > 0:
            return Dim(int(s[axis]))
        return Dim(1, (("axis", tensor, str(axis)),))

    def _dim(self, tensor: str, axis: int, depth: int) -> Dim | None:
        if depth > self.MAX_DEPTH:
            return self._leaf(tensor, axis)
        node = self.g.producer.get(tensor)
        if node is None or node.domain not in ("", "ai.onnx"):
            return self._leaf(tensor, axis)
        op, rank = node.op_type, self.g.rank(tensor)
        d = depth + 1

        def same_rank_input(candidates) -> str | None:
            best = ones = None
            for x in candidates:
                if not x or self.g.rank(x) != rank:
                    continue
                s = self.g.shape(x)
                if s is not None and s[axis] == 1 and axis > 0:
                    ones = ones or x  # broadcasts along this axis (if inference is right)
                    continue
                if self.g.const(x) is None:
                    return x
                best = best or x
            return best or ones

        if op == "Shape":
            v = self.value(tensor, d)
            return Dim(len(v)) if v is not None else self._leaf(tensor, axis)
        if op in _SAME_SHAPE and node.output[0] == tensor:
            return self.dim(node.input[0], axis, d)
        if op in _BATCH_FIRST and axis == 0 and node.output[0] == tensor:
            return self.dim(node.input[0], 0, d)
        if op in _BROADCAST:
            ins = list(node.input[1:]) if op == "Where" else list(node.input)
            x = same_rank_input(ins + ([node.input[0]] if op == "Where" else []))
            return self.dim(x, axis, d) if x else self._leaf(tensor, axis)
        if op == "Transpose":
            perm = attr(node, "perm") or list(range(rank))[::-1]
            return self.dim(node.input[0], int(perm[axis]), d)
        if op == "MatMul":
            ra, rb = self.g.rank(node.input[0]), self.g.rank(node.input[1])
            if ra is None or rb is None or ra < 2 or rb < 2:
                return self._leaf(tensor, axis)
            if axis == rank - 1:
                return self.dim(node.input[1], rb - 1, d)
            if axis == rank - 2:
                return self.dim(node.input[0], ra - 2, d)
            x = same_rank_input([node.input[0], node.input[1]])
            return self.dim(x, axis, d) if x else self._leaf(tensor, axis)
        if op == "Gemm":
            ta, tb = int(attr(node, "transA", 0)), int(attr(node, "transB", 0))
            if axis == 0:
                return self.dim(node.input[0], 1 if ta else 0, d)
            return self.dim(node.input[1], 0 if tb else 1, d)
        if op == "Gather":
            ax = int(attr(node, "axis", 0))
            rd, ri = self.g.rank(node.input[0]), self.g.rank(node.input[1])
            if rd is None or ri is None:
                return self._leaf(tensor, axis)
            ax = ax + rd if ax < 0 else ax
            if axis < ax:
                return self.dim(node.input[0], axis, d)
            if axis < ax + ri:
                return self.dim(node.input[1], axis - ax, d)
            return self.dim(node.input[0], axis - ri + 1, d)
        if op in ("Unsqueeze", "Squeeze"):
            axes = attr(node, "axes")
            if axes is None and len(node.input) > 1 and node.input[1]:
                v = self.g.const(node.input[1])
                axes = None if v is None else [int(a) for a in np.asarray(v).reshape(-1)]
            if axes is None:
                return self._leaf(tensor, axis)
            if op == "Unsqueeze":
                axes = {a + rank if a < 0 else a for a in axes}
                if axis in axes:
                    return Dim(1)
                return self.dim(node.input[0], axis - sum(a < axis for a in axes), d)
            rin = self.g.rank(node.input[0])
            if rin is None:
                return self._leaf(tensor, axis)
            axes = {a + rin if a < 0 else a for a in axes}
            src = [i for i in range(rin) if i not in axes]
            return self.dim(node.input[0], src[axis], d)
        if op == "Reshape":
            dims = self.reshape_dims(node, d)
            return dims[axis] if dims is not None and dims[axis] is not None else \
                self._leaf(tensor, axis)
        if op == "Expand":
            v = self.value(node.input[1], d)
            rin = self.g.rank(node.input[0])
            if v is None or rin is None or len(v) != rank and rin != rank:
                return self._leaf(tensor, axis)
            j = axis - (rank - len(v))
            e = v[j].dim if j >= 0 else Dim(1)
            i = axis - (rank - rin)
            din = self.dim(node.input[0], i, d) if i >= 0 else Dim(1)
            if e == Dim(1):
                return din if din is not None else self._leaf(tensor, axis)
            if din == Dim(1) or din == e:
                return e if e is not None else self._leaf(tensor, axis)
            return self._leaf(tensor, axis)
        if op in ("Concat", "Slice", "Split", "Pad", "Resize"):
            if op == "Concat":
                ax = int(attr(node, "axis", 0))
                ax = ax + rank if ax < 0 else ax
                if ax != axis:
                    return self.dim(node.input[0], axis, d)
                parts = [self.dim(x, axis, d) for x in node.input]
                if all(p is not None and p.static is not None for p in parts):
                    return Dim(sum(p.static for p in parts))
            elif op == "Slice":
                v = self.value(node.input[3], d) if len(node.input) > 3 and node.input[3] else None
                axes = [e.dim.static for e in v] if v is not None and all(
                    e.dim is not None for e in v) else None
                if axes is not None and all(a is not None for a in axes) and axis not in {
                        a + rank if a < 0 else a for a in axes}:
                    return self.dim(node.input[0], axis, d)
            elif op == "Split":
                ax = int(attr(node, "axis", 0))
                ax = ax + rank if ax < 0 else ax
                if ax != axis:
                    return self.dim(node.input[0], axis, d)
            elif op == "Pad" and self._unpadded(node, axis, rank):
                return self.dim(node.input[0], axis, d)
        return self._leaf(tensor, axis)

    def _unpadded(self, node, axis: int, rank: int) -> bool:
        """True when the Pad adds nothing on ``axis`` (pads known, both ends 0)."""
        pads = attr(node, "pads")
        if pads is None and len(node.input) > 1 and node.input[1]:
            v = self.g.const(node.input[1])
            pads = None if v is None else [int(p) for p in np.asarray(v).reshape(-1)]
        if pads is None:
            return False
        if len(node.input) > 3 and node.input[3]:
            v = self.g.const(node.input[3])
            if v is None:
                return False
            axes = [int(a) + rank if int(a) < 0 else int(a) for a in np.asarray(v).reshape(-1)]
        else:
            axes = list(range(rank))
        n = len(axes)
        return all(pads[i] == 0 and pads[i + n] == 0 for i, a in enumerate(axes) if a == axis)

    # -- shape tensors -----------------------------------------------------------------------------
    def value(self, tensor: str, _depth: int = 0) -> list[Entry] | None:
        """Entries of a 0-D/1-D integer tensor, or None if it cannot be evaluated."""
        if tensor not in self._values:
            self._values[tensor] = None
            self._values[tensor] = self._value(tensor, _depth)
        return self._values[tensor]

    def _value(self, tensor: str, depth: int) -> list[Entry] | None:
        c = self.g.const(tensor)
        if c is not None:
            if c.ndim > 1 or not np.issubdtype(c.dtype, np.integer):
                return None
            return [Entry(Dim(int(v)), literal=True) for v in np.asarray(c).reshape(-1)]
        node = self.g.producer.get(tensor)
        if node is None or depth > self.MAX_DEPTH or node.domain not in ("", "ai.onnx"):
            return None
        op, d = node.op_type, depth + 1
        if op == "Shape":
            x = node.input[0]
            rank = self.g.rank(x)
            if rank is None:
                return None
            start, end = int(attr(node, "start", 0)), attr(node, "end")
            end = rank if end is None else int(end)
            start, end = (start + rank if start < 0 else start), (end + rank if end < 0 else end)
            start, end = max(0, min(start, rank)), max(0, min(end, rank))
            return [Entry(self.dim(x, i, d), source=(x, i)) for i in range(start, end)]
        if op in ("Unsqueeze", "Squeeze", "Cast", "Identity", "Reshape", "Flatten"):
            return self.value(node.input[0], d)
        if op == "Concat":
            out: list[Entry] = []
            for x in node.input:
                v = self.value(x, d)
                if v is None:
                    return None
                out.extend(v)
            return out
        if op == "Gather":
            v = self.value(node.input[0], d)
            idx = self.g.const(node.input[1])
            if v is None or idx is None or int(attr(node, "axis", 0)) != 0:
                return None
            try:
                return [v[int(i)] for i in np.asarray(idx).reshape(-1)]
            except IndexError:
                return None
        if op == "Slice":
            v = self.value(node.input[0], d)
            params = [self.g.const(x) if x else None for x in list(node.input[1:5])]
            if v is None or params[0] is None or params[1] is None:
                return None
            if len(params) > 3 and params[3] is not None and int(np.asarray(params[3]).reshape(-1)[0]) != 1:
                return None
            n = len(v)
            a, b = int(np.asarray(params[0]).reshape(-1)[0]), int(np.asarray(params[1]).reshape(-1)[0])
            a, b = (a + n if a < 0 else a), (b + n if b < 0 else b)
            return v[max(0, min(a, n)):max(0, min(b, n))]
        if op == "ConstantOfShape":
            v = self.value(node.input[0], d)
            t = attr(node, "value")
            fill = 0 if t is None else int(np.asarray(weights.to_array(t)).reshape(-1)[0])
            if v is None or len(v) != 1 or v[0].dim is None or v[0].dim.static is None:
                return None
            return [Entry(Dim(fill))] * v[0].dim.static
        if op == "Equal":  # element-wise, on shape vectors; a dimension is never negative
            va, vb = self._pair(node, d)
            if va is None:
                return None
            out = []
            for x, y in zip(va, vb):
                if x.dim is None or y.dim is None:
                    out.append(Entry(None))
                elif x.dim == y.dim:
                    out.append(Entry(Dim(1)))
                elif (x.dim.static is not None and y.dim.static is not None) or (
                        x.dim.syms and y.dim.static is not None and y.dim.static < 0) or (
                        y.dim.syms and x.dim.static is not None and x.dim.static < 0):
                    out.append(Entry(Dim(0)))
                else:
                    out.append(Entry(None))
            return out
        if op == "Where":  # torch's expand(-1): Where(Equal(v, -1), ones, v)
            c = self.value(node.input[0], d)
            va, vb = self.value(node.input[1], d), self.value(node.input[2], d)
            if c is None or va is None or vb is None:
                return None
            n = max(len(c), len(va), len(vb))
            if any(len(v) not in (1, n) for v in (c, va, vb)):
                return None
            c, va, vb = ((v * n if len(v) == 1 else v) for v in (c, va, vb))
            out = []
            for ci, x, y in zip(c, va, vb):
                if ci.dim is None or ci.dim.static is None:
                    return None
                out.append(x if ci.dim.static else y)
            return out
        if op == "Mul":
            va, vb = self._pair(node, d)
            if va is None:
                return None
            return [Entry(None if x.dim is None or y.dim is None else x.dim * y.dim)
                    for x, y in zip(va, vb)]
        if op == "Div":
            va, vb = self.value(node.input[0], d), self.value(node.input[1], d)
            if va is None or vb is None or len(vb) != 1:
                return None
            return [Entry(None if x.dim is None or vb[0].dim is None else x.dim.divide(vb[0].dim))
                    for x in va]
        return None

    def _pair(self, node, d: int):
        """Both operands' values, broadcast to one length, or (None, None)."""
        va, vb = self.value(node.input[0], d), self.value(node.input[1], d)
        if va is None or vb is None or (len(va) != len(vb) and 1 not in (len(va), len(vb))):
            return None, None
        n = max(len(va), len(vb))
        return (va * n if len(va) == 1 else va), (vb * n if len(vb) == 1 else vb)

    def reshape_dims(self, node, _depth: int = 0) -> list[Dim | None] | None:
        """Output dimensions of a Reshape node (None where unknown), or None."""
        v = self.value(node.input[1], _depth + 1)
        x = node.input[0]
        rank = self.g.rank(x)
        if v is None or rank is None:
            return None
        allowzero = int(attr(node, "allowzero", 0))
        out: list[Dim | None] = []
        infer = None
        for i, e in enumerate(v):
            if e.dim is not None and e.dim.static == 0 and not allowzero:
                out.append(self.dim(x, i, _depth + 1) if i < rank else None)
            elif e.dim is not None and e.dim.static == -1:
                infer = i
                out.append(None)
            else:
                out.append(e.dim)
        if infer is not None:
            total = [self.dim(x, i, _depth + 1) for i in range(rank)]
            others = [o for i, o in enumerate(out) if i != infer]
            if all(t is not None for t in total) and all(o is not None for o in others):
                out[infer] = prod(total).divide(prod(others))
        return out
