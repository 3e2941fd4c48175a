"""ResNet-style: residual joins with identity and 1×1 projection shortcuts (both exporters)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import onnxprune  # noqa: E402
from helpers import check_prune_roundtrip, exported, node_weight_shapes  # noqa: E402


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.short = None
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                       nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.b2(self.c2(torch.relu(self.b1(self.c1(x)))))
        return torch.relu(y + (x if self.short is None else self.short(x)))


class TinyResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16),
                                  nn.ReLU())
        self.l1 = Block(16, 16, 1)
        self.l2 = Block(16, 32, 2)
        self.fc = nn.Linear(32, 5)

    def forward(self, x):
        x = self.l2(self.l1(self.stem(x)))
        return self.fc(x.mean(dim=(2, 3)))


@pytest.fixture(scope="module", params=["legacy", "dynamo"])
def resnet(request, tmp_path_factory):
    torch.manual_seed(0)
    return exported(request, tmp_path_factory, TinyResNet(), torch.randn(2, 3, 12, 12), 0)


def test_groups_follow_residual_joins(resnet):
    rep = onnxprune.inspect(resnet)
    by_size = sorted((g.total, len(g.producers), g.prunable) for g in rep.groups)
    # stem + l1.c2 joined (16 ch, 2 producers); l2.c2 + projection joined (32 ch, 2 producers);
    # l1.c1 (16) and l2.c1 (32) alone; fc reaches the output.
    assert (16, 2, True) in by_size and (32, 2, True) in by_size
    assert (16, 1, True) in by_size and (32, 1, True) in by_size
    assert any(not g.prunable and "graph output" in g.reason for g in rep.groups)


def test_prune_resnet(resnet):
    _, pruned, report, _ = check_prune_roundtrip(resnet, (3, 12, 12))
    convs = node_weight_shapes(pruned, "Conv")
    out_channels = sorted(s[0] for s in convs)
    # every conv keeps half of its 16 or 32 output channels
    assert out_channels == sorted([8, 8, 8, 16, 16, 16])
    # joined producers keep the same channels: residual operands agree in width
    joined = [g for g in report.groups if len(g.producers) == 2]
    assert all(g.kept == g.total // 2 for g in joined)
    assert all(g.rel_error is not None and 0 <= g.rel_error < 1 for g in report.groups
               if g.prunable)


def test_resnet_weight_norm_and_random_run(resnet):
    for method in ("weight-norm", "random", "act-norm"):
        check_prune_roundtrip(resnet, (3, 12, 12), method=method)
