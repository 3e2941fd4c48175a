#!/usr/bin/env python
"""The ``--html`` report of a real model, as headless Chromium shows it (issue 13).

Prunes one model of ``models/build_real.py`` through the CLI with ``--html`` (default: the
EfficientNet-Lite0 legacy export in the default mode, ``--min-cosine 0.99``), opens the page in
headless Chromium (Debian: ``apt-get install chromium``) and writes its screenshot to
``benchmarks/html_report.png`` and the command, versions and what the page showed to
``benchmarks/results_html.md``.

    python benchmarks/run_html_screenshot.py [--model NAME] [--work DIR] [--prune-args "..."]
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import real_model_parser

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "models"))
import build_real  # noqa: E402


def main(argv=None) -> int:
    ap = real_model_parser(__doc__, "results_html.md")
    ap.add_argument("--prune-args", default="", help="extra options of onnxprune prune")
    ap.add_argument("--png", default=str(ROOT / "benchmarks" / "html_report.png"))
    ap.add_argument("--size", default="1200,2350", help="Chromium window: width,height")
    args = ap.parse_args(argv)
    chromium = next(filter(None, map(shutil.which, ("chromium", "chromium-browser"))), None)
    if chromium is None:
        sys.exit("headless Chromium is not installed (Debian: apt-get install chromium)")
    spec = build_real.get(args.model, Path(args.work))
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / f"{args.model}.html"
        cmd = [sys.executable, "-m", "onnxprune.cli", "prune", str(spec.onnx),
               str(Path(tmp) / "pruned.onnx"), "--calib", str(spec.calib), "--html", str(page),
               "-q", *shlex.split(args.prune_args)]
        t = time.perf_counter()
        subprocess.run(cmd, check=True)
        seconds = time.perf_counter() - t
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                        "--hide-scrollbars", f"--screenshot={args.png}",
                        f"--window-size={args.size}", page.as_uri()],
                       check=True, capture_output=True)
        dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                              "--dump-dom", page.as_uri()], check=True, capture_output=True,
                             text=True).stdout
    version = subprocess.run([chromium, "--version"], capture_output=True,
                             text=True).stdout.strip()
    from PIL import Image

    img = np.asarray(Image.open(args.png).convert("RGB")).astype(int)
    bar_rows = int((np.all(np.abs(img - (0x4A, 0x7A, 0xB8)) <= 10, axis=-1).sum(1) > 300).sum())
    plots = [c for c in ("kept", "points", "sensitivity") if f'class="{c}"' in dom]
    lines = ["# The `--html` report in headless Chromium", "",
             f"Command: `python benchmarks/run_html_screenshot.py "
             f"{' '.join(shlex.quote(a) for a in (argv or sys.argv[1:]))}`  ",
             f"Date: {time.strftime('%Y-%m-%dT%H:%M:%S')}; {version}  ",
             f"Prune: `onnxprune prune {args.model}.onnx pruned.onnx --calib calib.npz --html "
             f"PAGE -q {args.prune_args}` ({seconds:.0f} s)", "",
             f"The DOM Chromium built: {dom.count('<tr')} table rows, {dom.count('<svg')} "
             f"plots ({', '.join(plots)}); "
             f"the screenshot ({img.shape[1]}×{img.shape[0]}) has {bar_rows} pixel rows "
             "crossed by the kept-fraction bars.", "",
             f"![report]({Path(args.png).name})", ""]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
