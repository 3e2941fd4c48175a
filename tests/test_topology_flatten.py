"""Flattening a pooled feature map through a run-time batch size before the classifier.

EfficientNet-style head: ``Conv → GlobalAveragePool → x.view(bs, -1) → Linear`` with ``bs``
read from the model input (as EfficientNet-PyTorch does), or from ``x`` itself. The legacy
exporter writes the target shape as ``Concat(Unsqueeze(Gather(Shape(input), 0)), [-1])``; the
batch entry must be proven equal to the input's batch axis through the convolutions, the
(static) padding and the pooling, or the 1,280-channel head of EfficientNet-Lite0 is lost
(regression: 23/25 groups instead of 24/25). Both exporters, three ways to flatten; the classifier
re-fit is checked against a direct least-squares solve.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import onnxprune  # noqa: E402
from onnxprune.api import split_samples  # noqa: E402
from helpers import export, full_check, kept_by_direction, randomize_bn, run  # noqa: E402

HEAD = 32


class EffHead(nn.Module):
    def __init__(self, flatten: str):
        super().__init__()
        self.flatten = flatten
        self.stem = nn.Conv2d(3, 8, 3, stride=2, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.pad = nn.ZeroPad2d((0, 1, 0, 1))  # TF-style "same" padding, as in EfficientNet ports
        self.dw = nn.Conv2d(8, 8, 3, stride=2, groups=8, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.head = nn.Conv2d(8, HEAD, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(HEAD)
        self.fc = nn.Linear(HEAD, 5)

    def forward(self, x):
        bs = x.size(0)  # EfficientNet-PyTorch reads the batch size from the input
        h = nn.functional.relu6(self.bn1(self.stem(x)))
        h = nn.functional.relu6(self.bn2(self.dw(self.pad(h))))
        h = nn.functional.relu6(self.bn3(self.head(h)))
        h = nn.functional.adaptive_avg_pool2d(h, 1)
        if self.flatten == "input-batch":
            h = h.view(bs, -1)
        elif self.flatten == "view":
            h = h.view(h.size(0), -1)
        elif self.flatten == "reshape":
            h = h.reshape(h.shape[0], -1)
        else:
            h = torch.flatten(h, 1)
        return self.fc(h)


@pytest.fixture(scope="module", params=[(e, f) for e in ("legacy", "dynamo")
                                        for f in ("input-batch", "view", "reshape", "flatten")],
                ids=lambda p: f"{p[0]}-{p[1]}")
def model(request, tmp_path_factory):
    exporter, flatten = request.param
    torch.manual_seed(0)
    module = EffHead(flatten)
    randomize_bn(module, 1)
    path = tmp_path_factory.mktemp("effhead") / f"{exporter}_{flatten}.onnx"
    return export(module, torch.zeros(2, 3, 17, 17), path, exporter), module


def _head_group(groups):
    return next(g for g in groups if g.total == HEAD)


def test_only_the_output_is_unprunable(model):
    path, _ = model
    groups = onnxprune.inspect(str(path)).groups
    assert sorted((g.total, g.prunable) for g in groups) == [(5, False), (8, True),
                                                             (HEAD, True)], \
        [(g.name, g.total, g.reason) for g in groups]


def test_head_refit_is_the_least_squares_solution_and_batch_stays_dynamic(model):
    path, module = model
    x = np.random.default_rng(2).standard_normal((80, 3, 17, 17)).astype(np.float32)
    groups = onnxprune.inspect(str(path)).groups
    others = [g.name for g in groups if g.total != HEAD]
    res = onnxprune.prune(str(path), {"input": x}, ratio=0.5, exclude=others, ridge=0.0,
                          max_positions=10_000)
    full_check(res.model)
    assert _head_group(res.report.groups).kept == HEAD // 2
    # Original pooled features X (what the classifier reads), from torch.
    with torch.no_grad():
        h = torch.from_numpy(x)
        h = nn.functional.relu6(module.bn1(module.stem(h)))
        h = nn.functional.relu6(module.bn2(module.dw(module.pad(h))))
        h = nn.functional.relu6(module.bn3(module.head(h)))
        X = h.mean(dim=(2, 3)).double().numpy()
    W = module.fc.weight.detach().double().numpy()
    b = module.fc.bias.detach().double().numpy()
    ref = X @ W.T + b
    np.testing.assert_allclose(run(path, {"input": x})[0], ref, rtol=1e-4, atol=1e-4)
    # The kept channels: the pruned head conv's filters are a subset of the original ones.
    import onnx
    from onnx import numpy_helper
    w_head = module.head.weight.detach().numpy().reshape(HEAD, -1)
    pruned_ws = [numpy_helper.to_array(t) for t in res.model.graph.initializer]
    conv_w = next(w for w in pruned_ws if w.ndim == 4 and w.shape[0] == HEAD // 2)
    kept = kept_by_direction(w_head, conv_w)  # BN is folded into the conv
    assert kept == sorted(set(kept)) and len(kept) == HEAD // 2
    # Direct least squares of the classifier on the calibration part of the samples.
    sel, _ = split_samples(len(x), 0.2, 0)
    Xk = np.hstack([X[sel][:, kept], np.ones((len(sel), 1))])
    coef, *_ = np.linalg.lstsq(Xk, X[sel] @ W.T, rcond=None)
    expect = np.hstack([X[:, kept], np.ones((len(x), 1))]) @ coef + b
    got = run(res.model, {"input": x})[0]
    np.testing.assert_allclose(got, expect, rtol=2e-3, atol=2e-3)
    # Batch stays dynamic
    for n in (1, 7):
        assert run(res.model, {"input": x[:n]})[0].shape == (n, 5)
    assert isinstance(res.model, onnx.ModelProto)


def _paddle_flatten():
    """``Conv → Relu → Reshape(x, Concat(Slice(Shape(x), 0, 2), [-1])) → Transpose → MatMul``:
    the Paddle exporter's flatten of a feature map into a sequence (PP-OCRv4's recogniser), whose
    output shape ONNX's own shape inference leaves unknown."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32)
    w2 = (rng.standard_normal((8, 5)) * 0.3).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Shape", ["r"], ["s"]),
             helper.make_node("Slice", ["s", "zero", "two", "zero"], ["s2"]),
             helper.make_node("Concat", ["s2", "minus1"], ["tgt"], axis=0),
             helper.make_node("Reshape", ["r", "tgt"], ["f"]),
             helper.make_node("Transpose", ["f"], ["t"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["t", "w2"], ["y"])]
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")] + [
        numpy_helper.from_array(np.array([v], np.int64), n)
        for n, v in (("zero", 0), ("two", 2), ("minus1", -1))]
    g = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "hw", 5])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 11)], ir_version=7)


def test_flatten_to_a_shape_onnx_inference_leaves_unknown():
    import onnx
    model = _paddle_flatten()
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    assert "t" not in {v.name for v in inferred.graph.value_info if v.type.tensor_type.HasField(
        "shape")}  # the case: ONNX cannot tell the flattened tensor's rank
    (conv, out) = onnxprune.inspect(model).groups
    assert conv.prunable and conv.total == 8 and not out.prunable
    x = np.random.default_rng(1).standard_normal((40, 3, 6, 5)).astype(np.float32)
    res = onnxprune.prune(model, {"x": x}, ratio=0.5)
    full_check(res.model)
    assert res.report.params_before - res.report.params_after == 4 * 27 + 4 * 5
    for shape in ((2, 3, 6, 5), (1, 3, 9, 4)):  # spatial size still free
        z = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
        assert run(res.model, {"x": z})[0].shape == run(model, {"x": z})[0].shape
