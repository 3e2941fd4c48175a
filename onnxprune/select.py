"""Selection glue: turn an analysed group plus its streamed statistics into a solver
:class:`~onnxprune.solvers.Problem`, run the chosen method, and map the result back to channel
sets and consumer weights.

For a consumer with effective weight ``W`` (m × K) and Gram ``G`` of its input (plus the constant
column), LayerInChange's target is its own pre-bias output ``T = B Wᵀ``, so
``H = G_{:,K} Wᵀ`` and ``‖T‖² = tr(W G_KK Wᵀ)`` — no extra statistics are needed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from onnxprune.calibrate import SiteStats
from onnxprune.graph import Graph
from onnxprune.groups import Analysis, ConsumerSite, Group
from onnxprune.rules import output_scale, rule_for
from onnxprune.solvers import (
    ConsumerStats,
    Problem,
    act_norm_scores,
    greedy_path,
    greedy_remove,
    greedy_select,
    keep_count,
    pfp_scores,
    random_scores,
    sample_keys,
    choose_ridge,
    default_ridges,
    refit,
    regularized,
    relative_error,
    select_top,
    sliced,
    weight_norm_scores,
)

METHODS = ("inchange", "seq", "asym", "weight-norm", "act-norm", "random", "sampling")
#: Methods that prune one group at a time on the model pruned so far (see passes/prune.py).
SEQUENTIAL = ("seq", "asym")
#: Methods whose selection maximises the InChange objective.
INCHANGE = ("inchange", "seq", "asym")


@dataclass(frozen=True, eq=False)
class KeepPlan:
    """How many channels each segment of each group keeps.

    ``ratio`` is the fraction removed from every group not listed in ``ratios`` (per-group
    overrides, e.g. from a MAC budget). Each segment keeps ``⌈(1−r)·n⌉`` channels, at least
    ``min_keep`` (and ≥ 1); with ``round_to = K`` the count is then rounded to the nearest multiple
    of K that is ≥ ``min_keep`` — or the whole segment when it has ≤ K channels or rounding reaches
    its size (not for attention-head groups: a head is already a block of head_dim entries);
    ``auto_round`` picks K per segment width (:meth:`round_step`).
    Groups named in ``excluded`` keep everything. For a group listed in ``base`` (its
    segment sizes in an earlier, larger version of the model — gradual pruning) the ratio is
    relative to those sizes: a segment keeps ``min(now, keep(base))`` channels.
    """

    ratio: float = 0.5
    ratios: Mapping[str, float] = field(default_factory=dict)
    round_to: int = 1
    auto_round: bool = False  # ``--round-to auto``: K by segment width (:meth:`round_step`)
    min_keep: int = 1
    excluded: frozenset[str] = frozenset()
    base: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    head_ratio: float | None = None  # attention-head groups (None: ``ratio``)

    def ratio_of(self, group: Group) -> float:
        if group.name in self.excluded:
            return 0.0
        if group.name in self.ratios:
            return float(self.ratios[group.name])
        if group.kind == "heads" and self.head_ratio is not None:
            return float(self.head_ratio)
        return float(self.ratio)

    def round_step(self, size: int) -> int:
        """The multiple a segment of ``size`` channels is rounded to: ``round_to``, or with
        ``auto_round`` 8 from 32 channels, 4 from 8, none below (the channel blocks of
        onnxruntime's convolution kernels: odd widths send them down slow paths)."""
        if not self.auto_round:
            return self.round_to
        return 8 if size >= 32 else 4 if size >= 8 else 1

    def segment_keep(self, size: int, ratio: float) -> int:
        if ratio <= 0:
            return size
        k = max(keep_count(size, ratio), min(self.min_keep, size))
        K = self.round_step(size)
        if K > 1:
            if size <= K:
                return size
            r = K * max(1, int(math.floor(k / K + 0.5)))
            if r < min(self.min_keep, size):
                r += K
            k = min(r, size)
        return k


@dataclass(frozen=True, eq=False)
class GroupDecision:
    group: Group
    kept: np.ndarray  # group channel indices kept (sorted)
    set_keeps: Mapping[int, np.ndarray]  # channel-set id → kept local indices (only if reduced)
    weights: Mapping[ConsumerSite, tuple[np.ndarray, np.ndarray | None]]
    rel_error: float


def segment_sizes(group: Group) -> tuple[int, ...]:
    """Sizes of the group's segments, in order."""
    return tuple(hi - lo for s in group.sets for lo, hi in zip(s.boundaries[:-1], s.boundaries[1:]))


def segments_and_quotas(group: Group, plan: KeepPlan
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Segment id per group channel, kept count per segment, forced-channel mask."""
    ratio = plan.ratio_of(group)
    if group.kind == "heads" and (plan.round_to > 1 or plan.auto_round):
        plan = replace(plan, round_to=1, auto_round=False)
    base = plan.base.get(group.name)
    if base is not None and len(base) != len(segment_sizes(group)):
        base = None
    seg = np.zeros(group.size, dtype=np.int64)
    quotas: list[int] = []
    forced = np.zeros(group.size, dtype=bool)
    for s, off in zip(group.sets, group.offsets):
        prunable = s.prunable and s.size > 1
        b = s.boundaries
        for lo, hi in zip(b[:-1], b[1:]):
            seg[off + lo:off + hi] = len(quotas)
            n = hi - lo
            if not prunable:
                quotas.append(n)
            elif base is not None:
                quotas.append(min(n, plan.segment_keep(base[len(quotas)], ratio)))
            else:
                quotas.append(plan.segment_keep(n, ratio))
        if not prunable:
            forced[off:off + s.size] = True
    return seg, np.asarray(quotas, dtype=np.int64), forced


def build_problem(graph: Graph, analysis: Analysis, group: Group, stats: Sequence[SiteStats],
                  plan: KeepPlan, targets: Mapping[ConsumerSite, np.ndarray] | None = None
                  ) -> Problem:
    """The group's selection problem. Layer-wise target: the consumer's own output
    (``H = G Wᵀ``). With ``targets`` (AsymInChange) a site's statistics hold cross products
    ``C = B_augᵀ A`` and ``G_A = AᵀA`` with a reference model's input ``A``, and its target is
    ``T = A W_tᵀ``: ``H = C W_tᵀ``, ``‖T‖² = tr(W_t G_A W_tᵀ)``."""
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
        if targets is not None and st.C is not None:
            Wt = targets[site]
            if scale is not None:
                Wt = Wt * scale[:, None]
            H = st.C @ Wt.T
            t2 = float(np.sum(Wt * (Wt @ st.GA)))
        else:
            H = G[:, :K] @ W.T
            t2 = float(np.sum(W * (W @ G[:K, :K])))
        consumers.append(ConsumerStats(G=G, H=H, t_norm2=t2, channels=channels, g=site.g,
                                       has_const=st.has_const, weight=W, out_scale=scale,
                                       rows=st.rows, sensitivity=st.sensitivity))
    seg, quotas, forced = segments_and_quotas(group, plan)
    return Problem(n_channels=group.size, consumers=tuple(consumers), segments=seg,
                   quotas=quotas, forced=forced)


def solve(problem: Problem, method: str, reweight: bool, seed: int, group_index: int,
          ridge: float | str = "auto") -> tuple[np.ndarray, list, float]:
    """Select and re-fit.

    Regularisation toward the original weights: ρ_q is ``"auto"`` (ρ = 1 for consumers with
    fewer than 20 rows per column, 0 for the others: :func:`~onnxprune.solvers.default_ridges`),
    fixed (a number), or ``"gcv"`` (chosen by GCV of the re-fit on a first selection; only
    consumers with < 20 rows per kept column can get ρ > 0). If any ρ_q > 0 the greedy runs on
    the regularised statistics, and the re-fit uses them. The reported error is always measured
    on the plain statistics.
    """
    def select(prob: Problem) -> np.ndarray:
        if method in INCHANGE:
            return greedy_select(prob) if reweight else greedy_remove(problem)
        if method == "weight-norm":
            return select_top(problem, weight_norm_scores(problem))
        if method == "act-norm":
            return select_top(problem, act_norm_scores(problem))
        if method == "random":
            return select_top(problem, random_scores(problem, seed * 1_000_003 + group_index))
        if method == "sampling":
            return select_top(problem, sample_keys(pfp_scores(problem),
                                                   seed * 1_000_003 + group_index))
        raise ValueError(f"unknown method {method!r}")

    if not reweight:
        kept = select(problem)
        fits = sliced(problem, kept)
        return kept, fits, relative_error(problem, kept, fits)
    first = None
    if ridge == "gcv":  # ρ from the re-fit of a first selection on the plain statistics
        first = select(problem)
        rhos = [choose_ridge(s, first) for s in problem.consumers]
    else:
        rhos = _ridges(problem, ridge)
    reg = regularized(problem, rhos)
    if any(r > 0 for r in rhos) and method in INCHANGE:
        kept = select(reg)
    else:
        kept = first if first is not None else select(problem)
    fits = refit(reg, kept, 0.0)
    return kept, fits, relative_error(problem, kept, fits)


def _ridges(problem: Problem, ridge: float | str) -> list[float]:
    if ridge == "auto":
        return default_ridges(problem)
    return [float(ridge)] * len(problem.consumers)


def decide(graph: Graph, analysis: Analysis, group: Group, stats: Sequence[SiteStats],
           plan: KeepPlan, method: str, reweight: bool, seed: int, group_index: int,
           ridge: float | str = "auto",
           targets: Mapping[ConsumerSite, np.ndarray] | None = None) -> GroupDecision:
    problem = build_problem(graph, analysis, group, stats, plan, targets)
    kept, fits, rel = solve(problem, method, reweight, seed, group_index, ridge)
    return _decision(group, problem, kept, fits, rel)


def _decision(group: Group, problem: Problem, kept: np.ndarray, fits: list, rel: float
              ) -> GroupDecision:
    """The kept channels per channel set and the consumers' new weights in their own scale."""
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


def level_decisions(graph: Graph, analysis: Analysis, group: Group, stats: Sequence[SiteStats],
                    plans: Sequence[KeepPlan], decided: Sequence[bool], method: str,
                    reweight: bool, seed: int, group_index: int, ridge: float | str = "auto",
                    paths: dict | None = None
                    ) -> tuple[list[float], list[GroupDecision | None]]:
    """The group pruned as each of ``plans`` says: its relative error for every plan, and the
    decision (kept channels, re-fitted weights) for the plans flagged in ``decided``.

    For the InChange greedy with a plain least-squares re-fit on a single-segment group one
    greedy run serves every plan (:func:`~onnxprune.solvers.greedy_path`: the kept set of a
    smaller quota is a prefix of a larger one's), and the error of each level is read off the
    energy the greedy explained, ``1 − F(S)/‖T‖²`` — the re-fit's error, with no re-fit (with the
    default ridge, of the regularised objective: the same as the plain one unless a consumer has
    few rows).
    With ``paths`` (a dict kept by the caller for statistics that do not change) the greedy
    runs to the whole group once and later calls, for any widths, only re-fit. Otherwise each
    plan is decided on its own. The decisions equal :func:`decide`'s."""
    if not (method in INCHANGE and reweight and (ridge == "auto" or ridge == 0.0)
            and len(segment_sizes(group)) == 1):
        out = [decide(graph, analysis, group, stats, p, method, reweight, seed, group_index,
                      ridge) for p in plans]
        return [d.rel_error for d in out], [d if want else None for d, want in zip(out, decided)]
    quotas = [int(segments_and_quotas(group, p)[1][0]) for p in plans]
    problem = build_problem(graph, analysis, group, stats, plans[int(np.argmax(quotas))])
    reg = regularized(problem, _ridges(problem, ridge))
    forced = np.nonzero(problem.forced)[0]
    if paths is None:
        picks, explained = greedy_path(reg, max(quotas))
    else:
        if group.name not in paths:
            paths[group.name] = greedy_path(reg, group.size)
        picks, explained = paths[group.name]
    total = sum(c.t_norm2 for c in reg.consumers)
    errors, decisions = [], []
    for q, want in zip(quotas, decided):
        k = min(max(q - len(forced), 0), len(picks))
        errors.append(max(0.0, 1.0 - explained[k] / total) if total > 0 else 0.0)
        if not want:
            decisions.append(None)
            continue
        kept = np.sort(np.concatenate([forced, picks[:k]])).astype(np.int64)
        fits = refit(reg, kept, 0.0)
        decisions.append(_decision(group, problem, kept, fits,
                                   relative_error(problem, kept, fits)))
    return errors, decisions


def removes_anything(group: Group, plan: KeepPlan) -> bool:
    if not group.prunable:
        return False
    _, quotas, _ = segments_and_quotas(group, plan)
    return int(quotas.sum()) < group.size


def cubic_schedule(final: float, steps: int) -> list[float]:
    """Zhu & Gupta: s_t = s_f + (s_i − s_f)(1 − t/N)³ with s_i = 0, for t = 1 … N."""
    return [final * (1.0 - (1.0 - t / steps) ** 3) for t in range(1, steps + 1)]


def round_plans(plan: KeepPlan, groups: Sequence[Group], steps: int) -> list[KeepPlan]:
    """Per-round plans for gradual pruning: after round t a fraction s_t of each group's
    original channels is gone (ratios relative to the original segment sizes, ``KeepPlan.base``),
    so the last round lands on exactly the one-shot widths (``--round-to`` rounds every round's
    widths; rounding is monotone in the ratio, so no round goes below the final width)."""
    if steps == 1:
        return [plan]
    final = {g.name: plan.ratio_of(g) for g in groups}
    base = {g.name: segment_sizes(g) for g in groups}
    sched = {n: cubic_schedule(r, steps) for n, r in final.items()}
    return [replace(plan, ratio=0.0, ratios={n: s[t] for n, s in sched.items()}, base=base)
            for t in range(steps)]
