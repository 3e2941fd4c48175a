"""Quantized (QDQ) models, as onnxruntime's ``quantize_static`` writes them (per tensor and per
channel, int8 weights, uint8 activations, int32 biases at s_x·s_w): pruned through the
``DequantizeLinear`` of every weight and the activation ``QuantizeLinear → DequantizeLinear``
pairs, re-fitted in float and quantized again in the layer's own scheme (``passes.qdq``).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import onnxprune
from onnxprune.api import split_samples
from onnxprune.cli import main
from onnxprune.graph import Graph
from onnxprune.metrics import count_params
from onnxprune.passbase import run_passes
from onnxprune.passes import NormalizePass
from onnxprune.passes.qdq import QdqLowerPass, QuantizedWeight, lift, requantize
from helpers import CALIB_IMG, MODELS, export, full_check

quantization = pytest.importorskip("onnxruntime.quantization")


def quantize(src, dst, feeds: list[dict], per_channel: bool, preprocess: bool = False):
    """``src`` quantized by onnxruntime (QDQ, int8 weights, uint8 activations)."""
    logging.getLogger().setLevel(logging.ERROR)  # the quantizer warns on every BatchNorm
    if preprocess:  # what onnxruntime recommends: shapes inferred, BatchNorm folded
        from onnxruntime.quantization.shape_inference import quant_pre_process
        pre = dst.with_name(dst.stem + "_float.onnx")
        quant_pre_process(str(src), str(pre))
        src = pre

    class Reader(quantization.CalibrationDataReader):
        def __init__(self):
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

    quantization.quantize_static(str(src), str(dst), Reader(),
                                 quant_format=quantization.QuantFormat.QDQ,
                                 per_channel=per_channel,
                                 weight_type=quantization.QuantType.QInt8,
                                 activation_type=quantization.QuantType.QUInt8)
    return src, dst


def session(model, fused: bool = True) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if not fused:  # the graph as written: float arithmetic between Q/DQ pairs
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def outputs(model, x, fused=True) -> np.ndarray:
    s = session(model, fused)
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def rel(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def dq_weights(model: onnx.ModelProto) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Float tensor made by each DequantizeLinear of constants → (q, scale, zero point)."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return {n.output[0]: tuple(inits[x] for x in n.input[:3]) for n in model.graph.node
            if n.op_type == "DequantizeLinear" and n.input[0] in inits}


# -- the re-quantization rule, on its own ------------------------------------------------------

def _record(w_float: np.ndarray, axis: int | None) -> tuple[QuantizedWeight, np.ndarray]:
    """A per-tensor / per-channel symmetric int8 weight as onnxruntime stores it, lifted."""
    if axis is None:
        s = np.array(np.abs(w_float).max() / 127, dtype=np.float32)
        q = np.clip(np.rint(w_float / s), -127, 127).astype(np.int8)
        z = np.array(0, dtype=np.int8)
    else:
        s = (np.abs(w_float).max(axis=1) / 127).astype(np.float32)
        q = np.clip(np.rint(w_float / s[:, None]), -127, 127).astype(np.int8)
        z = np.zeros(len(s), dtype=np.int8)
    node = onnx.helper.make_node("DequantizeLinear", ["q", "s", "z"], ["w"],
                                 **({} if axis is None else {"axis": axis}))
    g = onnx.helper.make_graph([node], "g", [], [onnx.helper.make_tensor_value_info(
        "w", onnx.TensorProto.FLOAT, None)], [numpy_helper.from_array(q, "q"),
                                              numpy_helper.from_array(s, "s"),
                                              numpy_helper.from_array(z, "z")])
    m = onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", 19)])
    nodes, records = lift(m, list(m.graph.node))
    assert nodes == [] and len(records) == 1
    lifted = numpy_helper.to_array(next(t for t in m.graph.initializer if t.name == "w"))
    return records[0], lifted


def test_requantize_per_channel_keeps_unchanged_rows_and_rescales_changed_ones():
    rng = np.random.default_rng(0)
    rec, w = _record(rng.standard_normal((6, 10)).astype(np.float32), axis=0)
    assert np.array_equal(w, (rec.q.astype(np.float32) * rec.scale[:, None]))
    new = w[[0, 2, 5]].copy()  # rows 0, 2, 5 kept: rows 0 and 5 untouched, row 2 re-fitted
    new[1] = rng.standard_normal(10).astype(np.float32) * 3
    q, s, z = requantize(rec, new)
    assert np.array_equal(q[[0, 2]], rec.q[[0, 5]]) and np.array_equal(s[[0, 2]], rec.scale[[0, 5]])
    assert s[1] == np.float32(np.abs(new[1]).max() / 127)  # R± = 127: onnxruntime's scheme
    assert np.abs(q[1]).max() == 127 and not z.any()
    assert np.abs(q[1] * s[1] - new[1]).max() <= s[1] / 2 + 1e-7


def test_requantize_per_tensor_keeps_the_scale_unless_values_leave_its_range():
    rng = np.random.default_rng(1)
    rec, w = _record(rng.standard_normal((4, 8)).astype(np.float32), axis=None)
    inside = w[:, :5] * 0.5
    q, s, z = requantize(rec, inside)
    assert s == rec.scale and z == rec.zero_point
    assert np.abs(q * s - inside).max() <= s / 2 + 1e-7
    outside = w[:, :5] * 3
    q, s, _ = requantize(rec, outside)
    assert s == np.float32(np.abs(outside).max() / 127) and np.abs(q).max() == 127
    assert np.array_equal(requantize(rec, w)[0], rec.q)  # the same values: the same integers


# -- real exported models quantized by onnxruntime ----------------------------------------------

def _fake_quant_linear(torch):
    class FakeQuantLinear(torch.nn.Linear):
        """A Linear layer trained with per-channel fake quantization of its weight (what
        quantization-aware training exports: QuantizeLinear → DequantizeLinear of the float
        weight, the scale computed from it)."""

        def forward(self, x):
            s = (self.weight.detach().abs().amax(dim=1) / 127).clamp(min=1e-8)
            z = torch.zeros_like(s, dtype=torch.int32)
            w = torch.fake_quantize_per_channel_affine(self.weight, s, z, 0, -128, 127)
            return torch.nn.functional.linear(x, w, self.bias)
    return FakeQuantLinear


@pytest.fixture(scope="module", params=["legacy", "dynamo"])
def mlp(request, tmp_path_factory):
    """A torch MLP 20 → 16 → 5, exported and quantized by onnxruntime per tensor and per
    channel, and the same MLP with fake-quantized weights (torch's export of QAT)."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(20, 16), torch.nn.ReLU(), torch.nn.Linear(16, 5))
    d = tmp_path_factory.mktemp(f"qdq_mlp_{request.param}")
    src = export(module, torch.zeros(2, 20), d / "mlp.onnx", request.param)
    x = np.random.default_rng(0).standard_normal((200, 20)).astype(np.float32)
    feeds = [{"input": x[i:i + 1]} for i in range(100)]
    models = {form: quantize(src, d / f"mlp_{form}.onnx", feeds, form == "per-channel")[1]
              for form in ("per-tensor", "per-channel")}
    fq = _fake_quant_linear(torch)
    qat = torch.nn.Sequential(fq(20, 16), torch.nn.ReLU(), fq(16, 5))
    qat.load_state_dict(module.state_dict())
    models["fake-quant"] = export(qat, torch.zeros(2, 20), d / "mlp_fq.onnx", request.param)
    return models, x


def _lifted(model):
    """The model with its quantized weights as float (NormalizePass), and their records."""
    lifted, (norm,) = run_passes([NormalizePass()], model)
    return Graph(lifted), {r.name: r for r in norm.info["quantized"]}


@pytest.mark.parametrize("form", ["per-tensor", "per-channel", "fake-quant"])
def test_qdq_mlp_refit_is_the_least_squares_solution_quantized(mlp, form):
    models, x = mlp
    path = models[form]
    original = onnx.load(str(path))
    res = onnxprune.prune(str(path), {"input": x}, ratio=0.5, ridge=0.0)
    full_check(res.model)
    ops = [n.op_type for n in original.graph.node if "Quantize" in n.op_type]
    assert sorted(ops) == sorted(n.op_type for n in res.model.graph.node
                                 if "Quantize" in n.op_type)  # every Q/DQ kept
    before, after = dq_weights(original), dq_weights(res.model)
    assert len(after) == len(before)  # stored integers stay integers (none for fake-quant)
    assert all(q.dtype == before[k][0].dtype for k, (q, _, _) in after.items())
    g0, recs0 = _lifted(original)
    g1, recs1 = _lifted(res.model)
    first, second = [n for n in g0.nodes if n.op_type in ("Gemm", "MatMul")]
    assert {first.input[1], second.input[1]} <= set(recs0) and set(recs0) == set(recs1)

    def rows(g, n):  # [out, in]
        w = g.const(n.input[1]).astype(np.float64)
        return w if n.op_type == "Gemm" else w.T

    # which hidden neurons were kept: the first layer's rows are untouched, so they keep their
    # values (integers and, per channel, scales) bit for bit
    rows0, rows1 = rows(g0, first), rows(g1, first)
    kept = [next(i for i in range(len(rows0)) if np.array_equal(rows0[i], r)) for r in rows1]
    assert len(kept) == 8 and kept == sorted(set(kept))
    r0, r1 = recs0[first.input[1]], recs1[first.input[1]]
    assert np.array_equal(r1.scale, r0.scale[kept] if r0.axis is not None else r0.scale)
    # the consumer's re-fit: least squares on its (fake-quantized) inputs of the selection
    # samples, with the bias, then quantized in the layer's scheme
    hid = second.input[0]
    probe = onnx.ModelProto()
    probe.CopyFrom(g0.model)
    probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(hid))
    sel, _ = split_samples(len(x), 0.2, 0)
    h = session(probe).run([hid], {"input": x[sel]})[0].astype(np.float64)
    W = rows(g0, second)
    A = np.hstack([h[:, kept], np.ones((len(h), 1))])
    coef, *_ = np.linalg.lstsq(A, h @ W.T, rcond=None)
    w_fit, w_new = coef[:-1].T, rows(g1, second)
    rec = recs1[second.input[1]]
    out_axis = 0 if second.op_type == "Gemm" else 1
    step = np.asarray(rec.scale, dtype=np.float64)
    step = step.reshape(-1, 1) if rec.axis is not None and rec.axis == out_axis else step
    assert np.all(np.abs(w_new - w_fit) <= step / 2 + 1e-6 * np.abs(w_fit).max())
    if form != "fake-quant":  # the int32 bias stays at s_x·s_w: onnxruntime's integer kernel
        fused, plain = outputs(res.model, x), outputs(res.model, x, fused=False)  # and the
        orig_gap = rel(outputs(path, x), outputs(path, x, fused=False))  # graph agree
        assert rel(fused, plain) < max(3 * orig_gap, 1e-3)
    same = onnxprune.prune(str(path), {"input": x}, ratio=0.0)  # nothing pruned: the input
    assert np.array_equal(outputs(same.model, x), outputs(path, x))


@pytest.fixture(scope="module", params=["legacy", "dynamo"])
def digits(request, tmp_path_factory):
    """The digits ResNet of ``models/`` (both exporters), BatchNorm folded by onnxruntime's
    pre-processing, quantized per tensor and per channel on 64 calibration samples."""
    d = tmp_path_factory.mktemp(f"qdq_resnet_{request.param}")
    calib = np.load(CALIB_IMG)["input"]
    feeds = [{"input": calib[i:i + 1]} for i in range(64)]
    out = {}
    for pc in (False, True):
        float_path, q = quantize(MODELS / f"resnet_{request.param}.onnx",
                                 d / f"resnet_{pc}.onnx", feeds, pc, preprocess=True)
        out[pc] = (float_path, q)
    return out


def test_qdq_round_trip_restores_every_quantized_tensor_bit_for_bit(digits):
    _, q = digits[True]
    model = onnx.load(str(q))
    lifted, (norm,) = run_passes([NormalizePass()], model)
    records = norm.info["quantized"]
    assert len(records) == 20  # 9 convs and the fc: weight and int32 bias each
    assert not any(n.op_type == "DequantizeLinear" and n.input[0] in {
        t.name for t in lifted.graph.initializer} for n in lifted.graph.node)
    lowered = run_passes([QdqLowerPass(records)], lifted)[0]
    original = {t.name: t.SerializeToString() for t in model.graph.initializer}
    restored = {t.name: t.SerializeToString() for t in lowered.graph.initializer}
    assert restored == original
    x = np.load(CALIB_IMG)["input"][:50]
    assert np.array_equal(outputs(lowered, x), outputs(model, x))
    assert count_params(lifted) == count_params(model)
    rep = onnxprune.inspect(str(q))
    assert rep.quantized == 20 and rep.to_dict()["quantized_weights"] == 20
    assert "20 quantized (QDQ) weight tensor(s)" in rep.to_text()
    assert onnxprune.inspect(str(MODELS / "resnet_legacy.onnx")).quantized == 0


@pytest.mark.parametrize("per_channel", [False, True])
def test_qdq_digits_resnet_pruned_at_half_stays_near_the_pruned_float_model(
        digits, per_channel, tmp_path):
    float_path, q = digits[per_channel]
    test = np.load(MODELS / "digits_test.npz")
    x, y = test["x"], test["y"]
    res = onnxprune.prune(str(q), CALIB_IMG, ratio=0.5, round_to=1, reference=str(float_path))
    flt = onnxprune.prune(str(float_path), CALIB_IMG, ratio=0.5, round_to=1)
    full_check(res.model)
    assert res.report.params_after == flt.report.params_after  # the same widths
    assert res.report.params_after < 0.3 * res.report.params_before
    acc_q = float(np.mean(outputs(res.model, x).argmax(1) == y))
    acc_f = float(np.mean(outputs(flt.model, x).argmax(1) == y))
    assert acc_q >= acc_f - 0.03, (acc_q, acc_f)
    # the weights stay int8: the saved model is about a quarter of the float one
    res.save(tmp_path / "q.onnx")
    flt.save(tmp_path / "f.onnx", external_data=False)
    assert (tmp_path / "q.onnx").stat().st_size < 0.5 * (tmp_path / "f.onnx").stat().st_size
    assert rel(outputs(res.model, x), outputs(res.model, x, fused=False)) < 1e-2
    ref = res.report.reference
    assert ref["model"] == float_path.name
    assert ref["input_fidelity"]["logits"]["cosine"] > 0.999  # the quantized input, unpruned
    assert res.report.to_dict()["reference"] == ref


def test_qdq_ratio_zero_gives_the_input_back(digits):
    _, q = digits[False]
    res = onnxprune.prune(str(q), CALIB_IMG, ratio=0.0)
    original = {t.name: t.SerializeToString() for t in onnx.load(str(q)).graph.initializer}
    assert {t.name: t.SerializeToString() for t in res.model.graph.initializer} == original


def test_cli_reference_and_its_errors(digits, tmp_path, capsys):
    float_path, q = digits[True]
    out = tmp_path / "p.onnx"
    page = tmp_path / "report.html"
    rc = main(["prune", str(q), str(out), "--calib", str(CALIB_IMG), "--ratio", "0.3",
               "--reference", str(float_path), "--html", str(page), "-q"])
    assert rc == 0 and out.exists()
    assert f"fidelity measured against</td><td>{float_path.name} (the input model itself" in \
        page.read_text()
    bad = tmp_path / "other.onnx"
    onnx.save(onnx.load(str(MODELS / "mlp_skl.onnx")), str(bad))
    for ref, msg in ((bad, "does not read the same inputs"), (tmp_path / "no.onnx",
                                                              "does not exist")):
        out2 = tmp_path / "p2.onnx"
        rc = main(["prune", str(q), str(out2), "--calib", str(CALIB_IMG), "--ratio", "0.3",
                   "--reference", str(ref), "-q"])
        assert rc == 2 and not out2.exists()
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("onnxprune: error:") and msg in err[0]
    before = float_path.read_bytes()  # the reference is never overwritten, even with --force
    rc = main(["prune", str(q), str(float_path), "--calib", str(CALIB_IMG), "--ratio", "0.3",
               "--reference", str(float_path), "--force", "-q"])
    assert rc == 2 and float_path.read_bytes() == before
    assert "reference model" in capsys.readouterr().err


def test_sparsify_refuses_a_quantized_model(digits, tmp_path):
    _, q = digits[False]
    with pytest.raises(onnxprune.errors.ModelError, match="quantized"):
        onnxprune.sparsify(str(q), CALIB_IMG, sparsity=0.5)


def test_blocked_quantization_is_left_alone_and_reported():
    """Blocked weights (opset 21 ``block_size``) are not lifted: never folded to float either;
    the layer reading one is unprunable with the reason."""
    from onnx import TensorProto, helper
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    q2 = rng.integers(-127, 127, (4, 8, 3, 3)).astype(np.int8)
    s2 = (rng.random((4, 4, 3, 3)) * 0.01 + 0.001).astype(np.float32)  # blocks of 2 on axis 1
    nodes = [helper.make_node("Conv", ["x", "w1"], ["h"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("DequantizeLinear", ["q2", "s2"], ["w2"], axis=1, block_size=2),
             helper.make_node("Conv", ["r", "w2"], ["y"], pads=[1, 1, 1, 1])]
    g = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, 8, 8])],
        [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (q2, "q2"), (s2, "s2"))])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    normalized, (norm,) = run_passes([NormalizePass()], m)
    assert norm.info["quantized"] == ()
    assert [n.op_type for n in normalized.graph.node].count("DequantizeLinear") == 1
    (group,) = onnxprune.inspect(m).groups
    assert not group.prunable and "run-time weight" in group.reason


@pytest.fixture(scope="module", params=["legacy", "dynamo"])
def qdq_attention(request, tmp_path_factory):
    """Separate Q/K/V/O projections, quantized per channel: Q/DQ pairs after every
    projection, Reshape and Transpose of the attention plumbing."""
    pytest.importorskip("torch")
    from test_topology_attention import D, Attention, _x
    from transformer_helpers import export_seq, randomize
    m = Attention()
    randomize(m, 5)
    d = tmp_path_factory.mktemp(f"qdq_attn_{request.param}")
    import torch
    src = export_seq(m, torch.randn(2, 5, D), d / "attn.onnx", request.param)
    x = _x(96, 7)
    return quantize(src, d / "attn_q.onnx", [{"input": x[i:i + 4]} for i in range(0, 64, 4)],
                    True)[1], x


def test_qdq_attention_heads_are_pruned(qdq_attention):
    from test_topology_attention import HEAD_PARAMS, H, _x
    path, x = qdq_attention
    groups = onnxprune.inspect(str(path)).groups
    heads = [g for g in groups if g.kind == "heads"]
    assert [(g.total, g.prunable, len(g.producers)) for g in heads] == [(H, True, 3)]
    res = onnxprune.prune(str(path), {"input": x}, ratio=0.0, head_ratio=0.5)
    full_check(res.model)
    r = res.report
    assert r.params_before - r.params_after == 2 * HEAD_PARAMS  # as in the float model
    assert len(dq_weights(res.model)) == len(dq_weights(onnx.load(str(path))))
    for feeds in (_x(1, 3, 1), _x(3, 11, 2)):
        out, ref = outputs(res.model, feeds), outputs(path, feeds)
        assert out.shape == ref.shape and np.isfinite(out).all()
    assert r.fidelity["output"].cosine > 0.9


def test_min_cosine_against_a_reference_the_input_itself_misses(digits, tmp_path, capsys):
    """The quantized input is itself only so close to the float original: a fidelity target
    above that is refused up front, with the input's own figure."""
    float_path, q = digits[True]
    out = tmp_path / "p.onnx"
    rc = main(["prune", str(q), str(out), "--calib", str(CALIB_IMG), "--min-cosine", "0.999999",
               "--reference", str(float_path), "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and not out.exists() and len(err) == 1
    assert "the input model itself, unpruned, has a held-out cosine of 0.99" in err[0]
    res = onnxprune.prune(str(q), CALIB_IMG, min_cosine=0.99, reference=str(float_path))
    assert res.report.budget["kind"] == "min_cosine"
    assert res.report.fidelity["logits"].cosine >= 0.99  # against the float model
    assert res.report.macs_after < res.report.macs_before


def test_operator_format_models_are_refused_with_the_way_out(tmp_path, capsys):
    """Integer-operator quantization (QLinearConv …, or quantize_dynamic's MatMulInteger)
    leaves nothing to prune: one clear line, exit 2, nothing written — not a silent no-op."""
    calib = np.load(CALIB_IMG)["input"]
    static = tmp_path / "qop.onnx"

    class Reader(quantization.CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"input": calib[i:i + 1]} for i in range(16)])

        def get_next(self):
            return next(self.it, None)

    logging.getLogger().setLevel(logging.ERROR)
    quantization.quantize_static(str(MODELS / "resnet_legacy.onnx"), str(static), Reader(),
                                 quant_format=quantization.QuantFormat.QOperator)
    dynamic = tmp_path / "dyn.onnx"
    quantization.quantize_dynamic(str(MODELS / "mlp_skl.onnx"), str(dynamic))
    for path, op in ((static, "QLinearConv"), (dynamic, "MatMulInteger")):
        with pytest.raises(onnxprune.errors.ModelError, match=f"operator format.*{op}"):
            onnxprune.inspect(str(path))
        out = tmp_path / "out.onnx"
        calib_file = CALIB_IMG if path == static else MODELS / "digits_calib_flat.npz"
        rc = main(["prune", str(path), str(out), "--calib", str(calib_file), "--ratio", "0.5"])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and not out.exists() and len(err) == 1
        assert err[0].startswith("onnxprune: error:") and "QDQ" in err[0]


@pytest.fixture(scope="module", params=["legacy", "dynamo"])
def qdq_vit(request, tmp_path_factory):
    """The digits ViT of ``models/`` (``nn.MultiheadAttention``: one fused in-projection),
    quantized per channel: a Q/DQ pair after every Reshape/Transpose of the attention plumbing."""
    d = tmp_path_factory.mktemp(f"qdq_vit_{request.param}")
    calib = np.load(CALIB_IMG)["input"]
    src = MODELS / f"vit_{request.param}.onnx"
    return src, quantize(src, d / "vit_q.onnx", [{"input": calib[i:i + 1]} for i in range(64)],
                         True)[1]


def test_qdq_fused_attention_heads_are_pruned_like_the_float_model(qdq_vit):
    src, q = qdq_vit
    groups = onnxprune.inspect(str(q)).groups
    flt = onnxprune.inspect(str(src)).groups
    assert [(g.kind, g.total, g.prunable) for g in groups] == \
        [(g.kind, g.total, g.prunable) for g in flt]
    assert sum(g.kind == "heads" and g.prunable for g in groups) == 2
    res = onnxprune.prune(str(q), CALIB_IMG, ratio=0.5, round_to=1)
    ref = onnxprune.prune(str(src), CALIB_IMG, ratio=0.5, round_to=1)
    full_check(res.model)
    assert res.report.params_after == ref.report.params_after
    # every weight is still stored as integers: no float tensor beyond scales and LayerNorms
    assert max(int(np.prod(t.dims)) for t in res.model.graph.initializer
               if t.data_type == onnx.TensorProto.FLOAT) <= 64
    test = np.load(MODELS / "digits_test.npz")
    x, y = test["x"], test["y"]
    acc_q = float(np.mean(outputs(res.model, x).argmax(1) == y))
    acc_f = float(np.mean(outputs(ref.model, x).argmax(1) == y))
    assert acc_q >= acc_f - 0.03, (acc_q, acc_f)
    gap = rel(outputs(q, x), outputs(q, x, fused=False))
    assert rel(outputs(res.model, x), outputs(res.model, x, fused=False)) < 3 * gap


def test_bias_at_sx_sw_follows_the_pruned_width():
    """A per-channel int32 bias scale beside a per-tensor weight scale (s_b[c] = s_x·s_w for
    every c): after pruning, the bias has fewer entries and its scale as many."""
    q = np.array([10, -20, 30, 40], dtype=np.int32)
    s_x, s_w = np.float32(0.02), np.float32(0.5)
    s_b = np.full(4, s_x * s_w, dtype=np.float32)
    rec = QuantizedWeight(name="b", node=onnx.helper.make_node("DequantizeLinear", ["q", "s"],
                                                               ["b"]),
                          tensors=(), q=q, scale=s_b, zero_point=np.zeros(4, np.int32), axis=0,
                          digest=b"", x_scale=np.asarray(s_x))
    kept = (q[[0, 2, 3]] * s_b[0]).astype(np.float32) + np.float32(0.05)  # re-fitted bias
    qb, sb, zb = QdqLowerPass._bias(rec, kept, np.asarray(s_w * 2, dtype=np.float32))
    assert sb.shape == zb.shape == qb.shape == (3,)
    assert np.allclose(sb, s_x * s_w * 2) and not zb.any()
    assert np.abs(qb * sb.astype(np.float64) - kept).max() <= sb.max() / 2 + 1e-9
