"""exact_dedup and minhash_dedup: global, row-preserving duplicate removal.

Both see every kept upstream row (``mode = "global"``) and return the same rows
with duplicates marked ``dropped`` (``reason`` names the kept representative,
``_decided_at`` the stage). Everything runs through Ray Data; the driver only
sees row counts.

``exact_dedup``: a map step adds a 128-bit hash of the key columns (text
lowercased and whitespace-collapsed when ``normalize_text``) and the ``prefer``
value, and keeps only (key, sample_id, ``_chunk``, prefer); a shuffle of those
narrow rows on the key's hash sees each group whole and keeps one row: the
highest ``prefer`` value, ties and no ``prefer`` -> the smallest
``sample_id``. Rows whose key columns are all null are never grouped. The
others get decisions, applied by a map over the full rows
(``dedup.components.apply_decisions``): media never move. Reason:
``exact_dup_of:<kept sample_id>``.

``minhash_dedup`` (near duplicates, Jaccard over word n-grams):
1. ``map_batches``: MinHash signatures (``dedup/minhash.py``, equal to
   datasketch's) and one row per (band, band hash, sample_id); the (bands,
   rows) split minimises false positives + negatives at ``threshold``
   (datasketch's rule). Documents without shingles (empty text) get no band
   rows: they are never near-duplicates here (exact_dedup handles them).
2. a shuffle of the band rows on a hash of (band, bhash) (``hash_shuffle``:
   narrow rows, partitions from bytes): every bucket with >= 2 members emits
   star edges member <-> smallest member (same connectivity as all pairs,
   linear in bucket size); singleton buckets are skipped with numpy.
3. Connected components and decisions (``dedup/components.py``, shared with
   ``phash_dedup``): large-star/small-star rounds over the edges, all in Ray
   Data (only counts of changed nodes reach the driver; rounds grow with log
   of the component size); the representative is the highest ``prefer``,
   then smallest sample_id; the others are marked ``near_dup_of:<rep>`` by a
   map over the full rows. ``run_stats``: clusters, rows dropped, cluster-size
   histogram, component rounds.
Decisions depend only on sample ids, text and ``prefer``: the same kept set
whatever the block or chunk layout.

Candidate verification (``verify: true``, off by default): band rows also
carry each document's shingle hashes, and a bucket joins only members whose
exact Jaccard reaches ``threshold``. Without it every LSH candidate is a
duplicate, so pairs just below the threshold are dropped and pairs just above
are missed at the rates of the S-curve (``dedup.minhash.print_curve``; at 0.8
the default 9 x 13 banding catches a J=0.8 pair 40% of the time). With it,
set ``candidate_threshold`` lower (e.g. 0.6: 18 x 7, 98% at J=0.8) for recall;
``bench/dedup.py`` measures both.

Bytes shuffled per row do not depend on the other columns (text, media): every
shuffle moves narrow rows only (tests/test_components.py asserts it).

Known limits: transitive chains A~B~C can join A and C below the threshold.
"""
from __future__ import annotations

import hashlib
from typing import Callable

import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator

from dedup.components import PART
from dedup.components import PREF as _PREF
from dedup.components import prefer_values as _prefer_values
from stages.base import CHUNK_COLUMN, KEPT, Params, Resources, Stage

_KEY = "_dedup_key"


# -- exact -------------------------------------------------------------------------------
class ExactDedupParams(Params):
    columns: list[str] = Field(default_factory=lambda: ["text"], min_length=1,
                               description="key columns (e.g. [text], [image_hash], [image_hash, text])")
    normalize_text: bool = Field(True, description="lowercase and collapse whitespace in string keys")
    prefer: str | None = Field(None, description="numeric column: keep the highest in a group (ties: smallest sample_id)")
    partitions: int | None = Field(None, ge=1, description="partitions of each shuffle (None: from bytes, "
                                   "~128 MiB each; see docs/scaling.md)")


def _exact_keys(table: pa.Table, columns: list[str], normalize_text: bool, prefer: str | None) -> pa.Table:
    """Kept rows with a key -> narrow rows (hash part, 128-bit key, sample_id, _chunk, prefer)."""
    from dedup.minhash import normalize

    cols = [table.column(c).to_pylist() for c in columns]
    ids = table.column("sample_id").to_pylist()
    kept = [s == KEPT for s in table.column("status").to_pylist()]
    keys, rows = [], []
    for i, sid in enumerate(ids):
        vals = [c[i] for c in cols]
        if not kept[i] or all(v is None for v in vals):
            continue  # nothing to compare: never a duplicate
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
        keys.append(h.digest())
        rows.append(i)
    take = pa.array(rows, pa.int64())
    digest = np.frombuffer(b"".join(keys), dtype=np.uint64).reshape(-1, 2) if keys else np.zeros((0, 2), np.uint64)
    chunk = (table.column(CHUNK_COLUMN).take(take).cast(pa.string()) if CHUNK_COLUMN in table.column_names
             else pa.nulls(len(rows), pa.string()))
    return pa.table({PART: pa.array((digest[:, 0] >> np.uint64(1)).astype(np.int64), pa.int64()),
                     _KEY: pa.array(keys, pa.binary(16)), "sample_id": table.column("sample_id").take(take),
                     CHUNK_COLUMN: chunk, _PREF: _prefer_values(table, prefer).take(take)})


def _exact_decisions(table: pa.Table) -> pa.Table:
    """One partition of key rows (whole groups): a decision for every row of a group but its
    best (highest prefer, then smallest sample_id)."""
    from dedup.components import _REP, as_bytes

    if table.num_rows == 0:
        return pa.table({"sample_id": pa.array([], pa.string()), _REP: pa.array([], pa.string()),
                         CHUNK_COLUMN: pa.array([], pa.string())})
    _, key = np.unique(as_bytes(table.column(_KEY)), return_inverse=True)
    sid = as_bytes(table.column("sample_id"))
    pref = table.column(_PREF).to_numpy(zero_copy_only=False)
    order = np.lexsort((sid, -pref, key))
    first = np.ones(len(order), bool)
    first[1:] = key[order][1:] != key[order][:-1]
    rep = order[np.flatnonzero(first)][np.cumsum(first) - 1]
    out = order[~first]
    ids = table.column("sample_id")
    return pa.table({"sample_id": ids.take(pa.array(out)), _REP: ids.take(pa.array(rep[~first])),
                     CHUNK_COLUMN: table.column(CHUNK_COLUMN).take(pa.array(out))})


class ExactDedupStage(Stage):
    kind = "exact_dedup"
    mode = "global"
    code_deps = ("dedup",)
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
        from dedup.components import apply_decisions, hash_shuffle, map_partitions, narrow_input

        p = self.params
        bs = self.default_resources.batch_size
        wanted = ["sample_id", "status", CHUNK_COLUMN, *p.columns, *([p.prefer] if p.prefer else [])]
        names = ds.columns()
        narrow = ds.select_columns([c for c in dict.fromkeys(wanted) if c in names])
        keyed = narrow_input(narrow.map_batches(_exact_keys, fn_args=(list(p.columns), p.normalize_text, p.prefer),
                                                batch_format="pyarrow", batch_size=bs))
        log(f"{self.name}: grouping (key, sample_id, _chunk, prefer) rows by a hash of {p.columns}"
            + (f", preferring the highest {p.prefer}" if p.prefer else ""))
        decisions = map_partitions(hash_shuffle(keyed, p.partitions), _exact_decisions)
        return apply_decisions(ds, decisions, self.name, "exact_dup_of:", p.partitions)


# -- near (MinHash LSH) -------------------------------------------------------------------
class MinHashDedupParams(Params):
    column: str = Field("text", description="text column to compare")
    threshold: float = Field(0.8, gt=0, lt=1, description="Jaccard similarity of shingle sets counted as duplicate")
    num_perm: int = Field(128, ge=2, le=1024, description="MinHash permutations")
    ngram: int = Field(5, ge=1, description="shingle length")
    unit: str = Field("words", pattern="^(words|chars)$", description="shingle unit: words or chars")
    seed: int = Field(1, ge=0, description="MinHash permutation seed (datasketch's)")
    prefer: str | None = Field(None, description="numeric column: the component keeps its highest (ties: smallest sample_id)")
    max_rounds: int = Field(64, ge=1, description="connected-components rounds before giving up")
    partitions: int | None = Field(None, ge=1, description="partitions of each shuffle (None: from bytes, "
                                   "~128 MiB each; see docs/scaling.md)")
    verify: bool = Field(False, description="keep a candidate pair only if the exact Jaccard of its shingle sets "
                                            ">= threshold (band rows then carry each document's shingle hashes)")
    candidate_threshold: float | None = Field(None, gt=0, lt=1, description="Jaccard the LSH banding targets "
                                              "(default: threshold); lower it with verify for recall at threshold")

    @model_validator(mode="after")
    def _candidates_not_above_threshold(self):
        if self.candidate_threshold is not None and self.candidate_threshold > self.threshold:
            raise ValueError(f"candidate_threshold ({self.candidate_threshold}) must be <= threshold ({self.threshold})")
        return self


_SHINGLES = "_dedup_shingles"


def _shingle_hash_lists(values: np.ndarray, offsets: np.ndarray, repeat: int) -> pa.Array:
    """Each document's distinct shingle hashes (``distinct_per_doc``), repeated once per band row."""
    lens = np.diff(offsets)
    seg_lens = np.repeat(lens, repeat)
    out_offsets = np.zeros(len(seg_lens) + 1, dtype=np.int64)
    np.cumsum(seg_lens, out=out_offsets[1:])
    # position j of output segment k reads values[offsets[doc(k)] + j]
    take = np.repeat(np.repeat(offsets[:-1], repeat) - out_offsets[:-1], seg_lens) + np.arange(out_offsets[-1])
    return pa.ListArray.from_arrays(pa.array(out_offsets.astype(np.int32), pa.int32()), pa.array(values[take], pa.uint32()))


def _band_rows(table: pa.Table, column: str, num_perm: int, seed: int, ngram: int, unit: str,
               bands: int, rows: int, prefer: str | None, verify: bool = False) -> pa.Table:
    from dedup.components import hash_ints
    from dedup.minhash import band_hashes, distinct_per_doc, has_shingles, shingle_hashes, signatures_from_hashes

    texts = table.column(column).to_pylist()
    ok = has_shingles(texts) & np.array([s == KEPT for s in table.column("status").to_pylist()], dtype=bool)
    idx = np.flatnonzero(ok)
    hashes, doc_index, n_docs = shingle_hashes([texts[i] for i in idx], ngram, unit)
    sigs = signatures_from_hashes(hashes, doc_index, n_docs, num_perm, seed)
    bh = band_hashes(sigs, bands, rows)  # (n, bands)
    ids = np.array(table.column("sample_id").to_pylist(), dtype=object)[idx]
    prefs = _prefer_values(table, prefer).to_numpy(zero_copy_only=False)[idx]
    band = np.tile(np.arange(bands, dtype=np.int32), len(idx))
    cols = {
        PART: pa.array(hash_ints(band, bh.reshape(-1)), pa.int64()),
        "band": pa.array(band),
        "bhash": pa.array(bh.reshape(-1)),
        "sample_id": pa.array(np.repeat(ids, bands).tolist(), pa.string()),
        _PREF: pa.array(np.repeat(prefs, bands), pa.float64()),
    }
    if verify:
        cols[_SHINGLES] = _shingle_hash_lists(*distinct_per_doc(hashes, doc_index, n_docs), bands)
    return pa.table(cols)


def _verified_edges(ids: list[str], sets: list[set], prefs: dict[str, float], threshold: float) -> pa.Table:
    """Members of one bucket joined when their exact Jaccard >= threshold (union-find, pairs
    already joined are not compared: linear for a bucket of near-copies, quadratic at worst);
    star edges per joined group."""
    from dedup.components import edge_table, star_edges

    order = sorted(range(len(ids)), key=lambda i: ids[i])
    parent = list(range(len(ids)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for k, a in enumerate(order):
        for b in order[k + 1:]:
            ra, rb = find(a), find(b)
            if ra == rb:
                continue
            inter = len(sets[a] & sets[b])
            if inter >= threshold * (len(sets[a]) + len(sets[b]) - inter):
                parent[max(ra, rb, key=lambda r: ids[r])] = min(ra, rb, key=lambda r: ids[r])
    groups: dict[int, list[str]] = {}
    for i in order:
        groups.setdefault(find(i), []).append(ids[i])
    parts = [star_edges(m, prefs) for m in groups.values() if len(m) >= 2]
    return pa.concat_tables(parts) if parts else edge_table([], [], [])


def _bucket_edges(group: pa.Table, verify_threshold: float | None = None) -> pa.Table:
    """A bucket of >= 2 documents -> star edges to its smallest member, both directions;
    with ``verify_threshold``, only between members whose exact Jaccard reaches it."""
    from dedup.components import star_edges

    ids = group.column("sample_id").to_pylist()
    prefs = dict(zip(ids, group.column(_PREF).to_pylist()))
    if verify_threshold is None or len(ids) < 2:
        return star_edges(ids, prefs)
    sets = [set(h) for h in group.column(_SHINGLES).to_pylist()]
    return _verified_edges(ids, sets, prefs, verify_threshold)


def _partition_edges(table: pa.Table, verify_threshold: float | None) -> pa.Table:
    """One partition of band rows (whole buckets): star edges of every bucket with >= 2
    members; the (many) singleton buckets are found with numpy and skipped."""
    from dedup.components import edge_table

    if table.num_rows < 2:
        return edge_table([], [], [])
    band = table.column("band").to_numpy(zero_copy_only=False).astype(np.int64)
    bhash = table.column("bhash").to_numpy(zero_copy_only=False).astype(np.uint64).view(np.int64)
    order = np.lexsort((bhash, band))
    b, h = band[order], bhash[order]
    start = np.ones(len(order), bool)
    start[1:] = (b[1:] != b[:-1]) | (h[1:] != h[:-1])
    group = np.cumsum(start) - 1
    sizes = np.bincount(group)
    multi = sizes[group] >= 2
    if not multi.any():
        return edge_table([], [], [])
    rows = order[multi]
    groups = group[multi]
    cuts = np.flatnonzero(np.diff(groups)) + 1
    parts = [_bucket_edges(table.take(pa.array(idx)), verify_threshold) for idx in np.split(rows, cuts)]
    parts = [t for t in parts if t.num_rows]
    return pa.concat_tables(parts) if parts else edge_table([], [], [])


class MinHashDedupStage(Stage):
    kind = "minhash_dedup"
    mode = "global"
    code_deps = ("dedup",)
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
        from dedup.components import hash_shuffle, map_partitions, narrow_input, resolve_clusters
        from dedup.minhash import collision_probability, optimal_bands

        p = self.params
        bands, rows = optimal_bands(p.candidate_threshold or p.threshold, p.num_perm)
        log(f"{self.name}: MinHash {p.num_perm} perms, {bands} bands x {rows} rows; "
            f"P(candidate) {collision_probability(p.threshold, bands, rows):.3f} at J={p.threshold}, "
            f"{collision_probability(min(1.0, p.threshold + 0.1), bands, rows):.3f} at J={min(1.0, p.threshold + 0.1):.2f}"
            + (f"; candidates verified: exact Jaccard >= {p.threshold}" if p.verify else ""))
        # Two reads of the rows instead of holding them: this one only loads the columns it needs.
        names = ds.columns()
        wanted = ["sample_id", "status", p.column, *([p.prefer] if p.prefer else [])]
        narrow = ds.select_columns([c for c in dict.fromkeys(wanted) if c in names])
        band_rows = narrow_input(narrow.map_batches(
            _band_rows, fn_args=(p.column, p.num_perm, p.seed, p.ngram, p.unit, bands, rows, p.prefer, p.verify),
            batch_format="pyarrow", batch_size=self.default_resources.batch_size))
        edges = map_partitions(hash_shuffle(band_rows, p.partitions), _partition_edges, p.threshold if p.verify else None)
        out, self.run_stats = resolve_clusters(ds, edges, self.name, p.max_rounds, log, p.partitions)
        return out
