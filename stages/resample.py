"""source_resample, ngram_resample, length_resample: global, row-preserving resampling.

Three kinds, one per strategy, so each has only the fields it reads (a field of
another strategy is a config error, not silently ignored). All three:

- see every kept upstream row (``mode = "global"``) and return the same rows;
  rows sampled out become ``dropped`` with a reason starting ``resampled:``
  (``resampled:source_cap``, ``resampled:source_weight``, ``resampled:ngram``,
  ``resampled:<column>[lo,hi)``, ``resampled:missing_<column>``);
- sample WITHOUT replacement by keeping, per group, the K rows with the smallest
  key, where a row's key depends only on (pipeline seed, stage name,
  sample_id) and, for ngram_resample, the row's weight (``resample/keys.py``).
  The K-th key is found by a distributed radix select (``resample/select.py``):
  only histogram counts and at most 65,536 8-byte keys per group reach the
  driver, never rows. The kept set is therefore the same for any block count,
  worker count or chunking;
- fill ``self.run_stats`` eagerly (rows in/out, kept fraction, and what each
  strategy measures) for run.json ``stages.<name>.stats``.

Whole rows are never materialized or shuffled: each stage reads its input
twice, once for narrow key columns (ids, status, the one column it reads) and
once to mark, recomputing the same key from the row instead of joining. The
only shuffles (``resample.dist.sum_by_key``: n-gram counts, radix-select
histograms) move integer columns, 24-32 bytes a row whatever the media.
Narrow passes are coalesced into blocks of ``_KEY_BATCH`` rows, so thousands of
tiny upstream blocks do not become thousands of tasks per pass.
Formulas and the stats: docs/resampling.md.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator, model_validator

from stages.base import KEPT, Params, Resources, Stage, format_number, mark_arrow

GROUP, KEY = "_rs_group", "_rs_key"
_VALUE, _VKEY = "_rs_value", "_rs_vkey"
_BATCH = 4096
_KEY_BATCH = 1 << 16  # narrow key rows (an id hash, a group): ~1-2 MiB blocks


def _kept_mask(table: pa.Table) -> np.ndarray:
    return pc.fill_null(pc.equal(table.column("status"), KEPT), False).to_numpy(zero_copy_only=False)


def _row_keys(table: pa.Table, seed: int, salt: str) -> np.ndarray:
    from resample.keys import row_hashes

    return row_hashes(table.column("sample_id").to_pylist(), seed, salt)


def _round(x: float) -> int:
    return int(math.floor(x + 0.5))


def _fraction(a: int, b: int) -> float:
    return round(a / b, 6) if b else 0.0


class _ResampleStage(Stage):
    mode = "global"
    code_deps = ("resample",)
    default_resources = Resources(num_cpus=1, batch_size=_BATCH)


def _narrow(ds, *columns: str):
    """Only the columns a key pass reads (Parquet reads skip the media)."""
    return ds.select_columns(list(dict.fromkeys(("sample_id", "status") + columns)))


def _same(table: pa.Table) -> pa.Table:
    return table


def _coalesced(ds, rows: int):
    """The same rows in blocks of ``rows`` (small upstream blocks bundled, large ones cut)."""
    return ds.map_batches(_same, batch_format="pyarrow", batch_size=rows)


def _ready(ref) -> None:
    """Wait (on the driver, without fetching it) until a task's output exists: a task that calls
    ray.get on a pending object gives its CPU back and Ray starts another worker for the next one."""
    import ray

    ray.wait([ref], num_returns=1, fetch_local=False)


def _at_or_below(table: pa.Table, cut: int) -> pa.Table:
    """Rows whose uint64 key is <= cut (numpy: an expression would compare uint64 with an int64 literal)."""
    keys = pc.fill_null(table.column(KEY), 0).to_numpy(zero_copy_only=False)
    return table.filter(pa.array(keys <= np.uint64(cut)))


# -- source level -------------------------------------------------------------------------
class SourceResampleParams(Params):
    caps: dict[str, int] = Field(default_factory=dict, description="source name -> most rows kept from it")
    weights: dict[str, float] = Field(default_factory=dict,
                                      description="source name -> fraction of its rows kept, in [0, 1]")
    default_weight: float = Field(1.0, ge=0, le=1, description="fraction kept of sources not named in weights")

    @field_validator("caps")
    @classmethod
    def _caps_non_negative(cls, v: dict[str, int]) -> dict[str, int]:
        bad = {k: c for k, c in v.items() if c < 0}
        if bad:
            raise ValueError(f"caps must be >= 0, got {bad}")
        return v

    @field_validator("weights")
    @classmethod
    def _weights_are_fractions(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {k: w for k, w in v.items() if not 0 <= w <= 1}
        if bad:
            raise ValueError(f"weights are keep fractions in [0, 1] (a row is kept at most once), got {bad}")
        return v


def _source_keys(table: pa.Table, seed: int, salt: str) -> pa.Table:
    keep = _kept_mask(table)
    return pa.table({GROUP: pc.if_else(pa.array(keep), table.column("source").cast(pa.string()), pa.scalar(None, pa.string())),
                     KEY: pa.array(_row_keys(table, seed, salt), pa.uint64())})


def _mark_source(table: pa.Table, seed: int, salt: str, thresholds: dict[str, int | None],
                 reasons: dict[str, str], stage: str) -> pa.Table:
    keys = _row_keys(table, seed, salt)
    sources = table.column("source").to_pylist()
    drop = np.zeros(table.num_rows, dtype=bool)
    why: list[str | None] = [None] * table.num_rows
    for i, s in enumerate(sources):
        if s in thresholds:
            thr = thresholds[s]
            if thr is None or keys[i] > np.uint64(thr):
                drop[i] = True
                why[i] = reasons[s]
    return mark_arrow(table, drop, why, stage)


class SourceResampleStage(_ResampleStage):
    kind = "source_resample"
    Params = SourceResampleParams
    description = ("Per-source caps (max rows) and weights (keep fraction): a seeded uniform sample "
                   "without replacement of each source.")

    def _check_sources(self) -> None:
        p = self.params
        named = set(p.caps) | set(p.weights)
        known = set((self.context.sources if self.context else {}) or {})
        if self.context is not None and named - known:
            raise ValueError(
                f"stage {self.name!r} (kind {self.kind}): caps/weights name source(s) {sorted(named - known)} "
                f"that the config does not define; sources: {sorted(known)}")

    def transform(self, ds, seed: int, log: Callable[[str], None]):
        from resample.select import count_at_or_below, group_sizes, kth_smallest

        p = self.params
        self._check_sources()
        keys = (_narrow(ds, "source").map_batches(_source_keys, fn_args=(seed, self.name), batch_format="pyarrow",
                                                  batch_size=_KEY_BATCH).materialize())
        sizes = group_sizes(keys, GROUP, KEY)
        rows_in = sum(sizes.values())
        absent = sorted((set(p.caps) | set(p.weights)) - set(sizes))
        if absent:
            log(f"{self.name}: WARNING: source(s) {absent} named in caps/weights have no rows here")
        targets, reasons, plan = [], {}, {}
        for s in sorted(sizes):
            n = sizes[s]
            w = p.weights.get(s, p.default_weight)
            by_weight = _round(w * n)
            cap = p.caps.get(s)
            k = by_weight if cap is None else min(cap, by_weight)
            reasons[s] = "resampled:source_cap" if cap is not None and cap < by_weight else "resampled:source_weight"
            targets.append((s, k))
            plan[s] = {"in": n, "weight": w, "cap": cap, "target": k}
        cut = kth_smallest(keys, targets, sizes, GROUP, KEY, log=log)
        thresholds = {s: cut[(s, k)] for s, k in targets}
        kept = count_at_or_below(keys, thresholds, GROUP, KEY)
        for s in plan:
            plan[s]["kept"] = kept.get(s, 0)
            log(f"{self.name}: source {s}: kept {plan[s]['kept']}/{plan[s]['in']} "
                f"(weight {format_number(plan[s]['weight'])}, cap {plan[s]['cap']})")
        rows_out = sum(kept.values())
        self.run_stats = {"rows_in": rows_in, "rows_out": rows_out, "kept_fraction": _fraction(rows_out, rows_in),
                          "sources": plan, "absent_sources": absent}
        return ds.map_batches(_mark_source, fn_args=(seed, self.name, thresholds, reasons, self.name),
                              batch_format="pyarrow", batch_size=self.default_resources.batch_size)


# -- n-gram level ------------------------------------------------------------------------------
class NgramResampleParams(Params):
    column: str = Field("text", description="text column whose word n-grams are counted")
    n: int = Field(3, ge=1, le=16, description="n-gram length in words")
    keep_fraction: float = Field(0.8, gt=0, le=1, description="fraction of the rows with text that is kept")
    alpha: float = Field(1.0, ge=0, description="strength of the down-weighting (0: a uniform sample)")
    overused_share: float = Field(
        0.001, gt=0, le=1,
        description="an n-gram is over-used when more than this share of the documents contains it "
                    "(tau = max(1, share x documents))")
    top_k: int = Field(100, ge=1, description="report the share of the top-k n-grams before and after")
    report_ngrams: int = Field(10, ge=0, le=1000, description="spell out this many most frequent n-grams in the stats")
    max_overused: int = Field(20_000_000, ge=1,
                              description="fail if more n-grams than this are over-used (the table every worker loads)")


def _gram_rows(table: pa.Table, column: str, n: int) -> pa.Table:
    """One row per distinct (document, n-gram) of the kept rows: hash, df = 1, occurrences (24 bytes)."""
    from resample.ngrams import distinct_per_doc, doc_ngrams

    keep = _kept_mask(table)
    texts = [t if k else None for t, k in zip(table.column(column).to_pylist(), keep)]
    d, h, _, _ = doc_ngrams(texts, n)
    d, h, tf, _ = distinct_per_doc(d, h)
    return pa.table({"h": pa.array(h, pa.uint64()), "df": pa.array(np.ones(len(h), np.int64)),
                     "tf": pa.array(tf, pa.int64())})


def _count_kept(table: pa.Table, column: str) -> pa.Table:
    """Kept rows, and kept rows with at least one token (the documents that have n-grams)."""
    from resample.ngrams import _WORD

    keep = _kept_mask(table)
    texts = table.column(column).to_pylist()
    docs = sum(1 for t, k in zip(texts, keep) if k and isinstance(t, str) and _WORD.search(t.lower()))
    return pa.table({"kept": [int(keep.sum())], "docs": [docs]})


def _overused_table(tau: float, alpha: float, *tables: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Sorted hashes of the over-used n-grams (df > tau) and their penalty alpha * ln(df / tau).
    Runs in one task from the block references: the table never passes through the driver."""
    t = pa.concat_tables(tables) if tables else None
    if t is None or t.num_rows == 0:
        return np.zeros(0, np.uint64), np.zeros(0, np.float64)
    h = t.column("h").to_numpy(zero_copy_only=False).astype(np.uint64)
    df = t.column("df").to_numpy(zero_copy_only=False).astype(np.float64)
    order = np.argsort(h, kind="stable")
    return h[order], alpha * np.log(df[order] / tau)


def _doc_weights(table: pa.Table, column: str, n: int, overused) -> tuple[np.ndarray, tuple]:
    """Weight of each row, NaN outside the pool (no n-grams, or not kept):
    w = exp(-mean over the row's distinct n-grams g of alpha * max(0, ln(df(g) / tau))),
    the geometric mean of min(1, tau / df(g)) ** alpha. Also the per-gram arrays."""
    import ray

    from resample.ngrams import distinct_per_doc, doc_ngrams

    hs, penalty = ray.get(overused) if isinstance(overused, ray.ObjectRef) else overused
    keep = _kept_mask(table)
    texts = [t if k else None for t, k in zip(table.column(column).to_pylist(), keep)]
    d, h, pos, toks = doc_ngrams(texts, n)
    d, h, tf, first = distinct_per_doc(d, h)
    pen = np.zeros(len(h), dtype=np.float64)
    if len(hs) and len(h):
        i = np.minimum(np.searchsorted(hs, h), len(hs) - 1)
        hit = hs[i] == h
        pen[hit] = penalty[i[hit]]
    count = np.bincount(d, minlength=table.num_rows)
    total = np.bincount(d, weights=pen, minlength=table.num_rows)
    w = np.full(table.num_rows, np.nan)
    has = count > 0
    w[has] = np.exp(-total[has] / count[has])
    return w, (d, h, tf, pos[first], toks)


def _ngram_keys(table: pa.Table, column: str, n: int, overused, seed: int, salt: str, spell_hashes: list[int]) -> pa.Table:
    """Gram rows carrying their document's key: (h, tf, key); a document's first gram row also
    carries its weight and group 0 (one row per document for the selection); the first row of each
    of the most frequent n-grams in the block carries its spelling."""
    from resample.keys import es_keys
    from resample.ngrams import spell

    w, (d, h, tf, pos, toks) = _doc_weights(table, column, n, overused)
    pool = ~np.isnan(w)
    doc_keys = np.zeros(table.num_rows, dtype=np.uint64)
    doc_keys[pool] = es_keys(_row_keys(table, seed, salt)[pool], w[pool])
    first = np.ones(len(d), dtype=bool)
    first[1:] = d[1:] != d[:-1]
    spelled: list[str | None] = [None] * len(h)
    if spell_hashes:
        seen: set[int] = set()
        for j in np.flatnonzero(np.isin(h, np.array(spell_hashes, dtype=np.uint64))):
            if int(h[j]) not in seen:
                seen.add(int(h[j]))
                spelled[j] = spell(toks, int(d[j]), int(pos[j]), n)
    return pa.table({
        "h": pa.array(h, pa.uint64()), "df": pa.array(np.ones(len(h), np.int64)), "tf": pa.array(tf, pa.int64()),
        KEY: pa.array(doc_keys[d], pa.uint64()),
        GROUP: pa.array(np.zeros(len(d), np.int32), pa.int32(), mask=~first),
        "weight": pa.array(w[d], pa.float64(), mask=~first),
        "spelled": pa.array(spelled, pa.string()),
    })


def _mark_ngram(table: pa.Table, column: str, n: int, overused, seed: int, salt: str, cut: int | None,
                stage: str) -> pa.Table:
    """The same weight and key as _ngram_keys, recomputed from the row: dropped when key > cut."""
    from resample.keys import es_keys

    w, _ = _doc_weights(table, column, n, overused)
    pool = ~np.isnan(w)
    drop = np.zeros(table.num_rows, dtype=bool)
    if pool.any():
        keys = es_keys(_row_keys(table, seed, salt)[pool], w[pool])
        drop[pool] = True if cut is None else keys > np.uint64(cut)
    table = mark_arrow(table, drop, "resampled:ngram", stage)
    weights = pa.array(np.where(pool, w, 0.0), pa.float64(), mask=~pool)
    if "ngram_weight" in table.column_names:
        return table.set_column(table.column_names.index("ngram_weight"), "ngram_weight", weights)
    return table.append_column("ngram_weight", weights)


def _count_ngrams(grams):
    """(h, df = documents containing it, tf = occurrences) from one row per distinct (document, n-gram)
    with df = 1: exact sums through a shuffle of (h, df, tf) keyed by the hash (``resample.dist.sum_by_key``)."""
    from resample.dist import sum_by_key

    return sum_by_key(grams, ["h"], ["df", "tf"])


def _over_tau(table: pa.Table, tau: float) -> pa.Table:
    df = table.column("df").to_numpy(zero_copy_only=False)
    return table.select(["h", "df"]).filter(pa.array(df > tau))


def _keyed_partials(table: pa.Table, cut: int | None) -> pa.Table:
    """Per block of keyed gram rows: count, sum, min, max of the documents' weights (group 0 rows) and
    of the kept ones; and the spelled-out n-grams."""
    docs = table.filter(pc.is_valid(table.column(GROUP)))
    w = docs.column("weight").to_numpy(zero_copy_only=False).astype(np.float64)
    keys = docs.column(KEY).to_numpy(zero_copy_only=False)
    kept = keys <= np.uint64(cut) if cut is not None else np.zeros(len(w), dtype=bool)
    spelled = table.filter(pc.is_valid(table.column("spelled")))
    return pa.table({"n": [len(w)], "sum": [float(w.sum())], "min": [float(w.min()) if len(w) else math.inf],
                     "max": [float(w.max()) if len(w) else -math.inf], "n_kept": [int(kept.sum())],
                     "sum_kept": [float(w[kept].sum())],
                     "sp_h": pa.array([spelled.column("h").to_pylist()], pa.list_(pa.uint64())),
                     "sp_text": pa.array([spelled.column("spelled").to_pylist()], pa.list_(pa.string()))})


def _r(x: Any) -> float | None:
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else round(float(x), 6)


class NgramResampleStage(_ResampleStage):
    kind = "ngram_resample"
    Params = NgramResampleParams
    description = ("Down-weight rows made of over-used word n-grams (exact corpus counts through Ray Data) and keep "
                   "a seeded weighted sample without replacement (Efraimidis-Spirakis); ngram_weight is the weight.")
    produces = {"ngram_weight": pa.float64()}

    def input_columns(self):
        return {self.params.column: pa.string()}

    def transform(self, ds, seed: int, log: Callable[[str], None]):
        import ray

        from resample.ngrams import combine_stats, most_frequent, partial_stats, wanted_counts
        from resample.dist import per_block
        from resample.select import kth_smallest

        p = self.params
        bs = self.default_resources.batch_size
        text = _coalesced(_narrow(ds, p.column), bs).materialize()  # ids, status and text only: read twice below
        kept_docs = per_block(text, _count_kept, p.column)
        rows_in, pool = sum(r["kept"] for r in kept_docs), sum(r["docs"] for r in kept_docs)
        # 1. Exact document frequency and occurrences of every n-gram (a hash aggregate, combined per block).
        grams = text.map_batches(_gram_rows, fn_args=(p.column, p.n), batch_format="pyarrow", batch_size=bs).materialize()
        counts = _count_ngrams(grams)
        del grams
        parts = per_block(counts, partial_stats, p.top_k, p.report_ngrams)
        before, top = combine_stats(parts, p.top_k), most_frequent(parts, p.report_ngrams)
        tau = max(1.0, p.overused_share * pool)
        over = counts.map_batches(_over_tau, fn_args=(tau,), batch_format="pyarrow", batch_size=None).materialize()
        n_over = over.count()
        if n_over > p.max_overused:
            raise RuntimeError(
                f"stage {self.name!r}: {n_over} n-grams are over-used (in more than {tau:g} documents), more than "
                f"max_overused={p.max_overused}; raise overused_share or max_overused")
        overused = ray.remote(num_cpus=1)(_overused_table).remote(tau, p.alpha, *over.to_arrow_refs())
        _ready(overused)  # every task below reads it
        log(f"{self.name}: {pool} documents with text, {before['distinct_ngrams']} distinct {p.n}-grams, "
            f"{n_over} over-used (in more than {tau:g} documents); entropy {before['entropy_bits']:.3f} bits, "
            f"top-{p.top_k} share {before[f'top{p.top_k}_share']:.4f}")

        # 2. Each document's weight and Efraimidis-Spirakis key; the K-th smallest key overall.
        top_h = [h for h, _, _ in top]
        keyed = text.map_batches(_ngram_keys, fn_args=(p.column, p.n, overused, seed, self.name, top_h),
                                 batch_format="pyarrow", batch_size=bs).materialize()
        k = _round(p.keep_fraction * pool)
        cut = kth_smallest(keyed, [(0, k)], {0: pool}, GROUP, KEY, log=log)[(0, k)]

        # 3. The effect, measured on the kept documents' n-grams.
        kp = per_block(keyed, _keyed_partials, cut)
        pool_kept = sum(r["n_kept"] for r in kp)
        spelled = {int(h): t for r in kp for h, t in zip(r["sp_h"], r["sp_text"])}
        after, after_tf = combine_stats([], p.top_k), {}
        if cut is not None:
            kept_grams = keyed.map_batches(_at_or_below, fn_args=(cut,), batch_format="pyarrow", batch_size=None)
            parts = per_block(_count_ngrams(kept_grams), partial_stats, p.top_k, 0, top_h)
            after, after_tf = combine_stats(parts, p.top_k), wanted_counts(parts)
        rows_out = rows_in - (pool - pool_kept)
        self.run_stats = {
            "rows_in": rows_in, "rows_out": rows_out, "kept_fraction": _fraction(rows_out, rows_in),
            "pool": pool, "pool_kept": pool_kept, "n": p.n, "alpha": p.alpha, "keep_fraction": p.keep_fraction,
            "overused_min_docs": round(tau, 3), "overused_ngrams": n_over,
            "weight": {"mean": _r(sum(r["sum"] for r in kp) / pool) if pool else None,
                       "min": _r(min((r["min"] for r in kp), default=None)),
                       "max": _r(max((r["max"] for r in kp), default=None)),
                       "mean_kept": _r(sum(r["sum_kept"] for r in kp) / pool_kept) if pool_kept else None},
            "before": before, "after": after,
            "top_ngrams": [{"ngram": spelled.get(h, ""), "docs": df, "count_before": tf, "count_after": after_tf.get(h, 0)}
                           for h, df, tf in top],
        }
        log(f"{self.name}: kept {pool_kept}/{pool} documents; entropy {before['entropy_bits']:.3f} -> "
            f"{after['entropy_bits']:.3f} bits, top-{p.top_k} share {before[f'top{p.top_k}_share']:.4f} -> "
            f"{after[f'top{p.top_k}_share']:.4f}")
        return ds.map_batches(_mark_ngram, fn_args=(p.column, p.n, overused, seed, self.name, cut, self.name),
                              batch_format="pyarrow", batch_size=bs)


# -- length balanced ---------------------------------------------------------------------------
class LengthResampleParams(Params):
    column: str = Field(..., description="numeric column (e.g. reasoning tokens), or len(COLUMN) for a text's characters")
    binning: Literal["fixed", "log", "quantile"] = Field(
        "fixed", description="fixed: equal-width bins between min and max; log: equal width in log; quantile: equal counts")
    bins: int = Field(8, ge=1, le=1000, description="number of buckets (ignored when edges are given)")
    edges: list[float] | None = Field(None, description="inner bucket boundaries, ascending: [512, 1024] -> <512, [512,1024), >=1024")
    cap: int | None = Field(None, ge=0, description="most rows kept per bucket")
    keep_fraction: float | None = Field(None, gt=0, le=1,
                                        description="instead of cap: the largest per-bucket cap keeping at most this share")

    @model_validator(mode="after")
    def _one_budget(self):
        if (self.cap is None) == (self.keep_fraction is None):
            raise ValueError("give either cap (rows per bucket) or keep_fraction, not both and not neither")
        if self.edges is not None and any(b <= a for a, b in zip(self.edges, self.edges[1:])):
            raise ValueError(f"edges must be strictly ascending, got {self.edges}")
        return self

    @property
    def base_column(self) -> str:
        c = self.column
        return c[4:-1] if c.startswith("len(") and c.endswith(")") else c


def _length_values(table: pa.Table, expr: str) -> np.ndarray:
    """float64 values of the column (or character lengths for len(COLUMN)); NaN when missing."""
    if expr.startswith("len(") and expr.endswith(")"):
        vals = [len(v) if isinstance(v, (str, bytes, list)) else math.nan for v in table.column(expr[4:-1]).to_pylist()]
        return np.array(vals, dtype=np.float64)
    arr = table.column(expr)
    try:
        return pc.fill_null(arr.cast(pa.float64()), math.nan).to_numpy(zero_copy_only=False).astype(np.float64)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise TypeError(f"length_resample: column {expr!r} is not numeric ({arr.type}): {e}") from None


def _length_keys(table: pa.Table, expr: str, seed: int, salt: str) -> pa.Table:
    from resample.keys import sortable_floats

    v = _length_values(table, expr)
    pool = _kept_mask(table) & ~np.isnan(v)
    return pa.table({
        _VALUE: pa.array(np.where(pool, v, 0.0), pa.float64(), mask=~pool),
        _VKEY: pa.array(sortable_floats(np.where(pool, v, 0.0)), pa.uint64(), mask=~pool),
        "_rs_all": pa.array(np.zeros(table.num_rows, np.int32), pa.int32(), mask=~pool),
        KEY: pa.array(_row_keys(table, seed, salt), pa.uint64(), mask=~pool),
        "_rs_kept": pa.array(_kept_mask(table)),
    })


def _value_range(table: pa.Table) -> pa.Table:
    valid = pc.is_valid(table.column(_VALUE)).to_numpy(zero_copy_only=False)
    v = pc.fill_null(table.column(_VALUE), 0.0).to_numpy(zero_copy_only=False)[valid]
    return pa.table({"n": [int(len(v))], "kept": [int(pc.sum(table.column("_rs_kept")).as_py() or 0)],
                     "lo": [float(v.min()) if len(v) else math.inf], "hi": [float(v.max()) if len(v) else -math.inf]})


def _buckets(values: np.ndarray, edges: list[float]) -> np.ndarray:
    return np.searchsorted(np.asarray(edges, dtype=np.float64), values, side="right").astype(np.int32)


def _with_buckets(table: pa.Table, edges: list[float]) -> pa.Table:
    valid = pc.is_valid(table.column(_VALUE)).to_numpy(zero_copy_only=False)
    v = pc.fill_null(table.column(_VALUE), 0.0).to_numpy(zero_copy_only=False)
    return pa.table({GROUP: pa.array(_buckets(v, edges), pa.int32(), mask=~valid), KEY: table.column(KEY)})


def _mark_length(table: pa.Table, expr: str, seed: int, salt: str, edges: list[float],
                 thresholds: dict[int, int | None], reasons: list[str], missing_reason: str, stage: str) -> pa.Table:
    v = _length_values(table, expr)
    missing = np.isnan(v)
    b = _buckets(np.where(missing, 0.0, v), edges)
    keys = _row_keys(table, seed, salt)
    drop = missing.copy()
    why: list[str | None] = [missing_reason if m else None for m in missing]
    for i in np.flatnonzero(~missing):
        thr = thresholds.get(int(b[i]))
        if thr is None or keys[i] > np.uint64(thr):
            drop[i] = True
            why[i] = reasons[int(b[i])]
    return mark_arrow(table, drop, why, stage)


def _water_fill(sizes: list[int], budget: int) -> int:
    """The largest per-bucket cap c with sum(min(size, c)) <= budget."""
    lo, hi = 0, max(sizes, default=0)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if sum(min(s, mid) for s in sizes) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _range_label(edges: list[float], i: int) -> str:
    f = format_number
    if not edges:
        return "[all]"
    if i == 0:
        return f"<{f(edges[0])}"
    if i == len(edges):
        return f">={f(edges[-1])}"
    return f"[{f(edges[i - 1])},{f(edges[i])})"


class LengthResampleStage(_ResampleStage):
    kind = "length_resample"
    Params = LengthResampleParams
    description = ("Balance a numeric column (e.g. reasoning length): bucket it (fixed, log or quantile bins, or "
                   "edges) and keep a seeded uniform sample of at most `cap` rows per bucket.")

    def input_columns(self):
        base = self.params.base_column
        return {base: pa.string() if base != self.params.column else pa.float64()}

    def _edges(self, keys, pool: int, lo: float, hi: float, log: Callable[[str], None]) -> list[float]:
        from resample.keys import float_from_sortable
        from resample.select import kth_smallest

        p = self.params
        if p.edges is not None:
            return [float(e) for e in p.edges]
        if pool == 0 or p.bins == 1:
            return []
        if p.binning == "quantile":
            # Edge i is the value of rank ceil(i*n/bins)+1: ranks up to ceil(i*n/bins) fall below it (ties go up).
            ranks = sorted({min(pool, math.ceil(i * pool / p.bins) + 1) for i in range(1, p.bins)})
            got = kth_smallest(keys, [(0, r) for r in ranks], {0: pool}, "_rs_all", _VKEY, log=log)
            # Rank == pool size comes back as ALL_ONES ("everything"): that edge is the maximum.
            return sorted({hi if r >= pool else float_from_sortable(got[(0, r)]) for r in ranks})
        if lo == hi:
            return []
        if p.binning == "log":
            if lo <= 0:
                raise ValueError(f"stage {self.name!r}: binning: log needs positive values of {p.column}; the minimum is {lo}")
            return [float(x) for x in np.geomspace(lo, hi, p.bins + 1)[1:-1]]
        return [float(x) for x in np.linspace(lo, hi, p.bins + 1)[1:-1]]

    def transform(self, ds, seed: int, log: Callable[[str], None]):
        from resample.dist import per_block
        from resample.select import count_at_or_below, group_sizes, kth_smallest

        p = self.params
        bs = self.default_resources.batch_size
        keys = (_narrow(ds, p.base_column).map_batches(_length_keys, fn_args=(p.column, seed, self.name),
                                                       batch_format="pyarrow", batch_size=_KEY_BATCH).materialize())
        parts = per_block(keys, _value_range)
        rows_in, pool = sum(r["kept"] for r in parts), sum(r["n"] for r in parts)
        lo, hi = min((r["lo"] for r in parts), default=math.inf), max((r["hi"] for r in parts), default=-math.inf)
        edges = self._edges(keys, pool, lo, hi, log)
        bucketed = keys.map_batches(_with_buckets, fn_args=(edges,), batch_format="pyarrow", batch_size=None).materialize()
        sizes = group_sizes(bucketed, GROUP, KEY)
        n_buckets = len(edges) + 1
        before = [sizes.get(i, 0) for i in range(n_buckets)]
        cap = p.cap if p.cap is not None else _water_fill(before, _round(p.keep_fraction * pool))
        targets = [(i, min(cap, before[i])) for i in range(n_buckets) if before[i]]
        cut = kth_smallest(bucketed, targets, sizes, GROUP, KEY, log=log)
        thresholds = {i: cut[(i, k)] for i, k in targets}
        kept = count_at_or_below(bucketed, thresholds, GROUP, KEY)
        labels = [_range_label(edges, i) for i in range(n_buckets)]
        rows_out = sum(kept.values())
        self.run_stats = {
            "column": p.column, "binning": "edges" if p.edges is not None else p.binning, "edges": [_r(e) for e in edges],
            "cap": cap, "rows_in": rows_in, "rows_out": rows_out, "kept_fraction": _fraction(rows_out, rows_in),
            "missing": rows_in - pool,
            "buckets": [{"bucket": i, "range": labels[i], "before": before[i], "after": kept.get(i, 0)} for i in range(n_buckets)],
        }
        log(f"{self.name}: {p.column} buckets {labels}: {before} -> {[kept.get(i, 0) for i in range(n_buckets)]} (cap {cap})")
        reasons = [f"resampled:{p.column}{lab}" for lab in labels]
        return ds.map_batches(_mark_length, fn_args=(p.column, seed, self.name, edges, thresholds, reasons,
                                                     f"resampled:missing_{p.column}", self.name),
                              batch_format="pyarrow", batch_size=bs)


def _is_valid(name: str):
    from ray.data.expressions import col

    return col(name).is_not_null()
