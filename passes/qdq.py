"""Quantized (QDQ) models: lift the quantized weights to float for the analysis and the solvers,
and quantize them again, in the layer's own scheme, once the model is pruned.

A QDQ model stores a weight as integers ``q`` with a scale ``s`` and a zero point ``z`` and
computes with ``w = (q − z)·s`` (``DequantizeLinear``: per tensor, or per channel along
``axis``). Activations pass through ``QuantizeLinear → DequantizeLinear`` pairs; the channel
rules follow those like any per-channel op (:mod:`onnxprune.rules`).

**Lift** (:func:`lift`, the first step of NormalizePass). Every ``DequantizeLinear`` whose inputs
are all constants becomes a float initializer named as its output, holding ``w`` exactly (the
float32 product onnxruntime computes). A :class:`QuantizedWeight` keeps the original tensors and
the scheme. Blocked (``block_size``) and 4-bit/8-bit-float storage are not lifted: those
DequantizeLinear nodes stay, and a layer reading one is unprunable with the reason.

**Lower** (:class:`QdqLowerPass`, after the rewrite). Each lifted weight still in the model, and
each private copy the rewrite made of it (named ``name__…``), is quantized again. With
``R₊ = max(q − z)`` and ``R₋ = max(z − q)`` over the original integers (the range the quantizer
used; onnxruntime's symmetric int8 weights: 127 and 127):

* a tensor with the bytes it was lifted with gets its original ``q, s, z`` back, bit for bit;
* per tensor: ``s`` and ``z`` are kept unless the new values leave ``[−R₋·s, R₊·s]``; then
  ``s = max(max w / R₊, −min w / R₋)``;
* per channel (along ``axis``): a channel equal to an original one keeps its ``q, s, z``; a
  changed (re-fitted) channel keeps the zero point and gets
  ``s_c = max(max w_c / R₊, −min w_c / R₋)``. When the original zero points differ between
  channels there is none to keep: ``s_c = (max − min)/(qmax − qmin)`` over the channel's values
  and 0, ``z_c = round(qmin − min/s_c)``;
* ``q = clip(round(w / s) + z, qmin, qmax)``, rounding half to even as ``QuantizeLinear`` does.

A bias stored as int32 at ``s_b = s_x·s_w`` (the input's activation scale times the weight's:
onnxruntime's integer Conv/Gemm kernels add ``q_b`` to the accumulator unscaled, so the relation
is part of the model's meaning) keeps it with the new weight scale: ``s_b = s_x·s_w'``,
``q_b = round(b / s_b)``.

Fidelity of a pruned QDQ model is measured against the quantized input as onnxruntime runs it
(integer kernels), or against a float original given as ``reference``.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from onnxprune import weights
from onnxprune.errors import ModelError
from onnxprune.graph import attr
from onnxprune.passbase import Pass, PassResult

#: Integer storage types the lift handles (onnx element type → numpy dtype).
_INT_TYPES = {onnx.TensorProto.INT8: np.int8, onnx.TensorProto.UINT8: np.uint8,
              onnx.TensorProto.INT16: np.int16, onnx.TensorProto.UINT16: np.uint16,
              onnx.TensorProto.INT32: np.int32}
_BIAS_USERS = ("Conv", "ConvTranspose", "Gemm")


def operator_format(model: onnx.ModelProto) -> None:
    """Raise :class:`ModelError` for a model quantized in the operator format (integer ops such
    as QLinearConv, ConvInteger, MatMulInteger carrying their weights) that leaves the analysis
    nothing to prune: those ops compute on integers and have no channel rule."""
    ops = sorted({n.op_type for n in model.graph.node
                  if n.op_type.startswith("QLinear") or n.op_type in _INTEGER_OPS})
    if ops:
        raise ModelError(f"the model is quantized in the operator format ({', '.join(ops)}), "
                         "which onnxprune does not prune; prune the float original, or quantize "
                         "it in the QDQ format (onnxruntime.quantization: "
                         "quant_format=QuantFormat.QDQ) and prune that")


_INTEGER_OPS = {"ConvInteger", "MatMulInteger", "QGemm", "DynamicQuantizeMatMul",
                "MatMulIntegerToFloat", "QAttention", "QEmbedLayerNormalization"}


def _digest(a: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(a).tobytes(), digest_size=16).digest()


@dataclass(frozen=True, eq=False)
class QuantizedWeight:
    """A lifted ``DequantizeLinear`` of constants: the float tensor ``name`` and how it was
    stored."""

    name: str
    node: onnx.NodeProto  # the DequantizeLinear, as it was
    tensors: tuple[onnx.TensorProto, ...]  # its constant inputs q, s[, z], as they were
    #                                        (the float form: s[, z] only)
    q: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray  # broadcast like ``scale``
    axis: int | None  # per-channel axis (normalised); None per tensor
    digest: bytes  # of the lifted float values
    channels: dict = field(default_factory=dict)  # digest of a lifted channel → its index
    x_scale: np.ndarray | None = None  # a Conv/Gemm bias at s_x·s_w: s_x
    # the float form: the QuantizeLinear of a float weight feeding the DequantizeLinear, and
    # its constant inputs (the weight first), as they were
    q_node: onnx.NodeProto | None = None
    q_tensors: tuple[onnx.TensorProto, ...] = ()

    @property
    def qrange(self) -> tuple[int, int]:
        info = np.iinfo(self.q.dtype)
        return int(info.min), int(info.max)

    @property
    def spans(self) -> tuple[int, int]:
        """(R₊, R₋): how far above and below the zero point the original integers reach."""
        z = self._z_full()
        d = self.q.astype(np.int64) - z
        return max(int(d.max(initial=0)), 1), max(int((-d).max(initial=0)), 1)

    def _z_full(self) -> np.ndarray:
        return _along(self.zero_point.astype(np.int64), self.axis, self.q.ndim)


def _along(v: np.ndarray, axis: int | None, ndim: int) -> np.ndarray:
    """A scale or zero point (one value per tensor, or one per index of ``axis``) shaped to
    broadcast against a tensor of ``ndim`` axes."""
    if axis is None:
        return v.reshape(())
    shape = [1] * ndim
    shape[axis] = -1
    return v.reshape(shape)


def _dequantize(q: np.ndarray, s: np.ndarray, z: np.ndarray, axis: int | None) -> np.ndarray:
    """``(q − z)·s`` in float32, broadcast along ``axis`` (what onnxruntime computes)."""
    s, z = _along(s, axis, q.ndim), _along(z, axis, q.ndim)
    return ((q.astype(np.int64) - z.astype(np.int64)).astype(np.float32) * s).astype(s.dtype)


def lift(model: onnx.ModelProto, nodes: list[onnx.NodeProto]
         ) -> tuple[list[onnx.NodeProto], tuple[QuantizedWeight, ...]]:
    """Replace every liftable ``DequantizeLinear`` of constants in ``nodes`` (of ``model``,
    whose initializers gain the float values) by an initializer; return the remaining nodes and
    the records (module docstring)."""
    g = model.graph
    overridable = {i.name for i in g.input}
    inits = {t.name: t for t in g.initializer if t.name not in overridable}
    producers = {o: n for n in nodes for o in n.output}
    readers: dict[str, int] = {}
    for n in nodes:
        for x in n.input:
            readers[x] = readers.get(x, 0) + 1
    for o in g.output:
        readers[o.name] = readers.get(o.name, 0) + 1
    records: dict[str, QuantizedWeight] = {}
    values: dict[str, np.ndarray] = {}
    for n in nodes:
        found = _liftable(n, inits, producers, readers)
        if found is not None:
            rec, values[rec.name] = found
            records[rec.name] = rec
    if not records:
        return nodes, ()
    fake = {r.q_node.output[0] for r in records.values() if r.q_node is not None}
    kept = [n for n in nodes if not (n.op_type == "DequantizeLinear" and n.output[0] in records)
            and not (n.op_type == "QuantizeLinear" and n.output[0] in fake)]
    for n in kept:  # int32 biases of Conv/Gemm at s_x·s_w
        if n.op_type in _BIAS_USERS and len(n.input) > 2 and n.input[2] in records:
            xs = _bias_relation(records[n.input[2]], records.get(n.input[1]),
                                producers.get(n.input[0]), inits)
            if xs is not None:
                records[n.input[2]] = dataclasses.replace(records[n.input[2]], x_scale=xs)
    used = {x for n in kept for x in n.input} | {o.name for o in g.output}
    for name in records:
        g.initializer.append(numpy_helper.from_array(values.pop(name), name))
    # the integer (or float) tensors, scales and zero points nobody reads any more
    dead = {t.name for r in records.values() for t in r.tensors + r.q_tensors} - used
    live = [t for t in g.initializer if t.name not in dead]
    del g.initializer[:]
    g.initializer.extend(live)
    return kept, tuple(records[k] for k in sorted(records))


def _quantize_linear(w: np.ndarray, s: np.ndarray, z: np.ndarray, axis: int | None
                     ) -> np.ndarray:
    """``QuantizeLinear`` as onnxruntime computes it: saturate(round(w / s) + z), in float32,
    rounding half to even."""
    s, z = _along(s, axis, w.ndim), _along(z, axis, w.ndim)
    info = np.iinfo(z.dtype)
    q = np.rint((w / s).astype(np.float32)).astype(np.float64) + z.astype(np.float64)
    return np.clip(q, info.min, info.max).astype(z.dtype)


def _liftable(n: onnx.NodeProto, inits: dict, producers: dict, readers: dict
              ) -> tuple[QuantizedWeight, np.ndarray] | None:
    """The record of ``n`` and its float value, if ``n`` is a ``DequantizeLinear`` of constants
    the lift handles: of stored integers, or of the ``QuantizeLinear`` of a float weight (fake
    quantization, as torch exports it) with the same scale and zero point."""
    if n.op_type != "DequantizeLinear" or n.domain not in ("", "ai.onnx"):
        return None
    ins = list(n.input) + [""] * (3 - len(n.input))
    q_node = producers.get(ins[0])
    if ins[0] in inits:
        q_node = None
    elif not (q_node is not None and q_node.op_type == "QuantizeLinear"
              and q_node.domain in ("", "ai.onnx") and readers.get(ins[0], 0) == 1
              and len(q_node.input) > 1 and all(x in inits for x in q_node.input if x)
              and not attr(q_node, "block_size", 0) and attr(q_node, "output_dtype", 0) == 0
              and attr(q_node, "axis", 1) == attr(n, "axis", 1)):
        return None
    if not all(x in inits for x in ins[1:] if x) or attr(n, "block_size", 0):
        return None
    s = np.asarray(weights.to_array(inits[ins[1]]))
    if s.dtype not in (np.float32, np.float16, np.float64) or not np.all(s > 0):
        return None
    if q_node is None:
        if inits[ins[0]].data_type not in _INT_TYPES:
            return None
        q = weights.to_array(inits[ins[0]])
        z = (np.asarray(weights.to_array(inits[ins[2]])) if ins[2]
             else np.zeros(s.shape, dtype=q.dtype))
    else:
        qi = list(q_node.input) + [""] * (3 - len(q_node.input))
        z = (np.asarray(weights.to_array(inits[ins[2]])) if ins[2]
             else np.zeros(s.shape, dtype=np.uint8))
        zq = (np.asarray(weights.to_array(inits[qi[2]])) if qi[2]
              else np.zeros(s.shape, dtype=np.uint8))
        sq = np.asarray(weights.to_array(inits[qi[1]]))
        w = np.asarray(weights.to_array(inits[qi[0]]))
        if (w.dtype != s.dtype or z.dtype.type not in _INT_TYPES.values() or z.dtype != zq.dtype
                or not np.array_equal(sq, s) or not np.array_equal(zq, z)):
            return None
        q = None  # computed below, once the axis is known
    axis = None
    ndim = q.ndim if q is not None else w.ndim
    dim = q.shape if q is not None else w.shape
    if s.size > 1:  # per channel
        a = int(attr(n, "axis", 1))
        axis = a + ndim if a < 0 else a
        if s.ndim != 1 or not 0 <= axis < ndim or dim[axis] != s.size or z.size != s.size:
            return None
    elif z.size != 1:
        return None
    if q is None:
        q = _quantize_linear(w, s, z, axis)
    value = _dequantize(q, s, z, axis)
    channels = {}
    if axis is not None:
        for c in range(q.shape[axis]):
            channels.setdefault(_digest(np.take(value, c, axis=axis)), c)

    def copy(msg):
        return type(msg).FromString(msg.SerializeToString())

    return QuantizedWeight(
        name=n.output[0], node=copy(n), tensors=tuple(copy(inits[x]) for x in ins if x and (
            q_node is None or x != ins[0])),
        q=q, scale=s, zero_point=z.reshape(s.shape), axis=axis, digest=_digest(value),
        channels=channels, q_node=None if q_node is None else copy(q_node),
        q_tensors=() if q_node is None else tuple(copy(inits[x]) for x in q_node.input if x)
    ), value


def _bias_relation(bias: QuantizedWeight, weight: QuantizedWeight | None,
                   x_dq: onnx.NodeProto | None, inits: dict) -> np.ndarray | None:
    """``s_x`` when ``bias`` (int32) is stored at ``s_x·s_w`` (``s_x`` the scalar scale of the
    ``DequantizeLinear`` feeding the layer), else None."""
    if (bias.q.dtype != np.int32 or weight is None or x_dq is None
            or x_dq.op_type != "DequantizeLinear" or x_dq.input[1] not in inits):
        return None
    xs = np.asarray(weights.to_array(inits[x_dq.input[1]]))
    if xs.size != 1:
        return None
    expected = (xs.reshape(()) * weight.scale).astype(bias.scale.dtype)
    if expected.size not in (1, bias.scale.size):
        return None
    ok = np.allclose(np.broadcast_to(expected, bias.scale.shape), bias.scale, rtol=1e-5, atol=0)
    return xs.reshape(()) if ok else None


# -- lowering --------------------------------------------------------------------------------

def requantize(rec: QuantizedWeight, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(q, s, z)`` of the float weight ``w`` in ``rec``'s scheme (module docstring)."""
    qmin, qmax = rec.qrange
    up, down = rec.spans
    if rec.axis is None:
        s, z = rec.scale.astype(np.float64).reshape(()), rec.zero_point.astype(np.int64)
        hi, lo = float(w.max(initial=0)), float(w.min(initial=0))
        if hi > up * s or -lo > down * s:
            s = np.float64(max(hi / up, -lo / down))
        s = np.asarray(s, dtype=rec.scale.dtype).reshape(rec.scale.shape)
        q = _round_clip(w / s.astype(np.float64).reshape(()) + z.reshape(()), qmin, qmax)
        return q.astype(rec.q.dtype), s, rec.zero_point.copy()
    n = w.shape[rec.axis]
    s = np.empty(n, dtype=rec.scale.dtype)
    z = np.empty(n, dtype=rec.zero_point.dtype)
    q = np.empty(w.shape, dtype=rec.q.dtype)
    uniform = bool(np.all(rec.zero_point == rec.zero_point.flat[0])) if rec.zero_point.size else True
    for j in range(n):
        wj = np.take(w, j, axis=rec.axis)
        c = rec.channels.get(_digest(wj))
        if c is not None and np.take(rec.q, c, axis=rec.axis).shape == wj.shape:
            s[j], z[j] = rec.scale[c], rec.zero_point[c]
            qj = np.take(rec.q, c, axis=rec.axis)
        else:
            hi, lo = float(wj.max(initial=0)), float(wj.min(initial=0))
            if uniform:
                zj = int(rec.zero_point.flat[0]) if rec.zero_point.size else 0
                sj = max(hi / up, -lo / down)
            else:
                sj = (hi - lo) / (qmax - qmin)
                zj = int(np.clip(np.rint(qmin - lo / sj), qmin, qmax)) if sj > 0 else 0
            if not sj > 0:  # an all-zero channel: any scale; keep the smallest original one
                sj = float(rec.scale.min())
            s[j], z[j] = sj, zj
            qj = _round_clip(wj / np.float64(s[j]) + zj, qmin, qmax).astype(rec.q.dtype)
        idx = [slice(None)] * w.ndim
        idx[rec.axis] = j
        q[tuple(idx)] = qj
    return q, s, z


def _round_clip(x: np.ndarray, lo: int, hi: int) -> np.ndarray:
    return np.clip(np.rint(x), lo, hi)


class QdqLowerPass(Pass):
    """Quantize the lifted weights again (module docstring); without records the model passes
    through unchanged."""

    name = "qdq-lower"

    def __init__(self, records: tuple[QuantizedWeight, ...]) -> None:
        self.records = {r.name: r for r in records}

    def origin(self, name: str) -> QuantizedWeight | None:
        """The record ``name`` is, or is a private copy of (``name__…``, the longest match)."""
        if name in self.records:
            return self.records[name]
        hits = [r for r in self.records.values() if name.startswith(r.name + "__")]
        return max(hits, key=lambda r: len(r.name)) if hits else None

    def call(self, model: onnx.ModelProto) -> PassResult:
        if not self.records:
            return PassResult(model, False)
        m = onnx.ModelProto()
        m.CopyFrom(model)
        g = m.graph
        inits = {t.name: t for t in g.initializer}
        reserved = set(inits) | {x for n in g.node for x in list(n.input) + list(n.output)} | {
            n.name for n in g.node} | {t.name for r in self.records.values()
                                       for t in r.tensors + r.q_tensors} | {
            x for r in self.records.values() if r.q_node is not None
            for x in list(r.q_node.output) + [r.q_node.name]}
        bias_weight = {n.input[2]: n.input[1] for n in g.node
                       if n.op_type in _BIAS_USERS and len(n.input) > 2 and n.input[2]}
        lifted = [(t.name, self.origin(t.name)) for t in g.initializer]
        # weights before biases: a bias at s_x·s_w needs its weight's new scale
        todo = sorted([(name, r) for name, r in lifted if r is not None],
                      key=lambda p: (p[1].x_scale is not None, p[0]))
        scales: dict[str, tuple[np.ndarray, bool]] = {}  # weight → (its scale, unchanged)
        made: dict[str, list[onnx.NodeProto]] = {}  # [QuantizeLinear,] DequantizeLinear by
        #                                                the tensor they make
        new_inits: list[onnx.TensorProto] = []
        for name, rec in todo:
            w = weights.to_array(inits[name])
            unchanged = w.shape == rec.q.shape and _digest(w) == rec.digest
            ws = scales.get(bias_weight.get(name, ""))
            if rec.x_scale is not None and ws is not None:
                unchanged = unchanged and ws[1]
                qsz = None if unchanged else self._bias(rec, w, ws[0])
            else:
                qsz = None if unchanged else requantize(rec, w)
            scales[name] = (rec.scale if unchanged else qsz[1], unchanged)
            tensors, made[name] = self._stored(rec, name, w, qsz, reserved)
            new_inits.extend(tensors)
        have = set()
        kept_inits = []
        for t in [t for t in g.initializer if t.name not in made] + new_inits:
            if t.name not in have:  # original scales / zero points shared by several: once
                kept_inits.append(t)
                have.add(t.name)
        del g.initializer[:]
        g.initializer.extend(kept_inits)
        nodes, placed = [], set()
        for n in g.node:  # each DequantizeLinear right before the first node reading it
            for x in n.input:
                if x in made and x not in placed:
                    nodes.extend(made[x])
                    placed.add(x)
            nodes.append(n)
        for x in sorted(made):  # made for graph outputs only
            if x not in placed:
                nodes.extend(made[x])
        del g.node[:]
        g.node.extend(nodes)
        return PassResult(m, True)

    @staticmethod
    def _bias(rec: QuantizedWeight, b: np.ndarray, w_scale: np.ndarray):
        """``(q, s, z)`` of a bias kept at ``s_x·s_w``."""
        s = (rec.x_scale.astype(np.float64) * w_scale.astype(np.float64)).astype(rec.scale.dtype)
        if s.size == 1:  # a per-tensor weight scale: the bias scale keeps its own form
            s = s.reshape(rec.scale.shape) if rec.scale.size == 1 else np.full(
                b.shape, s.reshape(()), dtype=s.dtype)  # one per (kept) bias entry
        q = _round_clip(b / s.astype(np.float64).reshape(s.shape if s.size > 1 else ()),
                        *rec.qrange).astype(rec.q.dtype)
        return q, s, np.zeros(s.shape, dtype=rec.zero_point.dtype)

    @staticmethod
    def _stored(rec: QuantizedWeight, name: str, w: np.ndarray, qsz, reserved: set
                ) -> tuple[list[onnx.TensorProto], list[onnx.NodeProto]]:
        """The constants and the nodes ([QuantizeLinear,] DequantizeLinear) that make float
        tensor ``name``: the original ones when ``qsz`` is None, else new ones under fresh
        names. The float form stores the float weight ``w`` itself, quantized at run time."""
        def copy(msg):
            return type(msg).FromString(msg.SerializeToString())

        def fresh(base: str) -> str:
            cand, k = base, 1
            while cand in reserved:
                cand, k = f"{base}_{k}", k + 1
            reserved.add(cand)
            return cand

        dq = copy(rec.node)
        dq.output[0] = name
        qn = None if rec.q_node is None else copy(rec.q_node)
        nodes = [dq] if qn is None else [qn, dq]
        if qsz is None and name == rec.name:
            return [copy(t) for t in rec.tensors + rec.q_tensors], nodes
        suffix = name[len(rec.name):] or "__pruned"
        if qsz is None:  # an unchanged private copy: the original values under new names
            qsz = (rec.q, rec.scale, rec.zero_point)
        q, sc, z = qsz
        tensors = []

        def put(node: onnx.NodeProto, i: int, value) -> None:
            if i < len(node.input) and node.input[i]:
                t = numpy_helper.from_array(np.asarray(value, order="C"),  # 0-d stays 0-d
                                            fresh(node.input[i] + suffix))
                tensors.append(t)
                node.input[i] = t.name

        put(dq, 1, sc)
        put(dq, 2, z)
        if qn is None:
            put(dq, 0, q)
        else:  # the QuantizeLinear reads the new float weight and the DequantizeLinear's s, z
            put(qn, 0, w.astype(weights.to_array(rec.q_tensors[0]).dtype))
            for i in (1, 2):
                if i < len(qn.input) and qn.input[i]:
                    qn.input[i] = dq.input[i]
            if name != rec.name:
                qn.output[0] = fresh(qn.output[0] + suffix)
                dq.input[0] = qn.output[0]
        if name != rec.name:
            for n in nodes:
                n.name = fresh(n.name + suffix)
        return tensors, nodes
