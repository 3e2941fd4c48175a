"""Budgets (``--target-macs`` / ``--target-params``): the cost model, the allocation, the API.

The cost model must equal MACs/parameters counted on rewritten models; the allocators are compared
with exhaustive search on small synthetic problems; the API must land on the target.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import onnxprune
from onnxprune import budget
from onnxprune.analysis import analyze
from onnxprune.errors import OptionError
from onnxprune.graph import Graph
from onnxprune.passes import NormalizePass
from onnxprune.select import KeepPlan
from helpers import CALIB_IMG, MODELS, RESNET, full_check


def _cost_model(path, kind):
    import onnx
    m, _ = NormalizePass()(onnx.load(path)).model, None
    g = Graph(m)
    a = analyze(g)
    groups = [x for x in a.groups if x.prunable]
    return budget.CostModel(m, g, a, groups, kind, {"input": (1, 1, 8, 8)}, KeepPlan()), groups


@pytest.mark.parametrize("name", ["resnet_legacy", "mobilenet_dynamo", "inception_legacy"])
@pytest.mark.parametrize("kind", ["macs", "params"])
def test_cost_model_matches_exact_counts(name, kind):
    cost, groups = _cost_model(MODELS / f"{name}.onnx", kind)
    rng = np.random.default_rng(0)
    for _ in range(4):
        # ratios whose kept counts are exact on these widths (multiples of 8 channels)
        r = rng.choice([0.0, 0.25, 0.5, 0.75], size=len(groups))
        ratios = {g.name: float(x) for g, x in zip(groups, r) if x > 0}
        u = np.array([cost._removed(g, x) if x > 0 else 0.0 for g, x in zip(groups, r)])
        exact = cost.exact(ratios, cost.plain)
        assert cost.predict(u) == pytest.approx(exact, rel=0.02)
    assert cost.predict(np.zeros(len(groups))) == pytest.approx(cost.full)


class _FakeCost:
    """Additive (β = 0) or bilinear synthetic cost for allocator tests."""

    def __init__(self, alpha, beta=None, sizes=None):
        self.alpha = np.asarray(alpha, float)
        self.beta = np.zeros((len(alpha),) * 2) if beta is None else np.asarray(beta, float)
        self.full = 100.0
        self.groups = [type("G", (), {"name": f"g{i}", "size": s})()
                       for i, s in enumerate(sizes or [64] * len(alpha))]

    def predict(self, u):
        return float(self.full - self.alpha @ u + 0.5 * u @ self.beta @ u)


def _sens(curve_fn, n):
    return {f"g{i}": tuple((f, curve_fn(i, f)) for f in (1.0,) + budget.PROBES) for i in range(n)}


def _levels(alloc, n):
    return np.array([round(alloc[f"g{i}"] * budget.GRID) for i in range(n)])


def test_marginal_allocation_is_optimal_for_convex_damage_and_additive_cost():
    # convex damage curves d_i(f) = c_i (1 - f)^2 on the probes, additive cost: greedy by
    # marginal damage per cost is optimal up to one grid step; compare with exhaustive search.
    c = [1.0, 3.0, 0.5]
    sens = _sens(lambda i, f: c[i] * (1 - f) ** 2, 3)
    cost = _FakeCost([30.0, 40.0, 20.0])
    target = 0.6
    lv = _levels(budget.allocate(cost, sens, target, "marginal"), 3)
    curves = np.stack([budget._damage_curve(sens[f"g{i}"]) for i in range(3)])
    assert cost.predict(lv / budget.GRID) <= target * cost.full + 1e-9
    best = np.inf
    top = budget.GRID - 2
    for levels in itertools.product(range(top + 1), repeat=3):
        levels = np.array(levels)
        if cost.predict(levels / budget.GRID) <= target * cost.full + 1e-9:
            best = min(best, curves[np.arange(3), levels].sum())
    got = curves[np.arange(3), lv].sum()
    assert got <= best * 1.05 + 1e-9


def test_equal_loss_minimises_the_largest_group_damage():
    rng = np.random.default_rng(3)
    scale = rng.uniform(0.2, 2.0, size=3)
    sens = _sens(lambda i, f: scale[i] * (1 - f) ** (1 + i), 3)
    cost = _FakeCost([30.0, 25.0, 35.0], beta=[[0, 5, 0], [5, 0, 0], [0, 0, 0]])
    target = 0.55
    lv = _levels(budget.allocate(cost, sens, target, "equal-loss"), 3)
    curves = np.stack([budget._damage_curve(sens[f"g{i}"]) for i in range(3)])
    assert cost.predict(lv / budget.GRID) <= target * cost.full + 1e-9
    got = curves[np.arange(3), lv].max()
    best = min(curves[np.arange(3), np.array(levels)].max()
               for levels in itertools.product(range(budget.GRID - 1), repeat=3)
               if cost.predict(np.array(levels) / budget.GRID) <= target * cost.full + 1e-9)
    assert got == pytest.approx(best)


def test_damage_curve_is_monotone_and_interpolates():
    pts = ((1.0, 0.0), (0.875, 0.1), (0.75, 0.05), (0.5, 0.4), (0.125, 0.9))
    c = budget._damage_curve(pts)
    assert c[0] == 0.0 and np.all(np.diff(c) >= 0)
    assert c[4] == pytest.approx(0.1)  # f = 0.875 (never below an earlier, larger damage)
    assert c[16] == pytest.approx(0.4)  # f = 0.5


@pytest.mark.parametrize("allocation", ["marginal", "equal-loss"])
def test_target_macs_lands_on_the_target(allocation):
    res = onnxprune.prune(RESNET, CALIB_IMG, target_macs=0.5, allocation=allocation)
    rep = res.report
    full_check(res.model)
    frac = rep.macs_after / rep.macs_before
    assert 0.47 <= frac <= 0.5
    d = rep.to_dict()
    assert d["budget"]["kind"] == "macs" and d["budget"]["target"] == 0.5
    assert d["budget"]["allocation"] == allocation
    assert d["budget"]["planned"] == pytest.approx(frac, abs=1e-6)
    pruned = [g for g in d["groups"] if g["prunable"]]
    assert all("sensitivity" in g and g["sensitivity"][0] == [1.0, 0.0] for g in pruned)
    assert all(0 <= g["ratio"] < 1 for g in pruned)
    assert len({g["kept"] / g["total"] for g in pruned}) > 1  # non-uniform


def test_target_params_with_rounding_and_min_keep():
    res = onnxprune.prune(MODELS / "inception_dynamo.onnx", CALIB_IMG, target_params=0.5,
                          round_to=8, min_keep=8)
    rep = res.report
    frac = rep.params_after / rep.params_before
    # met from below; widths move in steps of 8 channels, and what rounding took beyond the
    # target is given back (Planner._fill): measured 0.482
    assert 0.47 <= frac <= 0.5
    for g in rep.groups:
        if g.prunable:
            assert g.kept >= 8 and (g.kept % 8 == 0 or g.kept == g.total)


def test_unreachable_and_conflicting_budgets_are_option_errors():
    with pytest.raises(OptionError, match="cannot be reached"):
        onnxprune.prune(RESNET, CALIB_IMG, target_macs=0.01, min_keep=32)
    with pytest.raises(OptionError, match="either --ratio"):
        onnxprune.prune(RESNET, CALIB_IMG, target_macs=0.5, ratio=0.3)
    with pytest.raises(OptionError, match="not both"):
        onnxprune.prune(RESNET, CALIB_IMG, target_macs=0.5, target_params=0.5)
    with pytest.raises(OptionError, match=r"\(0, 1\]"):
        onnxprune.prune(RESNET, CALIB_IMG, target_macs=1.5)
    with pytest.raises(OptionError, match="allocation"):
        onnxprune.prune(RESNET, CALIB_IMG, target_macs=0.5, allocation="best")


def test_macs_counted_where_only_onnxruntime_knows_the_shapes():
    """The legacy exporter's attention reshapes are computed at run time, so ONNX shape
    inference leaves some MatMul shapes unknown (before: 6 % of the ViT's MACs were missed, and
    all-MiniLM-L6-v2 counted 0 MACs). Both exports of the same network count the same MACs."""
    import onnx
    from onnxprune.metrics import count_macs
    shapes = {"input": (1, 1, 8, 8)}
    legacy = count_macs(onnx.load(MODELS / "vit_legacy.onnx"), shapes)
    dynamo = count_macs(onnx.load(MODELS / "vit_dynamo.onnx"), shapes)
    assert legacy == dynamo > 0


def _spy(monkeypatch, step: str) -> dict:
    """Record the input and output of one of the Planner's rounding steps (``_fill`` or
    ``_rebalance``) during a prune."""
    seen = {}
    real = getattr(budget.Planner, step)

    def spy(self, level, goal, exact):
        out = real(self, level, goal, exact)
        seen.update(planner=self, before=level.copy(), after=out[0].copy(), goal=goal,
                    exact=out[1])
        return out

    monkeypatch.setattr(budget.Planner, step, spy)
    return seen


def test_budget_gives_back_what_rounding_took(monkeypatch):
    """After the fill, no group can keep one more grid step without breaking the budget: every
    single step back is measured (exact count) and exceeds the target."""
    seen = _spy(monkeypatch, "_fill")
    res = onnxprune.prune(MODELS / "inception_dynamo.onnx", CALIB_IMG, target_params=0.5,
                          round_to=8, min_keep=8)
    p, after, goal = seen["planner"], seen["after"], seen["goal"]
    assert seen["exact"] <= goal and np.all(after <= seen["before"])
    # the exact count slices without re-fitting; the re-fit may add a bias vector or two
    assert res.report.params_after == pytest.approx(seen["exact"], rel=2e-3)
    for i in np.nonzero(after > 0)[0]:
        trial = after.copy()
        trial[i] -= 1
        assert p.cost.exact(p.ratios(trial), p.base_plan) > goal


def test_budget_trades_rounded_widths_between_groups(monkeypatch):
    """With coarse rounding (steps of 16 channels), giving back single groups leaves the budget
    short (ResNet at --target-macs 0.75: 0.727 before the trade was added). Trading widths —
    one group a rounded step up, another one down — lands closer, lowers the predicted damage,
    and afterwards no single or paired move that lowers it and spends more of the budget fits
    the target (exact counts)."""
    seen = _spy(monkeypatch, "_rebalance")
    res = onnxprune.prune(RESNET, CALIB_IMG, target_macs=0.75, round_to=16)
    rep = res.report
    full_check(res.model)
    frac = rep.macs_after / rep.macs_before
    assert 0.74 <= frac <= 0.75
    for g in rep.groups:
        if g.prunable:
            assert g.kept % 16 == 0 or g.kept == g.total
    p, goal = seen["planner"], seen["goal"]
    opts = p._options()
    frac_grid = np.arange(budget.GRID, 0, -1) / budget.GRID

    def widths(level):
        return [int(np.searchsorted(o[0], lv, side="right")) - 1 for o, lv in zip(opts, level)]

    def total_damage(idx):
        return sum(float(np.interp(opts[i][1][k], frac_grid[::-1], p.curves[i][::-1]))
                   for i, k in enumerate(idx))

    before, after = widths(seen["before"]), widths(seen["after"])
    assert after != before  # the trade happened here
    assert total_damage(after) < total_damage(before)
    assert seen["exact"] <= goal
    n = len(after)
    for i in range(n):
        for j in [None] + list(range(n)):
            trial = list(after)
            if trial[i] == 0 or j == i:
                continue
            trial[i] -= 1
            if j is not None:
                if trial[j] + 1 >= len(opts[j][0]):
                    continue
                trial[j] += 1
            if total_damage(trial) < total_damage(after) - 1e-12:
                lv = np.array([opts[k][0][w] for k, w in enumerate(trial)])
                c = p.cost.exact(p.ratios(lv), p.base_plan)
                assert c > goal or c <= seen["exact"]
