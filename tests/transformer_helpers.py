"""Helpers for the transformer topology tests: export with dynamic batch *and* sequence length,
random-weight initialisation without shared (deduplicated) parameters, and checks."""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path

import numpy as np
import onnx

import onnxprune
from helpers import assert_close, full_check, run
from onnxprune.graph import Graph
from onnxprune.passbase import run_passes
from onnxprune.passes import NormalizePass
from onnxprune.passes.prune import analysis_of


def randomize(module, seed: int) -> None:
    """Give every parameter distinct random values (exporters de-duplicate equal initializers,
    e.g. all-zero biases, which would make parameter counts depend on sharing)."""
    import torch
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.ndim > 1 else 0.1))


def export_seq(module, example, path: Path, exporter: str, dynamic_seq: bool = True,
               inputs: tuple[str, ...] = ("input",)) -> Path:
    """Export ``module`` (eval) with dynamic batch (and sequence) axes on every input."""
    import torch
    module.eval()
    path = Path(path)
    examples = example if isinstance(example, tuple) else (example,)
    axes = {0: "batch", 1: "seq"} if dynamic_seq else {0: "batch"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "legacy":
            dyn = {name: axes for name in inputs}
            dyn["output"] = axes
            torch.onnx.export(module, examples, str(path), dynamo=False, opset_version=17,
                              input_names=list(inputs), output_names=["output"],
                              dynamic_axes=dyn)
        else:
            b = torch.export.Dim("batch", min=1, max=1024)
            s = torch.export.Dim("seq", min=2, max=512)
            spec = {0: b, 1: s} if dynamic_seq else {0: b}
            with contextlib.redirect_stdout(open(os.devnull, "w")):
                prog = torch.onnx.export(module, examples, dynamo=True, input_names=list(inputs),
                                         output_names=["output"],
                                         dynamic_shapes=tuple(spec for _ in inputs))
            prog.save(str(path), external_data=False)
    return path


def analysis(path):
    model, _ = run_passes([NormalizePass()], onnx.load(str(path)))
    return model, analysis_of(model)


def head_groups(path):
    _, an = analysis(path)
    return [g for g in an.groups if g.kind == "heads"]


def float_params(model: onnx.ModelProto) -> int:
    return int(sum(np.prod(t.dims) for t in model.graph.initializer
                   if t.data_type == onnx.TensorProto.FLOAT))


def scalars(model: onnx.ModelProto) -> list[float]:
    """Sorted values of the single-element float constants (softmax scales, GELU constants)."""
    from onnx import numpy_helper
    out = []
    for t in model.graph.initializer:
        if t.data_type == onnx.TensorProto.FLOAT and int(np.prod(t.dims)) == 1:
            out.append(float(numpy_helper.to_array(t).reshape(-1)[0]))
    return sorted(out)


def check_identity_and_dynamic(path, feeds: dict, other_feeds: list[dict], **kw):
    """ratio 0 reproduces outputs (≤ 1e-5); a pruned model is valid and runs at other batch sizes
    and sequence lengths. Returns the pruned result."""
    ref = run(path, feeds)
    same = onnxprune.prune(path, feeds, ratio=0.0, head_ratio=0.0)
    full_check(same.model)
    for a, b in zip(ref, run(same.model, feeds)):
        assert_close(a, b, atol=1e-5, rtol=1e-5)
    res = onnxprune.prune(path, feeds, **kw)
    full_check(res.model)
    out = run(res.model, feeds)
    assert out[0].shape == ref[0].shape and np.all(np.isfinite(out[0]))
    for f in other_feeds:
        o = run(res.model, f)[0]
        r = run(path, f)[0]
        assert o.shape == r.shape
    return res


def graph_of(model: onnx.ModelProto) -> Graph:
    return Graph(model)
