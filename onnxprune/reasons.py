"""Why channels cannot be pruned, in a form programs can read: a sentence, a code, a node."""

from __future__ import annotations


class Reason(str):
    """Why channels cannot be pruned: the sentence (this string, as ``inspect`` and the report's
    ``reason`` show it), a stable kebab-case ``code`` (one of :data:`REASON_CODES`) and the
    ``node`` it is about ('' for reasons about a tensor, such as reaching a graph output)."""

    code: str
    node: str

    def __new__(cls, message: str, code: str, node: str = "") -> Reason:
        if code not in REASON_CODES:
            raise ValueError(f"unknown reason code {code!r}")
        r = super().__new__(cls, message)
        r.code, r.node = code, node
        return r

    def to_dict(self) -> dict:
        return {"code": self.code, "node": self.node, "message": str(self)}


#: Every code a :class:`Reason` can carry.
REASON_CODES = (
    "no-rule",                # the channels flow into an op no rule describes
    "channels-on-parameter",  # they reach a weight, bias, shape or other parameter input
    "runtime-value",          # a weight, shape, scale or pad the op needs is computed at run time
    "unknown-shape",          # a rank, shape or axis the rule needs is not known statically
    "axis-mismatch",          # channel axes that cannot be lined up (joins, flattening, steps)
    "mixes-channels",         # the op combines channels with each other or with other axes
    "channel-count-read",     # the channel count is read as a value (e.g. into a Reshape)
    "heads",                  # a split into attention heads the producers cannot follow
    "grouped-conv",           # grouped (non-depthwise) convolutions
    "unsupported-attribute",  # an attribute that fixes the output size (auto_pad, output_shape)
    "unhandled-operand",      # a join operand not made by a prunable layer (a kept residual)
    "graph-output",           # the channels reach a graph output
    "subgraph",               # the tensor is used inside an If/Loop/Scan body
    "shared-weight",          # the layer's weight tensor is shared with another node
    "not-consumed",           # no layer reads the channels (nothing to re-fit)
    "not-produced",           # no prunable layer makes the channels (they enter a path whole)
    "single-channel",         # one channel cannot be pruned
    "excluded",               # the user excluded the group (--exclude)
)
