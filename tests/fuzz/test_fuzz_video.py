"""``video_ingest`` (annotations + video folder, WebDataset mp4+json tars) and the isolated
decoder under hostile and broken input.

Properties: ``list_units`` and ``read_unit`` never raise; every annotation record / tar sample
is a row (one QA pair each here), in error with a reason naming the flaw; nothing is written
outside the run; MP4s cut at any byte or whose sample tables lie (absurd frame counts, zero
frame durations, a zero time scale) end as error or dropped rows with a reason, and the decoder
survives them (a crash or a hang kills only its child process).

Clean samples here hold a JPEG under a video name, so the file check refuses them
(``video_not_video``) before any decoder starts: the tar and annotation tests stay fast and
still prove that a clean sample reaches the video check while a hostile one never does.
"""
from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from stages.base import DROPPED, ERROR, KEPT, STATUSES
from stages.video import IsolatedDecoder, VideoDecodeParams, VideoRef
from stages.video_ingest import VideoIngestParams, VideoIngestStage

from .hostile import Member, arena, json_bomb, mp4_variants, real_jpeg, tar_bytes, tiny_mp4, tree

NOT_VIDEO = real_jpeg((32, 24))
MAX_JSON = 1 << 20  # a 100000-level JSON bomb (<= 600 KB) fits: its depth is what is tested


def read_source(path: Path, **params) -> tuple[pd.DataFrame, VideoIngestStage]:
    stage = VideoIngestStage(VideoIngestParams(source="v", **params), "ingest")
    units = stage.list_units({"v": {"path": str(path), "format": "auto"}})
    frames = [stage.read_unit(json.loads(json.dumps(u))) for u in units]
    df = pd.concat(frames, ignore_index=True)
    assert set(df["status"]) <= set(STATUSES)
    for r in df.to_dict("records"):
        if r["status"] != KEPT:
            assert isinstance(r["reason"], str) and r["reason"].strip(), r
    assert df["sample_id"].is_unique
    pa.Table.from_pandas(df[[c for c in df.columns if df[c].dtype == object and c not in ("frames",)]],
                         preserve_index=False)  # strings Arrow can store
    return df, stage


def scrubbed(key: str) -> str:
    return key.encode("utf-8", "backslashreplace").decode("utf-8")


# -- WebDataset mp4 + json tars --------------------------------------------------------------------------

TAR_FLAWS = {
    None: ("video_not_video",),
    "absolute_name": ("absolute",),
    "dotdot_name": ("'..'",),
    "symlink": ("symlink",),
    "hardlink": ("hard link",),
    "chardev": ("device",),
    "fifo": ("fifo",),
    "duplicate_video": ("duplicate",),
    "no_video": ("missing_video",),
    "no_json": ("missing_qa",),
    "json_bomb": ("bad_json",),
    "json_not_utf8": ("bad_json",),
    "json_too_large": ("max_json_bytes",),
    "json_surrogate": ("Unicode", "video_not_video"),  # the first error found names the row; Arrow stores it
    "json_no_question": ("missing_qa",),
    "name_not_utf8": ("Unicode", "video_not_video"),
    "lying_video_size": ("video_truncated", "corrupt_tar"),
}


@st.composite
def video_tar(draw, root: str) -> list[tuple[str, str | None, list[Member]]]:
    samples = []
    for i in range(draw(st.integers(1, 5))):
        flaw = draw(st.sampled_from(list(TAR_FLAWS)))
        key = {"absolute_name": f"{root}/escape_{i}", "dotdot_name": f"../escape_{i}",
               "name_not_utf8": f"v{i:02d}\udcff"}.get(flaw, f"v{i:02d}")
        qa = {"question": f"What is shown in clip {i}?", "answer": "A photo."}
        meta = {"json_bomb": json_bomb(draw(st.sampled_from([201, 1500, 100_000])), draw(st.sampled_from("[{"))),
                "json_not_utf8": b'{"question": "\xff", "answer": "a"}',
                "json_too_large": json.dumps({**qa, "pad": "x" * MAX_JSON}).encode(),
                "json_surrogate": b'{"question": "why \\udfff", "answer": "a"}',
                "json_no_question": b'{"answer": "a"}'}.get(flaw, json.dumps(qa).encode())
        target = draw(st.sampled_from([f"{root}/escape_link", "../escape_link", "/dev/zero"]))
        video = {"symlink": Member(f"{key}.mp4", "symlink", linkname=target),
                 "hardlink": Member(f"{key}.mp4", "hardlink", linkname=target),
                 "chardev": Member(f"{key}.mp4", "chardev"),
                 "fifo": Member(f"{key}.mp4", "fifo")}.get(flaw, Member(f"{key}.mp4", data=NOT_VIDEO + bytes([i])))
        ms = [] if flaw == "no_video" else [video]
        if flaw != "no_json":
            ms.append(Member(f"{key}.json", data=meta))
        if flaw == "duplicate_video":
            ms.append(Member(f"{key}.mp4", data=NOT_VIDEO))
        if flaw == "lying_video_size":
            video.declared_size = 2 ** 40  # the header claims a TiB: runs past the end of the tar
            ms = ms[::-1]  # json first, so the sample is complete up to the lie
        samples.append((scrubbed(key), flaw, ms))
        if flaw == "lying_video_size":
            break  # nothing after it can be read
    return samples


@given(data=st.data())
def test_hostile_video_tar_members_are_error_rows_and_nothing_is_written(tmp_path_factory, data):
    with arena(tmp_path_factory.getbasetemp()) as root:
        samples = data.draw(video_tar(str(root)))
        (root / "in").mkdir()
        (root / "in" / "clips.tar").write_bytes(tar_bytes([m for _, _, ms in samples for m in ms]))
        before = tree(root)

        df, stage = read_source(root / "in", max_json_bytes=MAX_JSON)

        assert tree(root) == before
    assert stage.decoder_stats.get("starts", 0) == 0  # no hostile sample reached the decoder
    by_key = {}
    for r in df.to_dict("records"):
        by_key.setdefault(r["source_key"].split("#")[0], []).append(r)
    tar_cut = by_key.pop("clips.tar", [])
    assert all(r["reason"].startswith("corrupt_tar") for r in tar_cut)
    assert set(by_key) == {k for k, _, _ in samples}  # every sample is a row...
    for key, flaw, _ in samples:
        (r,) = by_key[key]  # ...exactly one (one QA pair each)
        assert r["status"] == ERROR, (flaw, r)
        assert any(w in r["reason"] for w in TAR_FLAWS[flaw]), (flaw, r["reason"])


# -- annotations + a video folder --------------------------------------------------------------------

RECORD_FLAWS = {
    None: ("video_not_video",),
    "not_json": ("bad_json",),
    "not_utf8": ("bad_json",),
    "json_bomb": ("bad_json",),
    "deep_but_parseable": ("bad_json", "bad_record", "missing_qa", "video_not_video"),
    "not_an_object": ("bad_record",),
    "no_video_field": ("missing_video_field",),
    "no_question": ("missing_qa",),
    "video_nul_name": ("bad_video_path",),
    "video_surrogate_name": ("bad_video_path", "Unicode"),
    "question_surrogate": ("Unicode", "video_not_video"),  # the first error found names the row; Arrow stores it
    "video_missing": ("video_missing",),
    "video_dotdot_missing": ("video_missing",),
    "video_dev_zero": ("not a regular file",),
    "video_fifo": ("not a regular file",),
    "video_dir": ("not a regular file",),
    "video_empty": ("video_empty",),
    "video_too_large": ("video_too_large",),
}


@given(flaws=st.lists(st.sampled_from(list(RECORD_FLAWS)), min_size=1, max_size=8), chunk_videos=st.integers(1, 3))
def test_hostile_annotation_records_are_error_rows_one_per_record(tmp_path_factory, flaws, chunk_videos):
    with arena(tmp_path_factory.getbasetemp()) as root:
        src = root / "in"
        (src / "videos").mkdir(parents=True)
        (src / "videos" / "photo.mp4").write_bytes(NOT_VIDEO)
        (src / "videos" / "empty.mp4").write_bytes(b"")
        (src / "videos" / "big.mp4").write_bytes(b"\0" * 5000)
        (src / "videos" / "dir.mp4").mkdir()
        os.mkfifo(src / "videos" / "fifo.mp4")
        video = {"video_nul_name": "videos/a\0b.mp4", "video_surrogate_name": "videos/\udcff.mp4",
                 "video_missing": "videos/nope.mp4", "video_dotdot_missing": "../../escape.mp4",
                 "video_dev_zero": "/dev/zero", "video_fifo": "videos/fifo.mp4", "video_dir": "videos/dir.mp4",
                 "video_empty": "videos/empty.mp4", "video_too_large": "videos/big.mp4"}
        lines = []
        for i, flaw in enumerate(flaws):
            rec = {"id": f"q{i}", "video": video.get(flaw, "videos/photo.mp4"), "question": f"Question {i}?", "answer": "A."}
            if flaw == "no_video_field":
                del rec["video"]
            if flaw == "no_question":
                del rec["question"]
            if flaw == "deep_but_parseable":
                rec["extra"] = json.loads(json_bomb(400))
            line = json.dumps(rec).encode()
            line = {"not_json": b"{oops", "not_utf8": line[:-1] + b', "x": "\xff"}', "json_bomb": json_bomb(100_000),
                    "not_an_object": b'"just a string"',
                    "question_surrogate": line.replace(b"Question", b"\\ud83d Q")}.get(flaw, line)
            lines.append(line)
        (src / "qa.jsonl").write_bytes(b"\n".join(lines) + b"\n")
        before = tree(root)

        df, stage = read_source(src, chunk_videos=chunk_videos, max_video_bytes=4096)

        assert tree(root) == before
    assert stage.decoder_stats.get("starts", 0) == 0
    assert len(df) == len(flaws)  # one row per record (one QA pair each)
    rows = {r["source_key"].split("#")[-1].split(":")[-1]: r for r in df.to_dict("records")}
    for i, flaw in enumerate(flaws):
        r = rows.get(f"q{i}") or rows.get(f"line{i + 1}")
        assert r is not None, (flaw, sorted(rows))
        assert r["status"] == ERROR, (flaw, r)
        assert any(w in r["reason"] for w in RECORD_FLAWS[flaw]), (flaw, r["reason"])


@pytest.mark.parametrize("content", [json_bomb(100_000), b"\xff\xfe[]", b"[{]", b"\"\\ud800\""])
def test_a_whole_annotation_file_that_is_hostile_is_one_error_row(tmp_path, content):
    (tmp_path / "qa.json").write_bytes(content)
    df, _ = read_source(tmp_path)
    (r,) = df.to_dict("records")
    assert r["status"] == ERROR and r["reason"].startswith(("bad_json", "bad_record")), r["reason"]


# -- MP4s cut anywhere or lying about their frames ------------------------------------------------------


@pytest.fixture(scope="module")
def good_mp4(tmp_path_factory) -> bytes:
    return tiny_mp4(tmp_path_factory.mktemp("mp4") / "good.mp4").read_bytes()


@pytest.fixture(scope="module")
def decoder():
    with IsolatedDecoder(timeout_s=30) as d:
        yield d


PARAMS = VideoDecodeParams(num_frames=4, timeout_s=30)
CLEAR = ("video_corrupt", "video_no_stream", "video_decode", "video_decoder_crashed", "video_decode_timeout",
         "video_decoder_out_of_memory", "video_bad_timing", "video_not_video", "duration_s<", "duration_s>")


def _decode_file(decoder, tmp: Path, name: str, data: bytes) -> dict:
    path = tmp / name
    path.write_bytes(data)
    try:
        return decoder.decode(VideoRef(str(path)), PARAMS)
    finally:
        path.unlink()


@given(where=st.floats(0.0, 0.995))
def test_an_mp4_cut_at_any_byte_is_an_error_or_dropped_row_and_the_decoder_survives(tmp_path_factory, good_mp4,
                                                                                    decoder, where):
    r = _decode_file(decoder, tmp_path_factory.getbasetemp(), "cut.mp4", good_mp4[: int(len(good_mp4) * where)])
    assert r["status"] in (ERROR, DROPPED) or r.get("frame_count", 0) > 1
    if r["status"] != KEPT:
        assert r["reason"].startswith(CLEAR), r["reason"]


@pytest.mark.parametrize("variant", ["stts_frame_count_2^32-1", "stts_frame_count_1e9", "stts_entries_2^31-1",
                                     "stsz_frame_count_2^32-16", "stts_frame_duration_0", "stts_frame_duration_max",
                                     "mdhd_timescale_0", "mdhd_duration_max"])
def test_an_mp4_lying_about_its_frames_or_rate_ends_with_a_clear_reason(tmp_path, good_mp4, decoder, variant):
    r = _decode_file(decoder, tmp_path, f"{variant}.mp4", mp4_variants(good_mp4)[variant])
    if r["status"] == KEPT:  # the lie did not matter: the real frames and timestamps were used
        assert r["frame_count"] == 20 and 1.5 < r["duration_s"] < 2.5 and len(r["frames"]) == 4
    else:
        assert r["reason"].startswith(CLEAR), r["reason"]
        if r.get("fps") is not None:
            assert r["fps"] == r["fps"], "a NaN frame rate escaped into the row"
    # whatever happened, the decoder (or its replacement) still decodes a good video
    assert _decode_file(decoder, tmp_path, "good.mp4", good_mp4)["status"] == KEPT


# -- the decoder's memory cap (max_memory_mb) ------------------------------------------------------------


def test_a_lying_mp4_that_would_take_23_gb_is_an_out_of_memory_row_and_the_next_video_decodes(tmp_path, good_mp4):
    # stts claims 10^9 frames: decord sizes its frame index by it (measured with no cap: ~23 GB of
    # data memory reserved, the decode then "succeeds" on the 20 real frames)
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "a_lying.mp4").write_bytes(mp4_variants(good_mp4)["stts_frame_count_1e9"])
    (tmp_path / "videos" / "b_good.mp4").write_bytes(good_mp4)
    records = [{"id": f"q_{n}", "video": f"videos/{n}.mp4", "question": "What is shown?", "answer": "Coffee."}
               for n in ("a_lying", "b_good")]
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))

    df, stage = read_source(tmp_path, chunk_videos=2, decode={"num_frames": 4})  # one unit, one decoder

    assert VideoDecodeParams().max_memory_mb == 4096
    lying, good = df.to_dict("records")
    assert lying["source_key"] == "videos/a_lying.mp4#q_a_lying" and lying["status"] == ERROR
    assert lying["reason"].startswith("video_decoder_out_of_memory: over max_memory_mb=4096; decoder restarted"), lying["reason"]
    assert good["source_key"] == "videos/b_good.mp4#q_b_good" and good["status"] == KEPT and good["num_frames"] == 4
    assert stage.decoder_stats["out_of_memory"] == 1 and stage.decoder_stats["starts"] == 2  # a fresh decoder for b_good


def test_a_real_4k_decode_over_a_tight_cap_fails_cleanly_and_the_decoder_goes_on(tmp_path, good_mp4):
    from pipeline.video_data import make_video, photo

    big = make_video(tmp_path / "uhd.mp4", photo("astronaut"), seconds=2, fps=8, size=(3840, 2160), preset="ultrafast")
    (tmp_path / "good.mp4").write_bytes(good_mp4)
    # 16 full 4K frames in one get_batch: ~400 MB in decord and as much again as numpy (~1 GB measured)
    tight = VideoDecodeParams(num_frames=16, frames_per_call=16, max_memory_mb=448, timeout_s=30)
    with IsolatedDecoder() as d:
        r = d.decode(VideoRef(str(big)), tight)
        assert r["status"] == ERROR, r
        assert r["reason"].startswith("video_decoder_out_of_memory: over max_memory_mb=448; decoder restarted"), r["reason"]
        small = d.decode(VideoRef(str(tmp_path / "good.mp4")), tight)
        assert small["status"] == KEPT and small["peak_data_mb"] < 448
        assert d.stats["out_of_memory"] == 1 and d.stats["starts"] == 2
        uncapped = d.decode(VideoRef(str(big)), tight.model_copy(update={"max_memory_mb": None}))
    assert uncapped["status"] == KEPT and uncapped["peak_data_mb"] > 448  # the cap was all that failed it


def test_max_memory_mb_is_validated():
    with pytest.raises(ValidationError, match="max_memory_mb"):
        VideoDecodeParams(max_memory_mb=100)  # the idle decoder alone holds ~170 MB
    with pytest.raises(ValidationError, match="max_memory_mb"):
        VideoIngestParams(source="v", decode={"max_memory_mb": 0})
    assert VideoDecodeParams(max_memory_mb=None).max_memory_mb is None


def test_a_compressed_video_tar_is_one_corrupt_tar_row_and_never_decompressed(tmp_path, good_mp4):
    # video members are decoded in place (a byte range of the tar), so video tars are never decompressed
    plain = tar_bytes([Member("clip.mp4", data=good_mp4), Member("clip.json", data=b'{"question": "Q?", "answer": "A."}')])
    (tmp_path / "clips.tar").write_bytes(gzip.compress(plain))
    df, stage = read_source(tmp_path)
    (r,) = df.to_dict("records")
    assert r["status"] == ERROR and r["reason"].startswith("corrupt_tar"), r["reason"]
    assert stage.decoder_stats.get("starts", 0) == 0
