"""phash and phash_dedup: perceptual near-duplicate removal for images and videos.

``phash`` (map, stateless): adds an int64 ``phash`` column (``dedup.perceptual.image_phash_bytes``:
the 64-bit DCT pHash, JPEGs decoded in draft mode at ~1/8 scale since the hash only needs a
32x32 thumbnail). Missing or undecodable bytes make an ``error`` row
(``corrupt_image: <why>``); put it after ``decode`` and such rows never reach it.

``phash_dedup`` (global): near duplicates over a hash column, whose Arrow type picks the rule
(``dedup/perceptual.py`` states both precisely):
- ``int64`` (one pHash per image): Hamming distance <= ``threshold`` (default 8 of 64 bits);
- ``list<int64>`` (a video fingerprint: one pHash per uniformly sampled frame): at least
  ``min_frame_match`` (0.8) of the shorter fingerprint's frames are within ``threshold`` bits of
  the aligned frame of the other, at the best offset in ``[-max_offset, max_offset]`` (1 frame);
  a longer fingerprint is first resampled uniformly to the shorter length.

Why 8 bits: measured on twelve scikit-image photos (tests/test_perceptual_dedup.py), JPEG quality
10, PNG, 0.5x/1.5x rescales and +-20% brightness move 0-6 bits; 1-3% crops 0-8; 5% off one side
4-12 and 10% off every side 10-18 (pHash is not a crop detector); different photos are 20+ bits
apart (median 32). 8 keeps the re-encode
and rescale family with margin while staying far from the unrelated tail, which matters at scale
where rare chance pairs become many; a larger threshold also means shorter LSH chunks (64/(t+1)
bits), bigger buckets and more candidate checks.

Algorithm, all in Ray Data (the driver sees only counts):
1. ``map_batches``: one row per (chunk index, chunk value, sample_id) LSH key, carrying the
   fingerprint and the ``prefer`` value. Images key all ``chunks`` chunks of their hash, default
   ``threshold + 1`` so pigeonhole guarantees that every pair within the threshold shares a key
   (recall of the candidate step is exactly 1). Videos key each distinct (chunk, value) of their
   informative frames, default 4 chunks of 16 bits (7-bit chunks of 16 frames would make nearly
   every pair of videos a candidate): a matching pair is a candidate when some non-flat frame pair
   differs in <= 3 bits, which re-encodes give many times over.
2. ``groupby([key_chunk, key_value]).map_groups``: in each bucket, identical fingerprints are
   collapsed, then each pair of distinct fingerprints is a candidate only in the bucket of the
   *smallest* key they share (so each pair is counted and checked once), and is VERIFIED with the
   exact rule above. Verified pairs are joined with union-find inside the bucket and emitted as
   star edges (member <-> smallest member of the local component).
3. ``dedup.components.resolve_clusters``: connected components over the edges by label
   propagation, one representative per cluster (highest ``prefer``, then smallest sample_id);
   the others are dropped with ``reason=near_dup_of:<representative sample_id>``.
Rows with a null or empty fingerprint are never near duplicates.

``run_stats`` (run.json, ``stages.<name>.stats``): mode, threshold, chunks, candidate pairs,
verified pairs, largest bucket, clusters, rows dropped, largest cluster and the cluster-size
histogram (2, 3, 4, 5-8, 9-16, ...).

Known limits: each bucket verifies its distinct fingerprints pairwise (vectorised for images),
so work grows as the square of bucket sizes, about n / 2^(64/(t+1)) for n images: fine to ~10M
images at t=8 on a cluster; past that, lower ``threshold`` or raise ``chunks`` (shorter buckets,
recall no longer guaranteed beyond ``chunks - 1`` bits). Transitive chains A~B~C can join A and C
although they are further apart than the threshold (as in every clustering dedup).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
from pydantic import Field

from dedup.components import PREF, edge_table, prefer_values, resolve_clusters, star_edges
from stages.base import ERROR, KEPT, Params, Resources, Stage

_FP = "_fp"
_STATS_COLUMNS = ("n_cand", "n_verified", "bucket_size", "is_edge")
VIDEO_DEFAULT_CHUNKS = 4


# -- phash (map) ---------------------------------------------------------------------------
class PHashParams(Params):
    column: str = Field("image", description="binary column with encoded image bytes")
    output: str = Field("phash", description="int64 column the 64-bit pHash is written to")


class PHashStage(Stage):
    kind = "phash"
    Params = PHashParams
    code_deps = ("dedup",)
    description = "Add a 64-bit perceptual hash (DCT pHash, draft-mode decode) of each image as an int64 column."
    requires = {"image": pa.binary()}
    produces = {"phash": pa.int64()}
    default_resources = Resources(num_cpus=1, batch_size=64)

    def input_columns(self):
        return {self.params.column: pa.binary()}

    def output_columns(self):
        return {self.params.output: pa.int64()}

    def process(self, batch: pd.DataFrame) -> pd.DataFrame:
        from dedup.perceptual import image_phash_bytes

        hashes, statuses, reasons = [], list(batch["status"]), list(batch["reason"])
        for i, data in enumerate(batch[self.params.column]):
            h = None
            if data is None or len(data) == 0:
                statuses[i], reasons[i] = ERROR, "corrupt_image: no image bytes"
            else:
                try:
                    h = image_phash_bytes(bytes(data))
                except Exception as e:  # Pillow raises many types for bad data
                    statuses[i], reasons[i] = ERROR, f"corrupt_image: {type(e).__name__}: {e}"
            hashes.append(h)
        batch[self.params.output] = pd.Series(hashes, index=batch.index, dtype=object)
        batch["status"], batch["reason"] = statuses, reasons
        return batch


# -- phash_dedup (global) ------------------------------------------------------------------
class PHashDedupParams(Params):
    column: str = Field("phash", description="int64 pHash (images) or list<int64> fingerprint (videos)")
    threshold: int = Field(8, ge=0, le=32, description="max Hamming distance (of 64 bits) per image / per frame")
    chunks: int | None = Field(None, ge=1, le=64,
                               description="LSH chunks per hash; None: threshold+1 for images (exact recall), 4 for videos")
    min_frame_match: float = Field(0.8, gt=0, le=1, description="videos: share of frames that must match")
    max_offset: int = Field(1, ge=0, description="videos: temporal offset tolerance, in sampled frames")
    prefer: str | None = Field(None, description="numeric column: each cluster keeps its highest (ties: smallest sample_id)")
    max_rounds: int = Field(64, ge=1, description="label-propagation rounds before giving up")
    partitions: int | None = Field(None, ge=1, description="shuffle partitions per groupby (None: Ray Data's default, 200)")


def _key_rows(table: pa.Table, column: str, chunks: int, video: bool, prefer: str | None) -> pa.Table:
    """One row per LSH key of every kept row that has a fingerprint."""
    from dedup.perceptual import chunk_values, fingerprint_keys

    status = np.array([s == KEPT for s in table.column("status").to_pylist()], dtype=bool)
    values = table.column(column).to_pylist()
    ids = table.column("sample_id").to_pylist()
    prefs = prefer_values(table, prefer).to_numpy(zero_copy_only=False)
    rows = [i for i, v in enumerate(values) if status[i] and v is not None and (not video or len(v) > 0)]
    kc, kv, sid, pref, fps = [], [], [], [], []
    if video:
        for i in rows:
            fp = [int(h) for h in values[i]]
            for j, v in sorted(fingerprint_keys(fp, chunks, skip_flat=True)):
                kc.append(j), kv.append(v), sid.append(ids[i]), pref.append(prefs[i]), fps.append(fp)
    elif rows:
        hashes = np.array([values[i] for i in rows], dtype=np.int64)
        vals = chunk_values(hashes, chunks)  # (n, chunks)
        kc = np.tile(np.arange(chunks, dtype=np.int32), len(rows)).tolist()
        kv = vals.reshape(-1).tolist()
        sid = [ids[i] for i in rows for _ in range(chunks)]
        pref = np.repeat(prefs[rows], chunks).tolist()
        fps = [[int(h)] for h in np.repeat(hashes, chunks)]
    return pa.table({"key_chunk": pa.array(kc, pa.int32()), "key_value": pa.array(kv, pa.int64()),
                     "sample_id": pa.array(sid, pa.string()), PREF: pa.array(pref, pa.float64()),
                     _FP: pa.array(fps, pa.list_(pa.int64()))})


class _UnionFind:
    def __init__(self, items):
        self.parent = {x: x for x in items}

    def find(self, x):
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a, b):
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _image_pairs(hashes: list[int], key_chunk: int, chunks: int, threshold: int):
    """Distinct image hashes sharing chunk ``key_chunk``: (i, j, verified) for the pairs whose
    first equal chunk is this one (pairs equal on an earlier chunk are that bucket's)."""
    from dedup.perceptual import as_unsigned, chunk_masks, popcount

    h = as_unsigned(hashes)
    earlier_masks = chunk_masks(chunks)[:key_chunk]
    for i in range(len(h) - 1):
        x = h[i] ^ h[i + 1:]
        earlier = np.zeros(len(x), dtype=bool)
        for m in earlier_masks:
            earlier |= (x & m) == 0
        close = popcount(x) <= threshold
        for k in np.flatnonzero(~earlier):
            yield i, i + 1 + int(k), bool(close[k])


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


def _bucket(group: pa.Table, video: bool, chunks: int, threshold: int, min_frame_match: float,
            max_offset: int) -> pa.Table:
    """One LSH bucket -> star edges of its verified local components, plus one stats row."""
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
    uf = _UnionFind(ids)
    n_cand = n_ver = 0
    for f, same in uniq.items():  # identical fingerprints: counted in the bucket of their smallest key
        if len(same) > 1 and min(fingerprint_keys(f, chunks, skip_flat=video)) == key:
            pairs = len(same) * (len(same) - 1) // 2
            n_cand += pairs
            n_ver += pairs
            for s in same[1:]:
                uf.union(same[0], s)
    if video:
        pairs = _video_pairs(fps, key, chunks, threshold, min_frame_match, max_offset)
    else:
        pairs = _image_pairs([f[0] for f in fps], key[0], chunks, threshold)
    for i, j, ok in pairs:
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
    description = ("Drop perceptual near duplicates of images (pHash, Hamming threshold) or videos (frame-hash "
                   "fingerprints), LSH on hash chunks, verified pairs, one kept per cluster.")
    default_resources = Resources(num_cpus=1, batch_size=1024)

    def input_columns(self):
        cols = {self.params.column: pa.int64()}  # or list<int64>: the type picks the rule
        if self.params.prefer:
            cols[self.params.prefer] = pa.float64()
        return cols

    def manifest_columns(self) -> list[str]:
        return []

    def chunks_for(self, video: bool) -> int:
        p = self.params
        return p.chunks or (VIDEO_DEFAULT_CHUNKS if video else min(p.threshold + 1, 64))

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
        chunks = self.chunks_for(video)
        mode = "video" if video else "image"
        rule = (f"{p.min_frame_match:g} of frames within {p.threshold} bits (offset <= {p.max_offset})" if video
                else f"Hamming <= {p.threshold} of 64 bits")
        log(f"{self.name}: {mode} near duplicates on {p.column!r}: {rule}; LSH keys: {chunks} chunks of "
            f"~{64 // chunks} bits")
        keys = ds.map_batches(_key_rows, fn_args=(p.column, chunks, video, p.prefer), batch_format="pyarrow",
                              batch_size=self.default_resources.batch_size)
        buckets = (keys.groupby(["key_chunk", "key_value"], num_partitions=p.partitions)
                   .map_groups(_bucket, fn_args=(video, chunks, p.threshold, p.min_frame_match, p.max_offset),
                               batch_format="pyarrow")
                   .materialize())
        agg = buckets.aggregate(Sum("n_cand"), Sum("n_verified"), Max("bucket_size")) if buckets.count() else {}
        candidates, verified = int(agg.get("sum(n_cand)") or 0), int(agg.get("sum(n_verified)") or 0)
        largest_bucket = int(agg.get("max(bucket_size)") or 0)  # edge rows carry 0s: these are the stats rows
        log(f"{self.name}: {candidates} candidate pairs, {verified} verified")
        if verified:
            edges = buckets.filter(expr=col("is_edge")).drop_columns(list(_STATS_COLUMNS))
            out, clusters = resolve_clusters(ds, edges, self.name, p.max_rounds, log, p.partitions)
        else:  # nothing to cluster: the rows go on untouched
            out, clusters = ds, {"clusters": 0, "rows_dropped": 0, "largest_cluster": 0, "cluster_sizes": {}}
        self.run_stats = {"mode": mode, "column": p.column, "threshold": p.threshold, "chunks": chunks,
                          **({"min_frame_match": p.min_frame_match, "max_offset": p.max_offset} if video else {}),
                          "candidate_pairs": candidates, "verified_pairs": verified,
                          "largest_bucket": largest_bucket, **clusters}
        log(f"{self.name}: {clusters['clusters']} clusters, {clusters['rows_dropped']} rows dropped, "
            f"sizes {clusters['cluster_sizes']}")
        return out
