"""Derive per-stage manifests from a segment's checkpoint fragments.

A segment's fragments hold every row that entered the segment, with the
stage that decided a non-kept status in ``_decided_at``. For stage *i* of the
segment, a row entered it when it was decided at *i* or later (or never), and
its status there is its final status when decided at *i*, else ``kept``. So
manifests need no extra bookkeeping while rows stream, and are written here,
one fragment at a time, with flat memory (pipeline/parquet_sink.py coalesces
the fragments into large row groups, so even the Parquet footer stays small).
"""
from __future__ import annotations

from collections import Counter
from contextlib import ExitStack

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from manifests.schema import MANIFEST_BASE
from pipeline import storage
from pipeline.parquet_sink import ParquetSink
from stages.base import CHUNK_COLUMN, DECIDED_AT_COLUMN, DROPPED, ERROR, KEPT


def manifest_uri(run_dir: str, stage: str) -> str:
    return storage.join(run_dir, "manifests", f"{stage}.parquet")


def _stage_view(table: pa.Table, stage_names: list[str], index: int, extra: list[str]) -> pa.Table:
    later = set(stage_names[index:])
    decided = table.column(DECIDED_AT_COLUMN).to_pylist()
    entered = pa.array([d is None or d in later for d in decided])
    here = pa.array([d == stage_names[index] for d in decided])
    sub = table.filter(entered)
    here = here.filter(entered)
    status = pc.if_else(here, sub.column("status"), pa.scalar(KEPT))
    reason = pc.if_else(here, sub.column("reason"), pa.scalar(None, pa.string()))
    cols = {c: sub.column(c) for c in MANIFEST_BASE}
    cols["status"], cols["reason"] = status, reason
    for c in extra:
        if c in sub.column_names and c not in cols:
            cols[c] = sub.column(c)
    return pa.table(cols)


def write_segment_manifests(
    run_dir: str, fragment_uris: list[str], stage_names: list[str], extra_columns: dict[str, list[str]],
) -> tuple[dict[str, dict], dict[str, int]]:
    """Write ``manifests/<stage>.parquet`` for each stage of a segment.

    Returns counts per stage and, from the same single read of the fragments, the rows each
    chunk kept at the end of the segment (what the next segment must see)."""
    counts: dict[str, dict] = {}
    sinks = {s: ParquetSink(manifest_uri(run_dir, s)) for s in stage_names}
    tallies = {s: Counter() for s in stage_names}
    reasons = {s: Counter() for s in stage_names}
    sources = {s: Counter() for s in stage_names}
    kept_by_chunk: Counter = Counter()
    wanted = set(MANIFEST_BASE) | {DECIDED_AT_COLUMN, CHUNK_COLUMN} | {c for cs in extra_columns.values() for c in cs}
    with ExitStack() as stack:
        for sink in sinks.values():
            stack.enter_context(sink)
        for uri in fragment_uris:
            fs, path = storage.resolve(uri)
            schema_names = pq.read_schema(path, filesystem=fs).names
            table = pq.read_table(path, filesystem=fs, columns=[c for c in schema_names if c in wanted])
            for chunk, st in zip(table.column(CHUNK_COLUMN).to_pylist(), table.column("status").to_pylist()):
                kept_by_chunk[chunk] += st == KEPT
            for i, stage in enumerate(stage_names):
                view = _stage_view(table, stage_names, i, extra_columns.get(stage, []))
                if view.num_rows == 0 and sinks[stage].used:
                    continue
                sinks[stage].write(view)
                for st, src, rs in zip(view.column("status").to_pylist(), view.column("source").to_pylist(),
                                       view.column("reason").to_pylist()):
                    tallies[stage][st] += 1
                    sources[stage][(src, st)] += 1
                    if st != KEPT and rs:
                        reasons[stage][reason_key(rs)] += 1
    for stage in stage_names:
        if not sinks[stage].used:  # nothing entered: still write an empty manifest
            storage.write_parquet(manifest_uri(run_dir, stage), pa.table({c: pa.array([], pa.string()) for c in MANIFEST_BASE}))
        t = tallies[stage]
        counts[stage] = {
            "in": sum(t.values()), KEPT: t[KEPT], DROPPED: t[DROPPED], ERROR: t[ERROR],
            "reasons": dict(reasons[stage].most_common(20)),
            "sources": _by_source(sources[stage]),
        }
    return counts, dict(kept_by_chunk)


def write_sink_manifest(run_dir: str, stage: str, part_uris: list[str]) -> dict:
    """A sink (shard) writes index parts of the rows it wrote; every one of them was kept."""
    src: Counter = Counter()
    with ParquetSink(manifest_uri(run_dir, stage)) as sink:
        for uri in part_uris:
            fs, path = storage.resolve(uri)
            t = pq.read_table(path, filesystem=fs)
            cols = {c: t.column(c) for c in ("sample_id", "source", "source_key")}
            cols["status"] = pa.array([KEPT] * t.num_rows, pa.string())
            cols["reason"] = pa.nulls(t.num_rows, pa.string())
            for c in t.column_names:
                cols.setdefault(c, t.column(c))
            sink.write(pa.table(cols))
            src.update((s, KEPT) for s in t.column("source").to_pylist())
    n = sink.rows
    if not sink.used:
        storage.write_parquet(manifest_uri(run_dir, stage), pa.table({c: pa.array([], pa.string()) for c in MANIFEST_BASE}))
    return {"in": n, KEPT: n, DROPPED: 0, ERROR: 0, "reasons": {}, "sources": _by_source(src)}


def reason_key(reason: str) -> str:
    """Group reasons by their stable part: 'near_dup_of:<id>' -> 'near_dup_of', 'corrupt_image: x' -> 'corrupt_image'."""
    return reason.split(":", 1)[0].strip()


def _by_source(counter: Counter) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for (src, st), n in counter.items():
        out.setdefault(src or "", {KEPT: 0, DROPPED: 0, ERROR: 0})[st] = n
    return out
