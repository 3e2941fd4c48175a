"""C2f (YOLOv8): a conv whose output is split in two halves; the second half runs through residual
bottlenecks (``x + cv2(cv1(x))``), and every piece is concatenated back into a 1×1 conv.

The residual Adds join each bottleneck's output channels with the *second half* of the first
conv's channels: one channel set, the bottleneck outputs being a piece of it (offset = half).
The final conv sees the second half three times; a channel is kept in every copy, each half keeps
its quota. Checked: prunability in both exporters, exact weight shapes, the final conv's re-fit
against a direct least-squares solve, dynamic batch.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import onnxprune  # noqa: E402
from onnxprune.api import split_samples  # noqa: E402
from onnxprune.graph import Graph  # noqa: E402
from onnxprune.rules import rule_for  # noqa: E402
from helpers import export, full_check, kept_by_direction, randomize_bn, run  # noqa: E402
from yolo_helpers import C2f, Conv  # noqa: E402


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = Conv(3, 16, 3, 2)
        self.c2f = C2f(16, 16, n=2, shortcut=True)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        return self.fc(self.c2f(self.stem(x)).mean(dim=(2, 3)))


@pytest.fixture(scope="module", params=["legacy", "dynamo"])
def model(request, tmp_path_factory):
    torch.manual_seed(0)
    module = Net()
    randomize_bn(module, 5)
    path = tmp_path_factory.mktemp("c2f") / f"m_{request.param}.onnx"
    return export(module, torch.zeros(2, 3, 12, 12), path, request.param), module


def test_c2f_is_prunable(model):
    path, _ = model
    groups = onnxprune.inspect(str(path)).groups
    # stem 16, the C2f set (16: cv1 + both bottleneck outputs), 2 bottleneck cv1 (8), cv2 16
    assert sorted((g.total, g.prunable) for g in groups) == [
        (4, False), (8, True), (8, True), (16, True), (16, True), (16, True)], \
        [(g.name, g.total, g.reason) for g in groups]


def _weights(model):
    from onnx import numpy_helper
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return {n.name: inits[n.input[1]] for n in model.graph.node
            if n.op_type in ("Conv", "Gemm", "MatMul") and n.input[1] in inits}


def test_c2f_prunes_at_half_with_exact_shapes(model):
    path, _ = model
    x = np.random.default_rng(2).standard_normal((40, 3, 12, 12)).astype(np.float32)
    res = onnxprune.prune(str(path), {"input": x}, ratio=0.5)
    full_check(res.model)
    convs = sorted(w.shape for w in _weights(res.model).values() if w.ndim == 4)
    # stem 8; C2f.cv1 8 (4 per half); bottlenecks 4 → 4; C2f.cv2 reads 4 + 3 × 4, keeps 8
    assert convs == sorted([(8, 3, 3, 3), (8, 8, 1, 1), (4, 4, 3, 3), (4, 4, 3, 3),
                            (4, 4, 3, 3), (4, 4, 3, 3), (8, 16, 1, 1)])
    for n in (1, 5):
        out = run(res.model, {"input": x[:n]})[0]
        assert out.shape == (n, 4) and np.isfinite(out).all()


def test_c2f_final_conv_refit_is_the_least_squares_solution(model):
    path, module = model
    x = np.random.default_rng(3).standard_normal((50, 3, 12, 12)).astype(np.float32)
    groups = onnxprune.inspect(str(path)).groups
    c2f_set = next(g for g in groups if g.total == 16 and len(g.producers) == 3)
    res = onnxprune.prune(str(path), {"input": x}, ratio=0.5, ridge=0.0, max_positions=10_000,
                          exclude=[g.name for g in groups if g.name != c2f_set.name])
    full_check(res.model)
    same = onnxprune.prune(str(path), {"input": x}, ratio=0.0).model
    before, after = _weights(same), _weights(res.model)
    # the C2f's first conv: 16 filters → 8; which ones, by direction (BN is folded)
    first = next(k for k, w in before.items() if w.shape == (16, 16, 1, 1))
    final = next(k for k, w in before.items() if w.shape == (16, 32, 1, 1))
    kept = kept_by_direction(before[first], after[first])
    assert kept == sorted(set(kept))
    assert sum(k < 8 for k in kept) == 4  # each half keeps its quota
    with torch.no_grad():
        h = module.c2f.pieces(module.stem(torch.from_numpy(x))).double().numpy()
    sel, _ = split_samples(len(x), 0.2, 0)
    graph = Graph(same)
    W = rule_for(graph.node(final)).weight_matrix(graph.node(final), graph)
    rows = h[sel].transpose(0, 2, 3, 1).reshape(-1, 32)
    second = [k - 8 for k in kept if k >= 8]
    cols = [k for k in kept if k < 8] + [8 * p + 8 + k for p in range(3) for k in second]
    A = np.hstack([rows[:, cols], np.ones((len(rows), 1))])
    coef, *_ = np.linalg.lstsq(A, rows @ W.T, rcond=None)
    assert after[final].shape == (16, 16, 1, 1)
    np.testing.assert_allclose(after[final].reshape(16, -1), coef[:-1].T, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("method", ["seq", "asym"])
def test_c2f_sequential_engine_matches_the_per_group_rebuild(model, method, monkeypatch):
    """The in-place sequential engine starts each group's run from cached activations; where one
    output of the Split is cached and the other is not, the Split runs again and its cached
    output must not also be fed (onnxruntime refused such a sub-model: 'Duplicate definition',
    found on NudeNet's YOLOv8n). Its model equals the one of the per-group rebuild."""
    from onnxprune.passes.prune import ChannelPrunePass

    path, _ = model
    x = np.random.default_rng(3).normal(size=(48, 3, 12, 12)).astype(np.float32)
    got = onnxprune.prune(str(path), {"input": x}, ratio=0.5, method=method)
    monkeypatch.setattr(ChannelPrunePass, "incremental", False)
    ref = onnxprune.prune(str(path), {"input": x}, ratio=0.5, method=method)
    assert [g.kept for g in got.report.groups] == [g.kept for g in ref.report.groups]
    assert got.report.macs_after < got.report.macs_before
    np.testing.assert_allclose(run(got.model, {"input": x})[0], run(ref.model, {"input": x})[0],
                               rtol=1e-4, atol=1e-4)
