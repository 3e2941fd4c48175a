"""Dead-code removal: nodes whose outputs nobody reads, and unused initializers."""

from __future__ import annotations

import onnx

from onnxprune import weights
from onnxprune.graph import Graph
from onnxprune.passbase import Pass, PassResult


class CleanupPass(Pass):
    name = "cleanup"

    def call(self, model: onnx.ModelProto) -> PassResult:
        """Returns ``model`` itself when nothing is dead; otherwise a copy without the dead
        parts (what is kept is copied once, what is dropped never)."""
        g = model.graph
        needed = {o.name for o in g.output} | Graph(model, infer_shapes=False).subgraph_refs
        nodes = list(g.node)
        keep_idx: set[int] = set()
        for i in range(len(nodes) - 1, -1, -1):
            if any(o in needed for o in nodes[i].output if o):
                keep_idx.add(i)
                needed.update(x for x in nodes[i].input if x)
        live = {x for i in keep_idx for x in list(nodes[i].input) + list(nodes[i].output)} | {
            i.name for i in g.input} | {o.name for o in g.output}
        needed |= {i.name for i in g.input}  # initializers that double as inputs stay
        wanted = {"node": [i in keep_idx for i in range(len(nodes))],
                  "initializer": [t.name in needed for t in g.initializer],
                  "value_info": [v.name in live for v in g.value_info]}
        if all(all(w) for w in wanted.values()):
            return PassResult(model, False)
        m = weights.copy_fields(model, onnx.ModelProto(), skip=("graph",))
        weights.copy_fields(g, m.graph, skip=tuple(wanted))
        for field, keep in wanted.items():
            getattr(m.graph, field).extend(x for x, k in zip(getattr(g, field), keep) if k)
        return PassResult(m, True)
