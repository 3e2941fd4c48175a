"""Passes: ``requires`` (preconditions) → ``call`` → ``ensures`` (postconditions).

A pass takes a ``ModelProto`` and returns a :class:`PassResult` with the (new) model and whether it
changed anything; pipelines are plain sequences of passes (:func:`run_passes`).
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import onnx

from onnxprune import weights
from onnxprune.errors import PassError

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class PassResult:
    model: onnx.ModelProto
    modified: bool
    info: Mapping[str, Any] = field(default_factory=dict)


class Pass(abc.ABC):
    """Base class: subclasses implement ``call`` and may extend ``requires``/``ensures``."""

    name: str = "pass"

    def requires(self, model: onnx.ModelProto) -> None:
        """Preconditions; raise :class:`PassError` when violated."""

    @abc.abstractmethod
    def call(self, model: onnx.ModelProto) -> PassResult: ...

    def ensures(self, model: onnx.ModelProto) -> None:
        """Postconditions: the model is valid ONNX."""
        try:
            onnx.checker.check_model(weights.skeleton(model))
        except onnx.checker.ValidationError as exc:
            raise PassError(f"pass '{self.name}' produced an invalid model: "
                            f"{str(exc).splitlines()[0]}; please report this model") from None
        except ValueError:
            pass

    def __call__(self, model: onnx.ModelProto) -> PassResult:
        self.requires(model)
        result = self.call(model)
        self.ensures(result.model)
        log.debug("pass %s: modified=%s", self.name, result.modified)
        return result


def run_passes(passes: Sequence[Pass], model: onnx.ModelProto
               ) -> tuple[onnx.ModelProto, list[PassResult]]:
    results = []
    for p in passes:
        res = p(model)
        results.append(res)
        model = res.model
    return model, results
