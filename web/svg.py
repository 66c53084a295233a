"""A tiny server-side line chart: an inline <svg> with polylines, axes and markers.

No chart library: the page gets finished markup in its htmx partials. Every text that goes
into the SVG passes through markupsafe's escape.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from markupsafe import Markup, escape

W, H = 560, 190
PAD_L, PAD_R, PAD_T, PAD_B = 62, 14, 12, 26


@dataclass
class Series:
    label: str
    points: Sequence[tuple[float, float]]
    css: str = "s0"          # colour class from cblb.css
    dashed: bool = False


@dataclass
class Marker:
    x: float
    y: float
    label: str
    css: str = "mark"


@dataclass
class HLine:
    y: float
    label: str
    css: str = "limit"


@dataclass
class Chart:
    title: str
    series: list[Series] = field(default_factory=list)
    markers: list[Marker] = field(default_factory=list)
    hlines: list[HLine] = field(default_factory=list)
    y_fmt: Callable[[float], str] = lambda v: f"{v:g}"
    x_range: tuple[float, float] | None = None
    empty_text: str = "no data yet"


def nice_ticks(lo: float, hi: float, n: int = 4) -> list[float]:
    """About n round tick values covering [lo, hi]."""
    if hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks = []
    v = start
    while v <= hi + step * 1e-9:
        if v >= lo - step * 1e-9:
            ticks.append(round(v, 10))
        v += step
    return ticks


def clock_label(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts))


def _fmt(v: float) -> str:
    return f"{v:.1f}"


def render(chart: Chart, width: int = W, height: int = H) -> Markup:
    pts = [p for s in chart.series for p in s.points]
    pts += [(m.x, m.y) for m in chart.markers]
    title = escape(chart.title)
    head = (f'<svg class="chart" viewBox="0 0 {width} {height}" width="100%" role="img" '
            f'aria-label="{title}" xmlns="http://www.w3.org/2000/svg"><title>{title}</title>')
    if not pts:
        return Markup(head + f'<text class="empty" x="{width / 2}" y="{height / 2}" '
                      f'text-anchor="middle">{escape(chart.empty_text)}</text></svg>')
    x0, x1 = chart.x_range or (min(p[0] for p in pts), max(p[0] for p in pts))
    if x1 <= x0:
        x1 = x0 + 1
    ys = [p[1] for p in pts] + [h.y for h in chart.hlines] + [0.0]
    y0, y1 = min(ys), max(ys)
    if y1 <= y0:
        y1 = y0 + 1
    y1 *= 1.05
    pw, ph = width - PAD_L - PAD_R, height - PAD_T - PAD_B

    def sx(x: float) -> float:
        return PAD_L + (min(max(x, x0), x1) - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return PAD_T + ph - (y - y0) / (y1 - y0) * ph

    out = [head]
    for t in nice_ticks(y0, y1):
        if t > y1:
            continue
        yy = _fmt(sy(t))
        out.append(f'<line class="grid" x1="{PAD_L}" x2="{width - PAD_R}" y1="{yy}" y2="{yy}"/>'
                   f'<text class="tick" x="{PAD_L - 4}" y="{yy}" text-anchor="end" '
                   f'dominant-baseline="middle">{escape(chart.y_fmt(t))}</text>')
    for i in range(4):
        x = x0 + (x1 - x0) * i / 3
        anchor = "start" if i == 0 else "end" if i == 3 else "middle"
        out.append(f'<text class="tick" x="{_fmt(sx(x))}" y="{height - 8}" '
                   f'text-anchor="{anchor}">{escape(clock_label(x))}</text>')
    out.append(f'<line class="axis" x1="{PAD_L}" x2="{PAD_L}" y1="{PAD_T}" y2="{PAD_T + ph}"/>'
               f'<line class="axis" x1="{PAD_L}" x2="{width - PAD_R}" y1="{PAD_T + ph}" '
               f'y2="{PAD_T + ph}"/>')
    for h in chart.hlines:
        yy = _fmt(sy(h.y))
        out.append(f'<line class="{escape(h.css)}" x1="{PAD_L}" x2="{width - PAD_R}" '
                   f'y1="{yy}" y2="{yy}"/><text class="{escape(h.css)}-label" '
                   f'x="{PAD_L + 4}" y="{_fmt(sy(h.y) - 4)}" text-anchor="start">'
                   f'{escape(h.label)}</text>')
    for s in chart.series:
        if not s.points:
            continue
        coords = " ".join(f"{_fmt(sx(x))},{_fmt(sy(y))}" for x, y in s.points)
        dash = ' stroke-dasharray="5 4"' if s.dashed else ""
        out.append(f'<polyline class="line {escape(s.css)}" fill="none" points="{coords}"{dash}>'
                   f'<title>{escape(s.label)}</title></polyline>')
    for m in chart.markers:
        mx, my = sx(m.x), sy(m.y)
        anchor = "end" if mx > PAD_L + pw * 0.6 else "start"
        dx = -6 if anchor == "end" else 6
        out.append(f'<line class="{escape(m.css)}-rule" x1="{_fmt(mx)}" x2="{_fmt(mx)}" '
                   f'y1="{PAD_T}" y2="{PAD_T + ph}"/>'
                   f'<circle class="{escape(m.css)}" cx="{_fmt(mx)}" cy="{_fmt(my)}" r="4"/>'
                   f'<text class="{escape(m.css)}-label" x="{_fmt(mx + dx)}" '
                   f'y="{_fmt(max(PAD_T + 10, my - 8))}" text-anchor="{anchor}">'
                   f'{escape(m.label)}</text>')
    out.append("</svg>")
    return Markup("".join(out))


def legend(series: Sequence[Series]) -> Markup:
    items = "".join(f'<span class="key {escape(s.css)}{" dashed" if s.dashed else ""}">'
                    f'{escape(s.label)}</span>' for s in series if s.points)
    return Markup(f'<div class="legend">{items}</div>')
