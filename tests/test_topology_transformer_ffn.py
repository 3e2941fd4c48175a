"""Transformer FFN blocks on [batch, seq, hidden] with dynamic batch and sequence length:
Linear → GELU (erf, tanh) / ReLU → Linear, both torch exporters (legacy writes the erf/tanh
chains and MatMul+Add, dynamo writes opset-20 Gelu), plus a 2-D Gemm form."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import onnxprune  # noqa: E402
from helpers import run  # noqa: E402
from transformer_helpers import (  # noqa: E402
    analysis, check_identity_and_dynamic, export_seq, float_params, randomize, scalars)

D, F = 12, 24


class FFN(nn.Module):
    def __init__(self, act: str):
        super().__init__()
        self.up, self.down = nn.Linear(D, F), nn.Linear(F, D)
        self.act = {"erf": nn.GELU(), "tanh": nn.GELU(approximate="tanh"), "relu": nn.ReLU()}[act]

    def forward(self, x):
        return self.down(self.act(self.up(x)))


@pytest.fixture(scope="module", params=[(e, a) for e in ("legacy", "dynamo")
                                        for a in ("erf", "tanh", "relu")],
                ids=lambda p: "-".join(p))
def ffn(request, tmp_path_factory):
    exporter, act = request.param
    m = FFN(act)
    randomize(m, 3)
    path = tmp_path_factory.mktemp("ffn") / f"ffn_{exporter}_{act}.onnx"
    return export_seq(m, torch.randn(2, 5, D), path, exporter)


def _x(n, s, seed=0):
    return np.random.default_rng(seed).standard_normal((n, s, D)).astype(np.float32)


def test_ffn_neurons_are_one_prunable_group(ffn):
    _, an = analysis(ffn)
    groups = [g for g in an.groups if g.prunable]
    assert [(g.size, g.kind) for g in groups] == [(F, "channels")]
    (site,) = groups[0].consumers
    assert site.g == 1


def test_prune_ffn_dynamic_batch_and_seq(ffn):
    x = _x(40, 5)
    res = check_identity_and_dynamic(ffn, {"input": x}, [{"input": _x(1, 3, 1)},
                                                           {"input": _x(3, 9, 2)}], ratio=0.5)
    r = res.report
    (g,) = [g for g in r.groups if g.prunable]
    removed = g.total - g.kept
    assert removed == F // 2
    # each neuron: a column of the up weight (D) + its bias (1) + a row of the down weight (D)
    assert r.params_before - r.params_after == removed * (2 * D + 1)
    assert float_params(res.model) == r.params_after
    # the activation's constants (0.5, √2, tanh-GELU coefficients) are untouched
    original = onnxprune.prune(ffn, {"input": x}, ratio=0.0).model
    assert scalars(res.model) == scalars(original)
    f = res.report.fidelity["output"]
    assert f.cosine > 0.8


def test_gemm_ffn_on_tokens(tmp_path):
    """2-D [tokens, hidden] FFN: the legacy exporter writes Gemm (transB=1)."""
    m = FFN("erf")
    randomize(m, 4)
    path = export_seq(m, torch.randn(6, D), tmp_path / "gemm.onnx", "legacy", dynamic_seq=False)
    import onnx
    assert any(n.op_type == "Gemm" for n in onnx.load(str(path)).graph.node)
    x = np.random.default_rng(0).standard_normal((64, D)).astype(np.float32)
    ref = run(path, {"input": x})
    res = onnxprune.prune(path, {"input": x}, ratio=0.25, round_to=1)
    (g,) = [g for g in res.report.groups if g.prunable]
    assert (g.total, g.kept) == (F, 18)
    assert res.report.params_before - res.report.params_after == 6 * (2 * D + 1)
    assert run(res.model, {"input": x})[0].shape == ref[0].shape
