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

from instructions.rules import image_problem

from .hostile import (gif_bomb, jpeg_bomb, peak_rss_mb, png_bomb, png_chunk_spans, real_jpeg, real_png, rechunk_png,
                      reset_peak_rss)

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


@given(which=st.sampled_from(["jpeg", "png"]), cut=st.floats(0.0, 1.0))
def test_an_image_cut_anywhere_is_an_error_row_naming_the_damage(which, cut):
    data = JPEG if which == "jpeg" else PNG
    (r,) = decode([data[: min(int(len(data) * cut), len(data) - 1)]]).to_dict("records")  # up to its last byte
    assert r["status"] == ERROR, r
    assert r["reason"].startswith("corrupt_image"), r["reason"]


def test_a_png_cut_at_every_byte_of_its_last_idat_chunk_is_an_error_row_never_kept():
    # Pillow loads these (the zlib stream ends early; the rows it lacks come out blank), so the
    # chunk stream is what must be checked: length, type and CRC of each chunk, up to IEND.
    png = rechunk_png(real_png((96, 64), seed=3), idat_size=1024)
    spans = png_chunk_spans(png)
    (idat, last_idat, idat_end), (iend, _, end) = spans[-2], spans[-1]
    assert (idat, iend, end) == (b"IDAT", b"IEND", len(png)) and spans[-3][0] == b"IDAT"
    cuts = list(range(last_idat, len(png)))
    out = decode([png[:c] for c in cuts])
    for cut, r in zip(cuts, out.to_dict("records")):
        assert r["status"] == ERROR, (cut, r)
        assert r["reason"].startswith("corrupt_image: truncated PNG: ends "), (cut, r["reason"])
        assert r["reason"].endswith("(no complete IEND chunk)"), (cut, r["reason"])
    assert out.loc[0, "reason"] == f"corrupt_image: truncated PNG: ends after the IDAT chunk at byte {last_idat} (no complete IEND chunk)"
    assert out.loc[100, "reason"] == (f"corrupt_image: truncated PNG: ends inside IDAT chunk at byte {last_idat + 100} "
                                      f"of {idat_end} (no complete IEND chunk)")
    # the instruction rules' image check (instruction_validate) refuses them the same way
    for cut in cuts[:: max(1, len(cuts) // 40)] + [len(png) - 1]:
        assert image_problem(png[:cut], 16).startswith("does not decode (truncated PNG"), cut
    assert image_problem(png, 16) is None and decode([png]).loc[0, "status"] == KEPT


def test_a_png_with_bytes_after_iend_is_kept_and_one_failing_a_crc_is_an_error():
    assert decode([PNG + b"\0 trailing bytes, as many files in the wild carry"]).loc[0, "status"] == KEPT
    _, start, end = next(c for c in png_chunk_spans(PNG) if c[0] == b"IDAT")
    flipped = bytearray(PNG)
    flipped[end - 1] ^= 0x01  # the IDAT's CRC: Pillow never reads it
    (r,) = decode([bytes(flipped)]).to_dict("records")
    assert r["status"] == ERROR and r["reason"] == f"corrupt_image: damaged PNG: IDAT chunk at byte {start} fails its CRC"


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
