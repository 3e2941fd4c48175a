"""SPPF (YOLOv5/v8): one tensor max-pooled three times in a chain, the four results concatenated
and mixed by a 1×1 conv. The consumer sees every channel four times: a channel is kept or removed
in all copies at once, the greedy treats its copies as one candidate, and the re-fit is the
least-squares solution on the kept channels' columns in every copy."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from onnxprune.solvers.greedy import greedy_path, greedy_select
from onnxprune.solvers.problem import ConsumerStats, Problem


def _explained(G, H, cols):
    Gs, Hs = G[np.ix_(cols, cols)], H[cols]
    return float(np.trace(Hs.T @ np.linalg.pinv(Gs) @ Hs))


def _problem(rng, channels, g, keep, m=3, rows=200):
    n = len(channels) * g
    B = rng.standard_normal((rows, n + 1))
    B[:, -1] = 1.0
    # copies of a channel are correlated (a pooled copy of the same map)
    for c in set(channels):
        blocks = [p for p, ch in enumerate(channels) if ch == c]
        for p in blocks[1:]:
            B[:, p * g:(p + 1) * g] = 0.7 * B[:, blocks[0] * g:(blocks[0] + 1) * g] + \
                0.3 * B[:, p * g:(p + 1) * g]
    W = rng.standard_normal((m, n))
    G = B.T @ B
    H = G[:, :n] @ W.T
    st = ConsumerStats(G=G, H=H, t_norm2=float(np.sum((B[:, :n] @ W.T) ** 2)),
                       channels=np.asarray(channels), g=g, has_const=True, weight=W, rows=rows)
    C = len(set(channels))
    return Problem(n_channels=C, consumers=(st,), segments=np.zeros(C, dtype=np.int64),
                   quotas=np.array([keep])), G, H


def _cols(channels, g, kept, n):
    blocks = [p for p, ch in enumerate(channels) if ch in kept]
    return [p * g + j for p in blocks for j in range(g)] + [n]


@pytest.mark.parametrize("g", [1, 4])
def test_greedy_with_copies_matches_brute_force_steps(g):
    rng = np.random.default_rng(g)
    channels = [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 2, 3]  # every channel twice, 2 and 3 three times
    problem, G, H = _problem(rng, channels, g, keep=3)
    n = len(channels) * g
    picks, explained = greedy_path(problem, 3)
    # each step is the brute-force best single addition, and the explained energy is exact
    chosen: list[int] = []
    for k, c in enumerate(picks):
        scores = {d: _explained(G, H, _cols(channels, g, set(chosen) | {d}, n))
                  for d in range(5) if d not in chosen}
        assert c == max(scores, key=lambda d: (scores[d], -d))
        chosen.append(int(c))
        assert explained[k + 1] == pytest.approx(scores[c], rel=1e-8)
    assert list(greedy_select(problem)) == sorted(chosen)
    # greedy is within the weak-submodularity regime on this tiny case: compare with the optimum
    best = max(_explained(G, H, _cols(channels, g, set(S), n))
               for S in itertools.combinations(range(5), 3))
    assert explained[-1] >= 0.9 * best


torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import onnxprune  # noqa: E402
from onnxprune.api import split_samples  # noqa: E402
from onnxprune.graph import Graph  # noqa: E402
from onnxprune.rules import rule_for  # noqa: E402
from helpers import (  # noqa: E402
    assert_groups, export, full_check, kept_by_direction, prune_one_group, randomize_bn, run,
)


class SPPF(nn.Module):
    def __init__(self):
        super().__init__()
        self.cv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.m = nn.MaxPool2d(5, stride=1, padding=2)
        self.cv2 = nn.Conv2d(64, 8, 1)
        self.fc = nn.Linear(8, 4)

    def features(self, x):
        return nn.functional.silu(self.bn(self.cv1(x)))

    def forward(self, x):
        x = self.features(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        h = torch.cat([x, y1, y2, self.m(y2)], 1)
        return self.fc(nn.functional.silu(self.cv2(h)).mean(dim=(2, 3)))


@pytest.fixture(scope="module", params=["legacy", "dynamo"])
def model(request, tmp_path_factory):
    torch.manual_seed(0)
    module = SPPF()
    randomize_bn(module, 2)
    path = tmp_path_factory.mktemp("sppf") / f"m_{request.param}.onnx"
    return export(module, torch.zeros(2, 3, 10, 10), path, request.param), module


def test_sppf_is_prunable(model):
    assert_groups(model[0], [(4, False), (8, True), (16, True)])


def test_sppf_refit_is_the_least_squares_solution(model):
    path, module = model
    x = np.random.default_rng(1).standard_normal((60, 3, 10, 10)).astype(np.float32)
    res = prune_one_group(path, {"input": x}, 16)
    full_check(res.model)
    from onnx import numpy_helper
    inits = {t.name: numpy_helper.to_array(t) for t in res.model.graph.initializer}
    convs = [inits[n.input[1]] for n in res.model.graph.node if n.op_type == "Conv"]
    # exact parameter counts: cv1 keeps 8 filters, cv2 reads 4 × 8 channels
    assert [w.shape for w in convs] == [(8, 3, 3, 3), (8, 32, 1, 1)]
    kept = kept_by_direction(module.cv1.weight.detach().numpy(), convs[0])
    assert kept == sorted(set(kept))
    with torch.no_grad():
        f = module.features(torch.from_numpy(x))
        y1 = module.m(f)
        y2 = module.m(y1)
        h = torch.cat([f, y1, y2, module.m(y2)], 1).double().numpy()
    sel, _ = split_samples(len(x), 0.2, 0)
    same = onnxprune.prune(str(path), {"input": x}, ratio=0.0).model  # cv2 as the pass sees it
    graph = Graph(same)
    node = next(n for n in graph.nodes if n.op_type == "Conv" and
                graph.const(n.input[1]).shape[1] == 64)
    W = rule_for(node).weight_matrix(node, graph)
    rows = h[sel].transpose(0, 2, 3, 1).reshape(-1, 64)
    cols = [k * 16 + c for k in range(4) for c in kept]
    A = np.hstack([rows[:, cols], np.ones((len(rows), 1))])
    coef, *_ = np.linalg.lstsq(A, rows @ W.T, rcond=None)
    np.testing.assert_allclose(convs[1].reshape(8, -1), coef[:-1].T, rtol=1e-3, atol=1e-3)
    for n in (1, 3):
        assert run(res.model, {"input": x[:n]})[0].shape == (n, 4)
