"""The channel-pruning pass: analyse → calibrate → select → rewrite.

One-shot LayerInChange (and the score baselines): every group's statistics come from the original
model, each group is solved independently, and all decisions are applied in one rewrite.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx

from onnxprune import calibrate, rewrite
from onnxprune.analysis import Analysis, analyze
from onnxprune.errors import PassError
from onnxprune.graph import Graph
from onnxprune.modelio import Calibration
from onnxprune.passbase import Pass, PassResult
from onnxprune.select import GroupDecision, decide, group_ratio, removes_anything

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PruneOptions:
    ratio: float = 0.5
    method: str = "inchange"
    reweight: bool = True
    seed: int = 0
    max_positions: int = calibrate.DEFAULT_MAX_POSITIONS
    batch_size: int = 32
    ridge: float | None = 0.0  # None: generalised cross-validation per consumer
    head_ratio: float | None = None  # attention-head groups; None: same as ratio


class ChannelPrunePass(Pass):
    name = "channel-prune"

    def __init__(self, calib: Calibration, indices: np.ndarray, options: PruneOptions,
                 progress: Callable[[str], None] | None = None) -> None:
        self.calib = calib
        self.indices = np.asarray(indices)
        self.options = options
        self.progress = progress or (lambda msg: None)

    def requires(self, model: onnx.ModelProto) -> None:
        names = [n.name for n in model.graph.node]
        if len(set(names)) != len(names) or not all(names):
            raise PassError("channel-prune requires unique node names (run NormalizePass first)")

    def call(self, model: onnx.ModelProto) -> PassResult:
        opt = self.options
        graph = Graph(model)
        analysis = analyze(graph)
        todo = [(i, g) for i, g in enumerate(analysis.groups)
                if removes_anything(g, group_ratio(g, opt))]
        info: dict = {"analysis": analysis, "decisions": {}}
        if not todo:
            return PassResult(model, False, info)
        sites = [s for _, g in todo for s in g.consumers]
        self.progress(f"calibrating {len(sites)} consumer(s) of {len(todo)} group(s) on "
                      f"{len(self.indices)} sample(s)")
        stats = calibrate.collect(model, graph, self.calib, self.indices, sites, opt.seed,
                                  opt.max_positions, opt.batch_size)
        by_site = dict(zip(sites, stats))
        decisions: dict[str, GroupDecision] = {}
        for n, (i, g) in enumerate(todo):
            self.progress(f"selecting group {n + 1}/{len(todo)} '{g.name}' ({g.size} channels)")
            decisions[g.name] = decide(graph, analysis, g, [by_site[s] for s in g.consumers],
                                       group_ratio(g, opt), opt.method, opt.reweight, opt.seed, i,
                                       opt.ridge)
        keeps = {sid: k for d in decisions.values() for sid, k in d.set_keeps.items()}
        weights = {site: w for d in decisions.values() for site, w in d.weights.items()}
        pruned = rewrite.apply(model, graph, analysis, keeps, weights)
        info["decisions"] = decisions
        return PassResult(pruned, True, info)

    def ensures(self, model: onnx.ModelProto) -> None:
        super().ensures(model)
        try:
            onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
        except Exception as exc:  # noqa: BLE001
            raise PassError(f"channel-prune left inconsistent shapes: {str(exc).splitlines()[0]}"
                            "; please report this model") from None


def analysis_of(model: onnx.ModelProto) -> Analysis:
    return analyze(Graph(model))
