"""Loading models (weights in memory, or left in their external-data files: ``weights``) and
calibration data; writing is :mod:`onnxprune.saving`.

Every failure caused by the user's files raises an :class:`~onnxprune.errors.OnnxPruneError`
subclass whose message names the file and says how to fix it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import external_data_helper, helper, numpy_helper

from onnxprune import weights
from onnxprune.errors import CalibrationError, ModelError
from onnxprune.graph import attr

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    model: onnx.ModelProto
    path: Path | None
    external_data: bool
    data_files: tuple[Path, ...] = ()  # the external-data files it was read from
    lazy: bool = False  # weights left in the data files (onnxprune.weights)


def _uses_external_data(model: onnx.ModelProto) -> bool:
    return any(external_data_helper.uses_external_data(t)
               for t in external_data_helper._get_all_tensors(model))


def load_model(source: str | os.PathLike | onnx.ModelProto) -> LoadedModel:
    """Load a model with its external data; validate it with the ONNX checker.

    External data over ``weights.LAZY_BYTES`` stays in its files (``LoadedModel.lazy``): the
    weights are read on demand from the model's directory, which this call makes the current
    run's (:mod:`onnxprune.weights`)."""
    if isinstance(source, onnx.ModelProto):
        model = onnx.ModelProto()
        model.CopyFrom(source)
        weights.set_base_dir(None)
        if _uses_external_data(model):
            raise ModelError("the ModelProto refers to external data that is not loaded; pass the "
                             "model's path instead, or load it with onnx.load(path)")
        _check(model, "the given ModelProto")
        _densify(model)
        return LoadedModel(model=model, path=None, external_data=False)
    path = Path(source)
    if not path.exists():
        raise ModelError(f"model file '{path}' does not exist; check the path")
    if not path.is_file():
        raise ModelError(f"model path '{path}' is not a file; give the .onnx file itself")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises several types
        raise ModelError(f"'{path}' is not a readable ONNX model ({type(exc).__name__}); "
                         "re-export it or check that the file was copied completely") from None
    if not model.graph.output or not model.opset_import:
        raise ModelError(f"'{path}' is not a complete ONNX model (no graph outputs or opset); "
                         "re-export it or check that the file was copied completely")
    external = _uses_external_data(model)
    data_files = _data_files(model, path)
    if external and weights.external_bytes(model) > weights.LAZY_BYTES:
        _check_lazy(model, path)
        weights.set_base_dir(path.parent)
        _check(model, f"'{path}'")
        _densify(model)
        return LoadedModel(model=model, path=path, external_data=True, data_files=data_files,
                           lazy=True)
    weights.set_base_dir(None)
    if external:
        try:
            external_data_helper.load_external_data_for_model(model, str(path.parent))
        except ValueError as exc:  # onnx: "External data length … exceeds available data"
            raise ModelError(f"external data of '{path}' is truncated or does not match the "
                             f"model ({str(exc).splitlines()[0]}); copy the data file again"
                             ) from None
        except (FileNotFoundError, OSError, onnx.checker.ValidationError) as exc:
            raise ModelError(f"external data of '{path}' cannot be read ({exc}); keep the "
                             "data file next to the model under the name it was saved with"
                             ) from None
        for t in model.graph.initializer:
            expected = weights.nbytes(t.dims, t.data_type)
            if t.raw_data and len(t.raw_data) != expected and t.data_type != onnx.TensorProto.STRING:
                raise ModelError(f"external data of '{path}' is truncated (tensor '{t.name}' has "
                                 f"{len(t.raw_data)} of {expected} bytes); copy the data file again")
    _check(model, f"'{path}'")
    _densify(model)
    return LoadedModel(model=model, path=path, external_data=external, data_files=data_files)


def _check_lazy(model: onnx.ModelProto, path: Path) -> None:
    """Every lazily held weight lies inside its data file (what loading would have checked)."""
    sizes: dict[str, int] = {}
    for t in external_data_helper._get_all_tensors(model):
        if not external_data_helper.uses_external_data(t):
            continue
        info = external_data_helper.ExternalDataInfo(t)
        f = path.parent / info.location
        if info.location not in sizes:
            if not f.is_file() or Path(info.location).is_absolute() or ".." in Path(
                    info.location).parts:
                raise ModelError(f"external data of '{path}' cannot be read ('{info.location}' "
                                 "is not a file beside the model); keep the data file next to "
                                 "the model under the name it was saved with")
            sizes[info.location] = f.stat().st_size
        expected = weights.nbytes(t.dims, t.data_type)
        length = expected if info.length is None else int(info.length)
        if length != expected or int(info.offset or 0) + length > sizes[info.location]:
            raise ModelError(f"external data of '{path}' is truncated or does not match the "
                             f"model (tensor '{t.name}'); copy the data file again")


def _densify(model: onnx.ModelProto) -> None:
    """Sparse initializers (``onnxprune sparsify --storage sparse``) become dense ones: every
    pass reads weights as initializers."""
    for sp in model.graph.sparse_initializer:
        values = numpy_helper.to_array(sp.values)
        idx = numpy_helper.to_array(sp.indices).astype(np.int64)
        dense = np.zeros(tuple(sp.dims), dtype=values.dtype)
        if idx.ndim == 2:  # [nnz, rank] coordinates
            dense[tuple(idx.T)] = values
        else:  # linear positions
            dense.reshape(-1)[idx] = values
        model.graph.initializer.append(numpy_helper.from_array(dense, sp.values.name))
    del model.graph.sparse_initializer[:]


def external_data_files(path: Path, limit: int = 64 << 20) -> tuple[Path, ...]:
    """The external-data files an .onnx file refers to (read without its data; a file over
    ``limit`` bytes holds its weights inline and is not parsed twice: ``()``)."""
    try:
        if path.stat().st_size > limit:
            return ()
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - unreadable: load_model reports it
        return ()
    return _data_files(model, path)


def _data_files(model: onnx.ModelProto, path: Path) -> tuple[Path, ...]:
    return tuple(sorted({path.parent / external_data_helper.ExternalDataInfo(t).location
                         for t in external_data_helper._get_all_tensors(model)
                         if external_data_helper.uses_external_data(t)}))


def _check(model: onnx.ModelProto, what: str) -> None:
    try:
        onnx.checker.check_model(weights.skeleton(model))
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid model"
        raise ModelError(f"{what} is not a valid ONNX model: {first}; fix the exporter output "
                         "(onnx.checker.check_model reports the same)") from None
    except ValueError:  # > 2 GB protos cannot be checked in memory; onnxruntime will check
        pass


# -- calibration -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: np.dtype
    shape: tuple  # ints, strings (symbolic) or None


def model_inputs(model: onnx.ModelProto) -> list[InputSpec]:
    inits = {t.name for t in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                     for d in tt.shape.dim)
        specs.append(InputSpec(vi.name, np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)),
                               dims))
    return specs


@dataclass(frozen=True, eq=False)
class Calibration:
    """Validated calibration samples (sample axis first) and how to feed them to the model.

    ``mode``: ``"batched"`` (dynamic batch axis: any chunk size), ``"fixed"`` (static batch of
    ``batch`` samples: chunks are padded by repetition, padding rows ignored) or ``"unbatched"``
    (the model has no batch axis: one sample per run). ``token_mask``: the input whose
    ``[batch, seq]`` 0/1 values mark real (non-padding) tokens, or None.
    """

    arrays: Mapping[str, np.ndarray]
    n_samples: int
    mode: str
    batch: int
    token_mask: str | None = None

    def token_valid(self, feed: Mapping[str, np.ndarray], n_valid: int) -> np.ndarray | None:
        """The boolean ``[n_valid, seq]`` token mask of one feed, or None."""
        if self.token_mask is None or self.mode == "unbatched":
            return None
        return np.asarray(feed[self.token_mask])[:n_valid] != 0

    def step(self, batch_size: int) -> int:
        """Samples per run: ``batch_size``, the model's fixed batch, or 1 (unbatched)."""
        return {"batched": batch_size, "fixed": self.batch, "unbatched": 1}[self.mode]

    def feeds(self, indices: np.ndarray, batch_size: int = 32
              ) -> Iterator[tuple[dict[str, np.ndarray], int]]:
        """Yield ``(feed, n_valid)``; outputs of a run have the sample axis first (added for
        unbatched models), and only the first ``n_valid`` rows are real samples."""
        indices = np.asarray(indices)
        step = self.step(batch_size)
        for start in range(0, len(indices), step):
            idx = indices[start:start + step]
            valid = len(idx)
            if self.mode == "fixed" and valid < step:
                idx = np.concatenate([idx, np.repeat(idx[-1:], step - valid)])
            if self.mode == "unbatched":
                yield {k: v[idx[0]] for k, v in self.arrays.items()}, 1
            else:
                yield {k: v[idx] for k, v in self.arrays.items()}, valid


#: Input names taken as a token mask when ``token_mask="auto"`` (compared case-insensitively).
TOKEN_MASK_NAMES = ("attention_mask",)


def load_calibration(source, model: onnx.ModelProto, token_mask: str | None = "auto"
                     ) -> Calibration:
    """Read and validate calibration data: a .npz (keys = input names), a .npy (single-input
    model), or a mapping name → array. Arrays have the sample axis first.

    ``token_mask``: the input marking real tokens with 1 and padding with 0 (``[N, seq]``);
    ``"auto"``: an input named ``attention_mask`` when its values are all 0/1, else none;
    None or ``"none"``: no mask."""
    specs = model_inputs(model)
    where = "calibration data"
    if isinstance(source, Mapping):
        arrays = {k: np.asarray(v) for k, v in source.items()}
    elif isinstance(source, np.ndarray):
        if len(specs) != 1:
            raise CalibrationError(f"a single array was given but the model has {len(specs)} "
                                   f"inputs ({', '.join(s.name for s in specs)}); pass a .npz or "
                                   "a dict keyed by input name")
        arrays = {specs[0].name: source}
    else:
        path = Path(source)
        where = f"calibration file '{path}'"
        if not path.is_file():
            raise CalibrationError(f"{where} does not exist; check the path")
        try:
            if path.suffix == ".npz":
                with np.load(path, allow_pickle=False) as z:
                    arrays = {k: z[k] for k in z.files}
            elif path.suffix == ".npy":
                arr = np.load(path, allow_pickle=False)
                if len(specs) != 1:
                    raise CalibrationError(
                        f"{where} is a single .npy array but the model has {len(specs)} inputs "
                        f"({', '.join(s.name for s in specs)}); save a .npz keyed by input name")
                arrays = {specs[0].name: arr}
            else:
                raise CalibrationError(f"{where} must be a .npz (keys = input names) or a .npy "
                                       "(single-input model)")
        except CalibrationError:
            raise
        except Exception as exc:  # noqa: BLE001 - numpy raises many types on corrupt files
            raise CalibrationError(f"{where} is not a readable {path.suffix} file "
                                   f"({type(exc).__name__}); save it with numpy.savez / "
                                   "numpy.save (no pickled objects)") from None
    names = [s.name for s in specs]
    missing = [n for n in names if n not in arrays]
    extra = [k for k in arrays if k not in names]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing input(s) {', '.join(repr(m) for m in missing)}")
        if extra:
            parts.append(f"unknown key(s) {', '.join(repr(e) for e in extra)}")
        raise CalibrationError(f"{where}: {'; '.join(parts)}; the model's inputs are "
                               f"{', '.join(repr(n) for n in names)}")
    modes, counts, batch = set(), set(), 1
    for spec in specs:
        arr = arrays[spec.name]
        if arr.dtype != spec.dtype:
            raise CalibrationError(f"{where}: '{spec.name}' has dtype {arr.dtype} but the model "
                                   f"expects {spec.dtype}; convert it with .astype(numpy."
                                   f"{spec.dtype.name})")
        if arr.dtype.kind in "fc" and not np.all(np.isfinite(arr)):
            raise CalibrationError(f"{where}: '{spec.name}' contains NaN or infinite values; "
                                   "remove or replace those samples")
        shape = spec.shape
        if arr.ndim == len(shape) and len(shape) > 0:
            mode = "batched"
            if isinstance(shape[0], int) and shape[0] > 0:
                mode, batch = ("fixed", shape[0])
            fixed = shape[1:]
            got = arr.shape[1:]
        elif arr.ndim == len(shape) + 1:
            if shape and not (isinstance(shape[0], int) and shape[0] > 0):
                # a dynamic batch axis: the samples go along it, not along an extra one
                raise CalibrationError(
                    f"{where}: '{spec.name}' has shape {arr.shape}, one axis more than the "
                    f"model input {_fmt(shape)}; give the samples as shape "
                    f"(N, {', '.join(_fmt_dim(d) for d in shape[1:])})")
            mode, fixed, got = "unbatched", shape, arr.shape[1:]
        else:
            raise CalibrationError(
                f"{where}: '{spec.name}' has shape {arr.shape} but the model input is "
                f"{_fmt(shape)}; stack the samples along a first axis "
                f"(shape (N, {', '.join(_fmt_dim(d) for d in shape[1:])}))")
        for i, (want, have) in enumerate(zip(fixed, got)):
            if isinstance(want, int) and want > 0 and want != have:
                raise CalibrationError(
                    f"{where}: '{spec.name}' has shape {arr.shape} but the model input is "
                    f"{_fmt(shape)} (dimension {i + (1 if mode != 'unbatched' else 0)} differs)"
                    "; resize the samples to the model's input size")
        modes.add(mode)
        counts.add(arr.shape[0])
    if len(counts) != 1:
        raise CalibrationError(f"{where}: inputs have different numbers of samples "
                               f"({sorted(counts)}); give every input the same sample count")
    n = counts.pop()
    if n < 2:
        raise CalibrationError(f"{where} has {n} sample(s); give at least 2 (a few hundred is "
                               "typical: some are kept aside to measure fidelity)")
    if len(modes) != 1:
        raise CalibrationError(f"{where}: the model's inputs mix batched and unbatched shapes; "
                               "this model cannot be calibrated automatically")
    mode = modes.pop()
    _check_indices(model, arrays, where)
    return Calibration(arrays=arrays, n_samples=n, mode=mode, batch=batch,
                       token_mask=_token_mask(token_mask, arrays, mode, where))


def _check_indices(model: onnx.ModelProto, arrays: Mapping[str, np.ndarray], where: str) -> None:
    """Integer inputs that index a constant table (``Gather(table, ids)``: token ids into an
    embedding) must lie inside it; onnxruntime would stop with an error deep in a run."""
    tables = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "Gather" or len(node.input) < 2 or node.input[1] not in arrays:
            continue
        table = tables.get(node.input[0])
        arr = arrays[node.input[1]]
        if table is None or arr.dtype.kind not in "iu" or arr.size == 0:
            continue
        rows = int(table.dims[int(attr(node, "axis", 0))])
        lo, hi = int(arr.min()), int(arr.max())
        if lo < -rows or hi >= rows:
            bad = hi if hi >= rows else lo
            raise CalibrationError(f"{where}: '{node.input[1]}' holds the index {bad}, outside "
                                   f"the table '{node.input[0]}' it looks up ({rows} rows: "
                                   f"0 … {rows - 1}); tokenize with the model's own vocabulary")


def _token_mask(option: str | None, arrays: Mapping[str, np.ndarray], mode: str,
                where: str) -> str | None:
    if option is None or option == "none":
        return None

    def fits(arr: np.ndarray) -> bool:
        return (mode != "unbatched" and arr.ndim == 2 and arr.dtype.kind in "biuf"
                and bool(np.all((arr == 0) | (arr == 1))))

    if option == "auto":
        return next((k for k in arrays if k.lower() in TOKEN_MASK_NAMES and fits(arrays[k])),
                    None)
    if option not in arrays:
        raise CalibrationError(f"--token-mask '{option}' is not an input of the model (inputs: "
                               f"{', '.join(repr(k) for k in arrays)}); name the attention-mask "
                               "input, or give 'none'")
    if not fits(arrays[option]):
        raise CalibrationError(f"{where}: --token-mask input '{option}' must be a batched "
                               f"(N, seq) array of 0/1 values, got shape {arrays[option].shape}; "
                               "name the attention-mask input, or give 'none'")
    return option


def _fmt_dim(d) -> str:
    return str(d) if isinstance(d, int) and d > 0 else (d if isinstance(d, str) else "?")


def _fmt(shape) -> str:
    return "(" + ", ".join(_fmt_dim(d) for d in shape) + ")"
