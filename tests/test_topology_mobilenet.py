"""MobileNetV2-style inverted residuals: depthwise convs (pass-through), ReLU6 (Clip), joins."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import onnxprune  # noqa: E402
from helpers import check_prune_roundtrip, exported, init_shapes  # noqa: E402


class InvRes(nn.Module):
    def __init__(self, cin, cout, expand, stride):
        super().__init__()
        hid = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.body = nn.Sequential(
            nn.Conv2d(cin, hid, 1, bias=False), nn.BatchNorm2d(hid), nn.ReLU6(),
            nn.Conv2d(hid, hid, 3, stride, 1, groups=hid, bias=False), nn.BatchNorm2d(hid),
            nn.ReLU6(),
            nn.Conv2d(hid, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.body(x)
        return x + y if self.use_res else y


class TinyMobileNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8),
                                  nn.ReLU6())
        self.b1 = InvRes(8, 8, 4, 1)
        self.b2 = InvRes(8, 16, 4, 2)
        self.b3 = InvRes(16, 16, 4, 1)
        self.head = nn.Sequential(nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32),
                                  nn.ReLU6())
        self.fc = nn.Linear(32, 4)

    def forward(self, x):
        x = self.head(self.b3(self.b2(self.b1(self.stem(x)))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


@pytest.fixture(scope="module", params=["legacy", "dynamo"])
def mobilenet(request, tmp_path_factory):
    torch.manual_seed(1)
    return exported(request, tmp_path_factory, TinyMobileNet(), torch.randn(2, 3, 16, 16), 1)


def test_depthwise_is_pass_through(mobilenet):
    rep = onnxprune.inspect(mobilenet)
    prunable = [g for g in rep.groups if g.prunable]
    # expand groups (32, 32, 64) each feed a depthwise conv then the projection
    assert sorted(g.total for g in prunable if g.total in (32, 64)) == [32, 32, 32, 64]
    # the stem and b1's projection are joined by the residual Add (8 channels, 2 producers)
    assert any(g.total == 8 and len(g.producers) == 2 for g in prunable)


def test_prune_mobilenet(mobilenet):
    _, pruned, report, _ = check_prune_roundtrip(mobilenet, (3, 16, 16))
    dw = [n for n in pruned.graph.node if n.op_type == "Conv"
          and any(a.name == "group" and a.i > 1 for a in n.attribute)]
    shapes = init_shapes(pruned)
    for n in dw:
        group = next(a.i for a in n.attribute if a.name == "group")
        w = shapes[n.input[1]]
        assert w[0] == group and w[1] == 1  # still depthwise, group attribute patched
    assert sorted(next(a.i for a in n.attribute if a.name == "group") for n in dw) == [16, 16, 32]
