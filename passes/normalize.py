"""Normalisation: make every model look alike to the analysis, without changing what it computes.

* ``Constant`` nodes at top level become initializers (some exporters store weights that way);
* every node gets a unique, non-empty name (decisions and reports refer to nodes by name);
* nodes are put in topological order.
"""

from __future__ import annotations

import onnx
from onnx import helper, numpy_helper

from onnxprune.errors import PassError
from onnxprune.passbase import Pass, PassResult


def _constant_value(node: onnx.NodeProto) -> onnx.TensorProto | None:
    for a in node.attribute:
        if a.name == "value":
            return a.t
        if a.name in ("value_float", "value_int", "value_floats", "value_ints"):
            import numpy as np
            v = helper.get_attribute_value(a)
            dtype = np.float32 if "float" in a.name else np.int64
            return numpy_helper.from_array(np.asarray(v, dtype=dtype))
    return None  # sparse_value / value_string(s): left as nodes


def toposort(nodes: list[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    """Stable topological order (Kahn's algorithm keeping the original order among ready nodes)."""
    produced_by = {}
    for i, n in enumerate(nodes):
        for o in n.output:
            if o:
                produced_by[o] = i
    deps = []
    for n in nodes:
        deps.append({produced_by[x] for x in _all_inputs(n) if x in produced_by})
    order, done = [], set()
    remaining = list(range(len(nodes)))
    while remaining:
        progressed = False
        rest = []
        for i in remaining:
            if deps[i] <= done:
                order.append(i)
                done.add(i)
                progressed = True
            else:
                rest.append(i)
        if not progressed:
            raise PassError("the graph has a cycle; it is not a valid ONNX model")
        remaining = rest
    return [nodes[i] for i in order]


def _all_inputs(node: onnx.NodeProto) -> list[str]:
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
        keep_nodes = self._fold_constant_identities(m, keep_nodes)
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
        available = {i.name for i in g.input} | {t.name for t in g.initializer}
        ordered = toposort(keep_nodes, available)
        if [id(n) for n in ordered] != [id(n) for n in g.node]:
            modified = True
        new_nodes = [onnx.NodeProto.FromString(n.SerializeToString()) for n in ordered]
        del g.node[:]
        g.node.extend(new_nodes)
        return PassResult(m, modified)

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
            sub_refs.update(x for x in _all_inputs(n) if x not in n.input)
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
