"""A Llama-style decoder (transformers' ``LlamaForCausalLM`` from a random config: RMSNorm,
rotary embeddings, grouped-query attention, SwiGLU FFN; no KV cache), dynamo export with dynamic
batch and sequence length.

What is pruned today: the SwiGLU neurons — ``down(silu(gate(x)) * up(x))``: gate and up rows
removed together, down's columns re-fitted by least squares. What is not, with its reason: the
residual width (RMSNorm and every block add to it) and the attention heads (grouped-query
attention repeats each K/V head with Expand for its group of Q heads; no channel rule follows
Expand yet). The legacy TorchScript exporter cannot export this model (transformers' causal
mask uses ``aten::diff``), so only the dynamo export is tested.
"""

from __future__ import annotations

import contextlib
import os
import warnings

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import onnxprune  # noqa: E402
from helpers import full_check, run  # noqa: E402
from onnxprune.api import split_samples  # noqa: E402
from transformer_helpers import analysis  # noqa: E402

HIDDEN, FFN, LAYERS, VOCAB = 48, 96, 2, 97


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    cfg = transformers.LlamaConfig(hidden_size=HIDDEN, intermediate_size=FFN,
                                   num_hidden_layers=LAYERS, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=VOCAB,
                                   max_position_embeddings=64, use_cache=False)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()

    class Logits(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids):
            return self.m(input_ids=input_ids, use_cache=False).logits

    path = tmp_path_factory.mktemp("llama") / "llama_dynamo.onnx"
    b, s = torch.export.Dim("batch", min=1, max=64), torch.export.Dim("seq", min=2, max=64)
    with warnings.catch_warnings(), contextlib.redirect_stdout(open(os.devnull, "w")):
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(Logits(model), (torch.randint(0, VOCAB, (2, 16)),),
                                 dynamo=True, input_names=["input_ids"],
                                 output_names=["logits"],
                                 dynamic_shapes=({0: b, 1: s},))
    prog.save(str(path), external_data=False)
    return path


def _ids(n: int, s: int, seed: int) -> dict[str, np.ndarray]:
    return {"input_ids": np.random.default_rng(seed).integers(0, VOCAB, (n, s))
            .astype(np.int64)}


def test_swiglu_neurons_prunable_heads_and_residual_width_not(llama):
    model, an = analysis(llama)
    nodes = {n.name: n for n in model.graph.node}
    ffn = [g for g in an.groups if g.prunable]
    assert [(g.size, g.kind, len(g.producers), len(g.consumers)) for g in ffn] == \
        [(FFN, "channels", 2, 1)] * LAYERS  # gate and up together, down the consumer
    for g in ffn:
        assert all(nodes[p].op_type == "MatMul" for p in g.producers)
    heads = [g for g in an.groups if g.kind == "heads"]
    assert heads and not any(g.prunable for g in heads)
    codes = {r.code for g in an.groups if not g.prunable for r in g.reasons}
    assert {"unhandled-operand", "no-rule", "graph-output"} <= codes
    assert any("Expand" in str(r) for g in heads for r in g.reasons)


def test_prune_swiglu_refit_params_and_dynamic_sequence(llama):
    calib = _ids(48, 16, 0)
    res = onnxprune.prune(str(llama), calib, ratio=0.5)
    full_check(res.model)
    r = res.report
    pruned = [g for g in r.groups if g.prunable]
    assert [(g.total, g.kept) for g in pruned] == [(FFN, FFN // 2)] * LAYERS
    # each removed neuron: a row of gate and of up, a column of down (no biases in Llama)
    assert r.params_before - r.params_after == LAYERS * (FFN // 2) * 3 * HIDDEN
    for feeds in (_ids(1, 5, 1), _ids(3, 33, 2)):
        out, ref = run(res.model, feeds)[0], run(str(llama), feeds)[0]
        assert out.shape == ref.shape == (*feeds["input_ids"].shape, VOCAB)
    # next-token logits of held-out sequences (calibrated on others)
    held = _ids(32, 16, 3)
    a, b = run(str(llama), held)[0][:, -1], run(res.model, held)[0][:, -1]
    cos = np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert float(cos.mean()) >= 0.9, float(cos.mean())


def _with_output(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return m


def test_down_projection_is_the_least_squares_refit(llama):
    """The first layer's down projection: its new weights solve the normal equations of
    ``min ‖H_S W'ᵀ − H Wᵀ‖`` on the calibration tokens used for selection, where H is down's
    input on the original model and S the kept neurons (the first FFN's input is the same in
    the pruned model: nothing upstream of it is pruned)."""
    calib = _ids(48, 16, 0)
    res = onnxprune.prune(str(llama), calib, ratio=0.5, ridge=0)
    model, an = analysis(llama)
    group = next(g for g in an.groups if g.prunable)
    (site,) = group.consumers
    down = next(n for n in model.graph.node if n.name == site.node)
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    W = inits[down.input[1]].T  # MatMul weight [in, out] -> [out, in]
    sel, _ = split_samples(48, 0.2, 0)
    feeds = {"input_ids": calib["input_ids"][sel]}
    H = run(_with_output(model, down.input[0]), feeds)[-1].reshape(-1, FFN).astype(np.float64)
    pruned = {t.name: onnx.numpy_helper.to_array(t) for t in res.model.graph.initializer}
    pdown = next(n for n in res.model.graph.node if n.name == site.node)
    W_new = pruned[pdown.input[1]].T.astype(np.float64)
    Hp = run(_with_output(res.model, pdown.input[0]), feeds)[-1].reshape(-1, FFN // 2)
    Hp = Hp.astype(np.float64)
    kept = [j for j in range(FFN) if np.any(np.all(np.isclose(H[:, [j]], Hp, atol=1e-5), 0))]
    assert len(kept) == FFN // 2  # the kept neurons' activations are unchanged
    target = H @ W.T
    resid = Hp.T @ (Hp @ W_new.T - target)
    assert np.linalg.norm(resid) <= 1e-4 * np.linalg.norm(Hp.T @ target)
