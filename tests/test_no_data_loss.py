"""Nothing a user owns is ever lost: every path a run writes (model, its ``.data``, report) is
checked against every path it reads (model, its external data, calibration), after resolving
symbolic and hard links, before anything is written; a collision is exit 2 with one line and
every file stays as it was. Also the bad inputs that used to end in a traceback."""

from __future__ import annotations

import os
import shutil

import numpy as np
import onnx
import pytest

import onnxprune
from helpers import CALIB_FLAT, CALIB_IMG, MLP, VGG, VGG_DATA
from test_cli_errors import expect_cli_error, fingerprint, listing, run_cli


@pytest.fixture
def vgg_renamed(tmp_path):
    """VGG (external data in 'vgg_dynamo.onnx.data') saved as 'src.onnx' in its own folder."""
    d = tmp_path / "m"
    d.mkdir()
    shutil.copy2(VGG, d / "src.onnx")
    shutil.copy2(VGG_DATA, d / VGG_DATA.name)
    return d / "src.onnx", d / VGG_DATA.name


def test_report_onto_the_calibration_file(tmp_path):
    calib = tmp_path / "calib.npz"
    shutil.copy2(CALIB_FLAT, calib)
    line = expect_cli_error(["prune", MLP, tmp_path / "out.onnx", "--calib", calib, "--ratio",
                             "0.5", "--report", calib], cwd=tmp_path, watch_dirs=[tmp_path],
                            inputs=[MLP, calib], mention=["calibration"])
    assert "calib.npz" in line


def test_report_hard_link_to_the_calibration_file(tmp_path):
    calib = tmp_path / "calib.npz"
    shutil.copy2(CALIB_FLAT, calib)
    os.link(calib, tmp_path / "report.json")
    expect_cli_error(["prune", MLP, tmp_path / "out.onnx", "--calib", calib, "--ratio", "0.5",
                      "--report", tmp_path / "report.json"], cwd=tmp_path, watch_dirs=[tmp_path],
                     inputs=[MLP, calib, tmp_path / "report.json"], mention=["calibration"])


def test_output_data_file_is_the_inputs_external_data(tmp_path, vgg_renamed):
    model, data = vgg_renamed
    out = model.parent / VGG.name  # its .data would be the input's 'vgg_dynamo.onnx.data'
    line = expect_cli_error(["prune", model, out, "--calib", CALIB_IMG, "--ratio", "0.5"],
                            cwd=tmp_path, watch_dirs=[model.parent], inputs=[model, data],
                            mention=["external data"])
    assert VGG_DATA.name in line


def test_report_onto_the_inputs_external_data(tmp_path, vgg_renamed):
    model, data = vgg_renamed
    expect_cli_error(["prune", model, tmp_path / "out.onnx", "--calib", CALIB_IMG, "--ratio",
                      "0.5", "--report", data], cwd=tmp_path, watch_dirs=[model.parent, tmp_path],
                     inputs=[model, data], mention=["external data"])


def test_output_symlink_to_the_calibration_file(tmp_path):
    calib = tmp_path / "calib.npz"
    shutil.copy2(CALIB_FLAT, calib)
    (tmp_path / "out.onnx").symlink_to(calib)
    expect_cli_error(["prune", MLP, tmp_path / "out.onnx", "--calib", calib, "--ratio", "0.5"],
                     cwd=tmp_path, watch_dirs=[tmp_path], inputs=[MLP, calib],
                     mention=["calibration"])


def test_force_overwrites_the_input_and_its_data_only(tmp_path, vgg_renamed):
    """--force may replace the input model (and its own .data); it is honoured, nothing else."""
    d = tmp_path / "f"
    d.mkdir()
    model = d / VGG.name
    shutil.copy2(VGG, model)
    shutil.copy2(VGG_DATA, d / VGG_DATA.name)
    proc = run_cli("prune", model, model, "--calib", CALIB_IMG, "--ratio", "0.5", "--force", "-q",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    pruned = onnx.load(str(model))
    onnx.checker.check_model(str(model), full_check=True)
    assert sum(np.prod(t.dims) for t in pruned.graph.initializer) < sum(
        np.prod(t.dims) for t in onnx.load(str(VGG)).graph.initializer)


def test_api_save_refuses_the_files_it_read(tmp_path, vgg_renamed):
    model, data = vgg_renamed
    res = onnxprune.prune(str(model), str(CALIB_IMG), ratio=0.5)
    assert set(res.sources.values()) == {model, data, CALIB_IMG}
    before = fingerprint([model, data])
    listing_before = listing(model.parent)
    for target in (model, model.parent / VGG.name):
        with pytest.raises(onnxprune.OnnxPruneError, match="would overwrite"):
            res.save(target)
    assert fingerprint([model, data]) == before and listing(model.parent) == listing_before
    res.save(model, overwrite_input=True)  # explicit: the input model and its .data
    onnx.checker.check_model(str(model), full_check=True)


def test_truncated_external_data(tmp_path, vgg_renamed):
    model, data = vgg_renamed
    raw = data.read_bytes()
    data.write_bytes(raw[: len(raw) // 3])
    expect_cli_error(["prune", model, tmp_path / "out.onnx", "--calib", CALIB_IMG], cwd=tmp_path,
                     watch_dirs=[tmp_path, model.parent], inputs=[model, data],
                     mention=["truncated"])


def test_calibration_with_an_extra_axis(tmp_path):
    with np.load(CALIB_IMG) as z:
        x = z["input"]
    calib = tmp_path / "calib.npz"
    np.savez(calib, input=x[:, None])
    expect_cli_error(["prune", VGG, tmp_path / "out.onnx", "--calib", calib], cwd=tmp_path,
                     watch_dirs=[tmp_path], inputs=[VGG, calib], mention=["input"])


def _two_branches(dtype, shared: bool):
    """x → conv(w1) → relu → conv(w2), and x2 through the same layers; with ``shared`` both
    branches read the same initializers ``w1``/``b1``/``w2``."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    et = TensorProto.FLOAT16 if dtype == np.float16 else TensorProto.FLOAT
    arrays = {"w1": rng.standard_normal((16, 3, 3, 3)), "b1": rng.standard_normal(16),
              "w2": rng.standard_normal((8, 16, 3, 3))}
    if not shared:
        arrays.update({k + "_b": v.copy() for k, v in list(arrays.items())})
    nodes, ins, outs = [], [], []
    for i, (x, sfx) in enumerate((("x", ""), ("x2", "" if shared else "_b"))):
        nodes += [helper.make_node("Conv", [x, "w1" + sfx, "b1" + sfx], [f"h{i}"], pads=[1] * 4),
                  helper.make_node("Relu", [f"h{i}"], [f"r{i}"]),
                  helper.make_node("Conv", [f"r{i}", "w2" + sfx], [f"y{i}"], pads=[1] * 4)]
        ins.append(helper.make_tensor_value_info(x, et, ["N", 3, 8, 8]))
        outs.append(helper.make_tensor_value_info(f"y{i}", et, ["N", 8, 8, 8]))
    inits = [numpy_helper.from_array(v.astype(dtype), k) for k, v in arrays.items()]
    model = helper.make_model(helper.make_graph(nodes, "g", ins, outs, inits),
                              opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    feeds = {k: rng.standard_normal((40, 3, 8, 8)).astype(dtype) for k in ("x", "x2")}
    return model, feeds


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_shared_weights_never_grow_the_model(dtype):
    model, feeds = _two_branches(dtype, shared=True)
    res = onnxprune.prune(model, feeds, ratio=0.25)
    r = res.report
    assert r.params_after <= r.params_before == 16 * 27 + 16 + 8 * 16 * 9
    producers = [g for g in r.groups if g.total == 16]
    assert producers and all(not g.prunable and "is shared with node" in g.reason
                             for g in producers), [(g.name, g.reason) for g in r.groups]
    # the same network with its own copies of the weights is pruned (the check is not blanket)
    model, feeds = _two_branches(dtype, shared=False)
    res = onnxprune.prune(model, feeds, ratio=0.25)
    assert res.report.params_after < res.report.params_before
