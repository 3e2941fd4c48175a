"""Model size and cost: parameter count and multiply-accumulates per sample.

MACs are counted for the ops that dominate inference cost, from statically inferred shapes with
the batch dimension set to 1 (dynamic dims take the calibration sample's size):

* Conv:          |Y| · (C_in / group) · k₁⋯k_n
* ConvTranspose: |X| · (C_out / group) · k₁⋯k_n
* Gemm / MatMul: |Y| · K   (K the contracted dimension)
* LSTM / GRU / RNN: (T·N) · dirs · gates·hidden · (input + hidden)  (``W`` and ``R`` per step)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import onnx

from onnxprune import weights
from onnxprune.graph import Graph, attr

log = logging.getLogger(__name__)

_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                onnx.TensorProto.BFLOAT16}


def count_params(model: onnx.ModelProto) -> int:
    """Number of weights stored in the model's initializers: the floating-point ones and the
    quantized ones (integers a ``DequantizeLinear`` reads); scales and zero points of
    quantization are not counted. A quantized model and its float form count alike."""
    quant = ("QuantizeLinear", "DequantizeLinear")
    scales = {x for n in model.graph.node if n.op_type in quant for x in n.input[1:3]}
    stored = {n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    return int(sum(int(np.prod(t.dims)) for t in model.graph.initializer
                   if t.name not in scales and (t.data_type in _FLOAT_TYPES or t.name in stored)))


def fix_input_shapes(model: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]]
                     ) -> onnx.ModelProto:
    """Weight-free copy of ``model`` (:func:`weights.skeleton`: weights as typed inputs) with
    graph inputs set to concrete shapes and stale value_info dropped."""
    m = weights.skeleton(model, copy=True)
    for vi in m.graph.input:
        if vi.name in shapes:
            dims = vi.type.tensor_type.shape.dim
            for d, v in zip(dims, shapes[vi.name]):
                d.Clear()
                d.dim_value = int(v)
    del m.graph.value_info[:]
    return m


_MAC_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "LSTM", "GRU", "RNN")


def _runtime_shapes(model: onnx.ModelProto, input_shapes: Mapping[str, tuple[int, ...]],
                    names: list[str]) -> dict[str, tuple[int, ...]]:
    """Shapes of ``names`` from one onnxruntime run on placeholder inputs (zeros; ones for
    integer inputs such as token ids and masks) of ``input_shapes``."""
    from onnxprune.calibrate import session  # onnxruntime only when shapes are not static
    types = {vi.name: onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
             for vi in model.graph.input}
    feeds = {n: (np.ones if np.issubdtype(types[n], np.integer) else np.zeros)(shp, types[n])
             for n, shp in input_shapes.items() if n in types}
    try:
        sess = session(model, names)
        outs = sess.run(names, feeds)
    except Exception:  # noqa: BLE001 - placeholder inputs the model rejects: shapes stay unknown
        return {}
    return {n: tuple(np.shape(o)) for n, o in zip(names, outs)}


def count_macs(model: onnx.ModelProto, input_shapes: Mapping[str, tuple[int, ...]]) -> int:
    """Multiply-accumulates of one run at ``input_shapes`` (module docstring). Shapes come from
    ONNX shape inference; when it leaves some unknown (run-time shape arithmetic, e.g. attention
    reshapes), from one onnxruntime run on placeholder inputs."""
    g = Graph(fix_input_shapes(model, input_shapes))
    nodes = [n for n in g.nodes if n.op_type in _MAC_OPS]
    wanted = {x for n in nodes for x in (n.input[0], n.input[1], n.output[0])}
    shapes = {x: g.static_shape(x) for x in wanted}
    missing = sorted(x for x, v in shapes.items() if v is None or any(
        not isinstance(d, int) for d in v))
    consts = {x: np.shape(g.const(x)) for x in missing if g.const(x) is not None}
    shapes.update(consts)
    if len(consts) < len(missing):
        shapes.update(_runtime_shapes(model, input_shapes,
                                      [x for x in missing if x not in consts]))
    total = 0
    for node in nodes:
        try:
            if node.op_type == "Conv":
                y, w = shapes[node.output[0]], shapes[node.input[1]]
                total += int(np.prod(y[1:])) * int(np.prod(w[1:]))
            elif node.op_type == "ConvTranspose":
                x, w = shapes[node.input[0]], shapes[node.input[1]]
                total += int(np.prod(x[1:])) * int(np.prod(w[1:]))
            elif node.op_type in ("LSTM", "GRU", "RNN"):
                x, w = shapes[node.input[0]], shapes[node.input[1]]
                r = g.const(node.input[2])
                hidden = int(attr(node, "hidden_size", 0)) or int(np.shape(r)[-1])
                steps = int(np.prod(x[:-1]))  # T·N (either layout)
                total += steps * int(w[0]) * int(w[1]) * (int(w[2]) + hidden)
            elif node.op_type == "Gemm":
                y, a = shapes[node.output[0]], shapes[node.input[0]]
                k = a[0] if attr(node, "transA", 0) else a[1]
                total += int(np.prod(y)) * int(k)
            else:  # MatMul
                y, a = shapes[node.output[0]], shapes[node.input[0]]
                total += int(np.prod(y)) * int(a[-1])
        except (TypeError, IndexError, KeyError):
            log.debug("no shape for %s; its MACs are not counted", node.name)
    return total


def per_sample_shapes(model: onnx.ModelProto, arrays: Mapping[str, np.ndarray], mode: str
                      ) -> dict[str, tuple[int, ...]]:
    """Concrete input shapes of one sample (batch 1) from calibration arrays."""
    out = {}
    for name, arr in arrays.items():
        out[name] = tuple(arr.shape[1:]) if mode == "unbatched" else (1,) + tuple(arr.shape[1:])
    return out
