"""onnxprune — structured pruning of ONNX models by submodular channel selection with
least-squares re-fitting of the next layer (Halabi, Lacoste-Julien & Srinivas, 2022).

>>> import onnxprune
>>> result = onnxprune.prune("model.onnx", "calib.npz", ratio=0.5)   # doctest: +SKIP
>>> result.save("model.pruned.onnx")                                 # doctest: +SKIP
>>> sparse = onnxprune.sparsify("model.onnx", "calib.npz", pattern="2:4")  # doctest: +SKIP

The public names are resolved lazily, so that ``import onnxprune.solvers`` (pure NumPy) does not
load onnx or onnxruntime.
"""

from __future__ import annotations

import importlib

from onnxprune.errors import (
    CalibrationError,
    ModelError,
    OnnxPruneError,
    OptionError,
    OutputError,
    PassError,
)

__version__ = "0.1.0"

_LAZY = {
    "PruneResult": "onnxprune.api",
    "inspect": "onnxprune.api",
    "prune": "onnxprune.api",
    "sweep": "onnxprune.api",
    "calibrate_stats": "onnxprune.api",
    "sparsify": "onnxprune.sparse_api",
    "compare": "onnxprune.sparse_api",
    "SparsifyReport": "onnxprune.report",
    "GroupReport": "onnxprune.report",
    "InspectReport": "onnxprune.report",
    "Report": "onnxprune.report",
    "METHODS": "onnxprune.select",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'onnxprune' has no attribute {name!r}")


__all__ = [
    "METHODS",
    "CalibrationError",
    "GroupReport",
    "InspectReport",
    "ModelError",
    "OnnxPruneError",
    "OptionError",
    "OutputError",
    "PassError",
    "PruneResult",
    "Report",
    "SparsifyReport",
    "calibrate_stats",
    "compare",
    "inspect",
    "prune",
    "sparsify",
    "sweep",
]
