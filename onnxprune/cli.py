"""Command line: ``onnxprune prune | calibrate | sparsify | compare | inspect``. The only module
that prints (with its progress display, :mod:`onnxprune.progress`)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from onnxprune import api, options
from onnxprune.errors import OnnxPruneError, OptionError, OutputError, PassError
from onnxprune.modelio import external_data_files
from onnxprune.progress import Progress
from onnxprune.saving import (check_output_path, check_report_path, check_writes, finite,
                              run_sources, write_json_atomic, write_text_atomic)
from onnxprune.select import METHODS


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        sys.stderr.write(f"onnxprune: error: {message} (see 'onnxprune {self.prog.split()[-1]} "
                         "--help')\n" if " " in self.prog else f"onnxprune: error: {message}\n")
        sys.exit(2)


def _arg(flag: str, check, convert=float, kind: str = "a number", words: tuple[str, ...] = ()):
    """An argparse type: the text converted (``words`` pass as they are), then checked by the
    :mod:`onnxprune.options` function the Python API uses, so both refuse alike."""
    def parse(text: str):
        if text in words:
            return check(text)
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} must be {kind}, got {text!r}")
        try:
            return check(value)
        except OptionError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return parse


def _removed_fraction(flag: str, what: str):
    return _arg(flag, lambda v: options.removed_fraction(v, flag, what))


def _kept_fraction(flag: str, what: str):
    return _arg(flag, lambda v: options.kept_fraction(v, flag, what))


def _count(flag: str, limit: int):
    return _arg(flag, lambda v: options.count(v, flag, limit), int, "an integer")


def _valid_round_to(value):
    options.round_to(value)  # the API takes the value itself ("auto" or K)
    return value


_ROUND_TO = _arg("--round-to", _valid_round_to, int, "an integer or 'auto'", ("auto",))
_RIDGE = _arg("--ridge", options.ridge, float, "a non-negative number, 'auto' or 'gcv'",
              ("auto", "gcv"))


def _calib_args(p) -> None:
    """--calib, --calib-images (with --size, --mean, --std) or --calib-text (with
    --tokenizer, --max-length)."""
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--calib",
                     help=".npz keyed by input name (or .npy for a single input), sample axis "
                          "first")
    src.add_argument("--calib-images", metavar="DIR",
                     help="a folder of images (single NCHW float input; needs Pillow: pip "
                          "install 'onnxprune[images]'): shorter side resized, centre crop, "
                          "[0, 1], then (x - mean) / std")
    src.add_argument("--calib-text", metavar="FILE",
                     help="a UTF-8 text file, one sample per line, tokenized with --tokenizer "
                          "(needs tokenizers: pip install 'onnxprune[text]'); fills input_ids, "
                          "attention_mask, token_type_ids")
    p.add_argument("--tokenizer", metavar="DIR",
                   help="for --calib-text: a folder holding tokenizer.json (or the file)")
    p.add_argument("--max-length", type=_count("--max-length", 1 << 16), metavar="N",
                   help="for --calib-text: truncate to N tokens (default: the model's static "
                        "sequence length, else 128)")
    p.add_argument("--size", type=_count("--size", 1 << 15), nargs=2, metavar=("H", "W"),
                   help="image size for --calib-images (default: the model input's)")
    p.add_argument("--mean", type=float, nargs="+", default=[0.0],
                   help="per-channel mean on the [0, 1] scale for --calib-images (one value or "
                        "one per channel; default 0)")
    p.add_argument("--std", type=float, nargs="+", default=[1.0],
                   help="per-channel std for --calib-images (default 1)")


_PRUNE_RIDGE_HELP = ("regularisation of the re-fit toward the layer's original weights, "
                     "relative to each input's variance: a number for every layer (0: "
                     "least squares), 'auto' (default: 1 for layers with fewer than 20 "
                     "calibration rows per input column, such as a classifier after global "
                     "pooling; 0 for the others) or 'gcv' (generalised cross-validation "
                     "for those few-row layers)")


def _run_args(p, ridge: bool = True, ridge_help: str = "", force: bool = True,
              report: bool = True) -> None:
    """Options every calibrated command shares."""
    p.add_argument("--token-mask", default="auto", metavar="INPUT",
                   help="input whose 0/1 values mark real tokens (padding = 0): statistics and "
                        "the fidelity check use real tokens only (default 'auto': an input "
                        "named attention_mask, if any; 'none': every position)")
    p.add_argument("--seed", type=_arg("--seed", options.seed, int, "a non-negative integer"),
                   default=0, help="seed for sampling and splits (default 0)")
    p.add_argument("--holdout", type=_arg("--holdout", options.holdout), default=0.2,
                   help="fraction of calibration samples kept aside for the fidelity check "
                        "(default 0.2)")
    p.add_argument("--max-positions", type=_count("--max-positions", 1 << 20), default=256,
                   help="cap on sampled output positions per sample for conv consumers "
                        "(default 256)")
    if ridge:
        p.add_argument("--ridge", type=_RIDGE, default="auto", help=ridge_help)
    if report:
        p.add_argument("--report", help="write the JSON report here")
    if force:
        p.add_argument("--force", action="store_true", help="allow overwriting the input model")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress messages")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="onnxprune", description="Structured pruning (channels, neurons, heads) "
                "and weight sparsity of ONNX models, with least-squares re-fitting on "
                "calibration samples.")
    sub = p.add_subparsers(dest="command", parser_class=_Parser, required=True)
    pr = sub.add_parser("prune", help="prune a model")
    pr.add_argument("input", help="model to prune (.onnx; external data is read from beside it)")
    pr.add_argument("output", help="where to write the pruned model (.onnx)")
    _calib_args(pr)
    pr.add_argument("--ratio", type=_removed_fraction("--ratio", "channels"), default=None,
                    nargs="+", metavar="R",
                    help="fraction of channels removed from every prunable group, 0 ≤ R < 1 "
                         "(without --ratio, --target-* or --min-cosine: --min-cosine 0.99; "
                         "with --steps or --head-ratio: 0.5). Several values: a sweep, one "
                         "model per ratio written to OUTPUT with _rR before .onnx (reports "
                         "alike), calibrated and selected once")
    pr.add_argument("--target-macs", type=_kept_fraction("--target-macs", "MACs"), metavar="F",
                    help="keep this fraction of the original MACs; per-group ratios are chosen "
                         "from each group's measured output sensitivity (instead of --ratio)")
    pr.add_argument("--target-params", type=_kept_fraction("--target-params", "parameters"),
                    metavar="F",
                    help="keep this fraction of the original parameters (as --target-macs)")
    pr.add_argument("--min-cosine", type=_arg("--min-cosine", options.min_cosine),
                    metavar="C",
                    help="the smallest model (fewest MACs) whose held-out output cosine stays "
                         "≥ C on every output (and every part of one), found by searching "
                         "the budget (instead of --ratio/--target-*; the default, with C = "
                         "0.99, when none of them is given)")
    pr.add_argument("--allocation", choices=("marginal", "equal-loss"), default="marginal",
                    help="how a budget is split among groups: least output damage per unit of "
                         "cost removed (default) or equal damage per group (the paper's)")
    pr.add_argument("--round-to", type=_ROUND_TO, default="auto", metavar="K",
                    help="kept widths are multiples of K (or the whole width) for SIMD/NPU-"
                         "friendly shapes; 'auto' (default): multiples of 8 for producers of "
                         "≥ 32 channels, of 4 for 8–31, exact below; 1: no rounding")
    pr.add_argument("--min-keep", type=_count("--min-keep", 1 << 20), default=1, metavar="N",
                    help="keep at least N channels of every producer (default 1)")
    pr.add_argument("--exclude", action="append", default=[], metavar="NODE_OR_GROUP",
                    help="do not prune this group, or the groups this node produces "
                         "(repeatable; names as 'onnxprune inspect' shows them)")
    pr.add_argument("--steps", type=_count("--steps", 100), default=1, metavar="N",
                    help="prune gradually in N rounds on the cubic schedule, re-collecting "
                         "statistics between rounds (default 1: one shot)")
    pr.add_argument("--head-ratio", type=_removed_fraction("--head-ratio", "attention heads"),
                    default=None,
                    help="fraction of attention heads removed from every head group, 0 ≤ R < 1 "
                         "(default: --ratio)")
    pr.add_argument("--method", choices=METHODS, default="inchange",
                    help="selection method (default inchange): inchange = LayerInChange, seq = "
                         "SeqInChange, asym = AsymInChange, sampling = PFP sensitivity sampling, "
                         "weight-norm, act-norm, random")
    pr.add_argument("--no-reweight", action="store_true",
                    help="only slice the next layer's weights (no least-squares re-fit)")
    pr.add_argument("--html", metavar="REPORT.html",
                    help="also write a self-contained HTML report (summary with onnxruntime "
                         "latency before/after, plots, the table of groups)")
    pr.add_argument("--holdout-data", metavar="HELDOUT",
                    help="samples (.npz/.npy as --calib) that measure the fidelity and drive "
                         "--min-cosine instead of a --holdout part of the calibration data "
                         "(which is then all used for selection); best taken from the inputs "
                         "the model will see in deployment")
    pr.add_argument("--reference", metavar="FLOAT.onnx",
                    help="measure every fidelity figure against this model instead of the input "
                         "(the float original of a quantized model; same inputs and outputs)")
    pr.add_argument("--stats", nargs="+", metavar="STATS",
                    help="statistics written by 'onnxprune calibrate' (several shards are added "
                         "up) instead of collecting them; --calib is still needed for the "
                         "held-out check")
    _run_args(pr, ridge_help=_PRUNE_RIDGE_HELP)
    ca = sub.add_parser("calibrate", help="collect the statistics once, prune many times")
    ca.add_argument("input", help="model (.onnx)")
    ca.add_argument("output", help="where to write the statistics (.npz)")
    _calib_args(ca)
    ca.add_argument("--shard", type=_arg("--shard", options.shard, str, "K/N"), metavar="K/N",
                    help="only the K-th of N parts of the selection samples (run the N shards "
                         "anywhere, then 'prune --stats' with all N files)")
    where = ca.add_mutually_exclusive_group()
    where.add_argument("--workers", type=_count("--workers", 1024), metavar="N",
                       help="split the samples among N local worker processes (Dask; pip "
                            "install 'onnxprune[cluster]') and add their statistics up")
    where.add_argument("--address", metavar="ADDR",
                       help="run the shards on the Dask cluster whose scheduler is at ADDR "
                            "(e.g. tcp://10.0.0.5:8786), one per worker")
    _run_args(ca, ridge=False, report=False, force=False)
    sp = sub.add_parser("sparsify", help="zero weights (unstructured or N:M) and re-fit the rest")
    sp.add_argument("input", help="model to sparsify (.onnx)")
    sp.add_argument("output", help="where to write the sparse model (.onnx)")
    _calib_args(sp)
    sp.add_argument("--sparsity", type=_removed_fraction("--sparsity", "weights"), default=None,
                    metavar="S", help="fraction of the weights of every Conv/Gemm/MatMul zeroed "
                    "(default 0.5; with an N:M pattern: 1 - N/M)")
    sp.add_argument("--pattern", default="unstructured",
                    help="'unstructured' (default) or N:M, e.g. 2:4 (N kept of every M "
                         "consecutive input channels)")
    sp.add_argument("--method", choices=("obs", "magnitude"), default="obs",
                    help="which weights: obs = least-squares (OBS) saliency (default), "
                         "magnitude = smallest |w| (Zhu & Gupta)")
    sp.add_argument("--allocation", choices=("global", "uniform"), default=None,
                    help="global (default for unstructured): one saliency threshold over all "
                         "layers, so sensitive layers keep more; uniform (N:M's): every layer "
                         "at --sparsity")
    sp.add_argument("--steps", type=_count("--steps", 100), default=1, metavar="N",
                    help="gradual: N rounds on the cubic schedule, statistics re-collected "
                         "between rounds (default 1)")
    sp.add_argument("--no-reweight", action="store_true",
                    help="only zero weights (no least-squares re-fit of the rest)")
    sp.add_argument("--storage", choices=("dense", "sparse"), default="dense",
                    help="sparse: save weights that are smaller that way as ONNX sparse "
                         "initializers (onnxruntime loads them; default dense)")
    sp.add_argument("--exclude", action="append", default=[], metavar="NODE",
                    help="leave this layer dense (repeatable)")
    _run_args(sp, ridge_help="regularisation of the re-fit toward the original weights: a "
              "number, or 'auto' (default: 1 for layers with fewer than 20 calibration rows "
              "per input column, else 0)")
    cp = sub.add_parser("compare", help="small-dense vs large-sparse at equal non-zeros")
    cp.add_argument("input", help="model (.onnx)")
    _calib_args(cp)
    cp.add_argument("--nonzeros", required=True,
                    type=_arg("--nonzeros", options.nonzeros),
                    metavar="F", help="fraction of the original non-zero parameters both "
                                      "models keep")
    cp.add_argument("--method", choices=("obs", "magnitude"), default="obs",
                    help="sparsify's selection (default obs)")
    cp.add_argument("--allocation", choices=("global", "uniform"), default="global",
                    help="sparsify's allocation (default global)")
    cp.add_argument("--no-reweight", action="store_true", help="no re-fit in either model")
    cp.add_argument("--save-dense", metavar="PATH", help="also write the small-dense model")
    cp.add_argument("--save-sparse", metavar="PATH", help="also write the large-sparse model")
    _run_args(cp, ridge=False, force=False)
    ins = sub.add_parser("inspect", help="list channel groups and why some are unprunable")
    ins.add_argument("input", help="model to inspect (.onnx)")
    ins.add_argument("--json", action="store_true", help="print JSON instead of text")
    return p


def _progress(quiet: bool):
    return None if quiet else Progress()


def _reads_and_calib(args, out: Path | None, others: dict[str, Path]):
    """Every path the run reads, checked against every path it writes (``out`` and
    ``others``) before any work; then the calibration source (the images loaded)."""
    if args.calib_images is None and (args.size or args.mean != [0.0] or args.std != [1.0]):
        raise OptionError("--size, --mean and --std apply to --calib-images only")
    if args.calib_text is None and (args.tokenizer or args.max_length):
        raise OptionError("--tokenizer and --max-length apply to --calib-text only")
    if args.calib_text is not None and not args.tokenizer:
        raise OptionError("--calib-text needs --tokenizer DIR (a folder with tokenizer.json)")
    reads = run_sources(Path(args.input), external_data_files(Path(args.input)), args.calib)
    if args.calib_images is not None:
        from onnxprune.images import image_files
        reads.update({f"calibration image '{f.name}'": f for f in image_files(args.calib_images)})
    if args.calib_text is not None:
        from onnxprune.text import tokenizer_file
        reads.update({"calibration text": Path(args.calib_text),
                      "tokenizer": tokenizer_file(args.tokenizer)})
    check_writes(out, True, reads, getattr(args, "force", False), others)
    calib = args.calib
    if args.calib_images is not None or args.calib_text is not None:
        from onnxprune.images import load_images, model_header
        header = model_header(args.input)
        if args.calib_images is not None:
            calib = load_images(args.calib_images, header, args.size, args.mean, args.std)
        else:
            from onnxprune.text import load_texts
            calib = load_texts(args.calib_text, args.tokenizer, header, args.max_length)
    return reads, calib


def _write_report(report_path: Path | None, data: dict) -> None:
    if report_path is None:
        return
    try:
        write_json_atomic(report_path, data)
    except OSError as exc:
        raise OutputError(f"cannot write the report '{report_path}': {exc.strerror or exc}"
                          ) from None


def _say_fidelity(fidelity, token_mask, reference: dict | None = None) -> None:
    against = f", against '{reference['model']}'" if reference else ""
    for name, f in fidelity.items():
        top1 = "" if f.top1_agreement is None else f", top-1 agreement {f.top1_agreement:.3f}"
        sys.stderr.write(f"onnxprune:   output '{name}': rel_l2 {f.rel_l2:.4f}, cosine "
                         f"{f.cosine:.4f}{top1} (held-out samples"
                         f"{', real tokens' if token_mask else ''}{against})\n")
        if reference and name in reference["input_fidelity"]:
            g = reference["input_fidelity"][name]
            sys.stderr.write(f"onnxprune:     the input model itself: cosine {g['cosine']:.4f}"
                             + ("" if g["top1_agreement"] is None else
                                f", top-1 agreement {g['top1_agreement']:.3f}") + "\n")


def _swept(path: Path | None, ratio, many: bool) -> Path | None:
    """A sweep's file for ``ratio``: ``_r<ratio>`` before the suffix."""
    return path if path is None or not many else path.with_name(f"{path.stem}_r{ratio:g}"
                                                                f"{path.suffix}")


def _cmd_prune(args) -> int:
    ratios = args.ratio or [None]
    many = len(ratios) > 1
    if many:
        options.sweep_ratios(ratios)
    outs = [check_output_path(_swept(Path(args.output), r, many), args.input, args.force)
            for r in ratios]
    reports = [_swept(check_report_path(args.report), r, many) if args.report else None
               for r in ratios]
    htmls = [_swept(check_report_path(args.html), r, many) if args.html else None
             for r in ratios]
    label = (lambda what, i: f"{what} {i + 1}") if many else (lambda what, i: what)
    written = {label(what, i): p for i, trio in enumerate(zip(outs, reports, htmls))
               for what, p in zip(("output model", "report", "HTML report"), trio)
               if p is not None}
    written.update({label("output model", i) + "'s external data": o.with_name(o.name + ".data")
                    for i, o in enumerate(outs)} if many else {})

    def others(i: int) -> dict[str, Path]:  # what is written besides output i and its data
        mine = (label("output model", i), label("output model", i) + "'s external data")
        return {k: v for k, v in written.items() if k not in mine}
    # Before any work, every path written against every path read; after the run (nothing
    # written yet) again with what the run itself read (PruneResult.sources).
    extra_reads = {f"statistics file '{Path(f).name}'": Path(f) for f in args.stats or ()}
    if args.holdout_data is not None:
        extra_reads["held-out data"] = Path(args.holdout_data)
    if args.reference is not None:
        extra_reads["reference model"] = Path(args.reference)
    check_writes(outs[0], True, extra_reads, args.force, others(0))
    reads, calib = _reads_and_calib(args, outs[0], others(0))
    reads.update(extra_reads)
    kw = dict(stats=args.stats, method=args.method, reweight=not args.no_reweight,
              seed=args.seed, holdout=args.holdout, max_positions=args.max_positions,
              ridge=args.ridge, round_to=args.round_to, min_keep=args.min_keep,
              exclude=args.exclude, steps=args.steps, head_ratio=args.head_ratio,
              token_mask=args.token_mask, holdout_data=args.holdout_data,
              reference=args.reference, progress=_progress(args.quiet))
    kw.update(target_macs=args.target_macs, target_params=args.target_params,
              min_cosine=args.min_cosine, allocation=args.allocation)
    results = api.sweep(args.input, calib, ratios, **kw) if many else \
        [api.prune(args.input, calib, ratio=ratios[0], **kw)]
    for i, (out, report_path, html_path, result) in enumerate(zip(outs, reports, htmls,
                                                                   results)):
        check_writes(out, result.external_data, {**reads, **result.sources}, args.force,
                     others(i))
        result.save(out, overwrite_input=args.force)
        r = result.report
        _write_report(report_path, r.to_dict())
        if html_path is not None:
            from onnxprune.html import render
            lat = api.measure_latency(args.input, result.model, calib, holdout=args.holdout,
                                      seed=args.seed, token_mask=args.token_mask)
            write_text_atomic(html_path, render(r, f"onnxprune: {Path(args.input).name}", lat))
        if not args.quiet:
            pct = 100.0 * (1 - r.params_after / max(r.params_before, 1))
            mpct = 100.0 * (1 - r.macs_after / r.macs_before) if r.macs_before else 0.0
            sys.stderr.write(f"onnxprune: wrote {out}: params {r.params_before} → "
                             f"{r.params_after} (−{pct:.1f}%), MACs {r.macs_before} → "
                             f"{r.macs_after} (−{mpct:.1f}%) in {r.seconds:.1f}s\n")
            _say_fidelity(r.fidelity, r.token_mask, r.reference)
    return 0


def _cmd_calibrate(args) -> int:
    out = Path(args.output)
    if out.suffix.lower() != ".npz":
        raise OutputError(f"statistics output '{out}' must end in .npz")
    parent = out.parent if str(out.parent) else Path(".")
    if out.is_dir() or not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write the statistics to '{out}': not a writable file path")
    _, calib = _reads_and_calib(args, None, {"statistics": out})
    if args.shard and (args.workers or args.address):
        raise OptionError("--shard is one machine's part; --workers/--address split the "
                          "samples themselves: give one or the other")
    path = api.calibrate_stats(args.input, calib, out, shard=args.shard, seed=args.seed,
                               holdout=args.holdout, max_positions=args.max_positions,
                               token_mask=args.token_mask, workers=args.workers,
                               address=args.address, progress=_progress(args.quiet))
    if not args.quiet:
        sys.stderr.write(f"onnxprune: wrote {path}\n")
    return 0


def _cmd_sparsify(args) -> int:
    from onnxprune.sparse_api import sparsify
    out = check_output_path(args.output, args.input, args.force)
    report_path = check_report_path(args.report) if args.report else None
    others = {"report": report_path} if report_path is not None else {}
    reads, calib = _reads_and_calib(args, out, others)
    result = sparsify(args.input, calib, sparsity=args.sparsity, pattern=args.pattern,
                      method=args.method, reweight=not args.no_reweight, steps=args.steps,
                      allocation=args.allocation, ridge=args.ridge, seed=args.seed,
                      holdout=args.holdout, max_positions=args.max_positions,
                      exclude=args.exclude, token_mask=args.token_mask,
                      storage_format=args.storage, progress=_progress(args.quiet))
    check_writes(out, result.external_data, {**reads, **result.sources}, args.force, others)
    result.save(out, overwrite_input=args.force)
    r = result.report
    _write_report(report_path, r.to_dict())
    if not args.quiet:
        sys.stderr.write(f"onnxprune: wrote {out}: non-zero parameters {r.nonzeros_before} → "
                         f"{r.nonzeros_after} ({r.weight_nonzeros} of {r.weights} weights in "
                         f"{len(r.layers)} layers), {r.size_after['gzip_bytes']} bytes gzipped "
                         f"(was {r.size_before['gzip_bytes']}) in {r.seconds:.1f}s\n")
        _say_fidelity(r.fidelity, r.token_mask)
    return 0


def _cmd_compare(args) -> int:
    from onnxprune.sparse_api import compare
    report_path = check_report_path(args.report) if args.report else None
    others = {k: Path(v) for k, v in (("report", report_path), ("--save-dense", args.save_dense),
                                      ("--save-sparse", args.save_sparse)) if v is not None}
    for flag in ("--save-dense", "--save-sparse"):
        if flag in others:
            check_output_path(others[flag], args.input, False)
    data = {f"{k}'s external data": v.with_name(v.name + ".data") for k, v in others.items()
            if k != "report"}
    reads, calib = _reads_and_calib(args, None, {**others, **data})
    report, dense, sparse = compare(args.input, calib, nonzeros=args.nonzeros,
                                    method=args.method, allocation=args.allocation,
                                    reweight=not args.no_reweight, seed=args.seed,
                                    holdout=args.holdout, max_positions=args.max_positions,
                                    token_mask=args.token_mask, holdout_data=args.holdout_data,
              progress=_progress(args.quiet))
    for flag, result in (("--save-dense", dense), ("--save-sparse", sparse)):
        if flag in others:
            rest = {k: v for k, v in others.items() if k != flag}
            check_writes(others[flag], result.external_data, {**reads, **result.sources},
                             False, rest)
            result.save(others[flag])
    _write_report(report_path, report.to_dict())
    sys.stdout.write(report.to_text() + "\n")
    return 0


def _cmd_inspect(args) -> int:
    rep = api.inspect(args.input)
    if args.json:
        sys.stdout.write(json.dumps(finite(rep.to_dict()), indent=2) + "\n")
    else:
        sys.stdout.write(rep.to_text() + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="onnxprune: %(levelname)s: %(message)s")
    try:
        return {"prune": _cmd_prune, "calibrate": _cmd_calibrate, "sparsify": _cmd_sparsify,
                "compare": _cmd_compare, "inspect": _cmd_inspect}[args.command](args)
    except PassError as exc:  # our fault, not the input's: exit 1
        sys.stderr.write(f"onnxprune: error: {exc}\n")
        return 1
    except OnnxPruneError as exc:
        sys.stderr.write(f"onnxprune: error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("onnxprune: error: interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
