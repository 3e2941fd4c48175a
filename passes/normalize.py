"""Normalisation: make every model look alike to the analysis, without changing what it computes.

* ``Constant`` nodes at top level become initializers (some exporters store weights that way);
* every node gets a unique, non-empty name (decisions and reports refer to nodes by name);
* nodes are put in topological order;
* nodes whose inputs are all constants (shape arithmetic of the legacy torch exporter: pads,
  target shapes; weight transposes) are evaluated once with ``onnx.reference`` and replaced by
  initializers, so the analysis sees literal values (never ``QuantizeLinear`` and
  ``DequantizeLinear``: quantization is kept);
* quantized weights (``DequantizeLinear`` of constants) become float initializers; the records
  returned in ``info["quantized"]`` let ``QdqLowerPass`` quantize them again (``passes.qdq``);
* the exporters' attention plumbing is put in canonical form (``attention_forms``: Kᵀ through a
  batch merge, chunks of a fused QKV projection, heads merged with the batch), proven equal with
  symbolic shapes.
"""

from __future__ import annotations

import heapq

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxprune import weights
from onnxprune.errors import PassError
from onnxprune.graph import all_inputs
from onnxprune.passes.attention_forms import canonicalize
from onnxprune.passes.qdq import lift
from onnxprune.passbase import Pass, PassResult


def _constant_value(node: onnx.NodeProto) -> onnx.TensorProto | None:
    for a in node.attribute:
        if a.name == "value":
            return a.t
        if a.name in ("value_float", "value_int", "value_floats", "value_ints"):
            v = helper.get_attribute_value(a)
            dtype = np.float32 if "float" in a.name else np.int64
            return numpy_helper.from_array(np.asarray(v, dtype=dtype))
    return None  # sparse_value / value_string(s): left as nodes


def topo_order(nodes: list[onnx.NodeProto]) -> list[int]:
    """Stable topological order, as indices into ``nodes``: of the nodes whose inputs are all
    available, the one first in the original order goes next (Kahn's algorithm with a heap), so a
    graph already in topological order keeps its order exactly. O(E + V log V)."""
    produced_by = {}
    for i, n in enumerate(nodes):
        for o in n.output:
            if o:
                produced_by[o] = i
    users: list[list[int]] = [[] for _ in nodes]
    missing = [0] * len(nodes)
    for i, n in enumerate(nodes):
        deps = {produced_by[x] for x in all_inputs(n) if x in produced_by}
        missing[i] = len(deps)
        for d in deps:
            users[d].append(i)
    ready = [i for i, k in enumerate(missing) if k == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for u in users[i]:
            missing[u] -= 1
            if missing[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(nodes):  # a node on a cycle (or reading its own output) never gets ready
        raise PassError("the graph has a cycle; it is not a valid ONNX model")
    return order


#: Never folded: quantization is kept (a DequantizeLinear of constants not lifted is storage the
#: tool does not handle; folding it would silently turn quantized weights into float ones).
_NOT_FOLDED = ("Identity", "QuantizeLinear", "DequantizeLinear")


class NormalizePass(Pass):
    name = "normalize"

    def call(self, model: onnx.ModelProto) -> PassResult:
        m = onnx.ModelProto()
        m.CopyFrom(model)
        g = m.graph
        modified = False
        keep_nodes = []
        for node in g.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                t = _constant_value(node)
                if t is not None:
                    t = onnx.TensorProto.FromString(t.SerializeToString())
                    t.name = node.output[0]
                    g.initializer.append(t)
                    modified = True
                    continue
            keep_nodes.append(node)
        order = topo_order(keep_nodes)
        if order != list(range(len(keep_nodes))):
            modified = True
        keep_nodes = [keep_nodes[i] for i in order]
        keep_nodes = self._fold_constant_identities(m, keep_nodes)
        keep_nodes = self._fold_constants(m, keep_nodes)
        keep_nodes, quantized = lift(m, keep_nodes)  # after folding: scales computed from
        #                                             the weights (torch's fake quantization)
        keep_nodes, _ = canonicalize(m, keep_nodes, frozenset(r.name for r in quantized))
        if len(keep_nodes) != len(g.node):
            modified = True
        used = {n.name for n in keep_nodes if n.name}
        seen: set[str] = set()
        for i, n in enumerate(keep_nodes):
            if not n.name or n.name in seen:
                base = f"{n.op_type}_{i}"
                name, k = base, 1
                while name in used:
                    name, k = f"{base}_{k}", k + 1
                n.name = name
                used.add(name)
                modified = True
            seen.add(n.name)
        new_nodes = [onnx.NodeProto.FromString(n.SerializeToString()) for n in keep_nodes]
        del g.node[:]
        g.node.extend(new_nodes)
        # Constants that folding left unread (a Constant → Reshape chain folded into one value)
        # would count as parameters of the input model; graph inputs are never touched.
        read = {x for n in new_nodes for x in all_inputs(n)} | {o.name for o in g.output} | {
            i.name for i in g.input}
        dead = [t for t in g.initializer if t.name not in read]
        if dead:
            live = [t for t in g.initializer if t.name in read]
            del g.initializer[:]
            g.initializer.extend(live)
            modified = True
        return PassResult(m, modified, {"quantized": quantized})

    MAX_FOLD_ELEMENTS = 1 << 24

    @classmethod
    def _fold_constants(cls, m: onnx.ModelProto, nodes: list[onnx.NodeProto]
                        ) -> list[onnx.NodeProto]:
        """Evaluate nodes fed only by constants into initializers (``nodes`` in topological
        order, so a folded value is available to the nodes after it)."""
        from onnx.reference import ReferenceEvaluator

        g = m.graph
        overridable = {i.name for i in g.input}  # once, not per initializer (IR < 4 models)
        values = {t.name: t for t in g.initializer if t.name not in overridable}
        outputs = {o.name for o in g.output}
        static_dims = cls._static_shape_reads(m, nodes, values)
        for name, arr in static_dims.items():
            t = numpy_helper.from_array(arr, name)
            g.initializer.append(t)
            values[name] = t
        nodes = [n for n in nodes if not (n.output and n.output[0] in static_dims)]
        kept = []
        for n in nodes:
            foldable = (n.domain in ("", "ai.onnx") and n.input and all(
                x == "" or x in values for x in n.input) and not n.op_type.startswith("Random")
                and n.op_type not in _NOT_FOLDED and not any(o in outputs for o in n.output)
                and not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                            for a in n.attribute))
            if foldable:
                try:
                    ins = [helper.make_tensor_value_info(x, values[x].data_type, list(values[x].dims))
                           for x in n.input if x]
                    outs = [helper.make_empty_tensor_value_info(o) for o in n.output if o]
                    sub = helper.make_model(
                        helper.make_graph([n], "fold", ins, outs, [weights.materialized(values[x]) for x in n.input if x]),
                        opset_imports=list(m.opset_import), ir_version=m.ir_version)
                    res = ReferenceEvaluator(sub).run(None, {})
                except Exception:  # noqa: BLE001 - not evaluable here: keep the node
                    res = None
                if res is not None and all(np.asarray(r).size <= cls.MAX_FOLD_ELEMENTS for r in res):
                    for name, r in zip([o for o in n.output if o], res):
                        t = numpy_helper.from_array(np.asarray(r), name)
                        g.initializer.append(t)
                        values[name] = t
                    continue
            kept.append(n)
        return kept

    @staticmethod
    def _static_shape_reads(m: onnx.ModelProto, nodes: list[onnx.NodeProto], values: dict
                            ) -> dict[str, np.ndarray]:
        """``Gather(Shape(x), idx)`` whose gathered dims are static → their literal values.

        (The legacy exporter computes chunk/split bounds from ``Shape``; with the channel count
        known statically they become constants, the channel analysis can then follow them.)
        """
        shape_nodes = {n.output[0]: n for n in nodes if n.op_type == "Shape" and n.output}
        if not shape_nodes:
            return {}
        tmp = weights.skeleton(m, copy=True)  # weights as typed inputs: nothing large copied
        del tmp.graph.node[:]
        tmp.graph.node.extend(nodes)
        try:
            inferred = onnx.shape_inference.infer_shapes(tmp)
        except Exception:  # noqa: BLE001
            return {}
        dims = {}
        for vi in list(inferred.graph.value_info) + list(inferred.graph.input):
            if vi.type.tensor_type.HasField("shape"):
                dims[vi.name] = [d.dim_value if d.HasField("dim_value") else None
                                 for d in vi.type.tensor_type.shape.dim]
        out = {}
        for n in nodes:
            if n.op_type != "Gather" or n.input[0] not in shape_nodes or n.input[1] not in values:
                continue
            sh = shape_nodes[n.input[0]]
            full = dims.get(sh.input[0])
            if full is None:
                continue
            rank = len(full)
            start = next((a.i for a in sh.attribute if a.name == "start"), 0)
            end = next((a.i for a in sh.attribute if a.name == "end"), rank)
            start, end = (start + rank if start < 0 else start), (end + rank if end < 0 else end)
            part = full[max(start, 0):min(end, rank)]
            idx = weights.to_array(values[n.input[1]]).astype(np.int64)
            picked = [part[int(i) + len(part) if i < 0 else int(i)] for i in idx.reshape(-1)]
            if all(isinstance(v, int) and v > 0 for v in picked):
                out[n.output[0]] = np.asarray(picked, dtype=np.int64).reshape(idx.shape)
        return out

    @staticmethod
    def _fold_constant_identities(m: onnx.ModelProto, nodes: list[onnx.NodeProto]
                                  ) -> list[onnx.NodeProto]:
        """``Identity(initializer)`` (the legacy torch exporter's de-duplicated weights): users
        read the initializer directly, so the analysis sees a constant."""
        g = m.graph
        inits = {t.name for t in g.initializer} - {i.name for i in g.input}
        outputs = {o.name for o in g.output}
        sub_refs = set()
        for n in nodes:
            sub_refs.update(x for x in all_inputs(n) if x not in n.input)
        alias = {}
        kept = []
        for n in nodes:
            if (n.op_type == "Identity" and n.domain in ("", "ai.onnx") and n.input
                    and n.input[0] in inits and n.output[0] not in outputs
                    and n.output[0] not in sub_refs):
                alias[n.output[0]] = n.input[0]
                continue
            kept.append(n)
        for n in kept:
            for i, x in enumerate(n.input):
                if x in alias:
                    n.input[i] = alias[x]
        return kept

    def ensures(self, model: onnx.ModelProto) -> None:
        super().ensures(model)
        names = [n.name for n in model.graph.node]
        if len(set(names)) != len(names) or not all(names):
            raise PassError("normalize: node names are not unique")
