"""Does a model's rephrasing still agree with the chart? Checked against the spec's values.

The derived caption and answers are correct by construction; a model may reword them, and the
reworded text is accepted only when:

- an answer still states its pair's ground truth: the number (within 0.5 %, or 0.005 absolutely,
  so rounding to what the derived text showed passes), the label (case-insensitive), yes/no, or
  the direction of a trend or correlation (a small list of synonyms per language), and never
  its opposite;
- every number in the reworded text is one the chart has: a data value, a figure the derivation
  computed (totals, shares, means, medians, r), a count, or a number in the chart's own labels.
  A model that adds a difference or a ratio of its own is therefore rejected: conservative by
  design, because a wrong figure is worse than a plain sentence;
- the text is in the chart's language: an English chart's text has no Chinese characters; a
  Chinese chart's text has Chinese characters, or is only numbers and the chart's own labels.

Numbers are read as Arabic numerals (``1,234.5``, ``-3``, ``42%``); a number written in words
(``twelve``, ``十二``) is not read, so an answer that states its value only in words is rejected.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from charts.derive import fmt
from charts.spec import ChartSpec, is_han

# ASCII word boundaries: "Q4" holds no number, but "321万辆" and "2023年" do.
NUMBER_RE = re.compile(r"(?<![A-Za-z0-9_.])[-\u2212]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![A-Za-z0-9_])")

SYNONYMS: dict[str, dict[str, dict[str, tuple[str, ...]]]] = {
    "trend": {
        "en": {"increase": ("increase", "rise", "rose", "grow", "grew", "climb", "went up", "goes up", "higher"),
               "decrease": ("decrease", "fall", "fell", "drop", "decline", "went down", "goes down", "lower"),
               "unchanged": ("unchanged", "same", "flat", "constant", "steady", "stays")},
        "zh": {"increase": ("上升", "增加", "增长", "上涨", "提高", "升高"),
               "decrease": ("下降", "减少", "下跌", "降低", "回落"),
               "unchanged": ("不变", "持平", "保持")},
    },
    "correlation": {
        "en": {"positive": ("positive",), "negative": ("negative",),
               "none": ("no clear", "unclear", "weak", "no correlation", "little", "no linear", "uncorrelated")},
        "zh": {"positive": ("正相关",), "negative": ("负相关",), "none": ("不明显", "无明显", "没有明显", "弱", "无关")},
    },
}


def numbers_in(text: str) -> list[float]:
    """Arabic numerals in ``text`` (thousands separators and the Unicode minus understood)."""
    out = []
    for m in NUMBER_RE.finditer(text):
        s = m.group(0).replace(",", "").replace("\u2212", "-")
        try:
            out.append(float(s))
        except ValueError:
            continue
    return out


def close(a: float, b: float) -> bool:
    """Equal up to the rounding a sentence may apply (0.5 %, or 0.005 near zero); sign-blind,
    since "fell by 3" states -3."""
    return abs(abs(a) - abs(b)) <= max(0.005 * abs(b), 0.005)


@dataclass(frozen=True)
class Reference:
    """What a faithful text about one chart may state: its language, every number it has (data
    values, derived figures, counts, numbers in its labels) and its labels."""

    language: str
    numbers: tuple[float, ...]
    labels: tuple[str, ...]


def reference(spec: ChartSpec, derived_numbers: list[float], derived_text: str = "") -> Reference:
    """The reference for ``spec``: ``derived_numbers`` from ``charts.derive``, plus every number in
    ``derived_text`` (the derived caption and answers, which are right by construction)."""
    numbers = list(derived_numbers) + numbers_in(derived_text)
    labels = [text for _, text in spec.texts()]
    for text in labels:
        numbers.extend(numbers_in(text))
    return Reference(spec.language, tuple(numbers), tuple(sorted(labels, key=len, reverse=True)))


def _language_problem(text: str, ref: Reference) -> str | None:
    if ref.language == "en":
        return "has Chinese characters in an English chart" if any(is_han(ch) for ch in text) else None
    if any(is_han(ch) for ch in text):
        return None
    rest = text
    for label in ref.labels:   # an answer may be just a label, even an English one
        rest = rest.replace(label, " ")
    return "not in Chinese" if re.search(r"[A-Za-z]{2,}", rest) else None


def unknown_numbers(text: str, ref: Reference) -> list[float]:
    return [n for n in numbers_in(text) if not any(close(n, k) for k in ref.numbers)]


def check_caption(caption: str, ref: Reference) -> str | None:
    """None when the reworded caption agrees with the chart, else why not."""
    if not caption or not caption.strip():
        return "caption is empty"
    problem = _language_problem(caption, ref)
    if problem:
        return f"caption {problem}"
    extra = unknown_numbers(caption, ref)
    if extra:
        return f"caption states {fmt(extra[0])}, which the chart does not have"
    return None


def check_answer(answer: str, pair: dict[str, Any], ref: Reference) -> str | None:
    """None when a reworded answer still gives the pair's ground truth ``value``, else why not."""
    if not answer or not answer.strip():
        return "answer is empty"
    problem = _language_problem(answer, ref)
    if problem:
        return f"answer {problem}"
    value, kind = pair["value"], pair.get("kind", "")
    low = " ".join(answer.casefold().split())
    if isinstance(value, bool):
        reason = _check_yes_no(low, value, ref.language)
    elif isinstance(value, str) and kind in SYNONYMS:
        reason = _check_words(low, value, SYNONYMS[kind][ref.language])
    elif isinstance(value, str):
        label = " ".join(value.casefold().split())
        reason = None if label in low else f"answer does not name {value!r}"
    else:
        reason = None if any(close(n, float(value)) for n in numbers_in(answer)) else f"answer does not state {fmt(value)}"
    if reason:
        return reason
    extra = unknown_numbers(answer, ref)
    if extra:
        return f"answer states {fmt(extra[0])}, which the chart does not have"
    return None


def _check_yes_no(low: str, value: bool, language: str) -> str | None:
    if language == "en":
        words = set(re.findall(r"[a-z]+", low))
        yes, no = "yes" in words, bool(words & {"no", "not"})
    else:
        no = any(neg in low for neg in ("否", "不", "没有"))
        yes = "是" in low and not no
    if value and (not yes or no):
        return "answer does not say yes"
    if not value and (not no or yes):
        return "answer does not say no"
    return None


def _check_words(low: str, value: str, table: dict[str, tuple[str, ...]]) -> str | None:
    if not any(w in low for w in table[value]):
        return f"answer does not say {value}"
    for other, words in table.items():
        if other != value and any(w in low for w in words):
            return f"answer says {other}, the chart says {value}"
    return None
