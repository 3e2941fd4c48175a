"""Shared by the benchmark scripts: single-threaded onnxruntime sessions for latency, and
CPU-contention measurement (this machine has 2 cores and other jobs may run beside a benchmark:
every row records how busy the rest of the machine was)."""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import statistics
import subprocess
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

import onnx
import onnxruntime as ort


def session(model, threads: int = 1) -> ort.InferenceSession:
    """A sequential CPU session with ``threads`` intra-op threads (1: stable latencies)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


def cpu_snapshot() -> tuple[float, float, float] | None:
    """(wall s, busy CPU-seconds of the whole machine, CPU-seconds of this process)."""
    try:
        with open("/proc/stat") as f:
            vals = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    busy = (sum(vals[:8]) - vals[3] - vals[4]) / os.sysconf("SC_CLK_TCK")  # all but idle/iowait
    t = os.times()
    return time.perf_counter(), busy, t.user + t.system


def other_cpu_load(start, end, digits: int = 3) -> float | None:
    """Average number of cores busy with *other* processes between two snapshots."""
    if start is None or end is None or end[0] <= start[0]:
        return None
    return round(max(0.0, (end[1] - start[1]) - (end[2] - start[2])) / (end[0] - start[0]), digits)


def versions(packages: Sequence[str]) -> dict:
    """Python, platform, core count and the installed version of each package (None: absent)."""
    out = {"python": platform.python_version(), "platform": platform.platform(),
           "cpu_count": os.cpu_count()}
    for pkg in packages:
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def git_info(root: Path) -> dict:
    """HEAD commit, and whether the code under test (onnxprune/, passes/) has uncommitted edits."""
    def run(*args):
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except Exception:  # noqa: BLE001
            return ""
    return {"commit": run("rev-parse", "HEAD"),
            "dirty": bool(run("status", "--porcelain", "--", "onnxprune", "passes"))}


def fmt(v, nd=3):
    """A table cell: – for missing values, floats with ``nd`` decimals."""
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def latency_side_by_side(a: ort.InferenceSession, b: ort.InferenceSession, feeds: list[dict],
                         output: str, iters: int, warmup: int) -> dict:
    """Median latency (ms) of sessions ``a`` (original) and ``b`` (pruned) on the same feeds
    (``feeds[i % len(feeds)]`` at iteration i), interleaved in one loop; the order alternates
    every iteration so neither systematically runs second."""
    for i in range(warmup):
        a.run([output], feeds[i % len(feeds)])
        b.run([output], feeds[i % len(feeds)])
    ta: list[float] = []
    tb: list[float] = []
    for i in range(iters):
        f = feeds[i % len(feeds)]
        pair = ((a, ta), (b, tb)) if i % 2 == 0 else ((b, tb), (a, ta))
        for s, acc in pair:
            t0 = time.perf_counter_ns()
            s.run([output], f)
            acc.append((time.perf_counter_ns() - t0) / 1e6)
    ma, mb = statistics.median(ta), statistics.median(tb)
    return {"orig_ms": round(ma, 3), "pruned_ms": round(mb, 3), "ratio": round(mb / ma, 3)}


def remove_model(path: Path) -> None:
    """Delete a saved model and its external-data file (benchmarks never keep pruned models)."""
    for p in (path, Path(str(path) + ".data")):
        if p.exists():
            p.unlink()


def pruned_row(spec: dict, prune: Callable[[], object], evaluate: Callable[[object, dict], None],
               wall_digits: int = 2) -> dict:
    """One benchmark row: ``prune()`` (an ``onnxprune.PruneResult``; a failure gives status
    "error"), the full ONNX check, then ``evaluate(result, row)`` (a failure gives status
    "error-after-prune"), the pass's wall time and the other processes' CPU load."""
    row = dict(spec)
    s0 = cpu_snapshot()
    t0 = time.perf_counter()
    try:
        res = prune()
    except Exception as e:  # noqa: BLE001
        row.update(status="error", error=f"{type(e).__name__}: {e}",
                   traceback=traceback.format_exc())
        return row
    row["wall_s"] = round(time.perf_counter() - t0, wall_digits)
    try:
        onnx.checker.check_model(res.model, full_check=True)
        row["check_model"] = "ok"
    except Exception as e:  # noqa: BLE001
        row["check_model"] = f"{type(e).__name__}: {e}"
    try:
        evaluate(res, row)
        row["status"] = "ok" if row["check_model"] == "ok" else "invalid-model"
    except Exception as e:  # noqa: BLE001
        row.update(status="error-after-prune", error=f"{type(e).__name__}: {e}",
                   traceback=traceback.format_exc())
    row["other_cpu_load"] = other_cpu_load(s0, cpu_snapshot())
    return row


def real_model_parser(doc: str, out_name: str):
    """The options of a one-model timing benchmark on ``models/build_real.py``'s models:
    ``--work``, ``--model`` (default EfficientNet-Lite0, legacy export), ``--out``."""
    import argparse
    root = Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--work", default="/tmp/onnxprune_real")
    ap.add_argument("--model", default="efficientnet_lite0_legacy")
    ap.add_argument("--out", default=str(root / "benchmarks" / out_name))
    return ap


def timing_header(title: str, script: str, argv, model: str, n_calib: int | None,
                  load) -> list[str]:
    """The head of a one-model timing result file: title, command, date, commit, model,
    calibration size, machine load and versions."""
    import datetime as dt
    import sys
    root = Path(__file__).resolve().parent.parent
    g = git_info(root)
    return [
        f"# {title}", "",
        f"Command: `python benchmarks/{script} {' '.join(argv or sys.argv[1:])}`  ",
        f"Date: {dt.datetime.now().isoformat(timespec='seconds')}; commit {g['commit'][:12]}"
        f"{' (modified)' if g['dirty'] else ''}; model `{model}`"
        f"{f' ({n_calib} calibration samples)' if n_calib is not None else ''}; other processes "
        f"kept {load} cores busy on average  ",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in versions(
            ("onnx", "onnxruntime", "numpy", "scipy")).items()), ""]
