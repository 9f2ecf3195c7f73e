"""instruction_ingest: read instruction data in any common format into the message schema.

Reads ``.jsonl`` (one record a line; one commit unit per ``chunk_rows`` lines), ``.json`` (an array
of records) and ``.parquet`` (one unit per group of row groups) files, a single file or a folder of
them. Each record is normalised (``instructions/normalize.py``: LLaVA, ShareGPT, OpenAI messages --
which is also the caption-to-QA exporter's output --, Cauldron, Alpaca, plain question/answer; pure
text or with any number of images). Image paths are relative to the file that names them (or
``image_root``); Parquet may hold the bytes.

Bad records never stop the run: a line that is not JSON, a format that is not recognised, image
tokens that do not match the images, empty turns, broken role order, a missing or unreadable image
each become an ``error`` row whose reason says which (``bad_json``, ``bad_format``,
``image_token_mismatch``, ``empty_turn``, ``role_order``, ``unknown_role``, ``missing_image``...).

Columns: ``messages`` (the conversation as JSON), ``images`` (encoded bytes, in image-part order),
``image_names``, ``num_images``, ``num_turns``, ``question`` (first user turn), ``answer`` (its
reply), ``text`` (a plain transcript, for near-duplicate detection and token counts),
``image_hash`` (a hash over all image bytes; null for text-only samples), ``conversation_format``.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
from typing import Any, Literal

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from instructions.normalize import NormalizeError, normalize_record
from instructions.schema import IMAGES_TYPE
from pipeline import storage
from stages.base import DROPPED, ERROR, KEPT, Params, Resources, Stage, limit_units
from stages.ingest import json_loads_bounded, sample_id_for, scrub_unicode

_EXTS = (".jsonl", ".json", ".parquet")
COLUMNS = ["sample_id", "source", "source_key", "status", "reason", "text", "messages", "images", "image_names",
           "num_images", "num_turns", "question", "answer", "image_hash", "conversation_format", "meta"]


class InstructionIngestParams(Params):
    source: str = Field(..., description="name of a source under 'sources' (a .jsonl/.json/.parquet file or a folder of them)")
    conversation_format: Literal["auto", "llava", "sharegpt", "openai", "cauldron", "alpaca", "qa"] = Field(
        "auto", description="record format; auto detects it per record from its fields")
    chunk_rows: int = Field(10_000, ge=1, description="records per commit unit")
    implicit_image_tokens: bool = Field(False, description="images of a record without any image token go before its first user turn (else: image_token_mismatch)")
    image_root: str | None = Field(None, description="folder image paths are relative to (default: the folder of the file naming them)")
    max_image_bytes: int = Field(64 * 1024 * 1024, ge=1, description="larger image files are error rows")
    limit: int | None = Field(None, ge=1, description="read at most this many records (smoke runs); None reads all")


class InstructionIngestStage(Stage):
    kind = "instruction_ingest"
    mode = "source"
    Params = InstructionIngestParams
    description = ("Read instruction data (LLaVA, ShareGPT, OpenAI messages / caption-to-QA, Cauldron, Alpaca, QA; "
                   ".jsonl/.json/.parquet) into one message schema with several images per sample.")
    produces = {
        "text": pa.string(), "messages": pa.string(), "images": IMAGES_TYPE, "image_names": pa.string(),
        "num_images": pa.int32(), "num_turns": pa.int32(), "question": pa.string(), "answer": pa.string(),
        "image_hash": pa.string(), "conversation_format": pa.string(), "meta": pa.string(),
    }
    default_resources = Resources(num_cpus=1, batch_size=1)

    def manifest_columns(self) -> list[str]:
        return ["num_images", "num_turns", "conversation_format", "image_hash"]

    # -- driver: units -------------------------------------------------------------------------
    def list_units(self, sources: dict) -> list[dict[str, Any]]:
        src = sources[self.params.source]
        path = src.path
        if not storage.exists(path):
            raise ValueError(f"source {self.params.source!r}: {path} does not exist")
        files = [path] if not storage.is_dir(path) else _data_files(path)
        if not files:
            raise ValueError(f"source {self.params.source!r}: no .jsonl, .json or .parquet files in {path}")
        units: list[dict[str, Any]] = []
        n = self.params.chunk_rows
        for f in files:
            low = f.lower()
            base = {"source": self.params.source, "path": f}
            if low.endswith(".jsonl"):
                offsets = storage.line_chunk_offsets(f, n)
                for k in range(len(offsets) - 1):
                    units.append({**base, "kind": "jsonl", "start": offsets[k], "end": offsets[k + 1],
                                  "first": k * n + 1, "rows": n, "label": f"{os.path.basename(f)}:{k * n + 1}"})
            elif low.endswith(".json"):
                try:
                    count = len(_json_array(f))
                except ValueError as e:
                    units.append({**base, "kind": "json", "lo": 0, "hi": 0, "rows": 1, "label": os.path.basename(f),
                                  "broken": str(e)})
                    continue
                for lo in range(0, max(count, 1), n):
                    units.append({**base, "kind": "json", "lo": lo, "hi": min(count, lo + n), "rows": min(count, lo + n) - lo,
                                  "label": f"{os.path.basename(f)}[{lo}]"})
            else:
                fs, p = storage.resolve(f)
                try:
                    meta = pq.ParquetFile(p, filesystem=fs).metadata
                except (pa.ArrowException, OSError) as e:  # not Parquet, or cut short: one error row
                    units.append({**base, "kind": "parquet", "row_groups": [], "rows": 1, "first": 0,
                                  "label": os.path.basename(f), "broken": f"{type(e).__name__}: {e}"})
                    continue
                group, rows, first = [], 0, 0
                for rg in range(meta.num_row_groups):
                    group.append(rg)
                    rows += meta.row_group(rg).num_rows
                    if rows >= n or rg == meta.num_row_groups - 1:
                        units.append({**base, "kind": "parquet", "row_groups": group, "rows": rows, "first": first,
                                      "label": f"{os.path.basename(f)}#rg{group[0]}"})
                        first += rows
                        group, rows = [], 0
        return limit_units(units, self.params.limit)

    # -- worker: read one unit -----------------------------------------------------------------
    def read_unit(self, unit: dict[str, Any]) -> pd.DataFrame:
        base_dir = self.params.image_root or os.path.dirname(unit["path"])
        rows: list[dict[str, Any]] = []
        for key, rec, err in self._records(unit):
            if unit.get("max_rows") is not None and len(rows) >= unit["max_rows"]:
                break
            if err is not None:
                rows.append(_error_row(unit["source"], key, err))
                continue
            rows.append(self._row(unit["source"], key, rec, base_dir))
        return _finalize(rows, unit["source"])

    def _records(self, unit):
        """(fallback key, record or None, error or None) for every record of the unit."""
        name = os.path.basename(unit["path"])
        if unit["kind"] == "jsonl":
            fs, p = storage.resolve(unit["path"])
            with fs.open_input_file(p) as f:
                f.seek(unit["start"])
                data = f.read(unit["end"] - unit["start"])
            for n, raw in enumerate(data.split(b"\n")):
                key = f"{name}:{unit['first'] + n}"
                if not raw.strip():
                    continue
                try:
                    rec = json_loads_bounded(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    yield key, None, f"bad_text: line {unit['first'] + n} is not valid UTF-8"
                    continue
                except ValueError as e:
                    yield key, None, f"bad_json: line {unit['first'] + n}: {e}"
                    continue
                yield key, rec, None
        elif unit["kind"] == "json":
            if unit.get("broken"):
                yield name, None, f"bad_json: {unit['broken']}"
                return
            for i, rec in enumerate(_json_array(unit["path"])[unit["lo"]:unit["hi"]]):
                yield f"{name}[{unit['lo'] + i}]", rec, None
        else:
            if unit.get("broken"):
                yield name, None, f"corrupt_parquet: {name}: {unit['broken']}"
                return
            fs, p = storage.resolve(unit["path"])
            try:
                records = pq.ParquetFile(p, filesystem=fs).read_row_groups(unit["row_groups"]).to_pylist()
            except (pa.ArrowException, OSError, ValueError) as e:  # damaged pages: the unit is one error row
                yield f"{name}#rg{unit['row_groups'][0]}", None, f"corrupt_parquet: {name}: {type(e).__name__}: {e}"
                return
            for i, rec in enumerate(records):
                for k, v in list(rec.items()):
                    if isinstance(v, str) and k in ("conversations", "messages", "texts") and v[:1] in "[{":
                        try:
                            rec[k] = json_loads_bounded(v)
                        except ValueError:
                            pass
                yield f"{name}#{unit['first'] + i}", rec, None

    def _row(self, source: str, fallback_key: str, rec: Any, base_dir: str) -> dict[str, Any]:
        p = self.params
        try:
            norm = normalize_record(rec, p.conversation_format, p.implicit_image_tokens)
        except NormalizeError as e:
            key = str(rec.get("id")) if isinstance(rec, dict) and rec.get("id") is not None else fallback_key
            return _error_row(source, key, str(e))
        key = norm.key or fallback_key
        images: list[bytes] = []
        for i, src in enumerate(norm.image_sources):
            data, err = self._load_image(src, base_dir)
            if err:
                return _error_row(source, key, f"missing_image: image {i}: {err}")
            images.append(data)
        conv = norm.conversation
        digests = [hashlib.blake2b(b, digest_size=16).digest() for b in images]
        return {
            "source": source, "source_key": key, "status": KEPT, "reason": None,
            "text": conv.transcript(), "messages": conv.messages_json(), "images": images,
            "image_names": json.dumps(conv.images, ensure_ascii=False), "num_images": len(images),
            "num_turns": len(conv.turns), "question": conv.first_user_text(), "answer": conv.first_answer_text(),
            "image_hash": hashlib.blake2b(b"".join(digests), digest_size=16).hexdigest() if images else None,
            "conversation_format": norm.format,
            "meta": json.dumps(norm.meta, ensure_ascii=False, default=str) if norm.meta else None,
            "_id_image": b"".join(digests),
        }

    def _load_image(self, src, base_dir: str) -> tuple[bytes | None, str | None]:
        if isinstance(src, bytes):
            if len(src) > self.params.max_image_bytes:
                return None, f"inline image of {len(src)} bytes > max_image_bytes"
            return (src, None) if src else (None, "empty image bytes")
        if src.startswith("data:"):
            try:
                data = base64.b64decode(src.split(",", 1)[1], validate=False)
            except (IndexError, ValueError) as e:
                return None, f"bad data URL ({e})"
            if len(data) > self.params.max_image_bytes:
                return None, f"data URL image of {len(data)} bytes > max_image_bytes"
            return data, None
        if src.startswith(("http://", "https://")):
            return None, f"{src[:120]}: remote URLs are not fetched; download the images and use paths"
        path = src if ("://" in src or os.path.isabs(src)) else storage.join(base_dir, src)
        try:
            return storage.read_file_capped(path, self.params.max_image_bytes), None
        except FileNotFoundError:
            if storage.is_local(path) and os.path.lexists(path):  # a FIFO, a device, a folder: never opened
                return None, f"{src} is not a regular file"
            return None, f"{src} not found"
        except storage.TooLarge as e:
            return None, f"{src} has {e.size} bytes > max_image_bytes"
        except OSError as e:
            return None, f"{src}: {e}"
        except ValueError as e:  # a NUL byte or an unencodable character in the path
            return None, f"{src!r} is not a usable path ({type(e).__name__})"


def _data_files(folder: str) -> list[str]:
    """The data files of a folder (recursively, hidden and ``_``-prefixed names skipped), of one
    kind: ``.jsonl`` when there are any, else ``.json``, else ``.parquet`` -- so an exporter's
    ``index.parquet`` or ``instructions.json`` beside its JSONL files is not read as data."""
    found: dict[str, list[str]] = {e: [] for e in _EXTS}
    root = storage.resolve(folder)[1].rstrip("/")
    for info in storage.list_files(folder, recursive=True):
        rel = info.path[len(root):].lstrip("/") if info.path.startswith(root) else info.base_name
        if any(part.startswith((".", "_")) for part in rel.split("/")):
            continue
        for e in _EXTS:
            if info.path.lower().endswith(e):
                found[e].append(info.path)
    return sorted(next((v for v in found.values() if v), []))


def _json_array(path: str) -> list:
    try:
        data = json_loads_bounded(storage.read_bytes(path).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{os.path.basename(path)} is not a JSON array ({e})") from None
    if not isinstance(data, list):
        raise ValueError(f"{os.path.basename(path)} holds a JSON {type(data).__name__}, not an array of records")
    return data


def _error_row(source: str, key: str, reason: str) -> dict[str, Any]:
    return {"source": source, "source_key": key, "status": ERROR, "reason": reason, "images": None,
            "_id_image": b"", "text": reason}


def _finalize(rows: list[dict[str, Any]], source: str) -> pd.DataFrame:
    """Stable ids (source, key, image digests, conversation); a repeated id is a duplicate."""
    seen: set[str] = set()
    for r in rows:
        scrub_unicode(r, ("source_key", "reason", "text", "messages", "image_names", "question", "answer", "meta"))
        ident = r.get("messages") or r.get("text") or ""
        sid = sample_id_for(source, r["source_key"] or "", r.pop("_id_image", b""), ident)
        if sid in seen:
            dup_of, n = sid, 2
            while (sid := sample_id_for(source, f"{r['source_key']}#{n}", None, ident)) in seen:
                n += 1
            if r["status"] == KEPT:
                r["status"], r["reason"] = DROPPED, f"duplicate_of:{dup_of}"
        seen.add(sid)
        r["sample_id"] = sid
        if r["status"] != KEPT:
            r["text"] = None
    return pd.DataFrame(rows, columns=COLUMNS)
