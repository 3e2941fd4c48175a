"""Canonical forms of the attention plumbing the torch exporters write (used by NormalizePass).

Each rewrite replaces a few nodes by fewer, simpler ones that compute exactly the same tensor, so
that the channel analysis sees head axes it can follow. Every match is proven with symbolic shapes
(:mod:`onnxprune.shapes`); anything not proven is left untouched (and may then be reported
unprunable by the analysis).

1. **Kᵀ through a batch merge** (dynamo's ``scaled_dot_product_attention`` decomposition)::

       Reshape(K, [-1, s, d]) → Transpose(0, 2, 1) → Reshape(·, [b, h, d, s])
       ⇒ Transpose(K, perm=[0, 1, 3, 2])                     (K: [b, h, s, d])

   The first Reshape merges batch and heads into one axis, which no channel layout can follow.

2. **Chunk of a fused projection** (``nn.MultiheadAttention``'s ``in_proj`` output
   ``X: [..., n·E]`` split into Q, K, V with ``unflatten(-1, (n, E)).unsqueeze(0).transpose(0, -2)
   .squeeze(-2)[i]``)::

       Reshape(X, [..., n, E]) → Unsqueeze → Transpose → Squeeze → Gather(i, axis=0)
       ⇒ Slice(X, starts=[i·E], ends=[(i+1)·E], axes=[-1])

   proven by tracking which axis of each intermediate tensor is the piece axis (size n) and
   that the others keep their order; the Gathers of one chunk become one Slice each.
   The timm / PaddleOCR layout splits the heads in the same Reshape and moves them::

       Reshape(X, [b, s, n, h, d]) → Transpose(2, 0, 3, 1, 4) → Gather(i, axis=0)
       ⇒ Slice(X, [i·h·d, (i+1)·h·d], axis −1) → Reshape(·, [0, 0, h, d]) → Transpose(0, 2, 1, 3)

   (the remaining axes in any order: the Transpose that restores it); the pieces may also be
   read as ``Slice(axis 0, [i, i+1]) → Squeeze(0)`` or ``Split(axis 0) → Squeeze(0)``
   (``unbind``).

3. **Heads merged with the batch** (``nn.MultiheadAttention``: ``q.view(s, b·h, d).transpose(0, 1)
   .view(b, h, s, d)``)::

       Reshape(X, [s, b·h, d]) → Transpose(1, 0, 2) → Reshape(·, [b, h, s, d])
       ⇒ Reshape(X, [0, 0, h, d]) → Transpose(perm=[1, 2, 0, 3])   (X: [s, b, h·d])

   element [b_, h_, s_, :] is X[s_, b_, h_·d : (h_+1)·d] on both sides.

4. **Split of a fused projection**: ``X·W (+ c)`` read only through Slices of disjoint column
   ranges (the Q, K, V chunks after rewrite 2) becomes one ``X·W[:, a:b] (+ c[a:b])`` per Slice
   (same numbers; separate Q, K, V projections whose heads the attention MatMuls tie together).

Nodes left without readers (the shape arithmetic of the replaced nodes) are removed.

**Quantized (QDQ) models.** onnxruntime's quantizer writes a per-tensor ``QuantizeLinear →
DequantizeLinear`` pair after every Reshape, Transpose, Squeeze … of this plumbing, all on the
grid (scale, zero point) of the tensor entering it. Values already on a grid come out of a pair
on that grid unchanged, so rewrites 1–3 step over such pairs and drop them with the nodes they
replace. Rewrite 4 gives every piece its own copy of the pairs between the MatMul, the Add and
the Slices (per-tensor: elementwise, so they commute with the column split), and names the
pieces of a lifted weight ``W__a_b`` so that ``QdqLowerPass`` quantizes them again.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import helper

from onnxprune.graph import all_inputs, attr
from onnxprune.passes.attention_edit import (Edit, axes_of, grid_of, perm_of, qdq_pair,
                                             remove_dead, reshape_transpose, reshapes,
                                             skip_pairs)
from onnxprune.shapes import Dim

log = logging.getLogger(__name__)


def _transpose_via_reshape(ed: Edit) -> int:
    count = 0
    se = ed.shapes
    for r1 in reshapes(ed):
        x = r1.input[0]
        found = reshape_transpose(ed, r1, [0, 2, 1])
        if found is None:
            continue
        t, y2, pairs = found
        r2 = ed.sole_user(y2)
        if r2 is None or r2.op_type != "Reshape" or not ed.free(r2):
            continue
        xd, d1, d2 = ed.dims(x), se.reshape_dims(r1), se.reshape_dims(r2)
        if xd is None or len(xd) != 4 or None in xd or d1 is None or d2 is None:
            continue
        if d1[1:] != [xd[2], xd[3]] or len(d1) != 3 or d2 != [xd[0], xd[1], xd[3], xd[2]]:
            continue
        if d1[0] is not None and d1[0] != xd[0] * xd[1]:
            continue
        new = helper.make_node("Transpose", [x], [r2.output[0]], name=r2.name, perm=[0, 1, 3, 2])
        ed.removed.update({ed.index(r1), ed.index(t)} | {ed.index(p) for p in pairs})
        ed.replaced[ed.index(r2)] = [new]
        count += 1
    return count


def _pieces(ed: Edit, cur: str, n: int) -> list[tuple[int, onnx.NodeProto, list]] | None:
    """How the pieces of ``cur`` (piece axis 0, size ``n``) are read: ``(index, node whose
    output is the piece, nodes replaced with it)`` for Gather(i, axis 0), Slice(axis 0, [i,
    i+1]) → Squeeze(0) or Split(axis 0, ones) → Squeeze(0); None for anything else."""
    g = ed.graph
    users = [u for u, _ in g.users(cur)]

    def squeeze0(t: str) -> onnx.NodeProto | None:
        s = ed.sole_user(t)
        ok = s is not None and s.op_type == "Squeeze" and axes_of(s, g, g.rank(t) or 0) == [0]
        return s if ok and ed.free(s) else None

    out = []
    if users and all(u.op_type == "Gather" for u in users):
        for u in users:
            v = g.const(u.input[1])
            if v is None or v.ndim != 0 or int(attr(u, "axis", 0)) != 0 or not ed.free(u):
                return None
            out.append((int(v) + n if int(v) < 0 else int(v), u, []))
        return out
    if users and all(u.op_type == "Slice" for u in users):
        for u in users:
            p = [g.const(x) if x else None for x in list(u.input[1:5])]
            if len(p) < 3 or any(x is None for x in p[:3]) or (len(p) > 3 and p[3] is not None
                                                                and p[3].reshape(-1).tolist() != [1]):
                return None
            (i,), (j,), (ax,) = (np.asarray(x).reshape(-1).tolist() for x in p[:3])
            s = squeeze0(u.output[0])
            if ax != 0 or i < 0 or j != i + 1 or i >= n or s is None or not ed.free(u):
                return None
            out.append((i, s, [u]))
        return out
    if len(users) == 1 and users[0].op_type == "Split" and len(users[0].output) == n:
        sp = users[0]
        sizes = g.const(sp.input[1]) if len(sp.input) > 1 and sp.input[1] else attr(sp, "split")
        if int(attr(sp, "axis", 0)) != 0 or (sizes is not None and
                                             np.asarray(sizes).reshape(-1).tolist() != [1] * n):
            return None
        for i, o in enumerate(sp.output):
            s = squeeze0(o)
            if s is None or not ed.free(sp):
                return None
            out.append((i, s, [sp]))
        return out
    return None


def _chunks(ed: Edit) -> int:
    """Rewrite 2 (see module docstring)."""
    count = 0
    g, se = ed.graph, ed.shapes
    for r in reshapes(ed):
        x = r.input[0]
        xd, od = ed.dims(x), se.reshape_dims(r)
        if xd is None or od is None or len(od) not in (len(xd) + 1, len(xd) + 2) or \
                len(od) < 2 or None in xd or None in od:
            continue
        extra = len(od) - len(xd)  # 1: [..., n, E]; 2: [..., n, h, d] (heads split too)
        n, e = od[-1 - extra].static, int(np.prod([d.static or 0 for d in od[-extra:]]))
        if not n or not e or xd[-1] != Dim(n * e) or od[:-1 - extra] != xd[:-1]:
            continue
        base = [f"a{i}" for i in range(len(xd) - 1)] + (["E"] if extra == 1 else ["H", "D"])
        # follow the piece axis through Unsqueeze / Transpose / Squeeze to the pieces' readers
        labels = base[:len(xd) - 1] + ["P"] + base[len(xd) - 1:]
        cur, chain = r.output[0], [r]
        grid = grid_of(ed, x)  # a quantized X: its own grid's Q/DQ pairs are identities
        ok = True
        while True:
            users = g.users(cur)
            if cur in g.graph_outputs or not users:
                ok = False
                break
            if labels[0] == "P" and _pieces(ed, cur, n) is not None:
                break
            if len(users) != 1:
                ok = False
                break
            u = users[0][0]
            after, pairs = skip_pairs(ed, cur, grid)
            if pairs:
                chain.extend(pairs)
                cur = after
                continue
            if u.op_type == "Unsqueeze":
                raw = axes_of(u, g, 0)
                axes = None if raw is None else axes_of(u, g, len(labels) + len(raw))
                if axes is None:
                    ok = False
                    break
                for a in axes:
                    labels.insert(a, "1")
            elif u.op_type == "Transpose":
                labels = [labels[p] for p in perm_of(u, len(labels))]
            elif u.op_type == "Squeeze":
                axes = axes_of(u, g, len(labels))
                if axes is None or any(labels[a] != "1" for a in axes):
                    ok = False
                    break
                labels = [lab for i, lab in enumerate(labels) if i not in axes]
            else:
                ok = False
                break
            chain.append(u)
            cur = u.output[0]
        rest = labels[1:]
        if not ok or labels[0] != "P" or "1" in labels or sorted(rest) != sorted(base) or \
                (extra == 1 and rest != base) or not all(ed.free(c) for c in chain):
            continue
        pieces = _pieces(ed, cur, n)
        perm = [base.index(lab) for lab in rest]
        for i, last, gone in pieces:
            start = ed.const(f"{last.name}_start", np.asarray([i * e], dtype=np.int64))
            end = ed.const(f"{last.name}_end", np.asarray([(i + 1) * e], dtype=np.int64))
            axis = ed.const(f"{last.name}_axis", np.asarray([-1], dtype=np.int64))
            if extra == 1:
                ed.replaced[ed.index(last)] = [helper.make_node(
                    "Slice", [x, start, end, axis], [last.output[0]], name=last.name)]
            else:
                h, d = od[-2].static, od[-1].static
                shape = ed.const(f"{last.name}_heads_shape",
                                 np.asarray([0] * (len(xd) - 1) + [h, d], dtype=np.int64))
                sl, hs = ed.fresh(f"{last.output[0]}_chunk"), ed.fresh(f"{last.output[0]}_heads")
                nodes = [helper.make_node("Slice", [x, start, end, axis], [sl],
                                          name=ed.fresh(f"{last.name}_slice")),
                         helper.make_node("Reshape", [sl, shape],
                                          [hs if perm != sorted(perm) else last.output[0]],
                                          name=ed.fresh(f"{last.name}_reshape"))]
                if perm != sorted(perm):
                    nodes.append(helper.make_node("Transpose", [hs], [last.output[0]],
                                                  name=last.name, perm=perm))
                ed.replaced[ed.index(last)] = nodes
            ed.removed.update(ed.index(c) for c in gone)
        ed.removed.update(ed.index(c) for c in chain)
        count += 1
    return count


def _heads_with_batch(ed: Edit) -> int:
    """Rewrite 3 (see module docstring)."""
    count = 0
    g, se = ed.graph, ed.shapes
    for r1 in reshapes(ed):
        x = r1.input[0]
        found = reshape_transpose(ed, r1, [1, 0, 2])
        if found is None:
            continue
        t, y2, pairs = found
        # Besides the second Reshape, the legacy exporter reads the sequence length from the
        # transposed tensor: Gather(Shape(t), 1) — the same as Gather(Shape(x), 0).
        users = g.users(y2)
        r2s = [u for u, i in users if u.op_type == "Reshape" and i == 0]
        reads = [u for u, _ in users if u.op_type == "Shape" and attr(u, "start") is None
                 and attr(u, "end") is None]
        if len(r2s) != 1 or len(r2s) + len(reads) != len(users) or y2 in g.graph_outputs:
            continue
        gathers = [gu for u in reads for gu, _ in g.users(u.output[0])]
        if any(gu.op_type != "Gather" or int(attr(gu, "axis", 0)) != 0
               or g.const(gu.input[1]) is None or g.const(gu.input[1]).ndim != 0
               or int(g.const(gu.input[1])) not in (1, -2)
               for gu in gathers) or any(u.output[0] in g.graph_outputs for u in reads):
            continue
        r2 = r2s[0]
        if not ed.free(r2) or not all(ed.free(u) for u in reads + gathers):
            continue
        xd, d1, d2 = ed.dims(x), se.reshape_dims(r1), se.reshape_dims(r2)
        if xd is None or len(xd) != 3 or None in xd or d1 is None or d2 is None or \
                len(d1) != 3 or len(d2) != 4 or None in d1 or None in d2:
            continue
        hd = d1[2].static
        h_dim = d1[1].divide(xd[1])
        if not hd or h_dim is None or h_dim.static is None or d1[0] != xd[0]:
            continue
        h = h_dim.static
        if xd[2] != Dim(h * hd) or d2 != [xd[1], Dim(h), xd[0], Dim(hd)]:
            continue
        for u in reads:
            ed.replaced[ed.index(u)] = [helper.make_node("Shape", [x], [u.output[0]],
                                                         name=u.name)]
        for gu in gathers:
            zero = ed.const(f"{gu.name}_index", np.asarray(0, dtype=np.int64))
            ed.replaced[ed.index(gu)] = [helper.make_node("Gather", [gu.input[0], zero],
                                                          [gu.output[0]], name=gu.name, axis=0)]
        shape = ed.const(f"{r1.name}_heads_shape", np.asarray([0, 0, h, hd], dtype=np.int64))
        mid = ed.fresh(f"{r1.output[0]}_heads")
        ed.removed.update({ed.index(r1), ed.index(t)} | {ed.index(p) for p in pairs})
        ed.replaced[ed.index(r2)] = [
            helper.make_node("Reshape", [x, shape], [mid], name=r1.name),
            helper.make_node("Transpose", [mid], [r2.output[0]], name=r2.name,
                             perm=[1, 2, 0, 3])]
        count += 1
    return count


def _split_fused_projection(ed: Edit) -> int:
    """Rewrite 4: ``Y = X·W (+ c)`` read only through Slices of disjoint column ranges (the Q, K
    and V chunks of a fused in-projection after rewrite 2) becomes one ``X·W[:, a:b] (+ c[a:b])``
    per Slice — the same numbers, and separate Q, K, V projections whose heads the analysis can
    tie together through the attention MatMuls. Per-tensor Q/DQ pairs of a quantized model
    between the MatMul, the Add and the Slices act elementwise: each piece gets its own copy."""
    count = 0
    g = ed.graph
    for mm in list(g.nodes):
        if mm.op_type != "MatMul" or not ed.free(mm):
            continue
        w = g.const(mm.input[1])
        if w is None or w.ndim != 2:
            continue
        y, steps, add, bias, bname = mm.output[0], [], None, None, ""
        while y not in g.graph_outputs:
            pair = qdq_pair(ed, y)
            users = g.users(y)
            if pair is not None:
                steps.append(pair)
                y = pair[1].output[0]
            elif add is None and len(users) == 1 and users[0][0].op_type == "Add":
                add = users[0][0]
                bname = add.input[1 - users[0][1]]
                bias = g.const(bname)
                if bias is None or bias.shape != (w.shape[1],) or not ed.free(add):
                    break
                steps.append(add)
                y = add.output[0]
            else:
                break
        if add is not None and (bias is None or bias.shape != (w.shape[1],)):
            continue
        users = g.users(y)
        rank = g.rank(y)
        if not users or y in g.graph_outputs or rank is None or len(users) < 2:
            continue
        pieces = []
        for u, i in users:
            if u.op_type != "Slice" or i != 0 or not ed.free(u):
                break
            params = [g.const(x) if x else None for x in list(u.input[1:5])]
            if len(params) < 3 or any(p is None for p in params[:3]) or (
                    len(params) > 3 and params[3] is not None and
                    np.asarray(params[3]).reshape(-1).tolist() != [1]):
                break
            starts, ends, axes = (np.asarray(p).reshape(-1).tolist() for p in params[:3])
            if len(axes) != 1 or axes[0] not in (-1, rank - 1):
                break
            n = w.shape[1]
            a = min(max(starts[0] + n if starts[0] < 0 else starts[0], 0), n)
            b = min(max(ends[0] + n if ends[0] < 0 else ends[0], 0), n)
            if b <= a:
                break
            pieces.append((u, a, b))
        else:
            spans = sorted((a, b) for _, a, b in pieces)
            if any(spans[j][1] > spans[j + 1][0] for j in range(len(spans) - 1)):
                continue
            cut = "__" if mm.input[1] in ed.lifted else "_"  # a lifted weight's pieces stay
            for u, a, b in pieces:                            # its (quantized again) copies
                wi = ed.const(f"{mm.input[1]}{cut}{a}_{b}", np.ascontiguousarray(w[:, a:b]))
                if not steps:
                    ed.replaced[ed.index(u)] = [helper.make_node(
                        "MatMul", [mm.input[0], wi], [u.output[0]], name=u.name)]
                    continue
                if steps == [add]:  # the float model's form, named as it always was
                    mid = ed.fresh(f"{u.output[0]}_proj")
                    bi = ed.const(f"{bname}{'__' if bname in ed.lifted else '_'}{a}_{b}",
                                  np.ascontiguousarray(bias[a:b]))
                    ed.replaced[ed.index(u)] = [
                        helper.make_node("MatMul", [mm.input[0], wi], [mid],
                                         name=f"{u.name}_matmul"),
                        helper.make_node("Add", [mid, bi], [u.output[0]], name=u.name)]
                    continue
                prev = ed.fresh(f"{u.output[0]}_proj")
                nodes = [helper.make_node("MatMul", [mm.input[0], wi], [prev],
                                          name=ed.fresh(f"{u.name}_matmul"))]
                for k, step in enumerate(steps):
                    out = u.output[0] if k == len(steps) - 1 else ed.fresh(
                        f"{u.output[0]}_step{k}")
                    if step is add:
                        bi = ed.const(f"{bname}{'__' if bname in ed.lifted else '_'}{a}_{b}",
                                      np.ascontiguousarray(bias[a:b]))
                        nodes.append(helper.make_node("Add", [prev, bi], [out],
                                                      name=ed.fresh(f"{u.name}_add")))
                    else:
                        q, dq = step
                        mid_q = ed.fresh(f"{u.output[0]}_q{k}")
                        nodes.append(helper.make_node("QuantizeLinear",
                                                      [prev] + list(q.input[1:]), [mid_q],
                                                      name=ed.fresh(f"{q.name}_{a}_{b}")))
                        nodes.append(helper.make_node("DequantizeLinear",
                                                      [mid_q] + list(dq.input[1:]), [out],
                                                      name=ed.fresh(f"{dq.name}_{a}_{b}")))
                    prev = out
                ed.replaced[ed.index(u)] = nodes
            ed.removed.add(ed.index(mm))
            for step in steps:
                ed.removed.update(ed.index(x) for x in ((step,) if step is add else step))
            count += 1
    return count


REWRITES = (_chunks, _split_fused_projection, _heads_with_batch, _transpose_via_reshape)


def canonicalize(model: onnx.ModelProto, nodes: list[onnx.NodeProto],
                 lifted: frozenset[str] = frozenset()) -> tuple[list[onnx.NodeProto], int]:
    """Apply the rewrites until none matches; returns the new node list and the match count.
    ``lifted``: weights lifted from quantized storage, whose pieces are named ``name__…`` (the
    lowering quantizes such copies again)."""
    total = 0
    for _ in range(4):
        changed = 0
        for rewrite in REWRITES:
            ed = Edit(model, nodes, lifted)
            k = rewrite(ed)
            if k:
                nodes = ed.apply()
                changed += k
        if not changed:
            break
        total += changed
        nodes = remove_dead(model, nodes)
    if total:
        log.debug("attention forms: %d rewrite(s)", total)
        g = model.graph
        used = {x for n in nodes for x in all_inputs(n)} | {o.name for o in g.output} | {
            i.name for i in g.input}
        kept = [t for t in g.initializer if t.name in used]
        if len(kept) != len(g.initializer):  # weights of split projections
            kept = [onnx.TensorProto.FromString(t.SerializeToString()) for t in kept]
            del g.initializer[:]
            g.initializer.extend(kept)
    return nodes, total
