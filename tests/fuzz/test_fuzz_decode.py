"""Image decode under hostile bytes: decompression bombs, images cut at any byte, flipped bytes.

Ingest passes image bytes on unread; ``decode`` is where they are parsed. Whatever the bytes,
``DecodeStage.process`` returns every row, each kept or with a reason naming what was wrong,
and a bomb is refused from its header, before any pixel memory is allocated.
"""
from __future__ import annotations

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from stages.base import DROPPED, ERROR, KEPT
from stages.decode import DecodeParams, DecodeStage

from .hostile import gif_bomb, jpeg_bomb, peak_rss_mb, png_bomb, real_jpeg, real_png, reset_peak_rss

JPEG, PNG = real_jpeg((96, 64)), real_png((96, 64))


def decode(images: list, **params) -> pd.DataFrame:
    batch = pd.DataFrame({"sample_id": [f"s{i}" for i in range(len(images))], "image": images,
                          "status": [KEPT] * len(images), "reason": [None] * len(images)})
    out = DecodeStage(DecodeParams(**params), "decode").process(batch.copy())
    assert list(out["sample_id"]) == list(batch["sample_id"])  # every row back, in order
    for r in out.to_dict("records"):
        assert r["status"] in (KEPT, DROPPED, ERROR)
        assert (r["status"] == KEPT) == (r["reason"] is None), r
    return out


def test_the_clean_images_decode():
    out = decode([JPEG, PNG])
    assert list(out["status"]) == [KEPT, KEPT] and list(out["width"]) == [96, 96]


# Sizes between our max_pixels (89M) and Pillow's own 2x limit, and far above it.
BOMBS = {
    "png 10000x9000, every row": png_bomb(10_000, 9_000, full=True),  # 257 KiB -> 270 MB of pixels
    "png 10000x10000": png_bomb(10_000, 10_000),
    "png 60000x60000": png_bomb(60_000, 60_000),
    "png 2^31-1 x 1": png_bomb(2 ** 31 - 1, 1),
    "gif 65535x65535": gif_bomb(65_535, 65_535),
    "gif 10000x9000": gif_bomb(10_000, 9_000),
    "jpeg 65000x65000": jpeg_bomb(65_000, 65_000),
    "jpeg 12000x8000": jpeg_bomb(12_000, 8_000),
}


def test_decompression_bombs_are_refused_from_the_header_without_allocating_pixels():
    assert all(len(b) < 300_000 for b in BOMBS.values())  # small files...
    measured = reset_peak_rss()
    before = peak_rss_mb()
    out = decode(list(BOMBS.values()))
    for name, r in zip(BOMBS, out.to_dict("records")):
        # ...promising >= 89M pixels (>= 267 MB as RGB): dropped, and the reason says so
        assert r["status"] == DROPPED and r["reason"].startswith("decompression_bomb"), (name, r["reason"])
    if measured:  # decoding the full 10000x9000 PNG costs ~350 MB of peak RSS (measured)
        assert peak_rss_mb() - before < 100, "a bomb was decoded"


def test_a_small_max_pixels_refuses_a_real_image_before_decoding_it():
    out = decode([png_bomb(3000, 3000, full=True)], max_pixels=1_000_000)
    assert out.loc[0, "status"] == DROPPED and out.loc[0, "reason"] == "decompression_bomb: 3000x3000 > max_pixels 1000000"


@given(which=st.sampled_from(["jpeg", "png"]), cut=st.floats(0.0, 0.97))
def test_an_image_cut_anywhere_is_an_error_row_naming_the_damage(which, cut):
    data = JPEG if which == "jpeg" else PNG
    (r,) = decode([data[: int(len(data) * cut)]]).to_dict("records")
    assert r["status"] == ERROR, r
    assert r["reason"].startswith("corrupt_image"), r["reason"]


@given(which=st.sampled_from(["jpeg", "png"]), flips=st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(1, 255)),
                                                               min_size=1, max_size=8))
def test_flipped_bytes_never_raise(which, flips):
    data = bytearray(JPEG if which == "jpeg" else PNG)
    for pos, xor in flips:
        data[pos % len(data)] ^= xor
    (r,) = decode([bytes(data)]).to_dict("records")
    if r["status"] != KEPT:
        assert r["reason"].split(":")[0] in ("corrupt_image", "decompression_bomb", "min_side<32"), r["reason"]


@pytest.mark.parametrize("data", [None, b"", b"\0" * 100, b"GIF89a", b"<svg xmlns='x'/>", b"\xff\xd8\xff" + b"\0" * 50])
def test_no_bytes_or_junk_is_a_corrupt_image(data):
    (r,) = decode([data]).to_dict("records")
    assert r["status"] == ERROR and r["reason"].startswith("corrupt_image")
