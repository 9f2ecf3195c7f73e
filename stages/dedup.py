"""exact_dedup and minhash_dedup: global, row-preserving duplicate removal.

Both see every kept upstream row (``mode = "global"``) and return the same rows
with duplicates marked ``dropped`` (``reason`` names the kept representative,
``_decided_at`` the stage). Everything runs through Ray Data; the driver only
sees row counts.

``exact_dedup``: a map step adds a 128-bit hash of the key columns (text
lowercased and whitespace-collapsed when ``normalize_text``) and the ``prefer``
value; ``groupby(key).map_groups`` (a distributed shuffle) sees each group
whole and keeps one row: the highest ``prefer`` value, ties and no ``prefer``
-> the smallest ``sample_id``. Rows whose key columns are all null are never
grouped. Reason: ``exact_dup_of:<kept sample_id>``.

``minhash_dedup`` (near duplicates, Jaccard over word n-grams):
1. ``map_batches``: MinHash signatures (``dedup/minhash.py``, equal to
   datasketch's) and one row per (band, band hash, sample_id); the (bands,
   rows) split minimises false positives + negatives at ``threshold``
   (datasketch's rule). Documents without shingles (empty text) get no band
   rows: they are never near-duplicates here (exact_dedup handles them).
2. ``groupby([band, bhash]).map_groups``: every bucket with >= 2 members
   emits star edges member <-> smallest member (same connectivity as all
   pairs, linear in bucket size).
3. Connected components by min-label propagation, all in Ray Data: the state
   is one row per directed edge (node, nbr, label=label of node). A round
   emits each row plus a message (node=nbr, label) and groups by node; a node's
   new label is the minimum of its own and its messages. The number of labels
   that changed is summed (``ds.sum``, a count reaches the driver); rounds stop
   when it is 0 (at most ``max_rounds``, else the stage fails loudly). Labels
   end as the smallest sample_id of the component; rounds ~ component
   diameter, small because buckets are stars.
4. ``groupby(label).map_groups`` picks the representative (highest
   ``prefer``, then smallest sample_id) and emits (sample_id, rep) for the
   others; a left join of the rows with these decisions marks them
   ``near_dup_of:<rep>``.
Decisions depend only on sample ids, text and ``prefer``: the same kept set
whatever the block or chunk layout.

Known limits: candidate pairs are not verified against the estimated Jaccard
(standard LSH dedup; the S-curve in ``dedup.minhash.print_curve`` gives the
false-positive rate), and transitive chains A~B~C can join A and C below
the threshold. exact_dedup shuffles whole rows (media included).
"""
from __future__ import annotations

import hashlib
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from stages.base import KEPT, Params, Resources, Stage, mark_arrow

_KEY, _PREF = "_dedup_key", "_dedup_prefer"


def _prefer_values(table: pa.Table, prefer: str | None) -> pa.Array:
    """Float64 ranking value: the prefer column (missing/NaN -> -inf), or 0 for every row."""
    if prefer is None:
        return pa.array(np.zeros(table.num_rows), pa.float64())
    vals = table.column(prefer).cast(pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)
    vals = np.where(np.isnan(vals), -np.inf, vals)
    return pa.array(vals, pa.float64())


def _representative_order(sample_ids: list[str], prefs: np.ndarray) -> np.ndarray:
    """Indices sorted best first: highest prefer, then smallest sample_id."""
    return np.array(sorted(range(len(sample_ids)), key=lambda i: (-prefs[i], sample_ids[i])), dtype=np.int64)


# -- exact -------------------------------------------------------------------------------
class ExactDedupParams(Params):
    columns: list[str] = Field(default_factory=lambda: ["text"], min_length=1,
                               description="key columns (e.g. [text], [image_hash], [image_hash, text])")
    normalize_text: bool = Field(True, description="lowercase and collapse whitespace in string keys")
    prefer: str | None = Field(None, description="numeric column: keep the highest in a group (ties: smallest sample_id)")


def _exact_keys(table: pa.Table, columns: list[str], normalize_text: bool, prefer: str | None) -> pa.Table:
    from dedup.minhash import normalize

    cols = [table.column(c).to_pylist() for c in columns]
    ids = table.column("sample_id").to_pylist()
    keys = []
    for i, sid in enumerate(ids):
        vals = [c[i] for c in cols]
        if all(v is None for v in vals):
            keys.append("solo:" + sid)  # nothing to compare: never a duplicate
            continue
        h = hashlib.blake2b(digest_size=16)
        for v in vals:
            if v is None:
                h.update(b"\x00N")
            elif isinstance(v, (bytes, bytearray)):
                h.update(b"\x00B" + len(v).to_bytes(8, "little") + bytes(v))
            else:
                s = normalize(v) if (normalize_text and isinstance(v, str)) else str(v)
                b = s.encode("utf-8", "surrogateescape")
                h.update(b"\x00S" + len(b).to_bytes(8, "little") + b)
        keys.append(h.hexdigest())
    table = table.append_column(_KEY, pa.array(keys, pa.string()))
    return table.append_column(_PREF, _prefer_values(table, prefer))


def _exact_group(group: pa.Table, stage: str) -> pa.Table:
    n = group.num_rows
    if n < 2:
        return group
    ids = group.column("sample_id").to_pylist()
    order = _representative_order(ids, group.column(_PREF).to_numpy(zero_copy_only=False))
    rep = ids[order[0]]
    dropped = np.ones(n, dtype=bool)
    dropped[order[0]] = False
    return mark_arrow(group, dropped, f"exact_dup_of:{rep}", stage)


def _drop_helpers(table: pa.Table, names: tuple[str, ...]) -> pa.Table:
    return table.drop_columns([c for c in names if c in table.column_names])


class ExactDedupStage(Stage):
    kind = "exact_dedup"
    mode = "global"
    Params = ExactDedupParams
    description = "Drop exact duplicates of key columns (normalised text, image_hash, ...), keeping one per group."
    default_resources = Resources(num_cpus=1, batch_size=4096)

    def input_columns(self):
        cols = {c: pa.string() for c in self.params.columns}
        if self.params.prefer:
            cols[self.params.prefer] = pa.float64()
        return cols

    def manifest_columns(self) -> list[str]:
        return []

    def transform(self, ds, seed: int, log: Callable[[str], None]):
        p = self.params
        bs = self.default_resources.batch_size
        keyed = ds.map_batches(_exact_keys, fn_args=(list(p.columns), p.normalize_text, p.prefer),
                               batch_format="pyarrow", batch_size=bs)
        out = keyed.groupby(_KEY).map_groups(_exact_group, fn_args=(self.name,), batch_format="pyarrow")
        log(f"{self.name}: grouping rows by a hash of {p.columns}" + (f", preferring the highest {p.prefer}" if p.prefer else ""))
        return out.map_batches(_drop_helpers, fn_args=((_KEY, _PREF),), batch_format="pyarrow", batch_size=None)


# -- near (MinHash LSH) -------------------------------------------------------------------
class MinHashDedupParams(Params):
    column: str = Field("text", description="text column to compare")
    threshold: float = Field(0.8, gt=0, lt=1, description="Jaccard similarity of shingle sets counted as duplicate")
    num_perm: int = Field(128, ge=2, le=1024, description="MinHash permutations")
    ngram: int = Field(5, ge=1, description="shingle length")
    unit: str = Field("words", pattern="^(words|chars)$", description="shingle unit: words or chars")
    seed: int = Field(1, ge=0, description="MinHash permutation seed (datasketch's)")
    prefer: str | None = Field(None, description="numeric column: the component keeps its highest (ties: smallest sample_id)")
    max_rounds: int = Field(64, ge=1, description="label-propagation rounds before giving up")


def _band_rows(table: pa.Table, column: str, num_perm: int, seed: int, ngram: int, unit: str,
               bands: int, rows: int, prefer: str | None) -> pa.Table:
    from dedup.minhash import band_hashes, has_shingles, signatures

    texts = table.column(column).to_pylist()
    ok = has_shingles(texts) & np.array([s == KEPT for s in table.column("status").to_pylist()], dtype=bool)
    idx = np.flatnonzero(ok)
    sigs = signatures([texts[i] for i in idx], num_perm=num_perm, seed=seed, ngram=ngram, unit=unit)
    bh = band_hashes(sigs, bands, rows)  # (n, bands)
    ids = np.array(table.column("sample_id").to_pylist(), dtype=object)[idx]
    prefs = _prefer_values(table, prefer).to_numpy(zero_copy_only=False)[idx]
    return pa.table({
        "band": pa.array(np.tile(np.arange(bands, dtype=np.int32), len(idx))),
        "bhash": pa.array(bh.reshape(-1)),
        "sample_id": pa.array(np.repeat(ids, bands).tolist(), pa.string()),
        _PREF: pa.array(np.repeat(prefs, bands), pa.float64()),
    })


def _bucket_edges(group: pa.Table) -> pa.Table:
    """A bucket of >= 2 documents -> star edges to its smallest member, both directions."""
    ids = sorted(set(group.column("sample_id").to_pylist()))
    prefs = dict(zip(group.column("sample_id").to_pylist(), group.column(_PREF).to_pylist()))
    if len(ids) < 2:
        return _edge_table([], [], [])
    center = ids[0]
    src, dst = [], []
    for other in ids[1:]:
        src += [center, other]
        dst += [other, center]
    return _edge_table(src, dst, [prefs[s] for s in src])


def _edge_table(node, nbr, pref) -> pa.Table:
    return pa.table({"node": pa.array(node, pa.string()), "nbr": pa.array(nbr, pa.string()),
                     "label": pa.array(node, pa.string()), _PREF: pa.array(pref, pa.float64()),
                     "msg": pa.array([False] * len(node), pa.bool_()),
                     "changed": pa.array([0] * len(node), pa.int64())})


def _dedupe_edges(group: pa.Table) -> pa.Table:
    """One row per distinct (node, nbr): several buckets may give the same edge."""
    t = group.slice(0, 1)
    return t


def _with_messages(table: pa.Table) -> pa.Table:
    """Each state row (node, nbr, label) also sends its label to nbr."""
    msgs = pa.table({"node": table.column("nbr"), "nbr": table.column("nbr"), "label": table.column("label"),
                     _PREF: pa.array([0.0] * table.num_rows, pa.float64()),
                     "msg": pa.array([True] * table.num_rows, pa.bool_()),
                     "changed": pa.array([0] * table.num_rows, pa.int64())})
    state = table.set_column(table.column_names.index("msg"), "msg", pa.array([False] * table.num_rows, pa.bool_()))
    return pa.concat_tables([state, msgs.select(state.column_names)])


def _propagate(group: pa.Table) -> pa.Table:
    """One node: new label = min(own label, neighbours' labels); keep its edge rows only."""
    labels = group.column("label").to_pylist()
    new = min(labels)
    is_msg = group.column("msg").to_numpy(zero_copy_only=False)
    state = group.filter(pa.array(~is_msg))
    old = state.column("label")[0].as_py()
    changed = [0] * state.num_rows
    if new != old:
        changed[0] = 1  # one count per node
    state = state.set_column(state.column_names.index("label"), "label", pa.array([new] * state.num_rows, pa.string()))
    return state.set_column(state.column_names.index("changed"), "changed", pa.array(changed, pa.int64()))


def _component_decisions(group: pa.Table) -> pa.Table:
    """One component (all state rows with one label): the best node stays, the others point at it."""
    nodes: dict[str, float] = {}
    for n, p in zip(group.column("node").to_pylist(), group.column(_PREF).to_pylist()):
        nodes[n] = p
    ids = sorted(nodes)
    order = _representative_order(ids, np.array([nodes[i] for i in ids], dtype=np.float64))
    rep = ids[order[0]]
    others = [i for i in ids if i != rep]
    return pa.table({"sample_id": pa.array(others, pa.string()), "_dedup_rep": pa.array([rep] * len(others), pa.string())})


def _tag_rows(table: pa.Table) -> pa.Table:
    n = table.num_rows
    return (table.append_column("_dedup_rep", pa.nulls(n, pa.string()))
            .append_column("_dedup_decision", pa.array([False] * n, pa.bool_())))


def _pad_decisions(dec: pa.Table, schema: pa.Schema) -> pa.Table:
    n = dec.num_rows
    cols = {f.name: (dec.column("sample_id") if f.name == "sample_id" else pa.nulls(n, f.type)) for f in schema}
    cols["_dedup_rep"] = dec.column("_dedup_rep").cast(pa.string())
    cols["_dedup_decision"] = pa.array([True] * n, pa.bool_())
    return pa.table(cols)


def _apply_near(table: pa.Table, stage: str) -> pa.Table:
    """One sample_id: its row, and the decision row when it is a near duplicate."""
    is_dec = table.column("_dedup_decision").to_numpy(zero_copy_only=False)
    rep = None
    if is_dec.any():
        rep = table.filter(pa.array(is_dec)).column("_dedup_rep")[0].as_py()
    table = table.filter(pa.array(~is_dec)).drop_columns(["_dedup_decision"])
    n = table.num_rows
    table = table.set_column(table.column_names.index("_dedup_rep"), "_dedup_rep", pa.array([rep] * n, pa.string()))
    reps = table.column("_dedup_rep")
    dropped = pc.fill_null(pc.is_valid(reps), False).to_numpy(zero_copy_only=False)
    reasons = [f"near_dup_of:{r}" if r is not None else None for r in reps.to_pylist()]
    return mark_arrow(table, dropped, reasons, stage).drop_columns(["_dedup_rep"])


class MinHashDedupStage(Stage):
    kind = "minhash_dedup"
    mode = "global"
    Params = MinHashDedupParams
    description = "Drop near duplicates (MinHash LSH over word n-grams, connected components), keeping one per cluster."
    default_resources = Resources(num_cpus=1, batch_size=1024)

    def input_columns(self):
        cols = {self.params.column: pa.string()}
        if self.params.prefer:
            cols[self.params.prefer] = pa.float64()
        return cols

    def manifest_columns(self) -> list[str]:
        return []

    def transform(self, ds, seed: int, log: Callable[[str], None]):
        from dedup.minhash import collision_probability, optimal_bands

        p = self.params
        bands, rows = optimal_bands(p.threshold, p.num_perm)
        log(f"{self.name}: MinHash {p.num_perm} perms, {bands} bands x {rows} rows; "
            f"P(candidate) {collision_probability(p.threshold, bands, rows):.3f} at J={p.threshold}, "
            f"{collision_probability(min(1.0, p.threshold + 0.1), bands, rows):.3f} at J={min(1.0, p.threshold + 0.1):.2f}")
        ds = ds.materialize()  # read once: signatures and the final join both use it
        band_rows = ds.map_batches(_band_rows, fn_args=(p.column, p.num_perm, p.seed, p.ngram, p.unit, bands, rows, p.prefer),
                                   batch_format="pyarrow", batch_size=self.default_resources.batch_size)
        edges = band_rows.groupby(["band", "bhash"]).map_groups(_bucket_edges, batch_format="pyarrow")
        state = edges.groupby(["node", "nbr"]).map_groups(_dedupe_edges, batch_format="pyarrow").materialize()
        n_edges = state.count()
        if n_edges:
            for rnd in range(1, p.max_rounds + 1):
                state = (state.map_batches(_with_messages, batch_format="pyarrow", batch_size=None)
                         .groupby("node").map_groups(_propagate, batch_format="pyarrow").materialize())
                changed = state.sum("changed") or 0
                log(f"{self.name}: label propagation round {rnd}: {changed} labels changed ({n_edges} directed edges)")
                if changed == 0:
                    break
            else:
                raise RuntimeError(f"{self.name}: components did not converge in {p.max_rounds} rounds")
            decisions = state.groupby("label").map_groups(_component_decisions, batch_format="pyarrow").materialize()
        else:
            decisions = None
        if decisions is None or decisions.count() == 0:
            return ds
        # Row-preserving apply without a join (Ray's join needs polars): the rows and the decisions,
        # padded to one schema, are grouped by sample_id; each group is one row plus at most one decision.
        schema = ds.schema().base_schema
        rows_ = ds.map_batches(_tag_rows, batch_format="pyarrow", batch_size=None)
        decs = decisions.map_batches(_pad_decisions, fn_args=(schema,), batch_format="pyarrow", batch_size=None)
        return (rows_.union(decs).groupby("sample_id")
                .map_groups(_apply_near, fn_args=(self.name,), batch_format="pyarrow"))
