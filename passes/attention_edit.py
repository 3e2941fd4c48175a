"""Editing primitives of the attention canonical forms (:mod:`onnxprune.passes.attention_forms`).

:class:`Edit` accumulates node replacements on a topologically ordered node list, with an index
and symbolic shapes of the graph before the edit; the helpers match the Reshape / Transpose
plumbing and step over identity ``QuantizeLinear → DequantizeLinear`` pairs (a pair on the grid
of the tensor entering it changes no value on that grid).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from onnxprune.graph import Graph, all_inputs, attr
from onnxprune.shapes import Dim, ShapeEval


class Edit:
    """Accumulates node replacements on a list of nodes (topologically ordered)."""

    def __init__(self, model: onnx.ModelProto, nodes: list[onnx.NodeProto],
                 lifted: frozenset[str] = frozenset()) -> None:
        self.model = model
        self.nodes = nodes
        self.lifted = lifted  # weights lifted from quantized storage (passes.qdq)
        m = onnx.ModelProto()
        m.CopyFrom(model)
        del m.graph.node[:]
        m.graph.node.extend(nodes)
        self.graph = Graph(m)
        self.shapes = ShapeEval(self.graph)
        self.removed: set[int] = set()
        self.replaced: dict[int, list[onnx.NodeProto]] = {}  # at the position of node i
        self.new_inits: list[onnx.TensorProto] = []
        self._ids = {id(n): i for i, n in enumerate(self.graph.nodes)}  # same order as nodes
        self._names = {x for n in nodes for x in list(n.input) + list(n.output)} | {
            t.name for t in model.graph.initializer} | {n.name for n in nodes}

    def index(self, node: onnx.NodeProto) -> int:
        return self._ids[id(node)]

    def free(self, node: onnx.NodeProto) -> bool:
        return self.index(node) not in self.removed and self.index(node) not in self.replaced

    def fresh(self, base: str) -> str:
        name, k = base, 1
        while name in self._names:
            name, k = f"{base}_{k}", k + 1
        self._names.add(name)
        return name

    def const(self, base: str, value: np.ndarray) -> str:
        name = self.fresh(base)
        self.new_inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def sole_user(self, tensor: str) -> onnx.NodeProto | None:
        users = self.graph.users(tensor)
        if len(users) != 1 or tensor in self.graph.graph_outputs or \
                tensor in self.graph.subgraph_refs:
            return None
        return users[0][0]

    def dims(self, tensor: str) -> list[Dim | None] | None:
        rank = self.graph.rank(tensor)
        return None if rank is None else [self.shapes.dim(tensor, i) for i in range(rank)]

    def apply(self) -> list[onnx.NodeProto]:
        self.model.graph.initializer.extend(self.new_inits)
        out = []
        for i, n in enumerate(self.nodes):
            if i in self.replaced:
                out.extend(self.replaced[i])
            elif i not in self.removed:
                out.append(n)
        return out


def perm_of(node: onnx.NodeProto, rank: int) -> list[int]:
    p = attr(node, "perm")
    return [int(x) for x in p] if p is not None else list(range(rank))[::-1]


def axes_of(node: onnx.NodeProto, graph: Graph, rank: int) -> list[int] | None:
    a = attr(node, "axes")
    if a is None and len(node.input) > 1 and node.input[1]:
        v = graph.const(node.input[1])
        a = None if v is None else np.asarray(v).reshape(-1).tolist()
    if a is None:
        return None
    return sorted(int(x) + rank if int(x) < 0 else int(x) for x in a)


def reshapes(ed: Edit):
    """Each Reshape node in turn that no earlier match of this rewrite has taken."""
    for n in list(ed.graph.nodes):
        if n.op_type == "Reshape" and ed.free(n):
            yield n


def sole_transpose(ed: Edit, tensor: str, perm: list[int]) -> onnx.NodeProto | None:
    """The untaken Transpose(perm) that is ``tensor``'s only reader, or None."""
    t = ed.sole_user(tensor)
    if t is None or t.op_type != "Transpose" or perm_of(t, len(perm)) != perm or not ed.free(t):
        return None
    return t


def reshape_transpose(ed: Edit, r1: onnx.NodeProto, perm: list[int]
                       ) -> tuple[onnx.NodeProto, str, list[onnx.NodeProto]] | None:
    """The untaken Transpose(perm) that alone reads Reshape ``r1``'s output — in a quantized
    model through Q/DQ pairs on the grid of ``r1``'s input, identities there —, the tensor
    after it (and after the pairs that follow it), and those pairs' nodes; or None."""
    grid = grid_of(ed, r1.input[0])
    y1, pairs = skip_pairs(ed, r1.output[0], grid)
    t = sole_transpose(ed, y1, perm)
    if t is None:
        return None
    y2, more = skip_pairs(ed, t.output[0], grid)
    return t, y2, pairs + more


def qdq_pair(ed: Edit, tensor: str) -> tuple[onnx.NodeProto, onnx.NodeProto] | None:
    """``(QuantizeLinear, DequantizeLinear)`` when they alone read ``tensor`` one after the
    other, per tensor, with the same constant scale and zero point (an activation's fake
    quantization, as onnxruntime's QDQ quantizer writes it)."""
    g = ed.graph
    q = ed.sole_user(tensor)
    if q is None or q.op_type != "QuantizeLinear" or not ed.free(q):
        return None
    dq = ed.sole_user(q.output[0])
    if dq is None or dq.op_type != "DequantizeLinear" or not ed.free(dq):
        return None
    params = [(a.input[i] if len(a.input) > i else "") for a in (q, dq) for i in (1, 2)]
    values = [g.const(x) if x else None for x in params]
    if any(x and v is None for x, v in zip(params, values)) or values[0].size != 1 or (
            not same_value(values[0], values[2]) or not same_value(values[1], values[3])):
        return None
    return q, dq


def same_value(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and a.dtype == b.dtype
                                         and np.array_equal(a.reshape(-1), b.reshape(-1)))


def skip_pairs(ed: Edit, tensor: str, grid: tuple | None) -> tuple[str, list]:
    """Follow ``tensor`` through the Q/DQ pairs on ``grid`` (scale, zero point) that alone read
    it: on values already on that grid they are identities. Returns the tensor after them and
    the pairs' nodes (none without a grid)."""
    nodes: list[onnx.NodeProto] = []
    while grid is not None:
        pair = qdq_pair(ed, tensor)
        if pair is None:
            break
        q = pair[0]
        z = ed.graph.const(q.input[2]) if len(q.input) > 2 and q.input[2] else None
        if not (same_value(ed.graph.const(q.input[1]), grid[0]) and same_value(z, grid[1])):
            break
        nodes.extend(pair)
        tensor = pair[1].output[0]
    return tensor, nodes


def grid_of(ed: Edit, tensor: str) -> tuple | None:
    """The (scale, zero point) a tensor made by a per-tensor ``DequantizeLinear`` is on."""
    p = ed.graph.producer.get(tensor)
    if p is None or p.op_type != "DequantizeLinear":
        return None
    vals = [ed.graph.const(p.input[i]) if len(p.input) > i and p.input[i] else None
            for i in (1, 2)]
    return None if vals[0] is None or vals[0].size != 1 else tuple(vals)


def remove_dead(model: onnx.ModelProto, nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """Drop nodes none of whose outputs is read (graph outputs and subgraph reads count)."""

    needed = {o.name for o in model.graph.output}
    keep = []
    for n in reversed(nodes):
        if any(o in needed for o in n.output if o) or not any(n.output):
            keep.append(n)
            needed.update(all_inputs(n))
    return keep[::-1]
