"""Calibration samples from a folder of images (``--calib-images``; Pillow, optional extra).

Every image file of the folder (sorted by name; not recursive) is decoded, converted to RGB (or
grey for a one-channel input), resized so that its shorter side is the target size's, centre
cropped to ``H × W``, scaled to [0, 1], normalised per channel as ``(x − mean) / std`` and laid
out NCHW float32 — the usual preprocessing of image classifiers and detectors exported to ONNX.
The size and the channel count default to the model input's static shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx

from onnxprune.errors import CalibrationError, OptionError

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def image_files(directory: str | Path) -> list[Path]:
    d = Path(directory)
    if not d.is_dir():
        raise CalibrationError(f"image folder '{d}' does not exist or is not a folder")
    files = sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS)
    if len(files) < 2:
        raise CalibrationError(f"image folder '{d}' holds {len(files)} image(s) "
                               f"({', '.join(EXTENSIONS)}); give at least 2 (a few hundred is "
                               "typical)")
    return files


def _input_geometry(model: onnx.ModelProto) -> tuple[str, int | None, int | None, int | None]:
    """(name, channels, H, W) of the model's single image input (None where not static)."""
    from onnxprune.modelio import model_inputs
    specs = model_inputs(model)
    if len(specs) != 1 or len(specs[0].shape) != 4:
        raise OptionError("--calib-images needs a model with one NCHW image input; this one has "
                          f"{', '.join(f'{s.name} {s.shape}' for s in specs)}")
    if specs[0].dtype != np.float32:
        raise OptionError(f"--calib-images makes float32 samples; the model input "
                          f"'{specs[0].name}' is {specs[0].dtype}")
    dims = [d if isinstance(d, int) and d > 0 else None for d in specs[0].shape[1:]]
    return specs[0].name, dims[0], dims[1], dims[2]


def model_header(path: str | Path) -> onnx.ModelProto:
    """The model without its weights (enough for its inputs); a bad file is a one-line error."""
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - let the loader say what is wrong
        from onnxprune.modelio import load_model
        return load_model(path).model


def load_images(directory: str | Path, model: onnx.ModelProto,
                size: Sequence[int] | None = None, mean: Sequence[float] = (0.0,),
                std: Sequence[float] = (1.0,)) -> dict[str, np.ndarray]:
    """``{input name: (N, C, H, W) float32}`` from the images of ``directory`` (module
    docstring). ``mean``/``std``: one value, or one per channel, on the [0, 1] scale."""
    try:
        from PIL import Image
    except ImportError:
        raise OptionError("--calib-images needs Pillow: pip install 'onnxprune[images]'"
                          ) from None
    name, channels, h, w = _input_geometry(model)
    if size is not None:
        h, w = int(size[0]), int(size[1])
    if h is None or w is None:
        raise OptionError("the model's input size is not static; give --size H W")
    channels = channels or 3
    if channels not in (1, 3):
        raise OptionError(f"--calib-images makes 1- or 3-channel samples; the model input has "
                          f"{channels} channels")
    mean_a, std_a = (np.asarray(v, dtype=np.float32).reshape(-1) for v in (mean, std))
    for flag, v in (("--mean", mean_a), ("--std", std_a)):
        if len(v) not in (1, channels) or not np.all(np.isfinite(v)):
            raise OptionError(f"{flag} takes 1 or {channels} finite values, got {v.tolist()}")
    if np.any(std_a <= 0):
        raise OptionError(f"--std must be positive, got {std_a.tolist()}")
    arrays = []
    for path in image_files(directory):
        try:
            with Image.open(path) as im:
                im = im.convert("L" if channels == 1 else "RGB")
                scale = max(h / im.height, w / im.width)
                rw, rh = max(w, round(im.width * scale)), max(h, round(im.height * scale))
                im = im.resize((rw, rh), Image.BILINEAR)
                left, top = (rw - w) // 2, (rh - h) // 2
                im = im.crop((left, top, left + w, top + h))
                a = np.asarray(im, dtype=np.float32) / 255.0
        except (OSError, ValueError) as exc:
            raise CalibrationError(f"image '{path}' cannot be read ({type(exc).__name__}); "
                                   "remove it or convert it") from None
        a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
        arrays.append((a - mean_a[:, None, None]) / std_a[:, None, None])
    return {name: np.stack(arrays).astype(np.float32)}
