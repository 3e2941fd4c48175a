"""A self-contained HTML page of a pruning report (``prune --html REPORT.html``).

One file, no scripts, no external resources: inline CSS and inline SVG plots written here (a
plotting library would be an install of tens of MB for three charts). Sections: the summary
(parameters, MACs, onnxruntime latency before/after, fidelity per output and part), a plot of the
kept fraction of every group along the depth of the network, for ``--min-cosine`` the held-out
cosine of every plan tried against its MACs, for budgets the measured sensitivity curves, and
the table of every group (kept/total, relative error, reason).
"""

from __future__ import annotations

import math
from html import escape

from onnxprune.report import Report

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1100px}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.85em}td,th{border:1px solid #ccc;padding:3px 7px}
th{background:#f3f3f3}td.n{text-align:right;font-variant-numeric:tabular-nums}
.bar{display:inline-block;height:.7em;background:#4a7ab8}.no{color:#999}
.kv td:first-child{font-weight:600}svg{background:#fcfcfc;border:1px solid #ddd}
"""


def _num(v, fmt: str = "{:.4f}") -> str:
    return "–" if v is None else fmt.format(v)


def _ticks(lo: float, hi: float, integer: bool = False, most: int = 6) -> list[float]:
    """Round tick values in [lo, hi]: multiples of 1, 2, 2.5 or 5 × 10^k, at most ``most``
    (``integer``: whole numbers only)."""
    if not hi > lo:
        return [lo]
    raw = max((hi - lo) / (most - 1), 1.0 if integer else 0.0)
    base = 10.0 ** math.floor(math.log10(raw))
    step = next(m * base for m in (1, 2, 2.5, 5, 10) if m * base >= raw)
    first = math.ceil(lo / step - 1e-9)
    return [k * step for k in range(first, int(math.floor(hi / step + 1e-9)) + 1)]


def _axes(w: int, h: int, pad: int, xlabel: str, ylabel: str, xr, yr,
          xint: bool = False) -> list[str]:
    """Frame, ticks and labels of a plot whose data area is ``[pad, w−pad] × [pad, h−pad]``
    (``xint``: the x axis counts things, ticks on whole numbers)."""
    out = [f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="#444"/>',
           f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h - pad}" stroke="#444"/>',
           f'<text x="{w / 2}" y="{h - 8}" text-anchor="middle" font-size="12">{xlabel}</text>',
           f'<text x="14" y="{h / 2}" text-anchor="middle" font-size="12" '
           f'transform="rotate(-90 14 {h / 2})">{ylabel}</text>']
    for fx in _ticks(*xr, integer=xint):
        x = _scale(fx, *xr, pad, w - pad)
        out.append(f'<text x="{x:.1f}" y="{h - pad + 14}" text-anchor="middle" '
                   f'font-size="10">{fx:g}</text>')
    for fy in _ticks(*yr):
        y = _scale(fy, *yr, h - pad, pad)
        out.append(f'<text x="{pad - 4}" y="{y + 3:.1f}" text-anchor="end" '
                   f'font-size="10">{fy:g}</text>')
    return out


def _scale(v: float, lo: float, hi: float, a: float, b: float) -> float:
    return a + (b - a) * ((v - lo) / (hi - lo) if hi > lo else 0.5)


def kept_plot(report: Report, w: int = 900, h: int = 260, pad: int = 45) -> str:
    """Bars: the kept fraction of every prunable group, in the report's (graph) order."""
    groups = [g for g in report.groups if g.prunable]
    if not groups:
        return ""
    step = (w - 2 * pad) / len(groups)
    parts = [f'<svg class="kept" width="{w}" height="{h}" xmlns="http://www.w3.org/2000/svg">']
    parts += _axes(w, h, pad, "prunable groups, in graph order", "kept fraction",
                   (0.5, len(groups) + 0.5), (0, 1), xint=True)  # tick i: the middle of bar i
    for i, g in enumerate(groups):
        frac = g.kept / g.total if g.total else 1.0
        bh = (h - 2 * pad) * frac
        parts.append(f'<rect x="{pad + i * step + 1:.1f}" y="{h - pad - bh:.1f}" '
                     f'width="{max(step - 2, 1):.1f}" height="{bh:.1f}" fill="#4a7ab8">'
                     f'<title>{escape(g.name)}: {g.kept}/{g.total}</title></rect>')
    parts.append("</svg>")
    return "\n".join(parts)


def points_plot(points: list[dict], target: float, w: int = 600, h: int = 320,
                pad: int = 50) -> str:
    """``--min-cosine``: the cosine bound of every plan tried against its MACs fraction."""
    if not points:
        return ""
    xs = [p["macs_fraction"] for p in points]
    ys = [p["cosine_bound"] for p in points] + [target]
    xr, yr = (min(xs + [0.0]), 1.0), (min(ys) - 0.01, 1.0)
    parts = [f'<svg class="points" width="{w}" height="{h}" xmlns="http://www.w3.org/2000/svg">']
    parts += _axes(w, h, pad, "MACs kept (fraction)", "held-out cosine bound", xr, yr)
    ty = _scale(target, *yr, h - pad, pad)
    parts.append(f'<line x1="{pad}" y1="{ty:.1f}" x2="{w - pad}" y2="{ty:.1f}" '
                 'stroke="#c33" stroke-dasharray="4 3"/>')
    for p in points:
        x = _scale(p["macs_fraction"], *xr, pad, w - pad)
        y = _scale(p["cosine_bound"], *yr, h - pad, pad)
        color = "#2a2" if p.get("chosen") else ("#4a7ab8" if p["meets_target"] else "#c33")
        r = 6 if p.get("chosen") else 4
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r}" fill="{color}"><title>'
                     f'{p["method"]}: MACs {p["macs_fraction"]:.3f}, cosine bound '
                     f'{p["cosine_bound"]:.4f}</title></circle>')
    parts.append("</svg>")
    return "\n".join(parts)


def sensitivity_plot(report: Report, w: int = 600, h: int = 320, pad: int = 50) -> str:
    """Budgets: each group's measured output damage against its kept fraction."""
    curves = [(g.name, g.sensitivity) for g in report.groups if g.sensitivity]
    if not curves:
        return ""
    dmg = [d for _, c in curves for _, d in c]
    yr = (0.0, max(max(dmg), 1e-12))
    parts = [f'<svg class="sensitivity" width="{w}" height="{h}" '
             'xmlns="http://www.w3.org/2000/svg">']
    parts += _axes(w, h, pad, "kept fraction of the group", "output damage", (0, 1), yr)
    for k, (name, c) in enumerate(curves):
        pts = " ".join(f"{_scale(f, 0, 1, pad, w - pad):.1f},{_scale(d, *yr, h - pad, pad):.1f}"
                       for f, d in sorted(c))
        hue = (k * 47) % 360
        parts.append(f'<polyline points="{pts}" fill="none" stroke="hsl({hue},60%,45%)" '
                     f'stroke-width="1.2"><title>{escape(name)}</title></polyline>')
    parts.append("</svg>")
    return "\n".join(parts)


def render(report: Report, title: str = "onnxprune report",
           latency: tuple[float, float] | None = None) -> str:
    """The page (module docstring); ``latency``: (original, pruned) milliseconds."""
    r = report
    frac = r.params_after / max(r.params_before, 1)
    params = f"{r.params_before:,} → {r.params_after:,} ({frac:.3f})"
    rows = [("method", r.method), ("parameters", params),
            ("MACs per sample", f"{r.macs_before:,} → {r.macs_after:,} "
                                f"({r.macs_after / max(r.macs_before, 1):.3f})"),
            ("calibration / held-out samples", f"{r.calib_samples} / {r.holdout_samples}"),
            ("pass time", f"{r.seconds:.1f} s")]
    if latency is not None:
        rows.append(("onnxruntime latency (batch of one sample, CPU)",
                     f"{latency[0]:.3f} ms → {latency[1]:.3f} ms "
                     f"(×{latency[1] / latency[0]:.2f})"))
    if r.budget:
        rows.append(("budget", f"{r.budget['kind']} {r.budget['target']}"))
    if r.reference:
        own = "; ".join(f"{k}: cos {v['cosine']:.4f}" for k, v in
                        r.reference["input_fidelity"].items())
        rows.append(("fidelity measured against", f"{r.reference['model']} (the input model "
                                                  f"itself, unpruned: {own})"))
    html = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{escape(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{escape(title)}</h1>",
            "<h2>Summary</h2><table class='kv'>"]
    html += [f"<tr><td>{escape(k)}</td><td>{escape(str(v))}</td></tr>" for k, v in rows]
    html.append("</table><h2>Fidelity on the held-out samples</h2><table><tr><th>output</th>"
                "<th>cosine</th><th>rel. L2</th><th>top-1 agreement</th><th>parts</th></tr>")
    for name, f in r.fidelity.items():
        parts = "; ".join(f"{'fields' if p.axis == -1 else 'features'} {list(p.features)}: "
                          f"cos {p.cosine:.4f}"
                          for p in f.parts) or "–"
        html.append(f"<tr><td>{escape(name)}</td><td class='n'>{f.cosine:.4f}</td>"
                    f"<td class='n'>{f.rel_l2:.4f}</td><td class='n'>"
                    f"{_num(f.top1_agreement, '{:.3f}')}</td><td>{escape(parts)}</td></tr>")
    html.append("</table><h2>Kept fraction along the network</h2>" + kept_plot(r))
    if r.budget and r.budget.get("points"):
        html.append("<h2>Plans tried for the fidelity target</h2><p>Each point a pruned model "
                    "measured on the held-out samples (green: chosen; red: misses the target, "
                    "dashed line).</p>" + points_plot(r.budget["points"], r.budget["target"]))
    sens = sensitivity_plot(r)
    if sens:
        html.append("<h2>Sensitivity of each group</h2><p>Output damage measured when the "
                    "group alone is pruned to a kept fraction (hover a curve for its "
                    "group).</p>" + sens)
    html.append("<h2>Channel groups</h2><table class='groups'><tr><th>#</th><th>group</th>"
                "<th>kind</th><th>kept / total</th><th>kept</th><th>rel. error</th>"
                "<th>reason</th></tr>")
    for i, g in enumerate(r.groups):
        frac = g.kept / g.total if g.total else 1.0
        cls = "" if g.prunable else " class='no'"
        html.append(f"<tr{cls}><td class='n'>{i + 1}</td><td>{escape(g.name)}</td>"
                    f"<td>{escape(g.kind)}</td><td class='n'>{g.kept} / {g.total}</td>"
                    f"<td><span class='bar' style='width:{60 * frac:.0f}px'></span></td>"
                    f"<td class='n'>{_num(g.rel_error, '{:.2e}')}</td>"
                    f"<td>{escape(g.reason)}</td></tr>")
    html.append("</table></body></html>")
    return "\n".join(html)
