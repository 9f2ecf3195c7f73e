"""Assemble the report page from ``report.data.ReportData``.

One self-contained ``index.html``: inline CSS and JS from ``report/static`` (allowed by a
Content-Security-Policy that names their hashes, so nothing else can run even if some
markup slipped through), inline SVG charts, thumbnails as ``data:`` URIs. No request
leaves the file. All text from the run goes through ``report.html`` and is escaped.
"""
from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import time
from importlib import resources
from typing import Any

import pyarrow as pa

from report.charts import Histogram, bars_svg, fmt, funnel_svg, histogram_svg, paired_bars_svg
from report.data import BASE, ColumnChart, Example, ReportData, _is_identifier
from report.html import Safe, el, join, raw_block
from report.media import is_media_type, media_thumbs

TEXT_FIRST = ("text", "caption", "recaption", "detailed_caption", "messages", "conversations", "question", "answer",
              "options", "instruction", "prompt", "response", "cot", "reasoning")
QUIET = {"judge_raw", "judge_model", "meta", "image_hash", "image_name", "image_format"}
TEXT_LIMIT = 2000
KNOWN_COLUMN_TITLES = {"clip_sim": "CLIP image-text similarity"}


def _static(name: str) -> str:
    return resources.files("report").joinpath("static", name).read_text(encoding="utf-8")


def _csp(css: str, js: str) -> str:
    def h(s: str) -> str:
        return "'sha256-" + base64.b64encode(hashlib.sha256(s.encode("utf-8")).digest()).decode() + "'"

    return ("default-src 'none'; img-src data:; style-src " + h(css) + "; script-src " + h(js)
            + "; base-uri 'none'; form-action 'none'")


def _pct(a: int, b: int) -> str:
    return f"{100.0 * a / b:.1f}%" if b else "-"


def _num(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int):
        return f"{v}"
    if isinstance(v, float):
        return fmt(v) if math.isfinite(v) else str(v)
    return str(v)


def _table(header: list[str], rows: list[list[Any]], numeric: set[int] = frozenset(), **attrs) -> Safe:
    """A table; a cell that is already a ``<td>`` built with ``el`` is used as is."""
    head = el("thead", el("tr", *[el("th", h, class_="n" if i in numeric else None) for i, h in enumerate(header)]))
    body = el("tbody", *[el("tr", *[c if isinstance(c, Safe) and str(c).startswith("<td") else
                                    el("td", c, class_="n" if i in numeric else None) for i, c in enumerate(r)])
                         for r in rows])
    return el("table", head, body, **attrs)


# -- sections --------------------------------------------------------------------------------
def _header(d: ReportData) -> Safe:
    r = d.record
    items = [("pipeline", r.get("pipeline")), ("status", r.get("status")), ("run directory", d.run_dir),
             ("started", r.get("started_at")), ("finished", r.get("finished_at")),
             ("wall time", f"{r['seconds']:.1f} s" if isinstance(r.get("seconds"), (int, float)) else "-")]
    return el("header",
              el("h1", "sailcurate run report: ", r.get("pipeline") or "?"),
              el("div", *[el("span", el("b", k + ": "), v if v is not None else "-") for k, v in items], class_="meta"),
              el("div", (r.get("config") or {}).get("description") or "", class_="muted"))


def _nav(d: ReportData) -> Safe:
    links = [("funnel", "Funnel"), ("sources", "Per source"), ("reasons", "Drop reasons"), ("scores", "Distributions")]
    if d.dedup:
        links.append(("dedup", "Dedup"))
    if any((d.record["stages"].get(s.stage) or {}).get("stats") for s in d.stages):
        links.append(("stats", "Stage statistics"))
    links += [("galleries", "Examples"), ("kept", "Kept samples"), ("record", "Run record")]
    return el("nav", *[el("a", label, href=f"#{i}") for i, label in links])


def _funnel(d: ReportData) -> Safe:
    first_in = next((s.n_in for s in d.stages if not s.missing), 0)
    rows = []
    for s in d.stages:
        if s.missing:
            rows.append(el("tr", el("td", s.stage), el("td", s.kind), el("td", "not run (no manifest)", colspan=7),
                           data_stage=s.stage))
            continue
        cells = [el("td", s.stage), el("td", s.kind)]
        for key, v in (("in", s.n_in), ("kept", s.kept), ("dropped", s.dropped), ("error", s.error)):
            cells.append(el("td", str(v), class_="n", data_col=key))
        cells += [el("td", _pct(s.kept, s.n_in), class_="n"), el("td", _pct(s.kept, first_in), class_="n"),
                  el("td", "ran" if s.ran else "skipped (up to date)")]
        rows.append(el("tr", *cells, data_stage=s.stage))
    head = el("thead", el("tr", *[el("th", h, class_="n" if 2 <= i <= 7 else None) for i, h in enumerate(
        ["stage", "kind", "in", "kept", "dropped", "error", "kept / in", "kept / first input", "this invocation"])]))
    drawn = [s.as_dict() for s in d.stages if not s.missing]
    return el("section",
              el("h2", "Funnel"),
              el("p", "Rows that entered each stage and what it decided; every stage conserves rows "
                      "(in = kept + dropped + error).", class_="muted"),
              funnel_svg(drawn) if drawn else "",
              el("table", head, el("tbody", *rows), id="funnel-table"),
              id="funnel")


def _sources(d: ReportData) -> Safe:
    names = sorted({src for per in d.sources.values() for src in per})
    blocks = []
    for src in names:
        rows = []
        for s in d.stages:
            c = d.sources.get(s.stage, {}).get(src)
            if c is None:
                continue
            n = sum(c.values())
            rows.append(el("tr", el("td", s.stage),
                           *[el("td", str(v), class_="n", data_col=k) for k, v in
                             (("in", n), ("kept", c.get("kept", 0)), ("dropped", c.get("dropped", 0)), ("error", c.get("error", 0)))],
                           el("td", _pct(c.get("kept", 0), n), class_="n"), data_stage=s.stage, data_source=src))
        head = el("thead", el("tr", *[el("th", h, class_="n" if i else None) for i, h in
                                      enumerate(["stage", "in", "kept", "dropped", "error", "kept / in"])]))
        blocks.append(join([el("h3", "source: ", el("code", src or "(none)")),
                            el("table", head, el("tbody", *rows), class_="source-table", data_source=src)]))
    return el("section", el("h2", "Per source"), *blocks or [el("p", "no sources", class_="muted")], id="sources")


def _reasons(d: ReportData) -> Safe:
    rows = []
    for i, g in enumerate(d.reasons, 1):
        link = el("a", f"{len(g.examples)} example(s)", href=f"#{g.anchor}") if g.examples else el("span", "-", class_="muted")
        rows.append([str(i), g.stage, el("span", g.status, class_=f"badge {g.status}"), el("code", g.key),
                     str(g.count), f"{100 * g.share:.1f}%", link])
    body = (_table(["#", "stage", "status", "reason", "rows", "share of stage input", "gallery"], rows,
                   numeric={0, 4, 5}, class_="sortable", id="reasons-table")
            if rows else el("p", "No row was dropped or failed.", class_="muted"))
    return el("section", el("h2", "Drop and error reasons, ranked"),
              el("p", "Reasons are grouped by their stable part (before the first colon); click a header to sort.",
                 class_="muted"), body, id="reasons")


def _chart_box(c: ColumnChart) -> Safe:
    title = KNOWN_COLUMN_TITLES.get(c.column, c.column)
    where = f"rows entering {c.stage}" + (f" (computed by {c.produced_by})" if c.produced_by != c.stage else "")
    stats = [f"n = {c.n}"]
    if c.missing:
        stats.append(f"missing = {c.missing}")
    if c.mean is not None:
        stats.append(f"mean = {fmt(c.mean)}")
    if c.median is not None:
        stats.append(f"median = {fmt(c.median)}")
    if c.thresholds:
        stats.append(f"cut by threshold = {c.cut}")
    return el("div",
              el("h4", title, " ", el("span", f"({c.column})", class_="muted") if title != c.column else ""),
              el("div", where, class_="muted"),
              el("div", " · ".join(stats), class_="muted"),
              histogram_svg(c.hist, f"{c.column} at {c.stage}"),
              class_="chart-box", data_column=c.column, data_stage=c.stage)


def _scores(d: ReportData) -> Safe:
    with_t = [c for c in d.charts if c.thresholds]
    rest = [c for c in d.charts if not c.thresholds]
    parts = [el("h2", "Score and value distributions")]
    if with_t:
        parts += [el("h3", "Columns with thresholds"),
                  el("p", "Red: rows the marked threshold cuts. Thresholds come from the run's config "
                          "(filter rules, clip_filter cuts, min_/max_ parameters).", class_="muted"),
                  el("div", *[_chart_box(c) for c in with_t], class_="charts")]
    if rest:
        parts += [el("h3", "Other numeric columns"), el("div", *[_chart_box(c) for c in rest], class_="charts")]
    if not d.charts:
        parts.append(el("p", "No numeric columns in the manifests.", class_="muted"))
    return el("section", *parts, id="scores")


def _dedup(d: ReportData, px: int) -> Safe:
    blocks = [el("h2", "Dedup")]
    for v in d.dedup:
        blocks.append(el("h3", f"{v.stage}: {v.key}"))
        blocks.append(el("p", f"{v.dropped} rows dropped as duplicates of {v.clusters} kept representatives "
                              f"(clusters of size >= 2).", class_="muted"))
        sizes = [(f"size {s}", n) for s, n in v.size_counts]
        blocks.append(el("div", el("div", el("h4", "clusters by size"), bars_svg(sizes[:40], "clusters by size"),
                                   class_="chart-box"), class_="charts"))
        schema = d.schemas.get(_segment(d, v.stage))
        for rep, members in v.shown:
            blocks.append(el("div", _card(rep, schema, px, extra_class="rep", label="kept representative"),
                             *[_card(m, schema, px) for m in members], class_="cluster"))
    return el("section", *blocks, id="dedup")


def _segment(d: ReportData, stage: str) -> str:
    return next((s.segment for s in d.stages if s.stage == stage), stage)


# -- stage statistics (run.json stages.<name>.stats) ---------------------------------------------
def _as_pairs(v: Any) -> list[tuple[str, float]] | None:
    """A label -> number view of a stat, when it has that shape (dict, or list of [label, n])."""
    def label(x):
        return " ".join(map(str, x)) if isinstance(x, (list, tuple)) else str(x)

    if isinstance(v, dict) and v and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v.values()):
        return [(label(k), float(x)) for k, x in v.items()]
    if isinstance(v, list) and v and all(isinstance(x, (list, tuple)) and len(x) == 2 and isinstance(x[1], (int, float))
                                         for x in v):
        return [(label(x[0]), float(x[1])) for x in v]
    return None


def _number_list_hist(values: list[float]) -> Histogram:
    lo, hi = min(values), max(values)
    if all(float(x).is_integer() for x in values) and hi - lo <= 60:
        nb = int(hi - lo) + 1
        passed = [0] * nb
        for x in values:
            passed[int(x - lo)] += 1
        return Histogram([lo - 0.5 + k for k in range(nb + 1)], passed, [0] * nb, discrete=True)
    nb = 20
    w = (hi - lo) / nb or 1.0
    passed = [0] * nb
    for x in values:
        passed[min(int((x - lo) / w), nb - 1)] += 1
    return Histogram([lo + w * k for k in range(nb + 1)], passed, [0] * nb)


_BIN_LABEL = re.compile(r"^[0-9.eE+<>=-]+$")


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _paired(v: list) -> tuple[str, str, str] | None:
    """(label key, before key, after key) when a list of dicts pairs before/after numbers per item."""
    if not (isinstance(v, list) and v and all(isinstance(x, dict) for x in v)):
        return None
    keys = list(v[0])
    for b in keys:
        a = "after" if b == "before" else (b[: -len("_before")] + "_after" if b.endswith("_before") else None)
        if a and a in keys and all(_is_number(x.get(b)) and _is_number(x.get(a)) for x in v):
            label = next((k for k in keys if k not in (a, b) and isinstance(v[0].get(k), str)),
                         next((k for k in keys if k not in (a, b)), None))
            if label:
                return label, b, a
    return None


def _stat_value(name: str, v: Any) -> Safe:
    """One statistic, drawn by its shape: label->count bars, before/after pairs, a histogram of a
    list of numbers, a table of a list of records or a dict of records, else JSON."""
    paired = _paired(v)
    if paired:
        label, b, a = paired
        items = [(str(x.get(label)), float(x[b]), float(x[a])) for x in v[:40]]
        keys = list(dict.fromkeys(k for x in v[:50] for k in x))
        return el("div", el("h4", name, f" ({b} → {a})"), paired_bars_svg(items, name),
                  el("details", el("summary", "table"), _records_table(v[:50], keys)), class_="chart-box", data_stat=name)
    pairs = _as_pairs(v)
    if pairs is not None and (isinstance(v, list) or all(_BIN_LABEL.match(str(k)) for k, _ in pairs)
                              or any(w in name.lower() for w in ("size", "hist", "count"))):
        shown = pairs[:40]
        more = f" (first 40 of {len(pairs)})" if len(pairs) > 40 else ""
        return el("div", el("h4", name, more), bars_svg([(k, x) for k, x in shown], name), class_="chart-box",
                  data_stat=name)
    if isinstance(v, dict) and v and all(not isinstance(x, (dict, list)) for x in v.values()):
        return el("div", el("h4", name), _table(["", "value"], [[k, _num(x)] for k, x in v.items()], numeric={1}),
                  class_="chart-box", data_stat=name)
    if isinstance(v, dict) and v and all(isinstance(x, dict) for x in v.values()):
        keys = list(dict.fromkeys(k for x in v.values() for k in x))
        rows = [[k, *[_cell_text(x.get(c)) for c in keys]] for k, x in list(v.items())[:50]]
        return el("div", el("h4", name), _table(["", *keys], rows), class_="chart-box", data_stat=name)
    if isinstance(v, list) and v and all(_is_number(x) for x in v):
        return el("div", el("h4", name, f" ({len(v)} values)"), histogram_svg(_number_list_hist([float(x) for x in v]), name),
                  class_="chart-box", data_stat=name)
    if isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
        keys = list(dict.fromkeys(k for x in v[:50] for k in x))
        return el("div", el("h4", name), _records_table(v[:50], keys), class_="chart-box", data_stat=name)
    return el("div", el("h4", name), el("pre", json.dumps(v, indent=2, ensure_ascii=False, default=str)[:5000]),
              class_="chart-box", data_stat=name)


def _cell_text(x: Any) -> str:
    if isinstance(x, (dict, list)):
        return json.dumps(x, ensure_ascii=False, default=str)
    return "-" if x is None else _num(x)


def _records_table(records: list[dict], keys: list[str]) -> Safe:
    return _table(keys, [[_cell_text(x.get(k)) for k in keys] for x in records])


def _before_after(stats: dict) -> tuple[list[tuple[str, Any, Any]], set[str]]:
    """Pairs named X_before/X_after, before_X/after_X, X: {before, after}, or before: {...}/after: {...}."""
    pairs, used = [], set()
    for k, v in stats.items():
        if isinstance(v, dict) and set(v) >= {"before", "after"}:
            pairs.append((k, v["before"], v["after"]))
            used.add(k)
    for k in stats:
        for pre_b, pre_a, suf_b, suf_a in (("", "", "_before", "_after"), ("before_", "after_", "", "")):
            if k.startswith(pre_b) and k.endswith(suf_b) and (pre_b or suf_b):
                stem = k[len(pre_b): len(k) - len(suf_b)] if suf_b else k[len(pre_b):]
                other = f"{pre_a}{stem}{suf_a}"
                if other in stats and k not in used:
                    pairs.append((stem, stats[k], stats[other]))
                    used |= {k, other}
    if isinstance(stats.get("before"), dict) and isinstance(stats.get("after"), dict):
        b, a = stats["before"], stats["after"]
        for k in list(dict.fromkeys([*b, *a])):
            pairs.append((k, b.get(k), a.get(k)))
        used |= {"before", "after"}
    return pairs, used


def _stats_block(stage: str, kind: str, stats: dict) -> Safe:
    pairs, used = _before_after(stats)
    parts = [el("h3", f"{stage} ({kind})")]
    scalar_pairs = [(k, b, a) for k, b, a in pairs if isinstance(b, (int, float)) and isinstance(a, (int, float))
                    and not isinstance(b, bool)]
    if scalar_pairs:
        rows = []
        for k, b, a in scalar_pairs:
            delta = a - b
            cls = "delta-up" if delta > 0 else "delta-down" if delta < 0 else None
            rows.append([k, _num(b), _num(a), el("td", ("+" if delta > 0 else "") + _num(round(delta, 6)), class_=f"n {cls or ''}".strip())])
        parts.append(_table(["measure", "before", "after", "change"], rows, numeric={1, 2}, class_="before-after"))
    for k, b, a in pairs:
        if (k, b, a) in scalar_pairs:
            continue
        parts.append(el("div", el("div", el("div", "before", class_="field"), _stat_value(f"{k}: before", b)),
                        el("div", el("div", "after", class_="field"), _stat_value(f"{k}: after", a)), class_="pair"))
    scalars = [(k, v) for k, v in stats.items() if k not in used and not isinstance(v, (dict, list))]
    if scalars:
        parts.append(_table(["statistic", "value"], [[k, _num(v)] for k, v in scalars], numeric={1}))
    others = [(k, v) for k, v in stats.items() if k not in used and isinstance(v, (dict, list))]
    if others:
        parts.append(el("div", *[_stat_value(k, v) for k, v in others], class_="charts"))
    return el("div", *parts, class_="stats", data_stage=stage)


def _stats(d: ReportData) -> Safe:
    blocks = []
    for s in d.stages:
        stats = (d.record["stages"].get(s.stage) or {}).get("stats")
        if stats:
            blocks.append(_stats_block(s.stage, s.kind, stats))
    if not blocks:
        return Safe("")
    return el("section", el("h2", "Stage statistics"),
              el("p", "Figures global stages measured while deciding (run.json stages.<name>.stats): e.g. "
                      "n-gram entropy and top n-grams before and after resampling, dedup cluster sizes.",
                 class_="muted"), *blocks, id="stats")


# -- example cards ---------------------------------------------------------------------------------
def _turns(value: Any) -> Safe | None:
    """Chat messages ([{role, content}]) as turns; content may be a list of parts."""
    if isinstance(value, str) and value.lstrip()[:1] == "[":
        try:
            value = json.loads(value)
        except ValueError:
            return None
    if not (isinstance(value, list) and value and all(isinstance(m, dict) for m in value)):
        return None
    out = []
    for m in value[:40]:
        role = m.get("role") or m.get("from") or "?"
        content = m.get("content", m.get("value", ""))
        if isinstance(content, list):
            content = " ".join(p.get("text", f"[{p.get('type', 'part')}]") if isinstance(p, dict) else str(p) for p in content)
        text = str(content)
        out.append(el("div", el("b", str(role), ": "), text[:TEXT_LIMIT] + ("…" if len(text) > TEXT_LIMIT else ""),
                      class_="turn"))
    return join(out)


def _text_block(name: str, value: Any) -> Safe:
    turns = _turns(value)
    if turns is not None:
        return el("div", el("div", name, class_="field"), turns, data_field=name)
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    cut = text[:TEXT_LIMIT] + (f"… ({len(text)} characters)" if len(text) > TEXT_LIMIT else "")
    return el("div", el("div", name, class_="field"), el("div", cut, class_="text"), data_field=name)


def _judge_raw(value: Any) -> Safe:
    try:
        raw = json.loads(value) if isinstance(value, str) else value
    except ValueError:
        raw = value
    if isinstance(raw, dict):
        inner = [join([el("div", str(k), class_="field"), el("pre", str(v))]) for k, v in raw.items()]
    else:
        inner = [el("pre", str(raw))]
    return el("details", el("summary", "judge raw answer"), *inner, class_="judge-raw")


def _card(e: Example, schema: pa.Schema | None, px: int, extra_class: str = "", label: str = "") -> Safe:
    head = [el("div", e.source_key or "(no key)", " ", el("span", e.status, class_=f"badge {e.status}"), class_="head"),
            el("div", label, class_="field") if label else "",
            el("div", e.sample_id, " · ", e.source or "", class_="sid")]
    if e.reason:
        head.append(el("div", e.reason, class_="reason"))
    if e.row is None:
        return el("div", *head, el("div", "not found in the checkpoints (media unavailable)", class_="noimg"),
                  class_=f"card {extra_class}".strip(), data_sample=e.sample_id)
    types = {f.name: f.type for f in schema} if schema is not None else {}
    media, texts, scores, quiet, other = [], [], [], [], []
    cols = [c for c in e.row if c not in BASE and not c.startswith("_")]
    cols.sort(key=lambda c: (TEXT_FIRST.index(c) if c in TEXT_FIRST else len(TEXT_FIRST)))
    for c in cols:
        v, t = e.row[c], types.get(c)
        if t is not None and is_media_type(t):
            media.append(c)
        elif v is None:
            continue
        elif c == "judge_raw":
            quiet.append(_judge_raw(v))
        elif c in QUIET:
            other.append((c, v))
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and not _is_identifier(c):
            scores.append((c, v))
        elif c in TEXT_FIRST or (isinstance(v, str) and len(v) > 60) or _turns(v) is not None:
            texts.append(_text_block(c, v))
        elif isinstance(v, (list, dict)):
            other.append((c, json.dumps(v, ensure_ascii=False, default=str)))
        else:
            other.append((c, v))
    figures = []
    for c in media:
        for th in media_thumbs(e.row[c], types[c], c, px):
            if th.uri:
                figures.append(el("figure", el("img", src=th.uri, alt=f"{c} of {e.source_key or e.sample_id}"),
                                  el("figcaption", f"{c} · {th.note}" if th.note else c)))
            else:
                figures.append(el("span", f"{c}: {th.note}", class_="noimg"))
    body = [el("div", *figures, class_="thumbs")] if figures else []
    body += texts
    if scores:
        body.append(el("table", el("tbody", *[el("tr", el("td", k), el("td", _num(v), class_="n")) for k, v in scores[:24]]),
                       class_="scores"))
    body += quiet
    if other:
        body.append(el("details", el("summary", "more fields"),
                       el("table", el("tbody", *[el("tr", el("td", k), el("td", str(v)[:500])) for k, v in other]),
                          class_="scores")))
    return el("div", *head, *body, class_=f"card {extra_class}".strip(), data_sample=e.sample_id)


def _galleries(d: ReportData, px: int) -> Safe:
    blocks = [el("h2", "Examples per reason"),
              el("p", "A capped, deterministic sample (smallest sample ids) of the rows each reason covers, "
                      "read back from the checkpoints with their media.", class_="muted")]
    shown = [g for g in d.reasons if g.examples]
    for g in shown:
        schema = d.schemas.get(_segment(d, g.stage))
        blocks.append(el("h3", el("span", g.status, class_=f"badge {g.status}"), f" {g.stage} · ", el("code", g.key),
                         f" · {g.count} row(s), showing {len(g.examples)}", id=g.anchor))
        blocks.append(el("div", *[_card(e, schema, px) for e in g.examples], class_="gallery", data_reason=g.key,
                         data_stage=g.stage))
    if not shown:
        blocks.append(el("p", "No dropped or error rows.", class_="muted"))
    return el("section", *blocks, id="galleries")


def _kept(d: ReportData, px: int) -> Safe:
    if not d.kept_stage:
        return el("section", el("h2", "Kept samples"), el("p", "No kept rows with checkpointed media.", class_="muted"),
                  id="kept")
    schema = d.schemas.get(_segment(d, d.kept_stage))
    return el("section", el("h2", "Kept samples"),
              el("p", f"A few rows kept by {d.kept_stage} (the last stage whose checkpoint holds media).", class_="muted"),
              el("div", *[_card(e, schema, px) for e in d.kept_examples], class_="gallery"), id="kept")


# -- run record ------------------------------------------------------------------------------------
def _record(d: ReportData) -> Safe:
    import yaml

    r = d.record
    seg_rows, seen = [], set()
    for s in d.stages:
        if s.segment in seen:
            continue
        seen.add(s.segment)
        members = [x for x in d.stages if x.segment == s.segment]
        rows_in = members[0].n_in
        secs = s.seconds
        rate = f"{rows_in / secs:.1f}" if secs and members[0].ran else "-"
        seg_rows.append([s.segment, ", ".join(m.stage for m in members), "ran" if s.ran else "skipped",
                         _num(secs) if secs is not None else "-", str(rows_in), rate])
    parts = [el("h2", "Run record"),
             el("h3", "Timings per segment"),
             el("p", "A segment is a chain of stages run as one Ray Data plan; time is measured per segment. "
                     "Throughput = rows entering the segment / its wall time in this invocation.", class_="muted"),
             _table(["segment", "stages", "this invocation", "seconds", "rows in", "rows / s"], seg_rows,
                    numeric={3, 4, 5}, id="timings-table")]
    if d.models:
        parts += [el("h3", "Models"), _table(["stage", "field", "value"], [list(m) for m in d.models])]
    versions = r.get("versions") or {}
    if versions:
        parts += [el("h3", "Versions"), _table(["package", "version"], [[k, str(v)] for k, v in sorted(versions.items())])]
    fps = [[s, str((r["stages"].get(s) or {}).get("fingerprint", ""))] for s in r.get("order", [])]
    parts += [el("h3", "Fingerprints"), _table(["stage", "fingerprint"], fps)]
    if r.get("options"):
        parts += [el("h3", "Options"), el("pre", json.dumps(r["options"], indent=2, ensure_ascii=False))]
    if r.get("history"):
        parts += [el("h3", "Earlier invocations"),
                  _table(["started", "finished", "status"], [[h.get("started_at"), h.get("finished_at"), h.get("status")]
                                                              for h in r["history"]])]
    parts += [el("h3", "Config"), el("div", r.get("config_path") or "", class_="muted"),
              el("pre", yaml.safe_dump(r.get("config") or {}, sort_keys=False, allow_unicode=True), id="config")]
    return el("section", *parts, id="record")


def render(d: ReportData, thumb_px: int = 160) -> str:
    css, js = _static("report.css"), _static("report.js")
    head = join([Safe('<meta charset="utf-8">'),
                 el("meta", http_equiv="Content-Security-Policy", content=_csp(css, js)),
                 el("meta", name="viewport", content="width=device-width, initial-scale=1"),
                 el("title", f"sailcurate report: {d.record.get('pipeline') or ''}"),
                 raw_block("style", css)])
    body = join([_header(d), _nav(d),
                 el("main", _funnel(d), _sources(d), _reasons(d), _scores(d),
                    _dedup(d, thumb_px) if d.dedup else "", _stats(d), _galleries(d, thumb_px), _kept(d, thumb_px),
                    _record(d),
                    el("p", f"generated {time.strftime('%Y-%m-%d %H:%M:%S')} by sailcurate report", class_="muted")),
                 raw_block("script", js)])
    return f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>{head}</head>\n<body>{body}</body>\n</html>\n"
