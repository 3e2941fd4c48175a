"""The channel-pruning pass: analyse → calibrate → select → rewrite.

* One-shot (``inchange`` = LayerInChange, and the score baselines): every group's statistics come
  from the input model, each group is solved independently, all decisions go into one rewrite.
* Sequential (``seq`` = SeqInChange, ``asym`` = AsymInChange): groups are handled one at a time in
  topological order (order of their first producer). Before each group the model pruned and
  re-fitted so far is run — only the sub-graph up to the group's consumer inputs, from the
  activations the last rewrite left valid (:class:`onnxprune.calibrate.ActivationCache`) — so a
  group's statistics ``G = BᵀB`` see the errors of everything pruned before it. ``seq``: the
  target is the current model's own consumer output ``T = B Wᵀ``, so each re-fit only
  compensates for the channels removed in its own group.
  ``asym``: the target is the *reference* (original) model's consumer output ``T = A W_refᵀ``,
  rebuilt from the pruned model's features: ``H = Bᵀ A W_refᵀ``; the re-fit then also absorbs
  the drift accumulated upstream. ``W_ref`` keeps only the reference outputs that still exist
  (the :class:`Lineage` maps each remaining channel to its original index).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxprune import calibrate, rewrite, weights
from onnxprune.analysis import analyze
from onnxprune.errors import PassError
from onnxprune.graph import Graph, all_inputs
from onnxprune.groups import Analysis, ConsumerSite, Group
from onnxprune.modelio import Calibration
from onnxprune.passbase import Pass, PassResult
from onnxprune.rules import rule_for
from onnxprune.select import (SEQUENTIAL, GroupDecision, KeepPlan, decide, level_decisions,
                              removes_anything, segments_and_quotas)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PruneOptions:
    plan: KeepPlan = field(default_factory=KeepPlan)
    method: str = "inchange"
    reweight: bool = True
    seed: int = 0
    max_positions: int = calibrate.DEFAULT_MAX_POSITIONS
    batch_size: int = 32
    ridge: float | str = "auto"  # a number, "auto" (few-row consumers shrunk) or "gcv"
    truncate: bool = True  # run only the sub-graph needed for the statistics


@dataclass(frozen=True, eq=False)
class Lineage:
    """For tensors whose channel axis lost channels: the original index of each remaining
    channel position (absent: nothing removed yet)."""

    origin: Mapping[str, np.ndarray] = field(default_factory=dict)

    def positions(self, tensor: str, n: int) -> np.ndarray:
        return self.origin.get(tensor, np.arange(n))

    def after(self, analysis: Analysis, keeps: Mapping[int, np.ndarray],
              tensors: Iterable[str] | None = None) -> Lineage:
        """The lineage once ``keeps`` are applied; ``tensors``: the only ones that can lose
        channels (default: every tensor with a layout)."""
        new = dict(self.origin)
        for name in analysis.layouts if tensors is None else tensors:
            k = rewrite.kept_positions(analysis, keeps, name)
            if k is not None:
                new[name] = self.positions(name, analysis.layouts[name].channels)[k]
        return Lineage(new)


def find_group(analysis: Analysis, name: str) -> Group | None:
    return next((g for g in analysis.groups if g.name == name), None)


class _InPlace:
    """What the sequential loop keeps between in-place rewrites of one model structure."""

    def __init__(self, model: onnx.ModelProto, graph: Graph, analysis: Analysis) -> None:
        self.graph = graph
        self.index = rewrite.ModelIndex(model, graph)
        self.regions = rewrite.Regions(analysis, graph)
        self.position = {node.name: i for i, node in enumerate(graph.nodes)}
        self.cache = calibrate.ActivationCache(self.index.value_info, self.position)

    def inputs_before(self, region: set[str]) -> list[str]:
        """The run-time tensors the nodes ``region`` read that are computed before all of them
        (a rewrite of ``region`` leaves them as they are: the next run can start there)."""
        first = min(self.position[n] for n in region)
        out = []
        for name in region:
            for x in all_inputs(self.graph.node(name)):
                p = self.graph.producer.get(x)
                if p is not None and self.position[p.name] < first:
                    out.append(x)
        return sorted(set(out))


class ChannelPrunePass(Pass):
    name = "channel-prune"
    #: seq/asym: keep the analysis and activations across groups when a rewrite allows it. Off,
    #: every group re-indexes, re-analyses and runs the model from its inputs (the tests check
    #: that both give the same model).
    incremental = True

    def __init__(self, calib: Calibration, indices: np.ndarray, options: PruneOptions,
                 progress: Callable[[str], None] | None = None,
                 reference: onnx.ModelProto | None = None, lineage: Lineage | None = None,
                 stats: Mapping[ConsumerSite, calibrate.SiteStats] | None = None,
                 cache: dict | None = None, paths: dict | None = None) -> None:
        self.calib = calib
        self.indices = np.asarray(indices)
        self.options = options
        self.progress = progress or (lambda msg: None)
        self.reference = reference  # asym's target model (default: the pass's input model)
        self.lineage = lineage or Lineage()
        # One-shot methods: statistics already collected on this very model (a budget measured
        # them), and decisions already taken for the same group and quotas (a --min-cosine
        # search tries several plans): neither is computed again.
        self.stats = stats
        self.cache = cache
        self.paths = paths  # greedy paths of the groups on ``stats`` (select.level_decisions)

    def requires(self, model: onnx.ModelProto) -> None:
        names = [n.name for n in model.graph.node]
        if len(set(names)) != len(names) or not all(names):
            raise PassError("channel-prune requires unique node names (run NormalizePass first)")

    def _collect(self, model, graph, sites, reference=None, memory_sites=None, cache=None,
                 reference_cache=None):
        opt = self.options
        self.statistics_runs += 1
        return calibrate.collect(model, graph, self.calib, self.indices, sites, opt.seed,
                                 opt.max_positions, opt.batch_size, reference, opt.truncate,
                                 opt.method == "sampling", self.progress, memory_sites, cache,
                                 reference_cache)

    def _decide(self, graph, analysis, group, stats, index, targets=None) -> GroupDecision:
        opt = self.options
        return decide(graph, analysis, group, stats, opt.plan, opt.method, opt.reweight,
                      opt.seed, index, opt.ridge, targets)

    def call(self, model: onnx.ModelProto) -> PassResult:
        opt = self.options
        graph = Graph(model)
        analysis = analyze(graph)
        todo = [(i, g) for i, g in enumerate(analysis.groups) if removes_anything(g, opt.plan)]
        self.statistics_runs = 0
        info: dict = {"analysis": analysis, "decisions": {}, "lineage": self.lineage}
        if not todo:
            return PassResult(model, False, info)
        if opt.method in SEQUENTIAL:
            pruned, decisions, lineage = self._sequential(model, graph, analysis, todo)
        else:
            pruned, decisions, lineage = self._one_shot(model, graph, analysis, todo)
        info.update(decisions=decisions, lineage=lineage, statistics_runs=self.statistics_runs)
        return PassResult(pruned, True, info)

    def _one_shot(self, model, graph, analysis, todo):
        sites = [s for _, g in todo for s in g.consumers]
        if self.stats is not None and all(s in self.stats for s in sites):
            by_site = self.stats
        else:
            self.progress(f"calibrating {len(sites)} consumer(s) of {len(todo)} group(s) on "
                          f"{len(self.indices)} sample(s)")
            # the batch sized as for every prunable site: the same statistics as a budget's,
            # a sweep's or a statistics file's
            by_site = dict(zip(sites, self._collect(model, graph, sites,
                                                    memory_sites=analysis.prunable_sites)))
        decisions: dict[str, GroupDecision] = {}
        for n, (i, g) in enumerate(todo):
            key = (g.name, segments_and_quotas(g, self.options.plan)[1].tobytes())
            if self.cache is not None and key in self.cache:
                decisions[g.name] = self.cache[key]
                continue
            self.progress(f"selecting group {n + 1}/{len(todo)} '{g.name}' ({g.size} channels)")
            st = [by_site[s] for s in g.consumers]
            if self.paths is not None and by_site is self.stats:
                opt = self.options
                decisions[g.name] = level_decisions(
                    graph, analysis, g, st, [opt.plan], [True], opt.method, opt.reweight,
                    opt.seed, i, opt.ridge, self.paths)[1][0]
            else:
                decisions[g.name] = self._decide(graph, analysis, g, st, i)
            if self.cache is not None:
                self.cache[key] = decisions[g.name]
        keeps = {sid: k for d in decisions.values() for sid, k in d.set_keeps.items()}
        weights = {site: w for d in decisions.values() for site, w in d.weights.items()}
        pruned = rewrite.apply(model, graph, analysis, keeps, weights)
        return pruned, decisions, self.lineage.after(analysis, keeps)

    def _sequential(self, model, graph, analysis, todo):
        """One copy of the model, pruned in place group after group.

        A rewrite that links no node differently (no private copy of a shared constant, no
        copied node; a new bias input is fine) changes only constants' values and the channel
        count of the group's own tensors, so the analysis of the rewritten model is the same but
        for the group just pruned, which is never visited again. The analysis, the graph index
        (:meth:`Graph.rewritten`) and the activations computed before the rewritten nodes
        (:class:`calibrate.ActivationCache`) are then kept, and each group costs what its own
        sub-graph costs. Any other rewrite re-indexes and re-analyses the whole model."""
        opt = self.options
        asym = opt.method == "asym"
        ref = self.reference if self.reference is not None else model
        ref_graph = Graph(ref) if asym else None
        ref_cache = calibrate.ActivationCache(
            {vi.name: vi for vi in ref.graph.value_info},
            {node.name: i for i, node in enumerate(ref_graph.nodes)}) \
            if asym and self.incremental else None
        lineage = self.lineage
        decisions: dict[str, GroupDecision] = {}
        current = onnx.ModelProto()
        current.CopyFrom(model)
        graph = graph.rebind(current)
        state = None
        for n, (index, first) in enumerate(todo):
            if state is None:
                if n:
                    graph = Graph(current)
                    analysis = analyze(graph)
                state = _InPlace(current, graph, analysis)
            group = find_group(analysis, first.name)
            if group is None or not removes_anything(group, opt.plan):
                log.warning("group '%s' changed while pruning earlier groups; left as it is",
                            first.name)
                continue
            self.progress(f"group {n + 1}/{len(todo)} '{group.name}' ({group.size} channels): "
                          f"calibrating the model pruned so far and selecting")
            targets = self._targets(group, graph, analysis, ref_graph, lineage) if asym else None
            nodes, tensors = state.regions.of([s.id for s in group.sets])
            region = {*nodes, *group.producers, *(s.node for s in group.consumers)}
            store = state.inputs_before(region)
            stats = self._collect(
                current, graph, group.consumers, (ref, ref_graph) if asym else None,
                cache=(state.cache, store) if self.incremental else None,
                reference_cache=None if ref_cache is None else (
                    ref_cache, store + [s.tensor for s in group.consumers]))
            d = self._decide(graph, analysis, group, stats, index, targets)
            rw = rewrite.apply_in_place(current, graph, analysis, d.set_keeps, d.weights, nodes,
                                        tensors, state.index)
            lineage = lineage.after(analysis, d.set_keeps, tensors)
            decisions[group.name] = d
            if rw.renamed or not self.incremental:
                state = None
                continue
            graph.rewritten(rw.new_shapes, {
                t: (analysis.layouts[t].axis, len(cols)) for t in tensors
                if (cols := rw.keep_cols(t)) is not None},
                [(node, i, rw.new_tensors[name]) for node, i, name in rw.added])
            changed = region | {u.name for c in rw.new_shapes for u, _ in graph.users(c)}
            state.cache.changed(min(state.position[c] for c in changed), graph.producer)
        return current, decisions, lineage

    @staticmethod
    def _targets(group: Group, graph: Graph, analysis: Analysis, ref_graph: Graph,
                 lineage: Lineage) -> dict[ConsumerSite, np.ndarray]:
        """Reference weights of each consumer, restricted to its outputs that still exist."""
        out = {}
        for site in group.consumers:
            try:
                ref_node = ref_graph.node(site.node)
            except KeyError:
                raise PassError(f"asym: consumer '{site.node}' is missing from the reference "
                                "model; please report this model") from None
            W_ref = rule_for(ref_node).weight_matrix(ref_node, ref_graph)
            node = graph.node(site.node)
            m = rule_for(node).weight_matrix(node, graph).shape[0]
            lay = analysis.layouts.get(node.output[0])
            g = lay.g if lay is not None else 1  # entries per channel (a head: head_dim)
            pos = lineage.positions(node.output[0], m // g)
            rows = (pos[:, None] * g + np.arange(g)[None, :]).reshape(-1)
            if len(rows) != m:
                raise PassError(f"asym: lost track of the outputs of '{site.node}'; please "
                                "report this model")
            out[site] = W_ref[rows]
        return out

    def ensures(self, model: onnx.ModelProto) -> None:
        super().ensures(model)
        try:
            onnx.shape_inference.infer_shapes(weights.skeleton(model), check_type=True,
                                              strict_mode=True)
        except Exception as exc:  # noqa: BLE001
            raise PassError(f"channel-prune left inconsistent shapes: {str(exc).splitlines()[0]}"
                            "; please report this model") from None


def analysis_of(model: onnx.ModelProto) -> Analysis:
    return analyze(Graph(model))
