"""A read-mostly index over an ``onnx.ModelProto`` graph.

Gives what the analysis and the rewrite need and nothing more: who produces and who consumes each
tensor, constant values (initializers), static shapes from ONNX shape inference, and a small set of
primitives to replace a node's constant input without disturbing other users of a shared
initializer.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Iterator, Mapping

import numpy as np
import onnx

from onnxprune import weights

log = logging.getLogger(__name__)

Dim = int | str | None
Shape = tuple[Dim, ...]


def attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def set_attr(node: onnx.NodeProto, name: str, value) -> None:
    for i, a in enumerate(node.attribute):
        if a.name == name:
            del node.attribute[i]
            break
    node.attribute.append(onnx.helper.make_attribute(name, value))


def _shape_of(vi: onnx.ValueInfoProto) -> Shape | None:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    dims: list[Dim] = []
    for d in t.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return tuple(dims)


def _concrete_batch(model: onnx.ModelProto) -> onnx.ModelProto:
    """Weight-free copy (:func:`weights.skeleton`) with a symbolic leading (batch) dim of every
    graph input set to 1 and the stale value_info dropped, so that shape inference resolves
    run-time shape arithmetic such as ``Reshape(x, Concat(Gather(Shape(x), 0), [-1]))`` to
    static shapes. Other symbolic dims stay.
    """
    m = weights.skeleton(model, copy=True)
    for vi in m.graph.input:
        dims = vi.type.tensor_type.shape.dim
        if len(dims) and not dims[0].HasField("dim_value"):
            dims[0].Clear()
            dims[0].dim_value = 1
    del m.graph.value_info[:]
    return m


#: Symbolic shapes of the last few graphs, by digest of their weight-free skeleton.
_SYMBOLIC: dict[bytes, tuple] = {}
_SYMBOLIC_KEEP = 8


def _symbolic_infer(model: onnx.ModelProto) -> tuple:
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference  # needs sympy
        inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    except Exception as exc:  # noqa: BLE001 - best effort
        log.debug("symbolic shape inference failed: %s", exc)
        return ()
    return tuple((vi.name, _shape_of(vi), vi.type.tensor_type.elem_type)
                 for vi in inferred.graph.value_info if _shape_of(vi) is not None)


def _symbolic_shapes(skeleton: onnx.ModelProto) -> dict[str, tuple[Shape, int]]:
    """Shapes from onnxruntime's symbolic shape inference, for a Reshape to a shape computed at
    run time that ONNX inference leaves unknown (the Paddle exporter writes them), and what
    follows it. Cached by graph: normalisation builds several indexes of the same graph."""
    key = hashlib.blake2b(skeleton.SerializeToString(), digest_size=16).digest()
    if key not in _SYMBOLIC:
        if len(_SYMBOLIC) >= _SYMBOLIC_KEEP:
            del _SYMBOLIC[next(iter(_SYMBOLIC))]  # the oldest
        _SYMBOLIC[key] = _symbolic_infer(skeleton)
    return {name: (shape, et) for name, shape, et in _SYMBOLIC[key]}


class Graph:
    """Index over ``model.graph`` (top level only; subgraph references are collected)."""

    def __init__(self, model: onnx.ModelProto, infer_shapes: bool = True) -> None:
        self.model = model
        g = model.graph
        self.nodes: list[onnx.NodeProto] = list(g.node)
        self._by_name = {n.name: n for n in self.nodes}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
        for node in self.nodes:
            for o in node.output:
                if o:
                    self.producer[o] = node
            for i, name in enumerate(node.input):
                if name:
                    self.consumers.setdefault(name, []).append((node, i))
        self.initializers: dict[str, onnx.TensorProto] = {t.name: t for t in g.initializer}
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
        self.graph_inputs = [i.name for i in g.input if i.name not in self.initializers]
        # Initializers also listed as graph inputs (old IR style) can be overridden at run time:
        # they are not treated as constants.
        self.overridable = {i.name for i in g.input if i.name in self.initializers}
        self.graph_outputs = {o.name for o in g.output}
        self.subgraph_refs = self._subgraph_references()
        self._const_cache: dict[str, np.ndarray] = {}
        self.shapes: dict[str, Shape] = {}
        self.elem_types: dict[str, int] = {}
        self._collect_types(model)
        if infer_shapes:
            skeleton = _concrete_batch(model)
            try:
                inferred = onnx.shape_inference.infer_shapes(skeleton, data_prop=True)
                self._collect_types(inferred)
            except Exception as exc:  # noqa: BLE001 - inference is best effort
                log.warning("ONNX shape inference failed (%s); continuing with declared shapes", exc)
            if any(n.op_type == "Reshape" and n.output[0] not in self.shapes
                   and n.input[0] in self.shapes for n in self.nodes):
                for name, (shape, et) in _symbolic_shapes(skeleton).items():
                    if name not in self.shapes:  # what ONNX inferred is kept as it is
                        self.shapes[name] = shape
                        self.elem_types.setdefault(name, et)

    def _collect_types(self, model: onnx.ModelProto) -> None:
        g = model.graph
        for vi in list(g.input) + list(g.output) + list(g.value_info):
            shape = _shape_of(vi)
            if shape is not None:
                self.shapes[vi.name] = shape
            if vi.type.tensor_type.elem_type:
                self.elem_types[vi.name] = vi.type.tensor_type.elem_type
        for t in g.initializer:
            self.shapes[t.name] = tuple(int(d) for d in t.dims)
            self.elem_types[t.name] = t.data_type

    def _subgraph_references(self) -> set[str]:
        refs: set[str] = set()

        def subgraphs(node: onnx.NodeProto):
            for a in node.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    yield a.g
                yield from a.graphs

        def visit(graph: onnx.GraphProto) -> None:
            for n in graph.node:
                refs.update(x for x in n.input if x)
                for sg in subgraphs(n):
                    visit(sg)

        for n in self.nodes:
            for sg in subgraphs(n):
                visit(sg)
        return refs

    def rebind(self, model: onnx.ModelProto) -> Graph:
        """The index of ``model``, an exact copy of this index's model, with the shapes already
        inferred here (no second inference)."""
        g = Graph(model, infer_shapes=False)
        g.shapes, g.elem_types = dict(self.shapes), dict(self.elem_types)
        return g

    def rewritten(self, constants: Mapping[str, tuple[int, ...]],
                  axes: Mapping[str, tuple[int, int]],
                  added: Iterable[tuple[str, int, onnx.TensorProto]] = ()) -> None:
        """Keep the index valid after an in-place rewrite that removed no name and linked no
        node differently (the nodes and initializers indexed are the model's own, edited in
        place): ``added`` are new initializers ``(node, input index, tensor)`` given to a node
        (a bias); ``constants`` got new values of these shapes; run-time tensors ``axes`` now
        have ``length`` entries along ``axis`` — what shape inference of the rewritten model
        gives them."""
        for node, i, t in added:
            self.initializers[t.name] = t
            self.consumers.setdefault(t.name, []).append((self._by_name[node], i))
            self.elem_types[t.name] = t.data_type
        for name, shape in constants.items():
            self._const_cache.pop(name, None)
            self.shapes[name] = tuple(int(d) for d in shape)
        for name, (axis, length) in axes.items():
            s = self.shapes.get(name)
            if s is not None and axis < len(s) and isinstance(s[axis], int):
                self.shapes[name] = s[:axis] + (int(length),) + s[axis + 1:]

    # -- queries -------------------------------------------------------------------------------
    def const(self, name: str) -> np.ndarray | None:
        """Value of an initializer, or None for a run-time tensor."""
        if not self.is_const(name):
            return None
        t = self.initializers[name]
        if weights.is_external(t):  # left in its file: read each time, never held here
            return weights.to_array(t)
        if name not in self._const_cache:
            self._const_cache[name] = weights.to_array(t)
        return self._const_cache[name]

    def is_const(self, name: str) -> bool:
        """True for an initializer (a constant), without reading its value."""
        return bool(name) and name in self.initializers and name not in self.overridable

    def const_shape(self, name: str) -> tuple[int, ...] | None:
        """Shape of a constant (from its dims: a weight left in its file is not read)."""
        return tuple(int(d) for d in self.initializers[name].dims) if self.is_const(name) else None

    def node(self, name: str) -> onnx.NodeProto:
        """The node called ``name`` (names are unique after NormalizePass)."""
        return self._by_name[name]

    def shape(self, name: str) -> Shape | None:
        return self.shapes.get(name)

    def static_shape(self, name: str) -> tuple[int, ...] | None:
        s = self.shapes.get(name)
        if s is None or any(not isinstance(d, int) for d in s):
            return None
        return tuple(int(d) for d in s)  # type: ignore[arg-type]

    def rank(self, name: str) -> int | None:
        s = self.shapes.get(name)
        return None if s is None else len(s)

    def users(self, name: str) -> list[tuple[onnx.NodeProto, int]]:
        return self.consumers.get(name, [])

    def sole_user(self, name: str, node: onnx.NodeProto) -> bool:
        """True when ``node`` is the only user of ``name`` (also not a graph output / subgraph)."""
        users = self.users(name)
        return (all(u is node for u, _ in users) and name not in self.graph_outputs
                and name not in self.subgraph_refs)

    def topo_nodes(self) -> Iterator[onnx.NodeProto]:
        return iter(self.nodes)


def all_inputs(node: onnx.NodeProto) -> list[str]:
    """The names ``node`` reads: its inputs and the outer-scope names its subgraphs read."""
    names = [x for x in node.input if x]

    def visit(g: onnx.GraphProto) -> None:
        local = {o for n in g.node for o in n.output} | {i.name for i in g.input} | {
            t.name for t in g.initializer}
        for n in g.node:
            names.extend(x for x in n.input if x and x not in local)
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    visit(a.g)
                for sg in a.graphs:
                    visit(sg)

    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            visit(a.g)
        for sg in a.graphs:
            visit(sg)
    return names


def node_label(node: onnx.NodeProto) -> str:
    return node.name or f"{node.op_type}({','.join(node.output)})"
