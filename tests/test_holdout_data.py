"""``--holdout-data``: fidelity (and ``--min-cosine``'s search) measured on separate samples,
with every calibration sample used for selection."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort

import onnxprune
from onnxprune.api import calibrate_stats

from helpers import CALIB_IMG, MODELS

MODEL = MODELS / "mobilenet_legacy.onnx"


def _test_set() -> dict[str, np.ndarray]:
    name = onnx.load(str(MODEL)).graph.input[0].name
    return {name: np.load(MODELS / "digits_test.npz")["x"]}


def _logits(model, x: dict) -> np.ndarray:
    data = model if isinstance(model, bytes) else model.SerializeToString()
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {k: v[i:i + 50] for k, v in x.items()})[0]
                           for i in range(0, len(next(iter(x.values()))), 50)])


def test_fidelity_is_measured_on_the_holdout_data():
    test = _test_set()
    res = onnxprune.prune(str(MODEL), str(CALIB_IMG), ratio=0.5, holdout_data=test)
    r = res.report
    n_calib = len(np.load(CALIB_IMG)[next(iter(np.load(CALIB_IMG).keys()))])
    assert (r.calib_samples, r.holdout_samples) == (n_calib, 300)
    assert r.holdout_source == "holdout_data" and r.to_dict()["holdout_source"] == "holdout_data"
    a, b = _logits(onnx.load(str(MODEL)), test), _logits(res.model, test)
    agree = float(np.mean(a.argmax(1) == b.argmax(1)))
    assert abs(r.fidelity["logits"].top1_agreement - agree) < 1e-9
    # all calibration samples drive selection: not the model of the default 80 % split
    split = onnxprune.prune(str(MODEL), str(CALIB_IMG), ratio=0.5)
    assert split.report.holdout_source == "calibration"
    assert split.model.SerializeToString() != res.model.SerializeToString()


def test_min_cosine_holds_on_the_holdout_data():
    test = _test_set()
    res = onnxprune.prune(str(MODEL), str(CALIB_IMG), min_cosine=0.98, holdout_data=test)
    a, b = _logits(onnx.load(str(MODEL)), test), _logits(res.model, test)
    num, den = np.sum(a * b, 1), np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    assert float(np.mean(num / den)) >= 0.98
    assert res.report.macs_after < res.report.macs_before
    assert all(p["meets_target"] == (p["cosine_bound"] >= 0.98)
               for p in res.report.budget["points"])


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "onnxprune.cli", *map(str, args)],
                          capture_output=True, text=True)


def test_cli_holdout_data_and_its_errors(tmp_path):
    held = tmp_path / "held.npz"
    np.savez(held, **_test_set())
    out = tmp_path / "p.onnx"
    proc = _cli("prune", MODEL, out, "--calib", CALIB_IMG, "--ratio", 0.3, "--holdout-data",
                held, "--report", tmp_path / "r.json", "-q")
    assert proc.returncode == 0, proc.stderr
    direct = onnxprune.prune(str(MODEL), str(CALIB_IMG), ratio=0.3,
                             holdout_data=dict(np.load(held)))
    direct.save(tmp_path / "d.onnx")
    assert out.read_bytes() == (tmp_path / "d.onnx").read_bytes()
    before = held.read_bytes()
    bad = _cli("prune", MODEL, held.with_suffix(".onnx"), "--calib", CALIB_IMG, "--ratio", 0.3,
               "--holdout-data", held, "--report", held, "-q")
    assert bad.returncode == 2 and "held-out data" in bad.stderr, bad.stderr
    assert held.read_bytes() == before and not held.with_suffix(".onnx").exists()
    stats = calibrate_stats(str(MODEL), str(CALIB_IMG), tmp_path / "s.npz")
    both = _cli("prune", MODEL, tmp_path / "q.onnx", "--calib", CALIB_IMG, "--ratio", 0.3,
                "--holdout-data", held, "--stats", stats, "-q")
    assert both.returncode == 2 and "--holdout-data cannot be combined" in both.stderr
    assert len(both.stderr.strip().splitlines()) == 1
