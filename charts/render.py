"""A validated chart spec to PNG bytes with matplotlib's Agg canvas.

Headless and state-free: each chart is its own ``Figure`` on a ``FigureCanvasAgg`` (no pyplot,
no global figure registry), drawn inside ``rc_context`` with the fonts of its language and with
mathtext and TeX off, so a ``$`` in a model-written label is just a dollar sign. Before drawing,
every character of the chart's text must have a glyph in its fonts; while drawing, a "Glyph ...
missing" warning from matplotlib (e.g. a glyph in a tick label) also fails the chart, so no image
with tofu boxes ever leaves this module.
"""
from __future__ import annotations

import io
import warnings

import numpy as np

from charts.derive import fmt, histogram_edges
from charts.fonts import ChartFonts
from charts.spec import ChartSpec


class RenderError(RuntimeError):
    """A chart that cannot be drawn faithfully; the message names the problem."""


def check_glyphs(spec: ChartSpec, fonts: ChartFonts) -> None:
    """RenderError naming the first text field with a character that no font can draw."""
    for field, text in spec.texts():
        missing = fonts.missing(text)
        if missing:
            shown = ", ".join(f"{ch!r} U+{ord(ch):04X}" for ch in missing[:3])
            raise RenderError(f"no glyph in {'/'.join(fonts.families)} for {shown} in {field}")


def render_png(spec: ChartSpec, fonts: ChartFonts, width: int = 800, height: int = 600, dpi: int = 100,
               strict: bool = True) -> bytes:
    """PNG bytes of ``width`` x ``height`` pixels. ``strict=False`` skips the glyph checks (tests use
    it to draw the tofu a missing font would give)."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg   # the canvas itself: no pyplot, no backend switch
    from matplotlib.figure import Figure

    if strict:
        check_glyphs(spec, fonts)
    rc = {"font.family": list(fonts.families), "text.parse_math": False, "text.usetex": False,
          "axes.unicode_minus": False, "svg.fonttype": "none"}
    with warnings.catch_warnings(record=True) as caught, matplotlib.rc_context(rc):
        warnings.simplefilter("always")
        fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi, layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        _DRAW[spec.chart_type](ax, spec, fig)
        ax.set_title(spec.title)
        if spec.chart_type != "pie":
            ax.set_xlabel(spec.x_label)
            ax.set_ylabel(_with_unit(spec.y_label, spec.unit) if spec.chart_type not in ("heatmap",) else spec.y_label)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    missing = [str(w.message) for w in caught if "missing from font" in str(w.message)]
    if strict and missing:
        raise RenderError(f"matplotlib drew missing glyphs: {missing[0]}")
    for w in caught:   # not strict: pass matplotlib's warnings on to the caller
        warnings.warn(w.message if isinstance(w.message, Warning) else str(w.message), w.category, stacklevel=2)
    return buf.getvalue()


def _with_unit(label: str, unit: str) -> str:
    if not unit or unit in label:
        return label
    return f"{label} ({unit})" if label else unit


def _category_axis(ax, spec: ChartSpec) -> np.ndarray:
    x = np.arange(len(spec.categories))
    long = len(spec.categories) > 6 or max(len(c) for c in spec.categories) > 10
    ax.set_xticks(x, spec.categories, rotation=35 if long else 0, ha="right" if long else "center")
    return x


def _legend(ax, spec: ChartSpec) -> None:
    if len(spec.series) > 1:
        ax.legend(fontsize="small")


def _bar(ax, spec, fig):
    x = _category_axis(ax, spec)
    n = len(spec.series)
    width = 0.8 / n
    for i, s in enumerate(spec.series):
        ax.bar(x + (i - (n - 1) / 2) * width, s.values, width, label=s.name)
    _legend(ax, spec)


def _line(ax, spec, fig):
    x = _category_axis(ax, spec)
    for s in spec.series:
        ax.plot(x, s.values, marker="o", label=s.name)
    _legend(ax, spec)


def _area(ax, spec, fig):
    x = _category_axis(ax, spec)
    ax.stackplot(x, *[s.values for s in spec.series], labels=[s.name for s in spec.series], alpha=0.85)
    _legend(ax, spec)


def _pie(ax, spec, fig):
    ax.pie(spec.series[0].values, labels=spec.categories, autopct="%1.1f%%", startangle=90, counterclock=False)
    ax.set_aspect("equal")


def _scatter(ax, spec, fig):
    for s in spec.series:
        ax.scatter(s.x, s.values, s=24, label=s.name)
    _legend(ax, spec)


def _histogram(ax, spec, fig):
    edges = histogram_edges(spec)
    data = [s.values for s in spec.series]
    ax.hist(data if len(data) > 1 else data[0], bins=edges, label=[s.name for s in spec.series] if len(data) > 1 else None,
            edgecolor="white")
    _legend(ax, spec)


def _heatmap(ax, spec, fig):
    m = np.asarray([s.values for s in spec.series], dtype=float)
    im = ax.imshow(m, cmap="viridis", aspect="auto")
    ax.set_xticks(np.arange(len(spec.categories)), spec.categories,
                  rotation=35 if len(spec.categories) > 6 else 0, ha="right" if len(spec.categories) > 6 else "center")
    ax.set_yticks(np.arange(len(spec.series)), [s.name for s in spec.series])
    cbar = fig.colorbar(im, ax=ax)
    if spec.unit:
        cbar.set_label(spec.unit)
    if m.size <= 100:
        lo, hi = float(m.min()), float(m.max())
        mid = (lo + hi) / 2
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                ax.text(j, i, fmt(m[i, j]), ha="center", va="center", fontsize="small",
                        color="black" if m[i, j] > mid else "white")


def _box(ax, spec, fig):
    ax.boxplot([s.values for s in spec.series], tick_labels=[s.name for s in spec.series])


_DRAW = {"bar": _bar, "line": _line, "area": _area, "pie": _pie, "scatter": _scatter,
         "histogram": _histogram, "heatmap": _heatmap, "box": _box}
