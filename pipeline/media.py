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

A list of bytes (a video's sampled frames, an instruction sample's images) is referenced item by
item: its ``_ref`` is a JSON list of item references. Identical items stored together are stored
once, so the 16 frames of a video that five QA rows share are in the store once, not five times.

A stage that needs the pixels declares the binary column as an input, as before; the executor
fetches it by reference inside the task (``fetch``: one open per file, nearby ranges read in one
request) and drops it again before the checkpoint. A range whose bytes no longer hash to the
reference (the source file changed or was truncated after ingest) is a ``MediaError`` naming the
file: an error row in a map stage, a stopped run in a sink, never wrong bytes in a shard.
"""
from __future__ import annotations

import hashlib
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable, Sequence

import pyarrow as pa

from pipeline import storage

REF_SUFFIX = "_ref"
# Ranges closer than this are read in one request (tar members sit between captions and JSON).
COALESCE_GAP = 256 * 1024
COALESCE_SPAN = 16 * 1024 * 1024
PACK_BYTES = 64 * 1024 * 1024  # a pack file holds at most about this much
# Merged ranges read at once by one fetch. One read at a time left a cold local disk at 161 MiB/s;
# eight in flight gave 360 MiB/s (bench/fetch_cold.py), and on s3:// each read is a round trip.
FETCH_THREADS = 8


def ref_column(column: str) -> str:
    return column + REF_SUFFIX


def digest(data: bytes) -> str:
    """The content hash a reference carries (the same blake2b-128 ingest and decode use)."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _is_bytes(t: pa.DataType) -> bool:
    return pa.types.is_binary(t) or pa.types.is_large_binary(t)


def is_referenced_type(t: pa.DataType) -> bool:
    """Columns stored by reference: binary (one image per row) and lists of binary (frames, images)."""
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return _is_bytes(t.value_type)
    return _is_bytes(t)


def is_list_ref(ref: str) -> bool:
    return ref.startswith("[")


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


def fetch(refs: Sequence[str | None]) -> list:
    """The value behind each reference, in order: bytes, or a list of bytes for a list reference
    (None stays None). A reference that cannot be served as ingested gives a ``MediaError`` in its
    place instead of raising, so one changed file costs only its own rows. One open per file for
    the whole call, ranges sorted and merged (``COALESCE_GAP``), and up to ``FETCH_THREADS`` merged
    ranges read at once, so a cold disk or an object store serves several requests in flight."""
    import json

    flat: list[str | None] = []
    shape: list[tuple[int, int] | None] = []  # (start, count) into flat for list references
    for r in refs:
        if r is not None and is_list_ref(r):
            try:
                items = json.loads(r)
            except ValueError:
                items = None
            if not isinstance(items, list) or not all(isinstance(x, str) for x in items):
                shape.append((-1, 0))
                continue
            shape.append((len(flat), len(items)))
            flat.extend(items)
        else:
            shape.append(None)
            flat.append(r)
    got = _fetch_items(flat)
    out: list = []
    pos = 0
    for r, sh in zip(refs, shape):
        if sh is None:
            out.append(got[pos])
            pos += 1
        elif sh[0] < 0:
            out.append(MediaError(f"media_ref_invalid: {r[:200]!r} is not a JSON list of references"))
        else:
            items = got[sh[0]: sh[0] + sh[1]]
            pos = sh[0] + sh[1]
            bad = next((x for x in items if isinstance(x, MediaError)), None)
            out.append(bad if bad is not None else list(items))
    return out


def _read_span(out: list, uri: str, f, size: int, span: tuple[int, int, list[tuple[int, MediaRef]]]) -> None:
    """Read one merged range and check each member in it against its reference."""
    start, end, members = span
    try:
        block = f.read_at(end - start, start) if end <= size else b""
    except OSError as e:
        for i, _ in members:
            out[i] = MediaError(f"media_missing: {uri}: {type(e).__name__}: {e}")
        return
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


def _fetch_items(refs: Sequence[str | None]) -> list[bytes | MediaError | None]:
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
    opened: list = []
    jobs: list[tuple[str, object, int, tuple]] = []
    try:
        for uri, items in by_uri.items():
            try:
                fs, path = storage.resolve(uri)
                f = fs.open_input_file(path)
            except (OSError, ValueError) as e:
                for i, _ in items:
                    out[i] = MediaError(f"media_missing: {uri}: {type(e).__name__}: {e}")
                continue
            opened.append(f)
            size = f.size()
            jobs.extend((uri, f, size, span) for span in _spans(items))
        if len(jobs) <= 1:
            for job in jobs:
                _read_span(out, *job)
        else:
            # Each thread writes only its own members' slots of ``out``; the reads release the GIL.
            with ThreadPoolExecutor(min(FETCH_THREADS, len(jobs))) as pool:
                for done in [pool.submit(_read_span, out, *job) for job in jobs]:
                    done.result()
    finally:
        for f in opened:
            f.close()
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
    Idempotent: the same items give the same packs, and a pack that exists is not written again.
    An item equal to an earlier one of the same call is not written again: it shares its reference."""
    hashes = []
    unique: dict[str, bytes] = {}
    for b in items:
        b = bytes(b)
        h = digest(b)
        hashes.append(h)
        unique.setdefault(h, b)
    placed: dict[str, str] = {}
    batch: list[tuple[str, bytes]] = []
    size = 0

    def flush() -> None:
        nonlocal batch, size
        if not batch:
            return
        name = hashlib.blake2b("\n".join(h for h, _ in batch).encode(), digest_size=16).hexdigest()
        uri = storage.join(store_uri, name[:2], f"{name}.pack")
        if not storage.exists(uri):
            storage.write_bytes(uri, b"".join(b for _, b in batch))
        offset = 0
        for h, b in batch:
            placed[h] = MediaRef(uri, offset, len(b), h).encode()
            offset += len(b)
        batch, size = [], 0

    for h, b in unique.items():
        batch.append((h, b))
        size += len(b)
        if size >= PACK_BYTES:
            flush()
    flush()
    return [placed[h] for h in hashes]


def store_values(values: Sequence, store_uri: str) -> list[str | None]:
    """``store`` for a column's values: bytes get a reference, a list of bytes a JSON list of them."""
    import json

    items: list[bytes] = []
    for v in values:
        if v is None:
            continue
        if isinstance(v, (bytes, bytearray, memoryview)):
            items.append(bytes(v))
        else:
            items.extend(bytes(x) for x in v)
    refs = iter(store(items, store_uri))
    out: list[str | None] = []
    for v in values:
        if v is None:
            out.append(None)
        elif isinstance(v, (bytes, bytearray, memoryview)):
            out.append(next(refs))
        else:
            out.append(json.dumps([next(refs) for _ in v]))
    return out


def same_value(a, b) -> bool:
    """Equality of two media values (bytes, lists or arrays of bytes, None) without numpy's
    element-wise ``==``."""
    if a is b:
        return True
    if a is None or b is None:
        return False
    if isinstance(a, (bytes, bytearray, memoryview)) or isinstance(b, (bytes, bytearray, memoryview)):
        return isinstance(a, (bytes, bytearray, memoryview)) and isinstance(b, (bytes, bytearray, memoryview)) and bytes(a) == bytes(b)
    a, b = list(a), list(b)
    return len(a) == len(b) and all(bytes(x) == bytes(y) for x, y in zip(a, b))


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
        new_refs = iter(store_values([data[i] for i in range(len(data)) if mask[i]], store_uri))
        old = table.column(rcol).to_pylist()
        merged = [next(new_refs) if mask[i] else old[i] for i in range(len(old))]
        table = table.set_column(table.column_names.index(rcol), rcol, pa.array(merged, pa.string()))
    return table
