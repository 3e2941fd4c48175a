"""Run a pruned variant of a model only where it differs from the original.

Pruning one group changes its producers, the per-channel constants and shape constants on its
tensors and its consumers; every node upstream of those computes exactly what the original model
computes. So the outputs of a variant can be had by running only the *changed region* — the nodes
that differ from the original (their NodeProto, or an initializer they read) and everything
downstream of them — fed with the original model's values of the tensors that enter the region
from outside (its *frontier*), captured once. Graph outputs the region does not produce are the
original's. Budgets' sensitivities run one variant per group and keep fraction; for a group deep
in the network the region is a small part of the model.

The frontier values are held in memory, batch by batch as the model computed them, for the
samples used (``max_bytes`` at most; beyond that, for models without a batch axis or with a token
mask, the whole model is run instead).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import onnx

from onnxprune.calibrate import drop_padding, run_outputs, sample_first, session
from onnxprune.modelio import Calibration

log = logging.getLogger(__name__)

#: Memory for captured frontier tensors (bytes).
MAX_BYTES = 1 << 30


def run_model(model: onnx.ModelProto, calib: Calibration, indices: np.ndarray,
              batch_size: int = 32) -> dict[str, np.ndarray]:
    """Every float output of ``model`` on ``indices`` (sample axis first, padding zeroed)."""
    sess = session(model)
    names = [o.name for o in sess.get_outputs()]
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for batch, mask in run_outputs(sess, calib, indices, names, batch_size, outputs=True):
        for n in names:
            parts[n].append(drop_padding(np.asarray(batch[n]), mask))
    return {n: np.concatenate(p) for n, p in parts.items()
            if np.issubdtype(p[0].dtype, np.floating)}


def _init_digest(model: onnx.ModelProto) -> dict[str, bytes]:
    return {t.name: t.SerializeToString() for t in model.graph.initializer}


class DownstreamRunner:
    """Outputs of pruned variants of ``model`` on fixed samples (module docstring)."""

    def __init__(self, model: onnx.ModelProto, calib: Calibration, indices: np.ndarray,
                 elem_types: dict[str, int], batch_size: int = 32,
                 max_bytes: int = MAX_BYTES) -> None:
        self.model, self.calib, self.indices = model, calib, np.asarray(indices)
        self.elem_types, self.batch_size, self.max_bytes = elem_types, batch_size, max_bytes
        self.reference = run_model(model, calib, self.indices, batch_size)
        self.names = list(self.reference)
        self.nodes = {n.name: n.SerializeToString() for n in model.graph.node}
        self.inits = _init_digest(model)
        self.graph_inputs = {i.name for i in model.graph.input}
        self.enabled = calib.mode in ("batched", "fixed") and calib.token_mask is None
        self.cache: dict[str, list[np.ndarray]] = {}  # tensor → its value per batch

    def region(self, variant: onnx.ModelProto) -> tuple[list[onnx.NodeProto], list[str]]:
        """The changed region's nodes (in graph order) and its frontier tensors."""
        inits = _init_digest(variant)
        changed_inits = {k for k, v in inits.items() if self.inits.get(k) != v}
        users: dict[str, list[int]] = {}
        for i, node in enumerate(variant.graph.node):
            for x in node.input:
                users.setdefault(x, []).append(i)
        todo = [i for i, node in enumerate(variant.graph.node)
                if self.nodes.get(node.name) != node.SerializeToString()
                or any(x in changed_inits for x in node.input)]
        inside: set[int] = set()
        while todo:  # everything downstream of a changed node
            i = todo.pop()
            if i in inside:
                continue
            inside.add(i)
            for o in variant.graph.node[i].output:
                todo.extend(users.get(o, ()))
        nodes = [n for i, n in enumerate(variant.graph.node) if i in inside]
        made = {o for n in nodes for o in n.output}
        frontier = sorted({x for n in nodes for x in n.input
                           if x and x not in made and x not in inits})
        return nodes, frontier

    def capture(self, tensors: Sequence[str]) -> bool:
        """Hold the original model's values of ``tensors`` on the samples, batch by batch (a
        shape computed from a batch is that batch's); False when they would not fit in
        ``max_bytes``."""
        need = [t for t in tensors if t not in self.cache and t not in self.graph_inputs]
        if not need or not self.enabled:
            return self.enabled
        parts: dict[str, list[np.ndarray]] = {t: [] for t in need}
        size = sum(a.nbytes for v in self.cache.values() for a in v)
        sess = session(self.model, need, self.elem_types)
        for feed, _ in self.calib.feeds(self.indices, self.batch_size):  # padded batches kept
            for t, v in zip(need, sess.run(need, feed)):
                parts[t].append(np.asarray(v))
                size += parts[t][-1].nbytes
            if size > self.max_bytes:
                log.debug("frontier tensors exceed %d bytes: whole-model runs", self.max_bytes)
                self.enabled = False
                return False
        self.cache.update(parts)
        return True

    def outputs(self, variant: onnx.ModelProto) -> list[np.ndarray]:
        """The variant's float outputs, in the order of :attr:`reference`."""
        if not self.enabled:
            return list(run_model(variant, self.calib, self.indices, self.batch_size).values())
        nodes, frontier = self.region(variant)
        if not nodes:
            return [self.reference[n] for n in self.names]
        typed = all(t in self.graph_inputs or t in self.elem_types for t in frontier)
        if not typed or not self.capture(frontier):
            self.enabled = False
            return self.outputs(variant)
        made = {o for n in nodes for o in n.output}
        produced = [n for n in self.names if n in made]
        sess = session(self._sub_model(variant, nodes, frontier, produced))
        got: dict[str, list[np.ndarray]] = {n: [] for n in produced}
        feeds = self.calib.feeds(self.indices, self.batch_size)
        axis: dict[str, int] = {}
        for b, (feed, valid) in enumerate(feeds):
            outs = sess.run(produced, {t: feed[t] if t in self.graph_inputs else self.cache[t][b]
                                       for t in frontier})
            fed = len(next(iter(feed.values())))
            for n, o in zip(produced, outs):  # padding rows of a fixed-batch model dropped
                o = sample_first(np.asarray(o), fed, axis, n)
                got[n].append(o[:valid] if valid < fed else o)
        return [np.concatenate(got[n]) if n in got else self.reference[n] for n in self.names]

    def _sub_model(self, variant: onnx.ModelProto, nodes: list[onnx.NodeProto],
                   frontier: list[str], produced: list[str]) -> onnx.ModelProto:
        """The region as a model: the frontier as inputs, the outputs it produces."""
        sub = onnx.ModelProto()
        sub.CopyFrom(variant)
        g = sub.graph
        del g.node[:]
        g.node.extend(nodes)
        used = {x for n in nodes for x in n.input}
        kept = [t for t in variant.graph.initializer if t.name in used]
        del g.initializer[:]
        g.initializer.extend(kept)
        types = {i.name: i.type.tensor_type.elem_type for i in self.model.graph.input}
        del g.input[:]
        for t in frontier:
            et = types[t] if t in self.graph_inputs else self.elem_types[t]
            g.input.append(onnx.helper.make_tensor_value_info(t, et, None))
        del g.output[:]
        for n in produced:
            g.output.append(onnx.helper.make_empty_tensor_value_info(n))
        del g.value_info[:]
        return sub
