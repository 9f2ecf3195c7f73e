"""The ingest stage, read as a spec.

No Ray here: each test builds a real input under ``tmp_path`` from the images
scikit-image ships, asks ``IngestStage.list_units`` for the commit units the
driver would plan, and calls ``read_unit`` on each the way a worker would
(after a JSON round trip, as the runner sends units to workers as JSON).

What every test checks, besides its own point:
- every row has a status in {kept, dropped, error};
- a row that is not kept always says why (non-empty ``reason``);
- sample ids are unique within a unit.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import skimage

from pipeline import media
from pipeline.config import SourceConfig
from stages.base import DROPPED, ERROR, KEPT, STATUSES
from stages.ingest import IngestParams, IngestStage, detect_format

SKIMAGE_DATA = Path(skimage.__file__).parent / "data"


def image_bytes(name: str) -> bytes:
    """A real image file from scikit-image's bundled data."""
    return (SKIMAGE_DATA / name).read_bytes()


ROCKET = image_bytes("rocket.jpg")
ASTRONAUT = image_bytes("astronaut.png")
CHELSEA = image_bytes("chelsea.png")
COFFEE = image_bytes("coffee.png")


# -- helpers ----------------------------------------------------------------------------------------------


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    """A plain tar with regular-file members, in order, as img2dataset / webdataset write them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_700_000_000
            info.mode = 0o644
            tf.addfile(info, io.BytesIO(data))
    return path


def img2dataset_sample(key: str, image: bytes, caption: str | None, ext: str = "jpg", *,
                       txt: bool = True, url: str | None = None) -> list[tuple[str, bytes]]:
    """The members img2dataset writes for one sample: KEY.jpg, KEY.txt, KEY.json."""
    meta = {"url": url or f"https://example.com/{key}.{ext}", "key": key, "status": "success",
            "caption": caption, "width": 64, "height": 64}
    members = [(f"{key}.{ext}", image)]
    if txt and caption is not None:
        members.append((f"{key}.txt", caption.encode("utf-8")))
    members.append((f"{key}.json", json.dumps(meta).encode("utf-8")))
    return members


def member_offsets(path: Path) -> dict[str, tuple[int, int]]:
    """name -> (header offset, data offset) of each member of a tar."""
    with tarfile.open(path) as tf:
        return {m.name: (m.offset, m.offset_data) for m in tf.getmembers()}


def stage_for(path: Path | str, fmt: str = "auto", *, name: str = "src", **kw) -> tuple[IngestStage, list[dict]]:
    """An ingest stage over one source, and the units its driver side lists."""
    source_kw = {k: kw.pop(k) for k in ("text_column", "image_column", "key_column") if k in kw}
    stage = IngestStage(IngestParams(source=name, **kw), "ingest")
    units = stage.list_units({name: SourceConfig(path=str(path), format=fmt, **source_kw)})
    for u in units:
        # The runner ships units to workers as JSON; they must survive that unchanged.
        assert json.loads(json.dumps(u)) == u
    return stage, units


def read(stage: IngestStage, unit: dict) -> pd.DataFrame:
    df = stage.read_unit(json.loads(json.dumps(unit)))
    check_rows(df)
    return df


def read_all(stage: IngestStage, units: list[dict]) -> pd.DataFrame:
    frames = [read(stage, u) for u in units]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def check_rows(df: pd.DataFrame) -> None:
    """Invariants every ingest output keeps, whatever the input."""
    assert list(df.columns) == ["sample_id", "source", "source_key", "status", "reason",
                                "text", "image", "image_name", "meta", "image_ref"]
    assert set(df["status"]) <= set(STATUSES), set(df["status"])
    # A reference, where there is one, serves exactly the bytes ingest read (pipeline/media.py).
    refs = [(r["image_ref"], r["image"]) for _, r in df.iterrows() if not _missing(r["image_ref"])]
    assert all(img is not None for _, img in refs)
    assert media.fetch([ref for ref, _ in refs]) == [img for _, img in refs]
    for _, r in df.iterrows():
        if r["status"] != KEPT:
            assert isinstance(r["reason"], str) and r["reason"].strip(), f"non-kept row without a reason: {dict(r)}"
        else:
            assert _missing(r["reason"])
        assert isinstance(r["sample_id"], str) and len(r["sample_id"]) == 32
        if not _missing(r["meta"]):
            assert isinstance(json.loads(r["meta"]), dict)
    assert df["sample_id"].is_unique, df[df["sample_id"].duplicated(keep=False)]


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and pd.isna(value))


def by_key(df: pd.DataFrame) -> dict[str, dict]:
    assert df["source_key"].is_unique
    return {r["source_key"]: r for r in df.to_dict("records")}


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# -- WebDataset -------------------------------------------------------------------------------------------


@pytest.fixture
def wds_folder(tmp_path: Path) -> Path:
    """Two img2dataset-style shards of three samples each, plus the sidecar files img2dataset writes."""
    out = tmp_path / "wds"
    write_tar(out / "00000.tar",
              img2dataset_sample("000000000", ROCKET, "a rocket on the launch pad")
              + img2dataset_sample("000000001", ASTRONAUT, "an astronaut in an orange suit", ext="png")
              + img2dataset_sample("000000002", CHELSEA, "a tabby cat", ext="png"))
    write_tar(out / "00001.tar",
              img2dataset_sample("000010000", COFFEE, "a cup of coffee", ext="png")
              + img2dataset_sample("000010001", ROCKET, "the same rocket, another caption")
              + img2dataset_sample("000010002", CHELSEA, "Chelsea the cat, café style", ext="png"))
    pq.write_table(pa.table({"key": ["000000000"], "status": ["success"]}), out / "00000.parquet")
    (out / "00000_stats.json").write_text("{}")
    return out


def test_webdataset_folder_is_one_unit_per_tar(wds_folder):
    stage, units = stage_for(wds_folder)
    assert [u["format"] for u in units] == ["webdataset", "webdataset"]
    assert [u["label"] for u in units] == ["00000.tar", "00001.tar"]
    assert [os.path.basename(u["path"]) for u in units] == ["00000.tar", "00001.tar"]
    assert all(u["source"] == "src" for u in units)


def test_webdataset_single_tar_path_is_one_unit(wds_folder):
    stage, units = stage_for(wds_folder / "00001.tar")
    assert len(units) == 1
    df = read(stage, units[0])
    assert list(df["source_key"]) == ["000010000", "000010001", "000010002"]


def test_webdataset_reads_every_sample_with_caption_image_key_and_meta(wds_folder):
    stage, units = stage_for(wds_folder)
    first, second = read(stage, units[0]), read(stage, units[1])
    assert len(first) == 3 and len(second) == 3
    assert (first["status"] == KEPT).all() and (second["status"] == KEPT).all()
    assert (first["source"] == "src").all()

    rows = by_key(first)
    assert list(first["source_key"]) == ["000000000", "000000001", "000000002"]  # tar order
    rocket = rows["000000000"]
    assert rocket["text"] == "a rocket on the launch pad"
    assert rocket["image"] == ROCKET
    assert rocket["image_name"] == "000000000.jpg"
    meta = json.loads(rocket["meta"])
    assert meta["key"] == "000000000"
    assert meta["url"] == "https://example.com/000000000.jpg"
    assert meta["status"] == "success" and meta["width"] == 64

    astronaut = rows["000000001"]
    assert astronaut["image"] == ASTRONAUT and astronaut["image_name"] == "000000001.png"
    assert by_key(second)["000010002"]["text"] == "Chelsea the cat, café style"


def test_webdataset_caption_falls_back_to_json_caption(tmp_path):
    tar = write_tar(tmp_path / "s.tar", img2dataset_sample("k0", ROCKET, "caption only in json", txt=False))
    stage, units = stage_for(tmp_path)
    (row,) = read(stage, units[0]).to_dict("records")
    assert row["status"] == KEPT
    assert row["text"] == "caption only in json"
    assert tar.exists()


def test_webdataset_txt_caption_wins_over_json_caption(tmp_path):
    members = [("k0.jpg", ROCKET), ("k0.txt", b"from txt"),
               ("k0.json", json.dumps({"key": "k0", "caption": "from json"}).encode())]
    write_tar(tmp_path / "s.tar", members)
    stage, units = stage_for(tmp_path)
    assert read(stage, units[0])["text"].tolist() == ["from txt"]


def test_webdataset_sample_without_any_caption_is_kept_with_no_text(tmp_path):
    write_tar(tmp_path / "s.tar", [("k0.jpg", ROCKET)])
    stage, units = stage_for(tmp_path)
    (row,) = read(stage, units[0]).to_dict("records")
    assert row["status"] == KEPT and row["text"] is None and row["image"] == ROCKET
    assert row["source_key"] == "k0"  # no json: the member name is the key
    assert row["meta"] is None


def test_webdataset_source_key_comes_from_json_key(tmp_path):
    members = [("00000.jpg", ROCKET), ("00000.txt", b"a rocket"),
               ("00000.json", json.dumps({"key": "laion_123456", "caption": "x"}).encode())]
    write_tar(tmp_path / "s.tar", members)
    stage, units = stage_for(tmp_path)
    (row,) = read(stage, units[0]).to_dict("records")
    assert row["source_key"] == "laion_123456"
    assert row["image_name"] == "00000.jpg"  # the member name, not the json key


def test_webdataset_configured_text_and_key_fields_are_read_from_json(tmp_path):
    members = [("00000.png", COFFEE),
               ("00000.json", json.dumps({"uid": "u-1", "alt_text": "coffee with latte art", "key": "ignored"}).encode())]
    write_tar(tmp_path / "s.tar", members)
    stage, units = stage_for(tmp_path, text_column="alt_text", key_column="uid")
    (row,) = read(stage, units[0]).to_dict("records")
    assert row["text"] == "coffee with latte art"
    assert row["source_key"] == "u-1"


def test_webdataset_member_names_in_subfolders_keep_their_folder_in_the_key(tmp_path):
    members = [("shard/a.jpg", ROCKET), ("shard/a.txt", b"rocket"),
               ("other/a.png", CHELSEA), ("other/a.txt", b"cat")]
    write_tar(tmp_path / "s.tar", members)
    stage, units = stage_for(tmp_path)
    df = read(stage, units[0])
    assert list(df["source_key"]) == ["shard/a", "other/a"]
    assert list(df["image_name"]) == ["shard/a.jpg", "other/a.png"]
    assert list(df["text"]) == ["rocket", "cat"]


@pytest.fixture
def three_sample_tar(tmp_path: Path) -> Path:
    return write_tar(tmp_path / "in" / "00000.tar",
                     img2dataset_sample("k0", ROCKET, "first")
                     + img2dataset_sample("k1", ASTRONAUT, "second", ext="png")
                     + img2dataset_sample("k2", CHELSEA, "third", ext="png"))


def _truncate(path: Path, at: int) -> None:
    data = path.read_bytes()
    assert 0 < at < len(data)
    path.write_bytes(data[:at])


def test_truncated_tar_keeps_rows_before_the_damage_and_reports_it(three_sample_tar):
    # Cut in the middle of k1's image data: k0 is complete, k1 is cut off, k2 is gone.
    _, data_at = member_offsets(three_sample_tar)["k1.png"]
    _truncate(three_sample_tar, data_at + len(ASTRONAUT) // 2)
    stage, units = stage_for(three_sample_tar.parent)
    df = read(stage, units[0])

    assert df.iloc[0]["source_key"] == "k0"
    assert df.iloc[0]["status"] == KEPT and df.iloc[0]["image"] == ROCKET and df.iloc[0]["text"] == "first"

    # The cut-off sample is an error row, not silently lost.
    cut = df.iloc[1]
    assert cut["source_key"] == "k1" and cut["status"] == ERROR
    assert "cut off" in cut["reason"] or "truncated" in cut["reason"]

    # The damage itself is one more error row.
    damage = df.iloc[-1]
    assert damage["status"] == ERROR and damage["reason"].startswith("corrupt_tar")
    assert damage["source_key"] == "00000.tar#unreadable"
    assert len(df) == 3
    assert not (df["source_key"] == "k2").any()


@pytest.mark.parametrize("where", ["mid_header", "member_boundary_inside_sample", "mid_trailer_data"])
def test_truncated_tar_elsewhere_is_never_silent(three_sample_tar, where):
    """However the bytes are cut, the damage shows as an error row and no partial sample passes as kept."""
    offsets = member_offsets(three_sample_tar)
    if where == "mid_header":
        # Cut inside the 512-byte header of k1.txt: k1's image was read, its caption was not.
        at = offsets["k1.txt"][0] + 100
    elif where == "member_boundary_inside_sample":
        # Cut exactly where k1.txt's header starts: the archive simply stops after k1.png.
        at = offsets["k1.txt"][0]
    else:
        # Cut inside the last member's data.
        at = offsets["k2.json"][1] + 5
    _truncate(three_sample_tar, at)
    stage, units = stage_for(three_sample_tar.parent)
    df = read(stage, units[0])

    assert df.iloc[0]["source_key"] == "k0" and df.iloc[0]["status"] == KEPT
    assert df.iloc[-1]["status"] == ERROR and df.iloc[-1]["reason"].startswith("corrupt_tar")
    # The sample the cut went through is an error row, never a kept row missing a member.
    last_sample = "k1" if where != "mid_trailer_data" else "k2"
    cut = df[df["source_key"] == last_sample]
    assert len(cut) == 1 and cut.iloc[0]["status"] == ERROR
    if where == "mid_trailer_data":
        assert by_key(df)["k1"]["status"] == KEPT


def test_untruncated_tar_has_no_corrupt_row(three_sample_tar):
    stage, units = stage_for(three_sample_tar.parent)
    df = read(stage, units[0])
    assert list(df["source_key"]) == ["k0", "k1", "k2"] and (df["status"] == KEPT).all()


def test_file_that_is_not_a_tar_is_one_error_row(tmp_path):
    (tmp_path / "00000.tar").write_bytes(ASTRONAUT)  # a PNG with a .tar name
    stage, units = stage_for(tmp_path)
    assert len(units) == 1
    df = read(stage, units[0])
    assert len(df) == 1
    assert df.iloc[0]["status"] == ERROR and df.iloc[0]["reason"].startswith("corrupt_tar")
    assert df.iloc[0]["source_key"] == "00000.tar#unreadable"


def test_empty_tar_file_is_one_error_row(tmp_path):
    (tmp_path / "00000.tar").write_bytes(b"")
    stage, units = stage_for(tmp_path)
    df = read(stage, units[0])
    assert len(df) == 1 and df.iloc[0]["reason"].startswith("corrupt_tar")


def test_valid_tar_with_no_members_gives_no_rows(tmp_path):
    write_tar(tmp_path / "00000.tar", [])
    stage, units = stage_for(tmp_path)
    assert len(read(stage, units[0])) == 0


def test_sample_without_image_member_is_missing_image(tmp_path):
    members = (img2dataset_sample("k0", ROCKET, "ok")
               + [("k1.txt", b"no picture here"), ("k1.json", json.dumps({"key": "k1"}).encode())]
               + img2dataset_sample("k2", COFFEE, "also ok", ext="png"))
    write_tar(tmp_path / "s.tar", members)
    stage, units = stage_for(tmp_path)
    rows = by_key(read(stage, units[0]))
    assert rows["k0"]["status"] == KEPT and rows["k2"]["status"] == KEPT
    assert rows["k1"]["status"] == ERROR
    assert rows["k1"]["reason"].startswith("missing_image")
    assert rows["k1"]["text"] == "no picture here" and rows["k1"]["image"] is None


def test_caption_that_is_not_utf8_is_bad_text(tmp_path):
    members = ([("k0.jpg", ROCKET), ("k0.txt", b"caf\xe9 \xff\xfe"), ("k0.json", b'{"key": "k0"}')]
               + img2dataset_sample("k1", COFFEE, "fine", ext="png"))
    write_tar(tmp_path / "s.tar", members)
    stage, units = stage_for(tmp_path)
    rows = by_key(read(stage, units[0]))
    assert rows["k0"]["status"] == ERROR and rows["k0"]["reason"].startswith("bad_text")
    assert rows["k1"]["status"] == KEPT


def test_json_member_that_is_not_json_is_bad_json(tmp_path):
    write_tar(tmp_path / "s.tar", [("k0.jpg", ROCKET), ("k0.txt", b"x"), ("k0.json", b"{not json")])
    stage, units = stage_for(tmp_path)
    (row,) = read(stage, units[0]).to_dict("records")
    assert row["status"] == ERROR and row["reason"].startswith("bad_json")
    assert row["source_key"] == "k0"


def test_symlink_member_is_an_error_row_and_nothing_is_written(tmp_path, monkeypatch):
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    tar_path = tmp_path / "in" / "s.tar"
    tar_path.parent.mkdir()
    with tarfile.open(tar_path, "w") as tf:
        for name, data in img2dataset_sample("k0", ROCKET, "before"):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("k1.jpg")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        tf.addfile(link)
        for name, data in [("k1.txt", b"a link, not an image")] + img2dataset_sample("k2", COFFEE, "after", ext="png"):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    before = files_under(tmp_path)

    stage, units = stage_for(tar_path.parent)
    rows = by_key(read(stage, units[0]))

    assert rows["k0"]["status"] == KEPT and rows["k2"]["status"] == KEPT
    assert rows["k1"]["status"] == ERROR
    assert "symlink" in rows["k1"]["reason"]
    assert rows["k1"]["image"] is None
    assert files_under(tmp_path) == before  # nothing extracted anywhere


def test_member_larger_than_max_member_bytes_is_an_error_row(tmp_path):
    write_tar(tmp_path / "s.tar", img2dataset_sample("big", ASTRONAUT, "big", ext="png")
              + img2dataset_sample("small", ROCKET[:1000], "small"))
    stage, units = stage_for(tmp_path, max_member_bytes=len(ROCKET[:1000]) + 1)
    rows = by_key(read(stage, units[0]))
    assert rows["big"]["status"] == ERROR and "max_member_bytes" in rows["big"]["reason"]
    assert rows["small"]["status"] == KEPT


# -- Parquet ----------------------------------------------------------------------------------------------


def test_parquet_image_bytes_column(tmp_path):
    path = tmp_path / "data.parquet"
    pq.write_table(pa.table({
        "key": ["a", "b"],
        "image": pa.array([ROCKET, CHELSEA], pa.binary()),
        "caption": ["a rocket", "a cat"],
        "score": [0.5, 0.25],
    }), path)
    stage, units = stage_for(path)
    assert [u["format"] for u in units] == ["parquet"]
    rows = by_key(read(stage, units[0]))
    assert rows["a"]["image"] == ROCKET and rows["a"]["text"] == "a rocket" and rows["a"]["status"] == KEPT
    assert rows["b"]["image"] == CHELSEA
    assert json.loads(rows["b"]["meta"]) == {"score": 0.25}  # other columns, never the bytes


def test_parquet_hf_datasets_image_struct(tmp_path):
    path = tmp_path / "train-00000-of-00001.parquet"
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    pq.write_table(pa.table({
        "image": pa.array([{"bytes": ASTRONAUT, "path": "astronaut.png"},
                           {"bytes": COFFEE, "path": "coffee.png"}], struct),
        "text": ["an astronaut", "a coffee"],
    }), path)
    stage, units = stage_for(path)
    df = read(stage, units[0])
    assert list(df["image"]) == [ASTRONAUT, COFFEE]
    assert list(df["image_name"]) == ["astronaut.png", "coffee.png"]
    assert list(df["text"]) == ["an astronaut", "a coffee"]
    assert (df["status"] == KEPT).all()
    # No key column: the fallback key is FILE:ROW.
    assert list(df["source_key"]) == ["train-00000-of-00001.parquet:0", "train-00000-of-00001.parquet:1"]


def test_parquet_image_path_column_is_relative_to_the_parquet_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # paths must not be resolved against the working directory
    root = tmp_path / "dataset"
    (root / "imgs").mkdir(parents=True)
    (root / "imgs" / "rocket.jpg").write_bytes(ROCKET)
    (root / "imgs" / "chelsea.png").write_bytes(CHELSEA)
    pq.write_table(pa.table({
        "id": [1, 2, 3],
        "image_path": ["imgs/rocket.jpg", "imgs/chelsea.png", "imgs/not_there.png"],
        "caption": ["rocket", "cat", "ghost"],
    }), root / "meta.parquet")
    stage, units = stage_for(root)
    rows = by_key(read(stage, units[0]))
    assert rows["1"]["image"] == ROCKET and rows["1"]["image_name"] == "imgs/rocket.jpg"
    assert rows["2"]["image"] == CHELSEA and rows["2"]["status"] == KEPT
    assert rows["3"]["status"] == ERROR and rows["3"]["reason"].startswith("missing_image")
    assert "imgs/not_there.png" in rows["3"]["reason"]


def test_parquet_struct_with_only_a_path_reads_the_file(tmp_path):
    (tmp_path / "coffee.png").write_bytes(COFFEE)
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    pq.write_table(pa.table({"image": pa.array([{"bytes": None, "path": "coffee.png"}], struct),
                             "text": ["coffee"]}), tmp_path / "d.parquet")
    stage, units = stage_for(tmp_path / "d.parquet")
    (row,) = read(stage, units[0]).to_dict("records")
    assert row["image"] == COFFEE and row["image_name"] == "coffee.png" and row["status"] == KEPT


def test_parquet_text_only_documents(tmp_path):
    path = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"id": ["doc-1", "doc-2", "doc-3"],
                             "text": ["First document.", "Second document.", "Третий документ."]}), path)
    stage, units = stage_for(path)
    df = read(stage, units[0])
    assert list(df["source_key"]) == ["doc-1", "doc-2", "doc-3"]
    assert list(df["text"]) == ["First document.", "Second document.", "Третий документ."]
    assert df["image"].isna().all() and df["image_name"].isna().all()
    assert (df["status"] == KEPT).all()


def test_parquet_explicit_text_image_and_key_columns(tmp_path):
    path = tmp_path / "custom.parquet"
    pq.write_table(pa.table({
        "doc_uid": ["x1", "x2"],
        "body": ["the chosen text", "more chosen text"],
        "caption": ["not this one", "nor this"],        # a common name, but not the configured one
        "pixels": pa.array([ROCKET, COFFEE], pa.binary()),
        "key": ["wrong-1", "wrong-2"],
    }), path)
    stage, units = stage_for(path, text_column="body", key_column="doc_uid", image_column="pixels")
    rows = by_key(read(stage, units[0]))
    assert set(rows) == {"x1", "x2"}
    assert rows["x1"]["text"] == "the chosen text" and rows["x1"]["image"] == ROCKET
    meta = json.loads(rows["x1"]["meta"])
    assert meta == {"caption": "not this one", "key": "wrong-1"}


@pytest.mark.parametrize("field", ["text_column", "image_column", "key_column"])
def test_parquet_configured_column_that_does_not_exist_names_it(tmp_path, field):
    path = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"id": ["a"], "text": ["hello"]}), path)
    stage, units = stage_for(path, **{field: "no_such_column"})
    # read_unit raises; the runner turns the exception into one error row for the unit.
    with pytest.raises(ValueError) as e:
        stage.read_unit(units[0])
    msg = str(e.value)
    assert "no_such_column" in msg and field in msg and "docs.parquet" in msg
    assert "text" in msg and "id" in msg  # it lists the columns there are


def test_parquet_row_groups_and_chunk_rows_give_units_covering_every_row_once(tmp_path):
    path = tmp_path / "big.parquet"
    n = 23
    pq.write_table(pa.table({"caption": [f"caption {i}" for i in range(n)],
                             "image": pa.array([ROCKET if i % 2 else CHELSEA for i in range(n)], pa.binary())}),
                   path, row_group_size=4)
    assert pq.ParquetFile(path).metadata.num_row_groups == 6
    stage, units = stage_for(path, chunk_rows=7)
    # Row groups of 4 grouped until at least 7 rows: [0,1] [2,3] [4,5].
    assert [u["row_groups"] for u in units] == [[0, 1], [2, 3], [4, 5]]
    assert len({u["label"] for u in units}) == len(units)
    frames = [read(stage, u) for u in units]
    assert [len(f) for f in frames] == [8, 8, 7]
    df = pd.concat(frames, ignore_index=True)
    assert sorted(df["text"]) == sorted(f"caption {i}" for i in range(n))
    assert df["text"].is_unique and df["sample_id"].is_unique
    # Fallback keys number rows across the whole file, not within the unit.
    assert list(df["source_key"]) == [f"big.parquet:{i}" for i in range(n)]
    assert all(df["text"][i] == f"caption {i}" for i in range(n))


def test_parquet_chunk_rows_larger_than_the_file_is_one_unit(tmp_path):
    path = tmp_path / "small.parquet"
    pq.write_table(pa.table({"id": list(range(10)), "text": [str(i) for i in range(10)]}), path, row_group_size=3)
    stage, units = stage_for(path)
    assert len(units) == 1 and units[0]["row_groups"] == [0, 1, 2, 3]
    assert len(read(stage, units[0])) == 10


def test_parquet_folder_is_read_recursively_and_in_order(tmp_path):
    root = tmp_path / "pq"
    (root / "part=b").mkdir(parents=True)
    pq.write_table(pa.table({"id": ["a1", "a2"], "text": ["x", "y"]}), root / "a.parquet")
    pq.write_table(pa.table({"id": ["b1"], "text": ["z"]}), root / "part=b" / "b.parquet")
    stage, units = stage_for(root)
    assert detect_format(str(root)) == "parquet"
    df = read_all(stage, units)
    assert sorted(df["source_key"]) == ["a1", "a2", "b1"]


def test_parquet_file_with_no_rows_gives_no_rows(tmp_path):
    path = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"id": pa.array([], pa.string()), "text": pa.array([], pa.string())}), path)
    stage, units = stage_for(path)
    assert len(read_all(stage, units)) == 0


def test_parquet_binary_text_that_is_not_utf8_is_bad_text(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"id": ["ok", "bad"], "text": pa.array([b"fine", b"\xff\xfe"], pa.binary())}), path)
    stage, units = stage_for(path)
    rows = by_key(read(stage, units[0]))
    assert rows["ok"]["text"] == "fine" and rows["ok"]["status"] == KEPT
    assert rows["bad"]["status"] == ERROR and rows["bad"]["reason"].startswith("bad_text")


# -- JSONL + images ---------------------------------------------------------------------------------------


def jsonl_folder(root: Path, lines: list[str | bytes], images: dict[str, bytes] | None = None,
                 name: str = "captions.jsonl", trailing_newline: bool = True) -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    for fname, data in (images or {}).items():
        (root / "images" / fname).write_bytes(data)
    raw = b"\n".join(x if isinstance(x, bytes) else x.encode("utf-8") for x in lines)
    (root / name).write_bytes(raw + (b"\n" if trailing_newline else b""))
    return root


def line(image: str | None, caption: str, **extra) -> str:
    rec = {**extra, "caption": caption}
    if image is not None:
        rec["image"] = image
    return json.dumps(rec, ensure_ascii=False)


def test_jsonl_reads_image_and_caption(tmp_path):
    root = jsonl_folder(tmp_path / "d", [line("images/rocket.jpg", "a rocket", id="r", license="cc0"),
                                         line("images/cat.png", "a cat", id="c")],
                        {"rocket.jpg": ROCKET, "cat.png": CHELSEA})
    stage, units = stage_for(root)
    assert [u["format"] for u in units] == ["jsonl_images"]
    rows = by_key(read(stage, units[0]))
    assert rows["r"]["image"] == ROCKET and rows["r"]["text"] == "a rocket"
    assert rows["r"]["image_name"] == "images/rocket.jpg" and rows["r"]["status"] == KEPT
    assert json.loads(rows["r"]["meta"]) == {"license": "cc0"}
    assert rows["c"]["image"] == CHELSEA


@pytest.mark.parametrize("trailing_newline", [True, False])
def test_jsonl_chunk_rows_splits_lines_and_reads_each_once(tmp_path, trailing_newline):
    lines = [line("images/rocket.jpg", f"caption {i}") for i in range(1, 8)]  # 7 lines, no ids
    root = jsonl_folder(tmp_path / "d", lines, {"rocket.jpg": ROCKET}, trailing_newline=trailing_newline)
    stage, units = stage_for(root, chunk_rows=3)
    assert len(units) == 3
    assert [u["first_line"] for u in units] == [1, 4, 7]
    assert [u["label"] for u in units] == ["captions.jsonl:1", "captions.jsonl:4", "captions.jsonl:7"]
    frames = [read(stage, u) for u in units]
    assert [len(f) for f in frames] == [3, 3, 1]
    df = pd.concat(frames, ignore_index=True)
    assert list(df["text"]) == [f"caption {i}" for i in range(1, 8)]
    # No key field: the key is FILE:LINE, with the line number counted across units.
    assert list(df["source_key"]) == [f"captions.jsonl:{i}" for i in range(1, 8)]
    assert df["sample_id"].is_unique and (df["status"] == KEPT).all()


def test_jsonl_chunk_boundary_exactly_at_the_end(tmp_path):
    root = jsonl_folder(tmp_path / "d", [line(None, f"t{i}") for i in range(6)])
    stage, units = stage_for(root, chunk_rows=3)
    assert len(units) == 2
    df = read_all(stage, units)
    assert list(df["text"]) == [f"t{i}" for i in range(6)]


def test_jsonl_blank_lines_are_skipped_but_counted(tmp_path):
    root = jsonl_folder(tmp_path / "d", [line(None, "one"), "", "   ", line(None, "four"), "not json"])
    stage, units = stage_for(root, chunk_rows=2)
    df = read_all(stage, units)
    assert list(df["source_key"]) == ["captions.jsonl:1", "captions.jsonl:4", "captions.jsonl:5"]
    assert df.iloc[2]["reason"].startswith("bad_json: line 5")


def test_jsonl_several_files_in_a_folder(tmp_path):
    root = tmp_path / "d"
    jsonl_folder(root, [line("images/a.png", "a", id="a1")], {"a.png": ASTRONAUT}, name="a.jsonl")
    jsonl_folder(root, [line("images/b.png", "b", id="b1"), line("images/b.png", "b2", id="b2")],
                 {"b.png": COFFEE}, name="b.jsonl")
    stage, units = stage_for(root, chunk_rows=1)
    assert [u["label"] for u in units] == ["a.jsonl:1", "b.jsonl:1", "b.jsonl:2"]
    df = read_all(stage, units)
    assert list(df["source_key"]) == ["a1", "b1", "b2"]


def test_jsonl_missing_image_file_is_an_error_row(tmp_path):
    root = jsonl_folder(tmp_path / "d", [line("images/rocket.jpg", "here", id="ok"),
                                         line("images/does_not_exist.jpg", "not here", id="gone")],
                        {"rocket.jpg": ROCKET})
    stage, units = stage_for(root)
    rows = by_key(read(stage, units[0]))
    assert rows["ok"]["status"] == KEPT
    assert rows["gone"]["status"] == ERROR
    assert rows["gone"]["reason"].startswith("missing_image")
    assert "images/does_not_exist.jpg" in rows["gone"]["reason"]
    assert rows["gone"]["text"] == "not here"  # the row still carries what could be read


def test_jsonl_image_path_that_is_a_folder_is_missing_image(tmp_path):
    root = jsonl_folder(tmp_path / "d", [line("images", "a folder, not a file", id="dir")])
    stage, units = stage_for(root)
    (row,) = read(stage, units[0]).to_dict("records")
    assert row["status"] == ERROR and row["reason"].startswith("missing_image")


def test_jsonl_line_that_is_not_json_is_bad_json_with_its_line_number(tmp_path):
    root = jsonl_folder(tmp_path / "d", [line(None, "fine", id="a"), '{"id": "b", "caption": "cut',
                                         "[1, 2, 3]", line(None, "also fine", id="d")])
    stage, units = stage_for(root)
    df = read(stage, units[0])
    assert len(df) == 4
    assert list(df["status"]) == [KEPT, ERROR, ERROR, KEPT]
    assert df.iloc[1]["reason"].startswith("bad_json: line 2")
    assert df.iloc[1]["source_key"] == "captions.jsonl:2"
    assert df.iloc[2]["reason"].startswith("bad_json: line 3")  # JSON, but not an object


def test_jsonl_line_that_is_not_utf8_is_bad_text(tmp_path):
    root = jsonl_folder(tmp_path / "d", [line(None, "fine", id="a"), b'{"id": "b", "caption": "caf\xe9"}',
                                         line(None, "fine too", id="c")])
    stage, units = stage_for(root)
    df = read(stage, units[0])
    assert list(df["status"]) == [KEPT, ERROR, KEPT]
    bad = df.iloc[1]
    assert bad["reason"].startswith("bad_text") and "line 2" in bad["reason"]
    assert bad["source_key"] == "captions.jsonl:2"


def test_jsonl_configured_fields(tmp_path):
    root = jsonl_folder(tmp_path / "d", [json.dumps({"uid": "u1", "alt": "chosen", "caption": "not chosen",
                                                     "file": "images/c.png"})], {"c.png": COFFEE})
    stage, units = stage_for(root, text_column="alt", key_column="uid", image_column="file")
    (row,) = read(stage, units[0]).to_dict("records")
    assert row["source_key"] == "u1" and row["text"] == "chosen" and row["image"] == COFFEE


def test_jsonl_file_given_by_bare_relative_name(tmp_path, monkeypatch):
    """A source path like ``captions.jsonl`` (no folder) resolves images against the current folder."""
    root = jsonl_folder(tmp_path / "d", [line("images/rocket.jpg", "a rocket", id="r")], {"rocket.jpg": ROCKET})
    monkeypatch.chdir(root)
    stage, units = stage_for("captions.jsonl")
    (row,) = read(stage, units[0]).to_dict("records")
    assert row["status"] == KEPT, row["reason"]
    assert row["image"] == ROCKET


def test_demo_dataset_accounts_for_every_line(tmp_path):
    from pipeline.demo_data import build_demo

    root = build_demo(tmp_path / "demo")
    n_lines = len((root / "captions.jsonl").read_bytes().splitlines())
    stage, units = stage_for(root, chunk_rows=6)
    df = read_all(stage, units)
    assert len(df) == n_lines
    rows = by_key(df)
    assert rows["astronaut"]["status"] == KEPT and rows["astronaut"]["image"] == ASTRONAUT
    assert rows["missing"]["status"] == ERROR and rows["missing"]["reason"].startswith("missing_image")
    assert df.iloc[-1]["reason"].startswith(f"bad_json: line {n_lines}")


# -- sample ids -------------------------------------------------------------------------------------------


def test_sample_id_is_stable_across_reads_and_stage_instances(wds_folder):
    stage, units = stage_for(wds_folder)
    first = read_all(stage, units)
    again = read_all(stage, units)
    stage2, units2 = stage_for(wds_folder)
    other = read_all(stage2, units2)
    assert list(first["sample_id"]) == list(again["sample_id"]) == list(other["sample_id"])
    assert first["sample_id"].is_unique


def test_sample_id_changes_with_caption_or_image_bytes(tmp_path):
    def ids(caption: str, image: bytes) -> str:
        d = tmp_path / f"case{len(list(tmp_path.iterdir()))}"
        write_tar(d / "s.tar", img2dataset_sample("k0", image, caption))
        stage, units = stage_for(d)
        return read(stage, units[0]).iloc[0]["sample_id"]

    base = ids("a rocket", ROCKET)
    assert ids("a rocket", ROCKET) == base                     # same input, same id (other folder too)
    assert ids("a rocket!", ROCKET) != base                    # caption differs
    assert ids("a rocket", ROCKET[:-1] + b"\x00") != base      # one byte of the image differs
    assert ids("a rocket", COFFEE) != base


def test_sample_id_depends_on_the_source_name(tmp_path):
    write_tar(tmp_path / "s.tar", img2dataset_sample("k0", ROCKET, "x"))
    stage_one, units_one = stage_for(tmp_path, name="one")
    stage_two, units_two = stage_for(tmp_path, name="two")
    a, b = read(stage_one, units_one[0]), read(stage_two, units_two[0])
    assert a.iloc[0]["source"] == "one" and b.iloc[0]["source"] == "two"
    assert a.iloc[0]["sample_id"] != b.iloc[0]["sample_id"]


def test_sample_ids_are_unique_within_a_unit(tmp_path):
    # Same image under many keys, same caption under many images, and rows with no key at all.
    lines = [line("images/r.jpg", "same caption", id=f"k{i}") for i in range(5)]
    lines += [line("images/c.png", "same caption")] * 1 + ["not json"] * 3 + [b"\xff"] * 2
    root = jsonl_folder(tmp_path / "d", lines, {"r.jpg": ROCKET, "c.png": CHELSEA})
    stage, units = stage_for(root)
    df = read(stage, units[0])
    assert len(df) == len(lines) and df["sample_id"].is_unique


def test_duplicated_identical_line_gets_a_distinct_id_and_is_dropped(tmp_path):
    dup = line("images/r.jpg", "a rocket", id="r")
    root = jsonl_folder(tmp_path / "d", [dup, line("images/c.png", "a cat", id="c"), dup, dup], {"r.jpg": ROCKET, "c.png": CHELSEA})
    stage, units = stage_for(root)
    df = read(stage, units[0])
    assert len(df) == 4 and df["sample_id"].is_unique
    first_id = df.iloc[0]["sample_id"]
    assert list(df["status"]) == [KEPT, KEPT, DROPPED, DROPPED]
    assert df.iloc[2]["reason"] == f"duplicate_of:{first_id}"
    assert df.iloc[3]["reason"] == f"duplicate_of:{first_id}"
    assert df.iloc[2]["source_key"] == "r"  # the row keeps its own key
    # Stable too: reading again gives the same ids for the duplicates.
    assert list(read(stage, units[0])["sample_id"]) == list(df["sample_id"])


def test_duplicate_tar_samples_are_dropped(tmp_path):
    write_tar(tmp_path / "s.tar", img2dataset_sample("k0", ROCKET, "x") + [("other.png", COFFEE)]
              + img2dataset_sample("k0", ROCKET, "x"))
    stage, units = stage_for(tmp_path)
    df = read(stage, units[0])
    assert list(df["status"]) == [KEPT, KEPT, DROPPED]
    assert df.iloc[2]["reason"].startswith("duplicate_of:")


def test_duplicate_ids_stay_unique_even_when_a_key_looks_like_a_duplicate_suffix(tmp_path):
    # The second copy of "a" must not collide with a real row whose key is literally "a#2".
    lines = [line(None, "same", id="a#2"), line(None, "same", id="a"), line(None, "same", id="a")]
    root = jsonl_folder(tmp_path / "d", lines)
    stage, units = stage_for(root)
    df = read(stage, units[0])
    assert df["sample_id"].is_unique
    assert list(df["status"]) == [KEPT, KEPT, DROPPED]


def test_error_rows_that_repeat_keep_their_error_status(tmp_path):
    root = jsonl_folder(tmp_path / "d", [line("images/nope.jpg", "x", id="n")] * 2)
    stage, units = stage_for(root)
    df = read(stage, units[0])
    assert list(df["status"]) == [ERROR, ERROR]
    assert all(r.startswith("missing_image") for r in df["reason"])
    assert df["sample_id"].is_unique


# -- detect_format ----------------------------------------------------------------------------------------


def test_detect_format_folder_of_tars(wds_folder):
    # img2dataset also writes .parquet and _stats.json beside the tars: still WebDataset.
    assert detect_format(str(wds_folder)) == "webdataset"
    assert detect_format(str(wds_folder / "00000.tar")) == "webdataset"


def test_detect_format_parquet(tmp_path):
    pq.write_table(pa.table({"id": [1], "text": ["t"]}), tmp_path / "x.parquet")
    assert detect_format(str(tmp_path / "x.parquet")) == "parquet"
    assert detect_format(str(tmp_path)) == "parquet"


def test_detect_format_jsonl_folder(tmp_path):
    root = jsonl_folder(tmp_path / "d", [line("images/r.jpg", "r")], {"r.jpg": ROCKET})
    assert detect_format(str(root)) == "jsonl_images"
    assert detect_format(str(root / "captions.jsonl")) == "jsonl_images"


def test_detect_format_empty_folder_names_the_path(tmp_path):
    empty = tmp_path / "nothing_here"
    empty.mkdir()
    with pytest.raises(ValueError, match="nothing_here"):
        detect_format(str(empty))
    # A folder of only images is no better.
    (empty / "rocket.jpg").write_bytes(ROCKET)
    with pytest.raises(ValueError, match="nothing_here"):
        detect_format(str(empty))


def test_detect_format_missing_path_and_unknown_file_name(tmp_path):
    with pytest.raises(ValueError, match="no_such_dir"):
        detect_format(str(tmp_path / "no_such_dir"))
    (tmp_path / "rocket.jpg").write_bytes(ROCKET)
    with pytest.raises(ValueError, match="rocket.jpg"):
        detect_format(str(tmp_path / "rocket.jpg"))


def test_explicit_format_skips_detection(tmp_path):
    # A .jsonl file in a folder that also holds a .tar: the source says which it is.
    root = jsonl_folder(tmp_path / "d", [line("images/r.jpg", "r", id="r")], {"r.jpg": ROCKET})
    write_tar(root / "stray.tar", img2dataset_sample("k0", COFFEE, "tar"))
    assert detect_format(str(root)) == "webdataset"
    stage, units = stage_for(root, fmt="jsonl_images")
    assert [u["format"] for u in units] == ["jsonl_images"]
    assert list(read(stage, units[0])["source_key"]) == ["r"]


def test_list_units_on_empty_folder_raises_naming_the_path(tmp_path):
    (tmp_path / "empty").mkdir()
    stage = IngestStage(IngestParams(source="src"), "ingest")
    with pytest.raises(ValueError, match="empty"):
        stage.list_units({"src": SourceConfig(path=str(tmp_path / "empty"))})


@pytest.mark.parametrize("lines_per_chunk", [1, 2, 3, 7, 1000])
@pytest.mark.parametrize("text", [b"", b"a", b"a\n", b"a\nb", b"a\nb\n", b"\n\n\n\n", b"x\n" * 50, b"x\n" * 49 + b"tail"])
def test_jsonl_chunk_offsets_cut_after_every_nth_line_whatever_the_read_blocks(tmp_path, text, lines_per_chunk):
    """The driver lists a JSONL's chunks by streaming it (blocks of a few MiB); read in blocks of
    1, 3 or 64 bytes, the cuts must be where a byte-by-byte count puts them."""
    from pipeline import storage

    f = tmp_path / "x.jsonl"
    f.write_bytes(text)
    want, line = [0], 0
    for i, b in enumerate(text):
        if b == 10:
            line += 1
            if line % lines_per_chunk == 0 and i + 1 < len(text):
                want.append(i + 1)
    want.append(len(text))
    for block in (1, 3, 64, 1 << 22):
        assert storage.line_chunk_offsets(str(f), lines_per_chunk, block_bytes=block) == want, block
