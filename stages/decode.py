"""decode: open and verify images, record their size, format and content hash.

Decoding is the CPU-bound step that feeds GPU judges, so it uses Pillow's
``draft`` mode (JPEG decodes at a reduced scale, several times faster) to
prove the whole stream decodes without paying for a full-size decode. The
original bytes travel on untouched unless ``reencode`` is set. A PNG must also hold a
whole chunk stream up to IEND (``stages/png_chunks.py``): Pillow decodes one cut inside its
last IDAT chunk, filling in what is missing.
"""
from __future__ import annotations

import hashlib
import io
import warnings

import pandas as pd
import pyarrow as pa
from PIL import Image
from pydantic import Field

from stages.base import DROPPED, ERROR, KEPT, Params, Resources, Stage
from stages.png_chunks import png_stream_problem


class DecodeParams(Params):
    min_side: int = Field(32, ge=1, description="images whose shorter side is below this are dropped")
    max_pixels: int = Field(89_478_485, ge=1, description="decompression-bomb guard: larger images are dropped")
    max_aspect_ratio: float = Field(0.0, ge=0, description="drop images with long/short side above this (0 = off)")
    verify: bool = Field(True, description="decode the pixel data, not only the header")
    reencode: str | None = Field(None, description="re-encode kept images to this format (jpeg|png|webp); None keeps bytes as ingested")
    reencode_quality: int = Field(95, ge=1, le=100)


class DecodeStage(Stage):
    kind = "decode"
    Params = DecodeParams
    description = "Open and verify images (Pillow, draft mode), record width/height/format/hash; drop bombs and tiny images."
    code_deps = ("stages.png_chunks",)
    requires = {"image": pa.binary()}
    produces = {
        "width": pa.int32(),
        "height": pa.int32(),
        "min_side": pa.int32(),
        "aspect_ratio": pa.float32(),
        "image_format": pa.string(),
        "image_hash": pa.string(),
        "image": pa.binary(),
    }
    default_resources = Resources(num_cpus=1, batch_size=256)  # per-batch frame costs amortised; ~8 MiB of JPEGs

    def process(self, batch: pd.DataFrame) -> pd.DataFrame:
        out = {c: [] for c in ("width", "height", "min_side", "aspect_ratio", "image_format", "image_hash", "image", "status", "reason")}
        # The reference's hash is blake2b-128 of exactly these bytes (pipeline/media.py): not hashed twice.
        refs = batch["image_ref"] if "image_ref" in batch.columns else [None] * len(batch)
        for data, status, reason, ref in zip(batch["image"], batch["status"], batch["reason"], refs):
            r = self._one(data, ref.split(":", 1)[0] if isinstance(ref, str) and ref else None)
            out["width"].append(r.get("width"))
            out["height"].append(r.get("height"))
            w, h = r.get("width"), r.get("height")
            out["min_side"].append(min(w, h) if w and h else None)
            out["aspect_ratio"].append(max(w, h) / min(w, h) if w and h else None)
            out["image_format"].append(r.get("format"))
            out["image_hash"].append(r.get("hash"))
            out["image"].append(r.get("image", data))
            out["status"].append(r.get("status", status))
            out["reason"].append(r.get("reason", reason))
        for c, v in out.items():
            batch[c] = v
        return batch

    def _one(self, data, known_hash: str | None = None) -> dict:
        p = self.params
        if data is None or len(data) == 0:
            return {"status": ERROR, "reason": "corrupt_image: no image bytes"}
        data = bytes(data)
        r: dict = {"hash": known_hash or hashlib.blake2b(data, digest_size=16).hexdigest()}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                im = Image.open(io.BytesIO(data))
                # Our own pixel guard replaces Pillow's global one (no global state is changed).
                w, h = im.size
                r.update(width=w, height=h, format=(im.format or "").lower())
                if w * h > p.max_pixels:
                    return {**r, "status": DROPPED, "reason": f"decompression_bomb: {w}x{h} > max_pixels {p.max_pixels}"}
                if p.verify:
                    # Pillow fills in a PNG cut inside its last IDAT; the chunk walk catches it.
                    broken = png_stream_problem(data) if im.format == "PNG" else None
                    if broken:
                        return {**r, "status": ERROR, "reason": f"corrupt_image: {broken}"}
                    if im.format == "JPEG":
                        im.draft("RGB", (max(1, w // 8), max(1, h // 8)))
                    im.load()
        except Image.DecompressionBombError as e:
            return {**r, "status": DROPPED, "reason": f"decompression_bomb: {e}"}
        except Exception as e:  # Pillow raises many types for bad data
            return {**r, "status": ERROR, "reason": f"corrupt_image: {type(e).__name__}: {e}"}
        if min(w, h) < p.min_side:
            return {**r, "status": DROPPED, "reason": f"min_side<{p.min_side}"}
        if p.max_aspect_ratio and max(w, h) / min(w, h) > p.max_aspect_ratio:
            return {**r, "status": DROPPED, "reason": f"aspect_ratio>{p.max_aspect_ratio:g}"}
        if p.reencode:
            buf = io.BytesIO()
            full = Image.open(io.BytesIO(data)).convert("RGB")
            full.save(buf, format=p.reencode.upper(), quality=p.reencode_quality)
            r["image"] = buf.getvalue()
            r["format"] = p.reencode.lower()
        return r
