"""Shared test helpers: exporting tiny torch modules, running models, numerical comparison."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
MLP = MODELS / "mlp_skl.onnx"
VGG = MODELS / "vgg_dynamo.onnx"
VGG_DATA = MODELS / "vgg_dynamo.onnx.data"
RESNET = MODELS / "resnet_legacy.onnx"
CALIB_FLAT = MODELS / "digits_calib_flat.npz"
CALIB_IMG = MODELS / "digits_calib.npz"


def run(model, feeds: dict) -> list[np.ndarray]:
    """Run an onnx ModelProto or path with onnxruntime (CPU)."""
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def assert_close(a, b, atol=1e-5, rtol=1e-5):
    np.testing.assert_allclose(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64),
                               atol=atol, rtol=rtol)


def randomize_bn(module, seed: int = 0) -> None:
    """Give every BatchNorm non-trivial running statistics and affine parameters."""
    import torch
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            n = m.num_features
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)


def exported(request, tmp_path_factory, module, example, seed: int) -> Path:
    """Module-scoped fixture body: ``module`` with random BatchNorm statistics, exported with the
    exporter named by ``request.param``."""
    randomize_bn(module, seed)
    path = tmp_path_factory.mktemp(type(module).__name__) / f"m_{request.param}.onnx"
    return export(module, example, path, request.param)


def export(module, example, path: Path, exporter: str, dynamic_batch: bool = True) -> Path:
    """Export ``module`` (eval mode) with the legacy or the dynamo torch exporter."""
    import torch
    module.eval()
    path = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "legacy":
            kwargs = {}
            if dynamic_batch:
                kwargs["dynamic_axes"] = {"input": {0: "batch"}, "output": {0: "batch"}}
            torch.onnx.export(module, (example,), str(path), dynamo=False, opset_version=17,
                              input_names=["input"], output_names=["output"], **kwargs)
        elif exporter == "dynamo":
            kwargs = {}
            if dynamic_batch:
                kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch", min=1, max=1024)},)
            devnull = open(os.devnull, "w")
            import contextlib
            with contextlib.redirect_stdout(devnull):
                prog = torch.onnx.export(module, (example,), dynamo=True, input_names=["input"],
                                         output_names=["output"], **kwargs)
            prog.save(str(path), external_data=True)
        else:
            raise ValueError(exporter)
    return path


def torch_out(module, x: np.ndarray) -> np.ndarray:
    import torch
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


def params_of(model: onnx.ModelProto) -> int:
    return int(sum(np.prod(t.dims) for t in model.graph.initializer
                   if t.data_type == onnx.TensorProto.FLOAT))


def init_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    return {t.name: tuple(t.dims) for t in model.graph.initializer}


def node_weight_shapes(model: onnx.ModelProto, op_type: str) -> list[tuple[int, ...]]:
    shapes = init_shapes(model)
    return [shapes[n.input[1]] for n in model.graph.node if n.op_type == op_type
            and n.input[1] in shapes]


def full_check(model: onnx.ModelProto) -> None:
    onnx.checker.check_model(model, full_check=True)


def serialized(model: onnx.ModelProto) -> bytes:
    buf = io.BytesIO()
    buf.write(model.SerializeToString())
    return buf.getvalue()


def check_prune_roundtrip(path, input_shape, *, ratio=0.5, min_param_cut=0.35, n=64, seed=0,
                          method="inchange"):
    """Prune ``path`` at ratio 0 (must reproduce outputs) and at ``ratio`` (valid, smaller).

    Returns (original ModelProto, pruned ModelProto, report, calibration array).
    """
    import onnxprune
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n,) + tuple(input_shape)).astype(np.float32)
    original = onnx.load(str(path))
    ref = run(path, {"input": x})
    same = onnxprune.prune(path, {"input": x}, ratio=0.0)
    full_check(same.model)
    for a, b in zip(ref, run(same.model, {"input": x})):
        assert_close(a, b, atol=1e-5, rtol=1e-5)
    res = onnxprune.prune(path, {"input": x}, ratio=ratio, method=method)
    full_check(res.model)
    out = run(res.model, {"input": x})
    assert [o.shape for o in out] == [o.shape for o in ref]
    assert all(np.all(np.isfinite(o)) for o in out)
    r = res.report
    assert r.params_after <= (1 - min_param_cut) * r.params_before, (r.params_before,
                                                                       r.params_after)
    assert r.macs_after < r.macs_before
    # a batch of 1 still works (dynamic batch preserved)
    run(res.model, {"input": x[:1]})
    return original, res.model, r, x


def assert_groups(path, expected: list[tuple[int, bool]]) -> None:
    """``inspect`` finds exactly these ``(size, prunable)`` channel groups (sorted)."""
    import onnxprune
    groups = onnxprune.inspect(str(path)).groups
    assert sorted((g.total, g.prunable) for g in groups) == sorted(expected), \
        [(g.name, g.total, g.reason) for g in groups]


def prune_one_group(path, feeds, size: int, **kw):
    """Prune only the group(s) of ``size`` channels, at 0.5, with a plain least-squares re-fit on
    every sampled position (for comparisons with a direct solve)."""
    import onnxprune
    groups = onnxprune.inspect(str(path)).groups
    return onnxprune.prune(str(path), feeds, ratio=0.5, ridge=0.0, max_positions=10_000,
                           exclude=[g.name for g in groups if g.total != size], **kw)


def kept_by_direction(original: np.ndarray, pruned: np.ndarray) -> list[int]:
    """Which of ``original``'s filters (first axis) ``pruned``'s are, by direction (a folded
    BatchNormalization rescales them)."""
    ref = original.reshape(len(original), -1).astype(np.float64)
    ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    got = pruned.reshape(len(pruned), -1).astype(np.float64)
    got = got / np.linalg.norm(got, axis=1, keepdims=True)
    return [int(np.argmax(np.abs(ref @ u))) for u in got]
