#!/usr/bin/env python
"""Peer baseline: structured (channel) pruning with onnxsim 0.8.1 (PyPI ``onnxsim==0.8.1``).

onnxsim is the only other tool that prunes an ONNX graph directly. What this wrapper calls
(all public names of ``onnxsim`` 0.8.1, Python API only — its command line has no pruning flags):

1. ``onnxsim.simplify(model)`` — onnxsim's own clean-up, which folds BatchNormalization into the
   preceding Conv. Needed: onnxsim's channel-chain matcher only follows Conv -> activation /
   depthwise Conv -> Conv and does not cross a BatchNormalization node, so on an un-fused export
   it prunes nothing. (``simplify=False`` skips it.)
2. One pruning call with a *uniform* ``sparsity`` = fraction of channels removed from every chain
   it matches (at least one channel kept per chain):
   * ``criterion="wanda"`` (default, uses the calibration data):
     ``onnxsim.apply_structured_wanda_pruning(model, calibration_data=[{name: batch}, ...],
     sparsity=s, importance_norm="l2", global_sparsity=False)`` — ranks channels by
     ``||W_row||_2 * ||X_channel||_2`` (activation norm measured with onnxruntime);
   * ``criterion="l2"`` / ``"l1"`` (data-free): ``onnxsim.apply_structured_pruning_cpp(model,
     sparsity=s, importance_norm=...)`` — filter-norm ranking (Li et al.).
   ``global_sparsity=True`` pools the channels of "plain" chains (single producer, no fan-out, no
   grouped Conv) into one model-wide ranking and leaves every other chain (residual groups, gated
   pairs, Concat branches) untouched.
   onnxsim takes no parameter budget, so ``sparsity`` is found by bisection: the smallest value
   whose saved model has at most ``params_fraction`` of the original parameters.
3. ``refit=True``: ``onnxsim.apply_pruning_finetune(base, pruned, calibration_data=...,
   reg_param=1e-2)`` — closed-form ridge regression of each surviving layer onto the *original*
   model's outputs, on the original model's inputs restricted to the kept channels, regularised
   toward the sliced weights (``reg_param`` relative to trace(XᵀX)/K). onnxsim documents (and we
   measured) its scope: **MatMul / Gemm only, no Conv**, and only layers pruned on at most one
   axis. On a CNN whose only Gemm is the unpruned classifier it therefore changes nothing; the
   result records how many tensors it changed and warns when that is 0.

Parameters are counted as the elements of floating-point initializers **plus floating-point
``Constant`` node values** (a PaddlePaddle export keeps all its weights in Constant nodes; for a
torch export the two counts agree up to a few scalars). ``params_fraction`` is relative to the
input model as given (before onnxsim's BN folding, which by itself removes the BN parameters).

Usage::

    python benchmarks/peer_onnxsim.py models/resnet_legacy.onnx models/digits_calib.npz \
        /tmp/resnet_onnxsim.onnx --params-fraction 0.5 [--refit] [--criterion wanda|l2|l1]
        [--global-sparsity] [--reg-param 0.01] [--no-simplify] [--batch-size 32] [--eval TEST.npz]

or from Python ``prune_onnxsim(Path(model), dict(np.load(calib)), Path(out), 0.5, refit=True)``.
Our own code; nothing is copied from onnxsim.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

ONNXSIM_VERSION = "0.8.1"
_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                onnx.TensorProto.BFLOAT16}
_CRITERIA = ("wanda", "l2", "l1")


class OnnxsimPruneError(RuntimeError):
    """onnxsim could not prune the model as asked (the message says why)."""


def count_params(model: onnx.ModelProto) -> int:
    """Floating-point weights: float initializers + float ``Constant`` node values (main graph)."""
    n = sum(int(np.prod(t.dims)) for t in model.graph.initializer if t.data_type in _FLOAT_TYPES)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            for a in node.attribute:
                if a.name == "value" and a.t.data_type in _FLOAT_TYPES:
                    n += int(np.prod(a.t.dims))
    return n


def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    out = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    out[node.output[0]] = numpy_helper.to_array(a.t)
    return out


def _import_onnxsim():
    try:
        import onnxsim  # noqa: PLC0415  (heavy import, only when used)
    except ImportError as e:  # pragma: no cover
        raise OnnxsimPruneError(f"onnxsim is not installed ({e}); "
                                f"pip install onnxsim=={ONNXSIM_VERSION}") from e
    return onnxsim


def _graph_inputs(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    inits = {t.name for t in model.graph.initializer}
    return {i.name: i for i in model.graph.input if i.name not in inits}


def _calib_batches(model: onnx.ModelProto, calib: Mapping[str, np.ndarray],
                   batch_size: int) -> list[dict[str, np.ndarray]]:
    """Split ``calib`` (keys = input names, sample axis first) into onnxsim's list-of-batches."""
    inputs = _graph_inputs(model)
    arrays = {k: np.asarray(calib[k]) for k in calib.keys()}
    missing = sorted(set(inputs) - set(arrays))
    extra = sorted(set(arrays) - set(inputs))
    if missing or extra:
        raise ValueError(f"calibration keys {sorted(arrays)} do not match the model inputs "
                         f"{sorted(inputs)} (missing {missing}, unknown {extra})")
    sizes = {k: a.shape[0] if a.ndim else 0 for k, a in arrays.items()}
    if len(set(sizes.values())) != 1 or 0 in sizes.values():
        raise ValueError(f"calibration arrays need one common, non-zero sample axis first: {sizes}")
    n = next(iter(sizes.values()))
    for name, vi in inputs.items():
        want = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        if arrays[name].dtype != want:
            raise ValueError(f"calibration input {name!r} has dtype {arrays[name].dtype}, "
                             f"the model wants {want}")
        dims = vi.type.tensor_type.shape.dim
        if vi.type.tensor_type.HasField("shape"):
            shape = arrays[name].shape
            fixed = [(i, d.dim_value) for i, d in enumerate(dims)
                     if i > 0 and d.HasField("dim_value") and d.dim_value > 0]
            if len(shape) != len(dims) or any(shape[i] != v for i, v in fixed):
                want_shape = [d.dim_value if d.HasField("dim_value") else d.dim_param or "?"
                              for d in dims]
                raise ValueError(f"calibration input {name!r} has shape {shape}, the model "
                                 f"wants {want_shape} (sample axis first)")
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0:
            batch_size = min(batch_size, dims[0].dim_value)  # fixed batch dimension
            if n % dims[0].dim_value:
                n -= n % dims[0].dim_value
    return [{k: a[i:i + batch_size] for k, a in arrays.items()} for i in range(0, n, batch_size)]


def _save(model: onnx.ModelProto, out_path: Path) -> None:
    """Atomic save beside ``out_path``; weights as external data when the model is large."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    large = model.ByteSize() > 1_500_000_000
    tmp = Path(tempfile.mkdtemp(prefix=".peer_onnxsim_", dir=out_path.parent))
    try:
        tmp_model = tmp / out_path.name
        if large:
            onnx.save_model(model, str(tmp_model), save_as_external_data=True,
                            all_tensors_to_one_file=True, location=out_path.name + ".data")
        else:
            onnx.save_model(model, str(tmp_model))
        for f in tmp.iterdir():
            os.replace(f, out_path.parent / f.name)
    finally:
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()


def _check_saved(out_path: Path, feed: dict[str, np.ndarray]) -> dict:
    """onnx.checker (full) and an onnxruntime load + run on one calibration batch."""
    checks: dict = {}
    try:
        onnx.checker.check_model(str(out_path), full_check=True)
        checks["onnx_checker"] = "ok"
    except Exception as e:  # noqa: BLE001  (recorded, not fatal: the input may fail it too)
        checks["onnx_checker"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
    try:
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.log_severity_level = 3
        sess = ort.InferenceSession(str(out_path), so, providers=["CPUExecutionProvider"])
        outs = sess.run(None, feed)
    except Exception as e:  # noqa: BLE001
        raise OnnxsimPruneError(f"the model onnxsim pruned does not run in onnxruntime: "
                                f"{type(e).__name__}: {str(e).splitlines()[0][:500]}") from e
    bad = [o.name for o, v in zip(sess.get_outputs(), outs)
           if np.issubdtype(np.asarray(v).dtype, np.floating) and not np.isfinite(v).all()]
    checks["onnxruntime"] = "ok" if not bad else f"non-finite outputs: {bad}"
    return checks


def prune_onnxsim(model_path: Path, calib: Mapping[str, np.ndarray], out_path: Path,
                  params_fraction: float, refit: bool, *, criterion: str = "wanda",
                  importance_norm: str = "l2", global_sparsity: bool = False,
                  reg_param: float = 1e-2, simplify: bool = True, batch_size: int = 32,
                  max_sparsity: float = 0.999, tol: float = 1e-4, strict: bool = False) -> dict:
    """Prune ``model_path`` with onnxsim 0.8.1's structured pruning to at most ``params_fraction``
    of its parameters (as close as a uniform ``sparsity`` allows), save it to ``out_path``.

    ``calib``: input name -> array, sample axis first (all of it is used, in batches of
    ``batch_size``). ``refit``: run onnxsim's ridge re-fit (``apply_pruning_finetune``) after
    pruning. Returns a dict (``params_fraction`` reached, ``options`` passed to onnxsim,
    ``seconds``, ``warnings``, the bisection trace, checks of the saved file). When onnxsim's
    matched chains cannot reach the target even at ``max_sparsity`` (every chain down to one
    channel), the most-pruned model is saved with ``target_reached=False`` and a warning, or, with
    ``strict=True``, ``OnnxsimPruneError`` is raised. Raises ``ValueError`` on bad arguments and
    ``OnnxsimPruneError`` when onnxsim fails, prunes nothing or writes a model onnxruntime can't run.
    """
    model_path, out_path = Path(model_path), Path(out_path)
    if not 0.0 < params_fraction <= 1.0:
        raise ValueError(f"params_fraction must be in (0, 1], got {params_fraction}")
    if criterion not in _CRITERIA:
        raise ValueError(f"criterion must be one of {_CRITERIA}, got {criterion!r}")
    if importance_norm not in ("l1", "l2"):
        raise ValueError(f"importance_norm must be 'l1' or 'l2', got {importance_norm!r}")
    if criterion in ("l1", "l2"):
        importance_norm = criterion
    if out_path.resolve() == model_path.resolve():
        raise ValueError("out_path must differ from model_path")
    onnxsim = _import_onnxsim()  # ~2-3 s the first time; not counted in "seconds"
    t_start = time.perf_counter()
    notes: list[str] = []
    version = getattr(onnxsim, "__version__", "?").lstrip("v")
    if version != ONNXSIM_VERSION:
        notes.append(f"onnxsim {version} installed, this wrapper was written for {ONNXSIM_VERSION}")

    try:
        original = onnx.load(str(model_path))
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"cannot load {model_path}: {e}") from e
    p0 = count_params(original)
    if p0 == 0:
        raise OnnxsimPruneError(f"{model_path} has no floating-point weights")
    batches = _calib_batches(original, calib, batch_size)
    target = params_fraction * p0
    timing: dict[str, float] = {}

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t = time.perf_counter()
        base = original
        if simplify:
            try:
                simplified, ok = onnxsim.simplify(original)
            except Exception as e:  # noqa: BLE001
                raise OnnxsimPruneError(f"onnxsim.simplify failed: {type(e).__name__}: {e}") from e
            if ok:
                base = simplified
            else:
                notes.append("onnxsim.simplify's own check failed; pruning the unsimplified model")
        timing["simplify"] = time.perf_counter() - t
        p_base = count_params(base)

        def prune(sp: float, real: bool) -> onnx.ModelProto:
            """One onnxsim call; ``real=False``: the data-free variant (same widths when the
            ranking is per chain — used to search ``sparsity`` without re-running calibration)."""
            try:
                if real and criterion == "wanda":
                    return onnxsim.apply_structured_wanda_pruning(
                        base, calibration_data=batches, sparsity=sp,
                        importance_norm=importance_norm, global_sparsity=global_sparsity)
                return onnxsim.apply_structured_pruning_cpp(
                    base, sparsity=sp, importance_norm=importance_norm,
                    global_sparsity=global_sparsity)
            except Exception as e:  # noqa: BLE001
                raise OnnxsimPruneError(f"onnxsim structured pruning failed at sparsity {sp:.4f}: "
                                        f"{type(e).__name__}: {e}") from e

        trace: list[tuple[float, float]] = []
        cache: dict[tuple[float, bool], int] = {}

        def params_at(sp: float, real: bool) -> int:
            key = (round(sp, 9), real)
            if key not in cache:
                cache[key] = count_params(prune(sp, real))
                trace.append((round(sp, 6), round(cache[key] / p0, 6)))
            return cache[key]

        def search(real: bool) -> float:
            """Smallest sparsity whose pruned model has <= target params (monotone steps)."""
            if params_at(0.0, real) <= target:
                return 0.0
            if params_at(max_sparsity, real) > target:
                return max_sparsity
            lo, hi = 0.0, max_sparsity
            while hi - lo > tol:
                mid = 0.5 * (lo + hi)
                if params_at(mid, real) <= target:
                    hi = mid
                else:
                    lo = mid
            return hi

        t = time.perf_counter()
        # widths depend on the ranking only in global mode; otherwise search with the cheap call
        search_real = global_sparsity or criterion != "wanda"
        sparsity = search(real=search_real)
        timing["search"] = time.perf_counter() - t
        t = time.perf_counter()
        pruned = prune(sparsity, real=True)
        timing["prune"] = time.perf_counter() - t
        if count_params(pruned) > target and not search_real and sparsity < max_sparsity:
            notes.append("the calibrated call kept other widths than the data-free one; "
                         "searched again with the calibrated call")
            t = time.perf_counter()
            sparsity = search(real=True)
            timing["search"] += time.perf_counter() - t
            pruned = prune(sparsity, real=True)

        p_pruned = count_params(pruned)
        w_base, w_pruned = _weights(base), _weights(pruned)
        resized = sorted(k for k, v in w_pruned.items()
                         if k in w_base and w_base[k].shape != v.shape)
        if not resized and sparsity > 0.0:
            raise OnnxsimPruneError(
                "onnxsim matched no prunable channel chain in this model (nothing was resized"
                + ("" if simplify else "; BatchNormalization between Convs blocks its matcher, "
                   "try simplify=True")
                + ("; global_sparsity=True pools only plain single-producer chains without "
                   "fan-out or grouped Conv, and leaves residual/gated/Concat chains untouched"
                   if global_sparsity else "") + ")")
        if sparsity == 0.0:
            notes.append("onnxsim.simplify alone already met the target (sparsity 0)")
        if p_pruned > target:
            if strict:
                raise OnnxsimPruneError(
                    f"onnxsim cannot reach {params_fraction:.3f} of the parameters on this model: "
                    f"its matched chains, each cut to one channel (sparsity {sparsity}), still "
                    f"keep {p_pruned / p0:.4f}")
            notes.append(f"target {params_fraction:.3f} unreachable with onnxsim's matched chains: "
                         f"at sparsity {sparsity} it keeps {p_pruned / p0:.4f} of the params")

        refit_changed = None
        if refit:
            t = time.perf_counter()
            try:
                fitted = onnxsim.apply_pruning_finetune(base, pruned, calibration_data=batches,
                                                        reg_param=reg_param)
            except Exception as e:  # noqa: BLE001
                raise OnnxsimPruneError(f"onnxsim.apply_pruning_finetune failed: "
                                        f"{type(e).__name__}: {e}") from e
            timing["refit"] = time.perf_counter() - t
            w_fit = _weights(fitted)
            refit_changed = sorted(k for k, v in w_fit.items() if k in w_pruned
                                   and v.shape == w_pruned[k].shape
                                   and not np.allclose(v, w_pruned[k], rtol=1e-6, atol=1e-9))
            if not refit_changed:
                notes.append("refit changed no weight: onnxsim's apply_pruning_finetune re-fits "
                             "only MatMul/Gemm layers pruned on at most one axis (no Conv)")
            pruned = fitted

        t = time.perf_counter()
        _save(pruned, out_path)
        checks = _check_saved(out_path, batches[0])
        timing["save_check"] = time.perf_counter() - t
    notes.extend(f"{w.category.__name__}: {w.message}" for w in caught)

    fn = ("onnxsim.apply_structured_wanda_pruning" if criterion == "wanda"
          else "onnxsim.apply_structured_pruning_cpp")
    options = {"simplify": "onnxsim.simplify(model)" if simplify else None,
               "function": fn, "sparsity": sparsity, "importance_norm": importance_norm,
               "global_sparsity": global_sparsity,
               "calibration": ({"batches": len(batches), "batch_size": len(batches[0][
                   next(iter(batches[0]))]), "samples": sum(len(next(iter(b.values())))
                                                             for b in batches)}
                               if criterion == "wanda" or refit else None),
               "refit": ({"function": "onnxsim.apply_pruning_finetune", "reg_param": reg_param}
                         if refit else None)}
    return {
        "tool": f"onnxsim {version}",
        "params_fraction": p_pruned / p0,
        "target_params_fraction": params_fraction,
        "target_reached": p_pruned <= target,
        "params_before": p0, "params_simplified": p_base, "params_after": p_pruned,
        "options": options,
        "seconds": round(time.perf_counter() - t_start, 3),
        "seconds_detail": {k: round(v, 3) for k, v in timing.items()},
        "search": trace,
        "resized_tensors": len(resized),
        "refit_changed_tensors": None if refit_changed is None else len(refit_changed),
        "checks": checks,
        "warnings": notes,
    }


def _accuracy(path: Path, test: Mapping[str, np.ndarray], batch: int = 256) -> float:
    """Top-1 accuracy of the first output on ``test['x']`` / ``test['y']`` (digits format)."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    x, y = np.asarray(test["x"]), np.asarray(test["y"])
    pred = np.concatenate([sess.run(None, {name: x[i:i + batch]})[0].argmax(-1)
                           for i in range(0, len(x), batch)])
    return float((pred == y).mean())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("calib", type=Path, help=".npz, keys = input names, sample axis first")
    ap.add_argument("out", type=Path)
    ap.add_argument("--params-fraction", type=float, default=0.5)
    ap.add_argument("--refit", action="store_true")
    ap.add_argument("--criterion", choices=_CRITERIA, default="wanda")
    ap.add_argument("--global-sparsity", action="store_true")
    ap.add_argument("--reg-param", type=float, default=1e-2)
    ap.add_argument("--no-simplify", action="store_true")
    ap.add_argument("--strict", action="store_true", help="fail when the target is unreachable")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--eval", type=Path, help="test .npz with keys x, y: print accuracies")
    a = ap.parse_args(argv)
    with np.load(a.calib) as z:
        calib = {k: z[k] for k in z.files}
    try:
        res = prune_onnxsim(a.model, calib, a.out, a.params_fraction, a.refit,
                            criterion=a.criterion, global_sparsity=a.global_sparsity,
                            reg_param=a.reg_param, simplify=not a.no_simplify,
                            batch_size=a.batch_size, strict=a.strict)
    except (ValueError, OnnxsimPruneError) as e:
        print(f"peer_onnxsim: error: {e}", file=sys.stderr)
        return 2
    if a.eval is not None:
        with np.load(a.eval) as z:
            test = {k: z[k] for k in z.files}
        res["accuracy_original"] = _accuracy(a.model, test)
        res["accuracy_pruned"] = _accuracy(a.out, test)
    print(json.dumps(res, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
