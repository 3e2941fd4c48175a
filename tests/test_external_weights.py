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
