"""Inline SVG charts for the HTML report, drawn in Python.

The report must open anywhere, offline, as one file, so there is no charting
library, script or font to fetch: each chart is plain SVG text. Data marks
carry ``class="mark"`` (axes, grid and target bands do not), so a test can
tell a chart that drew its data from an empty frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from html import escape
from typing import Callable

W, H = 720, 260
L, R, T, B = 72, 16, 28, 34
Fmt = Callable[[float], str]


@dataclass
class Series:
    name: str
    color: str
    points: list[tuple[float, float]]
    step: bool = False
    area_to: float | None = None  # fill between the line and this y value
    dashed: bool = False
    dots: bool = False


@dataclass
class Frame:
    x0: float
    x1: float
    y0: float
    y1: float
    parts: list[str] = field(default_factory=list)

    def x(self, v: float) -> float:
        span = self.x1 - self.x0 or 1.0
        return round(L + (v - self.x0) / span * (W - L - R), 2)

    def y(self, v: float) -> float:
        span = self.y1 - self.y0 or 1.0
        return round(H - B - (v - self.y0) / span * (H - T - B), 2)


def ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round-numbered ticks, so axes read 0.5 / 1.0 rather than 0.4837."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def time_fmt(lo_ms: float, hi_ms: float) -> Fmt:
    pattern = "%H:%M:%S" if hi_ms - lo_ms < 3_600_000 else "%H:%M" if hi_ms - lo_ms < 86_400_000 else "%m-%d %H:%M"
    return lambda ms: datetime.fromtimestamp(ms / 1000, timezone.utc).strftime(pattern)


def _svg(chart_id: str, title: str, body: list[str]) -> str:
    return (f'<svg id="{chart_id}" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" '
            f'width="{W}" height="{H}" role="img" aria-label="{escape(title)}">'
            f'<title>{escape(title)}</title>' + "".join(body) + "</svg>")


def empty(chart_id: str, title: str, message: str) -> str:
    return _svg(chart_id, title, [
        f'<rect class="frame" x="{L}" y="{T}" width="{W - L - R}" height="{H - T - B}" fill="#f8fafc" stroke="#e2e8f0"/>',
        f'<text x="{W / 2}" y="{H / 2}" text-anchor="middle" fill="#64748b" font-size="14">{escape(message)}</text>'])


def _legend(items: list[tuple[str, str]]) -> list[str]:
    out, x = [], W - R
    for name, color in reversed(items):
        x -= 26 + 6.5 * len(name)
        out.append(f'<rect x="{x}" y="8" width="10" height="10" fill="{color}"/>'
                   f'<text x="{x + 14}" y="17" font-size="11" fill="#334155">{escape(name)}</text>')
    return out


def _axes(f: Frame, y_fmt: Fmt, x_ticks: list[tuple[float, str]], edges: bool = False) -> list[str]:
    """``edges`` pulls the first and last x label inside the plot, for ticks at its very ends."""
    out = []
    for v in ticks(f.y0, f.y1):
        y = f.y(v)
        out.append(f'<line x1="{L}" x2="{W - R}" y1="{y}" y2="{y}" stroke="#e2e8f0"/>'
                   f'<text x="{L - 6}" y="{y + 4}" text-anchor="end" font-size="11" fill="#475569">{escape(y_fmt(v))}</text>')
    for i, (v, label) in enumerate(x_ticks):
        anchor = ("start" if i == 0 else "end" if i == len(x_ticks) - 1 else "middle") if edges else "middle"
        out.append(f'<text x="{f.x(v)}" y="{H - B + 16}" text-anchor="{anchor}" font-size="11" '
                   f'fill="#475569">{escape(label)}</text>')
    out.append(f'<line x1="{L}" x2="{W - R}" y1="{H - B}" y2="{H - B}" stroke="#94a3b8"/>')
    return out


def _path(f: Frame, s: Series) -> str:
    pts = [(f.x(x), f.y(y)) for x, y in s.points]
    d = f"M{pts[0][0]},{pts[0][1]}"
    for (_, py), (x, y) in zip(pts, pts[1:]):
        d += f"H{x}V{y}" if s.step else f"L{x},{y}"
    out = []
    if s.area_to is not None:
        base = f.y(s.area_to)
        out.append(f'<path class="mark" d="{d}V{base}H{pts[0][0]}Z" fill="{s.color}" fill-opacity="0.18" stroke="none"/>')
    dash = ' stroke-dasharray="5 4"' if s.dashed else ""
    out.append(f'<path class="mark" d="{d}" fill="none" stroke="{s.color}" stroke-width="2"{dash}/>')
    if s.dots:
        out += [f'<circle class="mark" cx="{x}" cy="{y}" r="2.5" fill="{s.color}"/>' for x, y in pts]
    return "".join(out)


def line_chart(chart_id: str, title: str, series: list[Series], *, y_fmt: Fmt,
               y_range: tuple[float, float] | None = None,
               refs: list[tuple[float, str]] = ()) -> str:
    """Time on x (epoch ms), one or more lines; ``refs`` are labelled horizontal guides."""
    xs = [x for s in series for x, _ in s.points]
    ys = [y for s in series for _, y in s.points] + [v for v, _ in refs]
    lo, hi = y_range or (min(ys), max(ys))
    if hi == lo:
        pad = abs(hi) * 0.01 or 1.0
        lo, hi = lo - pad, hi + pad
    f = Frame(min(xs), max(xs), lo, hi)
    fmt = time_fmt(f.x0, f.x1)
    x_ticks = [(f.x0 + i * (f.x1 - f.x0) / 4, fmt(f.x0 + i * (f.x1 - f.x0) / 4)) for i in range(5)]
    body = _axes(f, y_fmt, x_ticks, edges=True) if f.x1 > f.x0 else _axes(f, y_fmt, [(f.x0, fmt(f.x0))])
    for v, label in refs:
        body.append(f'<line class="ref" x1="{L}" x2="{W - R}" y1="{f.y(v)}" y2="{f.y(v)}" stroke="#94a3b8" '
                    f'stroke-dasharray="2 3"/><text x="{W - R - 4}" y="{f.y(v) - 4}" text-anchor="end" '
                    f'font-size="10" fill="#64748b">{escape(label)}</text>')
    body += [_path(f, s) for s in series if s.points]
    body += _legend([(s.name, s.color) for s in series])
    return _svg(chart_id, title, body)


def funnel_chart(chart_id: str, title: str, rows: list[tuple[str, float, float]],
                 band: tuple[float, float], *, total_label: str, total: float) -> str:
    """Horizontal bars on a 0–100% axis: per filter the share of received
    signals that reached it (pale) and the share it dropped (solid); last, all
    filters together, which is what the 40–60% target band is about."""
    n = len(rows) + 1
    row_h = min(36, (H - T - B) / n)
    x = lambda v: round(L + 90 + v * (W - L - 90 - R), 2)  # noqa: E731 - names need room on the left
    body = []
    for v in (0, 0.25, 0.5, 0.75, 1.0):
        body.append(f'<text x="{x(v)}" y="{T + row_h * n + 12}" text-anchor="middle" font-size="10" '
                    f'fill="#475569">{v:.0%}</text>')
    for i, (name, reached, dropped) in enumerate(rows + [(total_label, 1.0, total)]):
        y = T + i * row_h + 4
        h = row_h - 8
        color = "#dc2626" if i == len(rows) else "#f97316"
        body.append(f'<text x="{L + 84}" y="{y + h / 2 + 4}" text-anchor="end" font-size="11" fill="#0f172a">'
                    f'{escape(name)}</text>'
                    f'<rect class="mark reached" x="{x(0)}" y="{y}" width="{x(reached) - x(0)}" height="{h}" fill="#cbd5e1"/>'
                    f'<rect class="mark dropped" x="{x(0)}" y="{y}" width="{x(dropped) - x(0)}" height="{h}" fill="{color}"/>'
                    f'<text x="{x(dropped) + 4}" y="{y + h / 2 + 4}" font-size="11" fill="#0f172a">{dropped:.1%}</text>')
    body.append(f'<rect class="band" x="{x(band[0])}" y="{T}" width="{x(band[1]) - x(band[0])}" '
                f'height="{row_h * n}" fill="#16a34a" fill-opacity="0.10" stroke="#16a34a" '
                f'stroke-dasharray="4 3"/><text x="{x(sum(band) / 2)}" y="{T - 4}" '
                f'text-anchor="middle" font-size="10" fill="#15803d">target {band[0]:.0%}–{band[1]:.0%}</text>')
    body += _legend([("reached", "#cbd5e1"), ("dropped", "#f97316")])
    return _svg(chart_id, title, body)


def grouped_bars(chart_id: str, title: str, categories: list[str],
                 series: list[tuple[str, str, list[float]]], *, y_max: float, y_fmt: Fmt) -> str:
    f = Frame(0, len(categories), 0, y_max)
    body = _axes(f, y_fmt, [(i + 0.5, c) for i, c in enumerate(categories)])
    slot = (W - L - R) / max(1, len(categories))
    bar = min(40, slot * 0.8 / len(series))
    for i in range(len(categories)):
        left = L + i * slot + (slot - bar * len(series)) / 2
        for j, (_, color, values) in enumerate(series):
            v = values[i]
            bx, top = round(left + j * bar, 2), f.y(v)
            body.append(f'<rect class="mark" x="{bx}" y="{top}" width="{round(bar - 2, 2)}" '
                        f'height="{round(H - B - top, 2)}" fill="{color}"><title>{escape(categories[i])}: '
                        f'{y_fmt(v)}</title></rect><text x="{bx + bar / 2 - 1}" y="{top - 3}" '
                        f'text-anchor="middle" font-size="10" fill="#334155">{escape(y_fmt(v))}</text>')
    body += _legend([(name, color) for name, color, _ in series])
    return _svg(chart_id, title, body)
