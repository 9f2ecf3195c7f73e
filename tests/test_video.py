"""SAIL-Video ingest and decoding, read as a spec (no Ray; the engine run is in judge_tests).

Inputs are real: H.264 clips encoded here with PyAV from scikit-image's photos
(``pipeline/video_data.py``), the Debian opencv-doc sample videos, and broken files made from
them (truncated, empty, audio-only, a JPEG named .mp4, a path that does not exist). Units go
through a JSON round trip, as the runner sends them to workers.
"""
from __future__ import annotations

import io
import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.video_data import OPENCV_SAMPLES, OPENCV_VIDEOS, build_video_qa, make_long_video, photo
from stages.base import DROPPED, ERROR, KEPT
from stages.video import IsolatedDecoder, VideoDecodeParams, VideoRef, sniff_not_video
from stages.video_ingest import VideoIngestParams, VideoIngestStage, keyed_fingerprint

ROOT = Path(__file__).resolve().parent.parent
needs_opencv_samples = pytest.mark.skipif(not all((OPENCV_SAMPLES / v).exists() for v in OPENCV_VIDEOS),
                                          reason="opencv-doc sample videos not installed (tools/system_deps.sh)")


@pytest.fixture(scope="module")
def video_qa(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("video_qa")
    build_video_qa(out / "data", tars=out / "tars")
    return out


@pytest.fixture(scope="module")
def decoder():
    with IsolatedDecoder() as d:
        yield d


def read_source(path, **params) -> tuple[pd.DataFrame, VideoIngestStage]:
    """What the runner does: plan units on the driver, read each (after a JSON round trip)."""
    stage = VideoIngestStage(VideoIngestParams(source="videos", **params), "ingest")
    units = stage.list_units({"videos": {"path": str(path), "format": "auto"}})
    df = pd.concat([stage.read_unit(json.loads(json.dumps(u))) for u in units], ignore_index=True)
    assert set(df["status"]) <= {KEPT, DROPPED, ERROR}
    assert df.loc[df["status"] != KEPT, "reason"].str.len().gt(0).all()
    assert df["sample_id"].is_unique
    return df, stage


@pytest.fixture(scope="module")
def ingested(video_qa):
    return read_source(video_qa / "data", chunk_videos=6)


def by_key(df: pd.DataFrame, suffix: str) -> pd.Series:
    rows = df[df["source_key"].str.endswith(suffix)]
    assert len(rows) == 1, f"{suffix}: {len(rows)} rows"
    return rows.iloc[0]


# -- decoding ------------------------------------------------------------------------------------
def _sequential_frames(path: Path, indices: list[int]) -> dict[int, np.ndarray]:
    """The same frames decoded the slow, obvious way: every frame in order (PyAV)."""
    import av

    want, out = set(indices), {}
    with av.open(str(path)) as c:
        for i, frame in enumerate(c.decode(video=0)):
            if i in want:
                out[i] = frame.to_ndarray(format="rgb24")
    return out


def test_sampled_frames_are_the_frames_at_uniform_indices(video_qa, decoder):
    path = video_qa / "data" / "videos" / "astronaut.mp4"
    r = decoder.decode(VideoRef(str(path)), VideoDecodeParams(num_frames=16, max_side=448))
    assert r["status"] == KEPT, r["reason"]
    assert (r["frame_count"], r["fps"], r["duration_s"], r["width"], r["height"]) == (30, 10.0, 3.0, 192, 144)
    assert r["frame_indices"] == [int(i) for i in np.round(np.linspace(0, 29, 16))]
    truth = _sequential_frames(path, r["frame_indices"])
    for k, idx in enumerate(r["frame_indices"]):
        got = np.asarray(Image.open(io.BytesIO(r["frames"][k])).convert("RGB")).astype(int)
        err = np.abs(got - truth[idx]).mean()
        # seeking landed on this very frame: closer to it than to its neighbours (JPEG noise aside)
        for other in (idx - 1, idx + 1):
            if other in truth and other != idx:
                assert err < np.abs(got - truth[other]).mean()
        assert err < 6
    assert len(r["fingerprint"]) == 16 and all(isinstance(h, int) for h in r["fingerprint"])


def _nearest_frames(path: Path, frames: list[bytes]) -> list[int]:
    """For each sampled JPEG, the index of the most similar frame of a sequential PyAV decode."""
    import av

    small = [np.asarray(Image.open(io.BytesIO(f)).convert("RGB").resize((64, 48))).astype(int) for f in frames]
    best = [(np.inf, -1)] * len(small)
    with av.open(str(path)) as c:
        c.streams.video[0].thread_type = "AUTO"
        for i, frame in enumerate(c.decode(video=0)):
            a = frame.to_ndarray(width=64, height=48, format="rgb24").astype(int)
            best = [min(b, (np.abs(a - s).mean(), i)) for b, s in zip(best, small)]
    return [i for _, i in best]


@needs_opencv_samples
@pytest.mark.parametrize("name,frames,seconds,size,access", [
    ("vtest.avi", 795, 79.5, (768, 576), "seek"),
    ("Megamind.avi", 270, 11.26, (720, 528), "sequential"),   # AVI without timestamps: get_batch would
    ("tree.avi", 68, 29.6, (320, 240), "seek"),                # seek to wrong frames; 68 frames, 29.6 s
    ("Megamind_bugy.avi", 270, 9.0, (720, 528), "sequential"),
])
def test_opencv_sample_videos_give_the_right_frames(decoder, name, frames, seconds, size, access):
    r = decoder.decode(VideoRef(str(OPENCV_SAMPLES / name)), VideoDecodeParams(num_frames=8, max_side=448))
    assert r["status"] == KEPT, r["reason"]
    assert r["frame_count"] == frames and abs(r["duration_s"] - seconds) < 0.1
    assert (r["width"], r["height"]) == size and r["frame_access"] == access
    sizes = {Image.open(io.BytesIO(f)).size for f in r["frames"]}
    assert len(r["frames"]) == 8 and all(max(s) == min(448, max(size)) for s in sizes)
    nearest = _nearest_frames(OPENCV_SAMPLES / name, r["frames"])
    assert all(abs(a - b) <= 1 for a, b in zip(nearest, r["frame_indices"])), (nearest, r["frame_indices"])


def test_a_two_hour_video_costs_only_its_sampled_frames(tmp_path):
    # 7200 frames of 96x72: all of them decoded would be ~150 MB of pixels
    path = make_long_video(tmp_path / "two_hours.mp4", photo("coffee"), seconds=7200, fps=1, size=(96, 72))
    with IsolatedDecoder() as decoder:  # a fresh process: its peak RSS is this video's alone
        baseline = decoder.decode(VideoRef(str(path)), VideoDecodeParams(max_duration_s=60))
        assert baseline["status"] == DROPPED and baseline["reason"] == "duration_s>60"   # probed, nothing decoded
        t0 = time.monotonic()
        r = decoder.decode(VideoRef(str(path)), VideoDecodeParams(num_frames=16))
        seconds = time.monotonic() - t0
    assert r["status"] == KEPT and r["frame_count"] == 7200 and r["duration_s"] == pytest.approx(7200)
    assert r["frame_indices"][-1] == 7199 and len(r["frames"]) == 16
    all_frames_mb = 7200 * 96 * 72 * 3 / 2**20
    assert r["max_rss_mb"] - baseline["max_rss_mb"] < 0.2 * all_frames_mb   # peak RSS of the decoder process
    assert seconds < 60


def test_a_decoder_crash_or_hang_costs_only_that_video(tmp_path, video_qa):
    good = VideoRef(str(video_qa / "data" / "videos" / "cat.mp4"))
    fifo = tmp_path / "stalled.mp4"
    os.mkfifo(fifo)  # opening it blocks forever, as a stalled mount would: a real hang in FFmpeg
    with IsolatedDecoder() as d:
        assert d.decode(good, VideoDecodeParams())["status"] == KEPT
        hung = d.decode(VideoRef(str(fifo)), VideoDecodeParams(timeout_s=1.5))
        assert hung["status"] == ERROR and hung["reason"].startswith("video_decode_timeout:")
        assert d.decode(good, VideoDecodeParams())["status"] == KEPT     # a fresh decoder took over
        # a segfault in the decoder process (the signal FFmpeg/decord bugs die of), mid-decode
        threading.Timer(1.0, lambda pid=d.pid: os.kill(pid, signal.SIGSEGV)).start()
        crashed = d.decode(VideoRef(str(fifo)), VideoDecodeParams(timeout_s=30))
        assert crashed["status"] == ERROR and crashed["reason"].startswith("video_decoder_crashed: killed by SIGSEGV")
        assert d.decode(good, VideoDecodeParams())["status"] == KEPT
        assert d.stats == {"requests": 5, "starts": 3, "crashes": 1, "timeouts": 1, "out_of_memory": 0}


def test_file_signatures_that_are_not_videos(video_qa):
    assert sniff_not_video((video_qa / "data" / "videos" / "cat.mp4").read_bytes()[:16]) is None
    jpeg = io.BytesIO()
    Image.fromarray(photo("coffee")).save(jpeg, format="JPEG")
    assert sniff_not_video(jpeg.getvalue()[:16]) == "video_not_video: the file is a JPEG image"
    png = io.BytesIO()
    Image.fromarray(photo("coffee")).save(png, format="PNG")
    assert sniff_not_video(png.getvalue()[:16]) == "video_not_video: the file is a PNG image"


# -- ingest: shapes, broken files, one decode per video -----------------------------------------
def test_every_qa_pair_in_the_annotations_is_a_row(ingested, video_qa):
    df, _ = ingested
    records = json.loads((video_qa / "data" / "qa.json").read_text())
    expected = sum(len(r["conversations"]) // 2 if "conversations" in r else 1 for r in records)
    expected += 3  # more_qa.jsonl: one good line, one that is not JSON, one without a question
    assert len(df) == expected
    conv = by_key(df, "#astro-conv.1")
    assert conv["question"] == "How does the camera move over the course of the clip?"
    assert conv["answer"] == "It pans from left to right while slowly zooming in." and conv["qa_index"] == 1
    first = by_key(df, "#astro-conv.0")
    assert "<image>" not in first["question"] and first["question"].startswith("What is the person")
    nextqa = by_key(df, "videos/coffee#7")  # NextQA: video id without extension, a0..a4, answer index
    assert nextqa["status"] == KEPT and nextqa["video_path"].endswith("videos/coffee.mp4")
    assert nextqa["question"].endswith("Options:\nA. a plate\nB. a saucer\nC. a book\nD. a laptop\nE. nothing")
    assert nextqa["answer"] == "B. a saucer" and json.loads(nextqa["options"])[1] == "a saucer"
    assert json.loads(nextqa["meta"]) == {"type": "DO"}
    assert by_key(df, "more_qa.jsonl:line2")["reason"].startswith("bad_json: line 2")
    assert by_key(df, "more_qa.jsonl:line3")["reason"].startswith("missing_qa:")


def test_broken_videos_become_rows_with_reasons(ingested):
    df, _ = ingested
    expect = {
        "#short-0": (DROPPED, "duration_s<1"),
        "#trunc-0": (ERROR, "video_corrupt:"),
        "#empty-0": (ERROR, "video_empty: 0 bytes"),
        "#audio-0": (ERROR, "video_audio_only:"),
        "#photo-0": (ERROR, "video_not_video: the file is a JPEG image"),
        "#missing-0": (ERROR, "video_missing:"),
        "#missing-1": (ERROR, "video_missing:"),
    }
    for key, (status, reason) in expect.items():
        row = by_key(df, key)
        assert row["status"] == status and row["reason"].startswith(reason), (key, row["status"], row["reason"])
    assert by_key(df, "#short-0")["duration_s"] == pytest.approx(0.4)  # the probe is kept for the manifest
    kept = df[df["status"] == KEPT]
    assert len(kept) >= 8
    for _, row in kept.iterrows():
        assert row["num_frames"] == 16 == len(row["frames"]) == len(row["video_fingerprint"])
        assert all(max(Image.open(io.BytesIO(f)).size) <= 448 for f in row["frames"][:2])


def test_a_video_with_several_qa_pairs_is_decoded_once(ingested):
    df, stage = ingested
    kept = df[df["status"] == KEPT]
    astro = kept[kept["video_key"] == "videos/astronaut.mp4"]
    assert len(astro) == 3 and set(astro["video_qa_rows"]) == {3}
    assert astro["decode_s"].nunique() == 1                        # one decode served all three
    assert len({tuple(f) for f in astro["frames"]}) == 1            # the same frames, fanned out
    cat = kept[kept["video_key"] == "videos/cat.mp4"]              # named by qa.json and more_qa.jsonl
    assert len(cat) == 2 and cat["decode_s"].nunique() == 1
    # one decoder request per distinct video file that passed the file checks
    files = df.loc[df["video_hash"].notna(), "video_hash"].nunique()
    assert stage.decoder_stats["requests"] == files < len(df)


@pytest.fixture(scope="module")
def tar_rows(video_qa):
    return read_source(video_qa / "tars")


def test_webdataset_tars_with_mp4_and_json(video_qa, tar_rows):
    df, stage = tar_rows
    assert sorted(df["source_key"]) == ["clip1#qa.0", "clip1#qa.1", "clip2#qa"]
    assert (df["status"] == KEPT).all() and stage.decoder_stats["requests"] == 2
    clip1 = df[df["video_key"] == "clip1"]
    assert list(clip1["answer"]) == ["A spacesuit.", "A flag."]
    # the video stays in the tar: a byte range that is exactly the original file
    row = clip1.iloc[0]
    original = (video_qa / "data" / "videos" / "astronaut.mp4").read_bytes()
    with open(row["video_path"], "rb") as f:
        f.seek(row["video_offset"])
        assert f.read(row["video_size"]) == original


def test_video_shard_streams_the_tar_member_into_one_sample_per_video(video_qa, tar_rows, tmp_path):
    import tarfile

    import pyarrow as pa

    from stages.video_shard import VideoShardParams, write_video_shard

    df, _ = tar_rows
    table = pa.Table.from_pandas(df, preserve_index=False)
    (tmp_path / "_index").mkdir()
    write_video_shard(0, "v-000000.tar", str(tmp_path), [(0, table.num_rows)],
                      VideoShardParams(corpus="v").model_dump(mode="json"), table)
    with tarfile.open(tmp_path / "v-000000.tar") as tf:
        members = {m.name: tf.extractfile(m).read() for m in tf.getmembers()}
    metas = [json.loads(v) for k, v in members.items() if k.endswith(".json")]
    assert len(metas) == 2 and len(members) == 4                     # two videos, json + mp4 each
    clip1 = next(m for m in metas if m["video_key"] == "clip1")
    assert members[clip1["video"]] == (video_qa / "data" / "videos" / "astronaut.mp4").read_bytes()
    assert [m["content"] for m in clip1["messages"]] == ["<video>\nWhat is the person wearing?", "A spacesuit.",
                                                         "What is in the background?", "A flag."]
    assert clip1["tokens"]["visual"] == 16 * 256 and clip1["duration_s"] == 3.0
    index = pd.read_parquet(tmp_path / "_index" / "000000.parquet")
    assert sorted(index["sample_id"]) == sorted(df["sample_id"])     # every QA row, once


def test_limit_reads_only_the_first_qa_rows(video_qa):
    df, stage = read_source(video_qa / "tars", limit=1)   # what --smoke --limit 1 sets
    assert list(df["source_key"]) == ["clip1#qa.0"] and stage.decoder_stats["requests"] == 1


def test_json_and_jsonl_shapes(tmp_path, video_qa):
    vids = video_qa / "data" / "videos"
    (tmp_path / "a.json").write_text(json.dumps({"data": [
        {"video_path": str(vids / "cat.mp4"), "qa_pairs": [{"q": "What animal?", "a": "A cat."},
                                                           {"q": "Is it indoors?", "a": "Yes."}]},
    ]}))
    (tmp_path / "b.json").write_text(json.dumps({str(vids / "coffee.mp4"): [
        {"question": "What is in the cup?", "answer": "Coffee.", "options": ["Tea", "Coffee"]}]}))
    (tmp_path / "c.jsonl").write_text(json.dumps({"video": str(vids / "cat.mp4"), "messages": [
        {"role": "user", "content": "<video>\nWhat moves?"}, {"role": "assistant", "content": "The camera."}]}) + "\n")
    df, stage = read_source(tmp_path)
    assert (df["status"] == KEPT).all() and len(df) == 4
    assert set(df["answer"]) == {"A cat.", "Yes.", "B. Coffee", "The camera."}
    assert stage.decoder_stats["requests"] == 2   # cat.mp4, named by two files, decodes once


def test_keyed_fingerprints_compare_like_videos_only_for_the_same_qa():
    from dedup.perceptual import hamming

    rng = np.random.default_rng(0)
    video = [int(x) for x in rng.integers(-2**63, 2**63 - 1, size=16)]
    recut = [h ^ (1 << int(b)) for h, b in zip(video, rng.integers(0, 64, size=16))]   # 1 bit off per frame
    a = keyed_fingerprint(video, "What is held?", "A helmet.")
    b = keyed_fingerprint(recut, "what is  held?", "a helmet.")      # same text after normalisation
    c = keyed_fingerprint(video, "What is worn?", "A spacesuit.")    # another question, same video
    assert [hamming(x, y) for x, y in zip(a, b)] == [1] * 16
    assert min(hamming(x, y) for x, y in zip(a, c)) > 12


def test_config_applies_the_spec_thresholds_and_records_refusals():
    from pipeline.config import load_config
    from stages.filter import FilterStage

    spec = load_config(ROOT / "configs" / "video.yaml").stage("filter")
    stage = FilterStage(spec.params, "filter")
    batch = pd.DataFrame({
        "sample_id": list("abcdefg"), "status": KEPT, "reason": None,
        "qa_align":         [5, 4, -1, 10, 7, 6, 9],
        "content_richness": [5, 7, 7, 4, -1, 5, 6],
        "qa_difficulty":    [3, 8, 8, 8, 5, 2, -1],
    })
    out = stage.process(batch.copy())
    assert list(out["status"]) == [KEPT] + [DROPPED] * 6
    assert list(out["reason"])[1:] == ["qa_align<5", "qa_align:refused", "content_richness<5",
                                       "content_richness:refused", "qa_difficulty<3", "qa_difficulty:refused"]
