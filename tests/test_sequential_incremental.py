"""The in-place engine of the sequential methods (``seq`` / ``asym``).

One copy of the model is pruned group after group; the analysis and the graph index are kept
while the rewrites create no name, and :class:`onnxprune.calibrate.ActivationCache` keeps the
activations computed before the rewritten nodes, so that each group runs only its own part of
the model. ``ChannelPrunePass.incremental = False`` is the engine as it was (re-index,
re-analyse and run the model from its inputs for every group): the results are compared with it.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxprune
from onnxprune import calibrate
from onnxprune.graph import Graph
from onnxprune.passes import prune as prune_pass
from helpers import CALIB_IMG, MODELS

N = 96


def _deep_mlp(layers: int, bias: bool = True, seed: int = 0) -> onnx.ModelProto:
    """``layers`` Gemms with Relu between (hidden widths 10–17): ``layers - 1`` groups."""
    rng = np.random.default_rng(seed)
    widths = [8, *rng.integers(10, 18, size=layers - 1).tolist(), 3]
    nodes, inits, prev = [], [], "x"
    for i in range(layers):
        a, b = widths[i], widths[i + 1]
        inits.append(numpy_helper.from_array(
            (rng.standard_normal((b, a)) * np.sqrt(2.0 / a)).astype(np.float32), f"W{i}"))
        ins = [prev, f"W{i}"]
        if bias or i == 0:
            inits.append(numpy_helper.from_array(
                (rng.standard_normal(b) * 0.1).astype(np.float32), f"b{i}"))
            ins.append(f"b{i}")
        last = i == layers - 1
        nodes.append(helper.make_node("Gemm", ins, ["y" if last else f"g{i}"], name=f"fc{i}",
                                      transB=1))
        if not last:
            nodes.append(helper.make_node("Relu", [f"g{i}"], [f"h{i}"], name=f"relu{i}"))
            prev = f"h{i}"
    graph = helper.make_graph(
        nodes, "deep", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _calib(seed: int = 1) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((N, 8)).astype(np.float32)}


def _report(result) -> str:
    d = result.report.to_dict()
    d.pop("seconds")
    return json.dumps(d, sort_keys=True, default=str)


def _prune(monkeypatch, model, calib, incremental: bool, **kw):
    with monkeypatch.context() as m:
        m.setattr(prune_pass.ChannelPrunePass, "incremental", incremental)
        return onnxprune.prune(model, calib, **kw)


@pytest.mark.parametrize("method", ["seq", "asym"])
def test_each_group_runs_only_what_the_last_rewrite_changed(monkeypatch, method):
    model, calib = _deep_mlp(12), _calib()
    sizes: list[list[int]] = []  # node counts of the sessions of each statistics run
    analyses: list[int] = []
    session, collect, analyze = calibrate.session, calibrate.collect, prune_pass.analyze

    inside = []

    def counting_collect(*a, **kw):
        sizes.append([])
        inside.append(1)
        try:
            return collect(*a, **kw)
        finally:
            inside.pop()

    def counting_session(m, *a, **kw):
        if inside and isinstance(m, onnx.ModelProto):
            sizes[-1].append(len(m.graph.node))
        return session(m, *a, **kw)

    def counting_analyze(graph):
        analyses.append(len(graph.nodes))
        return analyze(graph)

    monkeypatch.setattr(calibrate, "session", counting_session)
    monkeypatch.setattr(calibrate, "collect", counting_collect)
    monkeypatch.setattr(prune_pass, "analyze", counting_analyze)
    fast = onnxprune.prune(model, calib, ratio=0.4, method=method, safeguard=False)
    assert len(analyses) == 1  # the analysis of the input model, never redone
    assert len(sizes) == 11 and fast.report.statistics_runs == 11
    # the first group runs the model up to its consumer; every later one starts at the cached
    # input of the previous group's producer: Gemm, Relu (rewritten), Gemm, Relu (new). asym
    # also runs the reference model, from the previous group's cached consumer input.
    assert sizes[0][0] == 2
    assert all(len(s) == (2 if method == "asym" else 1) for s in sizes)
    assert max(s[0] for s in sizes[1:]) <= 4, sizes
    if method == "asym":
        assert max(s[1] for s in sizes[1:]) <= 2, sizes
    sizes.clear()
    slow = _prune(monkeypatch, model, calib, False, ratio=0.4, method=method, safeguard=False)
    assert max(s[0] for s in sizes) > 12  # from the inputs every time
    # Gemm-only graphs: onnxruntime computes a cut sub-graph exactly as the whole model
    assert fast.model.SerializeToString() == slow.model.SerializeToString()
    assert _report(fast) == _report(slow)


def _count_analyses(monkeypatch) -> list[int]:
    analyses: list[int] = []
    analyze = prune_pass.analyze
    monkeypatch.setattr(prune_pass, "analyze",
                        lambda graph: analyses.append(1) or analyze(graph))
    return analyses


def test_new_bias_inputs_keep_the_analysis(monkeypatch):
    """Consumers without a bias get a new bias input: the index takes it in (no re-analysis),
    and the result is the same as re-analysing."""
    model, calib = _deep_mlp(6, bias=False), _calib()
    analyses = _count_analyses(monkeypatch)
    fast = onnxprune.prune(model, calib, ratio=0.4, method="seq", safeguard=False)
    assert len(analyses) == 1
    assert sum(n.op_type == "Gemm" and len(n.input) == 3 for n in fast.model.graph.node) == 6
    slow = _prune(monkeypatch, model, calib, False, ratio=0.4, method="seq", safeguard=False)
    assert fast.model.SerializeToString() == slow.model.SerializeToString()


def test_rewrites_that_link_nodes_differently_re_analyse(monkeypatch):
    """The dynamo ViT's head Reshapes share one shape constant: the first head group's rewrite
    gives its Reshape a private copy, and the model is re-indexed and re-analysed."""
    monkeypatch.setattr(calibrate, "CACHE_BYTES", 0)
    path = MODELS / "vit_dynamo.onnx"
    analyses = _count_analyses(monkeypatch)
    fast = onnxprune.prune(path, CALIB_IMG, ratio=0.3, method="seq", safeguard=False)
    assert len(analyses) == 2
    assert any("__node_Reshape" in t.name for t in fast.model.graph.initializer)
    slow = _prune(monkeypatch, path, CALIB_IMG, False, ratio=0.3, method="seq", safeguard=False)
    assert fast.model.SerializeToString() == slow.model.SerializeToString()


@pytest.mark.parametrize("name", ["resnet_legacy", "mobilenet_dynamo", "vit_dynamo"])
@pytest.mark.parametrize("method", ["seq", "asym"])
def test_in_place_engine_equals_full_re_analysis(monkeypatch, name, method):
    """With the activation cache off, keeping the analysis and rewriting in place changes
    nothing, byte for byte: residual sets, depthwise groups, attention heads."""
    monkeypatch.setattr(calibrate, "CACHE_BYTES", 0)
    path = MODELS / f"{name}.onnx"
    fast = onnxprune.prune(path, CALIB_IMG, ratio=0.3, method=method)
    slow = _prune(monkeypatch, path, CALIB_IMG, False, ratio=0.3, method=method)
    assert fast.model.SerializeToString() == slow.model.SerializeToString()
    assert _report(fast) == _report(slow)


def test_activation_cache_on_a_cnn_changes_only_rounding(monkeypatch):
    """onnxruntime's fused convolution kernels round differently when a sub-graph starts at a
    cached tensor: the same channels are kept, the re-fitted weights agree to float32
    precision."""
    fast = onnxprune.prune(MODELS / "resnet_legacy.onnx", CALIB_IMG, ratio=0.3, method="asym",
                           safeguard=False)
    slow = _prune(monkeypatch, MODELS / "resnet_legacy.onnx", CALIB_IMG, False, ratio=0.3,
                  method="asym", safeguard=False)
    a = {t.name: numpy_helper.to_array(t) for t in fast.model.graph.initializer}
    b = {t.name: numpy_helper.to_array(t) for t in slow.model.graph.initializer}
    assert a.keys() == b.keys()
    assert [g.kept for g in fast.report.groups] == [g.kept for g in slow.report.groups]
    for k in a:
        assert a[k].shape == b[k].shape, k
        scale = float(np.abs(b[k]).max()) or 1.0
        assert float(np.abs(a[k].astype(np.float64) - b[k]).max()) <= 1e-4 * scale, k


def test_statistics_runs_are_counted():
    model, calib = _deep_mlp(5), _calib()
    assert onnxprune.prune(model, calib, ratio=0.3).report.statistics_runs == 1
    # a budget decides every candidate from the one collection
    assert onnxprune.prune(model, calib, target_macs=0.6).report.statistics_runs == 1
    assert onnxprune.prune(model, calib, min_cosine=0.95).report.statistics_runs == 1
    # seq: one per group, and one for the one-shot model of the safeguard
    assert onnxprune.prune(model, calib, ratio=0.3, method="seq").report.statistics_runs == 5


def test_cache_plans_from_cached_tensors_and_forgets_changed_ones():
    nodes = [helper.make_node("Neg" if i % 2 else "Relu", [f"t{i}"], [f"t{i + 1}"], name=f"n{i}")
             for i in range(4)]
    model = helper.make_model(helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("t0", TensorProto.FLOAT, ["n", 3])],
        [helper.make_tensor_value_info("t4", TensorProto.FLOAT, ["n", 3])]),
        opset_imports=[helper.make_opsetid("", 17)])
    graph = Graph(model)
    position = {n.name: i for i, n in enumerate(graph.nodes)}
    cache = calibrate.ActivationCache({}, position, limit=1000)
    key = (b"ids", 4)
    sub, cut, kept, room = cache.plan(model, graph, ["t4"], ["t2", "t3"], key, lambda t: 12, 2)
    assert [n.name for n in sub.graph.node] == ["n0", "n1", "n2", "n3"] and cut == {}
    assert kept == ["t2", "t3"] and room == 1000  # 2 runs × 12 bytes each fit
    cache.keep(cut, {"t2": [np.zeros((4, 3))] * 2, "t3": [np.ones((4, 3))] * 2})
    sub, cut, kept, _ = cache.plan(model, graph, ["t4"], [], key, lambda t: 12, 2)
    assert [n.name for n in sub.graph.node] == ["n3"] and list(cut) == ["t3"]
    assert [i.name for i in sub.graph.input] == ["t3"]
    cache.keep(cut, {})
    cache.changed(2, graph.producer)  # n2 changed: t3 (its output) is stale
    assert cache.values == {}
    # another set of batches: nothing cached is used
    cache.keep({}, {"t1": [np.zeros((4, 3))] * 2})
    sub, cut, _, _ = cache.plan(model, graph, ["t4"], [], (b"other", 4), lambda t: 12, 2)
    assert cut == {} and len(sub.graph.node) == 4
    # what does not fit is not kept
    small = calibrate.ActivationCache({}, position, limit=30)
    assert small.plan(model, graph, ["t4"], ["t1", "t2", "t3"], key, lambda t: 12, 2)[2] == ["t1"]
    # unknown sizes are measured as the batches come: what passes the room is dropped
    assert small.plan(model, graph, ["t4"], ["t1", "t2"], key, lambda t: None, 2)[2] == [
        "t1", "t2"]
    stored = {"t1": [], "t2": []}
    runs = calibrate.run_outputs(_Session(), _Calib(), np.arange(8), ["t4"], 4, {}, stored, 30)
    assert len(list(runs)) == 2
    # both (4 × 12 bytes) do not fit in 30: the one that passed it in the second batch is dropped
    assert list(stored) == ["t2"] and len(stored["t2"]) == 2


class _Session:
    """Returns 3 float32 values (12 bytes) per output."""

    def get_inputs(self):
        return []

    def run(self, fetch, feed):
        return [np.zeros(3, np.float32) for _ in fetch]


class _Calib:
    mode = "batched"

    def feeds(self, indices, batch_size):
        for s in range(0, len(indices), batch_size):
            yield {"t0": np.zeros((batch_size, 3), np.float32)}, batch_size

    def token_valid(self, feed, valid):
        return None
