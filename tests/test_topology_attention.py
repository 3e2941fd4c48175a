"""Multi-head attention: heads as prunable groups (g = head_dim at the output projection).

Forms: hand-written separate Q/K/V (eager softmax and F.scaled_dot_product_attention),
nn.MultiheadAttention and nn.TransformerEncoderLayer (fused in_proj), the timm / PaddleOCR fused
QKV (``qkv(x).reshape(b, s, 3, h, d).permute(2, 0, 3, 1, 4)`` read by ``unbind(0)`` or indexing),
a tiny transformers BertModel — each with both torch exporters, dynamic batch and sequence
length (the legacy
exporter bakes the sequence length into nn.MultiheadAttention's K/V reshapes, so those exports
use a fixed sequence length). Unprovable structures must be unprunable with a reason.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import onnxprune  # noqa: E402
from helpers import full_check, run  # noqa: E402
from onnxprune.api import split_samples  # noqa: E402
from onnxprune.calibrate import session  # noqa: E402
from transformer_helpers import (  # noqa: E402
    analysis, check_identity_and_dynamic, export_seq, float_params, head_groups, randomize,
    scalars)

D, H = 16, 4
HD = D // H


class Attention(nn.Module):
    def __init__(self, sdpa: bool = False, k_residual: bool = False):
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(D, D) for _ in range(4))
        self.sdpa, self.k_residual = sdpa, k_residual

    def forward(self, x):
        b, s, _ = x.shape
        k_flat = self.k(x)
        q = self.q(x).view(b, s, H, HD).transpose(1, 2)
        k = k_flat.view(b, s, H, HD).transpose(1, 2)
        v = self.v(x).view(b, s, H, HD).transpose(1, 2)
        if self.sdpa:
            a = F.scaled_dot_product_attention(q, k, v)
        else:
            a = torch.softmax(q @ k.transpose(-2, -1) / HD ** 0.5, dim=-1) @ v
        y = self.o(a.transpose(1, 2).reshape(b, s, D)) + x
        return y + k_flat if self.k_residual else y


def _x(n, s, seed=0):
    return np.random.default_rng(seed).standard_normal((n, s, D)).astype(np.float32)


HEAD_PARAMS = HD * (3 * (D + 1) + D)  # per head: Q, K, V columns + biases, out-proj rows


def _exported_form(request, tmp_path_factory, make, seed: int, stem: str):
    """The module ``make(form)`` with random weights, exported as ``request.param`` =
    (exporter, form) says, dynamic batch and sequence."""
    exporter, form = request.param
    m = make(form)
    randomize(m, seed)
    path = tmp_path_factory.mktemp(stem) / f"{stem}_{exporter}_{form}.onnx"
    return export_seq(m, torch.randn(2, 5, D), path, exporter)


@pytest.fixture(scope="module", params=[(e, f) for e in ("legacy", "dynamo")
                                        for f in ("eager", "sdpa")], ids=lambda p: "-".join(p))
def attn(request, tmp_path_factory):
    return _exported_form(request, tmp_path_factory, lambda f: Attention(sdpa=f == "sdpa"), 5,
                          "attn")


def test_heads_group(attn):
    (g,) = head_groups(attn)
    assert g.prunable, g.reason
    assert g.size == H and len(g.producers) == 3  # Q, K and V projections, one index space
    (site,) = g.consumers
    assert site.g == HD  # a head is HD columns of the output projection's input
    rep = onnxprune.inspect(attn)
    assert [e.kind for e in rep.groups if e.prunable] == ["heads"]
    row = next(r for r in rep.to_text().splitlines() if r.split()[:1] == ["1"])
    assert row.split()[2:5] == ["heads", str(H), "yes"], rep.to_text()


def test_prune_heads_dynamic(attn):
    x = _x(48, 5)
    res = check_identity_and_dynamic(attn, {"input": x}, [{"input": _x(1, 3, 1)},
                                                           {"input": _x(3, 11, 2)}],
                                     ratio=0.9, head_ratio=0.5)
    r = res.report
    (g,) = [g for g in r.groups if g.kind == "heads"]
    assert (g.total, g.kept) == (H, 2)
    assert r.params_before - r.params_after == 2 * HEAD_PARAMS
    assert float_params(res.model) == r.params_after
    same = onnxprune.prune(attn, {"input": x}, ratio=0.0).model
    assert scalars(res.model) == scalars(same)  # 1/√head_dim unchanged


def _refit_matches_lstsq(path, feeds, out_proj_weight_is_gemm=False):
    """The re-fitted output projection equals np.linalg.lstsq on the captured per-head
    attention outputs (kept heads' columns + a constant column for the bias)."""
    res = onnxprune.prune(path, feeds, ratio=0.5, seed=0, ridge=0.0)
    model, an = analysis(path)
    (g,) = [g for g in an.groups if g.kind == "heads"]
    (site,) = g.consumers
    name = next(iter(feeds))
    sel, _ = split_samples(len(feeds[name]), 0.2, 0)
    sess = session(model, [site.tensor])
    B = sess.run([site.tensor], {k: v[sel] for k, v in feeds.items()})[0]
    B = B.reshape(-1, B.shape[-1]).astype(np.float64)
    node = next(n for n in model.graph.node if n.name == site.node)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    W = inits[node.input[1]].astype(np.float64)
    W = W.T if node.op_type == "Gemm" and any(
        a.name == "transB" and a.i for a in node.attribute) else W
    # kept heads: the pruned V projection keeps whole HD-column blocks of the original
    vname = g.producers[-1]
    v_old = inits[next(n for n in model.graph.node if n.name == vname).input[1]]
    pinits = {t.name: numpy_helper.to_array(t) for t in res.model.graph.initializer}
    v_new = pinits[next(n for n in res.model.graph.node if n.name == vname).input[1]]
    cols = [int(np.argmin(np.abs(v_old - v_new[:, [j]]).sum(axis=0)))
            for j in range(v_new.shape[1])]
    heads = sorted({c // HD for c in cols})
    assert len(heads) == 2 and cols == [h * HD + i for h in heads for i in range(HD)]
    T = B @ W
    X = np.hstack([B[:, cols], np.ones((len(B), 1))])
    sol = np.linalg.lstsq(X, T, rcond=None)[0]
    pnode = next(n for n in res.model.graph.node if n.name == site.node)
    W_new = pinits[pnode.input[1]].astype(np.float64)
    if pnode.op_type == "Gemm" and any(a.name == "transB" and a.i for a in pnode.attribute):
        W_new = W_new.T
    scale = np.abs(sol[:-1]).max()
    np.testing.assert_allclose(W_new, sol[:-1], atol=1e-4 * scale)
    return res


def test_refit_equals_lstsq_on_heads(tmp_path):
    m = Attention()
    randomize(m, 6)
    path = export_seq(m, torch.randn(2, 5, D), tmp_path / "a.onnx", "legacy")
    _refit_matches_lstsq(path, {"input": _x(48, 5)})


# -- fused QKV ----------------------------------------------------------------------------------
class MHA(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.MultiheadAttention(D, H, batch_first=True)

    def forward(self, x):
        return self.a(x, x, x, need_weights=False)[0] + x


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.l = nn.TransformerEncoderLayer(D, H, 2 * D, dropout=0.0, batch_first=True)

    def forward(self, x):  # is_causal given: the legacy exporter cannot trace the detection
        return self.l(x, is_causal=False)


@pytest.fixture(scope="module", params=[(e, m) for e in ("legacy", "dynamo")
                                        for m in ("mha", "encoder")], ids=lambda p: "-".join(p))
def fused(request, tmp_path_factory):
    exporter, kind = request.param
    m = MHA() if kind == "mha" else Encoder()
    randomize(m, 7)
    path = tmp_path_factory.mktemp("fused") / f"{kind}_{exporter}.onnx"
    # legacy: nn.MultiheadAttention's K/V views get the traced sequence length as a literal
    return export_seq(m, torch.randn(2, 5, D), path, exporter, dynamic_seq=exporter == "dynamo"), \
        exporter, kind


def test_fused_qkv_heads(fused):
    path, exporter, kind = fused
    (g,) = head_groups(path)
    assert g.prunable and g.size == H and g.consumers[0].g == HD, g.reason
    x = _x(48, 5)
    seq = 9 if exporter == "dynamo" else 5
    res = check_identity_and_dynamic(path, {"input": x}, [{"input": _x(1, seq, 1)},
                                                           {"input": _x(3, seq, 2)}],
                                     ratio=0.5, head_ratio=0.25)
    r = res.report
    (gr,) = [e for e in r.groups if e.kind == "heads"]
    assert (gr.total, gr.kept) == (H, 3)
    ffn = 2 * D if kind == "encoder" else 0
    assert r.params_before - r.params_after == HEAD_PARAMS + (ffn // 2) * (2 * D + 1)


def test_fused_qkv_refit_equals_lstsq(fused):
    path, _, _ = fused
    _refit_matches_lstsq(path, {"input": _x(48, 5)})


class TimmAttention(nn.Module):
    """timm's ``Attention`` (and PaddleOCR's SVTR attention): one fused qkv Linear, the heads
    split in the same reshape and moved before the sequence axis."""

    def __init__(self, unbind: bool):
        super().__init__()
        self.qkv, self.proj, self.unbind = nn.Linear(D, 3 * D), nn.Linear(D, D), unbind

    def forward(self, x):
        b, s, _ = x.shape
        qkv = self.qkv(x).reshape(b, s, 3, H, HD).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0) if self.unbind else (qkv[0], qkv[1], qkv[2])
        a = torch.softmax(q @ k.transpose(-2, -1) * HD ** -0.5, dim=-1) @ v
        return self.proj(a.transpose(1, 2).reshape(b, s, D)) + x


@pytest.fixture(scope="module", params=[(e, f) for e in ("legacy", "dynamo")
                                        for f in ("unbind", "index")], ids=lambda p: "-".join(p))
def timm_attn(request, tmp_path_factory):
    return _exported_form(request, tmp_path_factory,
                          lambda f: TimmAttention(unbind=f == "unbind"), 8, "timm")


def test_timm_fused_qkv_heads(timm_attn):
    (g,) = head_groups(timm_attn)
    assert g.prunable and g.size == H and len(g.producers) == 3, g.reason
    assert g.consumers[0].g == HD
    res = check_identity_and_dynamic(timm_attn, {"input": _x(48, 5)},
                                     [{"input": _x(1, 3, 1)}, {"input": _x(3, 11, 2)}],
                                     ratio=0.5, head_ratio=0.5)
    (gr,) = [e for e in res.report.groups if e.kind == "heads"]
    assert (gr.total, gr.kept) == (H, 2)
    assert res.report.params_before - res.report.params_after == 2 * HEAD_PARAMS
    assert float_params(res.model) == res.report.params_after


def test_timm_fused_qkv_refit_equals_lstsq(timm_attn):
    _refit_matches_lstsq(timm_attn, {"input": _x(48, 5)})


def test_legacy_mha_with_dynamic_seq_is_unprunable(tmp_path):
    """The legacy exporter writes the traced sequence length into K/V's reshape: the model
    itself only runs at that length, and the heads are reported unprunable, not mangled."""
    m = MHA()
    randomize(m, 8)
    path = export_seq(m, torch.randn(2, 5, D), tmp_path / "m.onnx", "legacy")
    (g,) = head_groups(path) or [None]
    rep = onnxprune.inspect(path)
    assert not any(e.prunable and e.kind == "heads" for e in rep.groups)
    bad = [e for e in rep.groups if not e.prunable and e.total in (H, D) and e.reason]
    assert bad and any("Reshape" in e.reason for e in bad), rep.to_text()


# -- unprovable structures ----------------------------------------------------------------------
def test_k_used_elsewhere_is_unprunable(tmp_path):
    m = Attention(k_residual=True)
    randomize(m, 9)
    path = export_seq(m, torch.randn(2, 5, D), tmp_path / "k.onnx", "dynamo")
    rep = onnxprune.inspect(path)
    assert not any(e.prunable for e in rep.groups)
    heads = [e for e in rep.groups if e.kind == "heads"]
    assert heads and all(e.reason for e in heads)
    assert any("Add node" in e.reason for e in heads), rep.to_text()
    x = _x(16, 5)
    res = onnxprune.prune(path, {"input": x}, ratio=0.5)
    assert res.report.params_after == res.report.params_before


def _runtime_heads_model() -> onnx.ModelProto:
    """Q/K/V → Reshape to [b, s, heads, 4] whose head count is a *graph input* (not provable)."""
    rng = np.random.default_rng(0)
    inits, nodes = [], []

    def w(name, shape):
        inits.append(numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name))
        return name

    inits.append(numpy_helper.from_array(np.asarray([4], dtype=np.int64), "hd"))
    inits.append(numpy_helper.from_array(np.asarray([0, 0, D], dtype=np.int64), "flat"))
    nodes.append(helper.make_node("Shape", ["x"], ["bs"], start=0, end=2))
    nodes.append(helper.make_node("Concat", ["bs", "nh", "hd"], ["heads_shape"], axis=0))
    for p in "qkv":
        nodes.append(helper.make_node("MatMul", ["x", w(f"W{p}", (D, D))], [f"{p}0"]))
        nodes.append(helper.make_node("Reshape", [f"{p}0", "heads_shape"], [f"{p}1"]))
        perm = [0, 2, 3, 1] if p == "k" else [0, 2, 1, 3]
        nodes.append(helper.make_node("Transpose", [f"{p}1"], [f"{p}2"], perm=perm))
    nodes += [helper.make_node("MatMul", ["q2", "k2"], ["s"]),
              helper.make_node("Softmax", ["s"], ["p"], axis=-1),
              helper.make_node("MatMul", ["p", "v2"], ["a"]),
              helper.make_node("Transpose", ["a"], ["a1"], perm=[0, 2, 1, 3]),
              helper.make_node("Reshape", ["a1", "flat"], ["a2"]),
              helper.make_node("MatMul", ["a2", w("Wo", (D, D))], ["y"])]
    graph = helper.make_graph(
        nodes, "runtime_heads",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", "seq", D]),
         helper.make_tensor_value_info("nh", onnx.TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", "seq", D])],
        inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_runtime_head_count_is_unprunable():
    model = _runtime_heads_model()
    full_check(model)
    x = _x(2, 5)
    run(model, {"x": x, "nh": np.asarray([4], dtype=np.int64)})
    rep = onnxprune.inspect(model)
    assert not any(e.prunable for e in rep.groups), rep.to_text()
    qkv = [e for e in rep.groups if "Reshape" in e.reason]
    assert len(qkv) == 3 and all("cannot be evaluated" in e.reason for e in qkv)


# -- transformers BertModel -----------------------------------------------------------------------
def _bert(impl: str):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=40, hidden_size=D, num_hidden_layers=2,
                                  num_attention_heads=H, intermediate_size=2 * D,
                                  max_position_embeddings=32, attn_implementation=impl)
    torch.manual_seed(0)
    bert = transformers.BertModel(cfg, add_pooling_layer=False).eval()
    randomize(bert, 10)

    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.b = bert

        def forward(self, ids, mask):
            return self.b(input_ids=ids, attention_mask=mask).last_hidden_state

    return Wrap().eval()


def _bert_feeds(n, s, seed=0):
    rng = np.random.default_rng(seed)
    mask = np.ones((n, s), np.int64)
    mask[::3, s - 2:] = 0  # some padded sequences
    return {"input_ids": rng.integers(0, 40, (n, s)).astype(np.int64), "attention_mask": mask}


def _check_bert(path):
    groups = head_groups(path)
    assert len(groups) == 2 and all(g.prunable and g.size == H for g in groups)
    res = check_identity_and_dynamic(path, _bert_feeds(48, 6), [_bert_feeds(1, 3, 1),
                                                                 _bert_feeds(3, 10, 2)],
                                     ratio=0.5, head_ratio=0.25)
    r = res.report
    heads = [e for e in r.groups if e.kind == "heads"]
    ffn = [e for e in r.groups if e.kind == "channels" and e.prunable]
    assert [(e.total, e.kept) for e in heads] == [(H, 3)] * 2
    assert [(e.total, e.kept) for e in ffn] == [(2 * D, D)] * 2
    assert r.params_before - r.params_after == 2 * HEAD_PARAMS + 2 * D * (2 * D + 1)
    hidden = [e for e in r.groups if not e.prunable]
    assert hidden and all("residual" in e.reason or "graph output" in e.reason for e in hidden)


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_bert_legacy(tmp_path, impl):
    path = export_seq(_bert(impl), tuple(torch.from_numpy(v) for v in _bert_feeds(2, 7).values()),
                      tmp_path / "bert.onnx", "legacy", inputs=("input_ids", "attention_mask"))
    _check_bert(path)


@pytest.mark.slow
@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_bert_dynamo(tmp_path, impl):
    path = export_seq(_bert(impl), tuple(torch.from_numpy(v) for v in _bert_feeds(2, 7).values()),
                      tmp_path / "bert.onnx", "dynamo", inputs=("input_ids", "attention_mask"))
    _check_bert(path)
