"""Successful runs of ``onnxprune prune`` / ``onnxprune inspect`` and of the Python API."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnxprune

from helpers import (  # noqa: E402
    CALIB_FLAT, CALIB_IMG, MLP, RESNET, VGG, VGG_DATA,
)

FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
               onnx.TensorProto.BFLOAT16}


# -- helpers ---------------------------------------------------------------------------------------

def run_cli(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "onnxprune.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=str(cwd), timeout=300)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def calib(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def run_model(model, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run a model (a path, so external data is found, or a ModelProto) in onnxruntime."""
    src = str(model) if isinstance(model, Path) else model.SerializeToString()
    sess = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def float_params(model: onnx.ModelProto) -> int:
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer if t.data_type in FLOAT_TYPES)


def strict_json(path: Path):
    """Parse JSON rejecting NaN / Infinity (not valid JSON)."""
    def reject(const):
        raise ValueError(f"non-standard JSON constant {const}")
    return json.loads(Path(path).read_text(), parse_constant=reject)


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_report(rep: dict, model_out_names: list[str], *, method: str, ratio: float) -> None:
    for key in ("method", "ratio", "params_before", "params_after", "macs_before", "macs_after",
                "seconds", "groups", "fidelity"):
        assert key in rep, f"report lacks {key!r}"
    assert rep["method"] == method
    assert is_num(rep["ratio"]) and rep["ratio"] == pytest.approx(ratio)
    for key in ("params_before", "params_after", "macs_before", "macs_after"):
        assert is_int(rep[key]) and rep[key] >= 0, (key, rep[key])
    assert is_num(rep["seconds"]) and rep["seconds"] >= 0
    assert isinstance(rep["groups"], list) and rep["groups"]
    for g in rep["groups"]:
        assert isinstance(g["name"], str) and g["name"]
        assert is_int(g["total"]) and is_int(g["kept"])
        assert 1 <= g["kept"] <= g["total"], g
        assert isinstance(g["prunable"], bool)
        assert isinstance(g["reason"], str)
        assert g["rel_error"] is None or is_num(g["rel_error"]), g
        if not g["prunable"]:
            assert g["kept"] == g["total"], g
            assert g["reason"], g
    assert isinstance(rep["fidelity"], dict)
    assert sorted(rep["fidelity"]) == sorted(model_out_names)
    for name, f in rep["fidelity"].items():
        for key in ("max_abs", "rel_l2", "cosine"):
            assert is_num(f[key]), (name, key, f[key])
        assert f["max_abs"] >= 0 and f["rel_l2"] >= 0
        assert -1 - 1e-6 <= f["cosine"] <= 1 + 1e-6
        t = f["top1_agreement"]
        assert t is None or (is_num(t) and 0 <= t <= 1), (name, t)


# -- prune on the MLP ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mlp_half(tmp_path_factory):
    d = tmp_path_factory.mktemp("mlp_half")
    out, report = d / "pruned.onnx", d / "report.json"
    before = sha(MLP)
    proc = run_cli("prune", MLP, out, "--calib", CALIB_FLAT, "--ratio", "0.5", "--report", report,
                   cwd=d)
    return {"proc": proc, "out": out, "report": report, "dir": d, "input_sha": before}


def test_prune_mlp_writes_valid_model(mlp_half):
    ok(mlp_half["proc"])
    model = onnx.load(str(mlp_half["out"]))
    onnx.checker.check_model(model, full_check=True)
    assert sorted(p.name for p in mlp_half["dir"].iterdir()) == ["pruned.onnx", "report.json"]
    assert sha(MLP) == mlp_half["input_sha"]
    x = calib(CALIB_FLAT)["input"][:50]
    outs = run_model(mlp_half["out"], {"input": x})
    assert outs["probabilities"].shape == (50, 10)


def test_prune_mlp_report(mlp_half):
    ok(mlp_half["proc"])
    rep = strict_json(mlp_half["report"])
    orig = onnx.load(str(MLP))
    check_report(rep, [o.name for o in orig.graph.output], method="inchange", ratio=0.5)
    assert rep["params_after"] < rep["params_before"]
    assert rep["macs_after"] < rep["macs_before"]
    assert rep["params_before"] == float_params(orig)
    assert rep["params_after"] == float_params(onnx.load(str(mlp_half["out"])))
    assert any(g["prunable"] and g["kept"] < g["total"] for g in rep["groups"])


def test_ratio_zero_reproduces_outputs(tmp_path):
    out = tmp_path / "same.onnx"
    ok(run_cli("prune", MLP, out, "--calib", CALIB_FLAT, "--ratio", "0", "-q", cwd=tmp_path))
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    feeds = calib(CALIB_FLAT)
    ref, new = run_model(MLP, feeds), run_model(out, feeds)
    assert sorted(ref) == sorted(new)
    for name in ref:
        assert ref[name].shape == new[name].shape, name
        if np.issubdtype(ref[name].dtype, np.floating):
            np.testing.assert_allclose(new[name], ref[name], rtol=0, atol=1e-5, err_msg=name)
        else:
            np.testing.assert_array_equal(new[name], ref[name], err_msg=name)


@pytest.mark.parametrize("flags", [["--method", "inchange"], ["--method", "weight-norm"],
                                   ["--method", "act-norm"], ["--method", "random"],
                                   ["--no-reweight"], ["--ridge", "auto"], ["--ridge", "0.1"]],
                         ids=["inchange", "weight-norm", "act-norm", "random", "no-reweight",
                              "ridge-auto", "ridge-0.1"])
def test_methods(tmp_path, flags):
    out, report = tmp_path / "pruned.onnx", tmp_path / "report.json"
    proc = ok(run_cli("prune", MLP, out, "--calib", CALIB_FLAT, "--ratio", "0.5", "--seed", "1",
                      "--report", report, "-q", *flags, cwd=tmp_path))
    assert proc.stderr == "", "-q must silence progress messages"
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    rep = strict_json(report)
    method = flags[1] if flags[0] == "--method" else "inchange"
    check_report(rep, ["label", "probabilities"], method=method, ratio=0.5)
    assert rep["params_after"] < rep["params_before"]
    if "reweight" in rep:
        assert rep["reweight"] is ("--no-reweight" not in flags)


def test_same_seed_same_bytes_mlp(tmp_path):
    outs = []
    for name in ("a", "b"):
        d = tmp_path / name
        d.mkdir()
        ok(run_cli("prune", MLP, d / "pruned.onnx", "--calib", CALIB_FLAT, "--method", "random",
                   "--seed", "7", "-q", cwd=d))
        outs.append((d / "pruned.onnx").read_bytes())
    assert outs[0] == outs[1]


def test_force_allows_output_equal_to_input(tmp_path):
    model = tmp_path / "model.onnx"
    shutil.copy2(MLP, model)
    before = sha(model)
    ok(run_cli("prune", model, model, "--calib", CALIB_FLAT, "--force", "-q", cwd=tmp_path))
    assert sha(model) != before
    pruned = onnx.load(str(model))
    onnx.checker.check_model(pruned, full_check=True)
    assert float_params(pruned) < float_params(onnx.load(str(MLP)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


# -- prune on a model with external data -----------------------------------------------------------

@pytest.fixture(scope="module")
def vgg_twice(tmp_path_factory):
    """The same command (same seed) run twice, into two directories, same file name."""
    before = (sha(VGG), sha(VGG_DATA))
    runs = []
    for name in ("a", "b"):
        d = tmp_path_factory.mktemp(f"vgg_{name}")
        out = d / "pruned.onnx"
        proc = run_cli("prune", VGG, out, "--calib", CALIB_IMG, "--ratio", "0.5", "--seed", "3",
                       "-q", cwd=d)
        runs.append({"proc": proc, "dir": d, "out": out})
    return {"runs": runs, "input_sha": before}


def test_external_data_output(vgg_twice):
    run = vgg_twice["runs"][0]
    ok(run["proc"])
    out, data = run["out"], run["out"].with_name("pruned.onnx.data")
    assert out.is_file() and data.is_file()
    assert sorted(p.name for p in run["dir"].iterdir()) == ["pruned.onnx", "pruned.onnx.data"]
    head = onnx.load(str(out), load_external_data=False)
    locations = {e.value for t in head.graph.initializer for e in t.external_data
                 if e.key == "location"}
    assert locations == {"pruned.onnx.data"}
    model = onnx.load(str(out))
    onnx.checker.check_model(str(out), full_check=True)
    assert float_params(model) < float_params(onnx.load(str(VGG)))
    x = calib(CALIB_IMG)["input"][:40]
    for res in (run_model(out, {"input": x}), run_model(model, {"input": x})):
        (logits,) = res.values()
        assert logits.shape == (40, 10) and np.all(np.isfinite(logits))
    assert (sha(VGG), sha(VGG_DATA)) == vgg_twice["input_sha"]


def test_same_seed_same_bytes_external_data(vgg_twice):
    a, b = vgg_twice["runs"]
    ok(a["proc"])
    ok(b["proc"])
    for name in ("pruned.onnx", "pruned.onnx.data"):
        assert (a["dir"] / name).read_bytes() == (b["dir"] / name).read_bytes(), name


def test_force_overwrites_input_with_external_data(tmp_path):
    """`onnxprune prune m.onnx m.onnx --force` run in the model's own directory."""
    shutil.copy2(VGG, tmp_path / VGG.name)
    shutil.copy2(VGG_DATA, tmp_path / VGG_DATA.name)
    ok(run_cli("prune", VGG.name, VGG.name, "--calib", CALIB_IMG, "--force", "-q", cwd=tmp_path))
    model = tmp_path / VGG.name
    onnx.checker.check_model(str(model), full_check=True)
    assert float_params(onnx.load(str(model))) < float_params(onnx.load(str(VGG)))
    (logits,) = run_model(model, {"input": calib(CALIB_IMG)["input"][:8]}).values()
    assert logits.shape == (8, 10)
    assert sorted(p.name for p in tmp_path.iterdir()) == [VGG.name, VGG_DATA.name]


# -- inspect ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def resnet_inspect_json(tmp_path_factory):
    proc = ok(run_cli("inspect", RESNET, "--json", cwd=tmp_path_factory.mktemp("insp")))
    return json.loads(proc.stdout)


def check_inspect_json(data: dict) -> None:
    assert isinstance(data["groups"], list) and data["groups"]
    for g in data["groups"]:
        assert isinstance(g["name"], str) and g["name"]
        assert is_int(g["total"]) and g["total"] >= 1
        assert isinstance(g["prunable"], bool)
        assert isinstance(g["reason"], str)
        if not g["prunable"]:
            assert g["reason"], g
    assert any(g["prunable"] for g in data["groups"])


def test_inspect_json(resnet_inspect_json, tmp_path):
    check_inspect_json(resnet_inspect_json)
    assert any(not g["prunable"] for g in resnet_inspect_json["groups"])  # the final Gemm
    proc = ok(run_cli("inspect", MLP, "--json", cwd=tmp_path))
    check_inspect_json(json.loads(proc.stdout))
    assert list(tmp_path.iterdir()) == []


def test_inspect_text(resnet_inspect_json, tmp_path):
    proc = ok(run_cli("inspect", RESNET, cwd=tmp_path))
    text = proc.stdout
    assert text.strip()
    for g in resnet_inspect_json["groups"]:
        assert g["name"] in text, g["name"]
        if not g["prunable"]:
            assert g["reason"] in text
    assert "prunable" in text.lower()
    assert list(tmp_path.iterdir()) == []


# -- Python API ------------------------------------------------------------------------------------

def test_api_modelproto_and_dict_calibration(tmp_path):
    proto = onnx.load(str(MLP))
    snapshot = proto.SerializeToString()
    x = calib(CALIB_FLAT)["input"]
    result = onnxprune.prune(proto, {"input": x}, ratio=0.5, method="inchange", reweight=True,
                             seed=0)
    assert proto.SerializeToString() == snapshot, "the caller's ModelProto was modified"
    assert isinstance(result.model, onnx.ModelProto)
    onnx.checker.check_model(result.model, full_check=True)
    rep = result.report.to_dict()
    json.dumps(rep, allow_nan=False)
    check_report(rep, ["label", "probabilities"], method="inchange", ratio=0.5)
    assert rep["params_after"] < rep["params_before"]
    assert rep["params_after"] == float_params(result.model)
    out = tmp_path / "api.onnx"
    result.save(out)
    saved = onnx.load(str(out))
    onnx.checker.check_model(saved, full_check=True)
    outs = run_model(out, {"input": x[:20]})
    assert outs["probabilities"].shape == (20, 10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["api.onnx"]


def test_inspect_prints_an_aligned_table(tmp_path):
    """One row per group, every column starting at the same offset, reasons listed below."""
    from helpers import RESNET
    import onnxprune.cli as cli_mod
    import contextlib
    import io
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert cli_mod.main(["inspect", str(RESNET)]) == 0
    lines = buf.getvalue().splitlines()
    header = next(i for i, ln in enumerate(lines) if ln.startswith("#  group"))
    rows = lines[header + 2:header + 2 + 7]
    cols = [lines[header].index(c) for c in ("kind", "size", "prunable", "producers")]
    for r in rows:
        assert r[cols[0]:cols[0] + 8].strip() == "channels"
        assert r[cols[2]:cols[2] + 3].strip() in ("yes", "no")
    assert sum(" yes " in r for r in rows) == 6
    assert any(ln.strip().startswith("#7 reason: reaches the graph output") for ln in lines)


class _Stream:
    def __init__(self, tty: bool):
        self.tty, self.text = tty, []

    def isatty(self):
        return self.tty

    def write(self, s):
        self.text.append(s)

    def flush(self):
        pass


def test_progress_redraws_one_line_on_a_terminal_and_prints_lines_elsewhere():
    from onnxprune import calibrate
    from onnxprune.progress import Progress
    from onnxprune.modelio import load_calibration, load_model
    from onnxprune.graph import Graph
    from onnxprune.analysis import analyze
    import numpy as np
    from helpers import MODELS

    tty = Progress(_Stream(True))
    for k in range(1, 4):
        tty(f"calibration batch {k}/3")
    tty("verifying the pruned model")
    out = "".join(tty.stream.text)
    assert out.count("\r") == 3 and "[####################] calibration batch 3/3" in out
    assert out.endswith("onnxprune: verifying the pruned model\n")
    assert out.count("\n") == 2  # the finished bar's line, then the message
    # a run sends batch ticks only to a live display
    model = load_model(str(MODELS / "resnet_legacy.onnx")).model
    graph = Graph(model)
    sites = [s for g in analyze(graph).groups if g.prunable for s in g.consumers][:2]
    cal = load_calibration(str(MODELS / "digits_calib.npz"), model)
    logged, live = Progress(_Stream(False)), Progress(_Stream(True))
    calibrate.collect(model, graph, cal, np.arange(70), sites, 0, batch_size=32,
                      progress=logged)
    calibrate.collect(model, graph, cal, np.arange(70), sites, 0, batch_size=32, progress=live)
    assert logged.stream.text == []
    assert "calibration batch 3/3" in "".join(live.stream.text)
