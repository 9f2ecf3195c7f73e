"""Media by reference: rows carry where their bytes are, not the bytes.

A 300M-row corpus of ~100 KB images is 30 TB; every checkpoint and shuffle that carried the bytes
cost that much again. So a binary media column ``X`` (an image) lives in checkpoints only as
``X_ref``, a string naming a byte range and the content's hash::

    <blake2b-128 hex>:<offset>:<length>:<uri>

The range is where the bytes already are: a member inside an uncompressed tar, an image file
named by a JSONL/Parquet row (offset 0), on local disk or ``s3://``. What cannot be addressed in
the source (inline bytes in a Parquet column, a gzip tar, bytes a stage made: a re-encode, a
rendered chart) is written once to a **media store**: content-named pack files
(``<store>/<hh>/<hash>.pack``, the name a hash of the items it holds, so a retried write lands on
the same file and a rerun never deletes what a later checkpoint still references).

A stage that needs the pixels declares the binary column as an input, as before; the executor
fetches it by reference inside the task (``fetch``: one open per file, nearby ranges read in one
request) and drops it again before the checkpoint. A range whose bytes no longer hash to the
reference (the source file changed or was truncated after ingest) is a ``MediaError`` naming the
file: an error row in a map stage, a stopped run in a sink, never wrong bytes in a shard.
"""
from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Sequence

import pyarrow as pa

from pipeline import storage

REF_SUFFIX = "_ref"
# Ranges closer than this are read in one request (tar members sit between captions and JSON).
COALESCE_GAP = 256 * 1024
COALESCE_SPAN = 16 * 1024 * 1024
PACK_BYTES = 64 * 1024 * 1024  # a pack file holds at most about this much


def ref_column(column: str) -> str:
    return column + REF_SUFFIX


def digest(data: bytes) -> str:
    """The content hash a reference carries (the same blake2b-128 ingest and decode use)."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def is_referenced_type(t: pa.DataType) -> bool:
    """Columns stored by reference: plain binary (one image per row). Lists of bytes (video frames,
    an instruction sample's images) still travel inline."""
    return pa.types.is_binary(t) or pa.types.is_large_binary(t)


def referenced_columns(columns: dict[str, pa.DataType]) -> list[str]:
    return [c for c, t in columns.items() if is_referenced_type(t)]


def checkpoint_columns(columns: dict[str, pa.DataType]) -> dict[str, pa.DataType]:
    """What a checkpoint stores for these columns: each referenced column becomes its ``_ref``."""
    out: dict[str, pa.DataType] = {}
    for c, t in columns.items():
        if is_referenced_type(t):
            out[ref_column(c)] = pa.string()
        else:
            out[c] = t
    return out


def flight_columns(columns: dict[str, pa.DataType]) -> dict[str, pa.DataType]:
    """What rows hold between stages of one segment: the bytes (already read) and their ``_ref``."""
    out = dict(columns)
    for c in referenced_columns(columns):
        out[ref_column(c)] = pa.string()
    return out


@dataclass(frozen=True)
class MediaRef:
    uri: str
    offset: int
    length: int
    hash: str

    def encode(self) -> str:
        return f"{self.hash}:{self.offset}:{self.length}:{self.uri}"

    @staticmethod
    def decode(text: str) -> "MediaRef":
        try:
            h, off, n, uri = text.split(":", 3)
            return MediaRef(uri, int(off), int(n), h)
        except ValueError:
            raise MediaError(f"media_ref_invalid: {text[:200]!r} is not <hash>:<offset>:<length>:<uri>") from None


def ref_for(uri: str, offset: int, data: bytes) -> str:
    return MediaRef(uri, offset, len(data), digest(data)).encode()


class MediaError(Exception):
    """A reference whose bytes cannot be had as ingested; the message is a row reason."""


def _spans(refs: list[tuple[int, MediaRef]]) -> list[tuple[int, int, list[tuple[int, MediaRef]]]]:
    """Sorted ranges of one file merged into (start, end, members) read requests."""
    refs = sorted(refs, key=lambda x: (x[1].offset, x[0]))
    spans: list[tuple[int, int, list]] = []
    for i, r in refs:
        end = r.offset + r.length
        if spans and r.offset - spans[-1][1] <= COALESCE_GAP and end - spans[-1][0] <= COALESCE_SPAN:
            start, old_end, members = spans[-1]
            spans[-1] = (start, max(old_end, end), members + [(i, r)])
        else:
            spans.append((r.offset, end, [(i, r)]))
    return spans


def fetch(refs: Sequence[str | None]) -> list[bytes | MediaError | None]:
    """The bytes behind each reference (None stays None), in order; a reference that cannot be
    served as ingested gives a ``MediaError`` in its place instead of raising, so one changed file
    costs only its own rows. One open per file, ranges sorted and merged (``COALESCE_GAP``)."""
    out: list[bytes | MediaError | None] = [None] * len(refs)
    by_uri: dict[str, list[tuple[int, MediaRef]]] = defaultdict(list)
    for i, text in enumerate(refs):
        if text is None:
            continue
        try:
            r = MediaRef.decode(text)
        except MediaError as e:
            out[i] = e
            continue
        by_uri[r.uri].append((i, r))
    for uri, items in by_uri.items():
        try:
            fs, path = storage.resolve(uri)
            f = fs.open_input_file(path)
        except (OSError, ValueError) as e:
            for i, _ in items:
                out[i] = MediaError(f"media_missing: {uri}: {type(e).__name__}: {e}")
            continue
        with f:
            size = f.size()
            for start, end, members in _spans(items):
                try:
                    block = f.read_at(end - start, start) if end <= size else b""
                except OSError as e:
                    for i, _ in members:
                        out[i] = MediaError(f"media_missing: {uri}: {type(e).__name__}: {e}")
                    continue
                for i, r in members:
                    data = block[r.offset - start: r.offset - start + r.length]
                    if len(data) != r.length:
                        out[i] = MediaError(f"media_changed: {uri}: bytes {r.offset}-{r.offset + r.length} are past "
                                            f"the end of the file ({size} bytes): it changed after ingest")
                    elif digest(data) != r.hash:
                        out[i] = MediaError(f"media_changed: {uri}: bytes {r.offset}-{r.offset + r.length} no longer "
                                            f"hash to {r.hash}: the file changed after ingest")
                    else:
                        out[i] = bytes(data)
    return out


def fetch_strict(refs: Sequence[str | None]) -> list[bytes | None]:
    """``fetch`` for sinks: the first reference that cannot be served stops the caller."""
    got = fetch(refs)
    for g in got:
        if isinstance(g, MediaError):
            raise g
    return got  # type: ignore[return-value]


def store(items: Iterable[bytes], store_uri: str) -> list[str]:
    """Write items into content-named pack files under ``store_uri``; returns their references.
    Idempotent: the same items give the same packs, and a pack that exists is not written again."""
    items = list(items)
    refs: list[str] = []
    batch: list[bytes] = []
    size = 0

    def flush() -> None:
        nonlocal batch, size
        if not batch:
            return
        hashes = [digest(b) for b in batch]
        name = hashlib.blake2b("\n".join(hashes).encode(), digest_size=16).hexdigest()
        uri = storage.join(store_uri, name[:2], f"{name}.pack")
        if not storage.exists(uri):
            storage.write_bytes(uri, b"".join(batch))
        offset = 0
        for b, h in zip(batch, hashes):
            refs.append(MediaRef(uri, offset, len(b), h).encode())
            offset += len(b)
        batch, size = [], 0

    for b in items:
        batch.append(bytes(b))
        size += len(b)
        if size >= PACK_BYTES:
            flush()
    flush()
    return refs


def externalize(table: pa.Table, columns: Iterable[str], store_uri: str) -> pa.Table:
    """For each referenced column: rows holding bytes but no reference (made by a stage, or read
    from a source that cannot be addressed) get their bytes stored and a reference. The bytes
    column itself stays; the caller's schema decides whether it is written."""
    import pyarrow.compute as pc

    for col in columns:
        rcol = ref_column(col)
        if col not in table.column_names:
            continue
        if rcol not in table.column_names:
            table = table.append_column(rcol, pa.nulls(table.num_rows, pa.string()))
        need = pc.and_(pc.is_valid(table.column(col)), pc.is_null(table.column(rcol)))
        if not pc.any(need).as_py():
            continue
        mask = need.to_numpy(zero_copy_only=False)
        data = table.column(col).to_pylist()
        new_refs = iter(store((data[i] for i in range(len(data)) if mask[i]), store_uri))
        old = table.column(rcol).to_pylist()
        merged = [next(new_refs) if mask[i] else old[i] for i in range(len(old))]
        table = table.set_column(table.column_names.index(rcol), rcol, pa.array(merged, pa.string()))
    return table
