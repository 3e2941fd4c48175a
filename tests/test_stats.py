"""Calibrate once, prune many times: ``onnxprune calibrate`` statistics files and shards."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from onnx import numpy_helper

import onnxprune
from onnxprune.api import calibrate_stats
from onnxprune.errors import CalibrationError, OptionError

from helpers import CALIB_IMG, MODELS, RESNET

MOBILENET = MODELS / "mobilenet_dynamo.onnx"


def _weights(model):
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("stats")
    full, a, b = d / "full.npz", d / "a.npz", d / "b.npz"
    calibrate_stats(str(MOBILENET), str(CALIB_IMG), full)
    calibrate_stats(str(MOBILENET), str(CALIB_IMG), a, shard=(1, 2))
    calibrate_stats(str(MOBILENET), str(CALIB_IMG), b, shard=(2, 2))
    return full, a, b


@pytest.mark.parametrize("kw", [dict(ratio=0.5), dict(target_macs=0.6),
                                dict(ratio=0.3, method="seq")])
def test_prune_from_statistics_equals_a_direct_prune(shards, kw):
    full, a, b = shards
    direct = onnxprune.prune(str(MOBILENET), str(CALIB_IMG), **kw)
    again = onnxprune.prune(str(MOBILENET), str(CALIB_IMG), stats=[full], **kw)
    assert again.model.SerializeToString() == direct.model.SerializeToString()
    sharded = onnxprune.prune(str(MOBILENET), str(CALIB_IMG), stats=[b, a], **kw)
    wd, ws = _weights(direct.model), _weights(sharded.model)
    assert wd.keys() == ws.keys()
    for name, w in wd.items():
        assert w.shape == ws[name].shape
        np.testing.assert_allclose(ws[name], w, rtol=1e-9, atol=1e-9 * np.abs(w).max())
    assert str(a) in {str(p) for p in sharded.sources.values()}


def test_shards_add_up_to_the_whole(shards):
    full, a, b = shards
    z, za, zb = (np.load(p) for p in (full, a, b))
    assert sorted(np.concatenate([za["ids"], zb["ids"]])) == sorted(z["ids"])
    n_sites = sum(1 for k in z.files if k.startswith("G"))
    assert n_sites > 5
    for i in range(n_sites):
        np.testing.assert_allclose(za[f"G{i}"] + zb[f"G{i}"], z[f"G{i}"], rtol=1e-12)


def test_statistics_are_checked(shards, tmp_path):
    full, a, _ = shards
    with pytest.raises(CalibrationError, match="miss"):
        onnxprune.prune(str(MOBILENET), str(CALIB_IMG), ratio=0.5, stats=[a])
    with pytest.raises(CalibrationError, match="overlap"):
        onnxprune.prune(str(MOBILENET), str(CALIB_IMG), ratio=0.5, stats=[a, a])
    with pytest.raises(CalibrationError, match="another model"):
        onnxprune.prune(str(RESNET), str(CALIB_IMG), ratio=0.5, stats=[full])
    with pytest.raises(CalibrationError, match="seed"):
        onnxprune.prune(str(MOBILENET), str(CALIB_IMG), ratio=0.5, stats=[full], seed=1)
    with pytest.raises(OptionError, match="sampling"):
        onnxprune.prune(str(MOBILENET), str(CALIB_IMG), ratio=0.5, stats=[full],
                        method="sampling")
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros(3))
    with pytest.raises(CalibrationError, match="not an onnxprune statistics file"):
        onnxprune.prune(str(MOBILENET), str(CALIB_IMG), ratio=0.5, stats=[bad])


def test_cli_calibrate_then_prune_and_data_safety(tmp_path):
    stats = tmp_path / "s.npz"
    run = lambda *a: subprocess.run([sys.executable, "-m", "onnxprune.cli", *map(str, a)],  # noqa: E731
                                    capture_output=True, text=True)
    proc = run("calibrate", RESNET, stats, "--calib", CALIB_IMG, "-q")
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "p.onnx"
    proc = run("prune", RESNET, out, "--calib", CALIB_IMG, "--stats", stats, "--ratio", "0.5",
               "-q")
    assert proc.returncode == 0, proc.stderr
    direct = tmp_path / "direct.onnx"
    proc = run("prune", RESNET, direct, "--calib", CALIB_IMG, "--ratio", "0.5", "-q")
    assert proc.returncode == 0 and out.read_bytes() == direct.read_bytes()
    # the statistics are a file the run reads: a report may not overwrite them
    before = stats.read_bytes()
    proc = run("prune", RESNET, tmp_path / "q.onnx", "--calib", CALIB_IMG, "--stats", stats,
               "--ratio", "0.5", "--report", stats)
    assert proc.returncode == 2 and proc.stderr.startswith("onnxprune: error: ")
    assert len(proc.stderr.splitlines()) == 1 and stats.read_bytes() == before
    # calibrate refuses to write its statistics over the calibration data
    calib_copy = tmp_path / "calib.npz"
    calib_copy.write_bytes(CALIB_IMG.read_bytes())
    proc = run("calibrate", RESNET, calib_copy, "--calib", calib_copy)
    assert proc.returncode == 2 and calib_copy.read_bytes() == CALIB_IMG.read_bytes()
    proc = run("calibrate", RESNET, stats, "--calib", CALIB_IMG, "--shard", "3/2")
    assert proc.returncode == 2 and "--shard" in proc.stderr


def test_a_local_dask_cluster_of_two_workers_gives_the_same_statistics(shards, tmp_path):
    pytest.importorskip("dask.distributed")
    full, _, _ = shards
    out = tmp_path / "cluster.npz"
    calibrate_stats(str(MOBILENET), str(CALIB_IMG), out, workers=2)
    z, zc = np.load(full), np.load(out)
    assert sorted(zc["ids"]) == sorted(z["ids"])
    n_sites = sum(1 for k in z.files if k.startswith("G"))
    for i in range(n_sites):
        np.testing.assert_allclose(zc[f"G{i}"], z[f"G{i}"], rtol=1e-9,
                                   atol=1e-12 * np.abs(z[f"G{i}"]).max())
    direct = onnxprune.prune(str(MOBILENET), str(CALIB_IMG), ratio=0.5, stats=[full])
    clustered = onnxprune.prune(str(MOBILENET), str(CALIB_IMG), ratio=0.5, stats=[out])
    wd, wc = _weights(direct.model), _weights(clustered.model)
    for name, w in wd.items():
        np.testing.assert_allclose(wc[name], w, rtol=1e-9, atol=1e-9 * np.abs(w).max())
    with pytest.raises(OptionError, match="not both"):
        calibrate_stats(str(MOBILENET), str(CALIB_IMG), out, workers=2, address="tcp://x:1")


def test_subset_statistics_equal_the_whole_set_under_small_memory_batches(monkeypatch, tmp_path):
    """Batches cut by the memory bound change the floating-point sums of the Grams. A plain
    prune calibrates only the groups it prunes (a subset: at ratio 0.1 the 32-channel groups
    round back to 32) but sizes its batches for every prunable site, so its statistics are
    those of a statistics file (all sites), a budget or a sweep, to the bit — and so are the
    pruned models."""
    from onnxprune import calibrate
    from onnxprune.job import Job, JobOptions
    from onnxprune.select import KeepPlan, removes_anything
    model = str(MODELS / "mobilenet_legacy.onnx")
    monkeypatch.setattr(calibrate, "BATCH_BYTES", 700_000)  # all sites: 10 per batch, subset: 14
    job = Job(model, str(CALIB_IMG), JobOptions())
    every = job.analysis.prunable_sites
    plan = KeepPlan(ratio=0.1, auto_round=True)
    subset = [s for g in job.analysis.groups if removes_anything(g, plan) for s in g.consumers]
    assert 0 < len(subset) < len(every)

    def grams(sites, memory_sites=None):
        out = calibrate.collect(job.normalized, job.graph, job.cal, job.sel_idx, sites, 0,
                                memory_sites=memory_sites)
        return {s: st.G for s, st in zip(sites, out)}

    whole, sized, naive = grams(every), grams(subset, every), grams(subset)
    assert all(np.array_equal(sized[s], whole[s]) for s in subset)
    assert not all(np.array_equal(naive[s], whole[s]) for s in subset)  # the batch matters
    direct = onnxprune.prune(model, str(CALIB_IMG), ratio=0.1)
    stats = calibrate_stats(model, str(CALIB_IMG), tmp_path / "s.npz")
    from_file = onnxprune.prune(model, str(CALIB_IMG), ratio=0.1, stats=[stats])
    swept = onnxprune.sweep(model, str(CALIB_IMG), [0.1, 0.4])[0]
    for other in (from_file, swept):
        assert other.model.SerializeToString() == direct.model.SerializeToString()
