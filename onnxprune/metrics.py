"""Model size and cost: parameter count and multiply-accumulates per sample.

MACs are counted for the ops that dominate inference cost, from statically inferred shapes with
the batch dimension set to 1 (dynamic dims take the calibration sample's size):

* Conv:          |Y| · (C_in / group) · k₁⋯k_n
* ConvTranspose: |X| · (C_out / group) · k₁⋯k_n
* Gemm / MatMul: |Y| · K   (K the contracted dimension)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import onnx

from onnxprune.graph import Graph, attr

log = logging.getLogger(__name__)

_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                onnx.TensorProto.BFLOAT16}


def count_params(model: onnx.ModelProto) -> int:
    """Number of floating-point weights stored in the model's initializers."""
    return int(sum(int(np.prod(t.dims)) for t in model.graph.initializer
                   if t.data_type in _FLOAT_TYPES))


def fix_input_shapes(model: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]]
                     ) -> onnx.ModelProto:
    """Copy of ``model`` with graph inputs set to concrete shapes and stale value_info dropped."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for vi in m.graph.input:
        if vi.name in shapes:
            dims = vi.type.tensor_type.shape.dim
            for d, v in zip(dims, shapes[vi.name]):
                d.Clear()
                d.dim_value = int(v)
    del m.graph.value_info[:]
    return m


def count_macs(model: onnx.ModelProto, input_shapes: Mapping[str, tuple[int, ...]]) -> int:
    g = Graph(fix_input_shapes(model, input_shapes))
    total = 0
    for node in g.nodes:
        try:
            if node.op_type == "Conv":
                y = g.static_shape(node.output[0])
                w = g.static_shape(node.input[1])
                total += int(np.prod(y[1:])) * int(np.prod(w[1:]))
            elif node.op_type == "ConvTranspose":
                x = g.static_shape(node.input[0])
                w = g.static_shape(node.input[1])
                total += int(np.prod(x[1:])) * int(np.prod(w[1:]))
            elif node.op_type == "Gemm":
                y = g.static_shape(node.output[0])
                a = g.static_shape(node.input[0])
                k = a[0] if attr(node, "transA", 0) else a[1]
                total += int(np.prod(y)) * int(k)
            elif node.op_type == "MatMul":
                y = g.static_shape(node.output[0])
                a = g.static_shape(node.input[0])
                total += int(np.prod(y)) * int(a[-1])
        except (TypeError, IndexError):
            log.debug("no static shape for %s; its MACs are not counted", node.name)
    return total


def per_sample_shapes(model: onnx.ModelProto, arrays: Mapping[str, np.ndarray], mode: str
                      ) -> dict[str, tuple[int, ...]]:
    """Concrete input shapes of one sample (batch 1) from calibration arrays."""
    out = {}
    for name, arr in arrays.items():
        out[name] = tuple(arr.shape[1:]) if mode == "unbatched" else (1,) + tuple(arr.shape[1:])
    return out
