"""The trained reference models in models/ (both torch exporters and skl2onnx).

Fast: one CNN end to end with accuracy. Slow (``-m slow``): every model, ratio 0 and 0.5.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

import onnxprune
from helpers import MODELS, assert_close, full_check, run

MANIFEST = json.loads((MODELS / "MANIFEST.json").read_text())
CNNS = [f"{arch}_{exporter}" for exporter in ("legacy", "dynamo")
        for arch in ("inception", "mobilenet", "resnet", "vgg")]
ALL = CNNS + ["mlp_skl"]


def _calib(name: str):
    return MODELS / ("digits_calib_flat.npz" if name == "mlp_skl" else "digits_calib.npz")


def _test_data(name: str):
    d = np.load(MODELS / "digits_test.npz")
    x = d["x"].reshape(len(d["x"]), -1) if name == "mlp_skl" else d["x"]
    return x, d["y"]


def _accuracy(model, name: str) -> float:
    x, y = _test_data(name)
    outs = run(model, {"input": x})
    scores = outs[1] if name == "mlp_skl" else outs[0]
    return float(np.mean(np.argmax(scores, axis=1) == y))


def test_resnet_half_width_keeps_accuracy():
    path = MODELS / "resnet_legacy.onnx"
    res = onnxprune.prune(path, _calib("resnet_legacy"), ratio=0.5)
    r = res.report
    assert 1 - r.params_after / r.params_before >= 0.35
    assert _accuracy(res.model, "resnet_legacy") >= _accuracy(onnx.load(str(path)),
                                                               "resnet_legacy") - 0.03


def test_reweighting_is_what_keeps_a_compact_model_alive():
    path = MODELS / "vgg_dynamo.onnx"
    with_ls = onnxprune.prune(path, _calib("vgg_dynamo"), ratio=0.5)
    without = onnxprune.prune(path, _calib("vgg_dynamo"), ratio=0.5, reweight=False)
    assert _accuracy(with_ls.model, "vgg_dynamo") > _accuracy(without.model, "vgg_dynamo") + 0.3


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL)
def test_reference_model_ratio_zero_is_exact_and_half_is_smaller(name, tmp_path):
    path = MODELS / f"{name}.onnx"
    x, _ = _test_data(name)
    same = onnxprune.prune(path, _calib(name), ratio=0.0)
    for a, b in zip(run(path, {"input": x}), run(same.model, {"input": x})):
        assert_close(a, b, atol=1e-5, rtol=1e-5)
    res = onnxprune.prune(path, _calib(name), ratio=0.5)
    full_check(res.model)
    r = res.report
    assert 1 - r.params_after / r.params_before >= 0.35, (r.params_before, r.params_after)
    files = res.save(tmp_path / "out.onnx")
    external = (MODELS / f"{name}.onnx.data").exists()
    assert (tmp_path / "out.onnx.data").exists() == external
    assert len(files) == 1 + external
    reloaded = onnx.load(str(tmp_path / "out.onnx"))
    assert _accuracy(reloaded, name) > 0.5
    assert [i.name for i in reloaded.graph.input] == ["input"]
    dims = reloaded.graph.input[0].type.tensor_type.shape.dim
    assert not dims[0].HasField("dim_value")  # dynamic batch kept


def test_asym_brings_the_compact_models_back_at_half_width():
    """Issue 2's shortfall: MobileNetV2 at 0.5 fell to 72 % with LayerInChange; AsymInChange
    must keep it within a few points of the original."""
    path = MODELS / "mobilenet_legacy.onnx"
    res = onnxprune.prune(path, _calib("mobilenet_legacy"), ratio=0.5, method="asym")
    assert _accuracy(res.model, "mobilenet_legacy") >= _accuracy(onnx.load(str(path)),
                                                                 "mobilenet_legacy") - 0.04


@pytest.mark.parametrize("method", onnxprune.METHODS)
@pytest.mark.parametrize("reweight", [True, False])
def test_every_method_runs_on_the_skl2onnx_mlp(method, reweight):
    res = onnxprune.prune(MODELS / "mlp_skl.onnx", _calib("mlp_skl"), ratio=0.5, method=method,
                          reweight=reweight)
    full_check(res.model)
    assert res.report.params_after < res.report.params_before
    if reweight:
        assert _accuracy(res.model, "mlp_skl") > 0.8


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("method", ["seq", "asym", "sampling"])
def test_every_new_method_runs_on_every_reference_model(name, method):
    res = onnxprune.prune(MODELS / f"{name}.onnx", _calib(name), ratio=0.75, method=method,
                          steps=2 if method == "seq" else 1)
    full_check(res.model)
    r = res.report
    assert 1 - r.params_after / r.params_before >= 0.5
    if method == "asym":  # the one that must stay useful at 0.75 (seq/sampling may not)
        assert _accuracy(res.model, name) > 0.5
