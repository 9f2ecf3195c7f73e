"""ingest: read a named source into rows, one commit unit (chunk) at a time.

Formats (detected from what is at the path unless the source names one):
- ``webdataset``: a folder of ``.tar`` files as img2dataset writes them
  (``KEY.jpg``/``.png``/... + ``KEY.txt`` and/or ``KEY.json``); one unit per tar.
- ``parquet``: a ``.parquet`` file or folder; image bytes (or a ``{bytes, path}``
  struct, or a path column), a text column and a key column; text-only
  Parquet is fine. One unit per group of row groups.
- ``jsonl_images``: a folder holding images and one or more ``.jsonl`` files
  whose lines name an image path and a caption. One unit per ``chunk_rows`` lines.

Bad input never stops the run: a truncated tar, a missing image, a line that
is not JSON, a caption that is not UTF-8 each become an ``error`` row with the
reason, and the rest of the unit goes on. Hostile input too (``tests/fuzz``):
nothing is ever extracted; a tar member that is a link, device, FIFO or folder,
has an absolute or ``..`` name, repeats within a sample or exceeds
``max_member_bytes`` makes its sample an error row (local tars are read in
place, so a member of many GiB costs nothing); JSON nested deeper than
``MAX_JSON_DEPTH`` is ``bad_json``; text Arrow cannot store (lone surrogates)
is ``bad_text``; a Parquet file that cannot be read is one error row. A ``.tar`` that is
really gzip/bzip2/xz-compressed is read, but may decompress to at most ``max_tar_expansion``
times its size (``stages/tar_stream.py``): past that the rest of it is one ``tar_bomb`` row.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from pipeline import media, storage
from stages.base import DROPPED, ERROR, KEPT, Params, Resources, Stage, limit_units
from stages.tar_fast import plain_members
from stages.tar_stream import BudgetedStream, TarExpansionError, check_complete, is_compressed, open_tar

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
TEXT_NAMES = ("text", "caption", "txt", "TEXT", "Caption")
IMAGE_NAMES = ("image", "jpg", "png", "image_bytes", "img", "image_path", "file_name", "file", "path")
KEY_NAMES = ("key", "id", "uid", "sample_key", "__key__")


class IngestParams(Params):
    source: str = Field(..., description="name of a source under 'sources' in the pipeline file")
    chunk_rows: int = Field(10_000, ge=1, description="rows per commit unit for parquet and jsonl sources")
    max_member_bytes: int = Field(256 * 1024 * 1024, ge=1, description="larger tar members / images are error rows")
    max_tar_expansion: float = Field(
        200.0, ge=1, description="a compressed (gzip/bzip2/xz) tar may decompress to at most this many times its size; "
                                 "past it the rest of the tar is one tar_bomb error row (stages/tar_stream.py: JPEG "
                                 "tars expand ~1x, text ~10x, gzip bombs ~1000x)")
    limit: int | None = Field(None, ge=1, description="read at most this many rows (smoke runs); None reads all")


def sample_id_for(source: str, key: str, image: bytes | None, text: str | None,
                  image_digest: bytes | None = None) -> str:
    """Stable id: the same source, key and content always give the same id. ``image_digest``:
    ``blake2b(image, digest_size=16).digest()`` when the caller has it (the media reference's hash)."""
    h = hashlib.blake2b(digest_size=16)
    for i, part in enumerate((source.encode(), key.encode("utf-8", "surrogateescape"), image or b"",
                              (text or "").encode("utf-8", "surrogateescape"))):
        h.update(image_digest if (i == 2 and image_digest is not None) else hashlib.blake2b(part, digest_size=16).digest())
    return h.hexdigest()


MAX_JSON_DEPTH = 200


def json_loads_bounded(text: str) -> Any:
    """``json.loads`` that refuses documents nested deeper than MAX_JSON_DEPTH with a ValueError.
    Where ``json.loads`` itself gives up (RecursionError) depends on the caller's stack depth, and
    a record nested just under that limit would fail later, when it is serialised again deeper
    in the stack; a fixed depth limit makes ``[[[[...`` bombs the same bad_json everywhere."""
    try:
        obj = json.loads(text)
    except RecursionError:
        raise ValueError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
    stack = [(obj, 1)] if isinstance(obj, (dict, list)) else []
    while stack:
        node, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise ValueError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
        children = node.values() if isinstance(node, dict) else node
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return obj


def detect_format(path: str) -> str:
    """Guess a source's format from what is there; raise ValueError naming the path when unsure."""
    if not storage.exists(path):
        raise ValueError(f"{path} does not exist")
    if not storage.is_dir(path):
        low = path.lower()
        if low.endswith(".parquet"):
            return "parquet"
        if low.endswith(".tar"):
            return "webdataset"
        if low.endswith((".jsonl", ".json")):
            return "jsonl_images"
        raise ValueError(f"{path}: cannot tell the format from the file name (expected .tar, .parquet or .jsonl)")
    names = [i.base_name.lower() for i in storage.list_files(path)]
    if any(n.endswith(".tar") for n in names):
        return "webdataset"
    if any(n.endswith(".parquet") for n in names):
        return "parquet"
    if any(n.endswith(".jsonl") for n in names):
        return "jsonl_images"
    raise ValueError(f"{path}: no .tar, .parquet or .jsonl files found; set the source's 'format'")


def _pick(names: list[str], configured: str | None, candidates: tuple[str, ...]) -> str | None:
    if configured:
        return configured
    for c in candidates:
        if c in names:
            return c
    return None


class IngestStage(Stage):
    kind = "ingest"
    mode = "source"
    Params = IngestParams
    description = "Read a source (WebDataset tars, Parquet, or images + JSONL) into rows with stable sample ids."
    code_deps = ("stages.tar_stream",)
    produces = {
        "text": pa.string(),
        "image": pa.binary(),
        "image_name": pa.string(),
        "meta": pa.string(),
    }
    default_resources = Resources(num_cpus=1, batch_size=1)

    # -- driver side: list the units -------------------------------------------
    def list_units(self, sources: dict) -> list[dict[str, Any]]:
        units = self._list_all_units(sources)
        return limit_units(units, self.params.limit)

    def _list_all_units(self, sources: dict) -> list[dict[str, Any]]:
        src = sources[self.params.source]
        path = src.path
        fmt = src.format if src.format != "auto" else detect_format(path)
        base = {"source": self.params.source, "format": fmt,
                "text_column": src.text_column, "image_column": src.image_column, "key_column": src.key_column}
        if fmt == "webdataset":
            files = [path] if not storage.is_dir(path) else [i.path for i in storage.list_files(path, ".tar")]
            return [{**base, "path": f, "label": os.path.basename(f)} for f in files]
        if fmt == "parquet":
            files = [path] if not storage.is_dir(path) else [i.path for i in storage.list_files(path, ".parquet", recursive=True)]
            units = []
            for f in files:
                fs, p = storage.resolve(f)
                try:
                    meta = pq.ParquetFile(p, filesystem=fs).metadata
                except (pa.ArrowException, OSError) as e:  # not Parquet, or cut short: one error row
                    units.append({**base, "path": f, "row_groups": [], "rows": 1, "label": os.path.basename(f),
                                  "broken": f"corrupt_parquet: {os.path.basename(f)}: {type(e).__name__}: {e}"})
                    continue
                group, rows = [], 0
                for rg in range(meta.num_row_groups):
                    group.append(rg)
                    rows += meta.row_group(rg).num_rows
                    if rows >= self.params.chunk_rows:
                        units.append({**base, "path": f, "row_groups": group, "rows": rows,
                                      "label": f"{os.path.basename(f)}#rg{group[0]}"})
                        group, rows = [], 0
                if group or meta.num_row_groups == 0:
                    units.append({**base, "path": f, "row_groups": group, "rows": rows,
                                  "label": f"{os.path.basename(f)}#rg{group[0] if group else 0}"})
            return units
        if fmt == "jsonl_images":
            files = [path] if not storage.is_dir(path) else [i.path for i in storage.list_files(path, ".jsonl")]
            units = []
            for f in files:
                offsets = storage.line_chunk_offsets(f, self.params.chunk_rows)
                for k in range(len(offsets) - 1):
                    units.append({**base, "path": f, "start": offsets[k], "end": offsets[k + 1],
                                  "first_line": k * self.params.chunk_rows + 1, "rows": self.params.chunk_rows,
                                  "label": f"{os.path.basename(f)}:{k * self.params.chunk_rows + 1}"})
            return units
        raise ValueError(f"source {self.params.source!r}: unknown format {fmt!r}")

    # -- worker side: read one unit ----------------------------------------------
    def read_unit(self, unit: dict[str, Any]) -> pd.DataFrame:
        reader = {"webdataset": self._read_tar, "parquet": self._read_parquet, "jsonl_images": self._read_jsonl}[unit["format"]]
        rows = reader(unit)
        if unit.get("max_rows") is not None:
            rows = rows[: unit["max_rows"]]
        return _finalize(rows, unit["source"])

    def _row(self, unit, key, text, image, image_name, meta, status=KEPT, reason=None,
             image_at: tuple[str, int] | None = None) -> dict:
        """``image_at``: (URI, offset) where ``image``'s bytes lie in the source, when they can be
        read again there (rows then carry a reference, pipeline/media.py); None: the media store."""
        return {"source": unit["source"], "source_key": key, "text": text, "image": image,
                "image_name": image_name, "meta": json.dumps(meta, ensure_ascii=False, default=str) if meta else None,
                "status": status, "reason": reason, "_image_at": image_at}

    def _read_tar(self, unit) -> list[dict]:
        rows: list[dict] = []
        label = unit["label"]
        current_key, members = None, {}
        pending = False  # members collected for current_key but not yet turned into a row

        def flush():
            nonlocal pending
            if pending:
                rows.append(self._tar_sample(unit, current_key, members))
                pending = False

        try:
            fs, p = storage.resolve(unit["path"])
            if storage.is_local(unit["path"]):
                # Read in place: headers and the wanted members only, so a tar holding a member of
                # many GiB (over max_member_bytes) never costs its size in memory.
                fileobj = open(p, "rb")
            else:  # object stores: one request for the tar, not two per member
                with fs.open_input_stream(p) as raw:
                    fileobj = io.BytesIO(raw.read())

            def take(m, read, addressable: bool) -> None:
                nonlocal current_key, members, pending
                name = m.name
                base = name.rsplit("/", 1)[-1]
                if "." not in base:
                    return
                key = name[: len(name) - len(base)] + base.split(".", 1)[0]
                ext = base.split(".", 1)[1].lower()
                if key != current_key or not pending:
                    flush()
                    current_key, members, pending = key, {}, True
                unsafe = unsafe_member_name(name)
                if unsafe:
                    members.setdefault("_errors", []).append(f"{ext}: {unsafe}")
                    return
                if ext in members:
                    members.setdefault("_errors", []).append(f"{ext}: duplicate member {name}")
                    return
                if not m.isfile():
                    members.setdefault("_errors", []).append(f"{ext}: not a regular file ({tar_member_type(m)})")
                    return
                if m.size > self.params.max_member_bytes:
                    members.setdefault("_errors", []).append(f"{ext}: member of {m.size} bytes exceeds max_member_bytes")
                    return
                members[ext] = read(m)
                if addressable and not m.sparse:
                    members.setdefault("_at", {})[ext] = (tar_uri, m.offset_data)

            tar_uri = _absolute(unit["path"])
            with fileobj:
                # Most tars hold plain files only: their headers are walked without tarfile
                # (stages/tar_fast.py); anything else, or any doubt, goes through tarfile.
                plain = plain_members(fileobj) if not is_compressed(fileobj) else None
                if plain is not None:
                    def read_plain(m) -> bytes:
                        fileobj.seek(m.offset_data)
                        return fileobj.read(m.size)

                    for m in plain:
                        take(m, read_plain, True)
                else:
                    with open_tar(fileobj, self.params.max_tar_expansion) as tf:
                        # Members of an uncompressed tar are byte ranges of the file itself: referenced.
                        addressable = not isinstance(tf.fileobj, BudgetedStream)

                        def read_member(m) -> bytes:
                            f = tf.extractfile(m)
                            return f.read() if f is not None else b""

                        for m in tf:
                            take(m, read_member, addressable)
                        check_complete(tf)  # an end-of-archive block; a compressed tar's checksum
            flush()
        except (tarfile.TarError, EOFError, OSError, ValueError) as e:
            # Rows parsed before the damage are kept; the damage itself is one error row.
            bomb = isinstance(e, TarExpansionError)
            if pending:
                members.setdefault("_errors", []).append(
                    "member not read: the tar's decompression budget ran out" if bomb else "member cut off by a truncated tar")
                flush()
            rows.append(self._row(unit, f"{label}#unreadable", None, None, None, {"tar": label}, ERROR,
                                  f"tar_bomb: {e}" if bomb else f"corrupt_tar: {type(e).__name__}: {e}"))
        return rows

    def _tar_sample(self, unit, key: str, members: dict) -> dict:
        errors = members.pop("_errors", [])
        at = members.pop("_at", {})
        meta: dict[str, Any] = {}
        text = None
        status, reason = KEPT, None
        if "json" in members:
            try:
                meta = json_loads_bounded(members["json"].decode("utf-8"))
                if not isinstance(meta, dict):
                    meta = {"json": meta}
            except (UnicodeDecodeError, ValueError) as e:
                status, reason = ERROR, f"bad_json: {type(e).__name__}: {e}"
        tcol = unit.get("text_column")
        if "txt" in members:
            try:
                text = members["txt"].decode("utf-8")
            except UnicodeDecodeError:
                status, reason = ERROR, "bad_text: caption is not valid UTF-8"
        elif tcol and tcol in meta:
            text = str(meta[tcol])
        else:
            for c in TEXT_NAMES:
                if isinstance(meta.get(c), str):
                    text = meta[c]
                    break
        image, image_name, image_at = None, None, None
        for ext in IMAGE_EXTS:
            if ext in members:
                image, image_name, image_at = members[ext], f"{key}.{ext}", at.get(ext)
                break
        source_key = str(meta.get(unit.get("key_column") or "key") or key) if isinstance(meta, dict) else key
        if errors and status == KEPT:
            status, reason = ERROR, "bad_member: " + "; ".join(errors)
        elif image is None and status == KEPT:
            status, reason = ERROR, "missing_image: no image member (" + ", ".join(sorted(members)) + ")"
        return self._row(unit, source_key, text, image, image_name, meta, status, reason, image_at)

    def _read_parquet(self, unit) -> list[dict]:
        if unit.get("broken"):
            return [self._row(unit, unit["label"], None, None, None, None, ERROR, unit["broken"])]
        fs, p = storage.resolve(unit["path"])
        pf = pq.ParquetFile(p, filesystem=fs)
        names = pf.schema_arrow.names
        tcol = _pick(names, unit.get("text_column"), TEXT_NAMES)
        icol = _pick(names, unit.get("image_column"), IMAGE_NAMES)
        kcol = _pick(names, unit.get("key_column"), KEY_NAMES)
        for configured, label in ((unit.get("text_column"), "text_column"), (unit.get("image_column"), "image_column"),
                                  (unit.get("key_column"), "key_column")):
            if configured and configured not in names:
                raise ValueError(f"{unit['path']}: source field {label}={configured!r} is not a column; columns: {names}")
        if not unit["row_groups"]:
            return []
        first_row = sum(pf.metadata.row_group(i).num_rows for i in range(unit["row_groups"][0]))
        try:
            data = pf.read_row_groups(unit["row_groups"]).to_pylist()
        except (pa.ArrowException, OSError, ValueError) as e:  # damaged pages: the unit is one error row
            return [self._row(unit, unit["label"], None, None, None, {"row_groups": unit["row_groups"]}, ERROR,
                              f"corrupt_parquet: {os.path.basename(unit['path'])}: {type(e).__name__}: {e}")]
        base_dir = os.path.dirname(unit["path"])
        rows = []
        other = [c for c in names if c not in (tcol, icol, kcol)]
        for i, rec in enumerate(data):
            key = str(rec[kcol]) if kcol and rec.get(kcol) is not None else f"{os.path.basename(unit['path'])}:{first_row + i}"
            status, reason = KEPT, None
            text = rec.get(tcol) if tcol else None
            if isinstance(text, bytes):
                try:
                    text = text.decode("utf-8")
                except UnicodeDecodeError:
                    text, status, reason = None, ERROR, "bad_text: text is not valid UTF-8"
            image, image_name, image_at = None, None, None
            if icol:
                val = rec.get(icol)
                if isinstance(val, dict):
                    image, image_name = val.get("bytes"), val.get("path")
                    if image is None and image_name:
                        val = image_name
                if isinstance(val, (bytes, bytearray)):
                    image = bytes(val)
                elif isinstance(val, str) and val:
                    image_name = val
                    image, err = self._read_image_file(base_dir, val)
                    image_at = (self._image_uri(base_dir, val), 0) if image is not None else None
                    if err and status == KEPT:
                        status, reason = ERROR, err
            meta = {c: rec[c] for c in other if c in rec and not isinstance(rec[c], (bytes, bytearray))}
            rows.append(self._row(unit, key, text, image, image_name, meta, status, reason, image_at))
        return rows

    @staticmethod
    def _image_uri(base_dir: str, rel: str) -> str:
        return _absolute(rel if ("://" in rel or os.path.isabs(rel) or not base_dir) else storage.join(base_dir, rel))

    def _read_image_file(self, base_dir: str, rel: str) -> tuple[bytes | None, str | None]:
        path = rel if ("://" in rel or os.path.isabs(rel) or not base_dir) else storage.join(base_dir, rel)
        try:
            return storage.read_file_capped(path, self.params.max_member_bytes), None
        except FileNotFoundError:
            if storage.is_local(path) and os.path.lexists(path):  # a FIFO, a device, a folder: never opened
                return None, f"missing_image: {rel} is not a regular file"
            return None, f"missing_image: {rel}"
        except storage.TooLarge as e:
            return None, f"bad_member: image file of {e.size} bytes exceeds max_member_bytes"
        except OSError as e:
            return None, f"missing_image: {rel}: {e}"
        except ValueError as e:  # a NUL byte or an unencodable character in the path
            return None, f"missing_image: {rel!r} is not a usable path ({type(e).__name__})"

    def _read_jsonl(self, unit) -> list[dict]:
        fs, p = storage.resolve(unit["path"])
        with fs.open_input_file(p) as f:
            f.seek(unit["start"])
            data = f.read(unit["end"] - unit["start"])
        base_dir = os.path.dirname(unit["path"])
        rows = []
        for n, raw in enumerate(data.split(b"\n")):
            lineno = unit["first_line"] + n
            if not raw.strip():
                continue
            fallback_key = f"{os.path.basename(unit['path'])}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                rows.append(self._row(unit, fallback_key, None, None, None, None, ERROR, f"bad_text: line {lineno} is not valid UTF-8"))
                continue
            try:
                rec = json_loads_bounded(line)
                if not isinstance(rec, dict):
                    raise ValueError("line is not a JSON object")
            except ValueError as e:
                rows.append(self._row(unit, fallback_key, None, None, None, {"line": line[:200]}, ERROR, f"bad_json: line {lineno}: {e}"))
                continue
            names = list(rec)
            tcol = _pick(names, unit.get("text_column"), TEXT_NAMES)
            icol = _pick(names, unit.get("image_column"), IMAGE_NAMES)
            kcol = _pick(names, unit.get("key_column"), KEY_NAMES)
            key = str(rec[kcol]) if kcol and rec.get(kcol) is not None else fallback_key
            text = rec.get(tcol) if tcol else None
            status, reason = KEPT, None
            if text is not None and not isinstance(text, str):
                text = json.dumps(text, ensure_ascii=False)
            image, image_name, image_at = None, None, None
            if icol and isinstance(rec.get(icol), str):
                image_name = rec[icol]
                image, err = self._read_image_file(base_dir, image_name)
                if err:
                    status, reason = ERROR, err
                elif image is not None:
                    image_at = (self._image_uri(base_dir, image_name), 0)
            meta = {c: v for c, v in rec.items() if c not in (tcol, icol, kcol)}
            rows.append(self._row(unit, key, text, image, image_name, meta, status, reason, image_at))
        return rows


def tar_member_type(m: tarfile.TarInfo) -> str:
    if m.issym():
        return "symlink"
    if m.islnk():
        return "hard link"
    if m.isdir():
        return "directory"
    if m.isfifo():
        return "fifo"
    if m.isdev():
        return "device"
    return "special"


def unsafe_member_name(name: str) -> str | None:
    """Why a tar member name could write outside a folder it were extracted to (an absolute
    path, a '..' component), else None. Nothing is ever extracted; such a member is still an
    error row, since its name cannot be trusted as a sample key."""
    if name.startswith("/"):
        return f"unsafe member name {name!r} (absolute path)"
    if ".." in name.replace("\\", "/").split("/"):
        return f"unsafe member name {name!r} ('..' component)"
    return None


def scrub_unicode(row: dict, columns: tuple[str, ...]) -> None:
    """Strings Arrow cannot store -- lone surrogates, from a JSON '\\ud800' escape or a tar name
    that is not UTF-8 -- are rewritten with backslash escapes, and a kept row becomes an error
    naming the columns (without this the whole unit's Arrow conversion would fail)."""
    bad = []
    for c in columns:
        value = row.get(c)
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                row[c] = value.encode("utf-8", "backslashreplace").decode("utf-8")
                bad.append(c)
    if bad and row.get("status") == KEPT:
        row["status"] = ERROR
        row["reason"] = f"bad_text: {', '.join(bad)} not valid Unicode (a lone surrogate, e.g. a JSON \\ud800 escape or a non-UTF-8 name)"


def _absolute(uri: str) -> str:
    """References must name the same file from any worker: local paths become absolute."""
    return uri if "://" in uri else os.path.abspath(uri)


def _finalize(rows: list[dict], source: str) -> pd.DataFrame:
    """Assign sample ids; a repeated id (same key and content twice) is dropped as a duplicate.
    Images found in place get their reference (pipeline/media.py); the others get theirs when the
    fragment writer stores them."""
    seen: set[str] = set()
    for r in rows:
        at, image = r.pop("_image_at", None), r.get("image")
        image_digest = hashlib.blake2b(image or b"", digest_size=16).digest()  # one hash: id and reference
        r["image_ref"] = (media.MediaRef(at[0], at[1], len(image), image_digest.hex()).encode()
                          if (at is not None and image is not None) else None)
        scrub_unicode(r, ("source_key", "text", "image_name", "meta", "reason"))
        sid = sample_id_for(source, r["source_key"] or "", r["image"], r["text"], image_digest)
        if sid in seen:
            # KEY#2, KEY#3, ...: the first suffix whose id no earlier row holds (a row's own
            # key may already look like KEY#2).
            dup_of, n = sid, 2
            while (sid := sample_id_for(source, f"{r['source_key']}#{n}", r["image"], r["text"], image_digest)) in seen:
                n += 1
            if r["status"] == KEPT:
                r["status"], r["reason"] = DROPPED, f"duplicate_of:{dup_of}"
        seen.add(sid)
        r["sample_id"] = sid
    cols = ["sample_id", "source", "source_key", "status", "reason", "text", "image", "image_name", "meta", "image_ref"]
    return pd.DataFrame(rows, columns=cols)
