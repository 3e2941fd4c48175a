"""onnxprune — structured pruning of ONNX models by submodular channel selection with
least-squares re-fitting of the next layer (Halabi, Lacoste-Julien & Srinivas, 2022).

>>> import onnxprune
>>> result = onnxprune.prune("model.onnx", "calib.npz", ratio=0.5)   # doctest: +SKIP
>>> result.save("model.pruned.onnx")                                 # doctest: +SKIP
"""

from onnxprune.api import PruneResult, inspect, prune
from onnxprune.errors import (
    CalibrationError,
    ModelError,
    OnnxPruneError,
    OptionError,
    OutputError,
    PassError,
)
from onnxprune.report import GroupReport, InspectReport, Report
from onnxprune.select import METHODS

__version__ = "0.1.0"

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
    "inspect",
    "prune",
]
