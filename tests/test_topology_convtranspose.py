"""ConvTranspose as a consumer: the input channels of an upsampling layer (segmentation and
text-detection heads) are pruned and its weight re-fitted by least squares.

The rows are the patches of the equivalent plain convolution (upsampled input, flipped kernel,
see :func:`onnxprune.im2col.transposed_im2col`); they are checked against onnxruntime's
ConvTranspose, and the re-fit against a direct least-squares solve on torch's activations.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxprune
from onnxprune.api import split_samples
from onnxprune.graph import Graph
from onnxprune.rules import rule_for
from helpers import full_check, run


@pytest.mark.parametrize("kw", [
    dict(strides=[2, 2], pads=[1, 1, 1, 1]),
    dict(strides=[2, 3], pads=[0, 1, 2, 0], output_padding=[1, 2]),
    dict(strides=[1, 1], pads=[0, 0, 0, 0], dilations=[2, 1]),
    dict(strides=[3, 2], pads=[3, 0, 1, 2], dilations=[1, 2], output_padding=[0, 1]),
])
def test_rows_times_weight_matrix_is_the_transposed_convolution(kw):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((5, 4, 3, 4)).astype(np.float32)  # C_in=5, C_out=4, kernel 3×4
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], **kw)
    g = helper.make_graph([node], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5, 6, 7])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(w, "w")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    x = rng.standard_normal((2, 5, 6, 7)).astype(np.float32)
    y = run(model, {"x": x})[0].astype(np.float64)
    graph = Graph(model)
    n = graph.node(model.graph.node[0].name) if model.graph.node[0].name else model.graph.node[0]
    rule = rule_for(n)
    B = rule.rows(n, graph, x.astype(np.float64), lambda N, P: np.arange(N * P))
    W = rule.weight_matrix(n, graph)
    assert W.shape == (4, 5 * 12) and B.shape[1] == 5 * 12
    got = (B @ W.T).reshape(2, *y.shape[2:], 4).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(got, y, rtol=1e-5, atol=1e-4)


torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from helpers import (  # noqa: E402
    assert_groups, export, kept_by_direction, prune_one_group, randomize_bn,
)


class Upsampler(nn.Module):
    """conv(16) → BN → ReLU → deconv ×2 (8) → BN → ReLU → deconv ×2 (4): a segmentation head."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.up1 = nn.ConvTranspose2d(16, 8, 4, stride=2, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.up2 = nn.ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1)

    def features(self, x):
        return torch.relu(self.bn1(self.c(x)))

    def forward(self, x):
        h = torch.relu(self.bn2(self.up1(self.features(x))))
        return torch.sigmoid(self.up2(h))


@pytest.fixture(scope="module", params=["legacy", "dynamo"])
def model(request, tmp_path_factory):
    torch.manual_seed(0)
    module = Upsampler()
    randomize_bn(module, 3)
    path = tmp_path_factory.mktemp("deconv") / f"m_{request.param}.onnx"
    return export(module, torch.zeros(2, 3, 12, 12), path, request.param), module


def test_deconv_inputs_are_prunable(model):
    assert_groups(model[0], [(4, False), (8, True), (16, True)])


def test_deconv_refit_is_the_least_squares_solution(model):
    path, module = model
    x = np.random.default_rng(4).standard_normal((60, 3, 12, 12)).astype(np.float32)
    res = prune_one_group(path, {"input": x}, 16)
    full_check(res.model)
    inits = {t.name: numpy_helper.to_array(t) for t in res.model.graph.initializer}
    deconv_w = [inits[n.input[1]] for n in res.model.graph.node if n.op_type == "ConvTranspose"]
    # exact parameter counts: up1 lost half of its input channels, up2 is untouched
    assert [w.shape for w in deconv_w] == [(8, 8, 4, 4), (8, 4, 3, 3)]
    with torch.no_grad():
        F = module.features(torch.from_numpy(x)).double()
    # kept channels: the pruned first conv's filters are a subset of the original (BN folded)
    conv_w = next(inits[n.input[1]] for n in res.model.graph.node if n.op_type == "Conv")
    kept = kept_by_direction(module.c.weight.detach().numpy(), conv_w)
    assert kept == sorted(set(kept)) and len(kept) == 8
    # direct least squares: every output pixel of up1 is linear in the kept input channels'
    # patches; solve on the calibration samples through the same row construction, then compare
    # the layer's output (weights and bias) with the one written into the model.
    sel, _ = split_samples(len(x), 0.2, 0)
    # the layer as the pass sees it (a following BatchNormalization may be folded into it):
    # the model pruned at ratio 0
    same = onnxprune.prune(str(path), {"input": x}, ratio=0.0).model
    graph = Graph(same)
    node = next(n for n in graph.nodes if n.op_type == "ConvTranspose")
    rule = rule_for(node)
    everything = lambda N, P: np.arange(N * P)  # noqa: E731
    Tm = rule.rows(node, graph, F.numpy()[sel], everything) @ rule.weight_matrix(node, graph).T
    B = rule.rows(node, graph, F.numpy()[sel][:, kept], everything)
    A = np.hstack([B, np.ones((len(B), 1))])
    coef, *_ = np.linalg.lstsq(A, Tm, rcond=None)
    W_new = rule.weight_matrix(next(n for n in res.model.graph.node
                                    if n.op_type == "ConvTranspose"), Graph(res.model))
    np.testing.assert_allclose(W_new, coef[:-1].T, rtol=1e-3, atol=1e-3)
    # and the pruned model runs at other batch sizes with the interface intact
    for n in (1, 5):
        assert run(res.model, {"input": x[:n]})[0].shape == (n, 4, 24, 24)


def test_deconv_model_prunes_at_half(model):
    path, _ = model
    x = np.random.default_rng(5).standard_normal((40, 3, 12, 12)).astype(np.float32)
    res = onnxprune.prune(str(path), {"input": x}, ratio=0.5)
    full_check(res.model)
    assert res.report.params_after < 0.6 * res.report.params_before
    ref, got = run(path, {"input": x})[0], run(res.model, {"input": x})[0]
    assert got.shape == ref.shape and np.isfinite(got).all()
