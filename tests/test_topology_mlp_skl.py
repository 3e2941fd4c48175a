"""skl2onnx MLP: MatMul + Add (bias) + Relu chains; the bias Add absorbs the mean of removed
neurons; the label output (ArgMax) and probabilities (Softmax) are never pruned."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import onnxprune
from helpers import MODELS, assert_close, full_check, init_shapes, run

skl2onnx = pytest.importorskip("skl2onnx")


@pytest.fixture(scope="module")
def mlp_path(tmp_path_factory):
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import load_iris
    from sklearn.neural_network import MLPClassifier

    X, y = load_iris(return_X_y=True)
    clf = MLPClassifier(hidden_layer_sizes=(16, 12), random_state=0, max_iter=2000).fit(X, y)
    onx = convert_sklearn(clf, initial_types=[("input", FloatTensorType([None, 4]))],
                          options={id(clf): {"zipmap": False}}, target_opset=17)
    path = tmp_path_factory.mktemp("mlp") / "iris_mlp.onnx"
    onnx.save(onx, str(path))
    return path


def test_groups_of_skl2onnx_mlp(mlp_path):
    rep = onnxprune.inspect(mlp_path)
    sizes = sorted((g.total, g.prunable) for g in rep.groups)
    assert (16, True) in sizes and (12, True) in sizes
    out = next(g for g in rep.groups if g.total == 3)
    assert not out.prunable and "Softmax" in out.reason


def test_prune_iris_mlp(mlp_path):
    from sklearn.datasets import load_iris
    X = load_iris().data.astype(np.float32)
    same = onnxprune.prune(mlp_path, {"input": X}, ratio=0.0)
    for a, b in zip(run(mlp_path, {"input": X}), run(same.model, {"input": X})):
        assert_close(a, b)
    res = onnxprune.prune(mlp_path, {"input": X}, ratio=0.5, round_to=1)
    full_check(res.model)
    shapes = sorted(s for s in init_shapes(res.model).values() if len(s) == 2 and min(s) > 1)
    assert shapes == sorted([(4, 8), (8, 6), (6, 3)])
    biases = sorted(s for s in init_shapes(res.model).values() if len(s) == 2 and s[0] == 1)
    assert biases == [(1, 3), (1, 6), (1, 8)]
    assert res.report.params_after <= 0.65 * res.report.params_before
    label, proba = run(res.model, {"input": X})
    ref_label, _ = run(mlp_path, {"input": X})
    assert np.mean(label == ref_label) > 0.8


def test_prune_digits_mlp_keeps_accuracy():
    path = MODELS / "mlp_skl.onnx"
    test = np.load(MODELS / "digits_test.npz")
    x, y = test["x"].reshape(-1, 64), test["y"]
    res = onnxprune.prune(path, MODELS / "digits_calib_flat.npz", ratio=0.5)
    acc_before = np.mean(run(path, {"input": x})[0] == y)
    acc_after = np.mean(run(res.model, {"input": x})[0] == y)
    assert 1 - res.report.params_after / res.report.params_before >= 0.35
    assert acc_after >= acc_before - 0.05, (acc_before, acc_after)
