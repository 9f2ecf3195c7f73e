"""Checkpoint folders: Parquet fragments committed per chunk, plus records.

Layout of ``RUN_DIR/checkpoints/<stage>/``::

    _started.json        fingerprint of the work in progress (written first)
    counts/<chunk>.json  rows a source unit produced (source segments only)
    parts/<chunk>--n<rows>--<hash>.parquet   all rows of one block of one chunk
    _SUCCESS.json        completion record: fingerprint, per-chunk and per-stage counts

A fragment's name carries its chunk and row count, so finding which chunks are
complete after a crash is a directory listing, and its hash is over the sample
ids it holds, so a retried write of the same block lands on the same name.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import pyarrow as pa

from pipeline import storage

_FRAGMENT_RE = re.compile(r"^(?P<chunk>[a-z0-9_]+-\d+)--n(?P<rows>\d+)--(?P<hash>[0-9a-f]+)\.parquet$")


@dataclass(frozen=True)
class Fragment:
    uri: str
    chunk: str
    rows: int
    size: int = 0  # bytes on storage (from the listing; 0 when unknown)


def fragment_name(chunk: str, sample_ids: list[str]) -> str:
    digest = hashlib.sha1("\n".join(sample_ids).encode("utf-8")).hexdigest()[:16]
    return f"{chunk}--n{len(sample_ids)}--{digest}.parquet"


class Checkpoint:
    def __init__(self, run_dir: str, stage: str):
        self.run_dir = run_dir
        self.stage = stage
        self.root = storage.join(run_dir, "checkpoints", stage)
        self.parts = storage.join(self.root, "parts")
        self.counts = storage.join(self.root, "counts")

    # -- records -------------------------------------------------------------
    def completion(self) -> dict | None:
        uri = storage.join(self.root, "_SUCCESS.json")
        return storage.read_json(uri) if storage.exists(uri) else None

    def is_complete(self, fingerprint: str) -> bool:
        rec = self.completion()
        return rec is not None and rec.get("fingerprint") == fingerprint

    def prepare(self, fingerprint: str, force: bool) -> bool:
        """Get ready to (re)run; returns True when earlier partial work is resumed."""
        started_uri = storage.join(self.root, "_started.json")
        if not force and storage.exists(started_uri) and not storage.exists(storage.join(self.root, "_SUCCESS.json")):
            if storage.read_json(started_uri).get("fingerprint") == fingerprint:
                return True
        storage.rmtree(self.root)
        storage.makedirs(self.parts)
        storage.write_json(started_uri, {"fingerprint": fingerprint})
        return False

    def finish(self, record: dict) -> None:
        storage.write_json(storage.join(self.root, "_SUCCESS.json"), record)

    # -- fragments -----------------------------------------------------------
    def fragments(self) -> list[Fragment]:
        out = []
        for info in storage.list_files(self.parts, ".parquet"):
            m = _FRAGMENT_RE.match(info.base_name)
            if m:
                out.append(Fragment(uri=info.path if "://" not in self.parts else storage.join(self.parts, info.base_name),
                                    chunk=m["chunk"], rows=int(m["rows"]), size=int(info.size or 0)))
        return out

    def rows_by_chunk(self) -> dict[str, int]:
        rows: dict[str, int] = {}
        for f in self.fragments():
            rows[f.chunk] = rows.get(f.chunk, 0) + f.rows
        return rows

    def source_counts(self) -> dict[str, int]:
        out = {}
        for info in storage.list_files(self.counts, ".json"):
            out[info.base_name[: -len(".json")]] = int(storage.read_json(storage.join(self.counts, info.base_name))["rows"])
        return out

    def drop_chunks(self, chunks: set[str]) -> None:
        """Remove the fragments of incomplete chunks before they are redone."""
        for f in self.fragments():
            if f.chunk in chunks:
                storage.remove(f.uri)

    def write_fragment(self, chunk: str, table: pa.Table) -> Fragment:
        ids = table.column("sample_id").to_pylist()
        uri = storage.join(self.parts, fragment_name(chunk, ids))
        storage.write_parquet(uri, table)
        return Fragment(uri=uri, chunk=chunk, rows=table.num_rows)

    def write_source_count(self, chunk: str, rows: int) -> None:
        storage.write_json(storage.join(self.counts, f"{chunk}.json"), {"rows": rows})


def row_bytes(uris: list[str]) -> dict[str, int]:
    """Rows and uncompressed column bytes of checkpoint fragments, from their Parquet footers:
    what a global stage reading them loads per row (its shuffles move a subset of those columns),
    reported in run.json so the cost of a shuffle per row is a measured figure."""
    import pyarrow.parquet as pq

    rows = nbytes = 0
    for uri in uris:
        fs, path = storage.resolve(uri)
        meta = pq.ParquetFile(path, filesystem=fs).metadata
        for i in range(meta.num_row_groups):
            rg = meta.row_group(i)
            rows += rg.num_rows
            nbytes += rg.total_byte_size
    return {"rows": rows, "bytes": nbytes}

