"""``prune --html``: a self-contained page with the summary, plots and the table of groups."""

from __future__ import annotations

import subprocess
import sys
from html.parser import HTMLParser

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


def test_budget_report_page(tmp_path):
    model = MODELS / "mobilenet_legacy.onnx"
    page = tmp_path / "r.html"
    proc = subprocess.run([sys.executable, "-m", "onnxprune.cli", "prune", str(model),
                           str(tmp_path / "p.onnx"), "--calib", str(CALIB_IMG), "--target-macs",
                           "0.6", "--html", str(page), "-q"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    html = page.read_text()
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
