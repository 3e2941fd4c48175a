"""Public Python API for weight sparsity: :func:`sparsify` and :func:`compare`."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from onnxprune import options, storage, weights
from onnxprune.api import CalibSource, ModelSource, PruneResult, prune
from onnxprune.job import open_session, split_samples, worst_cosine
from onnxprune.errors import ModelError, OptionError
from onnxprune.graph import Graph
from onnxprune.metrics import _FLOAT_TYPES, count_params
from onnxprune.modelio import load_calibration, load_model
from onnxprune.passbase import run_passes
from onnxprune.passes import CleanupPass, NormalizePass
from onnxprune.passes.sparsify import (ALLOCATIONS, SPARSE_METHODS, SparsifyOptions,
                                       SparsifyPass, find_layers)
from onnxprune.report import SparsifyReport
from onnxprune.saving import run_sources
from onnxprune.select import cubic_schedule
from onnxprune.verify import check_structure, fidelity, latencies, sample_feed


def parse_pattern(pattern: str) -> tuple[int, int] | None:
    """``"unstructured"`` → None; ``"N:M"`` (1 ≤ N < M ≤ 64) → (N, M)."""
    if pattern == "unstructured":
        return None
    m = re.fullmatch(r"(\d+):(\d+)", str(pattern))
    if not m or not 1 <= int(m.group(1)) < int(m.group(2)) <= 64:
        raise OptionError(f"--pattern must be 'unstructured' or N:M with 1 ≤ N < M ≤ 64 (e.g. "
                          f"2:4), got {pattern!r}")
    return int(m.group(1)), int(m.group(2))


@weights.scoped
def sparsify(model: ModelSource, calib: CalibSource, *, sparsity: float | None = None,
             pattern: str = "unstructured", method: str = "obs", reweight: bool = True,
             steps: int = 1, allocation: str | None = None, ridge: float | str = "auto",
             seed: int = 0, holdout: float = 0.2, max_positions: int = 256,
             batch_size: int = 32, exclude: Sequence[str] = (),
             token_mask: str | None = "auto", storage_format: str = "dense",
             progress: Callable[[str], None] | None = None) -> PruneResult:
    """Zero a fraction of the weights of every Conv/Gemm/MatMul layer and re-fit the rest.

    ``sparsity``: the fraction of all their weights zeroed together, split among layers by one
    threshold on the relative OBS saliency (``allocation="global"``, the default), or of each
    layer's (``"uniform"``), which is the only allocation of ``pattern="N:M"`` (N of every M
    consecutive input channels kept, e.g. ``"2:4"``: the sparsity is 1 − N/M). ``method``:
    ``"obs"`` (least-squares saliency, SparseGPT-style) or ``"magnitude"`` (Zhu & Gupta).
    ``reweight``: re-fit each output row's remaining weights (and the bias) by least squares on
    the calibration Gram;
    ``ridge``: its shrinkage toward the original weights (``"auto"``: 1 for layers with fewer
    than 20 rows per column, else 0). ``steps`` > 1: the cubic schedule, statistics re-collected
    on the partly sparse model between rounds. ``storage_format="sparse"``: weights that are
    smaller that way are saved as ONNX sparse initializers (onnxruntime loads them). Returns a
    :class:`~onnxprune.api.PruneResult` whose ``report`` is a
    :class:`~onnxprune.report.SparsifyReport`; see :mod:`onnxprune.solvers.sparse`.
    """
    start = time.perf_counter()
    nm = parse_pattern(pattern)
    if sparsity is None:
        sparsity = 0.5 if nm is None else 1.0 - nm[0] / nm[1]
    sparsity = options.removed_fraction(sparsity, "--sparsity", "weights")
    if nm is not None and abs(sparsity - (1.0 - nm[0] / nm[1])) > 1e-9:
        raise OptionError(f"--pattern {pattern} sets the sparsity to {1 - nm[0] / nm[1]:g}; "
                          f"leave --sparsity out (got {sparsity:g})")
    options.choice(method, "sparsify method", SPARSE_METHODS)
    if allocation is None:  # an N:M pattern is the same in every layer
        allocation = "uniform" if nm is not None else "global"
    options.choice(allocation, "sparsify --allocation", ALLOCATIONS)
    if nm is not None and (allocation != "uniform" or steps != 1):
        raise OptionError("an N:M pattern is the same in every layer and reached in one step: "
                          "not with --allocation global or --steps > 1")
    options.choice(storage_format, "--storage", ("dense", "sparse"))
    options.ridge(ridge, words=("auto",))
    options.count(steps, "--steps", 100)
    options.sampling(holdout, max_positions, seed)
    say = progress or (lambda msg: None)
    loaded = load_model(model)
    normalized, (norm,) = run_passes([NormalizePass()], loaded.model)
    if norm.info.get("quantized"):
        raise ModelError("the model's weights are quantized (QDQ); sparsify works on float "
                         "weights: sparsify the float original, then quantize it")
    reference = open_session(normalized)
    cal = load_calibration(calib, normalized, token_mask)
    sel_idx, hold_idx = split_samples(cal.n_samples, holdout, seed)
    unknown = [x for x in exclude if x not in {n.name for n in normalized.graph.node}]
    if unknown:
        raise OptionError(f"--exclude: no node named {unknown[0]!r} (names as 'onnxprune "
                          "inspect' or the report's layers list them)")
    schedule = cubic_schedule(sparsity, steps) if steps > 1 else [sparsity]
    current, layers, skipped = normalized, (), {}
    for t, level in enumerate(schedule):
        if steps > 1:
            say(f"round {t + 1}/{steps}: sparsity {level:.3f}")
        opts = SparsifyOptions(sparsity=level, nm=nm, method=method, reweight=reweight,
                               allocation=allocation, ridge=ridge, seed=seed,
                               max_positions=max_positions, batch_size=batch_size,
                               exclude=frozenset(exclude))
        current, results = run_passes([SparsifyPass(cal, sel_idx, opts, say)], current)
        layers, skipped = tuple(results[0].info["layers"]), results[0].info["skipped"]
    out = run_passes([CleanupPass()], current)[0]
    say("verifying the sparse model")
    check_structure(out)
    fid = fidelity(reference, out, cal, hold_idx, batch_size)
    if storage_format == "sparse":
        out = storage.to_sparse_initializers(out)
    report = SparsifyReport(
        method=method, pattern=pattern if nm is not None else "unstructured",
        sparsity=sparsity, allocation=allocation, reweight=bool(reweight), steps=int(steps),
        seed=int(seed), layers=layers, skipped=skipped, params=count_params(normalized),
        nonzeros_before=storage.nonzeros(normalized), nonzeros_after=storage.nonzeros(out),
        size_before=storage.sizes(normalized), size_after=storage.sizes(out),
        seconds=round(time.perf_counter() - start, 3), calib_samples=len(sel_idx),
        holdout_samples=len(hold_idx), fidelity=fid, storage=storage_format,
        token_mask=cal.token_mask, schedule=tuple(schedule))
    return PruneResult(model=out, report=report,
                       external_data=loaded.external_data and storage_format == "dense",
                       sources=run_sources(loaded.path, loaded.data_files, calib),
                       weights_dir=weights.base_dir())


@dataclass(frozen=True)
class CompareReport:
    """Small-dense against large-sparse at an equal number of non-zero weights."""

    nonzeros_target: float
    rows: tuple[dict, ...]  # original, small-dense (structured prune), large-sparse (sparsify)
    sparsity: float  # the sparsity that gave the large-sparse model the dense one's non-zeros
    seconds: float

    def to_dict(self) -> dict:
        return {"nonzeros_target": self.nonzeros_target, "sparsity": self.sparsity,
                "rows": [dict(r) for r in self.rows], "seconds": self.seconds}

    def to_text(self) -> str:
        head = ("model", "params", "nonzeros", "worst cosine", "top-1", "MB", "MB gzip",
                "MB sparse", "latency ms", "× original")
        rows = []
        for r in self.rows:
            top1 = "-" if r["top1_agreement"] is None else f"{r['top1_agreement']:.3f}"
            rows.append((r["model"], str(r["params"]), str(r["nonzeros"]),
                         f"{r['worst_cosine']:.4f}", top1,
                         f"{r['dense_bytes'] / 1e6:.2f}", f"{r['gzip_bytes'] / 1e6:.2f}",
                         f"{r['sparse_bytes'] / 1e6:.2f}", f"{r['latency_ms']:.3f}",
                         f"{r['latency_ratio']:.2f}"))
        width = [max(len(x[c]) for x in [head] + rows) for c in range(len(head))]
        line = lambda r: "  ".join(v.ljust(w) if c == 0 else v.rjust(w)  # noqa: E731
                                   for c, (v, w) in enumerate(zip(r, width)))
        return "\n".join([line(head), line(tuple("-" * w for w in width))]
                         + [line(r) for r in rows])


def matching_sparsity(model: onnx.ModelProto, nonzeros: int) -> float:
    """The sparsity of the sparsifiable layers' weights (as a whole) that leaves ``model`` with
    ``nonzeros`` non-zero parameters, in [0, 0.99] (the other parameters stay as they are;
    weights that are zero already count as removed first)."""
    graph = Graph(model)
    sites, _ = find_layers(graph)
    layer_weights = [graph.const(graph.node(s.node).input[1]) for s in sites]
    size = sum(int(w.size) for w in layer_weights)
    if not size:
        return 0.0
    others = storage.nonzeros(model) - sum(int(np.count_nonzero(w)) for w in layer_weights)
    return min(max(1.0 - (nonzeros - others) / size, 0.0), 0.99)


@weights.scoped
def compare(model: ModelSource, calib: CalibSource, *, nonzeros: float,
            method: str = "obs", allocation: str = "global", reweight: bool = True,
            seed: int = 0, holdout: float = 0.2, max_positions: int = 256,
            token_mask: str | None = "auto", repeats: int = 30,
            progress: Callable[[str], None] | None = None
            ) -> tuple[CompareReport, PruneResult, PruneResult]:
    """At an equal number of non-zero parameters, the small-dense model (channel pruning to
    ``target_params=nonzeros``) and the large-sparse one (``sparsify`` at the sparsity that leaves
    it the dense model's non-zeros), side by side: held-out fidelity, parameters, non-zeros,
    file sizes and onnxruntime latency (interleaved). Returns the report and both results."""
    start = time.perf_counter()
    options.nonzeros(nonzeros)
    say = progress or (lambda msg: None)
    common = dict(seed=seed, holdout=holdout, max_positions=max_positions,
                  token_mask=token_mask, reweight=reweight)
    say(f"small-dense: channel pruning to {nonzeros:g} of the parameters")
    dense = prune(model, calib, target_params=nonzeros, progress=say, **common)
    original = run_passes([NormalizePass()], load_model(model).model)[0]
    nz_dense = storage.nonzeros(dense.model)
    level = matching_sparsity(original, nz_dense)
    say(f"large-sparse: sparsify to {level:.3f} ({allocation})")
    sparse = sparsify(model, calib, sparsity=level, method=method, allocation=allocation,
                      progress=say, **common)
    sr = sparse.report
    if abs(sr.nonzeros_after - nz_dense) > 0.01 * nz_dense:
        say(f"warning: the large-sparse model keeps {sr.nonzeros_after} non-zeros, the "
            f"small-dense one {nz_dense}: the layers onnxprune does not sparsify (depthwise "
            "convolutions, normalisations, biases) hold more than the target")
    cal = load_calibration(calib, original, token_mask)
    _, hold = split_samples(cal.n_samples, holdout, seed)
    say("measuring latency (interleaved)")
    lat = latencies([original, dense.model, sparse.model], sample_feed(cal, hold), repeats)
    floating = {o.name for o in original.graph.output
                if o.type.tensor_type.elem_type in _FLOAT_TYPES}
    has_top1 = any(f.top1_agreement is not None for f in dense.report.fidelity.values())
    # (model, parameters, non-zeros, sizes, held-out fidelity); sparsify measured the original
    # and the sparse model already
    models = (("original", count_params(original), sr.nonzeros_before, sr.size_before, None),
              ("small-dense", dense.report.params_after, nz_dense, storage.sizes(dense.model),
               dense.report.fidelity),
              ("large-sparse", count_params(sparse.model), sr.nonzeros_after, sr.size_after,
               sr.fidelity))
    rows = []
    for i, (name, params, nz, sizes, fid) in enumerate(models):
        if fid is None:  # the original against itself
            worst, top1 = 1.0, 1.0 if has_top1 else None
        else:
            worst = worst_cosine(fid, floating)
            top1 = next((f.top1_agreement for f in fid.values()
                         if f.top1_agreement is not None), None)
        rows.append({"model": name, "params": params, "nonzeros": nz, "worst_cosine": worst,
                     "top1_agreement": top1, **sizes, "latency_ms": lat[i],
                     "latency_ratio": lat[i] / lat[0]})
    report = CompareReport(nonzeros_target=float(nonzeros), rows=tuple(rows), sparsity=level,
                           seconds=round(time.perf_counter() - start, 3))
    return report, dense, sparse
