"""Fidelity targets (``--min-cosine``), the fast budget sensitivities, and output parts.

* ``min_cosine=C`` must return a model whose held-out worst cosine — measured here again,
  independently of the report — is ≥ C, the deepest one the search found, and refuse a target
  that even the lightest pruning misses (API: OptionError; CLI: exit 2, one line, no file).
* The fast sensitivity (whole-model runs at 3 keep fractions, the rest scaled from local errors)
  must rank groups as running the whole model at every fraction does.
* An output that concatenates quantities of different scales is split into parts, and neither
  the damage nor the fidelity lets the large part hide the small one; nor may one channel of a
  few-channel map (a background map near 1) hide another (a sparse face map).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from scipy.stats import spearmanr

import onnxprune
from onnxprune import budget, calibrate
from onnxprune.analysis import analyze
from onnxprune.errors import OptionError
from onnxprune.graph import Graph
from onnxprune.modelio import load_calibration, load_model
from onnxprune.passbase import run_passes
from onnxprune.passes import NormalizePass
from onnxprune.select import KeepPlan
from onnxprune.verify import damage, fidelity, output_parts
from helpers import CALIB_IMG, MODELS, RESNET, full_check, run

MOBILENET = MODELS / "mobilenet_legacy.onnx"


def _held_out_cosines(original, pruned, x: np.ndarray) -> np.ndarray:
    a = run(original, {"input": x})[0].astype(np.float64)
    b = run(pruned, {"input": x})[0].astype(np.float64)
    return np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _held_out_worst_cosine(original, pruned, x: np.ndarray) -> float:
    return float(_held_out_cosines(original, pruned, x).mean())


@pytest.mark.parametrize("target", [0.99, 0.95])
def test_min_cosine_meets_its_target(target):
    res = onnxprune.prune(MOBILENET, CALIB_IMG, min_cosine=target)
    full_check(res.model)
    r = res.report
    b = r.budget
    assert b["kind"] == "min_cosine" and b["target"] == target
    chosen = [p for p in b["points"] if p["chosen"]]
    assert len(chosen) == 1 and chosen[0]["meets_target"]
    # the report's figure is the held-out cosine, recomputed here on the same samples
    x = np.load(CALIB_IMG)["input"]
    _, hold = onnxprune.api.split_samples(len(x), 0.2, 0)
    assert _held_out_worst_cosine(MOBILENET, res.model, x[hold]) == pytest.approx(
        r.fidelity["logits"].cosine, abs=1e-9)
    # the search holds a lower confidence bound (mean − Z standard errors) to the target
    f = r.fidelity["logits"]
    assert f.cosine - onnxprune.api.CONFIDENCE_Z * f.cosine_se >= target
    cos = _held_out_cosines(MOBILENET, res.model, x[hold])
    assert f.cosine_se == pytest.approx(cos.std(ddof=1) / np.sqrt(len(cos)), rel=1e-6)
    assert chosen[0]["macs_fraction"] == pytest.approx(r.macs_after / r.macs_before, abs=1e-6)
    assert r.macs_after < r.macs_before
    # every passing point is at least as heavy as the chosen one (it is the deepest found)
    passing = [p["macs_fraction"] for p in b["points"] if p["meets_target"]]
    assert min(passing) == pytest.approx(chosen[0]["macs_fraction"])
    failing = [p["macs_fraction"] for p in b["points"] if not p["meets_target"]]
    assert all(f < chosen[0]["macs_fraction"] for f in failing)


def test_min_cosine_searches_between_rounded_plans(monkeypatch):
    """With coarse rounding (steps of 16 channels) neighbouring plans of the allocation path can
    be far apart in MACs; the search then tries the budget's own (filled, traded) plans between
    them. On ResNet it finds a smaller model than the path alone offers, still meeting the
    target, with the widths rounded as asked."""
    from onnxprune import api
    res = onnxprune.prune(RESNET, CALIB_IMG, min_cosine=0.99, round_to=16)
    r = res.report
    pts = r.budget["points"]
    chosen = [p for p in pts if p["chosen"]]
    assert len(chosen) == 1 and chosen[0]["cost_target"] is not None
    c = chosen[0]["macs_fraction"]
    assert c == pytest.approx(r.macs_after / r.macs_before, abs=1e-6)
    assert chosen[0]["cosine_bound"] >= 0.99
    on_path = [p for p in pts if p["step"] is not None]
    assert max(p["macs_fraction"] for p in on_path if not p["meets_target"]) < c
    assert c < min(p["macs_fraction"] for p in on_path if p["meets_target"])
    for g in r.groups:
        if g.prunable:
            assert g.kept % 16 == 0 or g.kept == g.total
    monkeypatch.setattr(api, "REFINE_STEPS", 0)
    path_only = onnxprune.prune(RESNET, CALIB_IMG, min_cosine=0.99, round_to=16).report
    assert r.macs_after < path_only.macs_after
    assert all(p.get("cost_target") is None for p in path_only.budget["points"])


def test_looser_target_gives_a_smaller_model():
    tight = onnxprune.prune(MOBILENET, CALIB_IMG, min_cosine=0.995).report
    loose = onnxprune.prune(MOBILENET, CALIB_IMG, min_cosine=0.9).report
    assert loose.macs_after < tight.macs_after
    assert tight.fidelity["logits"].cosine >= 0.995


def test_min_cosine_with_asym_prunes_the_chosen_plan_with_asym():
    res = onnxprune.prune(MOBILENET, CALIB_IMG, min_cosine=0.98, method="asym")
    pts = res.report.budget["points"]
    chosen = [p for p in pts if p["chosen"]]
    assert len(chosen) == 1 and chosen[0]["meets_target"]
    # the plan found by the one-shot bisection was also pruned with asym; the closer one is kept
    step = chosen[0]["step"]
    pair = {p["method"]: p["cosine_bound"] for p in pts if p["step"] == step}
    assert set(pair) == {"inchange", "asym"}
    assert chosen[0]["cosine_bound"] == max(pair.values())
    assert res.report.fidelity["logits"].cosine >= 0.98


@pytest.mark.parametrize("method", ["asym", "seq"])
def test_sequential_methods_never_lose_to_the_one_shot_fit(method):
    """The safeguard keeps the sequential model only when it is at least as close to the
    original on the held-out samples as the one-shot model with the same widths."""
    for name, ratio in (("mobilenet_legacy", 0.75), ("inception_legacy", 0.5)):
        path = MODELS / f"{name}.onnx"
        one = onnxprune.prune(path, CALIB_IMG, ratio=ratio, method="inchange").report
        res = onnxprune.prune(path, CALIB_IMG, ratio=ratio, method=method)
        r = res.report
        sg = r.safeguard
        assert sg["method"] == method
        assert sg["inchange_worst_cosine"] == pytest.approx(one.fidelity["logits"].cosine)
        assert r.fidelity["logits"].cosine == pytest.approx(
            max(sg["worst_cosine"], sg["inchange_worst_cosine"]))
        assert r.fidelity["logits"].cosine >= one.fidelity["logits"].cosine - 1e-12
        assert sg["used"] == (method if sg["worst_cosine"] >= sg["inchange_worst_cosine"]
                              else "inchange")
        assert [g.kept for g in r.groups] == [g.kept for g in one.groups]
    # one of the two cases uses each fit: the safeguard is not a constant
    assert onnxprune.prune(MOBILENET, CALIB_IMG, ratio=0.75, method="asym").report.safeguard[
        "used"] == "asym"


def test_impossible_target_is_refused(tmp_path):
    with pytest.raises(OptionError, match="min-cosine .* cannot be met"):
        onnxprune.prune(MOBILENET, CALIB_IMG, min_cosine=0.999999999)
    out = tmp_path / "out.onnx"
    p = subprocess.run([sys.executable, "-m", "onnxprune.cli", "prune", str(MOBILENET), str(out),
                        "--calib", str(CALIB_IMG), "--min-cosine", "0.999999999"],
                       capture_output=True, text=True)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines()[-1].startswith("onnxprune: error: --min-cosine")
    assert "Traceback" not in p.stderr
    assert not out.exists()


@pytest.mark.parametrize("kwargs", [{"ratio": 0.5}, {"target_macs": 0.5}, {"head_ratio": 0.2}])
def test_min_cosine_is_exclusive(kwargs):
    with pytest.raises(OptionError, match="either --min-cosine"):
        onnxprune.prune(MOBILENET, CALIB_IMG, min_cosine=0.99, **kwargs)


@pytest.mark.parametrize("bad", [1.0, 1.5, float("nan"), "0.9"])
def test_min_cosine_range(bad):
    with pytest.raises(OptionError, match="--min-cosine must be"):
        onnxprune.prune(MOBILENET, CALIB_IMG, min_cosine=bad)


@pytest.mark.parametrize("name", ["mobilenet_legacy", "inception_legacy"])
def test_fast_sensitivity_ranks_groups_like_whole_model_runs(name):
    m = run_passes([NormalizePass()], load_model(MODELS / f"{name}.onnx").model)[0]
    cal = load_calibration(CALIB_IMG, m, "auto")
    g = Graph(m)
    an = analyze(g)
    groups = [(i, x) for i, x in enumerate(an.groups) if x.prunable]
    sites = [s for _, x in groups for s in x.consumers]
    idx = np.arange(200)
    stats = dict(zip(sites, calibrate.collect(m, g, cal, idx, sites, 0)))
    args = (m, g, an, groups, stats, cal, idx[:64], "inchange", True, 0, 0.0, KeepPlan())
    fast = budget.sensitivity(*args)
    full = budget.sensitivity(*args, whole=budget.PROBES)
    for f in (0.875, 0.625, 0.375):  # fractions where the fast curve is scaled, not measured
        a = [dict(fast[x.name])[f] for _, x in groups]
        b = [dict(full[x.name])[f] for _, x in groups]
        assert spearmanr(a, b)[0] >= 0.95, (f, a, b)
    for f in budget.WHOLE:  # measured in both
        for _, x in groups:
            assert dict(fast[x.name])[f] == pytest.approx(dict(full[x.name])[f], rel=1e-9)


def test_budget_collects_statistics_once(monkeypatch):
    calls = []
    real = calibrate.collect

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(calibrate, "collect", counting)
    import onnxprune.passes.prune as prune_pass
    monkeypatch.setattr(prune_pass.calibrate, "collect", counting)
    res = onnxprune.prune(MOBILENET, CALIB_IMG, target_macs=0.6)
    assert res.report.macs_after <= 0.6 * res.report.macs_before
    assert len(calls) == 1


# -- output parts --------------------------------------------------------------------------------

def _yolo_like(n=16, anchors=50, seed=0):
    """[n, 4 + 80, anchors]: box coordinates in pixels beside class scores in (0, 1)."""
    rng = np.random.default_rng(seed)
    boxes = rng.uniform(0, 640, (n, 4, anchors))
    scores = rng.uniform(0, 1, (n, 80, anchors)) * 10 ** rng.uniform(-3, 0, (1, 80, 1))
    return np.concatenate([boxes, scores], axis=1)


def test_output_parts_split_a_detector_head():
    y = _yolo_like()
    scale = np.sqrt(np.mean(y ** 2, axis=(0, 2)))
    parts = output_parts(scale)
    assert [p.tolist() for p in parts] == [[0, 1, 2, 3], list(range(4, 84))]
    # uniform scales (logits, embeddings): one part
    assert len(output_parts(np.random.default_rng(0).uniform(0.5, 2.0, 1000))) == 1
    # a dead feature joins the smallest part; tiny outputs are one part
    s = np.r_[scale, 0.0]
    assert output_parts(s)[-1][-1] == 84
    assert len(output_parts(np.array([1.0, 1e-6]))) == 1


def test_damage_sees_the_small_part():
    y = _yolo_like()
    hurt_scores = y.copy()
    hurt_scores[:, 4:] = 0.0  # class scores lost entirely
    hurt_boxes = y.copy()
    hurt_boxes[:, :4] *= 1.01  # boxes off by 1 %
    # plain relative error barely notices the lost scores; the part-balanced damage does
    plain = np.sum((hurt_scores - y) ** 2) / np.sum(y ** 2)
    assert plain < 1e-3
    assert damage([y], [hurt_scores]) == pytest.approx(0.5, rel=1e-9)  # mean of (0, 1)
    assert damage([y], [hurt_boxes]) == pytest.approx(0.5 * 1e-4, rel=1e-6)


def test_fidelity_reports_parts_and_their_worst_cosine(tmp_path):
    """A model whose single output concatenates a large and a small part: pruning that ruins
    the small part shows in its part cosine and in worst_cosine, not in the whole output's."""
    from onnx import TensorProto, helper
    rng = np.random.default_rng(0)
    big = rng.standard_normal((4, 8)).astype(np.float32) * 1000
    small = rng.standard_normal((4, 6)).astype(np.float32)

    def model(wsmall):
        g = helper.make_graph(
            [helper.make_node("MatMul", ["x", "wb"], ["b"]),
             helper.make_node("MatMul", ["x", "ws"], ["s"]),
             helper.make_node("Concat", ["b", "s"], ["y"], axis=1)],
            "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 14])],
            [onnx.numpy_helper.from_array(big, "wb"), onnx.numpy_helper.from_array(wsmall, "ws")])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])

    original, broken = model(small), model(-small)
    x = rng.standard_normal((40, 4)).astype(np.float32)
    cal = load_calibration({"x": x}, original, "none")
    fid = fidelity(original, broken, cal, np.arange(40))["y"]
    assert fid.cosine > 0.999
    assert len(fid.parts) == 2
    assert fid.parts[0].features == ((0, 8),) and fid.parts[1].features == ((8, 14),)
    assert fid.parts[1].cosine == pytest.approx(-1.0, abs=1e-6)
    assert fid.worst_cosine == pytest.approx(-1.0, abs=1e-6)
    assert fid.to_dict()["parts"][1]["features"] == [[8, 14]]


def _face_maps(n=24, seed=0):
    """[n, 2, 12, 16]: a softmax over background and face at every position, faces sparse."""
    rng = np.random.default_rng(seed)
    logit = rng.normal(-4.0, 1.0, (n, 12, 16))
    logit[:, 3:6, 4:8] += 6.0  # a face region
    face = 1.0 / (1.0 + np.exp(-logit))
    return np.stack([1.0 - face, face], axis=1)


def test_a_few_channel_map_is_a_part_per_channel():
    """The background map (near 1 everywhere) must not hide the sparse face map beside it:
    each channel of a few-channel map is a part, in the parts, the damage and the fidelity."""
    y = _face_maps()
    scale = np.sqrt(np.mean(y ** 2, axis=(0, 2, 3)))
    assert scale[0] / scale[1] < 10  # within PART_GAP: by scale alone it would be one part
    assert len(output_parts(scale)) == 1
    assert [p.tolist() for p in output_parts(scale, maps=True)] == [[0], [1]]
    # many channels, or features that are not map channels (logits, tokens): rules unchanged
    wide = np.random.default_rng(1).uniform(0.5, 2.0, 64)
    assert len(output_parts(wide, maps=True)) == 1
    assert len(output_parts(scale[:2], maps=False)) == 1
    # a dead map joins the smallest live one
    assert [p.tolist() for p in output_parts(np.r_[scale, 0.0], maps=True)] == [[0], [1, 2]]

    # the face map blurred away: the whole output barely moves, the face part collapses
    hurt = y.copy()
    hurt[:, 1] = y[:, 1].mean()
    hurt[:, 0] = 1.0 - hurt[:, 1]
    whole = np.sum((hurt - y) ** 2) / np.sum(y ** 2)
    face = np.sum((hurt[:, 1] - y[:, 1]) ** 2) / np.sum(y[:, 1] ** 2)
    assert whole < 0.1 * face
    assert damage([y], [hurt]) == pytest.approx(
        0.5 * (np.sum((hurt[:, 0] - y[:, 0]) ** 2) / np.sum(y[:, 0] ** 2) + face), rel=1e-9)


def test_fidelity_reports_each_channel_of_a_few_channel_map():
    """End to end through onnxruntime: an identity 'model' against one whose face channel is
    replaced by a constant; the report's face part shows what the whole-output cosine hides."""
    from onnx import TensorProto, helper
    y = _face_maps().astype(np.float32)

    def model(face_scale: float, face_shift: float):
        def per_channel(name, values):
            return onnx.numpy_helper.from_array(
                np.array(values, np.float32).reshape(1, 2, 1, 1), name)

        shape = ["n", 2, 12, 16]
        g = helper.make_graph(
            [helper.make_node("Mul", ["x", "s"], ["m"]),
             helper.make_node("Add", ["m", "b"], ["y"])],
            "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
            [per_channel("s", [1, face_scale]), per_channel("b", [0, face_shift])])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])

    original, flat = model(1.0, 0.0), model(0.0, float(y[:, 1].mean()))
    cal = load_calibration({"x": y}, original, "none")
    fid = fidelity(original, flat, cal, np.arange(len(y)))["y"]
    assert fid.cosine > 0.95
    assert [p.features for p in fid.parts] == [((0, 1),), ((1, 2),)]
    a, b = y[:, 1].reshape(len(y), -1).astype(np.float64), np.full((len(y), 192), y[:, 1].mean())
    want = np.mean(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)))
    assert fid.parts[1].cosine == pytest.approx(want, rel=1e-5)
    assert fid.worst_cosine == pytest.approx(want, rel=1e-5) and want < 0.5


def _yolox_like(n=16, anchors=300, seed=0):
    """[n, anchors, 6]: a YOLOX head exported anchors first (ddddocr's detector): grid offsets
    x, y (~0.5), log sizes w, h (~1.5), an objectness that is ~0 almost everywhere, a class
    score."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 1, (n, anchors, 2))
    wh = rng.normal(1.5, 0.3, (n, anchors, 2))
    obj = np.where(rng.random((n, anchors, 1)) < 0.02, rng.uniform(0.5, 1, (n, anchors, 1)),
                   rng.uniform(0, 1e-3, (n, anchors, 1)))
    cls = rng.uniform(0.1, 0.6, (n, anchors, 1))
    return np.concatenate([xy, wh, obj, cls], axis=2)


def test_an_anchors_first_head_is_split_into_its_fields():
    """(N, anchors, fields): axis 1 shows one scale, so the fields of the last axis are the
    parts — each its own when there are few; by scale, as contiguous ranges, when there are
    more (YOLOv5's 4 pixel box fields before 81 scores); never for scattered dimensions (a
    hidden state's outliers, a softmax's rare symbols) or long last axes."""
    from onnxprune.verify import MAX_FIELDS, split_parts
    y = _yolox_like()

    def r2(x):
        return np.sum(x ** 2, axis=(0, 2)), np.sum(x ** 2, axis=(0, 1))

    axis, parts = split_parts(*r2(y), 3)
    assert axis == -1 and [p.tolist() for p in parts] == [[i] for i in np.argsort(
        -np.sqrt(np.mean(y ** 2, axis=(0, 1))), kind="stable")]
    yolov5 = _yolo_like().transpose(0, 2, 1)  # [n, anchors, 84]
    axis, parts = split_parts(*r2(yolov5), 3)
    assert axis == -1 and [p.tolist() for p in parts] == [[0, 1, 2, 3], list(range(4, 84))]
    assert split_parts(*r2(_yolo_like()), 3)[0] == 1  # rows first (NudeNet): axis 1, as before
    hidden = np.random.default_rng(2).normal(0, 1, (8, 31, 64))
    hidden[..., [5, 40]] *= 100  # outlier dimensions: two scattered, not a concatenation
    axis, parts = split_parts(*r2(hidden), 3)
    assert axis == 1 and [p.tolist() for p in parts] == [list(range(31))]
    long = np.concatenate([yolov5] * 2, axis=2)[..., :MAX_FIELDS + 1]
    assert split_parts(*r2(long), 3)[0] == 1
    # damage: objectness lost entirely is half the damage of (boxes, objectness ...) averaged
    hurt = y.copy()
    hurt[..., 4] = 0.0
    whole = np.sum((hurt - y) ** 2) / np.sum(y ** 2)
    assert whole < 0.01
    assert damage([y], [hurt]) == pytest.approx(1.0 / 6.0, rel=1e-9)


def test_fidelity_reports_the_fields_of_an_anchors_first_head():
    """End to end through onnxruntime: a 'detector' whose objectness field is replaced by a
    constant keeps a whole-output cosine near 1; the report's objectness part shows the loss."""
    from onnx import TensorProto, helper
    y = _yolox_like().astype(np.float32)

    def model(obj_scale: float, obj_shift: float):
        s = np.ones((1, 1, 6), np.float32)
        b = np.zeros((1, 1, 6), np.float32)
        s[..., 4], b[..., 4] = obj_scale, obj_shift
        shape = ["n", 300, 6]
        g = helper.make_graph(
            [helper.make_node("Mul", ["x", "s"], ["m"]),
             helper.make_node("Add", ["m", "b"], ["y"])],
            "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
            [onnx.numpy_helper.from_array(s, "s"), onnx.numpy_helper.from_array(b, "b")])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])

    original, flat = model(1.0, 0.0), model(0.0, float(y[..., 4].mean()))
    cal = load_calibration({"x": y}, original, "none")
    fid = fidelity(original, flat, cal, np.arange(len(y)))["y"]
    assert fid.cosine > 0.99
    assert len(fid.parts) == 6 and {p.axis for p in fid.parts} == {-1}
    obj = next(p for p in fid.parts if p.features == ((4, 5),))
    a = y[..., 4].astype(np.float64)
    b = np.full_like(a, y[..., 4].mean())
    want = np.mean(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)))
    assert obj.cosine == pytest.approx(want, rel=1e-5) and want < 0.5
    assert fid.worst_cosine == pytest.approx(want, rel=1e-5)
    assert fid.to_dict()["parts"][0]["axis"] == -1


def test_negligible_samples_are_scored_by_their_change():
    """A text detector's map of a crop without text is ~0: its direction is rounding noise. Such
    a sample is scored against the floor norm (NEGLIGIBLE of the samples' RMS norm): noise on
    it costs nothing, a real response where the original had none still counts as lost."""
    from onnxprune.verify import NEGLIGIBLE, sample_cosines
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 1, (20, 500))
    a[3] = 1e-9 * rng.uniform(0, 1, 500)  # blank crops: negligible references
    a[7] = 0.0  # underflowed to exactly 0
    b = a + 1e-5 * rng.standard_normal(a.shape)  # small noise everywhere
    sums = (np.sum(a * b, 1), np.sum(a * a, 1), np.sum(b * b, 1), np.sum((a - b) ** 2, 1))
    cos = sample_cosines(*sums)
    with np.errstate(invalid="ignore"):
        plain = sums[0] / np.sqrt(sums[1] * sums[2])
    assert np.all(cos > 0.999)
    assert plain[3] < 0.1  # the plain cosine of a blank sample is decided by the noise
    np.testing.assert_allclose(cos[[0, 1, 2, 4]], plain[[0, 1, 2, 4]], rtol=1e-12)  # others as is
    # a false detection on a blank sample: a change far above the floor norm counts as lost
    c = b.copy()
    c[3, :50] = 0.5
    sums = (np.sum(a * c, 1), np.sum(a * a, 1), np.sum(c * c, 1), np.sum((a - c) ** 2, 1))
    assert sample_cosines(*sums)[3] == -1.0
    # exactly on the scale of the floor: 1 − ‖Δ‖² / (2 floor²)
    floor2 = NEGLIGIBLE ** 2 * np.mean(np.sum(a * a, 1))
    d = np.zeros_like(a)
    d[7, 0] = np.sqrt(floor2)
    sums = (np.sum(a * (a + d), 1), np.sum(a * a, 1), np.sum((a + d) ** 2, 1), np.sum(d * d, 1))
    assert sample_cosines(*sums)[7] == pytest.approx(0.5)


def test_fidelity_of_a_map_with_empty_samples():
    """End to end: a 1-channel probability map where some samples are empty (sigmoid of very
    negative logits, ~1e-7). A model whose logits move by up to ±3 per position changes the
    direction of an empty map (its plain cosine falls below 0.9) but only by ~1e-6: such samples
    count as kept, the others by their plain cosine."""
    from onnx import TensorProto, helper
    rng = np.random.default_rng(1)
    x = rng.normal(-3.0, 2.0, (24, 1, 16, 16)).astype(np.float32)
    x[::6] = -16.0 + rng.normal(0, 1, (4, 1, 16, 16)).astype(np.float32)  # empty crops
    eps = rng.uniform(-3, 3, (1, 1, 16, 16)).astype(np.float32)

    def model(shift: np.ndarray):
        g = helper.make_graph(
            [helper.make_node("Add", ["x", "b"], ["z"]), helper.make_node("Sigmoid", ["z"], ["y"])],
            "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 16, 16])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1, 16, 16])],
            [onnx.numpy_helper.from_array(shift, "b")])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])

    original, moved = model(np.zeros_like(eps)), model(eps)
    cal = load_calibration({"x": x}, original, "none")
    fid = fidelity(original, moved, cal, np.arange(len(x)))["y"]
    a = (1 / (1 + np.exp(-x.astype(np.float64)))).reshape(len(x), -1)
    b = (1 / (1 + np.exp(-(x + eps).astype(np.float64)))).reshape(len(x), -1)
    plain = np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    empty = np.zeros(len(x), bool)
    empty[::6] = True
    assert np.all(plain[empty] < 0.9) and np.all(np.linalg.norm(a[empty], axis=1) < 1e-5)
    want = (plain[~empty].sum() + empty.sum() * 1.0) / len(x)
    assert fid.cosine == pytest.approx(want, rel=1e-4)
    assert fid.cosine > plain.mean() + 0.03


def _fixed_batch(path, batch):
    m = onnx.load(path)
    for vi in list(m.graph.input) + list(m.graph.output):
        d = vi.type.tensor_type.shape.dim[0]
        d.Clear()
        d.dim_value = batch
    return m


@pytest.mark.parametrize("source", ["resnet_legacy", "vit_dynamo", "inception_legacy",
                                    "resnet_legacy@fixed4"])
def test_downstream_runs_equal_whole_model_runs(source):
    """Running only the changed region of a pruned variant, fed with captured frontier tensors
    (shape tensors of the ViT's attention included; padded batches of a fixed-batch model),
    gives the whole model's outputs."""
    from onnxprune import rewrite
    from onnxprune.downstream import DownstreamRunner, run_model
    from onnxprune.select import decide
    name, _, fixed = source.partition("@")
    src = MODELS / f"{name}.onnx" if not fixed else _fixed_batch(MODELS / f"{name}.onnx", 4)
    m = run_passes([NormalizePass()], load_model(src).model)[0]
    cal = load_calibration(CALIB_IMG, m, "auto")
    assert cal.mode == ("fixed" if fixed else "batched")
    g = Graph(m)
    an = analyze(g)
    idx = np.arange(30)
    groups = [(i, x) for i, x in enumerate(an.groups) if x.prunable]
    sites = [s for _, x in groups for s in x.consumers]
    stats = dict(zip(sites, calibrate.collect(m, g, cal, idx, sites, 0)))
    runner = DownstreamRunner(m, cal, idx, g.elem_types, batch_size=8)
    smaller = 0
    for i, x in groups:
        d = decide(g, an, x, [stats[s] for s in x.consumers], KeepPlan(ratio=0.5), "inchange",
                   True, 0, i)
        variant = rewrite.apply(m, g, an, d.set_keeps, d.weights)
        nodes, _ = runner.region(variant)
        smaller += len(nodes) < len(variant.graph.node)
        got = runner.outputs(variant)
        want = list(run_model(variant, cal, idx, batch_size=8).values())
        assert [a.shape for a in got] == [b.shape for b in want]
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(np.abs(b).max()))
    assert runner.enabled and smaller >= 1  # the region was a strict part of the model
