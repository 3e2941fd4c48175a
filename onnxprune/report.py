"""The pruning report (the JSON contract of ``--report``) and the inspection report."""

from __future__ import annotations

from dataclasses import dataclass, field

from onnxprune.groups import Analysis, Group
from onnxprune.verify import OutputFidelity


@dataclass(frozen=True)
class GroupReport:
    name: str
    total: int
    kept: int
    prunable: bool
    reason: str
    rel_error: float | None
    producers: tuple[str, ...] = ()
    consumers: tuple[str, ...] = ()
    ratio: float | None = None  # planned fraction removed (uniform, budget or exclusion)
    sensitivity: tuple[tuple[float, float], ...] | None = None  # budgets: (keep fraction, damage)
    kind: str = "channels"  # "heads": elements are attention heads (total/kept count heads)
    reasons: tuple[dict, ...] = ()  # the reason's parts: {"code", "node", "message"} each

    def to_dict(self) -> dict:
        d = {"name": self.name, "kind": self.kind, "total": self.total, "kept": self.kept,
             "prunable": self.prunable, "reason": self.reason,
             "reasons": [dict(r) for r in self.reasons], "rel_error": self.rel_error,
             "producers": list(self.producers), "consumers": list(self.consumers)}
        if self.ratio is not None:
            d["ratio"] = self.ratio
            d["keep_fraction"] = self.kept / self.total if self.total else 1.0
        if self.sensitivity is not None:
            d["sensitivity"] = [list(p) for p in self.sensitivity]
        return d


@dataclass(frozen=True)
class Report:
    method: str
    ratio: float  # with a budget: the fraction of prunable channels it removed
    reweight: bool
    seed: int
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    seconds: float
    calib_samples: int
    holdout_samples: int
    groups: tuple[GroupReport, ...]
    fidelity: dict[str, OutputFidelity] = field(default_factory=dict)
    steps: int = 1
    round_to: int | str = 1  # K, or "auto"
    min_keep: int = 1
    exclude: tuple[str, ...] = ()
    budget: dict | None = None  # kind, target, allocation, predicted and planned cost fraction
    token_mask: str | None = None  # the calibration input marking real tokens, if any
    # seq/asym: held-out worst cosine of the sequential and of the one-shot model, and the one kept
    safeguard: dict | None = None
    # where the held-out samples come from: "calibration" (a split of it) or "holdout_data"
    holdout_source: str = "calibration"
    # fidelity measured against a reference model (--reference): its name, and the input
    # model's own fidelity against it (the quantized model before pruning)
    reference: dict | None = None
    # runs of the model over the selection samples that collected statistics: one for a
    # one-shot prune, a whole budget search or --min-cosine search; one per group and round more
    # for seq/asym; none when they were read from statistics files
    statistics_runs: int = 0

    def to_dict(self) -> dict:
        return {
            "method": self.method, "ratio": self.ratio, "reweight": self.reweight,
            "seed": self.seed,
            "params_before": self.params_before, "params_after": self.params_after,
            "macs_before": self.macs_before, "macs_after": self.macs_after,
            "seconds": self.seconds,
            "calib_samples": self.calib_samples, "holdout_samples": self.holdout_samples,
            "groups": [g.to_dict() for g in self.groups],
            "fidelity": {k: v.to_dict() for k, v in self.fidelity.items()},
            "steps": self.steps, "round_to": self.round_to, "min_keep": self.min_keep,
            "exclude": list(self.exclude), "budget": self.budget, "token_mask": self.token_mask,
            "safeguard": self.safeguard, "holdout_source": self.holdout_source,
            "reference": self.reference, "statistics_runs": self.statistics_runs,
            "macs_fraction": self.macs_after / self.macs_before if self.macs_before else 1.0,
            "params_fraction": (self.params_after / self.params_before
                                if self.params_before else 1.0),
        }


def group_entry(group: Group, kept: int, rel_error: float | None, ratio: float | None = None,
                sensitivity: tuple[tuple[float, float], ...] | None = None) -> GroupReport:
    return GroupReport(name=group.name, total=group.size, kept=kept, prunable=group.prunable,
                       reason=group.reason, rel_error=rel_error, producers=group.producers,
                       consumers=tuple(c.node for c in group.consumers), ratio=ratio,
                       sensitivity=sensitivity, kind=group.kind,
                       reasons=tuple(r.to_dict() for r in group.reasons))


@dataclass(frozen=True)
class InspectReport:
    groups: tuple[GroupReport, ...]
    quantized: int = 0  # weights stored quantized (QDQ): pruned in float, quantized again

    def to_dict(self) -> dict:
        return {"groups": [g.to_dict() for g in self.groups],
                "prunable_channels": sum(g.total for g in self.groups if g.prunable),
                "total_channels": sum(g.total for g in self.groups),
                "quantized_weights": self.quantized}

    def to_text(self) -> str:
        """An aligned table, one row per group (prunable first), then each reason in full."""
        ok = [g for g in self.groups if g.prunable]
        bad = [g for g in self.groups if not g.prunable]

        def names(xs) -> str:
            return "-" if not xs else xs[0] + (f" (+{len(xs) - 1})" if len(xs) > 1 else "")

        head = ("#", "group", "kind", "size", "prunable", "producers", "consumers")
        rows = [(str(i + 1), g.name, g.kind, str(g.total), "yes" if g.prunable else "no",
                 names(g.producers), names(g.consumers)) for i, g in enumerate(ok + bad)]
        width = [max(len(r[c]) for r in [head] + rows) for c in range(len(head))]
        right = {0, 3}  # numbers

        def line(r) -> str:
            return "  ".join(v.rjust(w) if c in right else v.ljust(w)
                             for c, (v, w) in enumerate(zip(r, width))).rstrip()

        lines = [f"{len(self.groups)} channel group(s): {len(ok)} prunable, {len(bad)} "
                 "unprunable"]
        if self.quantized:
            lines.append(f"{self.quantized} quantized (QDQ) weight tensor(s): pruned in float "
                         "and quantized again in their own scheme")
        lines += ["", line(head), line(tuple("-" * w for w in width))]
        lines += [line(r) for r in rows]
        notes = [(i + 1, g) for i, g in enumerate(ok + bad) if g.reason]
        if notes:
            lines.append("")
            for i, g in notes:
                what = "reason" if not g.prunable else "partly kept"
                lines.append(f"  #{i} {what}: {g.reason}")
        return "\n".join(lines)


def inspect_report(analysis: Analysis, quantized: int = 0) -> InspectReport:
    return InspectReport(groups=tuple(group_entry(g, g.size, None) for g in analysis.groups),
                         quantized=quantized)


@dataclass(frozen=True)
class SparsifyReport:
    """The JSON contract of ``onnxprune sparsify --report``."""

    method: str
    pattern: str  # "unstructured" or "N:M"
    sparsity: float  # target, per layer (uniform) or over all sparsified weights (global)
    allocation: str
    reweight: bool
    steps: int
    seed: int
    layers: tuple  # passes.sparsify.LayerResult, of the last round
    skipped: dict[str, str]
    params: int
    nonzeros_before: int
    nonzeros_after: int
    size_before: dict[str, int]
    size_after: dict[str, int]
    seconds: float
    calib_samples: int
    holdout_samples: int
    fidelity: dict[str, OutputFidelity] = field(default_factory=dict)
    storage: str = "dense"
    token_mask: str | None = None
    schedule: tuple[float, ...] = ()

    @property
    def weights(self) -> int:
        return sum(layer.size for layer in self.layers)

    @property
    def weight_nonzeros(self) -> int:
        return sum(layer.nonzeros for layer in self.layers)

    def to_dict(self) -> dict:
        w = self.weights
        return {
            "method": self.method, "pattern": self.pattern, "sparsity": self.sparsity,
            "allocation": self.allocation, "reweight": self.reweight, "steps": self.steps,
            "schedule": list(self.schedule), "seed": self.seed, "storage": self.storage,
            "layers": [layer.to_dict() for layer in self.layers],
            "skipped": dict(self.skipped),
            "weights": w, "weight_nonzeros": self.weight_nonzeros,
            "weight_sparsity": 1.0 - self.weight_nonzeros / w if w else 0.0,
            "params": self.params, "nonzeros_before": self.nonzeros_before,
            "nonzeros_after": self.nonzeros_after,
            "size_before": dict(self.size_before), "size_after": dict(self.size_after),
            "seconds": self.seconds, "calib_samples": self.calib_samples,
            "holdout_samples": self.holdout_samples,
            "fidelity": {k: v.to_dict() for k, v in self.fidelity.items()},
            "token_mask": self.token_mask,
        }
