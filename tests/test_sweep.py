"""Sweeps: ``prune --ratio R1 R2 …`` / ``onnxprune.sweep`` give, for every ratio, the model and
report of a separate ``prune(ratio=R)`` — calibrated, selected and verified with shared work."""

from __future__ import annotations

import subprocess
import sys

import pytest

import onnxprune
from onnxprune.api import calibrate_stats

from helpers import CALIB_IMG, MODELS

RATIOS = [0.1, 0.3, 0.5]


def _same(a, b) -> None:
    assert a.model.SerializeToString() == b.model.SerializeToString()
    ra, rb = a.report, b.report
    assert (ra.params_after, ra.macs_after, ra.ratio) == (rb.params_after, rb.macs_after, rb.ratio)
    assert {k: (f.cosine, f.rel_l2) for k, f in ra.fidelity.items()} == \
        {k: (f.cosine, f.rel_l2) for k, f in rb.fidelity.items()}
    assert [(g.name, g.kept, g.rel_error) for g in ra.groups] == \
        [(g.name, g.kept, g.rel_error) for g in rb.groups]


@pytest.mark.parametrize("name", ["mobilenet_legacy", "resnet_dynamo", "vit_dynamo"])
def test_sweep_equals_separate_prunes(name):
    model = str(MODELS / f"{name}.onnx")
    swept = onnxprune.sweep(model, str(CALIB_IMG), RATIOS)
    assert len(swept) == len(RATIOS)
    for r, res in zip(RATIOS, swept):
        _same(res, onnxprune.prune(model, str(CALIB_IMG), ratio=r))
    assert swept[0].report.params_after > swept[1].report.params_after > \
        swept[2].report.params_after


def test_sweep_from_statistics_file_and_other_options(tmp_path):
    model = str(MODELS / "resnet_legacy.onnx")
    stats = calibrate_stats(model, str(CALIB_IMG), tmp_path / "s.npz")
    opts = dict(round_to=1, exclude=["/layer1/conv1/Conv"], method="weight-norm")
    swept = onnxprune.sweep(model, str(CALIB_IMG), [0.2, 0.4], stats=[stats], **opts)
    for r, res in zip([0.2, 0.4], swept):
        _same(res, onnxprune.prune(model, str(CALIB_IMG), ratio=r, **opts))
    seq = onnxprune.sweep(model, str(CALIB_IMG), [0.2, 0.4], method="seq")
    for r, res in zip([0.2, 0.4], seq):
        _same(res, onnxprune.prune(model, str(CALIB_IMG), ratio=r, method="seq"))


@pytest.mark.parametrize("kw, words", [({"target_macs": 0.5}, "target-macs"),
                                       ({"min_cosine": 0.99}, "min-cosine")])
def test_sweep_refuses_budgets(kw, words):
    with pytest.raises(onnxprune.OptionError, match=words):
        onnxprune.sweep(str(MODELS / "vgg_legacy.onnx"), str(CALIB_IMG), [0.2, 0.3], **kw)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "onnxprune.cli", *map(str, args)],
                          capture_output=True, text=True)


def test_cli_sweep_writes_one_model_and_report_per_ratio(tmp_path):
    model = MODELS / "mobilenet_legacy.onnx"
    proc = _cli("prune", model, tmp_path / "p.onnx", "--calib", CALIB_IMG, "--ratio", 0.2, 0.4,
                "--report", tmp_path / "r.json", "-q")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == \
        ["p_r0.2.onnx", "p_r0.4.onnx", "r_r0.2.json", "r_r0.4.json"]
    for r in (0.2, 0.4):
        direct = onnxprune.prune(str(model), str(CALIB_IMG), ratio=r)
        direct.save(tmp_path / "direct.onnx")
        assert (tmp_path / f"p_r{r}.onnx").read_bytes() == (tmp_path / "direct.onnx").read_bytes()


@pytest.mark.parametrize("extra, message", [
    (["--ratio", "0.2", "0.2"], "given twice"),
    (["--ratio", "0.2", "0.3", "--target-macs", "0.5"], "--target-macs cannot be swept"),
    (["--ratio", "0.2", "0.3", "--report", "{d}/p.onnx"], "would overwrite"),  # p_r0.2.onnx
])
def test_cli_sweep_errors_write_nothing(tmp_path, extra, message):
    proc = _cli("prune", MODELS / "vgg_legacy.onnx", tmp_path / "p.onnx", "--calib", CALIB_IMG,
                *[e.format(d=tmp_path) for e in extra], "-q")
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []
