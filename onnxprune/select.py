"""Selection glue: turn an analysed group plus its streamed statistics into a solver
:class:`~onnxprune.solvers.Problem`, run the chosen method, and map the result back to channel
sets and consumer weights.

For a consumer with effective weight ``W`` (m × K) and Gram ``G`` of its input (plus the constant
column), LayerInChange's target is its own pre-bias output ``T = B Wᵀ``, so
``H = G_{:,K} Wᵀ`` and ``‖T‖² = tr(W G_KK Wᵀ)`` — no extra statistics are needed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from onnxprune.analysis import Analysis, ConsumerSite, Group
from onnxprune.calibrate import SiteStats
from onnxprune.graph import Graph
from onnxprune.rules import output_scale, rule_for
from onnxprune.solvers import (
    ConsumerStats,
    Problem,
    act_norm_scores,
    greedy_remove,
    greedy_select,
    keep_count,
    random_scores,
    choose_ridge,
    refit,
    regularized,
    relative_error,
    select_top,
    sliced,
    weight_norm_scores,
)

METHODS = ("inchange", "weight-norm", "act-norm", "random")


@dataclass(frozen=True, eq=False)
class GroupDecision:
    group: Group
    kept: np.ndarray  # group channel indices kept (sorted)
    set_keeps: Mapping[int, np.ndarray]  # channel-set id → kept local indices (only if reduced)
    weights: Mapping[ConsumerSite, tuple[np.ndarray, np.ndarray | None]]
    rel_error: float


def segments_and_quotas(group: Group, ratio: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Segment id per group channel, kept count per segment, forced-channel mask."""
    seg = np.zeros(group.size, dtype=np.int64)
    quotas: list[int] = []
    forced = np.zeros(group.size, dtype=bool)
    for s, off in zip(group.sets, group.offsets):
        prunable = s.prunable and s.size > 1
        b = s.boundaries
        for lo, hi in zip(b[:-1], b[1:]):
            seg[off + lo:off + hi] = len(quotas)
            quotas.append(keep_count(hi - lo, ratio) if prunable else hi - lo)
        if not prunable:
            forced[off:off + s.size] = True
    return seg, np.asarray(quotas, dtype=np.int64), forced


def build_problem(graph: Graph, analysis: Analysis, group: Group, stats: Sequence[SiteStats],
                  ratio: float) -> Problem:
    consumers = []
    for site, st in zip(group.consumers, stats):
        node = graph.node(site.node)
        W = rule_for(node).weight_matrix(node, graph)
        scale = output_scale(node, graph)
        if scale is not None:
            W = W * scale[:, None]
        channels = analysis.group_channels(group, site.layout)
        K = len(channels) * site.g
        if W.shape[1] != K:
            raise ValueError(f"consumer {site.node}: weight has {W.shape[1]} columns, layout "
                             f"implies {K}")
        G = st.G
        H = G[:, :K] @ W.T
        t2 = float(np.sum(W * (W @ G[:K, :K])))
        consumers.append(ConsumerStats(G=G, H=H, t_norm2=t2, channels=channels, g=site.g,
                                       has_const=st.has_const, weight=W, out_scale=scale,
                                       rows=st.rows))
    seg, quotas, forced = segments_and_quotas(group, ratio)
    return Problem(n_channels=group.size, consumers=tuple(consumers), segments=seg,
                   quotas=quotas, forced=forced)


def solve(problem: Problem, method: str, reweight: bool, seed: int, group_index: int,
          ridge: float | None = None) -> tuple[np.ndarray, list, float]:
    """Select and re-fit.

    Regularisation toward the original weights: ρ_q is fixed (``ridge``) or chosen by GCV of the
    re-fit on a first selection (only consumers with < 20 rows per kept column can get ρ > 0).
    If any ρ_q > 0 the greedy runs again on the regularised statistics, and the re-fit uses them.
    The reported error is always measured on the plain statistics.
    """
    def select(prob: Problem) -> np.ndarray:
        if method == "inchange":
            return greedy_select(prob) if reweight else greedy_remove(problem)
        if method == "weight-norm":
            return select_top(problem, weight_norm_scores(problem))
        if method == "act-norm":
            return select_top(problem, act_norm_scores(problem))
        if method == "random":
            return select_top(problem, random_scores(problem, seed * 1_000_003 + group_index))
        raise ValueError(f"unknown method {method!r}")

    kept = select(problem)
    if not reweight:
        fits = sliced(problem, kept)
        return kept, fits, relative_error(problem, kept, fits)
    if ridge is None:
        rhos = [choose_ridge(s, kept) for s in problem.consumers]
    else:
        rhos = [float(ridge)] * len(problem.consumers)
    reg = regularized(problem, rhos)
    if any(r > 0 for r in rhos) and method == "inchange":
        kept = select(reg)
    fits = refit(reg, kept, 0.0)
    return kept, fits, relative_error(problem, kept, fits)


def decide(graph: Graph, analysis: Analysis, group: Group, stats: Sequence[SiteStats],
           ratio: float, method: str, reweight: bool, seed: int, group_index: int,
           ridge: float | None = None) -> GroupDecision:
    problem = build_problem(graph, analysis, group, stats, ratio)
    kept, fits, rel = solve(problem, method, reweight, seed, group_index, ridge)
    set_keeps = {}
    for s, off in zip(group.sets, group.offsets):
        local = kept[(kept >= off) & (kept < off + s.size)] - off
        if len(local) < s.size:
            set_keeps[s.id] = local
    weights = {}
    for site, (W, bias), st in zip(group.consumers, fits, problem.consumers):
        scale = st.out_scale
        if scale is not None:  # back from the post-BatchNormalization scale of the objective
            live = scale > 0
            inv = np.where(live, 1.0 / np.where(live, scale, 1.0), 0.0)
            orig = st.weight[:, st.columns_of(kept)] * inv[:, None]
            W = np.where(live[:, None], W * inv[:, None], orig)
            bias = None if bias is None else bias * inv
        weights[site] = (W, bias)
    return GroupDecision(group=group, kept=kept, set_keeps=set_keeps, weights=weights,
                         rel_error=rel)


def group_ratio(group: Group, options) -> float:
    """The fraction removed from ``group``: ``options.head_ratio`` for attention-head groups
    when it is set, ``options.ratio`` otherwise."""
    head_ratio = getattr(options, "head_ratio", None)
    if group.kind == "heads" and head_ratio is not None:
        return float(head_ratio)
    return float(options.ratio)


def removes_anything(group: Group, ratio: float) -> bool:
    if not group.prunable:
        return False
    _, quotas, _ = segments_and_quotas(group, ratio)
    return int(quotas.sum()) < group.size
