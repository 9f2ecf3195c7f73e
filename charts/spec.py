"""The chart specification: what a language model writes, as data, and how it is checked.

One flat shape serves all eight chart types, so one JSON schema constrains a model's answer and
one validator checks it:

- ``bar``, ``line``, ``area``: ``categories`` are the x positions; each series has one value per
  category (``area`` stacks its series, so values are >= 0);
- ``pie``: ``categories`` are the slices; exactly one series of non-negative values, sum > 0;
- ``heatmap``: ``categories`` are the columns; each series is a row (its ``name`` the row label)
  with one value per column;
- ``scatter``: each series is a point cloud, ``x`` and ``values`` (y) of equal length;
- ``histogram``: each series holds raw observations, binned into ``bins`` equal-width bins;
- ``box``: each series is one group of raw observations (its ``name`` the group label).

Checks beyond the schema (lengths equal to the categories, finite numbers of bounded size,
point counts, unique labels, renderable text, the language) live in ``ChartSpec`` so a spec from
any source (a model, a file, a test) passes the same gate. ``parse_spec`` turns JSON text or a
mapping into a ``ChartSpec`` or raises ``SpecError`` whose message names the bad field.
"""
from __future__ import annotations

import json
import unicodedata
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError, ValidationInfo, model_validator

CHART_TYPES = ("bar", "line", "pie", "scatter", "area", "histogram", "heatmap", "box")
ChartType = Literal["bar", "line", "pie", "scatter", "area", "histogram", "heatmap", "box"]
Language = Literal["en", "zh"]
LANGUAGE_NAMES = {"en": "English", "zh": "Chinese"}
CATEGORY_TYPES = ("bar", "line", "area", "pie", "heatmap")   # values line up with `categories`
SAMPLE_TYPES = ("histogram", "box")                          # values are raw observations

Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]


class SpecError(ValueError):
    """A spec that cannot be used; the message names the field and the problem."""


class SpecLimits(BaseModel):
    """Bounds on a spec, so that no model answer can ask for an unreadable or enormous chart."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_points: int = Field(2000, ge=1, description="numbers in all series together (values and x)")
    max_values_per_series: int = Field(500, ge=1)
    max_series: int = Field(8, ge=1)
    max_categories: int = Field(24, ge=1, description="bar/line/area categories, heatmap columns")
    max_pie_slices: int = Field(12, ge=2)
    max_heatmap_rows: int = Field(20, ge=1)
    max_bins: int = Field(50, ge=2)
    max_abs_value: float = Field(1e12, gt=0, description="larger magnitudes are rejected, not rendered as 1e+15")
    max_title_chars: int = Field(100, ge=1)
    max_label_chars: int = Field(60, ge=1, description="axis labels, unit, category and series names")
    max_spec_chars: int = Field(10_000_000, ge=1, description="longer JSON text is not even parsed")


class Series(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: StrictStr
    values: list[Number]
    x: list[Number] | None = None


class ChartSpec(BaseModel):
    """A validated chart. Validate with ``context={"limits": SpecLimits(...)}`` to change bounds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    chart_type: ChartType
    language: Language
    title: StrictStr
    x_label: StrictStr = ""
    y_label: StrictStr = ""
    unit: StrictStr = ""
    categories: list[StrictStr] = Field(default_factory=list)
    series: list[Series]
    bins: StrictInt | None = None

    @model_validator(mode="after")
    def _semantics(self, info: ValidationInfo):
        limits = (info.context or {}).get("limits") or SpecLimits()
        _check_texts(self, limits)
        _check_shape(self, limits)
        _check_values(self, limits)
        _check_language(self)
        return self

    # ---------------------------------------------------------------- helpers for render/derive
    def texts(self) -> list[tuple[str, str]]:
        """Every string that appears in the chart, with the field it came from."""
        out = [("title", self.title), ("x_label", self.x_label), ("y_label", self.y_label), ("unit", self.unit)]
        out += [(f"categories[{i}]", c) for i, c in enumerate(self.categories)]
        out += [(f"series[{i}].name", s.name) for i, s in enumerate(self.series)]
        return [(k, v) for k, v in out if v]

    def to_json(self) -> str:
        """Canonical compact JSON (what the ``chart_spec`` column holds)."""
        return json.dumps(self.model_dump(mode="json", exclude_none=True), ensure_ascii=False, separators=(",", ":"))


# --------------------------------------------------------------------------------------------------
# Semantic checks (raise ValueError; pydantic reports them with the model's location)
# --------------------------------------------------------------------------------------------------

def _check_texts(spec: ChartSpec, limits: SpecLimits) -> None:
    if not spec.title.strip():
        raise ValueError("title: empty")
    for field, text in spec.texts():
        cap = limits.max_title_chars if field == "title" else limits.max_label_chars
        if len(text) > cap:
            raise ValueError(f"{field}: {len(text)} characters > {cap}")
        bad = next((ch for ch in text if unicodedata.category(ch)[0] == "C"), None)
        if bad is not None:
            raise ValueError(f"{field}: control or unassigned character U+{ord(bad):04X}")
        if text != text.strip():
            raise ValueError(f"{field}: leading or trailing whitespace")
    for what, names in (("categories", spec.categories), ("series names", [s.name for s in spec.series])):
        if any(not n.strip() for n in names):
            raise ValueError(f"{what}: an empty label")
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"{what}: duplicate label(s) {dup[:3]}")


def _check_shape(spec: ChartSpec, limits: SpecLimits) -> None:
    t, series, cats = spec.chart_type, spec.series, spec.categories
    if not series:
        raise ValueError("series: at least one series is needed")
    if len(series) > limits.max_series:
        raise ValueError(f"series: {len(series)} series > max_series {limits.max_series}")
    total = sum(len(s.values) + len(s.x or ()) for s in series)
    if total > limits.max_points:
        raise ValueError(f"too many points: {total} > max_points {limits.max_points}")
    for i, s in enumerate(series):
        if len(s.values) > limits.max_values_per_series:
            raise ValueError(f"series[{i}].values: {len(s.values)} points > max_values_per_series "
                             f"{limits.max_values_per_series}")
        if t != "scatter" and s.x is not None:
            raise ValueError(f"series[{i}].x: only scatter charts take x values")
    if t != "histogram" and spec.bins is not None:
        raise ValueError("bins: only histograms take bins")
    if t in CATEGORY_TYPES:
        lo = 2 if t in ("line", "area", "pie") else 1
        cap = {"pie": limits.max_pie_slices}.get(t, limits.max_categories)
        if not lo <= len(cats) <= cap:
            raise ValueError(f"categories: a {t} chart needs {lo} to {cap} categories, got {len(cats)}")
        for i, s in enumerate(series):
            if len(s.values) != len(cats):
                raise ValueError(f"series[{i}].values: {len(s.values)} values but {len(cats)} categories "
                                 "(series lengths must equal the number of categories)")
        if t == "pie" and len(series) != 1:
            raise ValueError(f"series: a pie chart has exactly one series, got {len(series)}")
        if t == "heatmap" and len(series) > limits.max_heatmap_rows:
            raise ValueError(f"series: {len(series)} heatmap rows > max_heatmap_rows {limits.max_heatmap_rows}")
        return
    if cats:
        raise ValueError(f"categories: a {t} chart takes no categories (name its series instead)")
    if t == "scatter":
        for i, s in enumerate(series):
            if s.x is None:
                raise ValueError(f"series[{i}].x: a scatter series needs x values")
            if len(s.x) != len(s.values):
                raise ValueError(f"series[{i}]: {len(s.x)} x values but {len(s.values)} y values")
            if len(s.values) < 2:
                raise ValueError(f"series[{i}].values: a scatter series needs at least 2 points")
    elif t == "histogram":
        if spec.bins is None:
            raise ValueError("bins: a histogram needs bins")
        if not 2 <= spec.bins <= limits.max_bins:
            raise ValueError(f"bins: {spec.bins} is outside 2..{limits.max_bins}")
        for i, s in enumerate(series):
            if len(s.values) < 5:
                raise ValueError(f"series[{i}].values: a histogram series needs at least 5 observations")
    elif t == "box":
        for i, s in enumerate(series):
            if len(s.values) < 5:
                raise ValueError(f"series[{i}].values: a box plot group needs at least 5 observations")


def _check_values(spec: ChartSpec, limits: SpecLimits) -> None:
    cap = limits.max_abs_value
    for i, s in enumerate(spec.series):
        for field, vals in (("values", s.values), ("x", s.x or ())):
            for j, v in enumerate(vals):
                if abs(v) > cap:
                    raise ValueError(f"series[{i}].{field}[{j}]: |{v:g}| > max_abs_value {cap:g}")
                if spec.chart_type in ("pie", "area") and field == "values" and v < 0:
                    raise ValueError(f"series[{i}].values[{j}]: a {spec.chart_type} chart takes no negative values")
    if spec.chart_type == "pie" and sum(spec.series[0].values) <= 0:
        raise ValueError("series[0].values: a pie chart needs a positive total")
    if spec.chart_type == "histogram":
        lo = min(min(s.values) for s in spec.series)
        hi = max(max(s.values) for s in spec.series)
        if lo == hi:
            raise ValueError("series: every observation has the same value; a histogram needs a spread")


def is_cjk(ch: str) -> bool:
    """Han ideographs (with extensions and compatibility forms) and CJK punctuation/fullwidth forms."""
    o = ord(ch)
    return (0x3400 <= o <= 0x4DBF or 0x4E00 <= o <= 0x9FFF or 0xF900 <= o <= 0xFAFF or 0x20000 <= o <= 0x3134F
            or 0x3000 <= o <= 0x303F or 0xFF00 <= o <= 0xFFEF)


def is_han(ch: str) -> bool:
    """A Chinese character (CJK unified ideograph, extensions or compatibility form)."""
    o = ord(ch)
    return 0x3400 <= o <= 0x4DBF or 0x4E00 <= o <= 0x9FFF or 0xF900 <= o <= 0xFAFF or 0x20000 <= o <= 0x3134F


def _check_language(spec: ChartSpec) -> None:
    if spec.language == "zh" and not any(is_han(ch) for ch in spec.title):
        raise ValueError("language: 'zh' but the title has no Chinese characters")
    if spec.language == "en":
        for field, text in spec.texts():
            if any(is_cjk(ch) for ch in text):
                raise ValueError(f"language: 'en' but {field} has Chinese characters")


# --------------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------------

class _Duplicate(ValueError):
    pass


def _no_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise _Duplicate(k)
        out[k] = v
    return out


def _reject_constant(name):
    raise SpecError(f"{name} is not a finite number (JSON has no NaN or Infinity)")


# strict=False lets a raw control character inside a string through the JSON parse, so the
# field check names it ("title: control or unassigned character U+000A") instead of a char offset.
_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_reject_constant, strict=False)


def loads_strict(text: str, max_chars: int) -> Any:
    """Exactly one JSON value; no NaN/Infinity, no duplicate keys, nothing around it."""
    if len(text) > max_chars:
        raise SpecError(f"spec of {len(text)} characters > max_spec_chars {max_chars}")
    s = text.strip()
    if not s:
        raise SpecError("empty spec")
    try:
        obj, end = _DECODER.raw_decode(s)
    except _Duplicate as e:
        raise SpecError(f"duplicate field {e.args[0]!r}") from None
    except json.JSONDecodeError as e:
        if e.pos >= len(s) or e.msg.startswith("Unterminated string"):
            raise SpecError("truncated JSON") from None
        raise SpecError(f"invalid JSON ({e.msg} at char {e.pos})") from None
    except RecursionError:
        raise SpecError("invalid JSON (nested too deeply)") from None
    if s[end:].strip():
        raise SpecError("text after the JSON object")
    return obj


def _count_points(obj: Any) -> int:
    """Numbers in the series of a raw (unvalidated) spec: checked before validating each one."""
    if not isinstance(obj, dict) or not isinstance(obj.get("series"), list):
        return 0
    n = 0
    for s in obj["series"]:
        if isinstance(s, dict):
            for key in ("values", "x"):
                if isinstance(s.get(key), list):
                    n += len(s[key])
    return n


def _loc(parts) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def format_validation_error(e: ValidationError, limit: int = 3) -> str:
    msgs = []
    for err in e.errors()[:limit]:
        loc = _loc(err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "missing":
            msg = "missing field"
        elif err["type"] == "extra_forbidden":
            msg = "unknown field"
        elif err["type"] == "literal_error" and err["loc"] == ("chart_type",):
            msg = f"unknown chart type {err.get('input')!r}; known: {', '.join(CHART_TYPES)}"
        msgs.append(f"{loc}: {msg}" if loc else msg)
    more = len(e.errors()) - limit
    return "; ".join(msgs) + (f" (+{more} more)" if more > 0 else "")


def parse_spec(value: str | bytes | dict, limits: SpecLimits | None = None) -> ChartSpec:
    """JSON text (or an already-decoded mapping) -> ChartSpec, or SpecError naming the problem."""
    limits = limits or SpecLimits()
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise SpecError("spec is not valid UTF-8") from None
    obj = loads_strict(value, limits.max_spec_chars) if isinstance(value, str) else value
    if not isinstance(obj, dict):
        raise SpecError(f"a spec is a JSON object, got {type(obj).__name__}")
    n = _count_points(obj)
    if n > limits.max_points:
        raise SpecError(f"too many points: {n} > max_points {limits.max_points}")
    try:
        return ChartSpec.model_validate(obj, context={"limits": limits})
    except ValidationError as e:
        raise SpecError(format_validation_error(e)) from None


# --------------------------------------------------------------------------------------------------
# The JSON schema a model's answer is constrained to
# --------------------------------------------------------------------------------------------------

def request_schema(chart_type: str, language: str, points: int, limits: SpecLimits | None = None) -> dict[str, Any]:
    """The answer schema for one request: chart type and language pinned, and for category
    charts the number of categories fixed to ``points`` in both ``categories`` and every series,
    so structured decoding already keeps series lengths equal. ``points`` is the number of
    categories (bar/line/area/pie), columns (heatmap), points per series (scatter) or
    observations per series (histogram/box). The validator still checks everything."""
    limits = limits or SpecLimits()
    if chart_type not in CHART_TYPES:
        raise ValueError(f"unknown chart type {chart_type!r}; known: {', '.join(CHART_TYPES)}")
    label = {"type": "string", "minLength": 1, "maxLength": min(limits.max_label_chars, 40)}
    cap = limits.max_abs_value
    low = 0 if chart_type in ("pie", "area") else -cap
    # Bounded numbers: xgrammar then writes plain decimals, never 1e999 (which parses as infinity).
    numbers = {"type": "array", "items": {"type": "number", "minimum": low, "maximum": cap},
               "minItems": points, "maxItems": points}
    series_item: dict[str, Any] = {"type": "object", "properties": {"name": label, "values": numbers},
                                   "required": ["name", "values"], "additionalProperties": False}
    if chart_type == "scatter":
        series_item["properties"]["x"] = {**numbers, "items": {"type": "number", "minimum": -cap, "maximum": cap}}
        series_item["required"] = ["name", "x", "values"]
    max_series = {"pie": 1, "heatmap": min(limits.max_series, limits.max_heatmap_rows)}.get(
        chart_type, min(limits.max_series, 4))
    props: dict[str, Any] = {
        "chart_type": {"type": "string", "enum": [chart_type]},
        "language": {"type": "string", "enum": [language]},
        "title": {"type": "string", "minLength": 1, "maxLength": limits.max_title_chars},
        "x_label": {"type": "string", "maxLength": limits.max_label_chars},
        "y_label": {"type": "string", "maxLength": limits.max_label_chars},
        "unit": {"type": "string", "maxLength": 20},
    }
    required = ["chart_type", "language", "title"]
    if chart_type != "pie":
        required += ["x_label", "y_label"]
    required.append("unit")
    if chart_type in CATEGORY_TYPES:
        props["categories"] = {"type": "array", "items": label, "minItems": points, "maxItems": points}
        required.append("categories")
    props["series"] = {"type": "array", "items": series_item, "minItems": 1, "maxItems": max_series}
    required.append("series")
    if chart_type == "histogram":
        props["bins"] = {"type": "integer", "minimum": 2, "maximum": min(limits.max_bins, 20)}
        required.append("bins")
    return {"type": "object", "properties": props, "required": required, "additionalProperties": False}


def points_bounds(chart_type: str, limits: SpecLimits) -> tuple[int, int]:
    """What ``points`` may be for a chart type under ``limits``."""
    if chart_type == "pie":
        return 2, limits.max_pie_slices
    if chart_type in ("line", "area"):
        return 2, limits.max_categories
    if chart_type in ("bar", "heatmap"):
        return 1, limits.max_categories
    if chart_type == "scatter":
        return 2, limits.max_values_per_series
    return 5, limits.max_values_per_series
