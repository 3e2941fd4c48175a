"""Constants the rewrite writes carry no float32 subnormals (``rewrite.flush_subnormals``): x86
kernels slow down on every multiply that reads one (PP-OCRv4's recogniser: a re-fit 1x1 conv
with 421 of them ran 4.9x slower). Constants the rewrite does not touch are left as they are."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnxprune.rewrite import flush_subnormals

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from helpers import export, full_check, prune_one_group, run  # noqa: E402

SUB = np.float32(1e-40)  # a float32 subnormal
assert 0 < SUB < np.finfo(np.float32).tiny


def _subnormals(a: np.ndarray) -> int:
    if a.dtype not in (np.float32, np.float64):
        return 0
    return int(np.sum((a != 0) & (np.abs(a) < np.finfo(a.dtype).tiny)))


def test_flush_subnormals_zeroes_exactly_the_subnormals():
    a = np.array([SUB, -SUB, 0.0, np.finfo(np.float32).tiny, -1.5, 3e-30], np.float32)
    out = flush_subnormals(a)
    assert out.dtype == np.float32
    want = np.array([0.0, 0.0, 0.0, np.finfo(np.float32).tiny, -1.5, 3e-30], np.float32)
    np.testing.assert_array_equal(out, want)
    assert _subnormals(a) == 2  # the input is not changed in place
    d = np.array([1e-310, 1.0])  # float64 subnormal
    np.testing.assert_array_equal(flush_subnormals(d), [0.0, 1.0])
    h = np.array([1e-7, 1.0], np.float16)  # a float16 subnormal is a real value there: kept
    np.testing.assert_array_equal(flush_subnormals(h), h)
    clean = np.ones(3, np.float32)
    assert flush_subnormals(clean) is clean


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(3, 16, 3), nn.Conv2d(16, 32, 3), nn.Conv2d(32, 8, 1)

    def forward(self, x):
        return self.c3(torch.relu(self.c2(torch.relu(self.c1(x)))))


def test_written_constants_have_no_subnormals_untouched_ones_keep_theirs(tmp_path):
    torch.manual_seed(0)
    net = Net()
    with torch.no_grad():
        net.c1.weight[:, 0, 0, 0] = float(SUB)  # c1 is not pruned (its group is excluded)
        net.c2.weight[:, 0, 0, 0] = float(SUB)  # c2 loses output channels: its rows are sliced
        net.c3.weight[:, :4, 0, 0] = float(SUB)  # c3 is the consumer: re-fit
    path = export(net, torch.randn(2, 3, 10, 10), tmp_path / "net.onnx", "legacy")
    orig = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
    w1, w2, w3 = (next(n for n, a in orig.items() if a.ndim == 4 and a.shape[0] == k)
                  for k in (16, 32, 8))
    assert _subnormals(orig[w1]) == 16 and _subnormals(orig[w2]) == 32
    x = np.random.default_rng(0).standard_normal((64, 3, 10, 10)).astype(np.float32)
    res = prune_one_group(path, {"input": x}, 32)
    full_check(res.model)
    new = {t.name: numpy_helper.to_array(t) for t in res.model.graph.initializer}
    # untouched: byte for byte the original's, subnormals included
    assert new[w1].tobytes() == orig[w1].tobytes()
    # sliced: the original's kept rows, with exactly their subnormals set to 0
    (group,) = [g for g in res.report.groups if g.total == 32]
    assert new[w2].shape[0] == group.kept < 32
    rows = [i for i in range(32) if any(np.array_equal(orig[w2][i, 1:], r[1:]) for r in new[w2])]
    assert len(rows) == group.kept
    np.testing.assert_array_equal(new[w2], flush_subnormals(orig[w2][rows]))
    assert np.all(new[w2][:, 0, 0, 0] == 0)
    # re-fit and every other written constant: none left
    assert new[w3].shape == (8, group.kept, 1, 1)
    assert all(_subnormals(a) == 0 for n, a in new.items() if n != w1)
    out = run(res.model, {"input": x})[0]
    assert out.shape == (64, 8, 6, 6) and np.all(np.isfinite(out))
