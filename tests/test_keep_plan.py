"""Kept widths: ``--round-to``, ``--min-keep``, ``--exclude``; PFP sampling (``--method sampling``)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

import onnxprune
from onnxprune.select import KeepPlan, segment_sizes
from onnxprune.solvers import pfp_sensitivity, sample_keys
from onnxprune.solvers.problem import keep_count
from helpers import CALIB_FLAT, CALIB_IMG, MLP, MODELS, RESNET, full_check, serialized
from test_cli import run_cli

INCEPTION = MODELS / "inception_legacy.onnx"
MOBILENET = MODELS / "mobilenet_dynamo.onnx"


@pytest.mark.parametrize("K", [1, 4, 8])
@pytest.mark.parametrize("min_keep", [1, 5, 12])
def test_segment_keep_rounding_rule(K, min_keep):
    plan = KeepPlan(round_to=K, min_keep=min_keep)
    for size in range(1, 70):
        for ratio in (0.1, 0.25, 0.5, 0.75, 0.93):
            k = plan.segment_keep(size, ratio)
            assert 1 <= k <= size
            assert k >= min(min_keep, size)
            if k < size:
                assert k % K == 0
                # nearest admissible multiple of K to the unrounded count
                raw = max(keep_count(size, ratio), min(min_keep, size))
                cands = [m for m in range(K, size, K) if m >= min(min_keep, size)]
                assert abs(k - raw) <= min(abs(c - raw) for c in cands) + 1e-9
            elif K > 1 and size > K:  # whole: no admissible multiple of K is nearer
                raw = max(keep_count(size, ratio), min(min_keep, size))
                cands = [m for m in range(K, size, K) if m >= min(min_keep, size)]
                assert all(abs(c - raw) >= K / 2 for c in cands)
    assert plan.segment_keep(10, 0.0) == 10


@pytest.mark.parametrize("path,ratio", [(INCEPTION, 0.25), (MOBILENET, 0.85), (RESNET, 0.6)])
def test_round_to_8_gives_multiples_of_8(path, ratio):
    res = onnxprune.prune(path, CALIB_IMG, ratio=ratio, round_to=8)
    full_check(res.model)
    from onnxprune.analysis import analyze
    from onnxprune.graph import Graph
    from onnxprune.passes import NormalizePass
    orig = analyze(Graph(NormalizePass()(onnx.load(path)).model))
    kept = {g.name: g.kept for g in res.report.groups}
    for g in orig.groups:
        if not g.prunable:
            continue
        # every producer's (segment's) width is a multiple of 8 or untouched
        final = analyze(Graph(res.model))
        now = next(x for x in final.groups if x.name == g.name)
        for before, after in zip(segment_sizes(g), segment_sizes(now)):
            assert after % 8 == 0 or after == before, (g.name, before, after)
        assert kept[g.name] == now.size
    # output convs of the pruned model: out-channel counts are multiples of 8 or unchanged
    assert res.report.round_to == 8


def test_min_keep_and_exclude_by_node_and_group():
    res = onnxprune.prune(RESNET, CALIB_IMG, ratio=0.93, min_keep=6)
    assert all(g.kept >= 6 for g in res.report.groups if g.prunable)
    groups = [g for g in res.report.groups if g.prunable]
    first, second = groups[0], groups[1]
    node = second.producers[0]
    ex = onnxprune.prune(RESNET, CALIB_IMG, ratio=0.5, exclude=[first.name, node])
    by = {g.name: g for g in ex.report.groups}
    assert by[first.name].kept == by[first.name].total
    assert by[second.name].kept == by[second.name].total
    assert by[first.name].reason == "excluded by --exclude"
    assert sorted(ex.report.exclude) == sorted({first.name, second.name})
    others = [g for g in ex.report.groups if g.prunable and g.name not in ex.report.exclude]
    assert others and all(g.kept < g.total for g in others)
    # excluded layers keep their weights exactly: the producer of an excluded group
    assert ex.report.params_after > onnxprune.prune(RESNET, CALIB_IMG, ratio=0.5).report.params_after


def test_exclude_unknown_name_is_one_line_exit_2(tmp_path):
    out = tmp_path / "o.onnx"
    proc = run_cli("prune", RESNET, out, "--calib", CALIB_IMG, "--exclude", "no_such_node",
                   cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "no_such_node" in proc.stderr
    assert "inspect" in proc.stderr and not out.exists()


@pytest.mark.parametrize("args", [["--round-to", "0"], ["--steps", "0"], ["--min-keep", "x"],
                                  ["--target-macs", "0"], ["--target-params", "1.5"],
                                  ["--target-macs", "0.5", "--ratio", "0.3"],
                                  ["--allocation", "best"]])
def test_bad_new_options_exit_2(args, tmp_path):
    out = tmp_path / "o.onnx"
    proc = run_cli("prune", RESNET, out, "--calib", CALIB_IMG, *args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("onnxprune: error:") and proc.stderr.count("\n") == 1
    assert not out.exists()


def test_cli_budget_round_to_steps_report(tmp_path):
    out, rep = tmp_path / "o.onnx", tmp_path / "r.json"
    proc = run_cli("prune", INCEPTION, out, "--calib", CALIB_IMG, "--target-macs", "0.5",
                   "--round-to", "4", "--steps", "2", "--method", "seq", "--report", rep,
                   "-q", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    d = json.loads(rep.read_text())
    assert d["budget"]["kind"] == "macs" and d["steps"] == 2 and d["round_to"] == 4
    assert d["macs_after"] <= 0.5 * d["macs_before"]
    assert 0 < d["ratio"] < 1  # the overall fraction of prunable channels removed
    full_check(onnx.load(out))


def test_pfp_sensitivity_equals_brute_force():
    rng = np.random.default_rng(0)
    C, g, m, r = 5, 3, 4, 7
    B = np.maximum(rng.normal(size=(r, C * g)), 0) * rng.normal(size=(1, C * g))
    W = rng.normal(size=(m, C * g))
    got = pfp_sensitivity(B, W, C, g, chunk=3)
    want = np.zeros(C)
    for row in range(r):
        for i in range(m):
            contrib = np.array([[W[i, c * g + j] * B[row, c * g + j] for j in range(g)]
                                for c in range(C)])
            pos = np.maximum(contrib, 0).sum(1)
            neg = np.maximum(-contrib, 0).sum(1)
            for part in (pos, neg):
                if part.sum() > 0:
                    want = np.maximum(want, part / part.sum())
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)


def test_sample_keys_draw_proportionally_to_scores():
    p = np.array([0.6, 0.3, 0.1, 0.0])
    firsts = np.bincount([int(np.argmax(sample_keys(p, s))) for s in range(4000)], minlength=4)
    np.testing.assert_allclose(firsts / 4000, p, atol=0.03)
    assert firsts[3] == 0


@pytest.mark.parametrize("path,calib,reweight", [(MLP, CALIB_FLAT, True), (RESNET, CALIB_IMG, True),
                                                 (RESNET, CALIB_IMG, False)])
def test_sampling_method_runs_and_is_seeded(path, calib, reweight):
    a = onnxprune.prune(path, calib, ratio=0.5, method="sampling", reweight=reweight, seed=1)
    b = onnxprune.prune(path, calib, ratio=0.5, method="sampling", reweight=reweight, seed=1)
    c = onnxprune.prune(path, calib, ratio=0.5, method="sampling", reweight=reweight, seed=2)
    full_check(a.model)
    assert serialized(a.model) == serialized(b.model)
    assert serialized(a.model) != serialized(c.model)
    assert a.report.method == "sampling"
