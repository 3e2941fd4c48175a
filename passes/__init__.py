"""Compiler passes built on the onnxprune engine (installed as ``onnxprune.passes``)."""

from onnxprune.passes.cleanup import CleanupPass
from onnxprune.passes.normalize import NormalizePass
from onnxprune.passes.prune import ChannelPrunePass

__all__ = ["ChannelPrunePass", "CleanupPass", "NormalizePass"]
