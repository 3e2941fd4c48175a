#!/usr/bin/env python
"""Benchmark onnxprune on the digits reference models (models/, see models/README.md).

For every model: test accuracy, parameter count, MACs and onnxruntime latency of the original;
then for every method x reweight (with / without the least-squares re-fit) x ratio x seed: prune
in memory, and measure the pruned model's test accuracy (onnxruntime, CPUExecutionProvider),
params / MACs kept, pass time (``report.seconds``), held-out fidelity of the main output
(``report.fidelity``) and batch-1 latency of the pruned model measured side by side with the
original (interleaved runs, medians, ``intra_op_num_threads=1``).

Writes ``<out-prefix>.json`` (every row + metadata) and ``<out-prefix>.md`` (tables). Both are
rewritten after every row, so an interrupted run leaves partial results (``"complete": false``
in the JSON metadata, a "PARTIAL" banner in the markdown).

The markdown opens with verdicts computed from the rows: (1) at ratios 0.85 / 0.93, does a
sequential variant (``seq`` / ``asym``) beat one-shot ``inchange``; (5) accuracy vs MACs — which
method (± re-fit) is best per model and ratio, and how often the re-fit helps. The per-model
tables give the MACs kept at each ratio and mark the best cell of each row in bold.

    python benchmarks/run_digits.py                 # full benchmark (~7 min on 2 idle cores)
    python benchmarks/run_digits.py --quick         # resnet_legacy + mlp_skl at ratio 0.5

Budgets, channel rounding, gradual pruning and sub-graph calibration are benchmarked by
``benchmarks/run_digits_budgets.py``, which reuses the helpers below.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

import onnxprune
from common import cpu_snapshot, other_cpu_load, session

ROOT = Path(__file__).resolve().parent.parent
MODELS_DIR = ROOT / "models"

ALL_MODELS = ["resnet_legacy", "resnet_dynamo", "mobilenet_legacy", "mobilenet_dynamo",
              "vgg_legacy", "vgg_dynamo", "inception_legacy", "inception_dynamo", "mlp_skl"]
# one-shot LayerInChange, the sequential variants, then the baselines
ALL_METHODS = ["inchange", "seq", "asym", "sampling", "weight-norm", "act-norm", "random"]
SEQUENTIAL = ("seq", "asym")
HIGH_RATIOS = (0.85, 0.93)  # item 1 of the verdicts
DEFAULT_RATIOS = [0.25, 0.5, 0.75, 0.85, 0.93]
QUICK_MODELS = ["resnet_legacy", "mlp_skl"]
QUICK_RATIOS = [0.5]
REWEIGHTS = (True, False)
CHANCE = 0.20    # accuracies below this are treated as near chance in the markdown verdicts
NOTABLE = 0.05   # "worse than random" gaps listed in the table (fraction of test samples)


# -- helpers ---------------------------------------------------------------------------------------

def combo_label(method: str, reweight: bool) -> str:
    return f"{method}+LS" if reweight else method


def csv_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def accuracy(sess: ort.InferenceSession, x: np.ndarray, y: np.ndarray, output: str) -> float:
    out = sess.run([output], {"input": x})[0]
    return float(np.mean(np.argmax(out, axis=1) == y))


def latency_interleaved(sessions: list[ort.InferenceSession], x: np.ndarray, output: str,
                        iters: int, warmup: int) -> list[float]:
    """Median batch-1 latency (µs) of each session, all run interleaved in one loop.

    The order within an iteration alternates (forward on even iterations, reversed on odd ones)
    so no session systematically benefits from its position."""
    samples = [x[i % len(x)][None] for i in range(max(iters, warmup))]
    for i in range(warmup):
        for s in sessions:
            s.run([output], {"input": samples[i]})
    times: list[list[float]] = [[] for _ in sessions]
    for i in range(iters):
        order = range(len(sessions)) if i % 2 == 0 else reversed(range(len(sessions)))
        for k in order:
            feed = {"input": samples[i]}
            t0 = time.perf_counter_ns()
            sessions[k].run([output], feed)
            times[k].append((time.perf_counter_ns() - t0) / 1e3)
    return [statistics.median(t) for t in times]


def latency_side_by_side(orig: ort.InferenceSession, pruned: ort.InferenceSession | None,
                         x: np.ndarray, output: str, iters: int, warmup: int) -> dict:
    """Median batch-1 latency (µs) of ``orig`` and ``pruned`` (interleaved runs)."""
    med = latency_interleaved([orig] if pruned is None else [orig, pruned], x, output, iters,
                              warmup)
    res = {"orig_us": med[0]}
    if pruned is not None:
        res["pruned_us"] = med[1]
        res["ratio"] = med[1] / med[0]
    return res


def git_info() -> dict:
    def run(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except Exception:  # noqa: BLE001
            return ""
    diff = run("diff", "HEAD", "--", "onnxprune", "passes")
    return {"commit": run("rev-parse", "HEAD"),
            "dirty_paths": [l[3:] for l in run("status", "--porcelain").splitlines()],
            # the uncommitted changes to the code under test, as imported by this run
            "code_diff_vs_head": diff,
            "code_diff_sha256": hashlib.sha256(diff.encode()).hexdigest() if diff else None}


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def code_fingerprint() -> str:
    """sha256 over the onnxprune sources (package + passes) as they are on disk."""
    h = hashlib.sha256()
    for sub in ("onnxprune", "passes"):
        for f in sorted((ROOT / sub).rglob("*.py")):
            h.update(str(f.relative_to(ROOT)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def input_files(entries: dict, names: list[str]) -> list[str]:
    files = {"digits_test.npz"}
    for n in names:
        files.update(entries[n]["files"])
        files.add(entries[n]["calib_file"])
    return sorted(files)


def loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def new_metadata(cmd_argv: list[str]) -> dict:
    """Provenance of a run: command, start time, versions, machine, environment, code."""
    return {
        "command": "python " + " ".join(shlex.quote(a) for a in cmd_argv),
        "cwd": str(Path.cwd()),
        "started": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "finished": None,
        "total_seconds": None,
        "complete": False,
        "versions": {"python": platform.python_version(), "onnx": onnx.__version__,
                     "onnxruntime": ort.__version__, "numpy": np.__version__,
                     "onnxprune": onnxprune.__version__},
        "machine": {"cpu_count": os.cpu_count(),
                    "affinity_cores": len(os.sched_getaffinity(0))
                    if hasattr(os, "sched_getaffinity") else None,
                    "platform": platform.platform(), "processor": platform.machine()},
        "env": {k: os.environ.get(k) for k in ("ONNXPRUNE_RIDGE", "OMP_NUM_THREADS",
                                               "OPENBLAS_NUM_THREADS")},
        "git": git_info(),
        "code_sha256_at_start": code_fingerprint(),
        "loadavg_1min_at_start": loadavg(),
    }


def snapshot_inputs(meta: dict, entries: dict, names: list[str]) -> Path:
    """Copy the models, calibration and test files to a private directory (a concurrent rebuild
    of models/ cannot change them mid-run) and record their sha256 in ``meta``."""
    snap = Path(tempfile.mkdtemp(prefix="onnxprune-bench-"))
    files = input_files(entries, names)
    for f in files:
        shutil.copy2(MODELS_DIR / f, snap / f)
    meta["inputs_sha256"] = {f"models/{f}": sha256(snap / f) for f in files}
    return snap


def finish_metadata(meta: dict, snap: Path, t_start: float) -> None:
    """Remove the snapshot; record whether code or inputs changed during the run, end time."""
    shutil.rmtree(snap, ignore_errors=True)
    meta["code_sha256_at_end"] = code_fingerprint()
    meta["code_changed_during_run"] = meta["code_sha256_at_end"] != meta["code_sha256_at_start"]
    changed = []
    for rel, digest in meta["inputs_sha256"].items():
        cur = ROOT / rel
        if not cur.exists() or sha256(cur) != digest:
            changed.append(rel)
    meta["models_dir_changed_during_run"] = changed
    meta["loadavg_1min_at_end"] = loadavg()
    meta["finished"] = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    meta["total_seconds"] = round(time.perf_counter() - t_start, 1)
    meta["complete"] = True


# -- markdown --------------------------------------------------------------------------------------

def fmt_pct(v: float | None, digits: int = 1) -> str:
    return "—" if v is None else f"{100 * v:.{digits}f}"


def agg(rows: list[dict], key: str) -> tuple[float | None, float | None, int, int]:
    """(mean, std, n_ok, n_err) of ``key`` over rows (several seeds)."""
    vals = [r[key] for r in rows if r.get("error") is None and r.get(key) is not None]
    n_err = sum(1 for r in rows if r.get("error") is not None)
    if not vals:
        return None, None, 0, n_err
    return (float(np.mean(vals)), float(np.std(vals)) if len(vals) > 1 else None, len(vals),
            n_err)


def acc_cell(rows: list[dict]) -> str:
    if not rows:
        return ""
    mean, std, n, n_err = agg(rows, "accuracy")
    if mean is None:
        return "ERR" if n_err else ""
    s = fmt_pct(mean)
    if std is not None:
        s += f" ±{100 * std:.1f}"
    if n_err:
        s += f" ({n_err} ERR)"
    return s


def bold_best(cells: list[str], values: list[float | None], tol: float = 1e-9) -> list[str]:
    """Bold the cells whose value equals the row's best (ties: all of them)."""
    vals = [v for v in values if v is not None]
    if not vals:
        return cells
    best = max(vals)
    return [f"**{c}**" if v is not None and v >= best - tol else c
            for c, v in zip(cells, values)]


def macs_fraction(r: dict) -> float:
    return r["macs_after"] / r["macs_before"]


def macs_cell(rows: list[dict]) -> str:
    """MACs kept (% of the original) over rows; a range when they differ."""
    fr = [macs_fraction(r) for r in rows if r.get("error") is None and r.get("macs_after")]
    if not fr:
        return "—"
    lo, hi = min(fr), max(fr)
    return f"{100 * lo:.1f}" if hi - lo < 5e-4 else f"{100 * lo:.1f}–{100 * hi:.1f}"


def cnn_models(cfg: dict, models: dict) -> list[str]:
    return [n for n in cfg["models"] if n in models and not n.startswith("mlp")
            and not models[n].get("error")]


def method_verdicts(rows: list[dict], cfg: dict, models: dict, number: bool = True) -> list[str]:
    """Verdict paragraphs for items 1 (sequential vs one-shot at high ratios) and 5 (accuracy vs
    MACs), computed from the rows. Empty when the rows cannot answer them."""
    by_key: dict[tuple, list[dict]] = {}
    for r in rows:
        by_key.setdefault((r["model"], r["ratio"], r["method"], r["reweight"]), []).append(r)

    def acc(name: str, ratio: float, method: str, rw: bool) -> float | None:
        return agg(by_key.get((name, ratio, method, rw), []), "accuracy")[0]

    cnns = cnn_models(cfg, models)
    L: list[str] = ["## Verdicts", "",
                    "Computed by the script from the rows of this run (test accuracy, %).", ""]
    n1, n5 = ("1. ", "5. ") if number else ("", "")
    # -- item 1
    seqs = [m for m in SEQUENTIAL if m in cfg["methods"]]
    highs = [r for r in HIGH_RATIOS if r in cfg["ratios"]]
    if "inchange" in cfg["methods"] and seqs and highs and cnns:
        parts = []
        for ratio in highs:
            for rw in REWEIGHTS:
                def mean_of(m: str) -> float | None:
                    vals = [acc(n, ratio, m, rw) for n in cnns]
                    return None if any(v is None for v in vals) else float(np.mean(vals))
                base = mean_of("inchange")
                seq_means = {m: mean_of(m) for m in seqs}
                ok = {m: v for m, v in seq_means.items() if v is not None}
                if base is None or not ok:
                    continue
                best = max(ok, key=ok.get)
                wins = {m: sum(1 for n in cnns if (acc(n, ratio, m, rw) or 0) >
                               (acc(n, ratio, "inchange", rw) or 0) + 1e-12) for m in ok}
                verdict = "**YES**" if ok[best] > base + 1e-12 else "**NO**"
                lab = lambda m: combo_label(m, rw)  # noqa: E731
                parts.append(
                    f"ratio {ratio}, {'with' if rw else 'without'} re-fit: "
                    + ", ".join(f"{lab(m)} {fmt_pct(v)}" for m, v in
                                [("inchange", base), *ok.items()])
                    + f" → best sequential ({lab(best)}) beats {lab('inchange')} by "
                    f"{100 * (ok[best] - base):+.1f} points: {verdict}"
                    + (" (all near chance)" if max(base, *ok.values()) < CHANCE else "")
                    + "; per model, " + ", ".join(f"{lab(m)} > {lab('inchange')} on {w}/{len(cnns)}"
                                                  for m, w in wins.items()))
        n_err = sum(1 for r in rows if r.get("error") is not None)
        missing = [(n, ratio, m, rw) for n in cfg["models"] for ratio in cfg["ratios"]
                   for m in cfg["methods"] for rw in REWEIGHTS
                   if not any(r.get("error") is None for r in by_key.get((n, ratio, m, rw), []))]
        L.append(f"**{n1}Sequential vs one-shot at high ratios** (mean over the {len(cnns)} CNN "
                 "models): " + "; ".join(parts) + ".")
        L.append("")
        L.append(f"All methods on every model: {len(rows)} rows ({len(cfg['models'])} models × "
                 f"{len(cfg['methods'])} methods × re-fit on/off × {len(cfg['ratios'])} ratios × "
                 f"{len(cfg['seeds'])} seed(s)), {n_err} error(s); combinations without a "
                 "successful row: " + (", ".join(f"{n} {combo_label(m, rw)} {ratio}"
                                                 for n, ratio, m, rw in missing) or "none") + ".")
        L.append("")
    # -- item 5
    combos = [(m, rw) for m in cfg["methods"] for rw in REWEIGHTS]
    best_count: dict[str, int] = {}
    n_cells = 0
    for n in cfg["models"]:
        for ratio in cfg["ratios"]:
            vals = {combo_label(m, rw): acc(n, ratio, m, rw) for m, rw in combos}
            vals = {k: v for k, v in vals.items() if v is not None}
            if not vals:
                continue
            n_cells += 1
            top = max(vals.values())
            for k, v in vals.items():
                if v >= top - 1e-9:
                    best_count[k] = best_count.get(k, 0) + 1
    if n_cells:
        ls_better = ls_worse = ls_tie = 0
        for n in cfg["models"]:
            for ratio in cfg["ratios"]:
                for m in cfg["methods"]:
                    a, b = acc(n, ratio, m, True), acc(n, ratio, m, False)
                    if a is None or b is None:
                        continue
                    if a > b + 1e-9:
                        ls_better += 1
                    elif a < b - 1e-9:
                        ls_worse += 1
                    else:
                        ls_tie += 1
        curve = []
        for ratio in cfg["ratios"]:
            fr = [macs_fraction(r) for r in rows if r["ratio"] == ratio and r.get("error") is None
                  and r["model"] in cnns]
            means = {combo_label(m, rw): [acc(n, ratio, m, rw) for n in cnns] for m, rw in combos}
            means = {k: float(np.mean(v)) for k, v in means.items()
                     if v and all(x is not None for x in v)}
            if fr and means:
                k = max(means, key=means.get)
                span = (f"{100 * min(fr):.1f}" if max(fr) - min(fr) < 5e-4 else
                        f"{100 * min(fr):.1f}–{100 * max(fr):.1f}")
                curve.append(f"ratio {ratio} (MACs kept {span} %): {k} {fmt_pct(means[k])}")
        L.append(f"**{n5}Accuracy vs MACs** (per-model tables below, best cell per row in bold). "
                 f"Best combination per (model, ratio) cell, ties counted for each: "
                 + ", ".join(f"{k} {v}" for k, v in sorted(best_count.items(),
                                                           key=lambda kv: -kv[1]))
                 + f" (of {n_cells} cells). Best mean over the CNNs per ratio: "
                 + "; ".join(curve) + f". Re-fit vs none, same method, model and ratio: +LS "
                 f"better in {ls_better}, worse in {ls_worse}, equal in {ls_tie} cases.")
        L.append("")
    return L


def header_lines(title: str, meta: dict, rows: list[dict]) -> list[str]:
    """Title, provenance (command, dates, versions, sources, inputs) and contention check."""
    L: list[str] = []
    L.append(f"# {title}")
    L.append("")
    if not meta.get("complete"):
        L.append("**PARTIAL RESULTS — the run is still in progress or was interrupted.**")
        L.append("")
    L.append(f"Produced by: `{meta['command']}`  ")
    L.append(f"Started: {meta['started']}  ")
    if meta.get("finished"):
        L.append(f"Finished: {meta['finished']} (total {meta['total_seconds']:.0f} s)  ")
    v = meta["versions"]
    L.append(f"Versions: python {v['python']}, onnx {v['onnx']}, onnxruntime {v['onnxruntime']}, "
             f"numpy {v['numpy']}, onnxprune {v['onnxprune']}; {meta['machine']['cpu_count']} "
             f"CPU cores ({meta['machine']['platform']}); git {meta['git']['commit'][:10]}"
             + (f"; ONNXPRUNE_RIDGE={meta['env']['ONNXPRUNE_RIDGE']}"
                if meta["env"].get("ONNXPRUNE_RIDGE") is not None else ""))
    L.append("")
    L.append(f"onnxprune sources (onnxprune/ + passes/, sha256 of the files as imported): "
             f"`{meta['code_sha256_at_start'][:16]}`; git HEAD `{meta['git']['commit'][:10]}` "
             + (f"plus uncommitted changes to onnxprune/ or passes/ (diff stored in the JSON, "
                f"sha256 `{meta['git']['code_diff_sha256'][:16]}`). "
                if meta['git'].get('code_diff_sha256') else "with a clean onnxprune/ + passes/. ")
             + 
             "Input files were copied to a private snapshot at start (sha256 in the JSON).")
    if meta.get("code_changed_during_run"):
        L.append("")
        L.append("**Warning: the onnxprune sources on disk changed during the run; the results are "
                 "for the version imported at start (fingerprint above).**")
    if meta.get("models_dir_changed_during_run"):
        L.append("")
        L.append("**Warning: these files in models/ changed during the run (results are for the "
                 "snapshot taken at start): " + ", ".join(meta["models_dir_changed_during_run"])
                 + ".**")
    others = [(r["other_cpu"], r["wall_seconds"]) for r in rows
              if r.get("other_cpu") is not None and r.get("wall_seconds")]
    loads = [r["loadavg_1min"] for r in rows if r.get("loadavg_1min") is not None]
    if others and loads:
        mean_other = sum(o * w for o, w in others) / max(sum(w for _, w in others), 1e-9)
        long = [o for o, w in others if w >= 0.2]  # /proc/stat ticks are 10 ms: short rows are noise
        busy = sum(1 for o in long if o > 0.25)
        L.append("")
        L.append(f"Contention check (other processes' CPU use while the rows ran, from /proc/stat): "
                 f"{mean_other:.2f} cores on average; {busy} of {len(long)} rows lasting ≥ 0.2 s "
                 f"had > 0.25 core of other work"
                 + ("; **the latency and pass-time figures of those rows are affected**"
                    if busy else "") + f". 1-min load average: median "
                 f"{statistics.median(loads):.2f}, max {max(loads):.2f} "
                 f"({meta['machine']['cpu_count']} cores; includes this benchmark).")
    L.append("")
    return L


def build_markdown(meta: dict, models: dict, rows: list[dict], cfg: dict) -> str:
    combos = [(m, rw) for m in cfg["methods"] for rw in REWEIGHTS]
    labels = [combo_label(m, rw) for m, rw in combos]
    ratios = cfg["ratios"]
    L = header_lines("onnxprune digits benchmark", meta, rows)
    L.extend(method_verdicts(rows, cfg, models))
    L.append(f"Methods: {', '.join(cfg['methods'])}; ratios (fraction of channels removed per "
             f"prunable group): {', '.join(str(r) for r in ratios)}; seeds: "
             f"{', '.join(str(s) for s in cfg['seeds'])}. \"+LS\" = `reweight=True` (least-squares "
             "re-fit of the consumer layer); no suffix = `reweight=False` (kept weights sliced). "
             "Accuracy: % on the 300-sample test split (`models/digits_test.npz`), onnxruntime "
             "CPUExecutionProvider, argmax of `logits` (CNNs) / `probabilities` (MLP). "
             "With several seeds a cell is mean ±std over seeds.")
    L.append("")
    L.append(f"Latency: batch 1, `intra_op_num_threads=1`, {cfg['latency_iters']} interleaved "
             f"iterations of original and pruned sessions after {cfg['warmup']} warm-up runs, "
             "medians; ratio = pruned / original. Params = all float initializers (includes BN "
             "running statistics), MACs per sample (both from the onnxprune report). Pass s = "
             "`report.seconds` (whole `prune()` call: load, calibrate, select, rewrite, verify, "
             "fidelity).")
    L.append("")

    by_key: dict[tuple, list[dict]] = {}
    for r in rows:
        by_key.setdefault((r["model"], r["ratio"], r["method"], r["reweight"]), []).append(r)

    for name in cfg["models"]:
        info = models.get(name)
        if info is None:
            continue
        L.append(f"## {name}")
        L.append("")
        if info.get("error"):
            L.append(f"Original model could not be evaluated: `{info['error']}`")
            L.append("")
            continue
        params = f"{info['params']:,}" if "params" in info else "—"
        macs = f"{info['macs']:,}" if "macs" in info else "—"
        L.append(f"Original: test accuracy {fmt_pct(info['accuracy'], 2)}%, params "
                 f"{params}, MACs {macs} (from the first successful report), batch-1 latency "
                 f"{info['latency_us']:.1f} µs (alone).")
        L.append("")
        L.append("Test accuracy (%) vs MACs kept (% of the original, per sample; the same for "
                 "every method at a uniform ratio); **bold** = best cell of the row:")
        L.append("")
        L.append("| ratio | MACs kept % | " + " | ".join(labels) + " |")
        L.append("| ---: | ---: | " + " | ".join("---:" for _ in labels) + " |")
        for ratio in ratios:
            cell_rows = [by_key.get((name, ratio, m, rw), []) for m, rw in combos]
            cells = bold_best([acc_cell(rs) for rs in cell_rows],
                              [agg(rs, "accuracy")[0] for rs in cell_rows])
            if any(cells):
                L.append(f"| {ratio} | {macs_cell([r for rs in cell_rows for r in rs])} | "
                         + " | ".join(cells) + " |")
        L.append("")
        if "inchange" in cfg["methods"]:
            L.append("inchange+LS: size, speed, held-out fidelity of the main output "
                     f"(`{info['output']}`):")
            L.append("")
            L.append("| ratio | params kept % | MACs kept % | pass s | latency orig µs | "
                     "latency pruned µs | latency ratio | top1 agreement | cosine |")
            L.append("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
            for ratio in ratios:
                rs = by_key.get((name, ratio, "inchange", True), [])
                if not rs:
                    continue
                ok = [r for r in rs if r.get("error") is None]
                if not ok:
                    L.append(f"| {ratio} | ERR | | | | | | | |")
                    continue
                def m(key: str) -> float:
                    return float(np.mean([r[key] for r in ok]))
                L.append(f"| {ratio} | {100 * m('params_after') / m('params_before'):.1f} | "
                         f"{100 * m('macs_after') / m('macs_before'):.1f} | {m('pass_seconds'):.2f} | "
                         f"{m('latency_orig_us'):.1f} | {m('latency_pruned_us'):.1f} | "
                         f"{m('latency_ratio'):.3f} | {fmt_pct(m('fid_top1_agreement'))} | "
                         f"{m('fid_cosine'):.4f} |")
            L.append("")

    # summary over CNNs
    cnns = cnn_models(cfg, models)
    L.append("## Summary")
    L.append("")
    L.append(f"Mean test accuracy (%) over the CNN models ({', '.join(cnns) or 'none'}); "
             "a cell marked * averages fewer models (errors or missing rows); **bold** = best "
             "of the row.")
    L.append("")
    L.append("| ratio | " + " | ".join(labels) + " |")
    L.append("| ---: | " + " | ".join("---:" for _ in labels) + " |")
    for ratio in ratios:
        cells, means = [], []
        for m, rw in combos:
            per_model = []
            for n in cnns:
                mean, _, _, _ = agg(by_key.get((n, ratio, m, rw), []), "accuracy")
                if mean is not None:
                    per_model.append(mean)
            if not per_model:
                cells.append("")
                means.append(None)
            else:
                means.append(float(np.mean(per_model)))
                cells.append(fmt_pct(means[-1]) + ("*" if len(per_model) < len(cnns) else ""))
        if any(cells):
            L.append(f"| {ratio} | " + " | ".join(bold_best(cells, means)) + " |")
    L.append("")

    L.append("Mean pass time (`report.seconds`, s) over the CNN models, per ratio (other jobs "
             "on the machine inflate these; see the contention check):")
    L.append("")
    L.append("| ratio | " + " | ".join(labels) + " |")
    L.append("| ---: | " + " | ".join("---:" for _ in labels) + " |")
    for ratio in ratios:
        cells = []
        for m, rw in combos:
            ts = [r["pass_seconds"] for n in cnns for r in by_key.get((n, ratio, m, rw), [])
                  if r.get("error") is None]
            cells.append(f"{np.mean(ts):.2f}" if ts else "")
        if any(cells):
            L.append(f"| {ratio} | " + " | ".join(cells) + " |")
    L.append("")

    if "inchange" in cfg["methods"] and "weight-norm" in cfg["methods"]:
        for ratio in (0.85, 0.93):
            if ratio not in ratios:
                continue
            parts = []
            for n in cfg["models"]:
                a, _, _, _ = agg(by_key.get((n, ratio, "inchange", True), []), "accuracy")
                b, _, _, _ = agg(by_key.get((n, ratio, "weight-norm", True), []), "accuracy")
                if a is None or b is None:
                    continue
                verdict = "yes" if a > b + 1e-12 else ("tie" if abs(a - b) <= 1e-12 else "NO")
                note = ", both near chance" if max(a, b) < CHANCE else ""
                parts.append(f"{n} {verdict} ({fmt_pct(a)} vs {fmt_pct(b)}{note})")
            if parts:
                L.append(f"**Ratio {ratio}: does inchange+LS beat weight-norm+LS (test accuracy)?** "
                         + "; ".join(parts) + ".")
                L.append("")
        L.append(f"\"Near chance\": both below {100 * CHANCE:.0f}% (a model that predicts one class "
                 "scores 8.3–12.7% on this test split), so the comparison is noise.")
        L.append("")

    # anomalies
    L.append("## Anomalies and errors")
    L.append("")
    anomalies: list[str] = []
    for r in rows:
        if r.get("error") is not None:
            anomalies.append(f"ERROR {r['model']} {combo_label(r['method'], r['reweight'])} "
                             f"ratio {r['ratio']} seed {r['seed']}: `{r['error']}`")
    worse: list[tuple] = []
    if "random" in cfg["methods"]:
        for name in cfg["models"]:
            for ratio in ratios:
                for rw in REWEIGHTS:
                    rnd, _, _, _ = agg(by_key.get((name, ratio, "random", rw), []), "accuracy")
                    if rnd is None:
                        continue
                    for m in cfg["methods"]:
                        if m == "random":
                            continue
                        a, _, _, _ = agg(by_key.get((name, ratio, m, rw), []), "accuracy")
                        if a is not None and a < rnd - 1e-12:
                            worse.append((rnd - a, name, ratio, combo_label(m, rw), a,
                                          combo_label("random", rw), rnd))
    n_err = len(anomalies)
    L.append(f"**Errors:** {n_err} of {len(rows)} rows." if n_err else
             f"**Errors:** none ({len(rows)} rows).")
    L.append("")
    L.extend(f"* {a}" for a in anomalies)
    if anomalies:
        L.append("")

    if worse:
        worse.sort(key=lambda w: (-w[0], w[1], w[2]))
        big = [w for w in worse if w[0] >= NOTABLE and w[6] >= CHANCE]
        L.append(f"**Worse than random** (same ratio and re-fit setting; random = "
                 f"{len(cfg['seeds'])} seed(s), so small gaps are noise): {len(worse)} case(s), "
                 f"{len(big)} by ≥ {100 * NOTABLE:.0f} points with random above "
                 f"{100 * CHANCE:.0f}%:")
        L.append("")
        if big:
            L.append("| model | ratio | method | acc % | random acc % | gap (points) |")
            L.append("| --- | ---: | --- | ---: | ---: | ---: |")
            for gap, name, ratio, lab, a, rlab, rnd in big:
                L.append(f"| {name} | {ratio} | {lab} | {fmt_pct(a)} | {fmt_pct(rnd)} "
                         f"({rlab}) | {100 * gap:.1f} |")
            L.append("")
        small = [w for w in worse if w not in big]
        if small:
            L.append("Smaller / near-chance cases: " + "; ".join(
                f"{name} {ratio} {lab} {fmt_pct(a)} < {fmt_pct(rnd)}"
                for _, name, ratio, lab, a, _, rnd in small) + ".")
            L.append("")

    lat_rows = [r for r in rows if r.get("error") is None and r.get("latency_ratio") is not None]
    slow = [r for r in lat_rows if r["latency_ratio"] > 1.0]
    L.append(f"**Latency ratio > 1** (pruned measured slower than the original): {len(slow)} of "
             f"{len(lat_rows)} rows.")
    L.append("")
    if slow:
        groups: dict[tuple, list[dict]] = {}
        for r in slow:
            groups.setdefault((r["model"], r["ratio"]), []).append(r)
        L.append("| model | ratio | rows > 1 / rows | ratios (min–max) | pruned µs vs original µs "
                 "(median over those rows) |")
        L.append("| --- | ---: | ---: | ---: | ---: |")
        for (name, ratio), rs in groups.items():
            total = sum(1 for r in lat_rows if r["model"] == name and r["ratio"] == ratio)
            lr = [r["latency_ratio"] for r in rs]
            L.append(f"| {name} | {ratio} | {len(rs)}/{total} | {min(lr):.3f}–{max(lr):.3f} | "
                     f"{statistics.median(r['latency_pruned_us'] for r in rs):.1f} vs "
                     f"{statistics.median(r['latency_orig_us'] for r in rs):.1f} |")
        L.append("")
    return "\n".join(L)


# -- main ------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(ALL_MODELS),
                   help="comma-separated model names (default: all 9)")
    p.add_argument("--methods", default=",".join(ALL_METHODS),
                   help="comma-separated methods (default: %(default)s)")
    p.add_argument("--ratios", default=",".join(str(r) for r in DEFAULT_RATIOS),
                   help="comma-separated pruning ratios (default: %(default)s)")
    p.add_argument("--seeds", default="0",
                   help="comma-separated seeds; every combination is run once per seed "
                        "(default: %(default)s)")
    p.add_argument("--quick", action="store_true",
                   help=f"only {' + '.join(QUICK_MODELS)} at ratio(s) "
                        f"{','.join(map(str, QUICK_RATIOS))} (overrides --models/--ratios)")
    p.add_argument("--out-prefix", default="benchmarks/results_digits",
                   help="write <prefix>.json and <prefix>.md (default: %(default)s)")
    p.add_argument("--latency-iters", type=int, default=200,
                   help="interleaved timed iterations per latency measurement (default: 200)")
    p.add_argument("--warmup", type=int, default=20, help="warm-up runs per session (default: 20)")
    args = p.parse_args(argv)
    args.models = QUICK_MODELS if args.quick else csv_list(args.models)
    args.ratios = QUICK_RATIOS if args.quick else [float(r) for r in csv_list(args.ratios)]
    args.methods = csv_list(args.methods)
    args.seeds = [int(s) for s in csv_list(args.seeds)]
    manifest = json.loads((MODELS_DIR / "MANIFEST.json").read_text())
    known = {m["name"] for m in manifest["models"]}
    bad = [m for m in args.models if m not in known]
    if bad:
        p.error(f"unknown model(s) {bad}; choose from {sorted(known)}")
    bad = [m for m in args.methods if m not in onnxprune.METHODS]
    if bad:
        p.error(f"unknown method(s) {bad}; choose from {list(onnxprune.METHODS)}")
    args.manifest = manifest
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    out_prefix = Path(args.out_prefix)
    if not out_prefix.is_absolute():
        out_prefix = Path.cwd() / out_prefix
    json_path = out_prefix.with_name(out_prefix.name + ".json")
    md_path = out_prefix.with_name(out_prefix.name + ".md")
    json_path.parent.mkdir(parents=True, exist_ok=True)

    meta = new_metadata(sys.argv if argv is None else [sys.argv[0], *argv])
    cfg = {"models": args.models, "methods": args.methods, "ratios": args.ratios,
           "seeds": args.seeds, "reweight": list(REWEIGHTS),
           "latency_iters": args.latency_iters, "warmup": args.warmup,
           "latency": {"batch": 1, "intra_op_num_threads": 1, "inter_op_num_threads": 1,
                       "provider": "CPUExecutionProvider", "statistic": "median",
                       "interleaved": True}}
    models: dict[str, dict] = {}
    rows: list[dict] = []

    def flush() -> None:
        doc = {"metadata": meta, "config": cfg, "models": models, "rows": rows}
        write_atomic(json_path, json.dumps(doc, indent=1) + "\n")
        write_atomic(md_path, build_markdown(meta, models, rows, cfg))

    # Snapshot the inputs: the models are read from a private copy, so a concurrent rebuild of
    # models/ cannot change them mid-run; the hashes identify exactly what was benchmarked.
    entries = {m["name"]: m for m in args.manifest["models"]}
    snap = snapshot_inputs(meta, entries, args.models)
    test = np.load(snap / "digits_test.npz")
    x_img, y_test = test["x"].astype(np.float32), test["y"]
    n_total = len(args.models) * len(args.ratios) * len(args.methods) * len(REWEIGHTS) * len(args.seeds)
    done = 0
    flush()
    for name in args.models:
        e = entries[name]
        model_path = snap / e["file"]
        calib_path = snap / e["calib_file"]
        output = "logits" if "logits" in e["outputs"] else "probabilities"
        x = x_img.reshape(len(x_img), -1) if len(e["input"]["shape"]) == 2 else x_img
        info: dict = {"file": f"models/{e['file']}", "calib": f"models/{e['calib_file']}",
                      "output": output,
                      "manifest_test_accuracy": e.get("test_accuracy"),
                      "manifest_param_count": e.get("param_count")}
        models[name] = info
        c0 = cpu_snapshot()
        try:
            orig_sess = session(model_path)
            info["accuracy"] = accuracy(orig_sess, x, y_test, output)
            lat0 = latency_side_by_side(orig_sess, None, x, output, args.latency_iters,
                                        args.warmup)
            info["latency_us"] = lat0["orig_us"]
            info["other_cpu"] = other_cpu_load(c0, cpu_snapshot())
        except Exception as exc:  # noqa: BLE001
            info["error"] = f"{type(exc).__name__}: {exc}"
            print(f"[{name}] original failed: {info['error']}", flush=True)
            flush()
            continue
        print(f"[{name}] original acc {info['accuracy']:.4f} latency {info['latency_us']:.1f} us",
              flush=True)
        for ratio in args.ratios:
            for method in args.methods:
                for reweight in REWEIGHTS:
                    for seed in args.seeds:
                        done += 1
                        row: dict = {"model": name, "method": method, "reweight": reweight,
                                     "label": combo_label(method, reweight), "ratio": ratio,
                                     "seed": seed, "error": None}
                        t0 = time.perf_counter()
                        c0 = cpu_snapshot()
                        try:
                            res = onnxprune.prune(str(model_path), str(calib_path), ratio=ratio,
                                                  method=method, reweight=reweight, seed=seed)
                            rep = res.report.to_dict()
                            if "params" not in info:
                                info["params"] = rep["params_before"]
                                info["macs"] = rep["macs_before"]
                            row.update(
                                params_before=rep["params_before"],
                                params_after=rep["params_after"],
                                macs_before=rep["macs_before"], macs_after=rep["macs_after"],
                                pass_seconds=rep["seconds"])
                            main_fid = rep["fidelity"].get(output, {})
                            row["fid_top1_agreement"] = main_fid.get("top1_agreement")
                            row["fid_cosine"] = main_fid.get("cosine")
                            row["fid_rel_l2"] = main_fid.get("rel_l2")
                            row["fidelity"] = rep["fidelity"]
                            row["groups"] = [[g["name"], g["total"], g["kept"]]
                                             for g in rep["groups"] if g["prunable"]]
                            pr_sess = session(res.model)
                            row["accuracy"] = accuracy(pr_sess, x, y_test, output)
                            lat = latency_side_by_side(orig_sess, pr_sess, x, output,
                                                       args.latency_iters, args.warmup)
                            row["latency_orig_us"] = lat["orig_us"]
                            row["latency_pruned_us"] = lat["pruned_us"]
                            row["latency_ratio"] = lat["ratio"]
                            row["loadavg_1min"] = loadavg()
                        except Exception as exc:  # noqa: BLE001 - record and continue
                            row["error"] = f"{type(exc).__name__}: {exc}"
                            row["traceback"] = traceback.format_exc(limit=8)
                        row["wall_seconds"] = round(time.perf_counter() - t0, 3)
                        row["other_cpu"] = other_cpu_load(c0, cpu_snapshot())
                        rows.append(row)
                        if row["error"] is None:
                            print(f"[{done}/{n_total}] {name} r={ratio} {row['label']} s={seed}: "
                                  f"acc {row['accuracy']:.4f} params {row['params_after']} "
                                  f"pass {row['pass_seconds']:.2f}s lat x{row['latency_ratio']:.3f}",
                                  flush=True)
                        else:
                            print(f"[{done}/{n_total}] {name} r={ratio} {row['label']} s={seed}: "
                                  f"ERROR {row['error']}", flush=True)
                        flush()
    finish_metadata(meta, snap, t_start)
    meta["n_rows"] = len(rows)
    meta["n_errors"] = sum(1 for r in rows if r["error"] is not None)
    flush()
    print(f"done in {meta['total_seconds']:.0f} s; {meta['n_errors']} error(s); wrote {json_path} "
          f"and {md_path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
