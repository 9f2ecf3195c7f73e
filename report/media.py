"""Example rows and their thumbnails, read back from a run's checkpoints.

Checkpoints keep every row of a segment (kept, dropped and error, media included), so the
report can show what a stage dropped. A row is looked up in the checkpoint of the segment
that holds its stage: first only ``sample_id`` of every fragment is read to find the few
fragments that hold the wanted rows, then just those fragments are read.

Thumbnails are small JPEGs made here at report time and embedded as ``data:`` URIs, so the
report is one self-contained file. Media columns are recognised by type: ``binary`` (an
image, or a video decoded with PyAV for a few frames) and ``list<binary>`` (sampled frames,
e.g. a ``frames`` column), shown as a strip.
"""
from __future__ import annotations

import base64
import io
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pds

from pipeline import storage
from pipeline.checkpoint import Checkpoint

MAX_IMAGE_PIXELS = 80_000_000  # a decompression bomb in the data must not stall the report


@dataclass
class Thumb:
    uri: str | None  # data:image/jpeg;base64,...
    note: str = ""   # why there is no picture, or what it shows ("frame 3/16")


def segment_fragments(run_dir: str, segment: str) -> list[str]:
    return [f.uri for f in Checkpoint(run_dir, segment).fragments()]


def fetch_rows(run_dir: str, segment: str, sample_ids: list[str]) -> tuple[dict[str, dict], pa.Schema | None]:
    """Full checkpoint rows (media included) of ``sample_ids`` from one segment's fragments."""
    uris = segment_fragments(run_dir, segment)
    if not uris or not sample_ids:
        return {}, None
    fs, _ = storage.resolve(uris[0])
    paths = [storage.resolve(u)[1] for u in uris]
    dataset = pds.dataset(paths, filesystem=fs, format="parquet")
    wanted = pa.array(sorted(set(sample_ids)), pa.string())
    where = dataset.to_table(columns=["sample_id", "__filename"], filter=pc.field("sample_id").isin(wanted))
    files = sorted(set(where.column("__filename").to_pylist()))
    out: dict[str, dict] = {}
    if files:
        table = pds.dataset(files, filesystem=fs, format="parquet").to_table(filter=pc.field("sample_id").isin(wanted))
        for row in table.to_pylist():
            out.setdefault(row["sample_id"], row)
    return _resolve_refs(out, dataset.schema)


def _resolve_refs(rows: dict[str, dict], schema: pa.Schema) -> tuple[dict[str, dict], pa.Schema]:
    """Checkpoints hold media as references (pipeline/media.py): the few example rows get their
    bytes back, so thumbnails work as when rows carried them. A reference that cannot be served
    shows as a row without bytes; the reason is kept in ``<column>_missing``."""
    from pipeline import media

    for name in [n for n in schema.names if n.endswith(media.REF_SUFFIX)]:
        col = name[: -len(media.REF_SUFFIX)]
        if col in schema.names:
            continue
        ids = [sid for sid, r in rows.items() if r.get(name)]
        got = media.fetch([rows[sid][name] for sid in ids])
        for sid, g in zip(ids, got):
            rows[sid][col] = None if isinstance(g, media.MediaError) else g
            if isinstance(g, media.MediaError):
                rows[sid][col + "_missing"] = str(g)
        for r in rows.values():
            r.setdefault(col, None)
            r.pop(name, None)
        listed = any(isinstance(r.get(col), list) for r in rows.values())
        i = schema.get_field_index(name)
        schema = schema.set(i, pa.field(col, pa.list_(pa.binary()) if listed else pa.binary()))
    return rows, schema


def _data_uri(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def _to_jpeg(im, px: int) -> bytes:
    from PIL import Image

    im.thumbnail((px, px))
    if im.mode not in ("RGB", "L"):
        im = im.convert("RGBA")
        bg = Image.new("RGB", im.size, (255, 255, 255))
        bg.paste(im, mask=im.split()[-1])
        im = bg
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=72, optimize=True)
    return buf.getvalue()


def image_thumb(data: bytes | None, px: int) -> Thumb:
    if not data:
        return Thumb(None, "no image bytes")
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > MAX_IMAGE_PIXELS:
                return Thumb(None, f"not previewed: {im.width}x{im.height} pixels")
            size = f"{im.width}×{im.height}"  # before draft(), which shrinks JPEGs while decoding
            if im.format == "JPEG":
                im.draft("RGB", (px * 2, px * 2))
            im.load()
            return Thumb(_data_uri(_to_jpeg(im.copy(), px)), size)
    except Exception as e:  # truncated or corrupt media is exactly what a report must show
        return Thumb(None, f"cannot decode: {type(e).__name__}: {e}"[:200])


def frames_strip(frames: list[bytes] | None, px: int, max_frames: int = 8) -> list[Thumb]:
    """Up to ``max_frames`` frames sampled uniformly from a list of encoded frames."""
    frames = [f for f in (frames or []) if f]
    if not frames:
        return [Thumb(None, "no frames")]
    n = len(frames)
    picks = sorted({round(i * (n - 1) / max(max_frames - 1, 1)) for i in range(min(max_frames, n))})
    out = []
    for i in picks:
        t = image_thumb(frames[i], px)
        t.note = f"frame {i + 1}/{n}" if t.uri else f"frame {i + 1}/{n}: {t.note}"
        out.append(t)
    return out


def looks_like_video(data: bytes) -> bool:
    head = data[:16]
    return head[4:8] == b"ftyp" or head[:4] in (b"RIFF", b"\x1aE\xdf\xa3", b"OggS") or head[:3] == b"FLV"


def video_strip(data: bytes | None, px: int, max_frames: int = 6, max_decoded: int = 3000) -> list[Thumb]:
    """A few frames spread over a video, decoded with PyAV (when installed)."""
    if not data:
        return [Thumb(None, "no video bytes")]
    try:
        import av
    except ImportError:
        return [Thumb(None, "video (PyAV not installed: no preview)")]
    try:
        with av.open(io.BytesIO(data)) as container:
            stream = container.streams.video[0]
            total = stream.frames or 0
            if total > 1:
                want = sorted({round(i * (total - 1) / max(max_frames - 1, 1)) for i in range(max_frames)})
            else:
                want = list(range(0, max_frames * 10, 10))
            out, wanted = [], set(want)
            for i, frame in enumerate(container.decode(stream)):
                if i in wanted:
                    t = Thumb(_data_uri(_to_jpeg(frame.to_image(), px)), f"frame {i + 1}" + (f"/{total}" if total else ""))
                    out.append(t)
                    if len(out) == len(want):
                        break
                if i >= max_decoded:
                    break
            return out or [Thumb(None, "video: no frame decoded")]
    except Exception as e:
        return [Thumb(None, f"cannot decode video: {type(e).__name__}: {e}"[:200])]


def media_thumbs(value, arrow_type: pa.DataType, column: str, px: int) -> list[Thumb]:
    """Thumbnails for one media cell, by its Arrow type (see module doc)."""
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        return frames_strip(value, max(px * 3 // 5, 48))
    if value is None:
        return [Thumb(None, f"no {column}")]
    data = bytes(value)
    if "video" in column.lower() or looks_like_video(data):
        return video_strip(data, max(px * 3 // 5, 48))
    return [image_thumb(data, px)]


def is_media_type(t: pa.DataType) -> bool:
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return True
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return pa.types.is_binary(t.value_type) or pa.types.is_large_binary(t.value_type)
    return False
