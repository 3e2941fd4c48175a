"""Public Python API: :func:`prune` and :func:`inspect`."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx

from onnxprune import calibrate, options, weights
from onnxprune import stats as stats_io
from onnxprune.analysis import analyze
from onnxprune.budget import ALLOCATIONS, Allocation, Budget, Planner, measure
from onnxprune.errors import OptionError, PassError
from onnxprune.graph import Graph
from onnxprune.groups import Analysis
from onnxprune.job import (Job, JobOptions, open_session, sample_shapes,  # noqa: F401
                           split_samples, stats_options, worst_cosine)
from onnxprune.modelio import load_calibration, load_model
from onnxprune.saving import check_collisions, check_writes, run_sources, save_model
from onnxprune.passbase import run_passes
from onnxprune.passes import NormalizePass
from onnxprune.passes.qdq import operator_format
from onnxprune.report import InspectReport, Report, inspect_report
from onnxprune.select import METHODS, SEQUENTIAL, KeepPlan
from onnxprune.verify import latencies, sample_feed

log = logging.getLogger(__name__)

ModelSource = str | os.PathLike | onnx.ModelProto
CalibSource = str | os.PathLike | np.ndarray | Mapping[str, np.ndarray]


@dataclass(frozen=True, eq=False)
class PruneResult:
    """The pruned model, its report, whether it should be saved with external data, and the
    files the run read (never overwritten by :meth:`save`)."""

    model: onnx.ModelProto
    report: Report
    external_data: bool = False
    sources: Mapping[str, Path] = field(default_factory=dict)
    #: the input's directory when its weights were left in their files (models over
    #: ``weights.LAZY_BYTES``): the untouched weights of ``model`` still refer to them there
    weights_dir: str | None = None

    def save(self, path: str | os.PathLike, external_data: bool | None = None,
             overwrite_input: bool = False) -> list[Path]:
        """Save atomically (``<path>.data`` beside it when the input used external data).
        Refuses a path (or ``.data`` file) that is a file the run read — the input model only
        with ``overwrite_input``, the calibration data never."""
        ext = self.external_data if external_data is None else external_data
        check_writes(Path(path), ext, self.sources, overwrite_input)
        with weights.source(self.weights_dir):
            return save_model(self.model, path, ext)


def budget_option(target_macs: float | None, target_params: float | None,
                  allocation: str) -> Budget | None:
    options.exclusive(**{"--target-macs": target_macs, "--target-params": target_params})
    options.choice(allocation, "allocation", ALLOCATIONS)
    if target_macs is not None:
        return Budget("macs", options.kept_fraction(target_macs, "--target-macs", "MACs"),
                      allocation)
    if target_params is not None:
        return Budget("params", options.kept_fraction(target_params, "--target-params",
                                                      "parameters"), allocation)
    return None


def resolve_exclude(names: Sequence[str], analysis: Analysis) -> frozenset[str]:
    """Group names for ``--exclude`` entries: a group name, else the groups a node produces,
    else the groups it consumes."""
    if isinstance(names, str):
        names = [names]
    out: set[str] = set()
    for name in names:
        hits = [g.name for g in analysis.groups if g.name == name or name in g.producers]
        if not hits:
            hits = [g.name for g in analysis.groups if any(c.node == name for c in g.consumers)]
        if not hits:
            raise OptionError(f"--exclude {name!r}: no channel group or node of that name; run "
                              "'onnxprune inspect MODEL' to list them")
        out.update(hits)
    return frozenset(out)


#: Calibration samples used to measure each group's sensitivity for budgets.
SENSITIVITY_SAMPLES = 64
#: Without --ratio, --target-* or --min-cosine (and without --steps/--head-ratio, which go with
#: a uniform ratio): the smallest model whose held-out cosine stays at least this.
DEFAULT_MIN_COSINE = 0.99
#: --min-cosine holds the held-out cosine less this many standard errors to the target. Three,
#: not two: a user checks the chosen model on inputs of their own, whose mean cosine has its own
#: sampling error (the difference of two means of equal size has √2 times one's standard error,
#: so a 2-sigma margin on it is 2.8 SE), and the search keeps the deepest of several plans that
#: passed, which favours a plan whose held-out estimate came out high. Measured on the real-model
#: benchmark's test halves (benchmarks/results_real.md), with validation inputs: with 2, 11 of
#: 15 networks held; with 3, 13 (all 15 by this measure), at 0.3-3 % more of the MACs.
CONFIDENCE_Z = 3.0
#: A --min-cosine search stops when its bracket spans less than this fraction of the MACs.
SEARCH_TOLERANCE = 0.01
#: At most this many budget plans are tried between two neighbouring plans of the path.
REFINE_STEPS = 4


@weights.scoped
def prune(model: ModelSource, calib: CalibSource, *, ratio: float | None = None,
          method: str = "inchange", reweight: bool = True, seed: int = 0, holdout: float = 0.2,
          max_positions: int = 256, batch_size: int = 32, ridge: float | str = "auto",
          target_macs: float | None = None, target_params: float | None = None,
          min_cosine: float | None = None,
          allocation: str = "marginal", round_to: int | str = "auto", min_keep: int = 1,
          exclude: Sequence[str] = (), steps: int = 1, truncate: bool = True,
          head_ratio: float | None = None, token_mask: str | None = "auto",
          safeguard: bool = True, stats: Sequence[str | os.PathLike] | None = None,
          holdout_data: CalibSource | None = None, reference: ModelSource | None = None,
          progress: Callable[[str], None] | None = None) -> PruneResult:
    """Prune channels of every prunable group of ``model``.

    How much (by default ``min_cosine=0.99``; with ``steps`` > 1 or ``head_ratio`` and no other
    choice, ``ratio=0.5``): ``ratio`` (fraction removed from every group; attention-head groups:
    ``head_ratio`` when given), or a budget —
    ``target_macs`` / ``target_params``, the fraction of the original cost to keep, split among
    groups by measured output sensitivity (``allocation``: "marginal" or "equal-loss"; see
    :mod:`onnxprune.budget`) — or a fidelity target: ``min_cosine``, the smallest model (fewest
    MACs, along the budget allocation's path) whose held-out output cosine is at least that on
    every float output and on every part of one, less three standard errors (see
    :mod:`onnxprune.verify`); the report's ``budget.points`` lists every plan tried. Kept counts
    are multiples of ``round_to`` (``"auto"``: by width, see :meth:`KeepPlan.round_step`) or the
    whole segment, at least ``min_keep``; groups named (or produced by the nodes named) in
    ``exclude`` are not pruned. ``steps`` > 1 prunes gradually in that many rounds on the cubic schedule, with
    statistics re-collected between rounds. ``truncate=False`` runs the whole model whenever
    statistics are collected, instead of only the sub-graph they need (for benchmarking).

    ``calib``: a .npz path (keys = input names), a .npy path (single input), or a mapping of
    arrays, each with the sample axis first. A fraction ``holdout`` of the samples is kept aside to
    measure fidelity; the rest drives selection and re-fitting. ``ridge``: regularisation of the
    re-fit (and of the greedy) toward the layer's original weights, relative to each input's
    variance — ``"auto"`` (default): ρ = 1 for consumers with fewer than 20 calibration rows per
    column, plain least squares for the others; a number: that ρ everywhere (0: plain least
    squares); ``"gcv"``: per layer by generalised cross-validation. ``head_ratio``:
    the fraction of attention heads removed from head groups (None: ``ratio``). ``token_mask``:
    the input whose 0/1 values mark real tokens (padding = 0); statistics and fidelity then use
    real-token positions only. ``"auto"`` (default): an input named ``attention_mask``, if any;
    ``"none"``: every position counts. ``safeguard``: with ``seq``/``asym``, also prune the same
    plan with the one-shot ``inchange`` and keep whichever model is closer to the original on
    the held-out samples (``report.safeguard``); False keeps the sequential model as it is.
    ``stats``: statistics files written by :func:`calibrate` (shards are added up) instead of
    collecting them; ``calib`` is still read for the held-out fidelity, budgets' sensitivities
    and the per-group runs of ``seq``/``asym``. Same inputs: the same pruned model.
    ``holdout_data``: samples in ``calib``'s format, from the inputs the model will really see,
    that measure the fidelity (the report, ``min_cosine``'s search, the ``seq``/``asym``
    safeguard) instead of a ``holdout`` part of ``calib``, which then all drives selection.
    ``reference``: a model with the same inputs and outputs (the float original of a quantized
    ``model``) that every fidelity figure is measured against instead of ``model``; the report's
    ``reference.input_fidelity`` is ``model``'s own before pruning. A quantized (QDQ) ``model``
    is pruned in float and its weights quantized again in their own scheme
    (:mod:`onnxprune.passes.qdq`).
    """
    kw = dict(locals())
    ratio = kw.pop("ratio")
    return _prune_all(ratios=None if ratio is None else [ratio], **kw)[0]


@weights.scoped
def sweep(model: ModelSource, calib: CalibSource, ratios: Sequence[float], **kw
          ) -> list[PruneResult]:
    """``model`` pruned at each of ``ratios`` (a uniform ratio each, as ``prune(ratio=r)``;
    the other keyword options are :func:`prune`'s, budgets and ``min_cosine`` excepted). The
    results equal separate prunes, but what they share is done once: loading, analysis,
    calibration (or reading ``stats``), the original model's held-out outputs and, for the
    one-shot methods, each group's greedy order (a smaller kept set is a prefix of a larger
    one's, :func:`onnxprune.select.level_decisions`). A report's ``seconds`` counts its own
    plan; the first one's also the shared work."""
    ratios = options.sweep_ratios(ratios)
    for flag in ("target_macs", "target_params", "min_cosine"):
        if kw.get(flag) is not None:
            raise OptionError(f"a sweep prunes at uniform ratios; --{flag.replace('_', '-')} "
                              "cannot be swept")
    return _prune_all(model, calib, ratios=ratios, **kw)


def _prune_all(model: ModelSource, calib: CalibSource, *, ratios: list[float] | None = None,
               method: str = "inchange", reweight: bool = True, seed: int = 0,
               holdout: float = 0.2, max_positions: int = 256, batch_size: int = 32,
               ridge: float | str = "auto", target_macs: float | None = None,
               target_params: float | None = None, min_cosine: float | None = None,
               allocation: str = "marginal", round_to: int | str = "auto", min_keep: int = 1,
               exclude: Sequence[str] = (), steps: int = 1, truncate: bool = True,
               head_ratio: float | None = None, token_mask: str | None = "auto",
               safeguard: bool = True, stats: Sequence[str | os.PathLike] | None = None,
               holdout_data: CalibSource | None = None, reference: ModelSource | None = None,
               progress: Callable[[str], None] | None = None) -> list[PruneResult]:
    """:func:`prune` for one ratio (or none: a budget or the fidelity target), :func:`sweep`
    for several."""
    start = time.perf_counter()
    stats_files = [stats] if isinstance(stats, (str, os.PathLike)) else list(stats or [])
    ratio = ratios[0] if ratios else None
    if ratio is None and target_macs is None and target_params is None and min_cosine is None \
            and head_ratio is None and steps == 1:
        min_cosine = DEFAULT_MIN_COSINE  # the default mode: as small as stays faithful
    budget = budget_option(target_macs, target_params, allocation)
    if min_cosine is not None:
        min_cosine = options.min_cosine(min_cosine)
    for amount, flag in ((ratio, "--ratio"), (head_ratio, "--head-ratio")):
        options.exclusive(**{"--min-cosine": min_cosine, flag: amount})
        options.exclusive(**{flag: amount, "a --target-macs/--target-params budget": budget})
    options.exclusive(**{"--min-cosine": min_cosine,
                         "a --target-macs/--target-params budget": budget})
    ratios = [0.5 if ratio is None else ratio] if not ratios else ratios
    ratios = [options.removed_fraction(r, "--ratio", "channels") for r in ratios]
    options.choice(method, "method", METHODS)
    options.sampling(holdout, max_positions, seed)
    round_to, auto_round = options.round_to(round_to)
    min_keep = options.count(min_keep, "--min-keep")
    steps = options.count(steps, "--steps", 100)
    if method == "asym" and steps > 1:
        # Round t ≥ 2 re-fits consumers whose bias already changed in round 1, but asym's
        # target is the original pre-bias output: the bias change must then be taken relative
        # to the original bias, which is not implemented yet.
        raise OptionError("--method asym cannot be combined with --steps > 1 yet; use "
                          "--method asym in one shot, or --steps with inchange/seq")
    if min_cosine is not None and steps > 1:
        raise OptionError("--min-cosine cannot be combined with --steps > 1")
    if head_ratio is not None:
        head_ratio = options.removed_fraction(head_ratio, "--head-ratio", "attention heads")
    options.ridge(ridge)
    say = progress or (lambda msg: None)
    many = len(ratios) > 1
    job = Job(model, calib, JobOptions(method, reweight, seed, holdout, max_positions,
                                       batch_size, ridge, steps, truncate, token_mask),
              stats_files, say, record=many, holdout_data=holdout_data, reference=reference)
    plan = KeepPlan(ratio=0.0 if budget or min_cosine is not None else ratios[0],
                    round_to=round_to, auto_round=auto_round, min_keep=min_keep,
                    excluded=resolve_exclude(exclude, job.analysis),
                    head_ratio=None if head_ratio is None else float(head_ratio))
    measured = budget is not None or min_cosine is not None
    if min_cosine is not None and job.reference_fidelity is not None:
        own = job.worst(job.reference_fidelity, CONFIDENCE_Z)
        if own < min_cosine:
            raise OptionError(f"--min-cosine {min_cosine:g} cannot be met against the reference "
                              f"model: the input model itself, unpruned, has a held-out cosine "
                              f"of {own:.4f} to it (less {CONFIDENCE_Z:g} standard errors); lower "
                              "the target, "
                              "or drop --reference to measure against the input")

    if many and method not in SEQUENTIAL:
        job.collect(plan.excluded)  # every ratio decides from the same statistics and paths

    def run_plan(p: KeepPlan, meth: str) -> tuple[onnx.ModelProto, dict]:
        return job.run_plan(p, meth, share_paths=measured or many)

    alloc: Allocation | None = None
    search: dict | None = None
    pruned = decisions = fid = None
    if measured:
        say("analysing channel groups and measuring sensitivities"
            + (" for the budget" if budget is not None else " for the fidelity target"))
        stats = job.collect(plan.excluded)
        planner = measure(job.normalized, job.graph, job.analysis, stats, job.cal,
                          job.sel_idx[:SENSITIVITY_SAMPLES],
                          budget.kind if budget is not None else "macs", plan, method,
                          reweight, seed, ridge, job.shapes, batch_size, say, job.paths)
        if budget is not None:
            say("allocating the budget")
            alloc = planner.plan(budget.fraction, budget.allocation)
            plan = replace(plan, ratios=dict(alloc.ratios))
        else:
            alloc, plan, pruned, decisions, fid, search = _search_min_cosine(
                planner, plan, min_cosine, method, run_plan, job.fidelity,
                lambda f: job.worst(f, CONFIDENCE_Z), say)
    if budget is not None:
        budget_info = {"kind": budget.kind, "target": budget.fraction,
                       "allocation": budget.allocation, "predicted": alloc.predicted,
                       "planned": alloc.exact}
    elif search is not None:
        budget_info = {"kind": "min_cosine", "target": min_cosine, "allocation": "marginal",
                       "predicted": alloc.predicted, "planned": alloc.exact, **search}
    else:
        budget_info = None
    results = []
    for r in ratios:
        if results:
            start = time.perf_counter()
            plan = replace(plan, ratio=r)
            say(f"ratio {r:g}")
        guard = None
        if pruned is None:
            pruned, decisions = run_plan(plan, method)
            if method in SEQUENTIAL and safeguard:
                # Never worse than the one-shot fit: the sequential re-fit can fit the
                # calibration samples' upstream drift rather than the model; keep whichever of
                # the two models is closer to the original on the held-out samples.
                say("safeguard: the one-shot inchange model on the same plan, for comparison")
                fid = job.fidelity(pruned)
                alt, alt_decisions = run_plan(plan, "inchange")
                alt_fid = job.fidelity(alt)
                ws, wi = job.worst(fid), job.worst(alt_fid)
                guard = {"method": method, "worst_cosine": ws, "inchange_worst_cosine": wi,
                         "used": method if ws >= wi else "inchange"}
                if wi > ws:
                    pruned, decisions, fid = alt, alt_decisions, alt_fid
        results.append(job.result(plan, pruned, decisions, fid, start=start, ratio=r,
                                  round_to="auto" if auto_round else round_to, alloc=alloc,
                                  budget=budget_info, guard=guard))
        pruned = decisions = fid = None
    return results


@weights.scoped
def calibrate_stats(model: ModelSource, calib: CalibSource, out: str | os.PathLike, *,
                    shard: tuple[int, int] | None = None, seed: int = 0, holdout: float = 0.2,
                    max_positions: int = 256, batch_size: int = 32,
                    token_mask: str | None = "auto", workers: int | None = None,
                    address: str | None = None,
                    progress: Callable[[str], None] | None = None) -> Path:
    """Collect the statistics of every consumer of every prunable group on the selection
    samples (shard ``(k, n)``: the k-th of n contiguous parts of them) and write them to ``out``
    for ``prune(..., stats=[...])`` (:mod:`onnxprune.stats`). ``workers`` (a local Dask cluster
    of that many processes) or ``address`` (an existing Dask scheduler): the samples are split
    among the workers and their statistics added up (:mod:`onnxprune.cluster`). Returns the path
    written."""
    options.sampling(holdout, max_positions, seed)
    options.exclusive(**{"--workers": workers, "--address": address})
    if workers is not None:
        options.count(workers, "--workers", 1024)
    if shard is not None:
        shard = options.shard(shard)
    say = progress or (lambda msg: None)
    loaded, normalized, cal, graph, sites = stats_io.statistics_inputs(model, calib, token_mask)
    open_session(normalized)
    digest = stats_io.model_hash(normalized)
    sel_idx, _ = split_samples(cal.n_samples, holdout, seed)
    ids = sel_idx if shard is None else stats_io.shard_indices(sel_idx, shard)
    sources = run_sources(loaded.path, loaded.data_files, calib)
    check_collisions({"statistics": Path(out)}, sources)
    if workers is not None or address is not None:
        from onnxprune.cluster import cluster_statistics
        src = model if loaded.path is None else str(loaded.path)
        res = cluster_statistics(src, calib, ids, seed, max_positions, batch_size, token_mask,
                                 workers, address, say)
        if res["digest"] != digest or \
                res["sites"] != [(s.node, s.tensor) for s in sites]:
            raise PassError("the Dask workers analysed another model (another onnxprune "
                            "version on the cluster?)")
        ids = res["ids"]
        collected = [calibrate.SiteStats(G=G, rows=r, has_const=c)
                     for G, r, c in zip(res["G"], res["rows"], res["has_const"])]
    else:
        say(f"calibrating {len(sites)} consumer(s) on {len(ids)} sample(s)"
            + (f" (shard {shard[0]}/{shard[1]})" if shard else ""))
        collected = calibrate.collect(normalized, graph, cal, ids, sites, seed, max_positions,
                                      batch_size, progress=say)
    meta = {"model_sha256": digest, "n_samples": int(cal.n_samples),
            "shard": list(shard) if shard else [1, 1],
            **stats_options(seed, holdout, max_positions, batch_size, cal.token_mask)}
    return stats_io.save(out, meta, ids, list(zip(sites, collected)))


def _search_min_cosine(planner: Planner, plan: KeepPlan, target: float, method: str,
                       run_plan: Callable, measure_fid: Callable, worst: Callable,
                       say: Callable[[str], None]):
    """The deepest plan along the budget path whose held-out worst cosine, less ``CONFIDENCE_Z``
    standard errors, is ≥ ``target``.

    The path's plans are nested (each prunes at least what the one before does), so the
    fidelity falls along it; a bisection over the path finds the last plan that keeps the
    target. Sequential methods (seq, asym) cost a whole pass per plan: the bisection then runs
    with the one-shot ``inchange``, and the plan it chooses is then also pruned with the
    method itself, whose model is kept unless the one-shot one is closer (the safeguard of a
    plain sequential prune; the target stays met). Stops when the plans left between the last
    passing and the first failing one differ by less than ``SEARCH_TOLERANCE`` of the MACs.
    When rounding left those two further apart in exact MACs than that, up to ``REFINE_STEPS``
    budget plans (filled and traded, :meth:`Planner.plan`) at cost targets between them are
    tried, bisecting on the cost; their points carry ``cost_target``."""
    path = planner.path()
    if not path:
        raise OptionError("no prunable group: a fidelity target cannot be searched (see "
                          "'onnxprune inspect')")
    points: list[dict] = []
    keys: list[tuple] = []  # (plan key, method) of each point
    results: dict[tuple, tuple] = {}
    allocs: dict = {}

    def allocation(key):  # a step of the path (int), or a budget plan at a cost target (float)
        if key not in allocs:
            allocs[key] = (planner.allocation(path[key]) if isinstance(key, int)
                           else planner.plan(key, "marginal"))
        return allocs[key]

    def evaluate(key, meth: str) -> bool:
        if (key, meth) not in results:
            alloc = allocation(key)
            model, decisions = run_plan(replace(plan, ratios=dict(alloc.ratios)), meth)
            fid = measure_fid(model)
            w = worst(fid)
            results[(key, meth)] = (alloc, model, decisions, fid, w)
            point = {"method": meth, "step": key if isinstance(key, int) else None,
                     "macs_fraction": alloc.exact,
                     "cosine": {n: f.worst_cosine for n, f in fid.items()},
                     "cosine_bound": w, "meets_target": w >= target}
            if not isinstance(key, int):
                point["cost_target"] = key
            points.append(point)
            keys.append((key, meth))
            say(f"fidelity target {target:g}: {alloc.exact:.3f} of the MACs ({meth}) → "
                f"cosine bound {w:.4f}")
        return results[(key, meth)][4] >= target

    cost = [planner.predicted(lv) / planner.cost.full for lv in path]
    proxy = method if method not in SEQUENTIAL else "inchange"
    if not evaluate(0, proxy):
        alloc = results[(0, proxy)][0]
        raise OptionError(f"--min-cosine {target:g} cannot be met: even the lightest pruning "
                          f"({alloc.exact:.3f} of the MACs kept) gives a held-out cosine of "
                          f"{results[(0, proxy)][4]:.4f} (less {CONFIDENCE_Z:g} standard "
                          "errors); lower the target")
    good, bad = 0, len(path)
    while bad - good > 1 and cost[good] - (cost[bad] if bad < len(path) else 0.0) \
            > SEARCH_TOLERANCE:
        mid = (good + bad) // 2
        if evaluate(mid, proxy):
            good = mid
        else:
            bad = mid
    # Rounding can space neighbouring plans of the path far apart in cost (P-Net: from the whole
    # model to 0.80 of its MACs in one step). Between them, bisect on the cost target of the
    # budget's own plans, which fill and trade rounded widths (budget.Planner.plan).
    best = good
    lo = allocation(good).exact
    hi = allocation(bad).exact if bad < len(path) else 0.0
    for _ in range(REFINE_STEPS):
        if lo - hi <= SEARCH_TOLERANCE:
            break
        f = round((lo + hi) / 2, 6)
        try:
            alloc = allocation(f)
        except OptionError:  # the cost target is out of reach
            hi = f
            continue
        if not hi < alloc.exact < lo:
            hi = f  # the planner found nothing between hi and f
            continue
        if evaluate(f, proxy):
            best, lo = f, alloc.exact
        else:
            hi = alloc.exact
    chosen = (best, proxy)
    if proxy != method:  # the method itself on the chosen plan; kept when it is not worse
        evaluate(best, method)
        if results[(best, method)][4] >= results[chosen][4]:
            chosen = (best, method)
    alloc, model, decisions, fid, w = results[chosen]
    for p, k in zip(points, keys):
        p["chosen"] = k == chosen
    return (alloc, replace(plan, ratios=dict(alloc.ratios)), model, decisions, fid,
            {"points": points, "path_length": len(path)})


@weights.scoped
def measure_latency(model: ModelSource, pruned: onnx.ModelProto, calib: CalibSource, *,
                    holdout: float = 0.2, seed: int = 0, token_mask: str | None = "auto",
                    repeats: int = 30) -> tuple[float, float]:
    """Median onnxruntime latency (ms) of ``model`` and ``pruned`` on one held-out sample,
    measured interleaved (:func:`onnxprune.verify.latencies`)."""
    original = load_model(model).model
    cal = load_calibration(calib, original, token_mask)
    _, hold = split_samples(cal.n_samples, holdout, seed)
    a, b = latencies([original, pruned], sample_feed(cal, hold), repeats)
    return a, b


@weights.scoped
def inspect(model: ModelSource) -> InspectReport:
    """Channel groups of ``model``: sizes, producers, consumers, and why some are unprunable."""
    loaded = load_model(model)
    normalized, (norm,) = run_passes([NormalizePass()], loaded.model)
    analysis = analyze(Graph(normalized))
    if not analysis.groups:
        operator_format(normalized)
    return inspect_report(analysis, len(norm.info.get("quantized", ())))
