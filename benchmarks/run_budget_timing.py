#!/usr/bin/env python
"""Wall time of a MAC budget against a uniform ratio, measured side by side in one run.

Issue 9 asks ``--target-macs 0.7`` to cost at most 3× ``--ratio 0.3`` on EfficientNet-Lite0.
Both prunes run alternately (ratio, budget, ratio, budget, …) in one process, on the model and
calibration set of the real-model benchmark (``models/build_real.py``), so that machine load hits
both alike; the ratio of the medians is reported. Writes ``benchmarks/results_budget_timing.md``.

    python benchmarks/run_budget_timing.py [--work /tmp/onnxprune_real] [--repeats 2]
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import onnxprune
from common import cpu_snapshot, other_cpu_load, real_model_parser, timing_header

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "models"))
import build_real  # noqa: E402


def main(argv=None) -> int:
    ap = real_model_parser(__doc__, "results_budget_timing.md")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)
    spec = build_real.get(args.model, Path(args.work))
    calib = spec.load_calib()
    runs = {"ratio 0.3": {"ratio": 0.3}, "target-macs 0.7": {"target_macs": 0.7}}
    times: dict[str, list[float]] = {k: [] for k in runs}
    macs: dict[str, float] = {}
    start = cpu_snapshot()
    for _ in range(args.repeats):
        for label, kw in runs.items():
            t = time.perf_counter()
            rep = onnxprune.prune(str(spec.onnx), calib, **kw).report
            times[label].append(time.perf_counter() - t)
            macs[label] = rep.macs_after / rep.macs_before
    load = other_cpu_load(start, cpu_snapshot())
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["target-macs 0.7"] / med["ratio 0.3"]
    lines = timing_header("Budget vs uniform ratio: wall time side by side",
                          "run_budget_timing.py", argv, args.model,
                          len(next(iter(calib.values()))), load) + [
        "| run | MACs kept | wall s (each run) | median s |", "|---|---|---|---|"]
    for k in runs:
        lines.append(f"| `{k}` | {macs[k]:.3f} | {', '.join(f'{t:.1f}' for t in times[k])} | "
                     f"{med[k]:.1f} |")
    lines += ["", f"**Budget / ratio wall time: {ratio:.2f}×** (target ≤ 3×).", ""]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
