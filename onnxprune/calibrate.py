"""Calibration: run the model in onnxruntime and stream each consumer's Gram statistics.

For every consumer site the captured input tensor of one batch is turned into rows ``B_b``
(``rule.rows``: im2col for convolutions, one row per token/sample for linear layers), an all-ones
column is appended when the consumer can absorb a bias change, and ``G += B_bᵀ B_b`` is
accumulated in float64. Nothing else is kept between batches, so memory is
O(Σ_q (C_q·g_q)²) — independent of the number of samples.

Position cap: a convolution consumer contributes at most ``max_positions`` output positions per
sample (drawn uniformly without replacement from a generator seeded by ``seed`` and the site; all
positions when there are fewer). This bounds the cost on large images; the statistics stay
unbiased up to a constant factor, which the least-squares solution does not depend on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort

from onnxprune.analysis import ConsumerSite
from onnxprune.graph import Graph
from onnxprune.modelio import Calibration
from onnxprune.rules import rule_for

log = logging.getLogger(__name__)

DEFAULT_MAX_POSITIONS = 256


def session(model: onnx.ModelProto, extra_outputs: Sequence[str] = (),
            elem_types: dict[str, int] | None = None) -> ort.InferenceSession:
    """An onnxruntime CPU session for ``model`` that also returns ``extra_outputs``."""
    if extra_outputs:
        m = onnx.ModelProto()
        m.CopyFrom(model)
        present = {o.name for o in m.graph.output}
        for name in extra_outputs:
            if name in present:
                continue
            et = (elem_types or {}).get(name)
            if et:
                m.graph.output.append(onnx.helper.make_tensor_value_info(name, et, None))
            else:
                m.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
            present.add(name)
        model = m
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    # Idle worker threads must not spin: the pass shares the cores with whatever runs beside it.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def run_outputs(sess: ort.InferenceSession, calib: Calibration, indices: np.ndarray,
                names: Sequence[str], batch_size: int = 32):
    """Yield ``{name: array}`` per batch, sample axis first, padding rows dropped."""
    for feed, valid in calib.feeds(indices, batch_size):
        outs = sess.run(list(names), feed)
        fed = len(next(iter(feed.values()))) if calib.mode != "unbatched" else 1
        batch = {}
        for name, arr in zip(names, outs):
            arr = np.asarray(arr)
            # Only padded runs drop rows: an intermediate tensor's first axis need not be the
            # sample axis (sequence-first attention: [s·b, E]).
            batch[name] = arr[None] if calib.mode == "unbatched" else (
                arr[:valid] if valid < fed else arr)
        yield batch


def _selector(rng: np.random.Generator, cap: int) -> Callable[[int, int], np.ndarray]:
    def select(n: int, p: int) -> np.ndarray:
        if p <= cap:
            return np.arange(n * p)
        return np.concatenate([i * p + np.sort(rng.choice(p, cap, replace=False))
                               for i in range(n)])
    return select


@dataclass(frozen=True, eq=False)
class SiteStats:
    G: np.ndarray  # (n, n) with the constant column last when has_const
    rows: int
    has_const: bool


class GramAccumulator:
    """Streams ``G = BᵀB`` for a list of consumer sites."""

    def __init__(self, graph: Graph, sites: Sequence[ConsumerSite], seed: int,
                 max_positions: int = DEFAULT_MAX_POSITIONS) -> None:
        self.graph = graph
        self.sites = list(sites)
        self.rules = [rule_for(graph.node(s.node)) for s in self.sites]
        self.has_const = [r.has_bias_slot(graph.node(s.node), graph)
                          for r, s in zip(self.rules, self.sites)]
        self.selects = [_selector(np.random.default_rng([seed, i]), max_positions)
                        for i in range(len(self.sites))]
        self.G: list[np.ndarray | None] = [None] * len(self.sites)
        self.rows = [0] * len(self.sites)

    @property
    def tensors(self) -> list[str]:
        return sorted({s.tensor for s in self.sites})

    def update(self, batch: dict[str, np.ndarray]) -> None:
        for i, site in enumerate(self.sites):
            x = batch[site.tensor]
            B = self.rules[i].rows(self.graph.node(site.node), self.graph, x, self.selects[i])
            B = B.astype(np.float64, copy=False)
            if self.has_const[i]:
                B = np.hstack([B, np.ones((B.shape[0], 1))])
            gram = B.T @ B
            self.G[i] = gram if self.G[i] is None else self.G[i] + gram
            self.rows[i] += B.shape[0]

    def result(self) -> list[SiteStats]:
        return [SiteStats(G=G, rows=r, has_const=c)
                for G, r, c in zip(self.G, self.rows, self.has_const)]


def collect(model: onnx.ModelProto, graph: Graph, calib: Calibration, indices: np.ndarray,
            sites: Sequence[ConsumerSite], seed: int, max_positions: int = DEFAULT_MAX_POSITIONS,
            batch_size: int = 32) -> list[SiteStats]:
    """Run the model on ``indices`` and return every site's streamed statistics."""
    acc = GramAccumulator(graph, sites, seed, max_positions)
    if not sites:
        return []
    names = acc.tensors
    sess = session(model, names, graph.elem_types)
    for batch in run_outputs(sess, calib, indices, names, batch_size):
        acc.update(batch)
    log.debug("collected statistics of %d consumer(s) on %d sample(s)", len(sites), len(indices))
    return acc.result()
