"""benchmarks/run_imagenet_samples.py: its scores against a direct computation, its labels,
and the fold averages its table reports."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    pytest.importorskip("PIL")
    pytest.importorskip("torch")
    for sub in ("models", "benchmarks"):
        sys.path.insert(0, str(ROOT / sub))
    try:
        spec = importlib.util.spec_from_file_location(
            "run_imagenet_samples", ROOT / "benchmarks" / "run_imagenet_samples.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        for sub in ("models", "benchmarks"):
            sys.path.remove(str(ROOT / sub))
    return mod


def test_scores_match_a_direct_computation(bench):
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(40, 1000))
    out = ref + rng.normal(scale=0.8, size=ref.shape)
    labels = rng.integers(0, 1000, size=40)
    labels[:10] = ref[:10].argmax(1)
    s = bench.scores(ref, out, labels)
    cos = [a @ b / np.linalg.norm(a) / np.linalg.norm(b) for a, b in zip(ref, out)]
    assert s["cosine"] == pytest.approx(np.mean(cos), abs=1e-4)
    assert s["top1_agreement"] == pytest.approx(np.mean(ref.argmax(1) == out.argmax(1)), abs=1e-4)
    assert s["accuracy"] == pytest.approx(np.mean(out.argmax(1) == labels), abs=1e-4)
    assert s["accuracy_original"] == pytest.approx(0.25, abs=1e-4)  # 10 of 40 by construction


def test_labels_come_from_the_file_names(bench):
    files = bench.IMAGENET["foolbox"][1]
    assert len(files) == 20
    for name, rel in files.items():
        assert rel == f"data/{name}.jpg"
        assert bench.label_of(f"foolbox/{name}") == int(rel[:-4].rsplit("_", 1)[1])
    assert [bench.label_of(n) for n in files] == list(bench.FOOLBOX_LABELS)


def test_table_averages_the_two_folds(bench):
    def row(half, cal, top1, cos, acc, acc0):
        return {"part": "b", "setting": "macs0.75", "calibration": cal, "test_half": half,
                "macs_fraction": 0.75, "pass_s": 1.0,
                "imagenet": {"top1_agreement": top1, "cosine": cos, "accuracy": acc,
                             "accuracy_original": acc0}}
    rows = [row("even", "x", 0.5, 0.7, 0.4, 0.8), row("odd", "x", 0.7, 0.9, 0.6, 0.6),
            row("even", "y", 0.1, 0.2, 0.3, 0.8), row("odd", "y", 0.3, 0.4, 0.5, 0.6)]
    meta = {"command": "c", "date": "d", "git": {"commit": "0" * 40}, "model": "m"}
    text = bench.render(meta, rows)
    assert "| both | x | | 0.600 | 0.800 | 0.500 (0.700) |" in text
    assert "| both | y | | 0.200 | 0.300 | 0.400 (0.700) |" in text
    assert "## A." not in text
