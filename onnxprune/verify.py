"""Verification: structural checks and fidelity of the pruned model against the original.

Fidelity is measured on calibration samples that were *not* used for selection. Per output:

* ``max_abs``  — max |y − ŷ|;
* ``rel_l2``   — ‖y − ŷ‖ / ‖y‖ over all held-out samples;
* ``cosine``   — mean over samples of cos(y_i, ŷ_i);
* ``top1_agreement`` — for 2-D outputs (N, K>1): fraction of samples whose argmax agrees;
  for 1-D integer outputs (labels): fraction of equal labels; otherwise None;
* ``parts`` — when the output mixes scales or is a few-channel map (below): ``rel_l2`` and
  ``cosine`` of each part.

**Parts of an output.** One output can concatenate quantities of very different scales (a
detector's box coordinates in pixels beside class scores in [0, 1]); its cosine and relative
error are then dominated by the large part and blind to the small one. The features of an output
are the entries of its axis 1 (channels of NCHW maps, logits, the 4+80 rows of a YOLO head).
Each feature f gets its RMS scale ``s_f`` on the reference output; sorting the scales of the
live features (s_f > 0), a jump by more than ``PART_GAP`` (×10) between neighbours separates two
*parts* (each part holds at least ``MIN_PART`` features; features never active join the
smallest part). Outputs whose scales are all within the gap form one part. A *map* output with
few channels (N, C ≤ ``FEW_MAPS``, H, W, ...: a face-probability map beside a background map,
4 box-offset maps) splits by dominance as well as by scale: each channel there is its own
quantity, and a channel near 1 everywhere would hide a sparse one beside it (a face map's cosine
0.79 inside a whole-output cosine of 0.998), so every live channel is its own part.
A detector head exported anchors first, (N, anchors, fields) — YOLOX's (N, A, 4 + 1 + classes),
YOLOv5's (N, A, 85) — concatenates its quantities along the *last* axis instead, where axis 1
(the anchors) shows one scale: ddddocr's YOLOX keeps a whole-output cosine of 0.98 at
``--ratio 0.25`` while its objectness field falls to 0.88. So when axis 1 of a 3-D output forms
one part and its last axis has at most ``MAX_FIELDS`` entries, the last axis is split the same
way — every entry its own part when there are at most ``FEW_MAPS`` of them, else by scale, kept
only if every part is one contiguous range of fields (a concatenation; a hidden state's scattered
outlier dimensions or a softmax's rare symbols are not). The figures
of every part are reported and :attr:`OutputFidelity.worst_cosine` is the lowest of the whole
output's cosine and its parts'. ``--min-cosine`` checks that figure less ``api.CONFIDENCE_Z``
(three) times its standard error over the held-out samples (``cosine_se``): a lower confidence
bound of what new samples like them would show, not the held-out mean alone. Budgets measure
damage the same way (:func:`damage`): the mean over parts of each part's relative squared change.

**Negligible samples.** A per-sample cosine needs a direction: a sample whose reference output
(or part) is negligible — norm below ``NEGLIGIBLE`` (10⁻³) of the samples' RMS norm, e.g. a text
detector's probability map of a crop without text — is scored by the size of its change against
that floor norm instead (:func:`sample_cosines`): rounding noise on an empty map no longer
counts as a lost sample (cosine 0, or 0.96 from a change of 10⁻⁵), a real response where the
original had none still does.

With a calibration token mask, padding positions of per-token outputs (``[n, seq, ...]``) are
left out of every figure (zeroed in both models' outputs).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from onnxprune import weights
from onnxprune.calibrate import drop_padding, run_outputs, session
from onnxprune.errors import OutputError, PassError
from onnxprune.modelio import Calibration
from onnxprune.saving import save_model

#: Sorted feature scales further apart than this factor belong to different parts of an output.
PART_GAP = 10.0
#: A part holds at least this many features (except the channels of a few-channel map).
MIN_PART = 2
#: A map output (N, C, H, W, ...) with at most this many channels C: a part per channel.
FEW_MAPS = 8
#: A 3-D output (N, A, K) with K ≤ this can be split into parts along its last axis (fields).
MAX_FIELDS = 128
#: A sample whose reference output (or part) has a norm below this fraction of the samples' RMS
#: norm is negligible: its cosine is scored from the size of its change (sample_cosines).
NEGLIGIBLE = 1e-3


@dataclass(frozen=True)
class PartFidelity:
    features: tuple[tuple[int, int], ...]  # index ranges [lo, hi) along the output's ``axis``
    rel_l2: float
    cosine: float
    cosine_se: float = 0.0  # standard error of the mean cosine over the samples
    axis: int = 1  # 1, or -1: the fields of an anchors-first detector head (module docstring)

    def to_dict(self) -> dict:
        return {"features": [list(r) for r in self.features], "axis": self.axis,
                "rel_l2": self.rel_l2, "cosine": self.cosine, "cosine_se": self.cosine_se}


@dataclass(frozen=True)
class OutputFidelity:
    max_abs: float
    rel_l2: float
    cosine: float
    top1_agreement: float | None
    parts: tuple[PartFidelity, ...] = ()  # only when the output mixes scales (> 1 part)
    cosine_se: float = 0.0  # standard error of the mean cosine over the samples

    @property
    def worst_cosine(self) -> float:
        return min([self.cosine] + [p.cosine for p in self.parts])

    def worst_cosine_bound(self, z: float) -> float:
        """The lowest of ``cosine − z·cosine_se`` over the output and its parts: with z ≈ 2 a
        lower confidence bound of the mean cosine on new samples like the held-out ones."""
        return min([self.cosine - z * self.cosine_se]
                   + [p.cosine - z * p.cosine_se for p in self.parts])

    def to_dict(self) -> dict:
        d = {"max_abs": self.max_abs, "rel_l2": self.rel_l2, "cosine": self.cosine,
             "cosine_se": self.cosine_se, "top1_agreement": self.top1_agreement}
        if self.parts:
            d["parts"] = [p.to_dict() for p in self.parts]
        return d


def output_parts(scale: np.ndarray, maps: bool = False) -> list[np.ndarray]:
    """Feature indices of each part of an output, from the features' RMS scales (module
    docstring); ``maps``: the features are the channels of spatial maps (N, C, H, W, ...).
    Parts ordered by scale, largest first."""
    scale = np.asarray(scale, dtype=np.float64)
    live = np.flatnonzero(scale > 0)
    order = live[np.argsort(-scale[live], kind="stable")]
    if maps and 1 < len(live) and len(scale) <= FEW_MAPS:
        bounds = list(range(len(order) + 1))  # a few maps: a part per channel
    elif len(live) < 2 * MIN_PART:
        return [np.arange(len(scale))]
    else:
        logs = np.log10(scale[order])
        cuts = [i for i in range(MIN_PART, len(order) - MIN_PART + 1)
                if logs[i - 1] - logs[i] > np.log10(PART_GAP)]
        bounds = [0]
        for c in cuts:  # each part at least MIN_PART features
            if c - bounds[-1] >= MIN_PART:
                bounds.append(c)
        bounds.append(len(order))
    parts = [np.sort(order[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    dead = np.flatnonzero(~(scale > 0))
    if len(dead):
        parts[-1] = np.sort(np.concatenate([parts[-1], dead]))
    return parts


def split_parts(r2: np.ndarray, r2_last: np.ndarray | None, ndim: int
                ) -> tuple[int, list[np.ndarray]]:
    """(axis, parts) of an output from the squared norms of its features along axis 1 (``r2``)
    and, for a 3-D output, along its last axis (``r2_last``; module docstring)."""
    parts = output_parts(np.sqrt(r2), ndim >= 4)
    if len(parts) > 1 or ndim != 3 or r2_last is None or len(r2_last) > MAX_FIELDS:
        return 1, parts
    scale = np.sqrt(r2_last)
    fields = output_parts(scale, True) if len(scale) <= FEW_MAPS else output_parts(scale)
    if len(fields) > 1 and all(len(_ranges(f)) == 1 for f in fields):
        return -1, fields
    return 1, parts


def _feature_view(x: np.ndarray, axis: int = 1) -> np.ndarray:
    """``x`` as (samples, features, rest) float64: features = ``axis`` (1 or -1)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim < 2:
        return x.reshape(x.shape[0] if x.ndim else 1, 1, 1)
    if axis != 1:
        x = np.moveaxis(x, axis, 1)
    return x.reshape(x.shape[0], x.shape[1], -1)


def _fields(x: np.ndarray) -> bool:
    """Whether ``x``'s last axis is a candidate for parts (3-D, at most MAX_FIELDS entries)."""
    return np.ndim(x) == 3 and np.shape(x)[-1] <= MAX_FIELDS


def damage(ref: Sequence[np.ndarray], outs: Sequence[np.ndarray]) -> float:
    """Relative squared change of a model's outputs, no part hidden by another: per output the
    mean over its parts of ``‖ŷ_p − y_p‖² / ‖y_p‖²``, averaged over outputs."""
    total = 0.0
    for r, o in zip(ref, outs):
        sums = {}
        for ax in ((1, -1) if _fields(r) else (1,)):
            rv, ov = _feature_view(r, ax), _feature_view(o, ax)
            sums[ax] = (np.sum((ov - rv) ** 2, axis=(0, 2)), np.sum(rv * rv, axis=(0, 2)))
        axis, parts = split_parts(sums[1][1], sums[-1][1] if -1 in sums else None, np.ndim(r))
        d2, r2 = sums[axis]
        per = [float(d2[p].sum() / r2[p].sum()) if r2[p].sum() > 0 else float(d2[p].sum())
               for p in parts]
        total += sum(per) / len(per)
    return total / max(len(ref), 1)


def _ranges(idx: np.ndarray) -> tuple[tuple[int, int], ...]:
    """Sorted indices as half-open ranges."""
    out: list[list[int]] = []
    for i in idx.tolist():
        if out and out[-1][1] == i:
            out[-1][1] = i + 1
        else:
            out.append([i, i + 1])
    return tuple((a, b) for a, b in out)


def sample_cosines(ab: np.ndarray, aa: np.ndarray, bb: np.ndarray, dd: np.ndarray
                   ) -> np.ndarray:
    """Per-sample cosine of reference ``a`` and pruned ``b`` from per-sample ``a·b``, ``‖a‖²``,
    ``‖b‖²`` and ``‖a − b‖²`` (module docstring: negligible samples).

    A sample whose reference is negligible — ``‖a_i‖ < NEGLIGIBLE · S``, S² the mean of ``‖a‖²``
    over the samples (a text detector's map of a crop without text: sigmoid outputs ~1e-7) —
    has no direction to compare: its cosine would be decided by rounding noise (0 when the
    reference underflowed to exactly 0). It is scored as ``1 − ‖a_i − b_i‖² / (2 (NEGLIGIBLE·S)²)``
    (clipped to [−1, 1]), the cosine a change of that size would cost a vector of the floor
    norm: 1 for noise, −1 for a real response (a false detection) where there was none."""
    na, nb = np.sqrt(aa), np.sqrt(bb)
    both = (na > 0) & (nb > 0)
    cos = np.where(both, ab / np.where(both, na * nb, 1.0),
                   np.where((na == 0) & (nb == 0), 1.0, 0.0))
    floor2 = NEGLIGIBLE ** 2 * float(np.mean(aa)) if len(aa) else 0.0
    small = aa < floor2
    if floor2 > 0 and small.any():
        cos = np.where(small, np.clip(1.0 - dd / (2.0 * floor2), -1.0, 1.0), cos)
    return cos


class RecordedOutputs:
    """A model's outputs on the held-out batches, recorded once and replayed to
    :func:`fidelity` in place of its session (always called with the same samples and batch
    size): a model whose weights are held lazily is then not kept loaded beside the pruned one."""

    def __init__(self, sess: ort.InferenceSession, calib: Calibration, indices: np.ndarray,
                 batch_size: int = 32) -> None:
        self.names = [o.name for o in sess.get_outputs()]
        self.runs = [sess.run(self.names, feed) for feed, _ in calib.feeds(indices, batch_size)]
        self.calls = 0

    def get_outputs(self) -> list:
        return [_Named(n) for n in self.names]

    def run(self, names, feed) -> list:
        assert list(names) == self.names
        out = self.runs[self.calls % len(self.runs)]
        self.calls += 1
        return out


@dataclass(frozen=True)
class _Named:
    name: str


def check_structure(model: onnx.ModelProto) -> ort.InferenceSession:
    """Full ONNX check (with strict shape inference) and an onnxruntime load; returns the
    session (for the fidelity check: one load of the pruned model)."""
    try:
        onnx.checker.check_model(weights.skeleton(model), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise PassError(f"the pruned model fails the ONNX checker: {str(exc).splitlines()[0]}; "
                        "please report this model") from None
    except ValueError:
        pass  # > 2 GB: onnxruntime load below still validates
    try:
        if weights.base_dir() is None:
            return session(model)
        # weights over LAZY_BYTES: onnxruntime reads the pruned model from a file (its weights
        # streamed there) instead of from one more serialised copy of them in memory
        with tempfile.TemporaryDirectory(prefix="onnxprune-verify-") as tmp:
            path = Path(tmp) / "pruned.onnx"
            save_model(model, path, external_data=True)
            return session(path)
    except OutputError as exc:
        raise PassError(f"cannot write the pruned model for its onnxruntime check ({exc})"
                        ) from None
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types
        raise PassError(f"onnxruntime cannot load the pruned model: {str(exc).splitlines()[0]}; "
                        "please report this model") from None


def fidelity(original: onnx.ModelProto | ort.InferenceSession,
             pruned: onnx.ModelProto | ort.InferenceSession,
             calib: Calibration, indices: np.ndarray, batch_size: int = 32
             ) -> dict[str, OutputFidelity]:
    """Compare outputs on ``indices``; either model may be an already open session (or an
    object that runs like one: :class:`RecordedOutputs`). The outputs compared are
    ``original``'s."""
    ref = session(original) if isinstance(original, onnx.ModelProto) else original
    new = session(pruned) if isinstance(pruned, onnx.ModelProto) else pruned
    names = [o.name for o in ref.get_outputs()]
    ref_runs = run_outputs(ref, calib, indices, names, batch_size, outputs=True)
    new_runs = run_outputs(new, calib, indices, names, batch_size, outputs=True)
    acc = {n: {"max": 0.0, "agree": 0, "n": 0, "ndim": 0,
               **{k + t: [] for k in ("ab", "aa", "bb", "dd") for t in ("", "_last")}}
           for n in names}
    top1 = {}
    for (ref_b, mask), (new_b, _) in zip(ref_runs, new_runs):
        for n in names:
            a, b = drop_padding(np.asarray(ref_b[n]), mask), drop_padding(np.asarray(new_b[n]),
                                                                          mask)
            st = acc[n]
            # per sample and feature (axis 1; also the last axis: its fields): Σ a·b, Σ a²,
            # Σ b², Σ (a − b)² over the other positions
            for ax, t in ((1, ""), (-1, "_last")) if _fields(a) else ((1, ""),):
                av, bv = _feature_view(a, ax), _feature_view(b, ax)
                diff = av - bv
                st["ab" + t].append(np.sum(av * bv, axis=2))
                st["aa" + t].append(np.sum(av * av, axis=2))
                st["bb" + t].append(np.sum(bv * bv, axis=2))
                st["dd" + t].append(np.sum(diff * diff, axis=2))
            st["max"] = max(st["max"], float(np.max(np.abs(a.astype(np.float64) - b)))
                            if a.size else 0.0)
            st["n"] += av.shape[0]
            st["ndim"] = a.ndim
            if a.ndim == 2 and a.shape[1] > 1:
                top1[n] = True
                st["agree"] += int(np.sum(np.argmax(a, axis=1) == np.argmax(b, axis=1)))
            elif a.ndim == 1 and np.issubdtype(a.dtype, np.integer):
                top1[n] = True
                st["agree"] += int(np.sum(a == b))
    out = {}
    for n in names:
        st = acc[n]
        cnt = max(st["n"], 1)
        # per sample and feature, all batches: (ab, aa, bb, dd) along axis 1 ("") and the last
        sums = {t: tuple(np.concatenate(st[k + t]) for k in ("ab", "aa", "bb", "dd"))
                for t in ("", "_last") if st["aa" + t]}
        axis, parts = split_parts(sums[""][1].sum(axis=0),
                                  sums["_last"][1].sum(axis=0) if "_last" in sums else None,
                                  st["ndim"])

        def figures(cols, t: str = "") -> tuple[float, float, float]:
            ab, aa, bb, dd = sums[t]
            d2, r2 = float(dd[:, cols].sum()), float(aa[:, cols].sum())
            rel = float(np.sqrt(d2 / r2)) if r2 > 0 else float(np.sqrt(d2))
            cos = sample_cosines(ab[:, cols].sum(1), aa[:, cols].sum(1), bb[:, cols].sum(1),
                                 dd[:, cols].sum(1))
            se = float(cos.std(ddof=1) / np.sqrt(len(cos))) if len(cos) > 1 else 0.0
            return rel, float(cos.sum() / cnt), se

        rel, cos, se = figures(slice(None))
        t = "_last" if axis == -1 else ""
        part_fid = tuple(PartFidelity(_ranges(p), *figures(p, t), axis=axis) for p in parts) \
            if len(parts) > 1 else ()
        out[n] = OutputFidelity(max_abs=st["max"], rel_l2=rel, cosine=cos,
                                top1_agreement=(st["agree"] / cnt) if top1.get(n) else None,
                                parts=part_fid, cosine_se=se)
    return out


def sample_feed(calib: Calibration, indices: np.ndarray) -> dict[str, np.ndarray]:
    """One run's input of the first of ``indices`` (the model's fixed batch: that many)."""
    one = {"batched": indices[:1], "fixed": np.resize(indices, calib.batch),
           "unbatched": indices[0]}
    return {k: v[one[calib.mode]] for k, v in calib.arrays.items()}


def latencies(models: Sequence[onnx.ModelProto], feeds: dict[str, np.ndarray],
              repeats: int = 30) -> list[float]:
    """Median onnxruntime CPU latency (ms) of each model on ``feeds``, measured interleaved
    (one run of each in turn, ``repeats`` rounds after a warm-up) so load affects all alike."""
    sessions = [session(m, arena=True) for m in models]  # as deployed
    for s in sessions:
        s.run(None, feeds)
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(repeats):
        for i, s in enumerate(sessions):
            t = time.perf_counter()
            s.run(None, feeds)
            times[i].append(time.perf_counter() - t)
    return [1000.0 * float(np.median(t)) for t in times]
