"""Caption and QA pairs computed from a chart spec's numbers: correct by construction.

Every statement is arithmetic on the spec (extremes, totals, shares, trends, comparisons,
correlation, bin counts, quartiles) written into fixed English or Chinese sentences; no model is
involved. Each QA pair carries its ground truth ``value`` (a number, a label or a yes/no) and its
``kind`` so that a later rephrasing can be checked against it (``charts.check``). Histogram bins
use ``numpy.histogram_bin_edges`` and box-plot quartiles ``numpy.percentile`` (linear), the same
computations matplotlib draws with, so caption and image agree.
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from charts.spec import ChartSpec

TYPE_NAMES = {
    "en": {"bar": "bar chart", "line": "line chart", "pie": "pie chart", "scatter": "scatter plot",
           "area": "stacked area chart", "histogram": "histogram", "heatmap": "heatmap", "box": "box plot"},
    "zh": {"bar": "柱状图", "line": "折线图", "pie": "饼图", "scatter": "散点图", "area": "堆叠面积图",
           "histogram": "直方图", "heatmap": "热力图", "box": "箱线图"},
}
TREND_WORDS = {"en": {"increase": "increases", "decrease": "decreases", "unchanged": "stays the same"},
               "zh": {"increase": "上升", "decrease": "下降", "unchanged": "保持不变"}}
CORRELATION_WORDS = {"en": {"positive": "positive", "negative": "negative", "none": "no clear"},
                     "zh": {"positive": "正", "negative": "负", "none": "不明显的"}}


@dataclass(frozen=True)
class QA:
    question: str
    answer: str
    value: float | str | bool
    kind: str

    def __post_init__(self):   # plain floats (not numpy scalars) so pairs compare and serialise as data
        if not isinstance(self.value, (bool, str)):
            object.__setattr__(self, "value", float(self.value))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Derived:
    caption: str
    qa: list[QA]
    known_numbers: list[float] = field(default_factory=list)


def fmt(v: float) -> str:
    """A number as a reader would write it: 12 not 12.0, 0.1 not 0.1000000001, no exponent."""
    v = float(v)
    if v == 0:
        return "0"
    if v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    s = repr(v)
    if "e" in s or len(s.lstrip("-")) > 10:
        s = f"{v:.6f}".rstrip("0").rstrip(".")
        if s in ("0", "-0"):
            s = f"{v:.3g}"
    return s


def round2(v: float) -> float:
    """Computed figures (sums, means, shares) are stated to two decimals."""
    r = round(float(v), 2)
    return 0.0 if r == 0 else r


class _Writer:
    """Sentences in one language, recording every number it writes (for the rephrase check)."""

    def __init__(self, spec: ChartSpec):
        self.spec = spec
        self.lang = spec.language
        self.known: list[float] = []

    def t(self, en: str, zh: str) -> str:
        return en if self.lang == "en" else zh

    def n(self, v: float, unit: bool = True) -> str:
        """A number (with the chart's unit) as it appears in a sentence."""
        self.known.append(float(v))
        s = fmt(v)
        u = self.spec.unit if unit else ""
        if not u:
            return s
        if self.lang == "zh" or u in ("%", "‰", "°") or u.startswith("%"):
            return s + u
        return f"{s} {u}"

    def q(self, text: str) -> str:
        return f'"{text}"' if self.lang == "en" else f"“{text}”"

    def join(self, items: list[str], limit: int = 8) -> str:
        shown = items[:limit]
        sep = ", " if self.lang == "en" else "、"
        more = self.t(", ...", "等") if len(items) > limit else ""
        return sep.join(shown) + more

    def yes(self, v: bool) -> str:
        return self.t("Yes" if v else "No", "是" if v else "否")

    def type_name(self) -> str:
        return TYPE_NAMES[self.lang][self.spec.chart_type]

    def intro(self, body_en: str, body_zh: str) -> str:
        return self.t(f"This {self.type_name()}, titled {self.q(self.spec.title)}, {body_en}",
                      f"这是一张标题为{self.q(self.spec.title)}的{self.type_name()}，{body_zh}")

    def end(self, sentences: list[str]) -> str:
        return (" " if self.lang == "en" else "").join(s for s in sentences if s)


def derive(spec: ChartSpec, rng: random.Random | None = None) -> Derived:
    """The caption and every candidate QA pair of a spec; ``rng`` picks which categories the
    look-up and comparison questions ask about (seeded by the caller for reproducibility)."""
    rng = rng or random.Random(0)
    w = _Writer(spec)
    fn = {"bar": _categorical, "line": _categorical, "area": _categorical, "pie": _pie, "scatter": _scatter,
          "histogram": _histogram, "heatmap": _heatmap, "box": _box}[spec.chart_type]
    caption, qa = fn(spec, w, rng)
    known = list(w.known)
    for s in spec.series:
        known.extend(s.values)
        known.extend(s.x or ())
    known.extend([len(spec.categories), len(spec.series)] + ([spec.bins] if spec.bins else []))
    return Derived(caption=caption, qa=qa, known_numbers=known)


def select_qa(qa: list[QA], k: int, rng: random.Random) -> list[QA]:
    """At most ``k`` pairs, chosen at random but kept in their natural order."""
    if len(qa) <= k:
        return list(qa)
    keep = sorted(rng.sample(range(len(qa)), k))
    return [qa[i] for i in keep]


# --------------------------------------------------------------------------------------------------
# bar / line / area
# --------------------------------------------------------------------------------------------------

def _categorical(spec: ChartSpec, w: _Writer, rng: random.Random) -> tuple[str, list[QA]]:
    cats, series = spec.categories, spec.series
    multi = len(series) > 1
    xw = spec.x_label or w.t("category", "类别")
    yw = spec.y_label or w.t("value", "数值")
    summable = spec.chart_type in ("bar", "area")   # a total of temperatures or prices means nothing
    sentences = [w.intro(f"shows {yw} by {xw} for {len(cats)} categories ({w.join(cats)}).",
                         f"展示了{len(cats)}个{xw}（{w.join(cats)}）的{yw}。")]
    qa: list[QA] = []
    for idx, s in enumerate(series):
        vals = np.asarray(s.values, dtype=float)
        what = s.name if multi else yw
        top, bottom = ties(vals, "max"), ties(vals, "min")
        if idx < 3:
            if len(cats) == 1:
                sentences.append(w.t(f"{_cap(what)} is {w.n(vals[0])} in {cats[0]}.", f"{what}在{cats[0]}为{w.n(vals[0])}。"))
            else:
                hi = w.join([cats[i] for i in top]) if w.lang == "zh" else _and([cats[i] for i in top])
                lo = w.join([cats[i] for i in bottom]) if w.lang == "zh" else _and([cats[i] for i in bottom])
                sentences.append(w.t(
                    f"{_cap(what)} is highest in {hi} ({w.n(vals[top[0]])}) and lowest in {lo} ({w.n(vals[bottom[0]])}).",
                    f"{what}在{hi}最高（{w.n(vals[top[0]])}），在{lo}最低（{w.n(vals[bottom[0]])}）。"))
            if spec.chart_type in ("line", "area") and len(cats) > 1:
                trend = _trend(vals[0], vals[-1])
                sentences.append(w.t(
                    f"From {cats[0]} to {cats[-1]} it {TREND_WORDS['en'][trend]}"
                    + (f" from {w.n(vals[0])} to {w.n(vals[-1])}." if trend != "unchanged" else f" at {w.n(vals[0])}."),
                    f"从{cats[0]}到{cats[-1]}，" + (f"由{w.n(vals[0])}{TREND_WORDS['zh'][trend]}至{w.n(vals[-1])}。"
                                                    if trend != "unchanged" else f"保持在{w.n(vals[0])}。")))
        if idx >= 2:
            continue   # questions about the first two series are plenty
        if len(cats) > 1 and len(top) == 1:
            i = top[0]
            qa.append(QA(w.t(f"In which {xw} is {what} highest?", f"{what}在哪个{xw}最高？"),
                         w.t(f"{cats[i]}, with {w.n(vals[i])}.", f"{cats[i]}，为{w.n(vals[i])}。"), cats[i], "max_label"))
        if len(cats) > 1 and len(bottom) == 1:
            i = bottom[0]
            qa.append(QA(w.t(f"In which {xw} is {what} lowest?", f"{what}在哪个{xw}最低？"),
                         w.t(f"{cats[i]}, with {w.n(vals[i])}.", f"{cats[i]}，为{w.n(vals[i])}。"), cats[i], "min_label"))
        j = rng.randrange(len(cats))
        qa.append(QA(w.t(f"What is the value of {what} in {cats[j]}?", f"{cats[j]}的{what}是多少？"),
                     w.t(f"{w.n(vals[j])}.", f"{w.n(vals[j])}。"), float(vals[j]), "value"))
        if summable:
            total = round2(vals.sum())
            qa.append(QA(w.t(f"What is the total of {what} over all categories?", f"所有{xw}的{what}合计是多少？"),
                         w.t(f"{w.n(total)}.", f"{w.n(total)}。"), total, "total"))
        if len(cats) > 1:
            a, b = rng.sample(range(len(cats)), 2)
            higher = bool(vals[a] > vals[b])
            qa.append(QA(w.t(f"Is {what} higher in {cats[a]} than in {cats[b]}?", f"{cats[a]}的{what}是否高于{cats[b]}？"),
                         w.t(f"{w.yes(higher)}: {w.n(vals[a])} against {w.n(vals[b])}.",
                             f"{w.yes(higher)}，{w.n(vals[a])}对{w.n(vals[b])}。"),
                         higher, "compare"))
        if spec.chart_type in ("line", "area") and len(cats) > 1:
            trend = _trend(vals[0], vals[-1])
            qa.append(QA(w.t(f"Does {what} increase or decrease from {cats[0]} to {cats[-1]}?",
                             f"从{cats[0]}到{cats[-1]}，{what}是上升还是下降？"),
                         w.t(f"It {TREND_WORDS['en'][trend]}, from {w.n(vals[0])} to {w.n(vals[-1])}.",
                             f"{TREND_WORDS['zh'][trend]}，由{w.n(vals[0])}到{w.n(vals[-1])}。"),
                         trend, "trend"))
    if multi and summable:
        totals = [round2(sum(s.values)) for s in series]
        best = ties(totals, "max")
        names = [series[k].name for k in best]
        sentences.append(w.t(f"Over all categories, {_and(names)} {'has' if len(best) == 1 else 'have'} the largest total "
                             f"({w.n(totals[best[0]])}).",
                             f"在所有{xw}中，{w.join(names)}的合计最大（{w.n(totals[best[0]])}）。"))
        if len(best) == 1:
            qa.append(QA(w.t("Which series has the largest total over all categories?", f"哪个系列在所有{xw}中的合计最大？"),
                         w.t(f"{names[0]}, with {w.n(totals[best[0]])}.", f"{names[0]}，合计{w.n(totals[best[0]])}。"),
                         names[0], "max_series"))
    elif multi:   # line: who leads at the end
        last = [s.values[-1] for s in series]
        best = ties(last, "max")
        names = [series[k].name for k in best]
        sentences.append(w.t(f"In {cats[-1]}, {_and(names)} {'is' if len(best) == 1 else 'are'} highest ({w.n(last[best[0]])}).",
                             f"在{cats[-1]}，{w.join(names)}最高（{w.n(last[best[0]])}）。"))
        if len(best) == 1:
            qa.append(QA(w.t(f"Which series is highest in {cats[-1]}?", f"在{cats[-1]}，哪个系列最高？"),
                         w.t(f"{names[0]}, with {w.n(last[best[0]])}.", f"{names[0]}，为{w.n(last[best[0]])}。"),
                         names[0], "max_series"))
    if spec.chart_type == "area" and multi:
        stacked = [round2(sum(s.values[i] for s in series)) for i in range(len(cats))]
        best = ties(stacked, "max")
        where_ = [cats[i] for i in best]
        sentences.append(w.t(f"Stacked together, the series reach their highest combined value in {_and(where_)} "
                             f"({w.n(stacked[best[0]])}).",
                             f"各系列叠加后，在{w.join(where_)}的合计最高（{w.n(stacked[best[0]])}）。"))
        j = rng.randrange(len(cats))
        qa.append(QA(w.t(f"What is the combined value of all series in {cats[j]}?", f"{cats[j]}所有系列的合计是多少？"),
                     w.t(f"{w.n(stacked[j])}.", f"{w.n(stacked[j])}。"), stacked[j], "total"))
    elif spec.chart_type == "bar" and not multi and len(cats) > 1:
        sentences.append(w.t(f"Together the categories add up to {w.n(round2(sum(series[0].values)))}.",
                             f"各{xw}合计为{w.n(round2(sum(series[0].values)))}。"))
    return w.end(sentences), qa


def ties(values, which: str) -> list[int]:
    """Indices of every maximum (or minimum): a "largest" claim names all of them, and a question
    whose answer would be one of several tied labels is not asked."""
    arr = np.asarray(values, dtype=float)
    target = arr.max() if which == "max" else arr.min()
    return [int(i) for i in np.flatnonzero(arr == target)]


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _trend(first: float, last: float) -> str:
    return "increase" if last > first else "decrease" if last < first else "unchanged"


# --------------------------------------------------------------------------------------------------
# pie
# --------------------------------------------------------------------------------------------------

def _pie(spec: ChartSpec, w: _Writer, rng: random.Random) -> tuple[str, list[QA]]:
    cats = spec.categories
    vals = np.asarray(spec.series[0].values, dtype=float)
    total = float(vals.sum())
    shares = [round(100 * v / total, 1) for v in vals]
    top, bottom = ties(vals, "max"), ties(vals, "min")
    pct = lambda i: w.n(shares[i], unit=False) + "%"   # noqa: E731 - a share is always in percent

    def paren(i: int) -> str:   # the slice's own value, unless the values are percentages already
        if spec.unit.startswith("%"):
            return ""
        return w.t(f" ({w.n(vals[i])})", f"（{w.n(vals[i])}）")

    def names(idx: list[int]) -> str:
        return _and([cats[i] for i in idx]) if w.lang == "en" else w.join([cats[i] for i in idx])

    each = lambda idx: "" if len(idx) == 1 else w.t(" each", "各")   # noqa: E731
    sentences = [
        w.intro(f"divides a total of {w.n(round2(total))}{' by ' + spec.x_label if spec.x_label else ''} among "
                f"{len(cats)} slices ({w.join(cats)}).",
                f"将合计{w.n(round2(total))}分为{len(cats)}个{spec.x_label or '类别'}（{w.join(cats)}）。"),
        w.t(f"{names(top)} {'has' if len(top) == 1 else 'have'} the largest share, {pct(top[0])}{each(top)}{paren(top[0])}, "
            f"and {names(bottom)} the smallest, {pct(bottom[0])}{each(bottom)}{paren(bottom[0])}.",
            f"{names(top)}占比最大，{each(top)}为{pct(top[0])}{paren(top[0])}；{names(bottom)}占比最小，"
            f"{each(bottom)}为{pct(bottom[0])}{paren(bottom[0])}。"),
    ]
    j = rng.randrange(len(cats))
    a, b = rng.sample(range(len(cats)), 2)
    bigger = bool(vals[a] > vals[b])
    qa = []
    if len(top) == 1:
        qa.append(QA(w.t("Which slice is the largest?", "哪一部分占比最大？"),
                     w.t(f"{cats[top[0]]}, with {pct(top[0])} of the total.", f"{cats[top[0]]}，占{pct(top[0])}。"),
                     cats[top[0]], "max_label"))
    if len(bottom) == 1:
        qa.append(QA(w.t("Which slice is the smallest?", "哪一部分占比最小？"),
                     w.t(f"{cats[bottom[0]]}, with {pct(bottom[0])} of the total.", f"{cats[bottom[0]]}，占{pct(bottom[0])}。"),
                     cats[bottom[0]], "min_label"))
    qa += [
        QA(w.t(f"What share of the total does {cats[j]} account for?", f"{cats[j]}占总数的百分之多少？"),
           w.t(f"{pct(j)}.", f"{pct(j)}。"), shares[j], "share"),
        QA(w.t(f"What is the value of {cats[j]}?", f"{cats[j]}的数值是多少？"),
           w.t(f"{w.n(vals[j])}.", f"{w.n(vals[j])}。"), float(vals[j]), "value"),
        QA(w.t("What is the total of all slices?", "所有部分的合计是多少？"),
           w.t(f"{w.n(round2(total))}.", f"{w.n(round2(total))}。"), round2(total), "total"),
        QA(w.t(f"Is the {cats[a]} slice larger than the {cats[b]} slice?", f"{cats[a]}是否大于{cats[b]}？"),
           w.t(f"{w.yes(bigger)}: {pct(a)} against {pct(b)}.", f"{w.yes(bigger)}，{pct(a)}对{pct(b)}。"),
           bigger, "compare"),
    ]
    return w.end(sentences), qa


# --------------------------------------------------------------------------------------------------
# scatter
# --------------------------------------------------------------------------------------------------

def correlation(x: list[float], y: list[float]) -> float:
    """Pearson r; 0 when either variable is constant."""
    xa, ya = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if xa.std() == 0 or ya.std() == 0:
        return 0.0
    return float(np.corrcoef(xa, ya)[0, 1])


def correlation_word(r: float) -> str:
    return "positive" if r >= 0.3 else "negative" if r <= -0.3 else "none"


def _scatter(spec: ChartSpec, w: _Writer, rng: random.Random) -> tuple[str, list[QA]]:
    xw = spec.x_label or "x"
    yw = spec.y_label or "y"
    n_all = sum(len(s.values) for s in spec.series)
    names = [s.name for s in spec.series]
    sentences = [w.intro(f"plots {yw} against {xw} for {n_all} points"
                         + (f" in {len(names)} series ({w.join(names)})." if len(names) > 1 else "."),
                         f"展示了{n_all}个点的{yw}与{xw}的关系"
                         + (f"，共{len(names)}个系列（{w.join(names)}）。" if len(names) > 1 else "。"))]
    qa: list[QA] = []
    for idx, s in enumerate(spec.series[:3]):
        x, y = np.asarray(s.x, dtype=float), np.asarray(s.values, dtype=float)
        at_max = w.join([w.n(x[i], unit=False) for i in ties(y, "max")])
        at_min = w.join([w.n(x[i], unit=False) for i in ties(y, "min")])
        r = correlation(s.x, s.values)
        word = correlation_word(r)
        r_text = w.n(round2(r), unit=False)
        who = s.name
        sentences.append(w.t(
            f"{who} has {len(y)} points with {xw} from {w.n(x.min(), unit=False)} to {w.n(x.max(), unit=False)}; its highest "
            f"{yw} is {w.n(y.max())} at {xw} = {at_max}, and the correlation is {CORRELATION_WORDS['en'][word]} "
            f"(r = {r_text}).",
            f"{who}共有{len(y)}个点，{xw}从{w.n(x.min(), unit=False)}到{w.n(x.max(), unit=False)}；{yw}最高为{w.n(y.max())}"
            f"（{xw} = {at_max}），相关性为{CORRELATION_WORDS['zh'][word]}相关（r = {r_text}）。"))
        if idx >= 2:
            continue
        qa += [
            QA(w.t(f"How many points does {who} have?", f"{who}有多少个点？"),
               w.t(f"{w.n(len(y), unit=False)}.", f"{w.n(len(y), unit=False)}个。"), float(len(y)), "count"),
            QA(w.t(f"What is the highest {yw} in {who}?", f"{who}中{yw}的最大值是多少？"),
               w.t(f"{w.n(y.max())}, at {xw} = {at_max}.", f"{w.n(y.max())}，对应{xw} = {at_max}。"),
               float(y.max()), "max_value"),
            QA(w.t(f"What is the lowest {yw} in {who}?", f"{who}中{yw}的最小值是多少？"),
               w.t(f"{w.n(y.min())}, at {xw} = {at_min}.", f"{w.n(y.min())}，对应{xw} = {at_min}。"),
               float(y.min()), "min_value"),
            QA(w.t(f"Is the correlation between {xw} and {yw} in {who} positive, negative or unclear?",
                   f"{who}中{xw}与{yw}是正相关、负相关还是相关不明显？"),
               w.t(f"{CORRELATION_WORDS['en'][word].capitalize()} (r = {r_text}).",
                   f"{CORRELATION_WORDS['zh'][word]}相关（r = {r_text}）。"),
               word, "correlation"),
        ]
    return w.end(sentences), qa


# --------------------------------------------------------------------------------------------------
# histogram
# --------------------------------------------------------------------------------------------------

def histogram_edges(spec: ChartSpec) -> np.ndarray:
    """The bin edges every series shares (as the renderer draws them)."""
    return np.histogram_bin_edges(np.concatenate([np.asarray(s.values, dtype=float) for s in spec.series]),
                                  bins=spec.bins)


def _histogram(spec: ChartSpec, w: _Writer, rng: random.Random) -> tuple[str, list[QA]]:
    edges = histogram_edges(spec)
    e = [round2(v) for v in edges]
    xw = spec.x_label or w.t("the values", "数值")
    n_all = sum(len(s.values) for s in spec.series)
    sentences = [w.intro(f"shows the distribution of {xw} for {n_all} observations in {spec.bins} bins from "
                         f"{w.n(e[0])} to {w.n(e[-1])}.",
                         f"展示了{n_all}个观测值的{xw}分布，分为{spec.bins}个区间，范围从{w.n(e[0])}到{w.n(e[-1])}。")]
    qa: list[QA] = []
    for idx, s in enumerate(spec.series[:3]):
        vals = np.asarray(s.values, dtype=float)
        counts, _ = np.histogram(vals, bins=edges)
        top = ties(counts, "max")
        span = w.t(" and ".join(f"between {w.n(e[k])} and {w.n(e[k + 1])}" for k in top),
                   "、".join(f"{w.n(e[k])}到{w.n(e[k + 1])}之间" for k in top))
        mean = round2(vals.mean())
        peak = w.n(int(counts[top[0]]), unit=False)
        who = s.name
        sentences.append(w.t(
            f"For {who}, the most observations ({peak} of {w.n(len(vals), unit=False)}"
            f"{'' if len(top) == 1 else ' in each'}) fall {span}, and the mean is {w.n(mean)}.",
            f"{who}中，落在{span}的观测值最多（{w.n(len(vals), unit=False)}个中的{peak}个"
            f"{'' if len(top) == 1 else '（每个区间）'}），平均值为{w.n(mean)}。"))
        if idx >= 2:
            continue
        qa += [
            QA(w.t(f"How many observations does {who} have?", f"{who}有多少个观测值？"),
               w.t(f"{w.n(len(vals), unit=False)}.", f"{w.n(len(vals), unit=False)}个。"), float(len(vals)), "count"),
            QA(w.t(f"How many observations of {who} fall in the most populated bin?", f"{who}中观测值最多的区间有多少个观测值？"),
               w.t(f"{peak}, {span}.", f"{peak}个，位于{span}。"), float(counts[top[0]]), "max_count"),
            QA(w.t(f"What is the mean of {who}?", f"{who}的平均值是多少？"),
               w.t(f"About {w.n(mean)}.", f"约为{w.n(mean)}。"), mean, "mean"),
            QA(w.t(f"What is the largest observation in {who}?", f"{who}中最大的观测值是多少？"),
               w.t(f"{w.n(vals.max())}.", f"{w.n(vals.max())}。"), float(vals.max()), "max_value"),
        ]
    return w.end(sentences), qa


# --------------------------------------------------------------------------------------------------
# heatmap
# --------------------------------------------------------------------------------------------------

def _heatmap(spec: ChartSpec, w: _Writer, rng: random.Random) -> tuple[str, list[QA]]:
    cols, rows = spec.categories, [s.name for s in spec.series]
    m = np.asarray([s.values for s in spec.series], dtype=float)
    flat_max, flat_min = ties(m.ravel(), "max"), ties(m.ravel(), "min")
    cell = lambda k: f"{rows[k // m.shape[1]]}{w.t(' and ', '、')}{cols[k % m.shape[1]]}"   # noqa: E731
    at_max = w.t("; ".join(cell(k) for k in flat_max), "；".join(cell(k) for k in flat_max))
    at_min = w.t("; ".join(cell(k) for k in flat_min), "；".join(cell(k) for k in flat_min))
    vmax, vmin = float(m.max()), float(m.min())
    row_totals = [round2(v) for v in m.sum(axis=1)]
    best_rows = ties(row_totals, "max")
    xw = spec.x_label or w.t("column", "列")
    yw = spec.y_label or w.t("row", "行")
    sentences = [
        w.intro(f"shows values by {yw} in {len(rows)} rows ({w.join(rows)}) and {xw} in {len(cols)} columns "
                f"({w.join(cols)}).",
                f"按{yw}（{len(rows)}行：{w.join(rows)}）和{xw}（{len(cols)}列：{w.join(cols)}）展示数值。"),
        w.t(f"The highest value, {w.n(vmax)}, is at {at_max}; the lowest, {w.n(vmin)}, is at {at_min}.",
            f"最大值{w.n(vmax)}位于{at_max}；最小值{w.n(vmin)}位于{at_min}。"),
    ]
    if len(rows) > 1:
        best = [rows[k] for k in best_rows]
        sentences.append(w.t(f"{_and(best)} {'has' if len(best) == 1 else 'have'} the largest total "
                             f"({w.n(row_totals[best_rows[0]])}).",
                             f"{w.join(best)}的合计最大（{w.n(row_totals[best_rows[0]])}）。"))
    i, j = rng.randrange(len(rows)), rng.randrange(len(cols))
    qa = [
        QA(w.t(f"What is the value for {rows[i]} and {cols[j]}?", f"{rows[i]}在{cols[j]}的数值是多少？"),
           w.t(f"{w.n(m[i, j])}.", f"{w.n(m[i, j])}。"), float(m[i, j]), "value"),
        QA(w.t("What is the highest value in the heatmap?", "热力图中的最大值是多少？"),
           w.t(f"{w.n(vmax)}, at {at_max}.", f"{w.n(vmax)}，位于{at_max}。"), vmax, "max_value"),
        QA(w.t("What is the lowest value in the heatmap?", "热力图中的最小值是多少？"),
           w.t(f"{w.n(vmin)}, at {at_min}.", f"{w.n(vmin)}，位于{at_min}。"), vmin, "min_value"),
    ]
    in_row = ties(m[i], "max")
    if len(cols) > 1 and len(in_row) == 1:
        c = cols[in_row[0]]
        qa.append(QA(w.t(f"In row {rows[i]}, which {xw} has the highest value?", f"在{rows[i]}这一行中，哪个{xw}的数值最高？"),
                     w.t(f"{c}, with {w.n(m[i].max())}.", f"{c}，为{w.n(m[i].max())}。"), c, "max_label"))
    if len(rows) > 1 and len(best_rows) == 1:
        r = rows[best_rows[0]]
        qa.append(QA(w.t(f"Which {yw} has the largest total?", f"哪个{yw}的合计最大？"),
                     w.t(f"{r}, with {w.n(row_totals[best_rows[0]])}.", f"{r}，合计{w.n(row_totals[best_rows[0]])}。"),
                     r, "max_row"))
    return w.end(sentences), qa


# --------------------------------------------------------------------------------------------------
# box
# --------------------------------------------------------------------------------------------------

def box_stats(values: list[float]) -> dict[str, float]:
    """Quartiles as matplotlib's boxplot computes them (numpy.percentile, linear)."""
    q1, med, q3 = np.percentile(np.asarray(values, dtype=float), [25, 50, 75])
    return {"q1": float(q1), "median": float(med), "q3": float(q3), "iqr": float(q3 - q1),
            "min": float(min(values)), "max": float(max(values))}


def _box(spec: ChartSpec, w: _Writer, rng: random.Random) -> tuple[str, list[QA]]:
    names = [s.name for s in spec.series]
    stats = [box_stats(s.values) for s in spec.series]
    meds = [round2(st["median"]) for st in stats]
    top, bottom = ties(meds, "max"), ties(meds, "min")
    yw = spec.y_label or w.t("the values", "数值")
    listed = [f"{n} {w.n(m)}" if w.lang == "en" else f"{n}为{w.n(m)}" for n, m in zip(names, meds)]
    sentences = [w.intro(f"compares {yw} across {len(names)} groups ({w.join(names)}).",
                         f"比较了{len(names)}组（{w.join(names)}）的{yw}。"),
                 w.t(f"The medians are: {w.join(listed)}.", f"各组中位数为：{w.join(listed)}。")]
    if len(names) > 1 and len(top) < len(names):
        hi, lo = [names[k] for k in top], [names[k] for k in bottom]
        sentences.append(w.t(f"{_and(hi)} {'has' if len(hi) == 1 else 'have'} the highest median and {_and(lo)} the lowest.",
                             f"{w.join(hi)}的中位数最高，{w.join(lo)}的最低。"))
    j = rng.randrange(len(names))
    iqr = round2(stats[j]["iqr"])
    qa = [
        QA(w.t(f"What is the median of {names[j]}?", f"{names[j]}的中位数是多少？"),
           w.t(f"{w.n(meds[j])}.", f"{w.n(meds[j])}。"), meds[j], "median"),
        QA(w.t(f"What is the interquartile range of {names[j]}?", f"{names[j]}的四分位距是多少？"),
           w.t(f"{w.n(iqr)} (from {w.n(round2(stats[j]['q1']))} to {w.n(round2(stats[j]['q3']))}).",
               f"{w.n(iqr)}（从{w.n(round2(stats[j]['q1']))}到{w.n(round2(stats[j]['q3']))}）。"), iqr, "iqr"),
        QA(w.t(f"What is the largest value in {names[j]}?", f"{names[j]}中的最大值是多少？"),
           w.t(f"{w.n(stats[j]['max'])}.", f"{w.n(stats[j]['max'])}。"), stats[j]["max"], "max_value"),
        QA(w.t(f"How many observations does {names[j]} have?", f"{names[j]}有多少个观测值？"),
           w.t(f"{w.n(len(spec.series[j].values), unit=False)}.", f"{w.n(len(spec.series[j].values), unit=False)}个。"),
           float(len(spec.series[j].values)), "count"),
    ]
    if len(names) > 1 and len(top) == 1:
        hi = top[0]
        qa.insert(0, QA(w.t("Which group has the highest median?", "哪一组的中位数最高？"),
                        w.t(f"{names[hi]}, with a median of {w.n(meds[hi])}.", f"{names[hi]}，中位数为{w.n(meds[hi])}。"),
                        names[hi], "max_label"))
    return w.end(sentences), qa
