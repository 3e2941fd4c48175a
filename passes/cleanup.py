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
        nodes = list(g.node)
        keep_idx: set[int] = set()
        for i in range(len(nodes) - 1, -1, -1):
            if any(o in needed for o in nodes[i].output if o):
                keep_idx.add(i)
                needed.update(x for x in nodes[i].input if x)
        keep = [nodes[i] for i in sorted(keep_idx)]
        live = {x for n in keep for x in list(n.input) + list(n.output)} | {
            i.name for i in g.input} | {o.name for o in g.output}
        needed |= {i.name for i in g.input}  # initializers that double as inputs stay
        modified = False
        for field, wanted in ((g.node, lambda i, n: i in keep_idx),
                              (g.initializer, lambda i, t: t.name in needed),
                              (g.value_info, lambda i, v: v.name in live)):
            kept = [type(x).FromString(x.SerializeToString())
                    for i, x in enumerate(field) if wanted(i, x)]
            if len(kept) != len(field):
                modified = True
                del field[:]
                field.extend(kept)
        return PassResult(m, modified)
