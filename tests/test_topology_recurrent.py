"""LSTM / GRU as consumers: the conv features feeding a recurrent layer (CRNN text recognisers)
are pruned, and the input weights ``W`` of every gate and direction are re-fitted together by
least squares (one row per time step and sample); the recurrence is untouched. Both exporters
emit the ONNX LSTM/GRU ops; a bidirectional LSTM on ``[T, N, C]`` and a batch-first GRU."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import onnxprune  # noqa: E402
from onnxprune.api import split_samples  # noqa: E402
from onnxprune.graph import Graph  # noqa: E402
from onnxprune.rules import rule_for  # noqa: E402
from helpers import export, full_check, run  # noqa: E402


class CRNN(nn.Module):
    def __init__(self, cell):
        super().__init__()
        self.cell = cell
        self.c = nn.Conv2d(1, 16, 3, padding=1)
        self.rnn = (nn.LSTM(16, 12, bidirectional=True) if cell == "lstm"
                    else nn.GRU(16, 10, batch_first=True))
        self.fc = nn.Linear(24 if cell == "lstm" else 10, 5)

    def features(self, x):
        return torch.relu(self.c(x)).mean(dim=2)  # [N, 16, T]

    def forward(self, x):
        h = self.features(x)
        y, _ = self.rnn(h.permute(2, 0, 1) if self.cell == "lstm" else h.permute(0, 2, 1))
        return self.fc(y)


@pytest.fixture(scope="module", params=[(c, e) for c in ("lstm", "gru")
                                        for e in ("legacy", "dynamo")],
                ids=lambda p: f"{p[0]}-{p[1]}")
def model(request, tmp_path_factory):
    cell, exporter = request.param
    torch.manual_seed(0)
    module = CRNN(cell)
    path = tmp_path_factory.mktemp("rnn") / f"{cell}_{exporter}.onnx"
    return export(module, torch.zeros(2, 1, 8, 20), path, exporter), module


def test_recurrent_input_is_prunable(model):
    path, _ = model
    groups = onnxprune.inspect(str(path)).groups
    assert sorted((g.total, g.prunable) for g in groups) == [(5, False), (16, True)], \
        [(g.name, g.total, g.reason) for g in groups]


def test_recurrent_refit_is_the_least_squares_solution(model):
    path, module = model
    x = np.random.default_rng(0).standard_normal((40, 1, 8, 20)).astype(np.float32)
    res = onnxprune.prune(str(path), {"input": x}, ratio=0.5, ridge=0.0, max_positions=10_000)
    full_check(res.model)
    same = onnxprune.prune(str(path), {"input": x}, ratio=0.0).model
    graph, pruned = Graph(same), Graph(res.model)
    node = next(n for n in graph.nodes if n.op_type in ("LSTM", "GRU"))
    rule = rule_for(node)
    W = rule.weight_matrix(node, graph)
    W_new = rule.weight_matrix(pruned.node(node.name), pruned)
    assert W_new.shape == (W.shape[0], 8)  # exact: every gate and direction reads 8 channels
    conv_w = next(pruned.const(n.input[1]) for n in pruned.nodes if n.op_type == "Conv")
    ref = module.c.weight.detach().numpy().reshape(16, -1)
    kept = [int(np.argmin(np.abs(ref - w.reshape(1, -1)).sum(axis=1))) for w in conv_w]
    assert kept == sorted(set(kept))
    sel, _ = split_samples(len(x), 0.2, 0)
    with torch.no_grad():
        f = module.features(torch.from_numpy(x[sel])).double().numpy()  # [n, 16, T]
    rows = f.transpose(0, 2, 1).reshape(-1, 16)
    A = np.hstack([rows[:, kept], np.ones((len(rows), 1))])
    coef, *_ = np.linalg.lstsq(A, rows @ W.T, rcond=None)
    np.testing.assert_allclose(W_new, coef[:-1].T, rtol=1e-4, atol=1e-4)
    # the bias change went into W_b (first half of B): compare the effective input bias
    B, B_new = (g.const(n.input[3]).astype(np.float64) for g, n in
                ((graph, node), (pruned, pruned.node(node.name))))
    gh = W.shape[0] // B.shape[0]
    np.testing.assert_allclose((B_new - B)[:, :gh].reshape(-1), coef[-1], rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(B_new[:, gh:], B[:, gh:])  # R_b untouched
    for n in (1, 3):
        out = run(res.model, {"input": x[:n]})[0]
        assert np.isfinite(out).all() and out.shape == run(path, {"input": x[:n]})[0].shape


def test_recurrent_macs_are_counted(model):
    """(T·N)·dirs·gates·hidden·(input + hidden) per layer: the budget sees what pruning saves."""
    path, module = model
    x = np.random.default_rng(0).standard_normal((20, 1, 8, 20)).astype(np.float32)
    res = onnxprune.prune(str(path), {"input": x}, ratio=0.5)
    rnn = module.rnn
    gates = 4 if module.cell == "lstm" else 3
    dirs = 2 if rnn.bidirectional else 1

    def macs(channels):
        conv = 8 * 20 * channels * 9
        rec = 20 * dirs * gates * rnn.hidden_size * (channels + rnn.hidden_size)
        fc = 20 * 5 * dirs * rnn.hidden_size
        return conv + rec + fc

    assert res.report.macs_before == macs(16)
    assert res.report.macs_after == macs(8)


@pytest.mark.parametrize("dynamic_batch", [True, False], ids=["batched", "fixed1"])
def test_sequence_first_output_is_scored_per_sample(tmp_path, dynamic_batch):
    """The LSTM CRNN's output is ``[T, N, C]`` (sequence first, as CTC recognisers export it;
    with a fixed batch of 1, ``[T, 1, C]``): the report's cosine and its standard error are per
    sample over the whole sequence, as for the same model with its output batch first, and equal
    a direct computation on the held-out samples."""
    torch.manual_seed(0)
    module = CRNN("lstm")
    x = np.random.default_rng(1).standard_normal((40, 1, 8, 20)).astype(np.float32)
    example = torch.zeros(2 if dynamic_batch else 1, 1, 8, 20)

    class BatchFirst(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = module

        def forward(self, inp):
            return self.inner(inp).permute(1, 0, 2)

    seq = export(module, example, tmp_path / "seq.onnx", "legacy", dynamic_batch=dynamic_batch)
    bf = export(BatchFirst(), example, tmp_path / "bf.onnx", "legacy", dynamic_batch=dynamic_batch)
    res = onnxprune.prune(str(seq), {"input": x}, ratio=0.5)
    res_bf = onnxprune.prune(str(bf), {"input": x}, ratio=0.5)
    fid, fid_bf = res.report.fidelity["output"], res_bf.report.fidelity["output"]
    _, hold = split_samples(len(x), 0.2, 0)

    def outputs(m):  # [n, T·C] per held-out sample, run one at a time
        return np.stack([run(m, {"input": x[i:i + 1]})[0].reshape(-1) for i in hold])

    a, b = outputs(seq), outputs(res.model)
    cos = np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert fid.cosine == pytest.approx(float(cos.mean()), rel=1e-4)
    assert fid.cosine_se == pytest.approx(float(cos.std(ddof=1) / np.sqrt(len(cos))), rel=1e-3)
    assert fid.cosine == pytest.approx(fid_bf.cosine, rel=1e-5)
    assert fid.cosine_se == pytest.approx(fid_bf.cosine_se, rel=1e-3)
    assert fid.cosine < 0.9999  # something was lost, so the comparison means something


def test_sample_first_reads_every_batch_of_a_pass_alike():
    """The sample axis is chosen on an output's first batch and kept for the pass."""
    from onnxprune.calibrate import sample_first
    rng = np.random.default_rng(0)
    seq = rng.standard_normal((20, 7, 5))  # [T, N, C]
    ax: dict = {}
    np.testing.assert_array_equal(sample_first(seq, 7, ax, "y"), seq.transpose(1, 0, 2))
    last = rng.standard_normal((20, 20, 5))  # a last batch of 20 samples, T = 20 as well
    np.testing.assert_array_equal(sample_first(last, 20, ax, "y"), last.transpose(1, 0, 2))
    first = rng.standard_normal((7, 20, 5))  # batch first: unchanged
    assert sample_first(first, 7, {}, "y") is first
    one = rng.standard_normal((20, 5))  # a fixed batch of 1 the output does not show
    assert sample_first(one, 1, {}, "y").shape == (1, 20, 5)
    ax = {}
    flat = rng.standard_normal(10)  # no sample axis at all (batched runs): left as it is,
    assert sample_first(flat, 32, ax, "c") is flat  # also for a last batch of one sample
    assert sample_first(flat, 1, ax, "c") is flat
