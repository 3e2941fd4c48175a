"""Public Python API: :func:`prune` and :func:`inspect`."""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from onnxprune.calibrate import session
from onnxprune.errors import ModelError, OptionError
from onnxprune.graph import Graph
from onnxprune.metrics import count_macs, count_params
from onnxprune.modelio import Calibration, load_calibration, load_model, save_model
from onnxprune.passbase import run_passes
from onnxprune.passes import ChannelPrunePass, CleanupPass, NormalizePass
from onnxprune.passes.prune import PruneOptions
from onnxprune.report import InspectReport, Report, group_entry, inspect_report
from onnxprune.select import METHODS
from onnxprune.verify import check_structure, fidelity

log = logging.getLogger(__name__)

ModelSource = str | os.PathLike | onnx.ModelProto
CalibSource = str | os.PathLike | np.ndarray | Mapping[str, np.ndarray]


@dataclass(frozen=True, eq=False)
class PruneResult:
    """The pruned model, its report, and whether it should be saved with external data."""

    model: onnx.ModelProto
    report: Report
    external_data: bool = False

    def save(self, path: str | os.PathLike, external_data: bool | None = None) -> list[Path]:
        """Save atomically (``<path>.data`` beside it when the input used external data)."""
        ext = self.external_data if external_data is None else external_data
        return save_model(self.model, path, ext)


def validate_options(ratio: float, method: str, holdout: float, max_positions: int,
                     seed: int) -> None:
    if not isinstance(ratio, (int, float)) or not math.isfinite(ratio) or not 0 <= ratio < 1:
        raise OptionError(f"--ratio must be in [0, 1) (the fraction of channels removed), got "
                          f"{ratio!r}")
    if method not in METHODS:
        raise OptionError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if not 0 < holdout < 1:
        raise OptionError(f"--holdout must be in (0, 1), got {holdout!r}")
    if max_positions < 1:
        raise OptionError(f"max_positions must be ≥ 1, got {max_positions!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise OptionError(f"--seed must be a non-negative integer, got {seed!r}")


def _open_session(model: onnx.ModelProto) -> ort.InferenceSession:
    """The model's onnxruntime session; a model onnxruntime cannot load is a user error."""
    try:
        return session(model)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"onnxruntime cannot load the model ({msg[:300]}); the model must run "
                         "in onnxruntime on the CPU to be calibrated") from None


def split_samples(n: int, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of sample indices into (selection, held-out) sets, both sorted."""
    n_hold = min(max(1, int(round(holdout * n))), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_hold:]), np.sort(perm[:n_hold])


def _sample_shapes(calib: Calibration) -> tuple[dict[str, tuple[int, ...]], int]:
    lead = {"batched": (1,), "fixed": (calib.batch,), "unbatched": ()}[calib.mode]
    shapes = {k: lead + tuple(v.shape[1:]) for k, v in calib.arrays.items()}
    return shapes, (calib.batch if calib.mode == "fixed" else 1)


def prune(model: ModelSource, calib: CalibSource, *, ratio: float = 0.5,
          method: str = "inchange", reweight: bool = True, seed: int = 0, holdout: float = 0.2,
          max_positions: int = 256, batch_size: int = 32, ridge: float | str = 0.0,
          progress: Callable[[str], None] | None = None,
          head_ratio: float | None = None) -> PruneResult:
    """Prune ``ratio`` of the channels of every prunable group of ``model``.

    ``calib``: a .npz path (keys = input names), a .npy path (single input), or a mapping of
    arrays, each with the sample axis first. A fraction ``holdout`` of the samples is kept aside to
    measure fidelity; the rest drives selection and re-fitting. ``ridge``: regularisation of the
    re-fit (and of the greedy) toward the layer's original weights, relative to each input's
    variance — 0 (default): plain least squares, directions the samples leave undetermined keep
    the original weights; ``"auto"``: per layer by generalised cross-validation. ``head_ratio``:
    the fraction of attention heads removed from head groups (None: ``ratio``).
    """
    start = time.perf_counter()
    validate_options(ratio, method, holdout, max_positions, seed)
    if head_ratio is not None and (isinstance(head_ratio, bool) or not isinstance(
            head_ratio, (int, float)) or not math.isfinite(head_ratio) or not 0 <= head_ratio < 1):
        raise OptionError(f"--head-ratio must be in [0, 1) (the fraction of attention heads "
                          f"removed), got {head_ratio!r}")
    if ridge == "auto":
        ridge = None
    elif isinstance(ridge, str) or not (math.isfinite(ridge) and ridge >= 0):
        raise OptionError(f"--ridge must be a non-negative number or 'auto', got {ridge!r}")
    say = progress or (lambda msg: None)
    loaded = load_model(model)
    normalized, _ = run_passes([NormalizePass()], loaded.model)
    reference = _open_session(normalized)
    cal = load_calibration(calib, normalized)
    sel_idx, hold_idx = split_samples(cal.n_samples, holdout, seed)
    options = PruneOptions(ratio=ratio, method=method, reweight=reweight, seed=seed,
                           max_positions=max_positions, batch_size=batch_size, ridge=ridge,
                           head_ratio=None if head_ratio is None else float(head_ratio))
    say("analysing channel groups")
    pruned, results = run_passes([ChannelPrunePass(cal, sel_idx, options, say), CleanupPass()],
                                 normalized)
    info = results[0].info
    say("verifying the pruned model")
    check_structure(pruned)
    fid = fidelity(reference, pruned, cal, hold_idx, batch_size)
    shapes, per = _sample_shapes(cal)
    decisions = info["decisions"]
    groups = []
    for g in info["analysis"].groups:
        d = decisions.get(g.name)
        groups.append(group_entry(g, len(d.kept) if d else g.size, d.rel_error if d else None))
    report = Report(
        method=method, ratio=float(ratio), reweight=bool(reweight), seed=int(seed),
        params_before=count_params(normalized), params_after=count_params(pruned),
        macs_before=count_macs(normalized, shapes) // per, macs_after=count_macs(pruned, shapes) // per,
        seconds=round(time.perf_counter() - start, 3),
        calib_samples=len(sel_idx), holdout_samples=len(hold_idx),
        groups=tuple(groups), fidelity=fid)
    return PruneResult(model=pruned, report=report, external_data=loaded.external_data)


def inspect(model: ModelSource) -> InspectReport:
    """Channel groups of ``model``: sizes, producers, consumers, and why some are unprunable."""
    loaded = load_model(model)
    normalized, _ = run_passes([NormalizePass()], loaded.model)
    from onnxprune.analysis import analyze
    return inspect_report(analyze(Graph(normalized)))
