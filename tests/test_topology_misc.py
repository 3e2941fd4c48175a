"""Other channel paths: Split/Slice ranges, squeeze-excitation gating, Pad/Resize/Transpose,
Constant-node weights, fixed batch 1, and structures that must be reported unprunable."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import onnxprune  # noqa: E402
from helpers import (  # noqa: E402
    assert_close,
    check_prune_roundtrip,
    export,
    full_check,
    init_shapes,
    randomize_bn,
    run,
)


class SplitSlice(nn.Module):
    """conv(16) → chunk(2) → two convs; conv(12) → [:, :8] slice → conv."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.left = nn.Conv2d(8, 8, 1)
        self.right = nn.Conv2d(8, 8, 3, padding=1)
        self.b = nn.Conv2d(16, 12, 1)
        self.after_slice = nn.Conv2d(8, 6, 1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        h = torch.relu(self.a(x))
        l, r = h.chunk(2, dim=1)
        h = torch.cat([torch.relu(self.left(l)), torch.relu(self.right(r))], 1)
        h = torch.relu(self.b(h))[:, :8]
        h = torch.relu(self.after_slice(h))
        return self.fc(h.mean(dim=(2, 3)))


class SqueezeExcite(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.se1 = nn.Conv2d(16, 4, 1)
        self.se2 = nn.Conv2d(4, 16, 1)
        self.c2 = nn.Conv2d(16, 8, 3, padding=1)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        h = nn.functional.hardswish(self.bn(self.c1(x)))
        s = torch.sigmoid(self.se2(torch.relu(self.se1(h.mean(dim=(2, 3), keepdim=True)))))
        h = torch.relu(self.c2(h * s))
        return self.fc(h.mean(dim=(2, 3)))


class PadResize(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 12, 3)
        self.c2 = nn.Conv2d(12, 6, 3)
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        h = nn.functional.leaky_relu(self.c1(x))
        h = nn.functional.pad(h, (1, 1, 1, 1))
        h = nn.functional.interpolate(h, scale_factor=2.0, mode="nearest")
        h = torch.tanh(self.c2(h))
        return self.fc(h.amax(dim=(2, 3)))


class Activations(nn.Module):
    """SiLU (Sigmoid·Mul), exact GELU (Erf chain or Gelu op), Hardsigmoid, PReLU, Linear tail."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 12, 3, padding=1)
        self.act = nn.PReLU(12)
        self.c2 = nn.Conv2d(12, 10, 3, padding=1)
        self.l1 = nn.Linear(10, 16)
        self.l2 = nn.Linear(16, 3)

    def forward(self, x):
        h = nn.functional.silu(self.c1(x))
        h = self.act(h) * nn.functional.hardsigmoid(h)
        h = nn.functional.gelu(self.c2(h)).mean(dim=(2, 3))
        return self.l2(nn.functional.gelu(self.l1(h)))


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_activation_chains_pass_through(tmp_path, exporter):
    torch.manual_seed(8)
    path = export(Activations(), torch.randn(2, 3, 6, 6), tmp_path / "m.onnx", exporter)
    rep = onnxprune.inspect(path)
    assert sorted(g.total for g in rep.groups if g.prunable) == [10, 12, 16], rep.to_text()
    check_prune_roundtrip(path, (3, 6, 6), min_param_cut=0.35)


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_split_and_slice_ranges(tmp_path, exporter):
    torch.manual_seed(4)
    path = export(SplitSlice(), torch.randn(2, 3, 8, 8), tmp_path / "m.onnx", exporter)
    rep = onnxprune.inspect(path)
    a = next(g for g in rep.groups if g.total == 16 and len(g.producers) == 1)
    assert len(a.consumers) == 2  # both halves of the split
    _, pruned, report, _ = check_prune_roundtrip(path, (3, 8, 8), min_param_cut=0.3)
    conv_w = sorted(init_shapes(pruned)[n.input[1]] for n in pruned.graph.node
                    if n.op_type == "Conv")
    # a: 16→8 out; left/right: each reads its 4 kept channels of its half, 8→4 out;
    # b: 8 in, 12→6 out; after_slice reads the kept channels inside [:8] of b (4 of them).
    assert conv_w == sorted([(8, 3, 3, 3), (4, 4, 1, 1), (4, 4, 3, 3), (6, 8, 1, 1),
                             (3, 4, 1, 1)])


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_squeeze_excitation_gate_joins_channels(tmp_path, exporter):
    torch.manual_seed(5)
    m = SqueezeExcite()
    randomize_bn(m, 5)
    path = export(m, torch.randn(2, 3, 8, 8), tmp_path / "m.onnx", exporter)
    rep = onnxprune.inspect(path)
    gate = next(g for g in rep.groups if g.total == 16)
    assert len(gate.producers) == 2 and gate.prunable  # c1 and se2 pruned together
    assert len(gate.consumers) == 2  # se1 (after the mean) and c2
    check_prune_roundtrip(path, (3, 8, 8), min_param_cut=0.3)


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_pad_resize_and_spatial_reductions_pass_through(tmp_path, exporter):
    torch.manual_seed(6)
    path = export(PadResize(), torch.randn(2, 3, 8, 8), tmp_path / "m.onnx", exporter)
    rep = onnxprune.inspect(path)
    assert next(g for g in rep.groups if g.total == 12).prunable, rep.to_text()
    check_prune_roundtrip(path, (3, 8, 8), min_param_cut=0.2)


def test_fixed_batch_one_model(tmp_path):
    torch.manual_seed(7)
    m = SqueezeExcite()
    path = export(m, torch.randn(1, 3, 8, 8), tmp_path / "m.onnx", "legacy", dynamic_batch=False)
    x = np.random.default_rng(0).standard_normal((40, 3, 8, 8)).astype(np.float32)
    res = onnxprune.prune(path, {"input": x}, ratio=0.5)
    full_check(res.model)
    dims = res.model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_value == 1  # interface kept: fixed batch 1
    same = onnxprune.prune(path, {"input": x}, ratio=0.0)
    for i in range(3):
        assert_close(run(path, {"input": x[i:i + 1]})[0], run(same.model, {"input": x[i:i + 1]})[0])
    assert res.report.params_after < 0.7 * res.report.params_before


def _conv_graph(constant_weights: bool, group2: int = 1, tail: str = "Relu"):
    """x → Conv(8) → Relu → Conv(8→4, group=group2) → tail → y (hand-written graph)."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    b1 = rng.standard_normal(8).astype(np.float32)
    w2 = rng.standard_normal((4, 8 // group2, 1, 1)).astype(np.float32)
    nodes, inits = [], []
    if constant_weights:
        for name, arr in (("w1", w1), ("b1", b1), ("w2", w2)):
            nodes.append(helper.make_node("Constant", [], [name],
                                          value=numpy_helper.from_array(arr, name)))
    else:
        inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(b1, "b1"),
                 numpy_helper.from_array(w2, "w2")]
    nodes += [helper.make_node("Conv", ["x", "w1", "b1"], ["h"], pads=[1, 1, 1, 1]),
              helper.make_node("Relu", ["h"], ["r"]),
              helper.make_node("Conv", ["r", "w2"], ["z"], group=group2),
              helper.make_node(tail, ["z"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                     ["N", 3, 6, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 6, 6])],
                          inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_constant_node_weights_are_pruned():
    model = _conv_graph(constant_weights=True)
    x = np.random.default_rng(1).standard_normal((50, 3, 6, 6)).astype(np.float32)
    res = onnxprune.prune(model, {"x": x}, ratio=0.5)
    shapes = init_shapes(res.model)
    assert shapes["w1"] == (4, 3, 3, 3) and shapes["w2"] == (4, 4, 1, 1)
    assert not any(n.op_type == "Constant" for n in res.model.graph.node)


def test_grouped_conv_is_unprunable_with_reason():
    rep = onnxprune.inspect(_conv_graph(constant_weights=False, group2=2))
    g = next(g for g in rep.groups if g.total == 8)
    assert not g.prunable and "grouped convolution" in g.reason


def test_channel_softmax_is_unprunable_but_model_still_prunes_elsewhere():
    model = _conv_graph(constant_weights=False, tail="Softmax")
    rep = onnxprune.inspect(model)
    tail = next(g for g in rep.groups if g.total == 4)
    assert not tail.prunable and "graph output" in tail.reason
    first = next(g for g in rep.groups if g.total == 8)
    assert first.prunable


def test_unknown_op_makes_group_unprunable():
    model = _conv_graph(constant_weights=False)
    model.graph.node[1].op_type = "LpNormalization"  # normalises across channels (axis=-1→W)
    rep = onnxprune.inspect(model)
    g = next(g for g in rep.groups if g.total == 8)
    assert not g.prunable and "LpNormalization" in g.reason


def test_transpose_to_channels_last_and_matmul_consumer():
    """NHWC-style: Conv → Transpose(0,2,3,1) → MatMul with a weight (channels on the last axis)."""
    rng = np.random.default_rng(2)
    w1 = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    w2 = rng.standard_normal((8, 5)).astype(np.float32)
    b2 = rng.standard_normal(5).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["h"]),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 3, 1]),
             helper.make_node("MatMul", ["t", "w2"], ["m"]),
             helper.make_node("Add", ["m", "b2"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                     ["N", 3, 6, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 4, 5])],
                          [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"),
                           numpy_helper.from_array(b2, "b2")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    x = rng.standard_normal((60, 3, 6, 6)).astype(np.float32)
    res = onnxprune.prune(model, {"x": x}, ratio=0.5)
    shapes = init_shapes(res.model)
    assert shapes["w1"][0] == 4 and shapes["w2"] == (4, 5)
    grp = next(g for g in res.report.groups if g.total == 8)
    assert 0 < grp.rel_error < 1


def test_folded_constants_do_not_count_as_parameters():
    """Paddle's exports reshape per-channel constants at run time (``Constant → Reshape → Add``).
    Folding the Reshape must not leave the unreshaped copy behind as a dead initializer that
    ``params_before`` would count twice."""
    from onnx import TensorProto, helper, numpy_helper
    import onnxprune
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    w2 = rng.standard_normal((4, 8, 1, 1)).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    nodes = [helper.make_node("Constant", [], ["b"], value=numpy_helper.from_array(b)),
             helper.make_node("Constant", [], ["shape"],
                              value=numpy_helper.from_array(np.array([1, 8, 1, 1], np.int64))),
             helper.make_node("Reshape", ["b", "shape"], ["b4"]),
             helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c", "b4"], ["a"]),
             helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                     ["n", 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, 8, 8])],
                          [numpy_helper.from_array(w, "w"), numpy_helper.from_array(w2, "w2")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.standard_normal((30, 3, 8, 8)).astype(np.float32)
    r = onnxprune.prune(m, {"x": x}, ratio=0.0).report
    assert r.params_before == w.size + w2.size + b.size == r.params_after
    half = onnxprune.prune(m, {"x": x}, ratio=0.5).report
    assert half.params_after == 4 * 27 + 4 + 4 * 4 + 4  # conv, its bias, conv2 and the bias its re-fit adds


class CrossedConcatAdd(nn.Module):
    """Add of two concatenations cut at different channels: [a(4) | b(4)] + [c(2) | d(6)] —
    channel 3 of one side is a's, of the other d's: no alignment exists."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1)
        self.c, self.d = nn.Conv2d(3, 2, 1), nn.Conv2d(3, 6, 1)
        self.e = nn.Conv2d(3, 5, 1)
        self.out = nn.Conv2d(8, 4, 1)
        self.side = nn.Conv2d(5, 4, 1)

    def forward(self, x):
        s = torch.cat([self.a(x), self.b(x)], 1) + torch.cat([self.c(x), self.d(x)], 1)
        return self.out(torch.relu(s)) + self.side(torch.relu(self.e(x)))


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_joins_that_cannot_line_up_are_reported(tmp_path, exporter):
    path = export(CrossedConcatAdd(), torch.zeros(2, 3, 5, 5), tmp_path / "m.onnx", exporter)
    rep = onnxprune.inspect(str(path))
    assert sorted((g.total, g.prunable) for g in rep.groups) == [
        (2, False), (4, False), (4, False), (4, False), (5, True), (6, False)]
    crossed = [g for g in rep.groups if "joins channel layouts that do not line up" in g.reason]
    assert sorted(g.total for g in crossed) == [2, 4, 4, 6]  # a, b, c, d; the rest prunes
    check_prune_roundtrip(path, (3, 5, 5), min_param_cut=0.05)
