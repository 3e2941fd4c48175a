"""One pruning job, shared by :func:`onnxprune.prune` and :func:`onnxprune.sweep`.

The input model is loaded, normalised and analysed, its calibration data split into selection
and held-out samples, and (with ``--stats``) the statistics files merged, once. Plans are then
pruned from it (:meth:`Job.run_plan`: every round of the channel-pruning pass, then cleanup),
each pruned model verified on the held-out samples and reported (:meth:`Job.result`). What a
job keeps between plans: the statistics of the input model, the greedy order of every group on
them (``paths``: the kept set of a smaller quota is a prefix of a larger one's,
:func:`onnxprune.select.level_decisions`) and the decisions already taken per group and quota.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from onnxprune import calibrate, weights
from onnxprune import stats as stats_io
from onnxprune.analysis import analyze
from onnxprune.calibrate import session
from onnxprune.errors import ModelError, OptionError, PassError
from onnxprune.graph import Graph
from onnxprune.metrics import count_macs, count_params
from onnxprune.modelio import Calibration, load_calibration, load_model
from onnxprune.passbase import run_passes
from onnxprune.passes import ChannelPrunePass, CleanupPass, NormalizePass
from onnxprune.passes.prune import Lineage, PruneOptions
from onnxprune.passes.qdq import QdqLowerPass, operator_format
from onnxprune.reasons import Reason
from onnxprune.report import Report, group_entry
from onnxprune.saving import run_sources
from onnxprune.select import SEQUENTIAL, KeepPlan, removes_anything, round_plans
from onnxprune.verify import OutputFidelity, RecordedOutputs, check_structure, fidelity


class _Outputs:
    """A session that returns only ``names`` (the reference's outputs the model also has)."""

    def __init__(self, sess: ort.InferenceSession, names: list[str]) -> None:
        self.sess, self.names = sess, names

    def get_outputs(self) -> list:
        keep = set(self.names)
        return [o for o in self.sess.get_outputs() if o.name in keep]

    def get_inputs(self) -> list:
        return self.sess.get_inputs()

    def run(self, names, feed, *args):
        return self.sess.run(names, feed, *args)


def open_session(model: onnx.ModelProto) -> ort.InferenceSession:
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


def sample_shapes(calib: Calibration) -> tuple[dict[str, tuple[int, ...]], int]:
    """Input shapes of one sample (for MAC counts) and how many samples one row holds."""
    lead = {"batched": (1,), "fixed": (calib.batch,), "unbatched": ()}[calib.mode]
    shapes = {k: lead + tuple(v.shape[1:]) for k, v in calib.arrays.items()}
    return shapes, (calib.batch if calib.mode == "fixed" else 1)


def worst_cosine(fid: Mapping[str, OutputFidelity], floating: set[str], z: float = 0.0
                 ) -> float:
    """The lowest cosine over the model's float outputs and the parts of each; with ``z`` > 0
    the lowest lower confidence bound ``cosine − z·se`` (see :mod:`onnxprune.verify`)."""
    vals = [f.worst_cosine_bound(z) for n, f in fid.items() if n in floating]
    return min(vals) if vals else 1.0


def stats_options(seed: int, holdout: float, max_positions: int, batch_size: int,
                  token_mask: str | None) -> dict:
    """The options a statistics file must have been collected with to be used."""
    return {"seed": int(seed), "holdout": float(holdout), "max_positions": int(max_positions),
            "batch_size": int(batch_size), "token_mask": token_mask}


@dataclass(frozen=True)
class JobOptions:
    method: str = "inchange"
    reweight: bool = True
    seed: int = 0
    holdout: float = 0.2
    max_positions: int = 256
    batch_size: int = 32
    ridge: float | str = "auto"
    steps: int = 1
    truncate: bool = True
    token_mask: str | None = "auto"


class Job:
    """The state a prune of one model shares between plans (module docstring).

    ``record``: record the original model's held-out outputs once instead of keeping its
    session (always for models whose weights stay in their files; a sweep records them so that
    each plan does not run the original again). ``holdout_data``: samples (as ``calib``) that
    measure fidelity instead of a held-out part of ``calib``, which then all drives selection
    and re-fitting. ``reference``: a model (the float original of a quantized input) that
    fidelity is measured against instead of the input, with the same inputs and outputs."""

    def __init__(self, model, calib, opts: JobOptions,
                 stats_files: Sequence[str | os.PathLike] = (),
                 say: Callable[[str], None] = lambda msg: None, record: bool = False,
                 holdout_data=None, reference=None) -> None:
        self.opts, self.say, self.calib_source = opts, say, calib
        self.holdout_source, self.reference_source = holdout_data, reference
        self.stats_files = list(stats_files)
        self.loaded = load_model(model)
        self.normalized, (norm,) = run_passes([NormalizePass()], self.loaded.model)
        # Quantized weights are float for the analysis and quantized again after each rewrite;
        # fidelity is measured on the quantized input as onnxruntime runs it.
        self.quantized = norm.info.get("quantized", ())
        own = open_session(self.loaded.model if self.quantized else self.normalized)
        self.floating = {o.name for o in own.get_outputs() if "float" in o.type}
        self.cal = load_calibration(calib, self.normalized, opts.token_mask)
        if holdout_data is None:
            self.hold_cal = self.cal
            self.sel_idx, self.hold_idx = split_samples(self.cal.n_samples, opts.holdout,
                                                        opts.seed)
        else:
            if stats_files:
                raise OptionError("--holdout-data cannot be combined with --stats (statistics "
                                  "files are collected without a held-out part of --calib)")
            self.hold_cal = load_calibration(holdout_data, self.normalized, opts.token_mask)
            self.sel_idx = np.arange(self.cal.n_samples)
            self.hold_idx = np.arange(self.hold_cal.n_samples)
        self.reference_fidelity = None  # the input's own fidelity against ``reference``
        if reference is not None:
            ref = self._open_reference(reference, own)
            self.reference_fidelity = fidelity(ref, own, self.hold_cal, self.hold_idx,
                                               opts.batch_size)
            own = ref
        if self.loaded.lazy or record:  # not held by a session through the rewrite
            own = RecordedOutputs(own, self.hold_cal, self.hold_idx, opts.batch_size)
        self.reference = own
        self.shapes, self.per = sample_shapes(self.cal)
        self.graph = Graph(self.normalized)
        self.analysis = analyze(self.graph)
        if not self.analysis.groups:
            operator_format(self.normalized)
        self.stats = None
        self.statistics_runs = 0  # see Report.statistics_runs
        if self.stats_files:
            if opts.method == "sampling":
                raise OptionError("--method sampling measures its sensitivities while "
                                  "calibrating; it cannot use --stats")
            self.stats = stats_io.merge(
                self.stats_files, stats_io.model_hash(self.normalized),
                stats_options(opts.seed, opts.holdout, opts.max_positions, opts.batch_size,
                              self.cal.token_mask),
                self.cal.n_samples, self.sel_idx, self.analysis.prunable_sites)
            say(f"statistics of {len(self.stats)} consumer(s) read from "
                f"{len(self.stats_files)} file(s)"
                + ("; seq/asym still run the model for every group"
                   if opts.method in SEQUENTIAL else "")
                + ("; later rounds re-collect" if opts.steps > 1 else ""))
        self.caches: dict[str, dict] = {}  # per method: decisions by group and quotas
        self.paths: dict = {}  # greedy paths of the groups on ``stats``

    @staticmethod
    def _open_reference(source, own: ort.InferenceSession) -> ort.InferenceSession:
        """The reference model's session; it must read the same inputs and make every output
        of the input model under the same names."""
        if isinstance(source, onnx.ModelProto):
            ref, what = open_session(source), "the reference model"
        else:
            path = Path(source)
            if not path.is_file():
                raise ModelError(f"reference model '{path}' does not exist; check the path")
            try:
                ref = session(str(path))
            except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise ModelError(f"onnxruntime cannot load reference model '{path}' "
                                 f"({first[:200]})") from None
            what = f"reference model '{path}'"
        ins = {i.name for i in own.get_inputs()}
        outs = [o.name for o in own.get_outputs()]
        if {i.name for i in ref.get_inputs()} != ins or not set(outs) <= {
                o.name for o in ref.get_outputs()}:
            raise ModelError(f"{what} does not read the same inputs and make the same outputs "
                             f"as the model (inputs {sorted(ins)}, outputs {outs}); give the "
                             "float original the model was quantized from")
        return _Outputs(ref, outs)

    def collect(self, excluded: frozenset[str] = frozenset()) -> dict:
        """The statistics of every consumer of every prunable group not ``excluded``, on the
        selection samples (collected once; read from the statistics files when given)."""
        if self.stats is None:
            o = self.opts
            groups = [g for g in self.analysis.groups if g.prunable and g.name not in excluded]
            sites = [s for g in groups for s in g.consumers]
            self.statistics_runs += 1
            self.stats = dict(zip(sites, calibrate.collect(
                self.normalized, self.graph, self.cal, self.sel_idx, sites, o.seed,
                o.max_positions, o.batch_size, sensitivity=o.method == "sampling",
                progress=self.say, memory_sites=self.analysis.prunable_sites)))
        return self.stats

    def run_plan(self, plan: KeepPlan, method: str, share_paths: bool = False
                 ) -> tuple[onnx.ModelProto, dict]:
        """The model pruned as ``plan`` says with ``method`` (all rounds), and its decisions.
        ``share_paths``: decide from the greedy order kept for each group (the same decisions,
        computed once for every plan)."""
        o = self.opts
        current, lineage, decisions = self.normalized, Lineage(), {}
        for t, round_plan in enumerate(round_plans(plan, self.analysis.groups, o.steps)):
            if o.steps > 1:
                self.say(f"round {t + 1}/{o.steps}")
            options = PruneOptions(plan=round_plan, method=method, reweight=o.reweight,
                                   seed=o.seed, max_positions=o.max_positions,
                                   batch_size=o.batch_size, ridge=o.ridge, truncate=o.truncate)
            first = t == 0  # statistics and decisions of the input model only
            current, results = run_passes(
                [ChannelPrunePass(self.cal, self.sel_idx, options, self.say,
                                  reference=self.normalized, lineage=lineage,
                                  stats=self.stats if first else None,
                                  cache=self.caches.setdefault(method, {}) if first else None,
                                  paths=self.paths if first and share_paths else None)],
                current)
            lineage = results[0].info["lineage"]
            decisions.update(results[0].info["decisions"])
            self.statistics_runs += results[0].info.get("statistics_runs", 0)
        final = [CleanupPass()] + ([QdqLowerPass(self.quantized)] if self.quantized else [])
        return run_passes(final, current)[0], decisions

    def _reference_info(self) -> dict | None:
        if self.reference_fidelity is None:
            return None
        src = self.reference_source
        return {"model": Path(src).name if isinstance(src, (str, os.PathLike)) else "ModelProto",
                "input_fidelity": {k: v.to_dict() for k, v in self.reference_fidelity.items()}}

    def fidelity(self, model) -> dict[str, OutputFidelity]:
        return fidelity(self.reference, model, self.hold_cal, self.hold_idx,
                        self.opts.batch_size)

    def worst(self, fid: Mapping[str, OutputFidelity], z: float = 0.0) -> float:
        return worst_cosine(fid, self.floating, z)

    def result(self, plan: KeepPlan, pruned: onnx.ModelProto, decisions: dict, fid, *,
               start: float, ratio: float, round_to: int | str, alloc=None, budget=None,
               guard=None):
        """Verify ``pruned`` (checker, onnxruntime load, held-out fidelity unless ``fid`` is
        given) and build its :class:`~onnxprune.api.PruneResult`."""
        from onnxprune.api import PruneResult

        o = self.opts
        self.say("verifying the pruned model")
        loaded_pruned = check_structure(pruned)
        if fid is None:
            fid = self.fidelity(loaded_pruned)
        del loaded_pruned
        groups = []
        for g in self.analysis.groups:
            d = decisions.get(g.name)
            # The decision's count, in the group's own units: re-analysing the pruned model can
            # see the group differently (one head left: its head_dim columns look like plain
            # channels).
            kept = len(d.kept) if d is not None else g.size
            planned = plan.ratio_of(g) if removes_anything(g, plan) else 0.0
            sens = alloc.sensitivity.get(g.name) if alloc is not None else None
            entry = group_entry(g, kept, d.rel_error if d else None, planned, sens)
            if g.name in plan.excluded and g.prunable:
                why = Reason("excluded by --exclude", "excluded")
                entry = replace(entry, reason=why, reasons=(why.to_dict(),))
            groups.append(entry)
        if alloc is not None:  # the overall fraction of prunable channels the budget removed
            tot = sum(g.total for g in groups if g.prunable)
            ratio = 1.0 - sum(g.kept for g in groups if g.prunable) / tot if tot else 0.0
        before, after = count_params(self.normalized), count_params(pruned)
        if after > before:
            raise PassError(f"pruning would leave the model with more parameters ({after}) "
                            f"than it had ({before}); please report this model")
        report = Report(
            method=o.method, ratio=float(ratio), reweight=bool(o.reweight), seed=int(o.seed),
            params_before=before, params_after=after,
            macs_before=count_macs(self.normalized, self.shapes) // self.per,
            macs_after=count_macs(pruned, self.shapes) // self.per,
            seconds=round(time.perf_counter() - start, 3),
            calib_samples=len(self.sel_idx), holdout_samples=len(self.hold_idx),
            groups=tuple(groups), fidelity=fid, steps=o.steps, round_to=round_to,
            min_keep=plan.min_keep, exclude=tuple(sorted(plan.excluded)), budget=budget,
            token_mask=self.cal.token_mask, safeguard=guard,
            holdout_source="calibration" if self.holdout_source is None else "holdout_data",
            reference=self._reference_info(), statistics_runs=self.statistics_runs)
        sources = run_sources(self.loaded.path, self.loaded.data_files, self.calib_source)
        if isinstance(self.holdout_source, (str, os.PathLike)):
            sources["held-out data"] = Path(self.holdout_source)
        if isinstance(self.reference_source, (str, os.PathLike)):
            sources["reference model"] = Path(self.reference_source)
        sources.update({f"statistics file '{Path(p).name}'": Path(p) for p in self.stats_files})
        return PruneResult(model=pruned, report=report, external_data=self.loaded.external_data,
                           sources=sources, weights_dir=weights.base_dir())
