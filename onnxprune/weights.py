"""Weights that stay in their external-data files until they are needed.

A model whose external data exceeds :data:`LAZY_BYTES` (default 1 GiB; protobuf cannot hold a
model over 2 GB in one message at all) is loaded without its weights: each such initializer keeps
its external-data reference (location, offset, length relative to the model's directory) and

* the graph reads it tensor by tensor when a pass needs its values (:func:`to_array`);
* onnxruntime sessions read it straight from the file (:func:`session_options`: the session
  option ``session.model_external_initializers_file_folder_path`` names the directory), so the
  serialised graph handed to onnxruntime stays small;
* saving copies it, one tensor at a time, into the output's data file (``saving.save_model``).

Sliced (rewritten) weights are new in-memory tensors; untouched ones are never loaded. Peak memory
is then the weights a pass actually reads plus the rewritten ones, not a copy of the model per
stage.

The directory is held in a context variable: ``load_model`` sets it for the run that loaded the
model and :func:`scoped` restores the caller's value when an API function returns, so two models
loaded one after the other never read each other's files.
"""

from __future__ import annotations

import contextvars
import functools
import os
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import onnx
from onnx import external_data_helper, numpy_helper

#: External data above this many bytes is left in its files (read on demand) instead of loaded.
LAZY_BYTES = 1 << 30

_BASE: contextvars.ContextVar[str | None] = contextvars.ContextVar("onnxprune_weights_dir",
                                                                  default=None)


def base_dir() -> str | None:
    """The directory external-data locations of the current run are relative to (None: every
    weight is in memory)."""
    return _BASE.get()


def set_base_dir(path: str | os.PathLike | None) -> None:
    _BASE.set(None if path is None else str(path))


@contextmanager
def source(path: str | os.PathLike | None) -> Iterator[None]:
    """Read external weights from ``path`` inside the block."""
    token = _BASE.set(None if path is None else str(path))
    try:
        yield
    finally:
        _BASE.reset(token)


def scoped(fn):
    """An API entry point: whatever directory the run's ``load_model`` sets is undone on return."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        token = _BASE.set(_BASE.get())
        try:
            return fn(*args, **kwargs)
        finally:
            _BASE.reset(token)
    return wrapper


def is_external(t: onnx.TensorProto) -> bool:
    return external_data_helper.uses_external_data(t) and not t.HasField("raw_data")


def nbytes(dims, data_type: int) -> int:
    """Bytes of a dense tensor of shape ``dims`` and ONNX element type ``data_type``."""
    return int(np.prod(dims, dtype=np.int64)) * np.dtype(
        onnx.helper.tensor_dtype_to_np_dtype(data_type)).itemsize


def external_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the model's initializers stored in external files (from their references)."""
    total = 0
    for t in external_data_helper._get_all_tensors(model):
        if external_data_helper.uses_external_data(t):
            length = external_data_helper.ExternalDataInfo(t).length
            total += nbytes(t.dims, t.data_type) if length is None else int(length)
    return total


def _need_dir(t: onnx.TensorProto) -> str:
    d = base_dir()
    if d is None:
        raise RuntimeError(f"tensor '{t.name}' is stored externally but no model directory is set "
                           "(load the model with onnxprune.modelio.load_model)")
    return d


def raw_bytes(t: onnx.TensorProto) -> bytes:
    """The tensor's raw bytes, from memory or from its external file."""
    if not is_external(t):
        return t.raw_data
    info = external_data_helper.ExternalDataInfo(t)
    path = os.path.join(_need_dir(t), info.location)
    with open(path, "rb") as f:
        if info.offset:
            f.seek(int(info.offset))
        return f.read(int(info.length)) if info.length is not None else f.read()


def to_array(t: onnx.TensorProto) -> np.ndarray:
    """``numpy_helper.to_array`` that also reads a lazily held tensor."""
    if is_external(t):
        return numpy_helper.to_array(t, base_dir=_need_dir(t))
    return numpy_helper.to_array(t)


def materialized(t: onnx.TensorProto) -> onnx.TensorProto:
    """``t`` itself when its data is in memory, else a copy holding its bytes inline, exactly as
    ``onnx.load`` leaves a tensor it read from an external file."""
    if not is_external(t):
        return t
    out = copy_fields(t, onnx.TensorProto(), skip=("raw_data", "external_data", "data_location"))
    out.raw_data = raw_bytes(t)
    out.data_location = onnx.TensorProto.DEFAULT
    return out


def session_options(opts) -> None:
    """Let an onnxruntime session built from bytes find the run's external weights."""
    d = base_dir()
    if d is not None:
        opts.add_session_config_entry("session.model_external_initializers_file_folder_path", d)


def copy_fields(src, dst, skip=()):
    """``dst`` with every field of ``src`` set, except those named in ``skip`` (a message copy
    that never duplicates what it skips, e.g. a graph's weights)."""
    for fd in src.DESCRIPTOR.fields:  # not ListFields: it would read the skipped bytes too
        if fd.name in skip:
            continue
        if fd.is_repeated:
            if len(getattr(src, fd.name)):
                getattr(dst, fd.name).extend(getattr(src, fd.name))
        elif src.HasField(fd.name):
            if fd.type == fd.TYPE_MESSAGE:
                getattr(dst, fd.name).CopyFrom(getattr(src, fd.name))
            else:
                setattr(dst, fd.name, getattr(src, fd.name))
    return dst


#: Initializers up to this many bytes stay in a skeleton (shape arithmetic needs their values).
SKELETON_BYTES = 1024


def skeleton(model: onnx.ModelProto, copy: bool = False) -> onnx.ModelProto:
    """``model`` without its weights, for ``onnx.checker`` and ONNX shape inference: every
    initializer held lazily or over :data:`SKELETON_BYTES` becomes a graph input of the same
    name, type and shape (structure, types and shapes are checked and inferred alike; small
    constants such as target shapes keep their values). Nothing large is copied or serialised,
    and the in-memory checker does not look for external files relative to the current
    directory. Without large weights: ``model`` itself, or a copy of it with ``copy``."""
    big = [t for t in model.graph.initializer if is_external(t) or t.ByteSize() > SKELETON_BYTES]
    if not big:
        if not copy:
            return model
        m = onnx.ModelProto()
        m.CopyFrom(model)
        return m
    names = {t.name for t in big}
    m = copy_fields(model, onnx.ModelProto(), skip=("graph",))
    copy_fields(model.graph, m.graph, skip=("initializer",))
    m.graph.initializer.extend(t for t in model.graph.initializer if t.name not in names)
    declared = {i.name for i in m.graph.input}
    m.graph.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                         for t in big if t.name not in declared)
    return m
