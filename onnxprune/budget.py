"""Label-free per-group budgets: which fraction of each group to keep so that the pruned model
meets a MAC or parameter target with the least damage to its output.

**Sensitivity.** For every prunable group ``g`` and keep fraction ``f`` the group alone is
pruned (the method's own one-shot selection and re-fit, everything else untouched); its damage
is the change of the model's outputs on calibration samples, no part of an output hidden by
another (:func:`onnxprune.verify.damage`: per output, the mean over its parts of
``‖y_f − y‖² / ‖y‖²``; no labels: ``y`` is the original model's output). ``d_g(1) = 0``.

Measuring it costs a whole-model run per group and fraction, so it is only measured at the keep
fractions ``WHOLE`` (3 runs per group). At the other ``PROBES`` it is *scaled* from the group's
local error ``e_g(f) = 1 − F(S_f)/‖T‖²`` (its consumers' relative output error, known from the
statistics alone): ``d_g(f) ≈ e_g(f) · d_g(f_w)/e_g(f_w)``, the ratio interpolated linearly in
``f`` between the measured ``f_w`` and held constant beyond. The ratio is how much the
network downstream amplifies (or absorbs) the group's local error. For the InChange greedy one
greedy run gives every fraction (the kept sets are nested) and ``F(S_f)`` is the energy it
explained, so the local curve costs one selection per group. Between probes ``d_g`` is
interpolated linearly on a grid of ``1/GRID`` steps and made non-increasing in ``f`` (a smaller
group never counts as less damaged).

**Cost.** MACs and parameters are multilinear in the kept fractions: a layer's cost is the
product of the fractions of the groups on its input and output channel axes. With removed
fractions ``u_g = 1 − f_g``:

    cost(u) = C − Σ_g α_g u_g + Σ_{(g,h)} β_gh u_g u_h

over pairs of groups that meet at some node. ``α`` and ``β`` are identified exactly from the
model itself (one rewrite + count per group, one per pair) — no per-op cost knowledge.

**Allocation.** Minimise ``Σ_g d_g(f_g)`` subject to ``cost ≤ target``. ``marginal`` (default):
start from the full model and repeatedly lower, by one grid step, the group with the smallest
damage increase per unit of cost removed. ``equal-loss`` (the paper's): the smallest common
damage level ε such that pruning every group as far as ``d_g ≤ ε`` allows meets the target
(bisection on ε). Afterwards the exact cost of the resulting plan (with ``--round-to`` and
``--min-keep``) is counted on the rewritten model and marginal steps continue until it is met.

**Rounding.** Rounded widths move in steps (8 channels of 32), so the plan met from below can
sit far under the target. Two local moves give it back, each checked by the exact count: raise
one group a grid step (:meth:`Planner._fill`), then trade rounded widths — one group a width
step up, optionally another one step down — whenever that spends more of the budget and
lowers the predicted damage ``Σ_g d_g(kept_g / size_g)`` within the target
(:meth:`Planner._rebalance`).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import onnx

from onnxprune import rewrite
from onnxprune.calibrate import SiteStats
from onnxprune.downstream import DownstreamRunner
from onnxprune.errors import OptionError
from onnxprune.graph import Graph
from onnxprune.groups import Analysis, ConsumerSite, Group
from onnxprune.metrics import count_macs, count_params
from onnxprune.modelio import Calibration
from onnxprune.rules import rule_for
from onnxprune.verify import damage
from onnxprune.select import (INCHANGE, KeepPlan, level_decisions, removes_anything,
                              segments_and_quotas)

log = logging.getLogger(__name__)

PROBES = (0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125)
#: Probes at which the whole model is run; at the others the damage is scaled from local errors.
WHOLE = (0.75, 0.5, 0.25)
GRID = 32
ALLOCATIONS = ("marginal", "equal-loss")


@dataclass(frozen=True)
class Budget:
    kind: str  # "macs" or "params"
    fraction: float  # of the original cost to keep
    allocation: str = "marginal"


@dataclass(frozen=True, eq=False)
class Allocation:
    ratios: Mapping[str, float]  # group name → fraction removed
    sensitivity: Mapping[str, tuple[tuple[float, float], ...]]  # group → ((keep f, damage), …)
    predicted: float  # cost fraction predicted by the cost model
    exact: float  # cost fraction counted on the rewritten model


# -- cost --------------------------------------------------------------------------------------

def _kept_first(group: Group, plan: KeepPlan) -> dict[int, np.ndarray]:
    """Kept channels of every set when each segment keeps its quota's first channels."""
    seg, quotas, _ = segments_and_quotas(group, plan)
    kept = []
    for s in range(len(quotas)):
        kept.extend(np.nonzero(seg == s)[0][: quotas[s]].tolist())
    kept = np.asarray(kept, dtype=np.int64)
    out = {}
    for cs, off in zip(group.sets, group.offsets):
        local = kept[(kept >= off) & (kept < off + cs.size)] - off
        if len(local) < cs.size:
            out[cs.id] = local
    return out


def sliced_weights(graph: Graph, analysis: Analysis, group: Group, keeps: Mapping[int, np.ndarray]
                   ) -> dict[ConsumerSite, tuple[np.ndarray, None]]:
    """Consumers' original weights on the kept columns (no re-fit)."""
    out = {}
    for site in group.consumers:
        node = graph.node(site.node)
        W = rule_for(node).weight_matrix(node, graph)
        pos = rewrite.kept_positions(analysis, keeps, site.tensor)
        if pos is None:
            continue
        g = W.shape[1] // analysis.layouts[site.tensor].channels
        cols = (pos[:, None] * g + np.arange(g)[None, :]).reshape(-1)
        out[site] = (W[:, cols], None)
    return out


class CostModel:
    """Exact multilinear model of MACs or parameters in the groups' removed fractions."""

    def __init__(self, model: onnx.ModelProto, graph: Graph, analysis: Analysis,
                 groups: Sequence[Group], kind: str, shapes: Mapping[str, tuple[int, ...]],
                 base_plan: KeepPlan) -> None:
        self.model, self.graph, self.analysis = model, graph, analysis
        self.kind, self.shapes = kind, shapes
        self.groups = list(groups)
        self.index = {g.name: i for i, g in enumerate(self.groups)}
        self.plain = replace(base_plan, ratio=0.0, round_to=1, auto_round=False, min_keep=1,
                             excluded=frozenset())
        self.full = self.exact({}, self.plain)
        n = len(self.groups)
        self.alpha = np.zeros(n)
        self.beta = np.zeros((n, n))
        probe = {}
        for i, g in enumerate(self.groups):
            u = self._removed(g, 0.5)
            probe[i] = u
            self.alpha[i] = (self.full - self.exact({g.name: 0.5}, self.plain)) / u
        for i, j in self._pairs():
            gi, gj = self.groups[i], self.groups[j]
            both = self.exact({gi.name: 0.5, gj.name: 0.5}, self.plain)
            b = (both - self.full + self.alpha[i] * probe[i] + self.alpha[j] * probe[j]) / (
                probe[i] * probe[j])
            self.beta[i, j] = self.beta[j, i] = b

    def _removed(self, group: Group, ratio: float) -> float:
        plan = replace(self.plain, ratios={group.name: ratio})
        _, quotas, _ = segments_and_quotas(group, plan)
        return 1.0 - float(quotas.sum()) / group.size

    def _pairs(self) -> list[tuple[int, int]]:
        """Pairs of groups whose channel axes meet at a node (input and output)."""
        set_group = {s.id: self.index[g.name] for g in self.groups for s in g.sets}
        pairs: set[tuple[int, int]] = set()
        for node in self.graph.nodes:
            found = set()
            for x in list(node.input) + list(node.output):
                lay = self.analysis.layouts.get(x)
                if lay is None:
                    continue
                for sp in lay.spans:
                    gi = set_group.get(self.analysis.block_set[sp.block])
                    if gi is not None:
                        found.add(gi)
            pairs.update(itertools.combinations(sorted(found), 2))
        return sorted(pairs)

    def count(self, model: onnx.ModelProto) -> int:
        return count_macs(model, self.shapes) if self.kind == "macs" else count_params(model)

    def exact(self, ratios: Mapping[str, float], plan: KeepPlan) -> float:
        """Cost of the model with the given groups pruned as ``plan`` (its rounding) says —
        the first channels of each segment kept, no re-fit (cost does not depend on which)."""
        keeps: dict[int, np.ndarray] = {}
        weights: dict = {}
        plan = replace(plan, ratio=0.0, ratios=dict(ratios))
        for g in self.groups:
            if g.name in ratios and removes_anything(g, plan):
                k = _kept_first(g, plan)
                keeps.update(k)
        for g in self.groups:
            if g.name in ratios:
                weights.update(sliced_weights(self.graph, self.analysis, g, keeps))
        if not keeps:
            return float(self.count(self.model))
        pruned = rewrite.apply(self.model, self.graph, self.analysis, keeps, weights)
        return float(self.count(pruned))

    def predict(self, u: np.ndarray) -> float:
        return float(self.full - self.alpha @ u + 0.5 * u @ self.beta @ u)


# -- sensitivity -------------------------------------------------------------------------------

def _probe_plan(base_plan: KeepPlan, group: Group, keep: float) -> KeepPlan:
    return replace(base_plan, ratio=0.0, ratios={group.name: 1.0 - keep}, round_to=1,
                   auto_round=False, min_keep=1, excluded=frozenset())


def _scaled(probes: Sequence[float], local: Mapping[float, float],
            measured: Mapping[float, float]) -> list[tuple[float, float]]:
    """Whole-model damage at every probe: measured where it was, elsewhere the local error times
    the ratio damage/local error of the measured probes (linear in f between them, constant
    beyond)."""
    fs = sorted(measured)
    ratio = [measured[f] / local[f] if local[f] > 0 else 0.0 for f in fs]
    out = []
    for f in probes:
        if f in measured:
            out.append((f, measured[f]))
        else:
            out.append((f, float(np.interp(f, fs, ratio)) * local[f]))
    return out


def sensitivity(model: onnx.ModelProto, graph: Graph, analysis: Analysis,
                groups: Sequence[tuple[int, Group]], stats: Mapping[ConsumerSite, SiteStats],
                calib: Calibration, indices: np.ndarray, method: str, reweight: bool, seed: int,
                ridge: float | str, base_plan: KeepPlan, batch_size: int = 32,
                progress: Callable[[str], None] | None = None, whole: Sequence[float] = WHOLE,
                paths: dict | None = None) -> dict[str, tuple[tuple[float, float], ...]]:
    """``d_g(f)`` at every probe fraction, for every group (module docstring); the whole model
    is run at the fractions ``whole`` (``PROBES``: measured everywhere, no scaling)."""
    say = progress or (lambda msg: None)
    one_shot = "inchange" if method in INCHANGE else method
    runner = DownstreamRunner(model, calib, indices, graph.elem_types, batch_size)
    ref = [runner.reference[n] for n in runner.names]
    chosen = []  # per group: (probes, local errors, decisions at the measured probes)
    for n, (index, g) in enumerate(groups):
        say(f"selecting group {n + 1}/{len(groups)} '{g.name}' at {len(PROBES)} widths")
        probes = [f for f in PROBES if removes_anything(g, _probe_plan(base_plan, g, f))]
        runs = [f for f in probes if f in whole] or probes[len(probes) // 2:][:1]
        errors, decisions = level_decisions(
            graph, analysis, g, [stats[s] for s in g.consumers],
            [_probe_plan(base_plan, g, f) for f in probes], [f in runs for f in probes],
            one_shot, reweight, seed, index, ridge, paths) if probes else ([], [])
        chosen.append((probes, errors, decisions))

    def variant(d) -> onnx.ModelProto:
        return rewrite.apply(model, graph, analysis, d.set_keeps, d.weights)

    # The tensors entering every group's changed region, captured in one run of the model.
    firsts = [next(d for d in ds if d is not None) for _, _, ds in chosen if ds]
    runner.capture(sorted({t for d in firsts for t in runner.region(variant(d))[1]}))
    out = {}
    for n, ((index, g), (probes, errors, decisions)) in enumerate(zip(groups, chosen)):
        say(f"sensitivity of group {n + 1}/{len(groups)} '{g.name}'")
        measured = {f: damage(ref, runner.outputs(variant(d)))
                    for f, d in zip(probes, decisions) if d is not None}
        out[g.name] = tuple([(1.0, 0.0)] + _scaled(probes, dict(zip(probes, errors)), measured))
    return out


def _damage_curve(points: Sequence[tuple[float, float]]) -> np.ndarray:
    """Damage at keep fractions k/GRID, k = GRID … 1 (index 0 = full), non-increasing in f."""
    fs = np.array([p[0] for p in points])[::-1]
    ds = np.array([p[1] for p in points])[::-1]
    grid = np.arange(GRID, 0, -1) / GRID
    curve = np.interp(grid, fs, ds, left=ds[0] if len(ds) else 0.0)
    # below the smallest probe: extrapolate flat-then-worse — a group never gets cheaper to cut
    return np.maximum.accumulate(curve)


# -- allocation --------------------------------------------------------------------------------

def _predictor(cost: CostModel) -> Callable[[np.ndarray], float]:
    """Predicted cost with ``level[g]`` grid steps of 1/GRID removed from group g."""
    return lambda level: cost.predict(np.asarray(level) / GRID)


def _tables(cost: CostModel, sens: Mapping[str, Sequence[tuple[float, float]]]
            ) -> tuple[np.ndarray, np.ndarray]:
    """Damage per group and grid level (groups × GRID), and each group's deepest level (≥ 1
    channel kept)."""
    curves = np.stack([_damage_curve(sens[g.name]) for g in cost.groups])
    floor = np.array([GRID - max(1, int(np.ceil(GRID / g.size))) for g in cost.groups])
    return curves, floor


def _allocate_levels(cost: CostModel, curves: np.ndarray, floor: np.ndarray, goal: float,
                     allocation: str) -> np.ndarray:
    """Grid levels removed per group with predicted cost ≤ ``goal`` (module docstring)."""
    predicted = _predictor(cost)
    level = np.zeros(len(cost.groups), dtype=np.int64)
    if allocation == "equal-loss":
        eps_values = np.unique(curves)
        lo, hi = 0, len(eps_values) - 1

        def levels(eps: float) -> np.ndarray:
            ok = curves <= eps
            # deepest level whose damage stays within eps (curves are non-decreasing in level)
            return np.minimum(ok.sum(axis=1) - 1, floor)

        if predicted(levels(eps_values[hi])) > goal:
            level = levels(eps_values[hi])
        else:
            while lo < hi:
                mid = (lo + hi) // 2
                if predicted(levels(eps_values[mid])) <= goal:
                    hi = mid
                else:
                    lo = mid + 1
            level = levels(eps_values[lo])
    return _marginal(level, curves, floor, predicted, goal)


def allocate(cost: CostModel, sens: Mapping[str, Sequence[tuple[float, float]]], target: float,
             allocation: str) -> dict[str, float]:
    """Per-group removed fraction meeting ``cost ≤ target·full`` (module docstring)."""
    curves, floor = _tables(cost, sens)
    level = _allocate_levels(cost, curves, floor, target * cost.full, allocation)
    return {g.name: float(lv) / GRID for g, lv in zip(cost.groups, level)}


def _marginal_steps(level: np.ndarray, curves: np.ndarray, floor: np.ndarray,
                    predicted: Callable[[np.ndarray], float]):
    """From ``level``, repeatedly lower by one grid step the group with the smallest damage
    increase per unit of cost removed; yields ``(level, predicted cost)`` after every step until
    no group can be lowered further."""
    level = level.copy()
    now = predicted(level)
    while True:
        best, best_i, best_cost = np.inf, -1, now
        for i in range(len(level)):
            if level[i] >= floor[i]:
                continue
            trial = level.copy()
            trial[i] += 1
            c = predicted(trial)
            saved = now - c
            if saved <= 0:
                continue
            score = (curves[i, level[i] + 1] - curves[i, level[i]]) / saved
            if score < best:
                best, best_i, best_cost = score, i, c
        if best_i < 0:
            return
        level[best_i] += 1
        now = best_cost
        yield level.copy(), now


def _marginal(level: np.ndarray, curves: np.ndarray, floor: np.ndarray,
              predicted: Callable[[np.ndarray], float], goal: float) -> np.ndarray:
    if predicted(level) <= goal:
        return level.copy()
    for level, cost in _marginal_steps(level, curves, floor, predicted):
        if cost <= goal:
            break
    return level


class Planner:
    """The cost model and the sensitivities of a model's groups, measured once (:func:`measure`);
    plans for any target without measuring again (a ``--min-cosine`` search tries several)."""

    def __init__(self, cost: CostModel, sens: Mapping[str, tuple[tuple[float, float], ...]],
                 base_plan: KeepPlan) -> None:
        self.cost, self.sens, self.base_plan = cost, sens, base_plan
        self.names = [g.name for g in cost.groups]
        self.curves, self.floor = _tables(cost, sens)
        self.predicted = _predictor(cost)
        self._opts: list[tuple[np.ndarray, np.ndarray]] | None = None

    def ratios(self, level: np.ndarray) -> dict[str, float]:
        return {n: float(lv) / GRID for n, lv in zip(self.names, level)}

    def allocation(self, level: np.ndarray) -> Allocation:
        """The plan of grid ``level``s, with its exact cost counted on the rewritten model."""
        ratios = self.ratios(level)
        return Allocation(ratios=ratios, sensitivity=self.sens,
                          predicted=self.predicted(level) / self.cost.full,
                          exact=self.cost.exact(ratios, self.base_plan) / self.cost.full)

    def path(self) -> list[np.ndarray]:
        """Nested plans, lightest first: the marginal allocation's steps from the full model down
        to every group's floor (each plan prunes at least as much as the one before)."""
        start = np.zeros(len(self.names), dtype=np.int64)
        return [lv for lv, _ in _marginal_steps(start, self.curves, self.floor, self.predicted)]

    def _fill(self, level: np.ndarray, goal: float, exact: float) -> tuple[np.ndarray, float]:
        """Give back what rounding took beyond the target: while the exact cost stays ≤ ``goal``,
        raise by one grid step the group whose damage falls most per unit of cost added (the
        reverse of the marginal step). The predicted cost, corrected by its last measured
        offset from the exact count, proposes; the exact count decides."""
        level = level.copy()
        refused: set[int] = set()  # groups whose step back the exact count refused at this level
        while True:
            now = self.predicted(level)
            offset = exact - now
            best, best_i = -np.inf, -1
            for i in np.nonzero(level > 0)[0]:
                trial = level.copy()
                trial[i] -= 1
                cost = self.predicted(trial)
                added = cost - now
                if i in refused or added <= 0 or cost + offset > goal:
                    continue
                score = (self.curves[i, level[i]] - self.curves[i, level[i] - 1]) / added
                if score > best:
                    best, best_i = score, i
            if best_i < 0:
                return level, exact
            trial = level.copy()
            trial[best_i] -= 1
            trial_exact = self.cost.exact(self.ratios(trial), self.base_plan)
            if trial_exact > goal:
                refused.add(int(best_i))
                continue
            level, exact, refused = trial, trial_exact, set()

    def _options(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per group, the distinct widths the base plan's rounding allows down to the group's
        floor: (the lightest grid level giving each width, its kept fraction), lightest first."""
        if self._opts is None:
            self._opts = []
            for g, floor in zip(self.cost.groups, self.floor):
                levels, kept, seen = [], [], set()
                for lv in range(int(floor) + 1):
                    plan = replace(self.base_plan, ratio=0.0, ratios={g.name: lv / GRID})
                    q = segments_and_quotas(g, plan)[1]
                    if q.tobytes() not in seen:
                        seen.add(q.tobytes())
                        levels.append(lv)
                        kept.append(float(q.sum()) / g.size)
                self._opts.append((np.array(levels), np.array(kept)))
        return self._opts

    def _rebalance(self, level: np.ndarray, goal: float, exact: float
                   ) -> tuple[np.ndarray, float]:
        """Trade rounded widths between groups: with coarse rounding steps the allocation can
        land far below the target (a group of 16 rounded from 9 channels to 8), and giving back
        single groups (:meth:`_fill`) may not fit. Repeatedly take the move between neighbouring
        rounded widths — one group one width up, optionally another one width down — that lowers
        the predicted damage most (each group's damage read off its curve at the width's kept
        fraction) and spends more of the budget, while the predicted cost, corrected by its
        measured offset, stays ≤ ``goal``; the exact count decides. Stops when no such move is
        accepted. Only moves that give cost back: a trade at equal or lower cost would rely on
        the summed per-group damages alone, which measured worse (digits MobileNet at
        ``--target-macs 0.25``: 50.3 % instead of 66.7 %)."""
        opts = self._options()
        n = len(level)
        frac = np.arange(GRID, 0, -1) / GRID  # keep fraction of each grid level

        def dmg(i: int, k: float) -> float:
            return float(np.interp(k, frac[::-1], self.curves[i][::-1]))

        def at(lv: np.ndarray) -> np.ndarray:  # option index of each group's level
            return np.array([int(np.searchsorted(opts[i][0], lv[i], side="right")) - 1
                             for i in range(n)])

        def removed(idx: np.ndarray) -> np.ndarray:
            return np.array([1.0 - opts[i][1][idx[i]] for i in range(n)])

        idx = at(level)
        for _ in range(4 * n):
            u = removed(idx)
            now_cost = self.cost.predict(u)
            offset = exact - now_cost
            now = [dmg(i, opts[i][1][idx[i]]) for i in range(n)]
            down = {j: dmg(j, opts[j][1][idx[j] + 1]) - now[j] for j in range(n)
                    if idx[j] + 1 < len(opts[j][0])}
            moves = []
            for i in range(n):
                if idx[i] == 0:
                    continue
                gain_i = now[i] - dmg(i, opts[i][1][idx[i] - 1])
                for j in [-1] + [j for j in down if j != i]:
                    gain = gain_i - (down[j] if j >= 0 else 0.0)
                    if gain <= 1e-12:
                        continue
                    trial, ut = idx.copy(), u.copy()
                    trial[i] -= 1
                    ut[i] = 1.0 - opts[i][1][trial[i]]
                    if j >= 0:
                        trial[j] += 1
                        ut[j] = 1.0 - opts[j][1][trial[j]]
                    c = self.cost.predict(ut)
                    if c > now_cost and c + offset <= goal:
                        moves.append((-gain, i, j, trial))
            moves.sort(key=lambda m: (m[0], m[1], m[2]))
            for *_, trial in moves[:3]:  # the exact count decides (a few tries per round)
                lv = np.array([opts[i][0][trial[i]] for i in range(n)])
                trial_exact = self.cost.exact(self.ratios(lv), self.base_plan)
                if exact < trial_exact <= goal:
                    idx, exact = trial, trial_exact
                    break
            else:
                break
        final = np.array([opts[i][0][idx[i]] for i in range(n)])
        # a group whose width did not change keeps its level (same model, same ratio reported)
        keep = at(level) == idx
        return np.where(keep, level, final), exact

    def plan(self, fraction: float, allocation: str) -> Allocation:
        """Per-group removed fractions whose exact cost is ≤ ``fraction`` of the original."""
        cost, predicted = self.cost, self.predicted
        goal = fraction * cost.full
        level = _allocate_levels(cost, self.curves, self.floor, goal, allocation)
        # The exact count includes ceil rounding, --round-to and --min-keep: tighten until met.
        exact = cost.exact(self.ratios(level), self.base_plan)
        for _ in range(50):
            if exact <= goal:
                break
            aim = predicted(level) - (exact - goal) - 1e-9 * cost.full
            new = _marginal(level, self.curves, self.floor, predicted, aim)
            if np.array_equal(new, level):
                new = _marginal(level, self.curves, self.floor, predicted,
                                predicted(level) - 1e-6 * cost.full)
                if np.array_equal(new, level):
                    break
            level = new
            exact = cost.exact(self.ratios(level), self.base_plan)
        if exact > goal * 1.0000001:
            raise OptionError(f"the {cost.kind} target {fraction:g} cannot be reached: "
                              f"pruning every group as far as allowed leaves "
                              f"{exact / cost.full:.3f} of the original (lower --min-keep, "
                              "--round-to or --exclude, or raise the target)")
        level, exact = self._fill(level, goal, exact)
        level, exact = self._rebalance(level, goal, exact)
        return Allocation(ratios=self.ratios(level), sensitivity=self.sens,
                          predicted=predicted(level) / cost.full, exact=exact / cost.full)


def measure(model: onnx.ModelProto, graph: Graph, analysis: Analysis,
            stats: Mapping[ConsumerSite, SiteStats], calib: Calibration, indices: np.ndarray,
            kind: str, base_plan: KeepPlan, method: str, reweight: bool, seed: int,
            ridge: float | str, shapes: Mapping[str, tuple[int, ...]], batch_size: int = 32,
            progress: Callable[[str], None] | None = None, paths: dict | None = None) -> Planner:
    """Measure the cost model and every group's sensitivity (module docstring); ``paths``
    keeps the groups' greedy paths for the pruning that follows (:func:`level_decisions`)."""
    say = progress or (lambda msg: None)
    probe_plan = replace(base_plan, ratio=0.5)
    groups = [(i, g) for i, g in enumerate(analysis.groups)
              if g.name not in base_plan.excluded and removes_anything(g, probe_plan)]
    if not groups:
        raise OptionError("no prunable group: a budget cannot be met (see 'onnxprune inspect')")
    say(f"measuring the cost model of {len(groups)} group(s)")
    cost = CostModel(model, graph, analysis, [g for _, g in groups], kind, shapes, base_plan)
    if cost.full <= 0:
        raise OptionError(f"the model's {'MACs' if kind == 'macs' else 'parameters'} cannot be "
                          "counted (no Conv/Gemm/MatMul of known shape): a budget on them cannot "
                          "be met; use --target-params or --ratio")
    sens = sensitivity(model, graph, analysis, groups, stats, calib, indices, method, reweight,
                       seed, ridge, base_plan, batch_size, progress, paths=paths)
    return Planner(cost, sens, base_plan)

