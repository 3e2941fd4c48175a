"""Inception-style: branches concatenated on the channel axis (Concat offsets)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import onnxprune  # noqa: E402
from helpers import check_prune_roundtrip, exported  # noqa: E402


def cbr(cin, cout, k):
    return nn.Sequential(nn.Conv2d(cin, cout, k, 1, k // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU())


class Mixed(nn.Module):
    def __init__(self, cin):
        super().__init__()
        self.b1 = cbr(cin, 8, 1)
        self.b2 = nn.Sequential(cbr(cin, 6, 1), cbr(6, 8, 3))
        self.b3 = nn.Sequential(cbr(cin, 4, 1), cbr(4, 6, 3), cbr(6, 6, 3))
        self.b4 = nn.Sequential(nn.MaxPool2d(3, 1, 1), cbr(cin, 4, 1))

    def forward(self, x):
        return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], 1)


class TinyInception(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = cbr(1, 8, 3)
        self.m1 = Mixed(8)
        self.m2 = Mixed(26)
        self.fc = nn.Linear(26, 3)

    def forward(self, x):
        x = self.m2(nn.functional.max_pool2d(self.m1(self.stem(x)), 2))
        return self.fc(x.mean(dim=(2, 3)))


@pytest.fixture(scope="module", params=["legacy", "dynamo"])
def inception(request, tmp_path_factory):
    torch.manual_seed(3)
    return exported(request, tmp_path_factory, TinyInception(), torch.randn(2, 1, 10, 10), 3)


def test_concat_joins_branches_into_one_group(inception):
    rep = onnxprune.inspect(inception)
    concat_groups = [g for g in rep.groups if len(g.producers) == 4]
    # m1's concat (4 branch producers, 26 channels) is consumed by all of m2's first convs
    assert any(g.total == 26 and g.prunable for g in concat_groups), rep.to_text()


def test_prune_inception_keeps_share_of_every_branch(inception):
    _, pruned, report, _ = check_prune_roundtrip(inception, (1, 10, 10))
    g = next(g for g in report.groups if len(g.producers) == 4 and g.prunable)
    assert g.kept == 4 + 4 + 3 + 2  # every branch keeps half: 8→4, 8→4, 6→3, 4→2
