"""The user-error hierarchy. Messages say what is wrong, where, and how to fix it; the CLI prints
them as one line ``onnxprune: error: …`` and exits with status 2."""

from __future__ import annotations


class OnnxPruneError(Exception):
    """Base class of every error caused by the user's input or options."""


class ModelError(OnnxPruneError):
    """The model file is missing, unreadable or not a valid ONNX model."""


class CalibrationError(OnnxPruneError):
    """The calibration data does not match the model's inputs."""


class OptionError(OnnxPruneError):
    """An option is out of range or unknown."""


class OutputError(OnnxPruneError):
    """The output cannot be written where asked."""


class PassError(OnnxPruneError):
    """A pass's pre- or postcondition does not hold (the message says which)."""
