"""The stage contract the runner enforces: filters mark rows, never delete them; failures become error rows."""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import pandas as pd
import pytest
import skimage
from PIL import Image

from pipeline.execution import StageCall
from stages.decode import DecodeParams, DecodeStage
from stages.filter import FilterParams, FilterStage

DATA = Path(skimage.__file__).parent / "data"


def batch(n=4, **cols) -> pd.DataFrame:
    df = pd.DataFrame({
        "sample_id": [f"id{i}" for i in range(n)], "source": "s", "source_key": [f"k{i}" for i in range(n)],
        "status": "kept", "reason": None, "_chunk": "ingest-000000", "_decided_at": None,
    })
    for k, v in cols.items():
        df[k] = v
    return df


def call(stage, df) -> pd.DataFrame:
    sc = StageCall(stage.kind, stage.params.model_dump(mode="json"), stage.name, None, stage.output_columns())
    sc.stage = stage
    return sc(df).to_pandas()


class Picky(FilterStage):
    """A stage with a bug on one row, and optionally one that deletes rows."""

    def __init__(self, delete=False):
        super().__init__(FilterParams(), "picky")
        self.delete = delete
        self.seen = []

    def process(self, df):
        self.seen.extend(df["sample_id"])
        if self.delete:
            return df.iloc[1:]
        if "id2" in set(df["sample_id"]):
            raise ValueError("cannot handle id2")
        df["status"] = ["dropped" if s == "id1" else "kept" for s in df["sample_id"]]
        df["reason"] = ["odd" if s == "id1" else None for s in df["sample_id"]]
        return df


def test_only_kept_rows_reach_a_stage_and_others_pass_through_untouched():
    df = batch()
    df.loc[3, ["status", "reason", "_decided_at"]] = ["error", "earlier", "ingest"]
    stage = Picky()
    out = call(stage, df)
    assert "id3" not in stage.seen
    row3 = out.set_index("sample_id").loc["id3"]
    assert (row3["status"], row3["reason"], row3["_decided_at"]) == ("error", "earlier", "ingest")


def test_a_row_that_raises_becomes_an_error_row_and_the_batch_goes_on():
    out = call(Picky(), batch()).set_index("sample_id")
    assert out.loc["id2", "status"] == "error"
    assert out.loc["id2", "reason"] == "filter_failed: ValueError: cannot handle id2"
    assert out.loc["id1", "status"] == "dropped" and out.loc["id1", "reason"] == "odd"
    assert out.loc["id0", "status"] == "kept" and out.loc["id3", "status"] == "kept"
    assert out.loc["id1", "_decided_at"] == "picky" and pd.isna(out.loc["id0", "_decided_at"])


def test_a_stage_that_deletes_rows_is_a_bug_and_stops_the_run():
    with pytest.raises(RuntimeError, match="broke the stage contract"):
        call(Picky(delete=True), batch())


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims a huge size (a decompression bomb), with a valid CRC."""
    raw = io.BytesIO()
    Image.new("L", (8, 8)).save(raw, format="PNG")
    data = bytearray(raw.getvalue())
    ihdr = data[12:29]  # b'IHDR' + 13 bytes
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)) & 0xFFFFFFFF)
    return bytes(data)


def test_decode_records_size_format_hash_and_keeps_bytes():
    png = (DATA / "astronaut.png").read_bytes()
    jpg = (DATA / "rocket.jpg").read_bytes()
    out = call(DecodeStage(DecodeParams(), "decode"), batch(2, image=[png, jpg])).set_index("sample_id")
    assert list(out["status"]) == ["kept", "kept"]
    assert (out.loc["id0", "width"], out.loc["id0", "height"], out.loc["id0", "image_format"]) == (512, 512, "png")
    assert out.loc["id1", "image_format"] == "jpeg" and out.loc["id1", "min_side"] == min(Image.open(DATA / "rocket.jpg").size)
    assert out.loc["id0", "image"] == png  # never re-encoded unless asked
    assert out.loc["id0", "image_hash"] != out.loc["id1", "image_hash"] and len(out.loc["id0", "image_hash"]) == 32


def test_decode_rejects_bombs_tiny_and_broken_images():
    jpg = (DATA / "rocket.jpg").read_bytes()
    tiny = io.BytesIO()
    Image.new("RGB", (20, 300)).save(tiny, format="PNG")
    images = [_png_claiming(100_000, 100_000), tiny.getvalue(), jpg[: len(jpg) // 2], b"not an image", b""]
    out = call(DecodeStage(DecodeParams(max_aspect_ratio=10), "decode"), batch(5, image=images))
    got = list(zip(out["status"], out["reason"].str.split(":").str[0]))
    assert got == [("dropped", "decompression_bomb"), ("dropped", "min_side<32"), ("error", "corrupt_image"),
                   ("error", "corrupt_image"), ("error", "corrupt_image")]
    wide = io.BytesIO()
    Image.new("RGB", (800, 40)).save(wide, format="PNG")
    out = call(DecodeStage(DecodeParams(max_aspect_ratio=10), "decode"), batch(1, image=[wide.getvalue()]))
    assert out["reason"][0] == "aspect_ratio>10"


def test_decode_reencodes_only_when_asked():
    png = (DATA / "chelsea.png").read_bytes()
    out = call(DecodeStage(DecodeParams(reencode="jpeg"), "decode"), batch(1, image=[png]))
    assert out["image"][0][:3] == b"\xff\xd8\xff" and out["image_format"][0] == "jpeg"


def test_filter_rules_name_the_failed_threshold():
    params = FilterParams(rules=[
        {"column": "vir", "min": 3}, {"column": "ita", "max": 4.5}, {"column": "lang", "equals": "en"},
        {"column": "len(text)", "min": 5},
    ])
    df = batch(6, vir=[3, 2, 5, None, 4, 4], ita=[1, 1, 5, 1, 1, 1], lang=["en", "en", "en", "en", "de", "en"],
               text=["hello there", "hello there", "hello there", "hello there", "hello there", "hi"])
    out = call(FilterStage(params, "filter"), df)
    assert out["reason"].fillna("").tolist() == ["", "vir<3", "ita>4.5", "vir:missing", "lang!=en", "len(text)<5"]
    assert out["status"].tolist() == ["kept"] + ["dropped"] * 5
