"""The per-op channel rule registry: the only place that knows how a channel axis flows through
each ONNX op. Adding an op is adding one entry to ``REGISTRY``.
The rules themselves live by op family in :mod:`~onnxprune.rules.base` (generic rules),
:mod:`~onnxprune.rules.layers` (Conv, ConvTranspose, recurrent, Gemm, MatMul),
:mod:`~onnxprune.rules.layout_ops` and :mod:`~onnxprune.rules.reshape`.

A rule has two halves:

* ``analyze(node, ctx)`` — reads input layouts from the :class:`~onnxprune.analysis.AnalysisContext`
  and declares producers, output layouts, joins, consumers, or stops (unprunable, with a reason);
* ``rewrite(node, rw)`` — given the kept channel positions of the node's tensors
  (``rw.keep(name)``, None when unchanged), slices per-channel constants and patches attributes and
  shape constants.

Consumer rules (Conv, Gemm, MatMul) additionally expose the layer as a linear map for the solver:
``weight_matrix`` (m × C·g, the effective weight), ``rows`` (the input laid out as rows × C·g) and
``write_weights`` (store a re-fitted matrix and bias change back in the op's own layout).
"""

from __future__ import annotations

import onnx

from onnxprune.rules.base import (
    Elementwise, LayerNorm, OnData, PassThrough, PerChannelParams, Pool, QuantizeLinear, Reduce,
    Rule, Softmax, output_scale,
)
from onnxprune.rules.layers import Conv, ConvTranspose, Gemm, MatMul, Recurrent
from onnxprune.rules.layout_ops import (
    Concat, Flatten, Pad, Resize, Slice, Split, Squeeze, Transpose, Unsqueeze,
)
from onnxprune.rules.reshape import Expand, Reshape, ShapeOp

_UNARY = (
    "Relu LeakyRelu Sigmoid HardSigmoid HardSwish Tanh Elu Selu Celu ThresholdedRelu Softplus "
    "Softsign Erf Gelu Mish Exp Log Sqrt Reciprocal Neg Abs Floor Ceil Round Sign Sin Cos "
    "Identity Cast IsNaN IsInf Not Shrink Swish"
).split()
_ELEMENTWISE = ("Add Sub Mul Div Pow PRelu Max Min Sum Mean Equal Less Greater And Or Mod "
                "Where").split()
_REDUCE = ("ReduceMean ReduceSum ReduceMax ReduceMin ReduceProd ReduceL1 ReduceL2 ReduceLogSum "
           "ReduceLogSumExp ReduceSumSquare ArgMax ArgMin").split()
_POOL = "MaxPool AveragePool LpPool GlobalAveragePool GlobalMaxPool GlobalLpPool".split()

REGISTRY: dict[tuple[str, str], Rule] = {}
for _op in _UNARY:
    REGISTRY[("", _op)] = PassThrough()
REGISTRY[("", "Clip")] = PassThrough(data_inputs=(0,))
REGISTRY[("", "Dropout")] = PassThrough(data_inputs=(0,))
REGISTRY[("", "CastLike")] = PassThrough(data_inputs=(0,))
for _op in _ELEMENTWISE:
    REGISTRY[("", _op)] = Elementwise()
for _op in _REDUCE:
    REGISTRY[("", _op)] = Reduce()
for _op in _POOL:
    REGISTRY[("", _op)] = Pool()
REGISTRY.update({
    ("", "BatchNormalization"): PerChannelParams(param_inputs=(1, 2, 3, 4)),
    ("", "InstanceNormalization"): PerChannelParams(param_inputs=(1, 2)),
    ("", "LayerNormalization"): LayerNorm(),
    ("", "QuantizeLinear"): QuantizeLinear(),
    ("", "DequantizeLinear"): QuantizeLinear(),
    ("", "Conv"): Conv(),
    ("", "ConvTranspose"): ConvTranspose(),
    ("", "LSTM"): Recurrent(),
    ("", "GRU"): Recurrent(),
    ("", "RNN"): Recurrent(),
    ("", "Gemm"): Gemm(),
    ("", "MatMul"): MatMul(),
    ("", "Resize"): Resize(),
    ("", "Upsample"): Resize(),
    ("", "Pad"): Pad(),
    ("", "Concat"): Concat(),
    ("", "Split"): Split(),
    ("", "Slice"): Slice(),
    ("", "Flatten"): Flatten(),
    ("", "Reshape"): Reshape(),
    ("", "Expand"): Expand(),
    ("", "Transpose"): Transpose(),
    ("", "Squeeze"): Squeeze(),
    ("", "Unsqueeze"): Unsqueeze(),
    ("", "Shape"): ShapeOp(),
    ("", "Softmax"): Softmax(),
    ("", "LogSoftmax"): Softmax(),
    ("", "Hardmax"): Softmax(),
})
for _op in ("QuickGelu", "FastGelu", "Gelu"):  # onnxruntime contrib ops seen in exports
    REGISTRY[("com.microsoft", _op)] = PassThrough()

CONSUMER_KINDS = {"conv": Conv, "gemm": Gemm, "matmul": MatMul}


def rule_for(node: onnx.NodeProto) -> Rule | None:
    domain = node.domain if node.domain not in ("ai.onnx",) else ""
    return REGISTRY.get((domain, node.op_type))


__all__ = ["REGISTRY", "CONSUMER_KINDS", "OnData", "Rule", "output_scale", "rule_for"]
