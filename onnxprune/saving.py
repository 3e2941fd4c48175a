"""Writing: output paths checked before any work, a run's reads and writes kept apart, and
models saved atomically (weights beside the model streamed tensor by tensor).

Every failure caused by the user's paths raises :class:`~onnxprune.errors.OutputError` with a
message that names the file and says how to fix it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import onnx
from onnx import external_data_helper

from onnxprune import weights
from onnxprune.errors import OutputError


def _same_file(a: Path, b: Path) -> bool:
    """Same file after resolving links (symbolic: resolve; hard: same inode when both exist)."""
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_collisions(writes: dict[str, Path], reads: dict[str, Path]) -> None:
    """Refuse a run that would write (model, its .data, report …) over a file it reads (model,
    its external data, calibration …) or write two of its outputs to one file."""
    items = list(writes.items())
    for i, (what, w) in enumerate(items):
        for other, r in list(reads.items()) + items[i + 1:]:
            if _same_file(Path(w), Path(r)):
                raise OutputError(f"the {what} '{w}' would overwrite the {other} '{r}'; "
                                  "choose another path")


def check_output_path(out: str | os.PathLike, inp: str | os.PathLike | None, force: bool) -> Path:
    """Validate the output location before any work is done."""
    out_p = Path(out)
    if out_p.suffix.lower() != ".onnx":
        raise OutputError(f"output '{out_p}' must end in .onnx")
    if inp is not None and out_p.resolve() == Path(inp).resolve() and not force:
        raise OutputError(f"output '{out_p}' is the input model; choose another path or pass "
                          "--force to overwrite it")
    if out_p.exists() and out_p.is_dir():
        raise OutputError(f"output '{out_p}' is a directory; give a file name ending in .onnx")
    parent = out_p.parent if str(out_p.parent) else Path(".")
    if parent.exists() and not parent.is_dir():
        raise OutputError(f"'{parent}' is not a directory; choose an output path inside a "
                          "directory")
    if not parent.is_dir():
        raise OutputError(f"output directory '{parent}' does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"output directory '{parent}' is not writable; choose another location")
    return out_p


def file_mode() -> int:
    """Permission bits of a newly created regular file under the current umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


#: Weights of at least this many bytes go to the external-data file (when the model uses one).
EXTERNAL_MIN_BYTES = 1024


def _mark_external(model: onnx.ModelProto, location: str) -> None:
    """Point every large initializer at ``location`` (written by ``onnx.save_model``).

    Done by hand because ``onnx.save_model(save_as_external_data=True)`` refuses a location that
    exists relative to the *current directory*, whatever directory the model is saved to.
    """
    for t in external_data_helper._get_initializer_tensors(model):
        if t.HasField("raw_data") and len(t.raw_data) >= EXTERNAL_MIN_BYTES:
            external_data_helper.set_external_data(t, location=location)
            t.data_location = onnx.TensorProto.EXTERNAL


def _externalised(t: onnx.TensorProto, data, location: str) -> onnx.TensorProto:
    """``t`` as saved beside the model: its bytes appended to ``data`` when they are held
    lazily or raw and at least ``EXTERNAL_MIN_BYTES`` long (like :func:`_mark_external`), else
    inline. (Every read of ``raw_data`` copies it: it is read once.)"""
    if weights.is_external(t):
        payload = weights.raw_bytes(t)
        if len(payload) < EXTERNAL_MIN_BYTES:  # inline, as if it had been loaded
            return weights.materialized(t)
    elif t.HasField("raw_data"):
        payload = t.raw_data
        if len(payload) < EXTERNAL_MIN_BYTES:
            return t
    else:
        return t
    out = weights.copy_fields(t, onnx.TensorProto(), skip=("raw_data", "external_data"))
    offset = data.tell()
    data.write(payload)
    for key, value in (("location", location), ("offset", offset), ("length", len(payload))):
        entry = out.external_data.add()
        entry.key, entry.value = key, str(value)
    out.data_location = onnx.TensorProto.EXTERNAL
    return out


def save_model(model: onnx.ModelProto, out: str | os.PathLike, external_data: bool) -> list[Path]:
    """Write ``model`` (and ``<out>.data`` when ``external_data``) atomically.

    Everything is written into a temporary directory beside the output, then moved into place with
    ``os.replace`` (data first, model last; if the model cannot be moved the data file is removed
    again); on any failure nothing is left behind. Returns the files written.
    """
    out_p = check_output_path(out, None, force=True)
    parent = out_p.parent if str(out_p.parent) else Path(".")
    location = out_p.name + ".data"
    if external_data and (parent / location).is_dir():
        raise OutputError(f"'{parent / location}' is a directory; the external data file "
                          "needs that name")
    tmpdir = None
    moved: list[Path] = []
    try:
        tmpdir = Path(tempfile.mkdtemp(prefix=".onnxprune-", dir=parent))
        tmp_model = tmpdir / out_p.name
        if external_data:
            # top-level weights streamed one at a time (lazily held ones straight from their
            # files); the rest (subgraph weights) appended by onnx.save_model, as before
            copy = weights.copy_fields(model, onnx.ModelProto(), skip=("graph",))
            weights.copy_fields(model.graph, copy.graph, skip=("initializer",))
            with open(tmpdir / location, "wb") as data:
                for t in model.graph.initializer:
                    copy.graph.initializer.append(_externalised(t, data, location))
            _mark_external(copy, location)
        else:
            copy = onnx.ModelProto()
            copy.CopyFrom(model)
            for t in copy.graph.initializer:
                if weights.is_external(t):
                    t.CopyFrom(weights.materialized(t))
        onnx.save_model(copy, str(tmp_model))
        if external_data and (tmpdir / location).stat().st_size == 0:
            (tmpdir / location).unlink()  # nothing large enough to go outside the model
        mode = file_mode()
        written = []
        if external_data and (tmpdir / location).exists():
            os.chmod(tmpdir / location, mode)
            os.replace(tmpdir / location, parent / location)
            moved.append(parent / location)
            written.append(parent / location)
        os.chmod(tmp_model, mode)
        os.replace(tmp_model, out_p)
        return [out_p] + written
    except OSError as exc:
        for f in moved:
            f.unlink(missing_ok=True)
        raise OutputError(f"cannot write '{out_p}': {exc.strerror or exc}; check the path, free "
                          "space and permissions") from None
    finally:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)


#: Label of the input model (and prefix of its external data's) among a run's sources.
INPUT_MODEL = "input model"


def check_writes(out: Path | None, external_data: bool, sources: Mapping[str, Path],
                 overwrite_input: bool = False, others: Mapping[str, Path] | None = None
                 ) -> None:
    """Refuse writing the model ``out`` (its ``.data`` with ``external_data``) and ``others``
    (a report …) over any of ``sources`` — the input model's files only with
    ``overwrite_input`` — or over each other (:func:`check_collisions`)."""
    writes = {**({"output model": out} if out is not None else {}), **(others or {})}
    if external_data and out is not None:
        writes["output's external data"] = out.with_name(out.name + ".data")
    check_collisions(writes, {k: v for k, v in sources.items()
                              if not (overwrite_input and k.startswith(INPUT_MODEL))})


def run_sources(model_path: Path | None, data_files: Sequence[Path], calib) -> dict[str, Path]:
    """The files a run reads: the model, its external data, the calibration file."""
    out: dict[str, Path] = {}
    if model_path is not None:
        out[INPUT_MODEL] = Path(model_path)
    for i, f in enumerate(data_files):
        out[f"{INPUT_MODEL}'s external data" + (f" #{i + 1}" if i else "")] = f
    if isinstance(calib, (str, os.PathLike)):
        out["calibration data"] = Path(calib)
    return out


def finite(obj):
    """JSON has no NaN/Infinity: such values (a diverged output) are written as null."""
    if isinstance(obj, float):
        return obj if obj == obj and abs(obj) != float("inf") else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [finite(v) for v in obj]
    return obj


def write_json_atomic(path: Path, data: dict) -> None:
    write_text_atomic(path, json.dumps(finite(data), indent=2, allow_nan=False) + "\n",
                       raise_os=True)


def write_text_atomic(path: Path, text: str, raise_os: bool = False) -> None:
    """Write ``text`` through a temporary file beside ``path``, renamed into place."""
    parent = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=".onnxprune-", suffix=path.suffix, dir=parent)
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if raise_os:
            raise
        raise OutputError(f"cannot write '{path}': {exc.strerror or exc}") from None


def check_report_path(path: str) -> Path:
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    if p.is_dir():
        raise OutputError(f"report path '{p}' is a directory; give a file name")
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"report directory '{parent}' does not exist or is not writable")
    return p
