"""``--calib-images DIR``: a folder of images as calibration data (Pillow). The samples equal the
documented preprocessing done by hand, and pruning from the folder gives the same model as
pruning from the equivalent .npz."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

import onnxprune  # noqa: E402
from onnxprune.images import load_images  # noqa: E402
from helpers import RESNET, serialized  # noqa: E402
from test_cli_errors import expect_cli_error, run_cli  # noqa: E402


@pytest.fixture
def folder(tmp_path):
    """12 grey images of various sizes (from the digits) plus a non-image file."""
    with np.load(RESNET.parent / "digits_calib.npz") as z:
        x = z["input"][:12, 0]
    d = tmp_path / "imgs"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i, img in enumerate(x):
        a = (np.clip(img / 16.0, 0, 1) * 255).astype(np.uint8)
        h, w = int(rng.integers(8, 30)), int(rng.integers(8, 30))
        Image.fromarray(a).resize((w, h), Image.NEAREST).save(d / f"{i:02d}.png")
    (d / "notes.txt").write_text("not an image")
    return d


def _by_hand(path, h, w, mean, std):
    im = Image.open(path).convert("L")
    s = max(h / im.height, w / im.width)
    rw, rh = max(w, round(im.width * s)), max(h, round(im.height * s))
    im = im.resize((rw, rh), Image.BILINEAR)
    left, top = (rw - w) // 2, (rh - h) // 2
    a = np.asarray(im.crop((left, top, left + w, top + h)), dtype=np.float32) / 255.0
    return ((a - mean) / std)[None]


def test_samples_follow_the_documented_preprocessing(folder):
    model = onnx.load(str(RESNET))
    arrays = load_images(folder, model, mean=[0.2], std=[0.5])
    (name, x), = arrays.items()
    assert name == model.graph.input[0].name and x.dtype == np.float32
    assert x.shape == (12, 1, 8, 8)  # the model's static input size, one channel
    files = sorted(folder.glob("*.png"))
    for i in (0, 5, 11):
        np.testing.assert_allclose(x[i], _by_hand(files[i], 8, 8, 0.2, 0.5), atol=1e-6)


def test_cli_folder_equals_the_same_npz(folder, tmp_path):
    arrays = load_images(folder, onnx.load(str(RESNET)), mean=[0.1], std=[0.3])
    npz = tmp_path / "same.npz"
    np.savez(npz, **arrays)
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    for out, src in ((a, ["--calib-images", folder, "--mean", "0.1", "--std", "0.3"]),
                     (b, ["--calib", npz])):
        proc = run_cli("prune", RESNET, out, *src, "--ratio", "0.5", "-q", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
    assert a.read_bytes() == b.read_bytes()
    res = onnxprune.prune(str(RESNET), arrays, ratio=0.5)
    assert serialized(res.model) == serialized(onnx.load(str(a)))


def test_cli_image_errors(folder, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for args, words in (
            (["--calib-images", empty], ["0 image"]),
            (["--calib-images", tmp_path / "nowhere"], ["nowhere"]),
            (["--calib-images", folder, "--std", "0"], ["--std"]),
            (["--calib-images", folder, "--mean", "1", "2"], ["--mean"]),
            (["--calib", RESNET.parent / "digits_calib.npz", "--size", "8", "8"], ["--size"])):
        expect_cli_error(["prune", RESNET, tmp_path / "o.onnx", *args], cwd=tmp_path,
                         watch_dirs=[tmp_path, folder], inputs=[RESNET], mention=words)
    (folder / "zz.png").write_bytes(b"not really a png")
    expect_cli_error(["prune", RESNET, tmp_path / "o.onnx", "--calib-images", folder],
                     cwd=tmp_path, watch_dirs=[tmp_path, folder], inputs=[RESNET],
                     mention=["zz.png"])


def test_report_onto_a_calibration_image_is_refused(folder, tmp_path):
    target = sorted(folder.glob("*.png"))[3]
    expect_cli_error(["prune", RESNET, tmp_path / "o.onnx", "--calib-images", folder, "--report",
                      target], cwd=tmp_path, watch_dirs=[tmp_path, folder],
                     inputs=[RESNET, target], mention=["calibration image"])
