"""A YOLOv8n-shaped detector (tests/yolo_helpers.py: C2f with and without shortcut, SPPF, PAN
neck, decoupled head with DFL): everything is prunable except the head's outputs — the box
distribution and class convs, whose channels are the output's meaning — the DFL's fixed conv
and the decoded boxes; pruned at 0.5 the model is valid and keeps its interface."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import onnxprune  # noqa: E402
from helpers import export, full_check, randomize_bn, run  # noqa: E402
from yolo_helpers import YOLOv8n  # noqa: E402


@pytest.fixture(scope="module", params=["legacy", "dynamo"])
def model(request, tmp_path_factory):
    torch.manual_seed(0)
    module = YOLOv8n()
    randomize_bn(module, 0)
    path = tmp_path_factory.mktemp("yolo") / f"yolov8n_{request.param}.onnx"
    return export(module, torch.zeros(2, 3, 64, 64), path, request.param)


def test_only_the_head_outputs_and_dfl_are_unprunable(model):
    groups = onnxprune.inspect(str(model)).groups
    assert len(groups) == 47
    unprunable = sorted((g.total, g.reason.split("'")[0]) for g in groups if not g.prunable)
    # the DFL conv: one channel (it is then merged with the 4 box sides: the exporters' shape
    # arithmetic around it gives one more reason each)
    assert unprunable[0][0] == 1
    assert unprunable[1:] == [
        (4, "channels of "),              # decoded boxes: made by no layer, a graph output
        (64, "Reshape node "),            # box distributions (4 × 16 bins), viewed per side
        (80, "reaches the graph output "),  # class scores
    ], [(g.name, g.total, g.reason) for g in groups if not g.prunable]


def test_prunes_at_half_and_keeps_the_interface(model):
    x = np.random.default_rng(0).standard_normal((32, 3, 64, 64)).astype(np.float32)
    res = onnxprune.prune(str(model), {"input": x}, ratio=0.5)
    full_check(res.model)
    r = res.report
    assert r.params_after < 0.3 * r.params_before  # measured: 0.253
    assert r.macs_after < 0.3 * r.macs_before      # measured: 0.258
    ref = run(model, {"input": x[:4]})[0]
    for n in (1, 4):
        got = run(res.model, {"input": x[:n]})[0]
        assert got.shape == (n,) + ref.shape[1:] == (n, 84, 84)
        assert np.isfinite(got).all()
