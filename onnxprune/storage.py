"""What a sparse model costs to store and ship.

* ``nonzeros``: non-zero elements of the floating-point initializers (what sparse kernels or a
  compressed format have to keep);
* ``dense_bytes``: the serialized model (weights included, as onnx writes it);
* ``gzip_bytes``: that file gzip-compressed (level 9, no timestamp: deterministic) — runs of
  zeros compress, random mantissas hardly do;
* ``sparse_bytes``: the model with every weight that is smaller that way stored as an ONNX
  ``sparse_initializer`` (COO: the non-zero values plus their int64 linear positions, so it pays
  from a density below 1/3 for float32). onnxruntime loads such models (it densifies them when
  the session is created): :func:`to_sparse_initializers` writes them.
"""

from __future__ import annotations

import gzip

import numpy as np
import onnx
from onnx import numpy_helper

from onnxprune import weights
from onnxprune.metrics import _FLOAT_TYPES


def nonzeros(model: onnx.ModelProto) -> int:
    """Non-zero elements of the floating-point initializers (dense and sparse)."""
    n = 0
    for t in model.graph.initializer:
        if t.data_type in _FLOAT_TYPES:
            n += int(np.count_nonzero(weights.to_array(t)))
    for sp in model.graph.sparse_initializer:
        if sp.values.data_type in _FLOAT_TYPES:
            n += int(np.count_nonzero(numpy_helper.to_array(sp.values)))
    return n


def _sparse_is_smaller(arr: np.ndarray) -> bool:
    nnz = int(np.count_nonzero(arr))
    return arr.ndim >= 1 and nnz * (arr.itemsize + 8) < arr.size * arr.itemsize


def to_sparse_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose floating-point initializers that are smaller as COO sparse
    tensors (linear int64 indices) are stored as ``sparse_initializer``."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    keep, sparse = [], []
    for t in out.graph.initializer:
        arr = weights.to_array(t) if t.data_type in _FLOAT_TYPES else None
        if arr is None or not _sparse_is_smaller(arr):
            keep.append(t)
            continue
        flat = arr.reshape(-1)
        idx = np.flatnonzero(flat)
        values = numpy_helper.from_array(flat[idx], t.name)
        indices = numpy_helper.from_array(idx.astype(np.int64), f"{t.name}_indices")
        sparse.append(onnx.helper.make_sparse_tensor(values, indices, list(arr.shape)))
    del out.graph.initializer[:]
    out.graph.initializer.extend(keep)
    out.graph.sparse_initializer.extend(sparse)
    return out


def sizes(model: onnx.ModelProto) -> dict[str, int]:
    """``dense_bytes``, ``gzip_bytes`` and ``sparse_bytes`` of ``model`` (module docstring)."""
    data = model.SerializeToString()
    return {"dense_bytes": len(data),
            "gzip_bytes": len(gzip.compress(data, compresslevel=9, mtime=0)),
            "sparse_bytes": to_sparse_initializers(model).ByteSize()}
