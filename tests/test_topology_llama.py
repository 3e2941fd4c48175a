"""A Llama-style decoder (transformers' ``LlamaForCausalLM`` from a random config: RMSNorm,
rotary embeddings, grouped-query attention with 8 Q heads sharing 4 K/V heads, SwiGLU FFN; no
KV cache), dynamo export with dynamic batch and sequence length.

What is pruned: the SwiGLU neurons — ``down(silu(gate(x)) * up(x))``: gate and up rows removed
together, down's columns re-fitted by least squares — and the K/V head groups: a K/V head and
the Q heads that share it (repeated for them by ``Unsqueeze → Expand → Reshape``) are one
element, removed together from the Q, K and V projections, the Expand and Reshape head counts
patched, the output projection re-fitted. What is not, with its reason: the residual width
(RMSNorm and every block add to it). The legacy TorchScript exporter cannot export this model
(transformers' causal mask uses ``aten::diff``), so only the dynamo export is tested.
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
HEADS, KV_HEADS = 8, 4
HEAD_DIM, REP = HIDDEN // HEADS, HEADS // KV_HEADS


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    cfg = transformers.LlamaConfig(hidden_size=HIDDEN, intermediate_size=FFN,
                                   num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                                   num_key_value_heads=KV_HEADS, vocab_size=VOCAB,
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


def test_swiglu_neurons_and_kv_head_groups_prunable_residual_width_not(llama):
    model, an = analysis(llama)
    nodes = {n.name: n for n in model.graph.node}
    prunable = [g for g in an.groups if g.prunable]
    assert [(g.size, g.kind, len(g.producers), len(g.consumers)) for g in prunable] == \
        [(KV_HEADS, "heads", 3, 1), (FFN, "channels", 2, 1)] * LAYERS
    for g in prunable:  # q, k, v / gate and up; o / down
        assert all(nodes[p].op_type == "MatMul" for p in g.producers)
    unprunable = [g for g in an.groups if not g.prunable]
    assert {r.code for g in unprunable for r in g.reasons} == {"unhandled-operand",
                                                               "graph-output"}


def test_prune_ffn_and_kv_heads_params_and_dynamic_sequence(llama):
    calib = _ids(48, 16, 0)
    res = onnxprune.prune(str(llama), calib, ratio=0.5, head_ratio=0.25)
    full_check(res.model)
    r = res.report
    pruned = [g for g in r.groups if g.prunable]
    assert [(g.total, g.kept) for g in pruned] == [(KV_HEADS, KV_HEADS - 1),
                                                   (FFN, FFN // 2)] * LAYERS
    # each removed neuron: a row of gate and of up, a column of down (no biases in Llama);
    # each removed K/V head group: its K and V rows, the rows of its REP Q heads, and their
    # columns of the output projection
    per_group = (2 * HEAD_DIM + 2 * REP * HEAD_DIM) * HIDDEN
    assert r.params_before - r.params_after == LAYERS * ((FFN // 2) * 3 * HIDDEN + per_group)
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


def _first_refit(llama, kind: str, width: int, **prune_kw) -> list[int]:
    """Prune ``llama`` (calibrated on 48 sequences, ridge 0) and check that the first ``kind``
    group's consumer solves the normal equations of ``min ‖H_S W'ᵀ − H Wᵀ‖`` on the calibration
    tokens used for selection: H its input on the original model, S the kept columns (found as
    the pruned model's input columns, which must be unchanged: nothing upstream of that
    consumer may be pruned). Returns S."""
    calib = _ids(48, 16, 0)
    res = onnxprune.prune(str(llama), calib, ridge=0, **prune_kw)
    model, an = analysis(llama)
    group = next(g for g in an.groups if g.prunable and g.kind == kind)
    (site,) = group.consumers
    sel, _ = split_samples(48, 0.2, 0)
    feeds = {"input_ids": calib["input_ids"][sel]}

    def weight_and_input(m):  # MatMul weight [in, out] → [out, in]; its input as rows
        node = next(n for n in m.graph.node if n.name == site.node)
        inits = {t.name: onnx.numpy_helper.to_array(t) for t in m.graph.initializer}
        x = run(_with_output(m, node.input[0]), feeds)[-1]
        return inits[node.input[1]].T.astype(np.float64), x.reshape(-1, x.shape[-1]).astype(
            np.float64)

    (W, H), (W_new, Hp) = weight_and_input(model), weight_and_input(res.model)
    assert Hp.shape[1] == width
    kept = [j for j in range(H.shape[1])
            if np.any(np.all(np.isclose(H[:, [j]], Hp, atol=1e-5), 0))]
    assert len(kept) == width  # the kept columns' values are unchanged
    target = H @ W.T
    resid = Hp.T @ (Hp @ W_new.T - target)
    assert np.linalg.norm(resid) <= 1e-4 * np.linalg.norm(Hp.T @ target)
    return kept


def test_output_projection_is_the_least_squares_refit(llama):
    """The first layer's output projection after a K/V head group is removed: the kept Q heads
    compute what they did (nothing upstream of the first attention is pruned)."""
    width = (KV_HEADS - 1) * REP * HEAD_DIM
    kept = _first_refit(llama, "heads", width, ratio=0.0, head_ratio=0.25)
    blocks = sorted({j // (REP * HEAD_DIM) for j in kept})  # whole groups of REP Q heads
    assert kept == [b * REP * HEAD_DIM + i for b in blocks for i in range(REP * HEAD_DIM)]


def test_down_projection_is_the_least_squares_refit(llama):
    """The first layer's down projection (the heads are kept: the first FFN's input is the same
    in the pruned model)."""
    _first_refit(llama, "channels", FFN // 2, ratio=0.5, head_ratio=0.0)
