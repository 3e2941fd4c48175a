"""Rewrite: apply kept-channel decisions to a model (never runs onnxruntime).

Input: the analysis, the kept channels of every channel set that loses channels, and the new
weights of the re-fitted consumers. Steps:

1. consumers get their new weight matrices (and bias changes) in their own layout;
2. every touched node's rule slices its per-channel constants and patches attributes/shape
   constants (``keep(name)`` gives the kept channel positions along a tensor's channel axis);
3. value_info shapes of channel-carrying tensors are updated, unused initializers dropped.

Shared initializers are never sliced in place for one user: a private copy is made.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import onnx
from onnx import numpy_helper

from onnxprune.analysis import Analysis, ConsumerSite
from onnxprune.graph import Graph
from onnxprune.layout import Layout
from onnxprune.rules import rule_for

log = logging.getLogger(__name__)


def kept_positions(analysis: Analysis, keeps: Mapping[int, np.ndarray], name: str
                   ) -> np.ndarray | None:
    """Kept channel positions along tensor ``name``'s channel axis given the kept channels of each
    channel set (``keeps``), or None if nothing is removed there."""
    lay = analysis.layouts.get(name)
    if lay is None:
        return None
    parts, pos, changed = [], 0, False
    for s in lay.spans:
        set_id, lo, hi = analysis.set_range(s)
        k = keeps.get(set_id)
        local = np.arange(lo, hi) if k is None else k[(k >= lo) & (k < hi)]
        changed |= len(local) != s.size
        parts.append(pos + local - lo)
        pos += s.size
    return np.concatenate(parts).astype(np.int64) if changed else None


class RewriteContext:
    """What a rule may do during rewrite."""

    def __init__(self, model: onnx.ModelProto, graph: Graph, analysis: Analysis | None,
                 keeps: Mapping[int, np.ndarray]) -> None:
        self.model = model
        self.graph = graph  # index of the *original* model (constants, shapes)
        self.analysis = analysis
        self.keeps = keeps
        self.nodes = {n.name: n for n in model.graph.node}
        self.new_values: dict[str, np.ndarray] = {}
        self.dtypes: dict[str, np.dtype] = {
            t.name: np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type))
            for t in model.graph.initializer}
        self.uses: dict[str, int] = {}
        for n in model.graph.node:
            for x in n.input:
                self.uses[x] = self.uses.get(x, 0) + 1
        for o in model.graph.output:
            self.uses[o.name] = self.uses.get(o.name, 0) + 1
        for x in graph.subgraph_refs:
            self.uses[x] = self.uses.get(x, 0) + 1
        self._shapes = None
        self._copies: dict[tuple, onnx.NodeProto] = {}
        self._inserted: list[tuple[str, onnx.NodeProto]] = []  # (after node, new node)
        self._names = {t.name for t in model.graph.initializer} | {
            x for n in model.graph.node for x in list(n.input) + list(n.output)}

    @property
    def shapes(self):
        """Symbolic shapes of the *original* graph (``onnxprune.shapes``)."""
        if self._shapes is None:
            from onnxprune.shapes import ShapeEval
            self._shapes = ShapeEval(self.graph)
        return self._shapes

    def private_producer(self, user: onnx.NodeProto, i: int, producer: onnx.NodeProto,
                         key: tuple) -> onnx.NodeProto:
        """``producer`` (which computes ``user.input[i]``, e.g. a target-shape Concat) if
        ``user`` is its only reader; otherwise a copy of it that ``user`` reads instead — one copy
        per distinct ``key`` (the patch it will receive), shared by users patching alike."""
        name = user.input[i]
        if self.uses.get(name, 0) <= 1:
            return self.nodes[producer.name]
        cache_key = (name, key)
        if cache_key in self._copies:
            clone = self._copies[cache_key]
        else:
            src = self.nodes[producer.name]
            clone = onnx.NodeProto()
            clone.CopyFrom(src)
            clone.name = self._fresh(f"{src.name}__copy")
            del clone.output[:]
            clone.output.append(self._fresh(f"{name}__copy"))
            for x in clone.input:
                self.uses[x] = self.uses.get(x, 0) + 1
            self._inserted.append((src.name, clone))
            self.nodes[clone.name] = clone
            self._copies[cache_key] = clone
        self.uses[name] -= 1
        self.uses[clone.output[0]] = self.uses.get(clone.output[0], 0) + 1
        user.input[i] = clone.output[0]
        return clone

    # -- channel positions -----------------------------------------------------------------------
    def layout(self, name: str) -> Layout | None:
        return None if self.analysis is None else self.analysis.layouts.get(name)

    def keep(self, name: str) -> np.ndarray | None:
        """Kept channel positions along ``name``'s channel axis, or None if nothing is removed
        (always None without an analysis: weights re-written in place, no channel removed)."""
        if self.analysis is None:
            return None
        return kept_positions(self.analysis, self.keeps, name)

    def keep_cols(self, name: str) -> np.ndarray | None:
        """Kept positions in entries (each channel spans ``g`` entries along the axis)."""
        keep = self.keep(name)
        lay = self.layout(name)
        if keep is None:
            return None
        return (keep[:, None] * lay.g + np.arange(lay.g)[None, :]).reshape(-1)

    # -- constants -------------------------------------------------------------------------------
    def value(self, node: onnx.NodeProto, i: int) -> np.ndarray | None:
        name = node.input[i] if i < len(node.input) else ""
        if name in self.new_values:
            return self.new_values[name]
        return self.graph.const(name)

    def _fresh(self, base: str) -> str:
        name, k = base, 1
        while name in self._names:
            name = f"{base}_{k}"
            k += 1
        self._names.add(name)
        return name

    def set_input(self, node: onnx.NodeProto, i: int, value: np.ndarray) -> None:
        """Give ``node`` a new constant value for input ``i`` (copy-on-write if shared)."""
        name = node.input[i]
        dtype = self.dtypes.get(name, np.asarray(value).dtype)
        value = np.ascontiguousarray(np.asarray(value).astype(dtype, copy=False))
        if self.uses.get(name, 0) <= 1 and name in self.dtypes:
            self.new_values[name] = value
            return
        new = self._fresh(f"{name}__{node.name}")
        self.uses[name] -= 1
        self.uses[new] = 1
        self.dtypes[new] = dtype
        self.new_values[new] = value
        node.input[i] = new

    def add_input(self, node: onnx.NodeProto, i: int, value: np.ndarray, suffix: str) -> None:
        """Attach a new constant as input ``i`` (bias / split sizes that were absent)."""
        if suffix == "bias":
            dtype = self.dtypes.get(node.input[1], np.dtype(np.float32))
        else:
            dtype = np.asarray(value).dtype
        new = self._fresh(f"{node.name}_{suffix}")
        self.dtypes[new] = np.dtype(dtype)
        self.new_values[new] = np.ascontiguousarray(np.asarray(value).astype(dtype))
        self.uses[new] = 1
        while len(node.input) <= i:
            node.input.append("")
        node.input[i] = new

    # -- finish ----------------------------------------------------------------------------------
    def finalize(self) -> None:
        g = self.model.graph
        if self._inserted:  # copies go right after their originals (topological order kept)
            after: dict[str, list[onnx.NodeProto]] = {}
            for name, n in self._inserted:
                after.setdefault(name, []).append(n)
            nodes = []
            for n in g.node:
                nodes.append(onnx.NodeProto.FromString(n.SerializeToString()))
                nodes.extend(after.get(n.name, []))
            del g.node[:]
            g.node.extend(nodes)
        used = {x for n in g.node for x in n.input} | {o.name for o in g.output} | set(
            self.graph.subgraph_refs)
        # New values are written into the initializers in place, one at a time (no second copy
        # of the model's weights: large models rewrite gigabytes here).
        # Each array is dropped once stored.
        shapes = {name: arr.shape for name, arr in self.new_values.items()}
        seen, unused = set(), []
        for i, t in enumerate(g.initializer):
            seen.add(t.name)
            if t.name not in used:
                unused.append(i)
            elif t.name in self.new_values:
                _store(t, self.new_values, t.name)
        for i in reversed(unused):
            del g.initializer[i]
        for name in [n for n in self.new_values if n not in seen and n in used]:
            _store(g.initializer.add(), self.new_values, name)
        self.new_values.clear()
        # value_info of changed constants: exact shapes; of channel-carrying tensors: the axis
        for vi in g.value_info:
            if vi.name in shapes:
                dims = vi.type.tensor_type.shape.dim
                shape = shapes[vi.name]
                if len(dims) == len(shape):
                    for d, v in zip(dims, shape):
                        d.Clear()
                        d.dim_value = int(v)
                continue
            cols = self.keep_cols(vi.name)
            if cols is None:
                continue
            dims = vi.type.tensor_type.shape.dim
            ax = self.layout(vi.name).axis
            if ax < len(dims) and dims[ax].HasField("dim_value"):
                dims[ax].dim_value = int(len(cols))


def _store(t: onnx.TensorProto, values: dict[str, np.ndarray], name: str) -> None:
    """Make ``t`` hold ``values.pop(name)`` exactly as ``numpy_helper.from_array`` would; the
    array is dropped before its bytes are copied in (at most two copies of it at once)."""
    value = values.pop(name)
    t.Clear()
    if value.dtype.kind not in "fiub":  # strings, packed low-bit types: onnx's own path
        t.CopyFrom(numpy_helper.from_array(value, name))
        return
    t.dims.extend(value.shape)
    t.name = name
    t.data_type = onnx.helper.np_dtype_to_tensor_dtype(value.dtype)
    data = np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("<")).tobytes()
    del value
    t.raw_data = data


def apply(model: onnx.ModelProto, graph: Graph, analysis: Analysis,
          keeps: Mapping[int, np.ndarray],
          consumer_weights: Mapping[ConsumerSite, tuple[np.ndarray, np.ndarray | None]]
          ) -> onnx.ModelProto:
    """Return a pruned copy of ``model``."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    rw = RewriteContext(out, graph, analysis, keeps)
    for site, (W, bias) in consumer_weights.items():
        node = rw.nodes[site.node]
        rule_for(node).write_weights(node, rw, W, bias)
    for name in analysis.touched:
        node = rw.nodes[name]
        rule_for(node).rewrite(node, rw)
    rw.finalize()
    return out
