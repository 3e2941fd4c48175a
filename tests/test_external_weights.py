"""Weights left in their external-data files (models over ``weights.LAZY_BYTES``) and the linear,
stable topological order: the lazy path must give the very model the in-memory path gives."""

from __future__ import annotations

import hashlib
import random
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import helper

import onnxprune
from onnxprune import weights
from onnxprune.errors import ModelError
from onnxprune.passes.normalize import topo_order
from helpers import CALIB_IMG, MODELS, ROOT

RESNET_DYNAMO = MODELS / "resnet_dynamo.onnx"


def _digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _calib():
    x = np.load(CALIB_IMG)
    return {"input": x[list(x)[0]][:120]}


@pytest.mark.parametrize("kw", [{"ratio": 0.25}, {"ratio": 0.25, "method": "asym"}],
                         ids=["inchange", "asym"])
def test_lazy_weights_give_the_same_saved_model(tmp_path, monkeypatch, kw):
    name = onnx.load(str(RESNET_DYNAMO), load_external_data=False).graph.input[0].name
    calib = {name: _calib()["input"]}
    eager = onnxprune.prune(str(RESNET_DYNAMO), calib, **kw)
    assert eager.weights_dir is None
    monkeypatch.setattr(weights, "LAZY_BYTES", 0)
    lazy = onnxprune.prune(str(RESNET_DYNAMO), calib, **kw)
    assert lazy.weights_dir == str(MODELS)
    # the lazy run loaded no weight up front (every one is rewritten here, so the result holds
    # them all in memory)
    assert weights.base_dir() is None  # the API call restored the caller's setting
    from onnxprune.modelio import load_model
    with weights.source(None):
        assert sum(weights.is_external(t) for t in load_model(RESNET_DYNAMO).model.graph.initializer
                   ) == sum(onnx.external_data_helper.uses_external_data(t) for t in onnx.load(
                       str(RESNET_DYNAMO), load_external_data=False).graph.initializer) > 0
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    eager.save(tmp_path / "a" / "m.onnx")
    lazy.save(tmp_path / "b" / "m.onnx")
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b")
    assert eager.report.fidelity == lazy.report.fidelity
    # the saved model holds every byte itself (no reference back to the input's data file)
    saved = onnx.load(str(tmp_path / "b" / "m.onnx"))
    assert all(not weights.is_external(t) for t in saved.graph.initializer)


def test_lazy_load_refuses_truncated_data(tmp_path, monkeypatch):
    m = onnx.load(str(RESNET_DYNAMO))
    onnx.save_model(m, str(tmp_path / "m.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="m.onnx.data", size_threshold=0)
    data = tmp_path / "m.onnx.data"
    data.write_bytes(data.read_bytes()[:-100])
    monkeypatch.setattr(weights, "LAZY_BYTES", 0)
    from onnxprune.modelio import load_model
    with pytest.raises(ModelError, match="truncated"):
        load_model(tmp_path / "m.onnx")


def test_cli_lazy_truncated_is_one_line(tmp_path):
    m = onnx.load(str(RESNET_DYNAMO))
    onnx.save_model(m, str(tmp_path / "m.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="m.onnx.data", size_threshold=0)
    data = tmp_path / "m.onnx.data"
    data.write_bytes(data.read_bytes()[:-100])
    code = ("import sys; from onnxprune import weights, cli; weights.LAZY_BYTES = 0; "
            "sys.exit(cli.main(sys.argv[1:]))")
    r = subprocess.run([sys.executable, "-c", code, "inspect", str(tmp_path / "m.onnx")],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2
    assert r.stderr.startswith("onnxprune: error: external data of") and "Traceback" not in r.stderr


def _chain_nodes(order_of_nodes):
    return [helper.make_node("Relu", [f"t{i}"], [f"t{i + 1}"], name=f"n{i}")
            for i in order_of_nodes]


def _reference_order(nodes):
    """Brute force: repeatedly take the first node (in input order) whose inputs are ready."""
    produced = {o for n in nodes for o in n.output}
    done, order, left = set(), [], list(range(len(nodes)))
    while left:
        i = next(i for i in left if all(x not in produced or x in done for x in nodes[i].input))
        order.append(i)
        done.update(nodes[i].output)
        left.remove(i)
    return order


def test_topo_order_keeps_a_sorted_graph_and_matches_brute_force():
    nodes = _chain_nodes(range(50))
    assert topo_order(nodes) == list(range(50))
    rng = random.Random(0)
    for trial in range(20):
        # a random DAG: node i reads 1-3 earlier tensors; then shuffled
        n = 40
        dag = []
        for i in range(n):
            ins = sorted({f"t{rng.randrange(0, i + 1)}" for _ in range(rng.randint(1, 3))})
            dag.append(helper.make_node("Sum", ins, [f"t{i + 1}"], name=f"n{i}"))
        rng.shuffle(dag)
        order = topo_order(dag)
        assert order == _reference_order(dag)
        seen = {"t0"}
        for i in order:
            assert all(x in seen for x in dag[i].input)
            seen.update(dag[i].output)


def test_topo_order_rejects_a_cycle():
    from onnxprune.errors import PassError
    nodes = [helper.make_node("Add", ["x", "b"], ["a"], name="p"),
             helper.make_node("Relu", ["a"], ["b"], name="q")]
    with pytest.raises(PassError, match="cycle"):
        topo_order(nodes)


def test_memory_batch_bounds_the_captured_bytes(monkeypatch):
    from onnxprune import calibrate
    from onnxprune.graph import Graph
    from onnxprune.modelio import load_model
    g = Graph(load_model(MODELS / "resnet_legacy.onnx").model)
    names = [n.output[0] for n in g.nodes if n.op_type == "Relu"]
    per_sample = sum(int(np.prod(g.static_shape(x))) * 4 for x in names)
    assert per_sample > 0
    assert calibrate.memory_batch(g, names, 32) == 32  # small digits model: unchanged
    monkeypatch.setattr(calibrate, "BATCH_BYTES", 3 * per_sample)
    assert calibrate.memory_batch(g, names, 32) == 3
    assert calibrate.memory_batch(g, names, 32, runs=2) == 1
    assert calibrate.memory_batch(g, names, 2) == 2


def test_small_memory_batches_give_the_same_pruned_model(monkeypatch):
    from onnxprune import calibrate
    calib = _calib()
    name = onnx.load(str(MODELS / "resnet_legacy.onnx")).graph.input[0].name
    a = onnxprune.prune(str(MODELS / "resnet_legacy.onnx"), {name: calib["input"]}, ratio=0.3)
    monkeypatch.setattr(calibrate, "BATCH_BYTES", 1)  # one sample per run
    b = onnxprune.prune(str(MODELS / "resnet_legacy.onnx"), {name: calib["input"]}, ratio=0.3)
    assert [g.kept for g in a.report.groups] == [g.kept for g in b.report.groups]
    wa = {t.name: onnx.numpy_helper.to_array(t) for t in a.model.graph.initializer}
    wb = {t.name: onnx.numpy_helper.to_array(t) for t in b.model.graph.initializer}
    assert wa.keys() == wb.keys()
    for k in wa:  # only the summation order of the Grams differs
        np.testing.assert_allclose(wa[k], wb[k], rtol=1e-4, atol=1e-5)


def test_skeleton_checks_structure_without_the_weights():
    """The checker sees big weights as typed inputs: it copies no weight bytes, passes a valid
    model, and still catches a broken one (a node reading a tensor nobody makes)."""
    m = onnx.load(str(MODELS / "vgg_legacy.onnx"))
    sk = weights.skeleton(m)
    assert sk.ByteSize() < m.ByteSize() / 10
    assert {t.name for t in sk.graph.initializer} == {
        t.name for t in m.graph.initializer if t.ByteSize() <= weights.SKELETON_BYTES}
    onnx.checker.check_model(sk, full_check=True)
    bad = onnx.ModelProto()
    bad.CopyFrom(m)
    bad.graph.node[len(bad.graph.node) // 2].input[0] = "nobody_makes_this"
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_model(weights.skeleton(bad), full_check=True)


def test_cli_and_api_refuse_options_alike(tmp_path):
    from onnxprune.errors import OptionError
    from helpers import CALIB_FLAT, MLP
    cases = [({"ratio": 1.5}, ["--ratio", "1.5"]), ({"target_macs": 0.0}, ["--target-macs", "0"]),
             ({"min_cosine": 2.0}, ["--min-cosine", "2"]), ({"ridge": -1.0}, ["--ridge", "-1"]),
             ({"ratio": 0.2, "holdout": 1.0}, ["--ratio", "0.2", "--holdout", "1"])]
    for kw, argv in cases:
        with pytest.raises(OptionError) as exc:
            onnxprune.prune(str(MLP), str(CALIB_FLAT), **kw)
        r = subprocess.run([sys.executable, "-m", "onnxprune.cli", "prune", str(MLP),
                            str(tmp_path / "o.onnx"), "--calib", str(CALIB_FLAT), *argv],
                           capture_output=True, text=True, cwd=ROOT)
        assert r.returncode == 2 and str(exc.value) in r.stderr, (kw, r.stderr)
    assert not (tmp_path / "o.onnx").exists()


def test_lazy_weights_sparsify_and_stats(tmp_path, monkeypatch):
    """sparsify and calibrate → prune --stats read lazily held weights too, with the same result."""
    name = onnx.load(str(RESNET_DYNAMO), load_external_data=False).graph.input[0].name
    calib = {name: _calib()["input"]}
    runs = {}
    for lazy in (False, True):
        monkeypatch.setattr(weights, "LAZY_BYTES", 0 if lazy else 1 << 30)
        d = tmp_path / str(lazy)
        d.mkdir()
        onnxprune.sparsify(str(RESNET_DYNAMO), calib, sparsity=0.5).save(d / "s.onnx")
        onnxprune.calibrate_stats(str(RESNET_DYNAMO), calib, d / "stats.npz")
        onnxprune.prune(str(RESNET_DYNAMO), calib, ratio=0.3, stats=[d / "stats.npz"]).save(
            d / "p.onnx")
        runs[lazy] = {k: v for k, v in _digests(d).items() if not k.startswith("stats")}
    assert runs[False] == runs[True]
    assert set(runs[True]) == {"s.onnx", "s.onnx.data", "p.onnx", "p.onnx.data"}


def test_unprunable_reasons_carry_a_code_and_a_node(tmp_path):
    """Every reason on the reference models (and the topologies built in the tests) is a
    Reason with a known code; the report lists them as {code, node, message}."""
    import glob
    import json
    from onnxprune.reasons import REASON_CODES, Reason
    seen = set()
    for p in sorted(glob.glob(str(MODELS / "*.onnx"))):
        rep = onnxprune.inspect(p)
        for g in rep.groups:
            assert "; ".join(r["message"] for r in g.reasons) == g.reason
            for r in g.reasons:
                assert r["code"] in REASON_CODES
                seen.add(r["code"])
    assert "graph-output" in seen and "mixes-channels" in seen
    # the classifier group of the digits ViT: reaches the output, the node is ''
    vit = onnxprune.inspect(str(MODELS / "vit_dynamo.onnx"))
    out = [r for g in vit.groups for r in g.reasons if r["code"] == "graph-output"]
    assert out and all(r["node"] == "" and "graph output" in r["message"] for r in out)
    mixed = [r for g in vit.groups for r in g.reasons if r["code"] == "mixes-channels"]
    assert mixed and all(r["node"] and r["node"] in r["message"] for r in mixed)
    with pytest.raises(ValueError):
        Reason("x", "not-a-code")
    # through the CLI report too
    r = subprocess.run([sys.executable, "-m", "onnxprune.cli", "prune", str(MODELS / "vit_dynamo.onnx"),
                        str(tmp_path / "o.onnx"), "--calib", str(CALIB_IMG), "--ratio", "0.25",
                        "--report", str(tmp_path / "r.json"), "-q"], capture_output=True, text=True,
                       cwd=ROOT)
    assert r.returncode == 0, r.stderr
    groups = json.loads((tmp_path / "r.json").read_text())["groups"]
    assert any(x["code"] == "graph-output" for g in groups for x in g["reasons"])
