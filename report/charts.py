"""Inline SVG charts (no JavaScript, no external assets): histograms with thresholds, bars.

Everything is drawn with ``report.html.el``, so labels taken from data are escaped.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from report.html import Safe, el

PASS, FAIL, DROP, ERR = "#4c78a8", "#e45756", "#f58518", "#b279a2"


@dataclass
class Histogram:
    """Counts per bin; ``fail`` counts the rows in each bin that a threshold on this column cuts."""

    edges: list[float]
    passed: list[int]
    fail: list[int]
    discrete: bool = False  # one bin per integer value; edges are value ± 0.5
    thresholds: list[tuple[float, str]] = field(default_factory=list)  # (x position, label)


def fmt(v: float) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return str(v)
    if float(v).is_integer() and abs(v) < 1e12:
        return str(int(v))
    return f"{v:.4g}"


def histogram_svg(h: Histogram, title: str, width: int = 460, height: int = 200) -> Safe:
    left, right, top, bottom = 44, 12, 22, 34
    pw, ph = width - left - right, height - top - bottom
    lo, hi = h.edges[0], h.edges[-1]
    span = (hi - lo) or 1.0
    ymax = max([p + f for p, f in zip(h.passed, h.fail)] + [1])

    def x(v: float) -> float:
        return left + (min(max(v, lo), hi) - lo) / span * pw

    def y(n: float) -> float:
        return top + ph - n / ymax * ph

    parts = [el("title", title)]
    for i, (p, f) in enumerate(zip(h.passed, h.fail)):
        a, b = h.edges[i], h.edges[i + 1]
        x0, x1 = x(a), x(b)
        w = max(x1 - x0 - 1, 1)
        label = f"{fmt((a + b) / 2)}" if h.discrete else f"[{fmt(a)}, {fmt(b)}{']' if i == len(h.passed) - 1 else ')'}"
        tip = f"{label}: {p + f} rows" + (f" ({f} cut by the threshold)" if f else "")
        if p:
            parts.append(el("rect", el("title", tip), x=f"{x0:.1f}", y=f"{y(p):.1f}", width=f"{w:.1f}",
                            height=f"{y(0) - y(p):.1f}", fill=PASS))
        if f:
            parts.append(el("rect", el("title", tip), x=f"{x0:.1f}", y=f"{y(p + f):.1f}", width=f"{w:.1f}",
                            height=f"{y(p) - y(p + f):.1f}", fill=FAIL))
    axis_y = top + ph
    parts.append(el("line", x1=left, y1=f"{axis_y}", x2=left + pw, y2=f"{axis_y}", stroke="#555"))
    parts.append(el("line", x1=left, y1=top, x2=left, y2=f"{axis_y}", stroke="#555"))
    parts.append(el("text", fmt(ymax), x=left - 4, y=top + 4, text_anchor="end", class_="ax"))
    parts.append(el("text", "0", x=left - 4, y=axis_y, text_anchor="end", class_="ax"))
    for v in _ticks(h):
        parts.append(el("line", x1=f"{x(v):.1f}", y1=axis_y, x2=f"{x(v):.1f}", y2=axis_y + 4, stroke="#555"))
        parts.append(el("text", fmt(v), x=f"{x(v):.1f}", y=axis_y + 16, text_anchor="middle", class_="ax"))
    for k, (t, label) in enumerate(h.thresholds):
        tx = x(t)
        parts.append(el("line", el("title", label), x1=f"{tx:.1f}", y1=top - 4, x2=f"{tx:.1f}", y2=axis_y,
                        stroke="#222", stroke_width="2", stroke_dasharray="5 3", class_="threshold"))
        anchor = "start" if tx < left + pw * 0.7 else "end"
        parts.append(el("text", label, x=f"{tx + (4 if anchor == 'start' else -4):.1f}", y=top + 8 + 12 * k,
                        text_anchor=anchor, class_="thr"))
    return el("svg", *parts, xmlns="http://www.w3.org/2000/svg", viewBox=f"0 0 {width} {height}",
              width=width, height=height, role="img", class_="chart")


def _ticks(h: Histogram) -> list[float]:
    lo, hi = h.edges[0], h.edges[-1]
    if h.discrete:
        values = [lo + 0.5 + i for i in range(len(h.passed))]
        step = max(1, math.ceil(len(values) / 10))
        return values[::step]
    return [lo + (hi - lo) * k / 4 for k in range(5)]


def bars_svg(items: list[tuple[str, int]], title: str, width: int = 460, bar_h: int = 16, color: str = PASS) -> Safe:
    """Horizontal bars, one per (label, count): cluster sizes, top n-grams, per-source counts."""
    left, right = 150, 60
    height = 10 + bar_h * len(items) + 10
    vmax = max([n for _, n in items] + [1])
    parts = [el("title", title)]
    for i, (label, n) in enumerate(items):
        y0 = 10 + i * bar_h
        w = (width - left - right) * n / vmax
        short = label if len(label) <= 24 else label[:23] + "…"
        parts.append(el("text", short, el("title", label), x=left - 6, y=y0 + bar_h - 4, text_anchor="end", class_="ax"))
        parts.append(el("rect", el("title", f"{label}: {n}"), x=left, y=y0 + 2, width=f"{max(w, 1):.1f}",
                        height=bar_h - 4, fill=color))
        parts.append(el("text", fmt(n), x=f"{left + w + 4:.1f}", y=y0 + bar_h - 4, class_="ax"))
    return el("svg", *parts, xmlns="http://www.w3.org/2000/svg", viewBox=f"0 0 {width} {height}",
              width=width, height=height, role="img", class_="chart")


def funnel_svg(stages: list[dict], width: int = 720, bar_h: int = 26) -> Safe:
    """One stacked bar per stage: kept, dropped, error, scaled to the largest stage input."""
    left, right = 120, 150
    height = 10 + bar_h * len(stages) + 24
    vmax = max([s["in"] for s in stages] + [1])
    scale = (width - left - right) / vmax
    parts = [el("title", "rows per stage: kept, dropped, error")]
    for i, s in enumerate(stages):
        y0 = 10 + i * bar_h
        x0 = left
        parts.append(el("text", s["stage"], x=left - 6, y=y0 + bar_h - 9, text_anchor="end", class_="ax"))
        for key, color in (("kept", PASS), ("dropped", DROP), ("error", ERR)):
            w = s[key] * scale
            if w > 0:
                parts.append(el("rect", el("title", f"{s['stage']}: {s[key]} {key}"), x=f"{x0:.1f}", y=y0 + 3,
                                width=f"{max(w, 1):.1f}", height=bar_h - 8, fill=color))
            x0 += w
        parts.append(el("text", f"{s['kept']} / {s['in']} kept", x=f"{x0 + 6:.1f}", y=y0 + bar_h - 9, class_="ax"))
    ly = 10 + bar_h * len(stages) + 12
    for k, (key, color) in enumerate((("kept", PASS), ("dropped", DROP), ("error", ERR))):
        parts.append(el("rect", x=left + k * 90, y=ly - 9, width=10, height=10, fill=color))
        parts.append(el("text", key, x=left + k * 90 + 14, y=ly, class_="ax"))
    return el("svg", *parts, xmlns="http://www.w3.org/2000/svg", viewBox=f"0 0 {width} {height}",
              width=width, height=height, role="img", class_="chart")


def paired_bars_svg(items: list[tuple[str, float, float]], title: str, width: int = 520, bar_h: int = 22) -> Safe:
    """Two bars per label, before (grey) and after (blue): top n-grams, length buckets."""
    left, right = 170, 70
    height = 10 + bar_h * len(items) + 24
    vmax = max([max(b, a) for _, b, a in items] + [1])
    scale = (width - left - right) / vmax
    parts = [el("title", title)]
    for i, (label, before, after) in enumerate(items):
        y0 = 10 + i * bar_h
        short = label if len(label) <= 28 else label[:27] + "…"
        parts.append(el("text", short, el("title", label), x=left - 6, y=y0 + bar_h / 2 + 4, text_anchor="end", class_="ax"))
        for k, (v, color) in enumerate(((before, "#9aa5b1"), (after, PASS))):
            parts.append(el("rect", el("title", f"{label}: {'before' if k == 0 else 'after'} {fmt(v)}"), x=left,
                            y=f"{y0 + 2 + k * (bar_h - 4) / 2:.1f}", width=f"{max(v * scale, 1):.1f}",
                            height=f"{(bar_h - 6) / 2:.1f}", fill=color))
        parts.append(el("text", f"{fmt(before)} → {fmt(after)}", x=f"{left + max(before, after) * scale + 4:.1f}",
                        y=y0 + bar_h / 2 + 4, class_="ax"))
    ly = 10 + bar_h * len(items) + 14
    for k, (name, color) in enumerate((("before", "#9aa5b1"), ("after", PASS))):
        parts.append(el("rect", x=left + k * 80, y=ly - 9, width=10, height=10, fill=color))
        parts.append(el("text", name, x=left + k * 80 + 14, y=ly, class_="ax"))
    return el("svg", *parts, xmlns="http://www.w3.org/2000/svg", viewBox=f"0 0 {width} {height}",
              width=width, height=height, role="img", class_="chart")
