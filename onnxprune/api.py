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
import onnxruntime as ort

from onnxprune import calibrate, options, weights
from onnxprune import stats as stats_io
from onnxprune.analysis import Analysis, analyze
from onnxprune.budget import ALLOCATIONS, Allocation, Budget, Planner, measure
from onnxprune.calibrate import session
from onnxprune.errors import ModelError, OptionError, PassError
from onnxprune.graph import Graph
from onnxprune.metrics import count_macs, count_params
from onnxprune.modelio import Calibration, load_calibration, load_model
from onnxprune.saving import check_collisions, check_writes, run_sources, save_model
from onnxprune.passbase import run_passes
from onnxprune.passes import ChannelPrunePass, CleanupPass, NormalizePass
from onnxprune.passes.prune import PruneOptions
from onnxprune.passes.prune import Lineage
from onnxprune.reasons import Reason
from onnxprune.report import InspectReport, Report, group_entry, inspect_report
from onnxprune.select import METHODS, SEQUENTIAL, KeepPlan, removes_anything, round_plans
from onnxprune.verify import (OutputFidelity, RecordedOutputs, check_structure, fidelity,
                              latencies, sample_feed)

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


def _open_session(model: onnx.ModelProto) -> ort.InferenceSession:
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


def _sample_shapes(calib: Calibration) -> tuple[dict[str, tuple[int, ...]], int]:
    lead = {"batched": (1,), "fixed": (calib.batch,), "unbatched": ()}[calib.mode]
    shapes = {k: lead + tuple(v.shape[1:]) for k, v in calib.arrays.items()}
    return shapes, (calib.batch if calib.mode == "fixed" else 1)


#: Calibration samples used to measure each group's sensitivity for budgets.
SENSITIVITY_SAMPLES = 64
#: Without --ratio, --target-* or --min-cosine (and without --steps/--head-ratio, which go with
#: a uniform ratio): the smallest model whose held-out cosine stays at least this.
DEFAULT_MIN_COSINE = 0.99
#: --min-cosine holds the held-out cosine less this many standard errors to the target.
CONFIDENCE_Z = 2.0
#: A --min-cosine search stops when its bracket spans less than this fraction of the MACs.
SEARCH_TOLERANCE = 0.01


def _worst_cosine(fid: Mapping[str, OutputFidelity], floating: set[str], z: float = 0.0
                  ) -> float:
    """The lowest cosine over the model's float outputs and the parts of each; with ``z`` > 0
    the lowest lower confidence bound ``cosine − z·se`` (see :mod:`onnxprune.verify`)."""
    vals = [f.worst_cosine_bound(z) for n, f in fid.items() if n in floating]
    return min(vals) if vals else 1.0


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
          progress: Callable[[str], None] | None = None) -> PruneResult:
    """Prune channels of every prunable group of ``model``.

    How much (by default ``min_cosine=0.99``; with ``steps`` > 1 or ``head_ratio`` and no other
    choice, ``ratio=0.5``): ``ratio`` (fraction removed from every group; attention-head groups:
    ``head_ratio`` when given), or a budget —
    ``target_macs`` / ``target_params``, the fraction of the original cost to keep, split among
    groups by measured output sensitivity (``allocation``: "marginal" or "equal-loss"; see
    :mod:`onnxprune.budget`) — or a fidelity target: ``min_cosine``, the smallest model (fewest
    MACs, along the budget allocation's path) whose held-out output cosine is at least that on
    every float output and on every scale part of one, less two standard errors (see
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
    variance — 0 (default): plain least squares, directions the samples leave undetermined keep
    the original weights; ``"auto"``: per layer by generalised cross-validation. ``head_ratio``:
    the fraction of attention heads removed from head groups (None: ``ratio``). ``token_mask``:
    the input whose 0/1 values mark real tokens (padding = 0); statistics and fidelity then use
    real-token positions only. ``"auto"`` (default): an input named ``attention_mask``, if any;
    ``"none"``: every position counts. ``safeguard``: with ``seq``/``asym``, also prune the same
    plan with the one-shot ``inchange`` and keep whichever model is closer to the original on
    the held-out samples (``report.safeguard``); False keeps the sequential model as it is.
    ``stats``: statistics files written by :func:`calibrate` (shards are added up) instead of
    collecting them; ``calib`` is still read for the held-out fidelity, budgets' sensitivities
    and the per-group runs of ``seq``/``asym``. Same inputs: the same pruned model.
    """
    start = time.perf_counter()
    stats_files = [stats] if isinstance(stats, (str, os.PathLike)) else list(stats or [])
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
    ratio = 0.5 if ratio is None else options.removed_fraction(ratio, "--ratio", "channels")
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
    loaded = load_model(model)
    normalized, _ = run_passes([NormalizePass()], loaded.model)
    reference = _open_session(normalized)
    floating = {o.name for o in reference.get_outputs() if "float" in o.type}
    cal = load_calibration(calib, normalized, token_mask)
    sel_idx, hold_idx = split_samples(cal.n_samples, holdout, seed)
    if loaded.lazy:  # weights over LAZY_BYTES: not held by a session through the rewrite
        reference = RecordedOutputs(reference, cal, hold_idx, batch_size)
    shapes, per = _sample_shapes(cal)
    graph = Graph(normalized)
    analysis = analyze(graph)
    plan = KeepPlan(ratio=0.0 if budget or min_cosine is not None else ratio,
                    round_to=round_to, auto_round=auto_round, min_keep=min_keep,
                    excluded=resolve_exclude(exclude, analysis),
                    head_ratio=None if head_ratio is None else float(head_ratio))
    stats = None
    if stats_files:
        if method == "sampling":
            raise OptionError("--method sampling measures its sensitivities while calibrating; "
                              "it cannot use --stats")
        stats = stats_io.merge(
            stats_files, stats_io.model_hash(normalized),
            _stats_options(seed, holdout, max_positions, batch_size, cal.token_mask),
            cal.n_samples, sel_idx, stats_io.prunable_sites(analysis))
        say(f"statistics of {len(stats)} consumer(s) read from {len(stats_files)} file(s)"
            + ("; seq/asym still run the model for every group" if method in SEQUENTIAL else "")
            + ("; later rounds re-collect" if steps > 1 else ""))
    measured = budget is not None or min_cosine is not None
    caches: dict[str, dict] = {}  # per method: decisions by group and quotas
    paths: dict = {}  # greedy paths of the groups on ``stats`` (shared by budget and pass)

    def run_plan(p: KeepPlan, meth: str) -> tuple[onnx.ModelProto, dict]:
        """The model pruned as ``p`` says with method ``meth`` (all rounds), and its decisions."""
        current, lineage, decisions = normalized, Lineage(), {}
        for t, round_plan in enumerate(round_plans(p, analysis.groups, steps)):
            if steps > 1:
                say(f"round {t + 1}/{steps}")
            options = PruneOptions(plan=round_plan, method=meth, reweight=reweight, seed=seed,
                                   max_positions=max_positions, batch_size=batch_size,
                                   ridge=ridge, truncate=truncate)
            first = t == 0  # statistics and decisions of the input model only
            current, results = run_passes(
                [ChannelPrunePass(cal, sel_idx, options, say, reference=normalized,
                                  lineage=lineage, stats=stats if first else None,
                                  cache=caches.setdefault(meth, {}) if first else None,
                                  paths=paths if first and measured else None)],
                current)
            lineage = results[0].info["lineage"]
            decisions.update(results[0].info["decisions"])
        return run_passes([CleanupPass()], current)[0], decisions

    alloc: Allocation | None = None
    search: dict | None = None
    pruned = decisions = fid = None
    if budget is not None or min_cosine is not None:
        say("analysing channel groups and measuring sensitivities"
            + (" for the budget" if budget is not None else " for the fidelity target"))
        groups = [g for g in analysis.groups if g.prunable and g.name not in plan.excluded]
        sites = [s for g in groups for s in g.consumers]
        if stats is None:
            stats = dict(zip(sites, calibrate.collect(
                normalized, graph, cal, sel_idx, sites, seed, max_positions, batch_size,
                sensitivity=method == "sampling", progress=say)))
        planner = measure(normalized, graph, analysis, stats, cal,
                          sel_idx[:SENSITIVITY_SAMPLES],
                          budget.kind if budget is not None else "macs", plan, method,
                          reweight, seed, ridge, shapes, batch_size, say, paths)
        if budget is not None:
            say("allocating the budget")
            alloc = planner.plan(budget.fraction, budget.allocation)
            plan = replace(plan, ratios=dict(alloc.ratios))
        else:
            alloc, plan, pruned, decisions, fid, search = _search_min_cosine(
                planner, plan, min_cosine, method, run_plan,
                lambda m: fidelity(reference, m, cal, hold_idx, batch_size),
                lambda f: _worst_cosine(f, floating, CONFIDENCE_Z), say)
    guard = None
    if pruned is None:
        pruned, decisions = run_plan(plan, method)
        if method in SEQUENTIAL and safeguard:
            # Never worse than the one-shot fit: the sequential re-fit can fit the calibration
            # samples' upstream drift rather than the model; keep whichever of the two models is
            # closer to the original on the held-out samples.
            say("safeguard: the one-shot inchange model on the same plan, for comparison")
            fid = fidelity(reference, pruned, cal, hold_idx, batch_size)
            alt, alt_decisions = run_plan(plan, "inchange")
            alt_fid = fidelity(reference, alt, cal, hold_idx, batch_size)
            ws, wi = _worst_cosine(fid, floating), _worst_cosine(alt_fid, floating)
            guard = {"method": method, "worst_cosine": ws, "inchange_worst_cosine": wi,
                     "used": method if ws >= wi else "inchange"}
            if wi > ws:
                pruned, decisions, fid = alt, alt_decisions, alt_fid
    say("verifying the pruned model")
    loaded_pruned = check_structure(pruned)
    if fid is None:
        fid = fidelity(reference, loaded_pruned, cal, hold_idx, batch_size)
    del loaded_pruned
    groups = []
    for g in analysis.groups:
        d = decisions.get(g.name)
        # The decision's count, in the group's own units: re-analysing the pruned model can see
        # the group differently (one head left: its head_dim columns look like plain channels).
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
    if budget is not None:
        budget_info = {"kind": budget.kind, "target": budget.fraction,
                       "allocation": budget.allocation, "predicted": alloc.predicted,
                       "planned": alloc.exact}
    elif search is not None:
        budget_info = {"kind": "min_cosine", "target": min_cosine, "allocation": "marginal",
                       "predicted": alloc.predicted, "planned": alloc.exact, **search}
    else:
        budget_info = None
    if count_params(pruned) > count_params(normalized):
        raise PassError(f"pruning would leave the model with more parameters "
                        f"({count_params(pruned)}) than it had ({count_params(normalized)}); "
                        "please report this model")
    report = Report(
        method=method, ratio=float(ratio), reweight=bool(reweight),
        seed=int(seed),
        params_before=count_params(normalized), params_after=count_params(pruned),
        macs_before=count_macs(normalized, shapes) // per, macs_after=count_macs(pruned, shapes) // per,
        seconds=round(time.perf_counter() - start, 3),
        calib_samples=len(sel_idx), holdout_samples=len(hold_idx),
        groups=tuple(groups), fidelity=fid, steps=steps,
        round_to="auto" if auto_round else round_to,
        min_keep=min_keep,
        exclude=tuple(sorted(plan.excluded)), budget=budget_info, token_mask=cal.token_mask,
        safeguard=guard)
    sources = run_sources(loaded.path, loaded.data_files, calib)
    sources.update({f"statistics file '{Path(p).name}'": Path(p) for p in stats_files})
    return PruneResult(model=pruned, report=report, external_data=loaded.external_data,
                       sources=sources, weights_dir=weights.base_dir())


def _stats_options(seed: int, holdout: float, max_positions: int, batch_size: int,
                   token_mask: str | None) -> dict:
    return {"seed": int(seed), "holdout": float(holdout), "max_positions": int(max_positions),
            "batch_size": int(batch_size), "token_mask": token_mask}


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
    _open_session(normalized)
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
            **_stats_options(seed, holdout, max_positions, batch_size, cal.token_mask)}
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
    passing and the first failing one differ by less than ``SEARCH_TOLERANCE`` of the MACs."""
    path = planner.path()
    if not path:
        raise OptionError("no prunable group: a fidelity target cannot be searched (see "
                          "'onnxprune inspect')")
    points: list[dict] = []
    results: dict[tuple[int, str], tuple] = {}

    def evaluate(i: int, meth: str) -> bool:
        key = (i, meth)
        if key not in results:
            alloc = planner.allocation(path[i])
            model, decisions = run_plan(replace(plan, ratios=dict(alloc.ratios)), meth)
            fid = measure_fid(model)
            w = worst(fid)
            results[key] = (alloc, model, decisions, fid, w)
            points.append({"method": meth, "step": i, "macs_fraction": alloc.exact,
                           "cosine": {n: f.worst_cosine for n, f in fid.items()},
                           "cosine_bound": w, "meets_target": w >= target})
            say(f"fidelity target {target:g}: {alloc.exact:.3f} of the MACs ({meth}) → "
                f"cosine bound {w:.4f}")
        return results[key][4] >= target

    cost = [planner.predicted(lv) / planner.cost.full for lv in path]
    proxy = method if method not in SEQUENTIAL else "inchange"
    if not evaluate(0, proxy):
        alloc = results[(0, proxy)][0]
        raise OptionError(f"--min-cosine {target:g} cannot be met: even the lightest pruning "
                          f"({alloc.exact:.3f} of the MACs kept) gives a held-out cosine of "
                          f"{results[(0, proxy)][4]:.4f} (less 2 standard errors); lower the "
                          "target")
    good, bad = 0, len(path)
    while bad - good > 1 and cost[good] - (cost[bad] if bad < len(path) else 0.0) \
            > SEARCH_TOLERANCE:
        mid = (good + bad) // 2
        if evaluate(mid, proxy):
            good = mid
        else:
            bad = mid
    chosen = (good, proxy)
    if proxy != method:  # the method itself on the chosen plan; kept when it is not worse
        evaluate(good, method)
        if results[(good, method)][4] >= results[chosen][4]:
            chosen = (good, method)
    alloc, model, decisions, fid, w = results[chosen]
    for p in points:
        p["chosen"] = (p["step"], p["method"]) == chosen
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
    normalized, _ = run_passes([NormalizePass()], loaded.model)
    return inspect_report(analyze(Graph(normalized)))
