"""Bad input to ``onnxprune prune`` / the Python API.

The contract for every user error (CLI): exit status 2, exactly one line on stderr starting with
``onnxprune: error: `` that says what to fix, no traceback, nothing new in the output directory
(no partial model, no ``.data`` file, no temporary files), and the input files untouched (same
bytes and mtime). Through the Python API the same errors raise ``onnxprune.OnnxPruneError``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import onnxprune

from helpers import (  # noqa: E402
    CALIB_FLAT, CALIB_IMG, MLP, MODELS, VGG,
)

ERROR_PREFIX = "onnxprune: error: "


# -- helpers ---------------------------------------------------------------------------------------

def run_cli(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "onnxprune.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=str(cwd), timeout=300)


def listing(directory: Path):
    """Every entry (hidden ones included) of ``directory``, or None when it does not exist."""
    directory = Path(directory)
    return sorted(os.listdir(directory)) if directory.is_dir() else None


def fingerprint(paths) -> dict:
    """sha256 and mtime of each file (None for a missing one)."""
    out = {}
    for p in paths:
        p = Path(p)
        if p.is_file():
            out[str(p)] = (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        else:
            out[str(p)] = None
    return out


def assert_one_error_line(proc: subprocess.CompletedProcess) -> str:
    detail = f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, detail
    assert proc.returncode == 2, detail
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, detail
    assert lines[0].startswith(ERROR_PREFIX), detail
    assert len(lines[0]) > len(ERROR_PREFIX) + 10, detail  # says something
    return lines[0]


def expect_cli_error(args, *, cwd: Path, watch_dirs, inputs, mention=()) -> str:
    """Run the CLI and check the whole user-error contract; return the error line."""
    watch_dirs = [Path(d) for d in watch_dirs] + [Path(cwd), MODELS]
    before_dirs = {str(d): listing(d) for d in watch_dirs}
    before_inputs = fingerprint(inputs)
    proc = run_cli(*args, cwd=cwd)
    line = assert_one_error_line(proc)
    for word in mention:
        assert word.lower() in line.lower(), f"{word!r} not in {line!r}"
    after_dirs = {str(d): listing(d) for d in watch_dirs}
    assert after_dirs == before_dirs, "files were created or removed"
    assert fingerprint(inputs) == before_inputs, "an input file was modified"
    return line


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    d = tmp_path / "out"
    d.mkdir()
    return d


@pytest.fixture
def calib_arr() -> np.ndarray:
    with np.load(CALIB_FLAT) as z:
        return z["input"]


def prune_error(tmp_path, out_dir, model, calib, *extra, mention=(), inputs=()):
    out = out_dir / "pruned.onnx"
    return expect_cli_error(["prune", model, out, "--calib", calib, *extra], cwd=tmp_path,
                            watch_dirs=[out_dir, tmp_path],
                            inputs=[model, calib, *inputs], mention=mention)


# -- the model -------------------------------------------------------------------------------------

def test_missing_model(tmp_path, out_dir):
    prune_error(tmp_path, out_dir, tmp_path / "nope.onnx", CALIB_FLAT, mention=["nope.onnx"])


def test_truncated_model(tmp_path, out_dir):
    data = MLP.read_bytes()
    model = tmp_path / "truncated.onnx"
    model.write_bytes(data[: len(data) // 2])
    prune_error(tmp_path, out_dir, model, CALIB_FLAT, mention=["truncated.onnx"])


def test_non_onnx_file(tmp_path, out_dir):
    model = tmp_path / "x.onnx"
    model.write_text("this is not an ONNX model, just some text\n" * 20)
    prune_error(tmp_path, out_dir, model, CALIB_FLAT, mention=["x.onnx"])


def test_missing_external_data(tmp_path, out_dir):
    model = tmp_path / VGG.name
    shutil.copy2(VGG, model)  # without its .data file
    prune_error(tmp_path, out_dir, model, CALIB_IMG, mention=[".data"])


# -- the calibration data --------------------------------------------------------------------------

def test_missing_calibration(tmp_path, out_dir):
    prune_error(tmp_path, out_dir, MLP, tmp_path / "nocalib.npz", mention=["nocalib.npz"])


def test_calibration_wrong_key(tmp_path, out_dir, calib_arr):
    calib = tmp_path / "calib.npz"
    np.savez(calib, images=calib_arr)
    prune_error(tmp_path, out_dir, MLP, calib, mention=["'input'"])


def test_calibration_wrong_dtype(tmp_path, out_dir, calib_arr):
    calib = tmp_path / "calib.npz"
    np.savez(calib, input=calib_arr.astype(np.float64))
    prune_error(tmp_path, out_dir, MLP, calib, mention=["float64", "float32"])


def test_calibration_wrong_shape(tmp_path, out_dir, calib_arr):
    calib = tmp_path / "calib.npz"
    np.savez(calib, input=calib_arr[:, :63])
    prune_error(tmp_path, out_dir, MLP, calib, mention=["64"])


def test_calibration_single_sample(tmp_path, out_dir, calib_arr):
    calib = tmp_path / "calib.npz"
    np.savez(calib, input=calib_arr[:1])
    prune_error(tmp_path, out_dir, MLP, calib, mention=["sample"])


def test_npy_calibration_is_accepted(tmp_path, out_dir, calib_arr):
    """The counterpart of the corrupt .npz: a plain .npy for a single-input model works."""
    calib = tmp_path / "calib.npy"
    np.save(calib, calib_arr)
    out = out_dir / "pruned.onnx"
    proc = run_cli("prune", MLP, out, "--calib", calib, "--ratio", "0.5", "-q", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)


def test_corrupt_npz(tmp_path, out_dir):
    calib = tmp_path / "corrupt.npz"
    calib.write_bytes(np.random.default_rng(0).bytes(4096))
    prune_error(tmp_path, out_dir, MLP, calib, mention=["corrupt.npz"])


# -- options ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("ratio", ["1.0", "-0.1", "abc"])
def test_bad_ratio(tmp_path, out_dir, ratio):
    prune_error(tmp_path, out_dir, MLP, CALIB_FLAT, "--ratio", ratio, mention=["ratio", ratio])


@pytest.mark.parametrize("ridge", ["-1", "nan", "big"])
def test_bad_ridge(tmp_path, out_dir, ridge):
    prune_error(tmp_path, out_dir, MLP, CALIB_FLAT, "--ridge", ridge, mention=["ridge", ridge])


def test_unknown_method(tmp_path, out_dir):
    prune_error(tmp_path, out_dir, MLP, CALIB_FLAT, "--method", "magic",
                mention=["magic", "inchange"])


# -- the output ------------------------------------------------------------------------------------

def test_output_equals_input_without_force(tmp_path):
    model = tmp_path / "model.onnx"
    shutil.copy2(MLP, model)
    expect_cli_error(["prune", model, model, "--calib", CALIB_FLAT], cwd=tmp_path,
                     watch_dirs=[tmp_path], inputs=[model, CALIB_FLAT], mention=["--force"])


def test_output_directory_missing(tmp_path):
    out = tmp_path / "nodir" / "pruned.onnx"
    expect_cli_error(["prune", MLP, out, "--calib", CALIB_FLAT], cwd=tmp_path,
                     watch_dirs=[tmp_path], inputs=[MLP, CALIB_FLAT], mention=["nodir"])
    assert not (tmp_path / "nodir").exists()


def test_output_directory_not_writable(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.geteuid() == 0 or os.access(locked, os.W_OK):
            # root (or CAP_DAC_OVERRIDE) can write anywhere: use a parent that is a regular
            # file instead, which nobody can create files in.
            parent = tmp_path / "afile"
            parent.write_text("a regular file, not a directory\n")
            inputs = [MLP, CALIB_FLAT, parent]
        else:
            parent = locked
            inputs = [MLP, CALIB_FLAT]
        expect_cli_error(["prune", MLP, parent / "pruned.onnx", "--calib", CALIB_FLAT],
                         cwd=tmp_path, watch_dirs=[tmp_path, locked], inputs=inputs,
                         mention=[parent.name])
    finally:
        locked.chmod(0o700)


def test_output_path_is_directory(tmp_path, out_dir):
    target = out_dir / "pruned.onnx"
    target.mkdir()
    expect_cli_error(["prune", MLP, target, "--calib", CALIB_FLAT], cwd=tmp_path,
                     watch_dirs=[tmp_path, out_dir, target], inputs=[MLP, CALIB_FLAT],
                     mention=["director"])


def test_report_in_missing_directory(tmp_path, out_dir):
    prune_error(tmp_path, out_dir, MLP, CALIB_FLAT, "--report", tmp_path / "norep" / "r.json",
                mention=["norep"])
    assert not (tmp_path / "norep").exists()


def test_report_path_equal_to_input(tmp_path, out_dir):
    """--report must not overwrite the input model (the report is not protected by --force)."""
    model = tmp_path / "model.onnx"
    shutil.copy2(MLP, model)
    prune_error(tmp_path, out_dir, model, CALIB_FLAT, "--report", model)


def test_report_path_equal_to_output(tmp_path, out_dir):
    """The report and the model cannot both be written to the same file."""
    out = out_dir / "pruned.onnx"
    expect_cli_error(["prune", MLP, out, "--calib", CALIB_FLAT, "--report", out], cwd=tmp_path,
                     watch_dirs=[tmp_path, out_dir], inputs=[MLP, CALIB_FLAT])


# -- the same errors through the Python API --------------------------------------------------------

def _api_cases():
    def arr():
        with np.load(CALIB_FLAT) as z:
            return z["input"]

    def truncated(tmp):
        p = tmp / "truncated.onnx"
        data = MLP.read_bytes()
        p.write_bytes(data[: len(data) // 2])
        return p

    def vgg_alone(tmp):
        p = tmp / VGG.name
        shutil.copy2(VGG, p)
        return p

    return {
        "missing-model": lambda tmp: (tmp / "nope.onnx", CALIB_FLAT, {}),
        "truncated-model": lambda tmp: (truncated(tmp), CALIB_FLAT, {}),
        "missing-external-data": lambda tmp: (vgg_alone(tmp), CALIB_IMG, {}),
        "modelproto-external-not-loaded": lambda tmp: (
            onnx.load(str(VGG), load_external_data=False), CALIB_IMG, {}),
        "missing-calib": lambda tmp: (MLP, tmp / "nocalib.npz", {}),
        "calib-wrong-key": lambda tmp: (MLP, {"images": arr()}, {}),
        "calib-float64": lambda tmp: (MLP, {"input": arr().astype(np.float64)}, {}),
        "calib-wrong-shape": lambda tmp: (MLP, {"input": arr()[:, :63]}, {}),
        "calib-one-sample": lambda tmp: (MLP, arr()[:1], {}),
        "ratio-1": lambda tmp: (MLP, CALIB_FLAT, {"ratio": 1.0}),
        "ratio-negative": lambda tmp: (MLP, CALIB_FLAT, {"ratio": -0.1}),
        "ratio-string": lambda tmp: (MLP, CALIB_FLAT, {"ratio": "abc"}),
        "unknown-method": lambda tmp: (MLP, CALIB_FLAT, {"method": "magic"}),
    }


API_CASES = _api_cases()


@pytest.mark.parametrize("case", list(API_CASES))
def test_api_errors(tmp_path, case):
    model, calib, kwargs = API_CASES[case](tmp_path)
    files = [p for p in (model, calib) if isinstance(p, Path)]
    before_dirs = {str(d): listing(d) for d in (tmp_path, MODELS)}
    before = fingerprint(files)
    with pytest.raises(onnxprune.OnnxPruneError) as info:
        onnxprune.prune(model, calib, **kwargs)
    assert str(info.value).strip()
    assert "\n" not in str(info.value).strip()
    assert fingerprint(files) == before
    assert {str(d): listing(d) for d in (tmp_path, MODELS)} == before_dirs


@pytest.fixture(scope="module")
def mlp_result():
    return onnxprune.prune(str(MLP), str(CALIB_FLAT), ratio=0.5, seed=0)


@pytest.fixture(scope="module")
def vgg_result():
    with np.load(CALIB_IMG) as z:
        x = z["input"][:64]
    return onnxprune.prune(str(VGG), {"input": x}, ratio=0.5, seed=0)


def test_api_save_into_missing_directory(tmp_path, mlp_result):
    before = listing(tmp_path)
    with pytest.raises(onnxprune.OnnxPruneError):
        mlp_result.save(tmp_path / "nodir" / "pruned.onnx")
    assert listing(tmp_path) == before


def test_api_save_onto_directory_with_external_data(tmp_path, vgg_result):
    target = tmp_path / "pruned.onnx"
    target.mkdir()
    before = listing(tmp_path)
    with pytest.raises(onnxprune.OnnxPruneError):
        vgg_result.save(target)
    assert listing(tmp_path) == before, "a partial output (.data file) was left behind"
    assert listing(target) == []
