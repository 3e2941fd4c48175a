"""The committed digits Vision Transformer (models/vit_legacy.onnx, models/vit_dynamo.onnx).

Built by models/build_digits_vit.py: patch-embedding Conv, 2 x nn.TransformerEncoderLayer (fused
QKV in_proj, 4 heads, FFN 128), mean pooling, Linear head. Fast: the files match MANIFEST.json,
load, run with a dynamic batch and reach the recorded accuracy; inspect; pruning at ratio 0.5 end
to end for both exporters (a few seconds each).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

import onnxprune
from helpers import MODELS, full_check, run

MANIFEST = json.loads((MODELS / "MANIFEST.json").read_text())
ENTRIES = {m["name"]: m for m in MANIFEST["models"] if m.get("architecture") == "vit"}
NAMES = ["vit_legacy", "vit_dynamo"]
N_LAYERS, N_HEADS, D_MODEL, D_FF = 2, 4, 64, 128


def _test_data():
    d = np.load(MODELS / "digits_test.npz")
    return d["x"], d["y"]


def _accuracy(model) -> float:
    x, y = _test_data()
    return float(np.mean(run(model, {"input": x})[0].argmax(1) == y))


def test_manifest_lists_both_exports():
    assert sorted(ENTRIES) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_files_match_manifest_checksums(name):
    entry = ENTRIES[name]
    assert entry["files"] == [f for f in entry["sha256"]]
    for f, digest in entry["sha256"].items():
        data = (MODELS / f).read_bytes()
        assert len(data) < 1024 * 1024, f
        assert hashlib.sha256(data).hexdigest() == digest, f"{f} differs from MANIFEST.json"
    assert (MODELS / f"{name}.onnx.data").exists() == entry["external_data"]


@pytest.mark.parametrize("name", NAMES)
def test_runs_with_dynamic_batch_and_recorded_accuracy(name):
    entry = ENTRIES[name]
    model = onnx.load(str(MODELS / entry["file"]))
    full_check(model)
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["logits"]
    x, _ = _test_data()
    for n in (1, 7):
        assert run(model, {"input": x[:n]})[0].shape == (n, 10)
    acc = _accuracy(model)
    assert acc == pytest.approx(entry["test_accuracy"], abs=1 / 300 + 1e-9)
    assert acc >= 0.95


@pytest.mark.parametrize("name", NAMES)
def test_graph_is_the_standard_decomposition_with_fused_qkv(name):
    model = onnx.load(str(MODELS / f"{name}.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Softmax") == N_LAYERS
    assert not [o for o in ops if "Attention" in o or "transformer" in o.lower()]
    shapes = [tuple(t.dims) for t in model.graph.initializer]
    # one packed Q/K/V projection per layer: (64, 192) as MatMul operand or (192, 64) for Gemm
    assert sum(s in ((D_MODEL, 3 * D_MODEL), (3 * D_MODEL, D_MODEL)) for s in shapes) == N_LAYERS


@pytest.mark.parametrize("name", NAMES)
def test_inspect_runs(name):
    path = MODELS / f"{name}.onnx"
    rep = onnxprune.inspect(str(path))
    assert rep.groups
    proc = subprocess.run([sys.executable, "-m", "onnxprune.cli", "inspect", str(path), "--json"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    json.loads(proc.stdout)


@pytest.mark.parametrize("name", NAMES)
def test_ffn_neurons_and_heads_are_prunable(name):
    groups = onnxprune.inspect(str(MODELS / f"{name}.onnx")).groups
    detail = [(g.name, g.kind, g.total, g.prunable, g.reason) for g in groups]
    prunable = [(g.kind, g.total) for g in groups if g.prunable]
    assert prunable.count(("channels", D_FF)) == N_LAYERS, detail
    assert prunable.count(("heads", N_HEADS)) == N_LAYERS, detail
    # the residual stream (LayerNorm over it) and the logits (graph output) stay
    assert sorted(g.total for g in groups if not g.prunable) == [10, D_MODEL], detail


@pytest.mark.parametrize("name", NAMES)
def test_prune_half_keeps_accuracy(name, tmp_path):
    path = MODELS / f"{name}.onnx"
    res = onnxprune.prune(str(path), str(MODELS / "digits_calib.npz"), ratio=0.5)
    full_check(res.model)
    r = res.report
    kept = sorted((g.kind, g.total, g.kept) for g in r.groups if g.prunable)
    assert kept == [("channels", D_FF, D_FF // 2)] * N_LAYERS + [
        ("heads", N_HEADS, N_HEADS // 2)] * N_LAYERS, kept
    assert r.params_after <= 0.7 * r.params_before, (r.params_before, r.params_after)
    files = res.save(tmp_path / "out.onnx")
    assert (tmp_path / "out.onnx.data").exists() == ENTRIES[name]["external_data"]
    assert len(files) == 1 + ENTRIES[name]["external_data"]
    reloaded = onnx.load(str(tmp_path / "out.onnx"))
    x, _ = _test_data()
    assert run(reloaded, {"input": x[:1]})[0].shape == (1, 10)   # dynamic batch kept
    acc, acc0 = _accuracy(reloaded), ENTRIES[name]["test_accuracy"]
    assert acc >= acc0 - 0.10, (acc, acc0)


@pytest.mark.parametrize("name", NAMES)
def test_one_head_left_is_reported_in_heads(name):
    """Ratio 0.75 leaves 1 of 4 heads: the report counts heads (1), not the remaining head's
    head_dim columns), and the model runs."""
    res = onnxprune.prune(str(MODELS / f"{name}.onnx"), str(MODELS / "digits_calib.npz"),
                          ratio=0.75)
    kept = sorted((g.kind, g.total, g.kept) for g in res.report.groups if g.prunable)
    assert kept == [("channels", D_FF, D_FF // 4)] * N_LAYERS + [
        ("heads", N_HEADS, 1)] * N_LAYERS, kept
    assert run(res.model, {"input": _test_data()[0][:3]})[0].shape == (3, 10)
