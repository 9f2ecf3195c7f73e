"""``instruction_ingest`` (JSONL / JSON array / Parquet conversations + images) under hostile input.

Properties: ``list_units`` and ``read_unit`` never raise, whatever the records hold (any JSON
value in any field, nesting bombs, invalid UTF-8, lone surrogates, image paths that are FIFOs,
devices, folders, NUL bytes, huge files or data URLs); every record is exactly one row, kept or
with a reason naming what was wrong; nothing is written outside the run.
"""
from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.config import SourceConfig
from stages.base import DROPPED, ERROR, KEPT, STATUSES
from stages.instruction_ingest import COLUMNS, InstructionIngestParams, InstructionIngestStage

from .hostile import arena, json_bomb, real_jpeg, tree

IMG = real_jpeg((32, 24))
MAX_IMAGE = 4096


def read_source(path: Path, **params) -> pd.DataFrame:
    stage = InstructionIngestStage(InstructionIngestParams(source="s", max_image_bytes=MAX_IMAGE, **params), "ingest")
    units = stage.list_units({"s": SourceConfig(path=str(path))})
    df = pd.concat([stage.read_unit(json.loads(json.dumps(u))) for u in units], ignore_index=True)
    assert list(df.columns) == COLUMNS
    for r in df.to_dict("records"):
        assert r["status"] in STATUSES
        if r["status"] != KEPT:
            assert isinstance(r["reason"], str) and r["reason"].strip(), r
    assert df["sample_id"].is_unique
    strings = [c for c in COLUMNS if c not in ("images", "num_images", "num_turns")]
    pa.Table.from_pandas(df[strings], preserve_index=False)  # Arrow can store every string
    return df


# Any JSON value, and records made of the keys the normaliser looks at, holding any such values.
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                    max_leaves=12)
KEYS = ["conversations", "messages", "texts", "images", "image", "instruction", "input", "output", "question",
        "answer", "options", "system", "id", "from", "value", "role", "content", "type", "text", "user", "assistant"]
TURN = st.dictionaries(st.sampled_from(KEYS), JSON | st.sampled_from(["human", "gpt", "user", "<image>\nQ?", "A."]),
                       max_size=4)
RECORD = st.dictionaries(st.sampled_from(KEYS), JSON | st.lists(TURN, max_size=3), min_size=1, max_size=5)


@given(records=st.lists(RECORD, min_size=1, max_size=6), shape=st.sampled_from(["jsonl", "json", "parquet"]))
def test_records_of_any_shape_are_one_row_each_and_never_raise(tmp_path_factory, records, shape):
    with arena(tmp_path_factory.getbasetemp()) as root:
        path = root / f"data.{shape}"
        if shape == "jsonl":
            path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
        elif shape == "json":
            path.write_text(json.dumps(records))
        else:  # nested values as JSON strings, as exporters write conversations to Parquet
            cols = sorted({k for r in records for k in r})
            pq.write_table(pa.table({k: [json.dumps(r[k]) if k in r else None for r in records] for k in cols}), path)
        before = tree(root)
        df = read_source(path, chunk_rows=2)
        assert tree(root) == before
    assert len(df) == len(records)


FLAWS = {
    None: (),
    "not_json": ("bad_json",),
    "not_utf8": ("UTF-8",),
    "json_bomb": ("bad_json",),
    "surrogate_text": ("Unicode",),
    "image_missing": ("missing_image",),
    "image_nul_path": ("missing_image",),
    "image_surrogate_path": ("missing_image",),
    "image_fifo": ("not a regular file",),
    "image_dir": ("not a regular file",),
    "image_dev_zero": ("not a regular file",),
    "image_too_large": ("max_image_bytes",),
    "image_data_url_too_large": ("max_image_bytes",),
    "image_remote_url": ("remote URLs are not fetched",),
    "image_dotdot_missing": ("missing_image",),
}


@given(flaws=st.lists(st.sampled_from(list(FLAWS)), min_size=1, max_size=8), chunk_rows=st.integers(1, 3))
def test_hostile_lines_and_images_are_error_rows_naming_the_flaw(tmp_path_factory, flaws, chunk_rows):
    with arena(tmp_path_factory.getbasetemp()) as root:
        src = root / "in"
        (src / "img").mkdir(parents=True)
        (src / "img" / "ok.jpg").write_bytes(IMG)
        (src / "img" / "big.jpg").write_bytes(b"\0" * (MAX_IMAGE + 1))
        (src / "img" / "dir.jpg").mkdir()
        os.mkfifo(src / "img" / "fifo.jpg")
        image = {"image_missing": "img/nope.jpg", "image_nul_path": "img/a\0.jpg", "image_surrogate_path": "img/\udcff.jpg",
                 "image_fifo": "img/fifo.jpg", "image_dir": "img/dir.jpg", "image_dev_zero": "/dev/zero",
                 "image_too_large": "img/big.jpg", "image_remote_url": "http://127.0.0.1:9/x.jpg",
                 "image_data_url_too_large": "data:image/jpeg;base64," + base64.b64encode(b"\0" * (MAX_IMAGE + 1)).decode(),
                 "image_dotdot_missing": "../../escape.jpg"}
        lines = []
        for i, flaw in enumerate(flaws):
            rec = {"id": f"r{i}", "image": image.get(flaw, "img/ok.jpg"),
                   "conversations": [{"from": "human", "value": f"<image>\nWhat is in picture {i}?"},
                                     {"from": "gpt", "value": f"Noise number {i}."}]}
            line = json.dumps(rec).encode()
            line = {"not_json": b"{nope", "not_utf8": line[:-1] + b', "x": "\xff"}', "json_bomb": json_bomb(100_000),
                    "surrogate_text": line.replace(b"Noise", b"\\udc00 Noise")}.get(flaw, line)
            lines.append(line)
        (src / "data.jsonl").write_bytes(b"\n".join(lines) + b"\n")
        before = tree(root)
        df = read_source(src, chunk_rows=chunk_rows)
        assert tree(root) == before
    assert len(df) == len(flaws)
    for flaw, r in zip(flaws, df.to_dict("records")):
        if FLAWS[flaw]:
            assert r["status"] == ERROR, (flaw, r)
            assert any(w in r["reason"] for w in FLAWS[flaw]), (flaw, r["reason"])
        else:
            assert r["status"] in (KEPT, DROPPED), (flaw, r)


@pytest.mark.parametrize("content", [json_bomb(100_000), b"\xff[]", b"[{]", b"{}", b'"\\ud800"'])
def test_a_whole_json_file_that_is_hostile_is_one_error_row(tmp_path, content):
    (tmp_path / "data.json").write_bytes(content)
    (r,) = read_source(tmp_path).to_dict("records")
    assert r["status"] == ERROR and r["reason"].startswith("bad_json"), r["reason"]


@given(where=st.floats(0.0, 0.99))
def test_a_parquet_file_cut_short_is_an_error_row_not_a_crash(tmp_path_factory, where):
    with arena(tmp_path_factory.getbasetemp()) as root:
        conv = json.dumps([{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hello."}])
        pq.write_table(pa.table({"id": ["a", "b"], "conversations": [conv, conv]}), root / "d.parquet")
        data = (root / "d.parquet").read_bytes()
        (root / "d.parquet").write_bytes(data[: int(len(data) * where)])
        (r,) = read_source(root / "d.parquet").to_dict("records")
    assert r["status"] == ERROR and "parquet" in r["reason"].lower(), r["reason"]
