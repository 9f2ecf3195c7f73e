"""Perceptual hashes of images and videos, for near-duplicate search.

An image hash is the 64-bit DCT pHash of ``imagehash`` (8x8 low frequencies of a
32x32 greyscale thumbnail, each bit = above the median), stored as a signed
int64 so it fits an Arrow ``int64`` column. Re-encodes, rescales and mild
crops/colour changes move a handful of bits; unrelated images differ in ~32.

A video fingerprint is the list of pHashes of frames sampled uniformly in time
(the same indices the judge sees), so two encodes of the same clip line up frame
by frame whatever their fps or resolution.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

HASH_BITS = 64


def _to_int64(bits: np.ndarray) -> int:
    """Pack 64 booleans (row-major, as imagehash orders them) into a signed int64."""
    value = 0
    for b in bits.reshape(-1):
        value = (value << 1) | int(bool(b))
    return value - (1 << 64) if value >= (1 << 63) else value


def image_phash(image) -> int:
    """pHash of a PIL image (any mode) as a signed 64-bit integer."""
    import imagehash

    return _to_int64(imagehash.phash(image, hash_size=8).hash)


def image_phash_bytes(data: bytes) -> int:
    """pHash of encoded image bytes (JPEG, PNG, ...); raises on undecodable data."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.draft("L", (64, 64))  # JPEG: decode at reduced size, the hash only needs 32x32
        return image_phash(im.convert("L"))


def video_fingerprint(frames: Iterable) -> list[int]:
    """pHashes of uniformly sampled frames (PIL images or HxWx3 uint8 arrays), in time order."""
    from PIL import Image

    out = []
    for f in frames:
        im = f if isinstance(f, Image.Image) else Image.fromarray(np.asarray(f))
        out.append(image_phash(im))
    return out


def hamming(a: int, b: int) -> int:
    """Bits that differ between two 64-bit hashes (signed or unsigned)."""
    return bin((a ^ b) & 0xFFFFFFFFFFFFFFFF).count("1")
