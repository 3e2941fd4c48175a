"""Dead-code removal: nodes whose outputs nobody reads, and unused initializers."""

from __future__ import annotations

import onnx

from onnxprune.graph import Graph
from onnxprune.passbase import Pass, PassResult


class CleanupPass(Pass):
    name = "cleanup"

    def call(self, model: onnx.ModelProto) -> PassResult:
        m = onnx.ModelProto()
        m.CopyFrom(model)
        g = m.graph
        needed = {o.name for o in g.output} | Graph(m, infer_shapes=False).subgraph_refs
        keep = []
        for node in reversed(list(g.node)):
            if any(o in needed for o in node.output if o):
                keep.append(node)
                needed.update(x for x in node.input if x)
        keep.reverse()
        modified = len(keep) != len(g.node)
        if modified:
            kept_nodes = [onnx.NodeProto.FromString(n.SerializeToString()) for n in keep]
            del g.node[:]
            g.node.extend(kept_nodes)
        needed |= {i.name for i in g.input}  # initializers that double as inputs stay
        inits = [t for t in g.initializer if t.name in needed]
        if len(inits) != len(g.initializer):
            modified = True
            kept_inits = [onnx.TensorProto.FromString(t.SerializeToString()) for t in inits]
            del g.initializer[:]
            g.initializer.extend(kept_inits)
        live = {x for n in g.node for x in list(n.input) + list(n.output)} | {
            i.name for i in g.input} | {o.name for o in g.output}
        vis = [v for v in g.value_info if v.name in live]
        if len(vis) != len(g.value_info):
            modified = True
            kept_vi = [onnx.ValueInfoProto.FromString(v.SerializeToString()) for v in vis]
            del g.value_info[:]
            g.value_info.extend(kept_vi)
        return PassResult(m, modified)
