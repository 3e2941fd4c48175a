"""Calibration statistics as a file: calibrate once (in shards), prune many times.

Everything one-shot pruning needs from the calibration samples is, per consumer site, the Gram
``G = B_augᵀ B_aug`` of its input rows and the row count — sums over samples. ``onnxprune
calibrate`` writes them for every consumer of every prunable group; ``prune --stats`` reads one
file or several shards and adds them up. A sample's rows do not depend on the batch or shard it
was run in (:func:`onnxprune.calibrate._selector`), so shards add up to the single run (up to the
order of floating-point sums) and one unsharded file gives byte-identical pruned models.

File: a NumPy ``.npz`` with ``meta`` (JSON: ``format``, ``version``, the normalised model's
SHA-256, the options that shape the statistics — ``seed``, ``holdout``, ``max_positions``,
``batch_size``, ``token_mask`` —, the calibration's sample count, the shard ``[k, n]`` and every
site's ``node``, ``tensor``, ``rows``, ``has_const``), ``ids`` (the sample indices summed) and
one ``G<i>`` per site (float64).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from onnxprune.analysis import analyze
from onnxprune.calibrate import SiteStats
from onnxprune.errors import CalibrationError, OutputError
from onnxprune.graph import Graph
from onnxprune.groups import ConsumerSite
from onnxprune.modelio import load_calibration, load_model
from onnxprune.passbase import run_passes
from onnxprune.passes import NormalizePass
from onnxprune.saving import file_mode

FORMAT = "onnxprune-stats"
VERSION = 1
#: Options that change the statistics: a file is only used with the same values.
OPTIONS = ("seed", "holdout", "max_positions", "batch_size", "token_mask")


def model_hash(model: onnx.ModelProto) -> str:
    """SHA-256 of the (normalised) model: statistics belong to exactly one graph and weights."""
    return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()


def statistics_inputs(model, calib, token_mask):
    """What collecting a statistics file starts from, the same on the driver and on every
    cluster worker: the loaded and the normalised model, the calibration, the graph index and
    the prunable sites (``Analysis.prunable_sites``)."""
    loaded = load_model(model)
    normalized, _ = run_passes([NormalizePass()], loaded.model)
    cal = load_calibration(calib, normalized, token_mask)
    graph = Graph(normalized)
    return loaded, normalized, cal, graph, analyze(graph).prunable_sites


def shard_indices(indices: np.ndarray, shard: tuple[int, int]) -> np.ndarray:
    """The ``k``-th of ``n`` contiguous, near-equal parts of ``indices`` (k from 1)."""
    k, n = shard
    return np.array_split(np.asarray(indices), n)[k - 1]


@dataclass(frozen=True, eq=False)
class StatsFile:
    meta: dict
    ids: np.ndarray
    grams: tuple[np.ndarray, ...]


def save(path: str | os.PathLike, meta: dict, ids: np.ndarray,
         stats: Sequence[tuple[ConsumerSite, SiteStats]]) -> Path:
    """Write the statistics atomically (a temporary file beside ``path``, then renamed); the
    archive's members carry a fixed timestamp, so equal statistics give equal bytes."""
    out = Path(path)
    meta = {"format": FORMAT, "version": VERSION, **meta,
            "sites": [{"node": s.node, "tensor": s.tensor, "rows": int(st.rows),
                       "has_const": bool(st.has_const)} for s, st in stats]}
    arrays = {"meta": np.frombuffer(json.dumps(meta, sort_keys=True).encode(), np.uint8),
              "ids": np.asarray(ids, dtype=np.int64)}
    arrays.update({f"G{i}": st.G for i, (_, st) in enumerate(stats)})
    parent = out.parent if str(out.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=".onnxprune-", suffix=".npz", dir=parent)
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as z:
            for name, arr in arrays.items():
                buf = io.BytesIO()
                np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                z.writestr(info, buf.getvalue())
        os.replace(tmp, out)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise OutputError(f"cannot write the statistics '{out}': {exc.strerror or exc}") from None
    return out


def load(path: str | os.PathLike) -> StatsFile:
    p = Path(path)
    try:
        with np.load(p, allow_pickle=False) as z:
            meta = json.loads(bytes(z["meta"]).decode())
            if meta.get("format") != FORMAT:
                raise ValueError("not a statistics file")
            ids = np.asarray(z["ids"])
            grams = tuple(np.asarray(z[f"G{i}"]) for i in range(len(meta["sites"])))
    except FileNotFoundError:
        raise CalibrationError(f"statistics file '{p}' does not exist") from None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
        raise CalibrationError(f"'{p}' is not an onnxprune statistics file ({exc}); write one "
                               "with 'onnxprune calibrate'") from None
    if meta.get("version") != VERSION:
        raise CalibrationError(f"'{p}' has statistics format version {meta.get('version')}, "
                               f"this onnxprune reads version {VERSION}; calibrate again")
    return StatsFile(meta=meta, ids=ids, grams=grams)


def merge(paths: Sequence[str | os.PathLike], digest: str, options: Mapping,
          n_samples: int, selection: np.ndarray, sites: Sequence[ConsumerSite]
          ) -> dict[ConsumerSite, SiteStats]:
    """Add up shard files into the statistics of ``sites``, after checking that they were made
    from this model, with these options, on this calibration set, and that together they cover
    the selection samples exactly once."""
    files = [(Path(p), load(p)) for p in paths]
    for p, f in files:
        if f.meta["model_sha256"] != digest:
            raise CalibrationError(f"statistics '{p}' were collected on another model (or "
                                   "another version of it); calibrate this model again")
        for key in OPTIONS:
            if f.meta.get(key) != options.get(key):
                raise CalibrationError(
                    f"statistics '{p}' were collected with {key} = {f.meta.get(key)!r}, this "
                    f"run uses {options.get(key)!r}; give the same option or calibrate again")
        if f.meta["n_samples"] != n_samples:
            raise CalibrationError(f"statistics '{p}' come from a calibration set of "
                                   f"{f.meta['n_samples']} samples, this one has {n_samples}")
    ids = np.concatenate([f.ids for _, f in files])
    if len(np.unique(ids)) != len(ids):
        raise CalibrationError("the statistics files overlap (a shard was given twice?)")
    if not np.array_equal(np.sort(ids), np.sort(selection)):
        missing = len(np.setdiff1d(selection, ids))
        raise CalibrationError(f"the statistics files miss {missing} of the {len(selection)} "
                               "selection samples (a shard is missing?)")
    index: dict[tuple[str, str], list[tuple[np.ndarray, int, bool]]] = {}
    for _, f in files:
        for site, G in zip(f.meta["sites"], f.grams):
            index.setdefault((site["node"], site["tensor"]), []).append(
                (G, site["rows"], site["has_const"]))
    out = {}
    for s in sites:
        parts = index.get((s.node, s.tensor))
        if parts is None or len(parts) != len(files):
            raise CalibrationError(f"the statistics have no entry for consumer '{s.node}'; "
                                   "calibrate this model again")
        G = parts[0][0].astype(np.float64, copy=True) if len(parts) > 1 else parts[0][0]
        for extra, _, _ in parts[1:]:
            G += extra
        out[s] = SiteStats(G=G, rows=sum(r for _, r, _ in parts), has_const=parts[0][2])
    return out
