"""Verification: structural checks and fidelity of the pruned model against the original.

Fidelity is measured on calibration samples that were *not* used for selection. Per output:

* ``max_abs``  — max |y − ŷ|;
* ``rel_l2``   — ‖y − ŷ‖ / ‖y‖ over all held-out samples;
* ``cosine``   — mean over samples of cos(y_i, ŷ_i);
* ``top1_agreement`` — for 2-D outputs (N, K>1): fraction of samples whose argmax agrees;
  for 1-D integer outputs (labels): fraction of equal labels; otherwise None.

With a calibration token mask, padding positions of per-token outputs (``[n, seq, ...]``) are
left out of every figure (zeroed in both models' outputs).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort

from onnxprune.calibrate import drop_padding, run_outputs, session
from onnxprune.errors import PassError
from onnxprune.modelio import Calibration


@dataclass(frozen=True)
class OutputFidelity:
    max_abs: float
    rel_l2: float
    cosine: float
    top1_agreement: float | None

    def to_dict(self) -> dict:
        return {"max_abs": self.max_abs, "rel_l2": self.rel_l2, "cosine": self.cosine,
                "top1_agreement": self.top1_agreement}


def check_structure(model: onnx.ModelProto) -> None:
    """Full ONNX check (with strict shape inference) and an onnxruntime load."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise PassError(f"the pruned model fails the ONNX checker: {str(exc).splitlines()[0]}; "
                        "please report this model") from None
    except ValueError:
        pass  # > 2 GB: onnxruntime load below still validates
    try:
        session(model)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types
        raise PassError(f"onnxruntime cannot load the pruned model: {str(exc).splitlines()[0]}; "
                        "please report this model") from None


def fidelity(original: onnx.ModelProto | ort.InferenceSession, pruned: onnx.ModelProto,
             calib: Calibration, indices: np.ndarray, batch_size: int = 32
             ) -> dict[str, OutputFidelity]:
    """Compare outputs on ``indices``; ``original`` may be an already open session."""
    ref = original if isinstance(original, ort.InferenceSession) else session(original)
    names = [o.name for o in ref.get_outputs()]
    ref_runs = run_outputs(ref, calib, indices, names, batch_size)
    new_runs = run_outputs(session(pruned), calib, indices, names, batch_size)
    acc = {n: {"max": 0.0, "d2": 0.0, "r2": 0.0, "cos": 0.0, "agree": 0, "n": 0} for n in names}
    top1 = {}
    for (ref, mask), (new, _) in zip(ref_runs, new_runs):
        for n in names:
            a, b = drop_padding(np.asarray(ref[n]), mask), drop_padding(np.asarray(new[n]), mask)
            af, bf = a.astype(np.float64), b.astype(np.float64)
            st = acc[n]
            diff = af - bf
            st["max"] = max(st["max"], float(np.max(np.abs(diff))) if diff.size else 0.0)
            st["d2"] += float(np.sum(diff ** 2))
            st["r2"] += float(np.sum(af ** 2))
            fa, fb = af.reshape(af.shape[0], -1), bf.reshape(bf.shape[0], -1)
            na, nb = np.linalg.norm(fa, axis=1), np.linalg.norm(fb, axis=1)
            both = (na > 0) & (nb > 0)
            cos = np.where(both, np.sum(fa * fb, axis=1) / np.where(both, na * nb, 1.0),
                           np.where((na == 0) & (nb == 0), 1.0, 0.0))
            st["cos"] += float(cos.sum())
            st["n"] += af.shape[0]
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
        rel = float(np.sqrt(st["d2"] / st["r2"])) if st["r2"] > 0 else float(np.sqrt(st["d2"]))
        out[n] = OutputFidelity(max_abs=st["max"], rel_l2=rel, cosine=st["cos"] / cnt,
                                top1_agreement=(st["agree"] / cnt) if top1.get(n) else None)
    return out
