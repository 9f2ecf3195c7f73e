"""phash and phash_dedup: perceptual near-duplicate removal for images and videos.

``phash`` (map, stateless): adds an int64 ``phash`` column (``dedup.perceptual.image_hashes_bytes``:
the 64-bit DCT pHash, JPEGs decoded in draft mode at ~1/8 scale since the hash only needs a
32x32 thumbnail) and, from the same decoded pixels, an int64 ``dhash`` (64-bit difference hash;
``second_output: null`` skips it). Missing or undecodable bytes make an ``error`` row
(``corrupt_image: <why>``); put it after ``decode`` and such rows never reach it.

``phash_dedup`` (global): near duplicates over a hash column, whose Arrow type picks the rule
(``dedup/perceptual.py`` states both precisely):
- ``int64`` (one pHash per image): Hamming distance <= ``threshold`` (default 8 of 64 bits);
- ``list<int64>`` (a video fingerprint: one pHash per uniformly sampled frame): at least
  ``min_frame_match`` (0.8) of the shorter fingerprint's frames are within ``threshold`` bits of
  the aligned frame of the other, at the best offset in ``[-max_offset, max_offset]`` (1 frame);
  a longer fingerprint is first resampled uniformly to the shorter length.

Images also need their dHash (``confirm``, default the ``dhash`` column the ``phash`` stage now
writes from the same decoded pixels): a pHash match counts only when the dHashes are also within
``confirm_threshold`` (10) bits. When the rows have no such column, pHash alone decides (logged,
``run_stats.confirm`` = null).

Why 8 bits: measured on twelve scikit-image photos (tests/test_perceptual_dedup.py), JPEG quality
10, PNG, 0.5x/1.5x rescales and +-20% brightness move 0-6 bits; 1-3% crops 0-8; 5% off one side
4-12 and 10% off every side 10-18 (pHash is not a crop detector, nor a flip detector: a mirrored
image is ~32 bits away); different photos are 20+ bits apart (median 32). The same edits move
dHash 0-9 bits, and 99.9% of the planted copies of the bench's procedural images are within
10 (distinct photos are 20+ apart).

Why confirm: distinct images are not uniformly random hashes. On 8,000 procedurally generated
distinct images (``bench/near_dedup.py``, 45.7M pairs) 3 pairs were within 8 pHash bits, ~60x
the rate of uniform balanced hashes (7e-10 per pair): ~5.5e-8 per pair, i.e. ~27,000 chance
pairs among a million images, as many as the real near copies of a 3% duplicate rate
(precision ~0.5), and connected components chain them. When two distinct images' pHashes are
within 12 bits, their dHashes are within 10 bits in ~0.7% of cases (1 of 139): confirming
brings the expected chance pairs at 1M to ~200 (precision ~0.993) for a loss of 0.13% of the
planted copies (dHash 11-12 bits); a threshold of 12 would keep those and give ~0.987. The
closer the pHashes, the likelier the dHashes agree too: of the 3 distinct pairs within 8 pHash
bits one passed (two smooth diagonal gradients with two small shapes each, alike to the eye as
well), so the 1M figure is an estimate from a sparse tail, not a measurement.

Algorithm for images, all in Ray Data (the driver sees only counts):
1. The stage projects the narrow columns (sample_id, status, both hashes, ``prefer``) and counts
   the rows, n. Keys: bit-sampling LSH (``dedup/perceptual.py``): ``tables`` tables (L) of ``bits``
   sampled bit positions (k, seeded by ``lsh_seed``, balanced over the 64 bits). By default k =
   log2(n / ``bucket_rows``) clamped to 8..32, so a bucket of uniformly spread hashes holds about
   ``bucket_rows`` (32) rows whatever n, and L is the fewest tables whose candidate probability at
   the threshold is >= ``min_recall`` (0.95). A pair d bits apart becomes a candidate with
   probability P(d) = 1 - (1 - C(64-d, k) / C(64, k)) ** L (independent bit draws; the balanced
   masks measure higher):

       rows   k   L    P(0-4)  P(6)   P(8)   P(10)  P(12)   measured P(8), seeded masks
       1e3    8   8    1.000   0.999  0.955  0.883  0.775   0.996
       1e5   12  17    1.000   0.995  0.958  0.847  0.668   0.983
       1e6   15  28    1.000   0.997  0.951  0.790  0.550   0.965
       1e7   19  61    1.000   0.999  0.952  0.727  0.415   0.962
       3e8   24 171    1.000   1.000  0.950  0.617  0.253   0.952

   Candidates per row ~ L * bucket_rows / 2 (bounded in n); key rows per row = L (grows like
   n^0.2: the price of a fixed radius of 8 bits). ``chunks`` = a number instead keys contiguous
   chunks (pigeonhole: recall 1 within chunks-1 bits, but buckets of n / 2^(64/chunks) rows).
2. ``map_batches``: one narrow key row per (table, row): group, table, pHash, dHash, sample_id,
   prefer. The group is a hash of (table, key) modulo ceil(n * L / 131072), so a group holds many
   whole buckets and is processed vectorised: ``groupby(group).map_groups``.
3. In a group (``image_group_pairs``), rows are sorted by (table, key, hashes, sample_id); rows
   with equal hashes collapse to the smallest sample_id (verified, counted in table 0); every
   pair of distinct entries in a bucket is a candidate, verified on both hashes; a verified pair
   counts in the first table it collides in ((a ^ b) & mask == 0) only. ``candidate_pairs``
   counts pairs examined (a pair sharing two buckets is examined twice: that is the work);
   ``verified_pairs`` counts distinct pairs. Verified pairs are joined by union-find in the
   group and emitted as star edges.
4. ``dedup.components.resolve_clusters``: connected components over the edges, one representative
   per cluster (highest ``prefer``, then smallest sample_id); the others are dropped with
   ``reason=near_dup_of:<representative sample_id>``.
Decisions depend only on the hashes, sample ids, ``prefer`` and n: the same whatever the block
layout or worker count. Rows with a null hash (or a null confirming hash) are never near duplicates.

Videos (unchanged): keys are (chunk index, chunk value) of each informative frame, default 4
chunks of 16 bits (7-bit chunks of 16 frames would make nearly every pair of videos a
candidate): a matching pair is a candidate when some non-flat frame pair differs in <= 3 bits,
which re-encodes give many times over. ``groupby([key_chunk, key_value]).map_groups`` per
bucket: identical fingerprints collapse, a pair is checked only in the bucket of the *smallest*
key it shares and verified with the frame rule, then step 4.

``run_stats`` (run.json, ``stages.<name>.stats``): mode, threshold, the key scheme (images:
scheme, bits, tables, lsh_seed, candidate_recall_at_threshold, confirm, confirm_threshold;
videos: chunks), candidate pairs, verified pairs, largest bucket, clusters, rows dropped,
largest cluster and the cluster-size histogram (2, 3, 4, 5-8, 9-16, ...).

Known limits: video buckets are verified pairwise in Python, quadratic in bucket size. Transitive
chains A~B~C can join A and C although they are further apart than the threshold (connected
components, as in every clustering dedup); the confirming hash makes chance links rare, which is
what made chains long. A rule that drops a row only when it is within the threshold of its kept
representative needs each cluster's hashes in one place after the components, which
``dedup.components`` does not offer today.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from dedup.components import PREF, UnionFind, edge_table, prefer_values, resolve_clusters, star_edges
from stages.base import ERROR, KEPT, Params, Resources, Stage

_FP = "_fp"
_GROUP, _T, _KEY, _H, _H2 = "_group", "_table", "_key", "_h", "_h2"
_STATS_COLUMNS = ("n_cand", "n_verified", "bucket_size", "is_edge")
VIDEO_DEFAULT_CHUNKS = 4
CONFIRM_THRESHOLD = 10  # dHash bits; see the module docstring


# -- phash (map) ---------------------------------------------------------------------------
class PHashParams(Params):
    column: str = Field("image", description="binary column with encoded image bytes")
    output: str = Field("phash", description="int64 column the 64-bit pHash is written to")
    second_output: str | None = Field("dhash", description="int64 column for the 64-bit difference hash of the "
                                      "same decoded pixels (phash_dedup's confirming check); None: not computed")


class PHashStage(Stage):
    kind = "phash"
    Params = PHashParams
    code_deps = ("dedup",)
    description = ("Add a 64-bit perceptual hash (DCT pHash, draft-mode decode) of each image as an int64 column, "
                   "and its difference hash (dHash) from the same pixels.")
    requires = {"image": pa.binary()}
    produces = {"phash": pa.int64(), "dhash": pa.int64()}
    default_resources = Resources(num_cpus=1, batch_size=64)

    def input_columns(self):
        return {self.params.column: pa.binary()}

    def output_columns(self):
        out = {self.params.output: pa.int64()}
        if self.params.second_output:
            out[self.params.second_output] = pa.int64()
        return out

    def process(self, batch: pd.DataFrame) -> pd.DataFrame:
        from dedup.perceptual import image_hashes_bytes, image_phash_bytes

        second = self.params.second_output
        hashes, seconds, statuses, reasons = [], [], list(batch["status"]), list(batch["reason"])
        for i, data in enumerate(batch[self.params.column]):
            h = h2 = None
            if data is None or len(data) == 0:
                statuses[i], reasons[i] = ERROR, "corrupt_image: no image bytes"
            else:
                try:
                    if second:
                        h, h2 = image_hashes_bytes(bytes(data))
                    else:
                        h = image_phash_bytes(bytes(data))
                except Exception as e:  # Pillow raises many types for bad data
                    statuses[i], reasons[i] = ERROR, f"corrupt_image: {type(e).__name__}: {e}"
            hashes.append(h)
            seconds.append(h2)
        batch[self.params.output] = pd.Series(hashes, index=batch.index, dtype=object)
        if second:
            batch[second] = pd.Series(seconds, index=batch.index, dtype=object)
        batch["status"], batch["reason"] = statuses, reasons
        return batch


# -- phash_dedup (global) ------------------------------------------------------------------
GROUP_KEY_ROWS = 131_072  # key rows per image group-by group: vectorised work in one task


class PHashDedupParams(Params):
    column: str = Field("phash", description="int64 pHash (images) or list<int64> fingerprint (videos)")
    threshold: int = Field(8, ge=0, le=32, description="max Hamming distance (of 64 bits) per image / per frame")
    confirm: str | None = Field("dhash", description="images: int64 second hash (the phash stage's dHash) a pHash "
                                "match must also be within confirm_threshold of; used when the rows have the "
                                "column, None: pHash alone")
    confirm_threshold: int = Field(CONFIRM_THRESHOLD, ge=0, le=64, description="images: max Hamming distance of the "
                                   "confirming hash")
    bits: int | None = Field(None, ge=1, le=32, description="images: sampled bits per LSH key; None: from the row "
                             "count, log2(rows / bucket_rows) clamped to 8..32")
    tables: int | None = Field(None, ge=1, le=4096, description="images: LSH tables; None: the fewest whose candidate "
                               "probability at threshold is >= min_recall. P(candidate | d bits apart) = "
                               "1-(1-C(64-d,bits)/C(64,bits))^tables; defaults at 1M rows (15 bits, 28 tables): "
                               "d=0-4: 1.000, 6: 0.997, 8: 0.951, 10: 0.790, 12: 0.550 (measured on the "
                               "seeded masks at 8: 0.968)")
    bucket_rows: int = Field(32, ge=1, description="images, bits=None: expected rows per LSH bucket for uniformly "
                             "spread hashes (bounds candidates per row: ~tables * bucket_rows / 2)")
    min_recall: float = Field(0.95, gt=0, lt=1, description="images, tables=None: candidate recall at threshold")
    lsh_seed: int = Field(0, description="images: seed of the sampled bit positions")
    chunks: int | None = Field(None, ge=1, le=64,
                               description="LSH chunks per hash; videos: None = 4; images: None = bit-sampling "
                               "LSH, a number = contiguous chunks (pigeonhole: recall 1 within chunks-1 bits, "
                               "buckets of n/2^(64/chunks) rows: quadratic)")
    min_frame_match: float = Field(0.8, gt=0, le=1, description="videos: share of frames that must match")
    max_offset: int = Field(1, ge=0, description="videos: temporal offset tolerance, in sampled frames")
    prefer: str | None = Field(None, description="numeric column: each cluster keeps its highest (ties: smallest sample_id)")
    max_rounds: int = Field(64, ge=1, description="connected-component rounds (large-star/small-star, ~2 log2 of the largest cluster) before giving up")
    partitions: int | None = Field(None, ge=1, description="shuffle partitions (None: Ray Data's default for the bucket group-by; the components step sizes its own from bytes, ~128 MiB each)")


def _video_key_rows(table: pa.Table, column: str, chunks: int, prefer: str | None) -> pa.Table:
    """One row per (chunk index, chunk value) key of the informative frames of every kept video."""
    from dedup.perceptual import fingerprint_keys

    status = np.array([s == KEPT for s in table.column("status").to_pylist()], dtype=bool)
    values = table.column(column).to_pylist()
    ids = table.column("sample_id").to_pylist()
    prefs = prefer_values(table, prefer).to_numpy(zero_copy_only=False)
    kc, kv, sid, pref, fps = [], [], [], [], []
    for i, v in enumerate(values):
        if not status[i] or not v:
            continue
        fp = [int(h) for h in v]
        for j, k in sorted(fingerprint_keys(fp, chunks, skip_flat=True)):
            kc.append(j), kv.append(k), sid.append(ids[i]), pref.append(prefs[i]), fps.append(fp)
    return pa.table({"key_chunk": pa.array(kc, pa.int32()), "key_value": pa.array(kv, pa.int64()),
                     "sample_id": pa.array(sid, pa.string()), PREF: pa.array(pref, pa.float64()),
                     _FP: pa.array(fps, pa.list_(pa.int64()))})


def _group_of(tables: np.ndarray, keys: np.ndarray, groups: int) -> np.ndarray:
    """Group-by group of each (table, key): a splitmix64 mix of both, so buckets spread evenly."""
    z = keys.astype(np.uint64) ^ (tables.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15))
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z % np.uint64(groups)).astype(np.int32)


def _image_key_rows(table: pa.Table, column: str, confirm: str | None, prefer: str | None, masks: np.ndarray,
                    groups: int) -> pa.Table:
    """Narrow key rows: one per (LSH table, kept row with a hash): group, table, hashes, sample_id, prefer.
    Rows without a hash (or without the confirming hash, when confirming) are never near duplicates."""
    from dedup.perceptual import as_unsigned

    ok = pc.fill_null(pc.and_(pc.equal(table.column("status"), KEPT), pc.is_valid(table.column(column))), False)
    if confirm:
        ok = pc.and_(ok, pc.is_valid(table.column(confirm)))
    rows = table.filter(ok)
    n, L = rows.num_rows, len(masks)
    h = rows.column(column).cast(pa.int64()).to_numpy(zero_copy_only=False).astype(np.int64)
    h2 = (rows.column(confirm).cast(pa.int64()).to_numpy(zero_copy_only=False).astype(np.int64) if confirm
          else np.zeros(n, dtype=np.int64))
    t = np.tile(np.arange(L, dtype=np.int16), n)
    keys = (np.repeat(as_unsigned(h), L) & np.tile(masks, n))
    take = pa.array(np.repeat(np.arange(n, dtype=np.int64), L))
    return pa.table({_GROUP: pa.array(_group_of(t, keys, groups)), _T: pa.array(t), _H: pa.array(np.repeat(h, L)),
                     _H2: pa.array(np.repeat(h2, L)), "sample_id": rows.column("sample_id").take(take),
                     PREF: prefer_values(rows, prefer).take(take)})


def image_group_pairs(t: np.ndarray, h: np.ndarray, h2: np.ndarray, masks: np.ndarray, threshold: int,
                      confirm_threshold: int | None):
    """Key rows of one group, sorted by (table, key, h, h2, sample_id) -> the pair decisions.

    Rows with the same table, key and both hashes collapse to their first row (``rep``, the
    smallest sample_id); they are verified duplicates of it, counted in table 0 only. Every
    other pair of distinct entries in a bucket is a candidate, verified by Hamming distance on
    both hashes; a verified pair is kept in the first table it collides in ((a ^ b) & mask ==
    0), so each is reported once. Returns (rep index of each row, verified pairs (i, j) as row
    indices, candidate pairs examined (one per bucket a pair shares), distinct verified pairs,
    largest bucket), pairs weighted by how many rows each entry stands for."""
    from dedup.perceptual import _runs, as_unsigned, bucket_pairs, first_collision

    u, u2 = as_unsigned(h), as_unsigned(h2)
    key = u & masks[t]
    _, starts = _runs([t, key, u, u2])
    rep = np.repeat(starts, np.diff(np.append(starts, len(t))))
    mult = np.diff(np.append(starts, len(t)))
    same = (mult * (mult - 1) // 2)[t[starts] == 0]
    n_cand = n_ver = int(same.sum())
    _, bucket_starts = _runs([t, key])
    largest = int(np.diff(np.append(bucket_starts, len(t))).max()) if len(t) else 0
    et, ek, eu, eu2 = t[starts], key[starts], u[starts], u2[starts]
    i, j = bucket_pairs(et, ek)
    many = bool((mult > 1).any())
    n_cand += int((mult[i] * mult[j]).sum()) if many else len(i)
    ok = np.bitwise_count(eu[i] ^ eu[j]) <= threshold
    if confirm_threshold is not None:
        ok &= np.bitwise_count(eu2[i] ^ eu2[j]) <= confirm_threshold
    i, j = i[ok], j[ok]
    first = first_collision(eu[i] ^ eu[j], masks)
    keep = first == et[i]  # the pair's first shared table: reported there only
    i, j = i[keep], j[keep]
    n_ver += int((mult[i] * mult[j]).sum())
    return rep, starts[i], starts[j], n_cand, n_ver, largest


def _image_group(group: pa.Table, masks: np.ndarray, threshold: int, confirm_threshold: int | None) -> pa.Table:
    """One group of key rows (many LSH buckets) -> star edges of its verified local components + one stats row."""
    from dedup.perceptual import as_unsigned

    t = group.column(_T).to_numpy(zero_copy_only=False).astype(np.int64)
    key = pa.array(as_unsigned(group.column(_H).to_numpy(zero_copy_only=False)) & masks[t])
    order = pc.sort_indices(group.append_column(_KEY, key),
                            sort_keys=[(_T, "ascending"), (_KEY, "ascending"), (_H, "ascending"),
                                       (_H2, "ascending"), ("sample_id", "ascending")])
    g = group.take(order)
    t = g.column(_T).to_numpy(zero_copy_only=False).astype(np.int64)
    rep, a, b, n_cand, n_ver, largest = image_group_pairs(
        t, g.column(_H).to_numpy(zero_copy_only=False), g.column(_H2).to_numpy(zero_copy_only=False), masks,
        threshold, confirm_threshold)
    ids = g.column("sample_id").to_pylist()
    prefs = dict(zip(ids, g.column(PREF).to_pylist()))
    uf = UnionFind([])
    dup = np.flatnonzero((rep != np.arange(len(rep))) & (t == 0))  # identical rows, counted in table 0
    for x, y in zip(rep[dup].tolist(), dup.tolist()):
        uf.union(ids[x], ids[y])
    for x, y in zip(a.tolist(), b.tolist()):
        uf.union(ids[x], ids[y])
    comps: dict[str, list[str]] = {}
    for s_ in uf.parent:
        comps.setdefault(uf.find(s_), []).append(s_)
    parts = [star_edges(c, prefs) for c in comps.values() if len(c) > 1]
    out = _with_stats(pa.concat_tables(parts) if parts else edge_table([], [], []))
    if n_cand:
        out = pa.concat_tables([out, _with_stats(edge_table([""], [""], [0.0]), n_cand, n_ver, largest)])
    return out


def _video_pairs(fps: list[tuple[int, ...]], key: tuple[int, int], chunks: int, threshold: int,
                 min_frame_match: float, max_offset: int):
    """Distinct fingerprints in one bucket: (i, j, verified) for pairs whose smallest shared key is ``key``."""
    from dedup.perceptual import fingerprint_keys, fingerprints_match

    keys = [fingerprint_keys(fp, chunks, skip_flat=True) for fp in fps]
    for i in range(len(fps) - 1):
        for j in range(i + 1, len(fps)):
            if min(keys[i] & keys[j]) != key:
                continue
            yield i, j, fingerprints_match(fps[i], fps[j], threshold, min_frame_match, max_offset)


def _video_bucket(group: pa.Table, chunks: int, threshold: int, min_frame_match: float, max_offset: int) -> pa.Table:
    """One video LSH bucket -> star edges of its verified local components, plus one stats row."""
    from dedup.perceptual import fingerprint_keys

    key = (int(group.column("key_chunk")[0].as_py()), int(group.column("key_value")[0].as_py()))
    members: dict[str, tuple[float, tuple[int, ...]]] = {}
    for s, p, fp in zip(group.column("sample_id").to_pylist(), group.column(PREF).to_pylist(),
                        group.column(_FP).to_pylist()):
        members[s] = (p, tuple(fp))
    if len(members) < 2:
        return _with_stats(edge_table([], [], []))
    ids = sorted(members)
    uniq: dict[tuple[int, ...], list[str]] = {}
    for s in ids:
        uniq.setdefault(members[s][1], []).append(s)
    fps = list(uniq)
    sizes = [len(uniq[f]) for f in fps]
    uf = UnionFind(ids)
    n_cand = n_ver = 0
    for f, same in uniq.items():  # identical fingerprints: counted in the bucket of their smallest key
        if len(same) > 1 and min(fingerprint_keys(f, chunks, skip_flat=True)) == key:
            pairs = len(same) * (len(same) - 1) // 2
            n_cand += pairs
            n_ver += pairs
            for s in same[1:]:
                uf.union(same[0], s)
    for i, j, ok in _video_pairs(fps, key, chunks, threshold, min_frame_match, max_offset):
        n_cand += sizes[i] * sizes[j]
        if ok:
            n_ver += sizes[i] * sizes[j]
            uf.union(uniq[fps[i]][0], uniq[fps[j]][0])
    comps: dict[str, list[str]] = {}
    for s in ids:
        comps.setdefault(uf.find(s), []).append(s)
    prefs = {s: members[s][0] for s in ids}
    parts = [star_edges(c, prefs) for c in comps.values() if len(c) > 1]
    edges = pa.concat_tables(parts) if parts else edge_table([], [], [])
    out = _with_stats(edges)
    if n_cand:
        stats = _with_stats(edge_table([""], [""], [0.0]), n_cand, n_ver, len(ids))
        out = pa.concat_tables([out, stats])
    return out


def _with_stats(edges: pa.Table, n_cand: int = 0, n_ver: int = 0, bucket: int = 0) -> pa.Table:
    """Edge rows (is_edge) or one stats row (counts of the bucket), in one schema."""
    n = edges.num_rows
    is_stats = n_cand > 0
    return (edges.append_column("n_cand", pa.array([n_cand] * n, pa.int64()))
            .append_column("n_verified", pa.array([n_ver] * n, pa.int64()))
            .append_column("bucket_size", pa.array([bucket] * n, pa.int64()))
            .append_column("is_edge", pa.array([not is_stats] * n, pa.bool_())))


class PHashDedupStage(Stage):
    kind = "phash_dedup"
    mode = "global"
    Params = PHashDedupParams
    code_deps = ("dedup",)
    description = ("Drop perceptual near duplicates of images (pHash within a Hamming threshold, confirmed by dHash; "
                   "bit-sampling LSH candidates) or videos (frame-hash fingerprints), one kept per cluster.")
    default_resources = Resources(num_cpus=1, batch_size=1024)

    def input_columns(self):
        cols = {self.params.column: pa.int64()}  # or list<int64>: the type picks the rule
        if self.params.prefer:
            cols[self.params.prefer] = pa.float64()
        return cols  # the confirming hash is read when present (video columns have none)

    def manifest_columns(self) -> list[str]:
        return []

    def chunks_for(self, video: bool) -> int | None:
        """Chunks of the contiguous-chunk keys: videos (default 4), images only when ``chunks`` is set."""
        p = self.params
        return p.chunks or (VIDEO_DEFAULT_CHUNKS if video else None)

    def image_masks(self, n: int) -> tuple[np.ndarray, dict]:
        """The key masks for ``n`` image rows, and how they were chosen (for run_stats)."""
        from dedup.perceptual import candidate_probability, chunk_masks, lsh_bits_for, lsh_tables_for

        p = self.params
        if p.chunks:
            return chunk_masks(p.chunks), {"scheme": "chunks", "chunks": p.chunks}
        bits = p.bits or lsh_bits_for(n, p.bucket_rows)
        tables = p.tables or lsh_tables_for(p.threshold, bits, p.min_recall)
        from dedup.perceptual import lsh_masks

        return lsh_masks(tables, bits, p.lsh_seed), {
            "scheme": "bit_sampling", "bits": bits, "tables": tables, "lsh_seed": p.lsh_seed,
            "candidate_recall_at_threshold": round(candidate_probability(p.threshold, tables, bits), 4)}

    def transform(self, ds, seed: int, log: Callable[[str], None]):
        from ray.data.aggregate import Max, Sum
        from ray.data.expressions import col

        p = self.params
        schema = ds.schema()
        if schema is None:
            return ds
        names, types = list(schema.names), list(schema.types)
        if p.column not in names:
            raise ValueError(f"{self.name}: column {p.column!r} is not in the rows ({names})")
        ctype = types[names.index(p.column)]
        if not isinstance(ctype, pa.DataType):  # pandas blocks: only an integer dtype is unambiguous
            ctype = pa.int64() if np.issubdtype(np.dtype(ctype), np.integer) else ctype
        video = isinstance(ctype, pa.DataType) and (pa.types.is_list(ctype) or pa.types.is_large_list(ctype))
        if not (video or (isinstance(ctype, pa.DataType) and pa.types.is_integer(ctype))):
            raise ValueError(f"{self.name}: column {p.column!r} holds {ctype}; expected int64 (image pHash) "
                             "or list<int64> (video fingerprint)")
        mode = "video" if video else "image"
        if video:
            chunks = self.chunks_for(True)
            log(f"{self.name}: video near duplicates on {p.column!r}: {p.min_frame_match:g} of frames within "
                f"{p.threshold} bits (offset <= {p.max_offset}); LSH keys: {chunks} chunks of ~{64 // chunks} bits")
            keys = ds.map_batches(_video_key_rows, fn_args=(p.column, chunks, p.prefer), batch_format="pyarrow",
                                  batch_size=self.default_resources.batch_size)
            buckets = (keys.groupby(["key_chunk", "key_value"], num_partitions=p.partitions)
                       .map_groups(_video_bucket, fn_args=(chunks, p.threshold, p.min_frame_match, p.max_offset),
                                   batch_format="pyarrow"))
            scheme = {"chunks": chunks, "min_frame_match": p.min_frame_match, "max_offset": p.max_offset}
        else:
            confirm = p.confirm if p.confirm and p.confirm in names else None
            cols = ["sample_id", "status", p.column] + [c for c in (confirm, p.prefer) if c and c != p.column]
            narrow = ds.select_columns(list(dict.fromkeys(cols))).materialize()
            n = narrow.count()
            masks, scheme = self.image_masks(n)
            groups = max(1, -(-n * len(masks) // GROUP_KEY_ROWS))
            thr2 = p.confirm_threshold if confirm else None
            scheme = {**scheme, "confirm": confirm, **({"confirm_threshold": thr2} if confirm else {})}
            log(f"{self.name}: image near duplicates on {p.column!r}: Hamming <= {p.threshold} of 64 bits"
                + (f", confirmed by {confirm!r} <= {thr2}" if confirm else ", no confirming hash")
                + f"; keys: {scheme} over {n} rows, {groups} group(s)")
            keys = narrow.map_batches(_image_key_rows, fn_args=(p.column, confirm, p.prefer, masks, groups),
                                      batch_format="pyarrow", batch_size=self.default_resources.batch_size)
            buckets = (keys.groupby(_GROUP, num_partitions=p.partitions)
                       .map_groups(_image_group, fn_args=(masks, p.threshold, thr2), batch_format="pyarrow"))
        buckets = buckets.materialize()
        agg = buckets.aggregate(Sum("n_cand"), Sum("n_verified"), Max("bucket_size")) if buckets.count() else {}
        candidates, verified = int(agg.get("sum(n_cand)") or 0), int(agg.get("sum(n_verified)") or 0)
        largest_bucket = int(agg.get("max(bucket_size)") or 0)  # edge rows carry 0s: these are the stats rows
        log(f"{self.name}: {candidates} candidate pairs, {verified} verified")
        if verified:
            edges = buckets.filter(expr=col("is_edge")).drop_columns(list(_STATS_COLUMNS))
            out, clusters = resolve_clusters(ds, edges, self.name, p.max_rounds, log, p.partitions)
        else:  # nothing to cluster: the rows go on untouched
            out, clusters = ds, {"clusters": 0, "rows_dropped": 0, "largest_cluster": 0, "cluster_sizes": {}}
        self.run_stats = {"mode": mode, "column": p.column, "threshold": p.threshold, **scheme,
                          "candidate_pairs": candidates, "verified_pairs": verified,
                          "largest_bucket": largest_bucket, **clusters}
        log(f"{self.name}: {clusters['clusters']} clusters, {clusters['rows_dropped']} rows dropped, "
            f"sizes {clusters['cluster_sizes']}")
        return out
