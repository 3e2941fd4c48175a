"""``prune --html``: a self-contained page with the summary, plots and the table of groups."""

from __future__ import annotations

import shutil
import subprocess
import sys
from html.parser import HTMLParser

import numpy as np
import pytest

import onnxprune
from onnxprune.html import render

from helpers import CALIB_IMG, MODELS


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.stack: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs), tuple(self.stack)))
        if tag not in ("rect", "circle", "line", "polyline", "br", "meta"):
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if self.stack and self.stack[-1] == tag:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def _parse(html: str) -> _Collect:
    p = _Collect()
    p.feed(html)
    return p


CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser",
                                                  "google-chrome"))), None)


def _budget_page(tmp_path):
    page = tmp_path / "r.html"
    proc = subprocess.run([sys.executable, "-m", "onnxprune.cli", "prune",
                           str(MODELS / "mobilenet_legacy.onnx"), str(tmp_path / "p.onnx"),
                           "--calib", str(CALIB_IMG), "--target-macs", "0.6", "--html", str(page),
                           "-q"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return page


def test_budget_report_page(tmp_path):
    model = MODELS / "mobilenet_legacy.onnx"
    html = _budget_page(tmp_path).read_text()
    assert "<script" not in html and "http" not in html.replace("http://www.w3.org/2000/svg", "")
    p = _parse(html)
    report = onnxprune.prune(str(model), str(CALIB_IMG), target_macs=0.6).report
    # the table: one row per group (plus the header)
    rows = [t for t in p.tags if t[0] == "tr" and "table" in t[2]]
    group_rows = [t for t in p.tags if t[0] == "tr"]
    assert len(group_rows) >= len(report.groups) + 1 and rows
    svgs = [t[1].get("class") for t in p.tags if t[0] == "svg"]
    assert "kept" in svgs and "sensitivity" in svgs
    bars = [t for t in p.tags if t[0] == "rect" and any("svg" == s for s in t[2])]
    assert len(bars) == sum(g.prunable for g in report.groups)
    curves = [t for t in p.tags if t[0] == "polyline"]
    assert len(curves) == sum(1 for g in report.groups if g.sensitivity)
    text = " ".join(p.text)
    assert "onnxruntime latency" in text and " ms → " in text
    assert f"{report.params_before:,}" in text


def test_min_cosine_page_plots_every_plan_tried():
    res = onnxprune.prune(str(MODELS / "resnet_legacy.onnx"), str(CALIB_IMG), min_cosine=0.99)
    points = res.report.budget["points"]
    p = _parse(render(res.report, "t", (1.0, 0.5)))
    circles = [t[1] for t in p.tags if t[0] == "circle"]
    assert len(circles) == len(points)
    assert sum(c["r"] == "6" for c in circles) == 1  # the chosen plan
    assert "points" in [t[1].get("class") for t in p.tags if t[0] == "svg"]


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed "
                                             "(Debian: apt-get install chromium)")
def test_page_opens_in_headless_chromium(tmp_path):
    """The page as a person sees it: headless Chromium lays it out and takes a screenshot; the
    kept-fraction bars (their colour) fill a visible area and the DOM it built has every group's
    row and the three plots."""
    from PIL import Image

    page = _budget_page(tmp_path)
    shot = tmp_path / "shot.png"
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    run = subprocess.run(flags + [f"--screenshot={shot}", "--window-size=1200,1600",
                                  page.as_uri()], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and shot.exists(), run.stderr[-2000:]
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert img.shape == (1600, 1200, 3)
    bars = np.all(np.abs(img - (0x4A, 0x7A, 0xB8)) <= 10, axis=-1)
    rows = np.nonzero(bars.sum(axis=1) > 300)[0]  # the chart: bars side by side on a row
    assert len(rows) > 50, "the kept-fraction chart did not render"
    assert (img.sum(axis=-1) < 200).sum() > 2000  # text was drawn
    dom = subprocess.run(flags + ["--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=120).stdout
    p = _parse(dom)
    report = onnxprune.prune(str(MODELS / "mobilenet_legacy.onnx"), str(CALIB_IMG),
                             target_macs=0.6).report
    assert sum(1 for t in p.tags if t[0] == "tr" and "table" in t[2]) >= len(report.groups)
    assert {"kept", "sensitivity"} <= {t[1].get("class") for t in p.tags if t[0] == "svg"}
