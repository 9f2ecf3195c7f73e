"""Everything the report shows, computed from a run directory with DuckDB.

Counts, reasons, histograms and dedup clusters are SQL aggregates over the manifests
(``manifests.query.manifest_connection``), so memory stays flat however large the run;
only the few example rows the report shows are read back, with their media, from the
checkpoints (``report.media``). Thresholds come from the run record's config: ``filter``
rules, ``clip_filter`` cuts, and ``min_X``/``max_X`` parameters of any stage whose
manifest has a column ``X`` (e.g. decode's ``min_side``).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pds

from manifests.query import manifest_connection, quote_ident
from pipeline import storage
from report.charts import Histogram
from report.media import fetch_rows, segment_fragments

REASON_KEY_SQL = "trim(split_part(coalesce(reason, ''), ':', 1))"  # = manifests.writer.reason_key
BASE = ("sample_id", "source", "source_key", "status", "reason")
SKIP_NUMERIC = {"position"}
MAX_HISTOGRAMS = 48
MAX_GALLERIES_PER_STAGE = 30
MAX_GALLERIES = 60  # reasons with example galleries, the most frequent first: keeps the report small


@dataclass
class StageCounts:
    stage: str
    kind: str
    segment: str
    n_in: int
    kept: int
    dropped: int
    error: int
    ran: bool
    seconds: float | None
    missing: bool = False  # no manifest (the stage never finished)

    def as_dict(self) -> dict:
        return {"stage": self.stage, "in": self.n_in, "kept": self.kept, "dropped": self.dropped, "error": self.error}


@dataclass
class Example:
    sample_id: str
    source: str | None
    source_key: str | None
    status: str
    reason: str | None
    row: dict | None = None  # the checkpoint row (media included), when found


@dataclass
class ReasonGroup:
    stage: str
    status: str
    key: str
    count: int
    share: float  # of the rows that entered the stage
    anchor: str
    examples: list[Example] = field(default_factory=list)


@dataclass
class Threshold:
    stage: str
    column: str
    op: str  # "min" (keep >=) or "max" (keep <=)
    value: float
    label: str


@dataclass
class ColumnChart:
    column: str
    stage: str          # the manifest the values come from
    produced_by: str    # the first stage whose manifest has the column
    hist: Histogram
    n: int
    missing: int
    mean: float | None
    median: float | None
    thresholds: list[Threshold]
    cut: int  # rows whose value fails these thresholds


@dataclass
class DedupView:
    stage: str
    key: str
    dropped: int
    clusters: int
    size_counts: list[tuple[int, int]]  # (cluster size, number of clusters)
    shown: list[tuple[Example, list[Example]]]  # (representative, duplicates)


@dataclass
class ReportData:
    run_dir: str
    record: dict
    stages: list[StageCounts]
    sources: dict[str, dict[str, dict[str, int]]]  # stage -> source -> status -> n
    reasons: list[ReasonGroup]
    charts: list[ColumnChart]
    dedup: list[DedupView]
    kept_stage: str | None
    kept_examples: list[Example]
    schemas: dict[str, pa.Schema]  # segment -> checkpoint schema
    models: list[tuple[str, str, str]]  # (stage, field path, value)


def _rows(con, sql: str, params: list | None = None) -> list[tuple]:
    return con.execute(sql, params or []).fetchall()


def _float(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


# -- funnel ------------------------------------------------------------------------------
def _funnel(con, record: dict, present: set[str]) -> tuple[list[StageCounts], dict]:
    stages, sources = [], {}
    for name in record["order"]:
        info = record["stages"][name]
        base = dict(stage=name, kind=info.get("kind", ""), segment=info.get("segment") or name,
                    ran=bool(info.get("ran")), seconds=_float(info.get("seconds")))
        if name not in present:
            stages.append(StageCounts(n_in=0, kept=0, dropped=0, error=0, missing=True, **base))
            continue
        counts = {s: 0 for s in ("kept", "dropped", "error")}
        per_source: dict[str, dict[str, int]] = {}
        for src, status, n in _rows(con, f"SELECT source, status, count(*) FROM {quote_ident(name)} GROUP BY ALL"):
            counts[status] = counts.get(status, 0) + n
            per_source.setdefault(src if src is not None else "", {"kept": 0, "dropped": 0, "error": 0})[status] = n
        stages.append(StageCounts(n_in=sum(counts.values()), kept=counts["kept"], dropped=counts["dropped"],
                                  error=counts["error"], **base))
        sources[name] = dict(sorted(per_source.items()))
    return stages, sources


# -- reasons and examples --------------------------------------------------------------------
def _reasons(con, stages: list[StageCounts], per_reason: int) -> list[ReasonGroup]:
    from report.html import slug

    out = []
    for s in stages:
        if s.missing or not (s.dropped or s.error):
            continue
        v = quote_ident(s.stage)
        groups = _rows(con, f"SELECT status, {REASON_KEY_SQL} AS k, count(*) AS n FROM {v} "
                            f"WHERE status <> 'kept' GROUP BY ALL ORDER BY n DESC, k")
        examples: dict[tuple[str, str], list[Example]] = {}
        if per_reason > 0:
            sql = (f"SELECT status, k, sample_id, source, source_key, reason FROM ("
                   f"  SELECT *, {REASON_KEY_SQL} AS k, row_number() OVER (PARTITION BY status, {REASON_KEY_SQL} "
                   f"  ORDER BY sample_id) AS rn FROM {v} WHERE status <> 'kept') WHERE rn <= ? ORDER BY status, k, sample_id")
            for status, k, sid, src, key, reason in _rows(con, sql, [per_reason]):
                examples.setdefault((status, k), []).append(Example(sid, src, key, status, reason))
        for i, (status, k, n) in enumerate(groups):
            g = ReasonGroup(stage=s.stage, status=status, key=k or "(no reason)", count=n,
                            share=n / s.n_in if s.n_in else 0.0, anchor="g-" + slug(s.stage, status, k or ""))
            if i < MAX_GALLERIES_PER_STAGE:
                g.examples = examples.get((status, k), [])
            out.append(g)
    out.sort(key=lambda g: -g.count)
    for g in out[MAX_GALLERIES:]:
        g.examples = []
    return out


# -- thresholds ------------------------------------------------------------------------------
def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


def _thresholds(con, record: dict, columns: dict[str, list[str]]) -> list[Threshold]:
    out = []
    for spec in (record.get("config") or {}).get("stages") or []:
        name = spec.get("name") or spec.get("kind")
        kind = spec.get("kind")
        if name not in columns:
            continue
        if kind == "filter":
            for r in spec.get("rules") or []:
                for op in ("min", "max"):
                    v = _float(r.get(op))
                    if v is not None:
                        out.append(Threshold(name, r["column"], op, v, f"{op} {_fmt(v)} ({name})"))
        elif kind == "clip_filter":
            col = spec.get("column") or "clip_sim"
            if _float(spec.get("threshold")) is not None:
                v = float(spec["threshold"])
                out.append(Threshold(name, col, "min", v, f"min {_fmt(v)} ({name})"))
            elif spec.get("top_percent") is not None:
                cut = _percentile_cut(con, name, col, record)
                if cut is not None:
                    out.append(Threshold(name, col, "min", cut, f"cut {cut:.4g}: top {_fmt(float(spec['top_percent']))}% ({name})"))
        else:
            for key, value in spec.items():
                m = re.match(r"^(min|max)_(.+)$", str(key))
                v = _float(value) if not isinstance(value, bool) else None
                if not m or v is None or v == 0:
                    continue
                col = key if key in columns[name] else m.group(2)  # min_side -> min_side; max_aspect_ratio -> aspect_ratio
                if col in columns[name]:
                    out.append(Threshold(name, col, m.group(1), v, f"{key} {_fmt(v)} ({name})"))
    return out


def _percentile_cut(con, stage: str, column: str, record: dict) -> float | None:
    """clip_filter's percentile cut: in its reasons (``clip_sim<p70(0.2345)``) or its stats."""
    rows = _rows(con, f"SELECT reason FROM {quote_ident(stage)} WHERE status = 'dropped' AND reason LIKE ? LIMIT 1",
                 [f"{column}<p%(%)"])
    if rows:
        m = re.search(r"\((-?[0-9.eE+-]+)\)\s*$", rows[0][0])
        if m:
            return _float(m.group(1))
    stats = (record["stages"].get(stage) or {}).get("stats") or {}
    return _float(stats.get("cut"))


# -- histograms --------------------------------------------------------------------------------
def _numeric_columns(con, stage: str) -> list[str]:
    out = []
    for name, dtype in _rows(con, "SELECT column_name, data_type FROM information_schema.columns "
                                  "WHERE table_name = ? ORDER BY ordinal_position", [stage]):
        if name in BASE or name.startswith("_") or name in SKIP_NUMERIC or _is_identifier(name):
            continue
        if re.match(r"^(TINYINT|SMALLINT|INTEGER|BIGINT|HUGEINT|UTINYINT|USMALLINT|UINTEGER|UBIGINT|FLOAT|DOUBLE|REAL|DECIMAL)", dtype):
            out.append(name)
    return out


def _is_identifier(column: str) -> bool:
    """Hashes and fingerprints are numbers without a distribution worth drawing."""
    c = column.lower()
    return "hash" in c or "fingerprint" in c or c.endswith("_id") or c == "id"


def _all_columns(con, stage: str) -> list[str]:
    return [r[0] for r in _rows(con, "SELECT column_name FROM information_schema.columns WHERE table_name = ?", [stage])]


def _histogram(con, source_sql: str, expr: str, thresholds: list[Threshold], bins: int = 30):
    """Histogram of ``expr`` over ``source_sql``; rows failing ``thresholds`` are counted apart."""
    base = f"SELECT CAST({expr} AS DOUBLE) AS x FROM ({source_sql}) AS src"
    total, n, lo, hi, mean, median, integral = _rows(con, (
        f"SELECT count(*), count(x) FILTER (WHERE isfinite(x)), min(x) FILTER (WHERE isfinite(x)), "
        f"max(x) FILTER (WHERE isfinite(x)), avg(x) FILTER (WHERE isfinite(x)), "
        f"quantile_cont(x, 0.5) FILTER (WHERE isfinite(x)), bool_and(x = floor(x)) FILTER (WHERE isfinite(x)) "
        f"FROM ({base})"))[0]
    if not n:
        return None
    tvals = [t.value for t in thresholds]
    discrete = bool(integral) and (max([hi] + [math.floor(v) for v in tvals]) - min([lo] + [math.ceil(v) for v in tvals])) <= 60
    conds = [f"x {'>=' if t.op == 'min' else '<='} {float(t.value)!r}" for t in thresholds]
    passing = " AND ".join(conds) if conds else "TRUE"
    if discrete:
        lo_i = int(min([lo] + [math.ceil(v) for v in tvals]))
        hi_i = int(max([hi] + [math.floor(v) for v in tvals]))
        nb = hi_i - lo_i + 1
        edges = [lo_i - 0.5 + k for k in range(nb + 1)]
        bin_expr = f"CAST(x AS BIGINT) - {lo_i}"
    else:
        lo_c, hi_c = min([lo] + tvals), max([hi] + tvals)
        if hi_c == lo_c:
            lo_c, hi_c = lo_c - 0.5, hi_c + 0.5
        nb = bins
        w = (hi_c - lo_c) / nb
        edges = [lo_c + w * k for k in range(nb + 1)]
        bin_expr = f"least(greatest(CAST(floor((x - {lo_c!r}) / {w!r}) AS BIGINT), 0), {nb - 1})"
    passed, fail = [0] * nb, [0] * nb
    for b, p, f in _rows(con, f"SELECT {bin_expr} AS b, count(*) FILTER (WHERE {passing}), "
                              f"count(*) FILTER (WHERE NOT ({passing})) FROM ({base}) WHERE isfinite(x) GROUP BY b"):
        passed[int(b)] += p
        fail[int(b)] += f
    marks = []
    for t in thresholds:
        if discrete:
            pos = (math.ceil(t.value) - 0.5) if t.op == "min" else (math.floor(t.value) + 0.5)
        else:
            pos = t.value
        marks.append((pos, t.label))
    hist = Histogram(edges=edges, passed=passed, fail=fail, discrete=discrete, thresholds=marks)
    return hist, int(n), int(total - n), _float(mean), _float(median), int(sum(fail))


def _charts(con, run_dir: str, record: dict, stages: list[StageCounts], columns: dict[str, list[str]],
            thresholds: list[Threshold]) -> list[ColumnChart]:
    numeric = {s: _numeric_columns(con, s) for s in columns}
    produced_by: dict[str, str] = {}
    for s in record["order"]:
        for c in numeric.get(s, []):
            produced_by.setdefault(c, s)
    plans: list[tuple[str, str, list[Threshold]]] = []  # (column expr, stage, thresholds)
    by_key: dict[tuple[str, str], list[Threshold]] = {}
    for t in thresholds:
        by_key.setdefault((t.column, t.stage), []).append(t)
    thresholded_cols = {c for c, _ in by_key}
    for (col, stage), ts in by_key.items():
        plans.append((col, stage, ts))
    for col, stage in produced_by.items():
        if col not in thresholded_cols:
            plans.append((col, stage, []))
    order = {s: i for i, s in enumerate(record["order"])}
    plans.sort(key=lambda p: (order.get(p[1], 99), 0 if p[2] else 1, p[0]))
    out = []
    for col, stage, ts in plans[:MAX_HISTOGRAMS]:
        src = _column_source(con, run_dir, record, stage, col, numeric.get(stage, []))
        if src is None:
            continue
        source_sql, expr = src
        got = _histogram(con, source_sql, expr, ts)
        if got is None:
            continue
        hist, n, missing, mean, median, cut = got
        out.append(ColumnChart(column=col, stage=stage, produced_by=produced_by.get(_len_base(col) or col, stage),
                               hist=hist, n=n, missing=missing, mean=mean, median=median, thresholds=ts, cut=cut))
    return out


def _len_base(expr: str) -> str | None:
    m = re.match(r"^len\((.+)\)$", expr)
    return m.group(1) if m else None


def _column_source(con, run_dir: str, record: dict, stage: str, col: str, numeric: list[str]):
    """(SQL of the rows, expression) giving the column's values for the rows that entered ``stage``."""
    base = _len_base(col)
    view = quote_ident(stage)
    if base is None:
        if col not in _all_columns(con, stage):
            return None
        return f"SELECT * FROM {view}", quote_ident(col)
    if base in _all_columns(con, stage):
        return f"SELECT * FROM {view}", f"length({quote_ident(base)})"
    # len(text): the manifest leaves text out; the stage's checkpoint has it.
    segment = (record["stages"].get(stage) or {}).get("segment") or stage
    uris = segment_fragments(run_dir, segment)
    if not uris:
        return None
    fs, _ = storage.resolve(uris[0])
    dataset = pds.dataset([storage.resolve(u)[1] for u in uris], filesystem=fs, format="parquet")
    if base not in dataset.schema.names:
        return None
    name = f"_ckpt_{re.sub(r'[^a-z0-9_]', '_', segment.lower())}"
    try:
        con.register(name, dataset)
    except Exception:
        return None
    return (f"SELECT m.sample_id, c.{quote_ident(base)} AS _v FROM {view} m JOIN {name} c USING (sample_id)",
            "length(_v)")


# -- dedup ---------------------------------------------------------------------------------
def _dedup(con, stages: list[StageCounts], clusters_shown: int, members_shown: int) -> list[DedupView]:
    out = []
    for s in stages:
        if s.missing or not s.dropped:
            continue
        v = quote_ident(s.stage)
        keys = [r[0] for r in _rows(con, f"SELECT DISTINCT {REASON_KEY_SQL} FROM {v} WHERE status = 'dropped' "
                                         f"AND {REASON_KEY_SQL} LIKE '%dup%' AND reason LIKE '%:%' ORDER BY 1")]
        for key in keys:
            rep_sql = (f"SELECT trim(split_part(reason, ':', 2)) AS rep, sample_id, source, source_key, status, reason "
                       f"FROM {v} WHERE status = 'dropped' AND {REASON_KEY_SQL} = ?")
            sizes = _rows(con, f"SELECT n + 1 AS size, count(*) FROM (SELECT rep, count(*) AS n FROM ({rep_sql}) "
                               f"GROUP BY rep) GROUP BY size ORDER BY size", [key])
            top = _rows(con, f"SELECT rep, count(*) AS n FROM ({rep_sql}) GROUP BY rep ORDER BY n DESC, rep LIMIT ?",
                        [key, clusters_shown])
            shown = []
            for rep, _n in top:
                members = _rows(con, f"SELECT sample_id, source, source_key, status, reason FROM ({rep_sql}) "
                                     f"WHERE rep = ? ORDER BY sample_id LIMIT ?", [key, rep, members_shown])
                info = _rows(con, f"SELECT sample_id, source, source_key, status, reason FROM {v} WHERE sample_id = ?", [rep])
                rep_ex = Example(*info[0]) if info else Example(rep, None, None, "kept", None)
                shown.append((rep_ex, [Example(*m) for m in members]))
            out.append(DedupView(stage=s.stage, key=key, dropped=sum(c * (sz - 1) for sz, c in sizes),
                                 clusters=sum(c for _, c in sizes), size_counts=[(int(a), int(b)) for a, b in sizes],
                                 shown=shown))
    return out


# -- models ------------------------------------------------------------------------------------
_MODEL_KEYS = {"model", "pretrained", "tokenizer", "model_path", "checkpoint_path"}


def _models(record: dict) -> list[tuple[str, str, str]]:
    out = []

    def walk(stage: str, obj: Any, path: str) -> None:
        if isinstance(obj, dict):
            for k, v in obj.items():
                p = f"{path}.{k}" if path else str(k)
                if k in _MODEL_KEYS and isinstance(v, (str, int, float)) and v not in ("", None):
                    out.append((stage, p, str(v)))
                else:
                    walk(stage, v, p)
        elif isinstance(obj, list):
            for i, v in enumerate(obj):
                walk(stage, v, f"{path}[{i}]")

    for spec in (record.get("config") or {}).get("stages") or []:
        walk(spec.get("name") or spec.get("kind"), {k: v for k, v in spec.items() if k not in ("name", "kind")}, "")
    return out


# -- all together ------------------------------------------------------------------------------
def collect(run_dir: str, examples_per_reason: int = 12, clusters_shown: int = 4, members_shown: int = 5,
            threads: int | None = None) -> ReportData:
    con = manifest_connection(run_dir, threads=threads)
    try:
        from manifests.reader import read_run_record

        record = read_run_record(run_dir)
        present = {r[0] for r in _rows(con, "SELECT table_name FROM information_schema.tables")} & set(record["order"])
        stages, sources = _funnel(con, record, present)
        columns = {s: _all_columns(con, s) for s in record["order"] if s in present}
        reasons = _reasons(con, stages, examples_per_reason)
        thresholds = _thresholds(con, record, columns)
        charts = _charts(con, run_dir, record, stages, columns, thresholds)
        dedup = _dedup(con, stages, clusters_shown, members_shown)
        kept_stage, kept = _kept_examples(con, run_dir, stages, examples_per_reason)
    finally:
        con.close()
    data = ReportData(run_dir=run_dir, record=record, stages=stages, sources=sources, reasons=reasons, charts=charts,
                      dedup=dedup, kept_stage=kept_stage, kept_examples=kept, schemas={}, models=_models(record))
    _attach_rows(data)
    return data


def _kept_examples(con, run_dir: str, stages: list[StageCounts], n: int) -> tuple[str | None, list[Example]]:
    """A few rows that made it through: from the last stage whose checkpoint holds media."""
    for s in reversed(stages):
        if s.missing or not s.kept or n <= 0 or not segment_fragments(run_dir, s.segment):
            continue
        rows = _rows(con, f"SELECT sample_id, source, source_key, status, reason FROM {quote_ident(s.stage)} "
                          f"WHERE status = 'kept' ORDER BY sample_id LIMIT ?", [n])
        return s.stage, [Example(*r) for r in rows]
    return None, []


def _attach_rows(data: ReportData) -> None:
    """Read the example rows (media included) from checkpoints: one pass per segment."""
    seg_of = {s.stage: s.segment for s in data.stages}
    wanted: dict[str, list[Example]] = {}
    for g in data.reasons:
        wanted.setdefault(seg_of[g.stage], []).extend(g.examples)
    for d in data.dedup:
        for rep, members in d.shown:
            wanted.setdefault(seg_of[d.stage], []).extend([rep, *members])
    if data.kept_stage:
        wanted.setdefault(seg_of[data.kept_stage], []).extend(data.kept_examples)
    for segment, examples in wanted.items():
        rows, schema = fetch_rows(data.run_dir, segment, [e.sample_id for e in examples])
        if schema is not None:
            data.schemas[segment] = schema
        for e in examples:
            e.row = rows.get(e.sample_id)
