"""VGG-style: conv stack → Flatten/Reshape (N,C,H,W)→(N,C·H·W) → Linear layers."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import onnxprune  # noqa: E402
from helpers import check_prune_roundtrip, export, init_shapes, randomize_bn  # noqa: E402


class TinyVGG(nn.Module):
    def __init__(self, flatten: str):
        super().__init__()
        self.flatten = flatten
        self.f = nn.Sequential(
            nn.Conv2d(1, 8, 3, 1, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, 1, 1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2))
        self.c = nn.Sequential(nn.Linear(16 * 3 * 3, 24), nn.ReLU(), nn.Dropout(0.5),
                               nn.Linear(24, 6))

    def forward(self, x):
        x = self.f(x)
        x = torch.flatten(x, 1) if self.flatten == "flatten" else x.view(x.size(0), -1)
        return self.c(x)


@pytest.fixture(scope="module", params=[("legacy", "flatten"), ("legacy", "view"),
                                        ("dynamo", "flatten"), ("dynamo", "view")],
                ids=lambda p: "-".join(p))
def vgg(request, tmp_path_factory):
    exporter, flatten = request.param
    torch.manual_seed(2)
    m = TinyVGG(flatten)
    randomize_bn(m, 2)
    path = tmp_path_factory.mktemp("vgg") / f"vgg_{exporter}_{flatten}.onnx"
    return export(m, torch.randn(2, 1, 12, 12), path, exporter)


def test_flatten_feeds_linear_with_g_entries_per_channel(vgg):
    rep = onnxprune.inspect(vgg)
    last_conv = [g for g in rep.groups if g.total == 16]
    assert len(last_conv) == 1 and last_conv[0].prunable, rep.to_text()


def test_prune_vgg(vgg):
    _, pruned, report, x = check_prune_roundtrip(vgg, (1, 12, 12))
    shapes = init_shapes(pruned)
    gemm_like = [n for n in pruned.graph.node if n.op_type in ("Gemm", "MatMul")
                 and n.input[1] in shapes]
    first = gemm_like[0]
    w = shapes[first.input[1]]
    # 16 → 8 channels, each 3·3 = 9 columns: 72 input features; 24 → 12 hidden neurons
    assert sorted(w) == [12, 72]
