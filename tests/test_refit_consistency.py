"""End to end math: im2col + Gram statistics + re-fit + rewrite give exactly the least-squares
solution, and the reported relative error is the consumer output error actually measured."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxprune
from onnxprune.api import split_samples
from onnxprune.im2col import conv_pads, im2col
from helpers import run


def _model(stride=2, dilation=1, pads=(1, 1, 1, 1), auto_pad=None):
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    b1 = (rng.standard_normal(8) * 0.5).astype(np.float32)
    w2 = rng.standard_normal((5, 8, 3, 3)).astype(np.float32)
    b2 = rng.standard_normal(5).astype(np.float32)
    kw = {"strides": [stride, stride], "dilations": [dilation, dilation]}
    if auto_pad:
        kw["auto_pad"] = auto_pad
    else:
        kw["pads"] = list(pads)
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["h"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Conv", ["r", "w2", "b2"], ["y"], **kw)]
    g = helper.make_graph(nodes, "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 9, 9])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5, None, None])],
                          [numpy_helper.from_array(a, n) for a, n in
                           ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _capture(model, x, name):
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.output.append(helper.make_empty_tensor_value_info(name))
    return run(m, {"x": x})[-1]


@pytest.mark.parametrize("kw", [dict(), dict(stride=1, dilation=2, pads=(2, 1, 2, 0)),
                                dict(stride=2, auto_pad="SAME_UPPER")])
def test_reweighted_consumer_is_the_direct_least_squares_solution(kw):
    model = _model(**kw)
    x = np.random.default_rng(1).standard_normal((50, 3, 9, 9)).astype(np.float32)
    res = onnxprune.prune(model, {"x": x}, ratio=0.5, max_positions=10_000, ridge=0.0)
    pruned = res.model
    inits = {t.name: numpy_helper.to_array(t) for t in pruned.graph.initializer}
    kept_out = inits["w1"].shape[0]
    assert kept_out == 4
    sel, _ = split_samples(len(x), 0.2, 0)
    xs = x[sel]
    # Which channels were kept: match the pruned first conv's filters against the original's.
    w1 = numpy_helper.to_array(model.graph.initializer[0])
    kept = [int(np.argmin(np.abs(w1 - f).sum(axis=(1, 2, 3)))) for f in inits["w1"]]
    assert kept == sorted(kept)
    # Direct least squares on im2col of the original activations.
    conv2 = model.graph.node[2]
    attrs = {a.name: helper.get_attribute_value(a) for a in conv2.attribute}
    r = _capture(model, xs, "r").astype(np.float64)
    pads = conv_pads(attrs.get("auto_pad", b"NOTSET"), attrs.get("pads"), r.shape[2:], (3, 3),
                     attrs["strides"], attrs["dilations"])
    B = im2col(r, (3, 3), attrs["strides"], attrs["dilations"], pads,
               lambda n, p: np.arange(n * p))
    W = numpy_helper.to_array(model.graph.initializer[2]).reshape(5, -1).astype(np.float64)
    T = B @ W.T
    y_orig = _capture(model, xs, "y").astype(np.float64)
    b2 = numpy_helper.to_array(model.graph.initializer[3])
    np.testing.assert_allclose(T + b2, y_orig.transpose(0, 2, 3, 1).reshape(-1, 5),
                               rtol=1e-4, atol=1e-3)  # im2col reproduces the convolution
    cols = (np.asarray(kept)[:, None] * 9 + np.arange(9)).reshape(-1)
    Bs = np.hstack([B[:, cols], np.ones((len(B), 1))])
    X, *_ = np.linalg.lstsq(Bs, T, rcond=None)
    W_new = inits["w2"].reshape(5, -1)
    np.testing.assert_allclose(W_new, X[:-1].T, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(inits["b2"] - b2, X[-1], rtol=1e-3, atol=1e-3)
    # The reported rel_error is the measured error of the consumer output on these samples.
    y_new = _capture(pruned, xs, "y").astype(np.float64)
    measured = np.sum((y_new - y_orig) ** 2) / np.sum(T ** 2)
    group = next(g for g in res.report.groups if g.total == 8)
    assert group.rel_error == pytest.approx(measured, rel=1e-3, abs=1e-7)


def test_no_reweight_slices_and_reports_the_sliced_error():
    model = _model()
    x = np.random.default_rng(2).standard_normal((40, 3, 9, 9)).astype(np.float32)
    res = onnxprune.prune(model, {"x": x}, ratio=0.5, reweight=False, method="weight-norm")
    inits = {t.name: numpy_helper.to_array(t) for t in res.model.graph.initializer}
    w2 = numpy_helper.to_array(model.graph.initializer[2])
    norms = np.linalg.norm(w2.reshape(5, 8, 9).transpose(1, 0, 2).reshape(8, -1), axis=1)
    top = np.sort(np.argsort(-norms, kind="stable")[:4])
    np.testing.assert_array_equal(inits["w2"], w2[:, top])  # sliced, not re-fitted
    np.testing.assert_array_equal(inits["b2"], numpy_helper.to_array(model.graph.initializer[3]))
    sel, _ = split_samples(len(x), 0.2, 0)
    y0 = _capture(model, x[sel], "y").astype(np.float64)
    y1 = _capture(res.model, x[sel], "y").astype(np.float64)
    b2 = numpy_helper.to_array(model.graph.initializer[3])[None, :, None, None]
    measured = np.sum((y1 - y0) ** 2) / np.sum((y0 - b2) ** 2)
    group = next(g for g in res.report.groups if g.total == 8)
    assert group.rel_error == pytest.approx(measured, rel=1e-3)


def test_deterministic_bytes():
    model = _model()
    x = np.random.default_rng(3).standard_normal((30, 3, 9, 9)).astype(np.float32)
    a = onnxprune.prune(model, {"x": x}, ratio=0.5, seed=7).model.SerializeToString()
    b = onnxprune.prune(model, {"x": x}, ratio=0.5, seed=7).model.SerializeToString()
    assert a == b
