"""SAIL-Video end to end: configs/video.yaml through the runner, judged by the vLLM engine.

``--smoke`` swaps the config's Qwen2.5-VL-7B for the tiny local random Qwen2-VL, so the real
decode, dedup, judging (16 frames per request), filtering and sharding code runs on the CPU.
The judge is random, so the filter here keeps every row the judge did not refuse (thresholds
0); the SPEC thresholds of the config are checked in tests/test_video.py."""
from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pandas as pd
import pytest

from conftest import ROOT, run_config
from helpers import assert_conservation, manifest

FILTER_ANY_SCORE = ("filter.rules=[{column: qa_align, refusal: -1, min: 0}, "
                    "{column: content_richness, refusal: -1, min: 0}, {column: qa_difficulty, refusal: -1, min: 0}]")


@pytest.fixture(scope="module")
def video_run(ray_local, tmp_path_factory):
    import os

    from pipeline.video_data import build_video_qa

    os.environ["SAILCURATE_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    data = build_video_qa(tmp_path_factory.mktemp("video_qa") / "data")
    run_dir = tmp_path_factory.mktemp("video") / "run"
    record = run_config(ROOT / "configs" / "video.yaml", run_dir, inputs=[str(data)], smoke=True,
                        overrides=[FILTER_ANY_SCORE, "near_dedup.partitions=4"])
    return run_dir, data, record


def test_every_qa_row_is_accounted_for_at_every_stage(video_run):
    run_dir, data, record = video_run
    counts = assert_conservation(run_dir)
    records = json.loads((data / "qa.json").read_text())
    qa_rows = sum(len(r["conversations"]) // 2 if "conversations" in r else 1 for r in records) + 3
    assert counts["ingest"]["in"] == qa_rows
    assert list(counts) == ["ingest", "exact_dedup", "near_dedup", "judge", "filter", "qa_dedup", "shard"]
    assert counts["ingest"]["error"] >= 8 and counts["ingest"]["dropped"] >= 1   # the broken files
    assert counts["judge"]["in"] > 0 and counts["shard"]["in"] > 0
    ingest = manifest(run_dir, "ingest")
    astro = ingest[ingest["video_key"] == "videos/astronaut.mp4"]
    assert len(astro) == 3 and set(astro["video_qa_rows"]) == {3} and astro["decode_s"].nunique() == 1  # one decode


def test_same_question_on_a_recut_of_the_same_clip_is_a_near_duplicate(video_run):
    run_dir, _, _ = video_run
    ingest = manifest(run_dir, "ingest").set_index("source_key")
    near = manifest(run_dir, "near_dedup")
    dropped = near[near["status"] == "dropped"]
    assert list(dropped["source_key"]) == ["videos/astronaut_recut.mp4#recut-0"]
    assert dropped["reason"].iloc[0] == "near_dup_of:" + ingest.loc["videos/astronaut.mp4#astro-1", "sample_id"]
    # the recut's other question, and the original's other questions, stay
    assert (near.set_index("source_key").loc[["videos/astronaut_recut.mp4#recut-1", "videos/astronaut.mp4#astro-conv.0"],
                                             "status"] == "kept").all()


def test_three_scores_and_the_raw_answer_per_qa_row(video_run):
    run_dir, _, _ = video_run
    judge = manifest(run_dir, "judge")
    assert {"qa_align", "content_richness", "qa_difficulty", "judge_raw", "question", "answer"} <= set(judge.columns)
    assert "frames" not in judge.columns   # media never lands in manifests
    for _, row in judge.iterrows():
        if row["status"] != "kept":
            assert row["status"] == "error" and row["reason"].startswith("judge"), row["reason"]
            continue
        assert row["qa_align"] in range(-1, 11) and row["content_richness"] in range(-1, 8)
        assert row["qa_difficulty"] in range(-1, 9)
        (answer,) = json.loads(row["judge_raw"]).values()
        assert json.loads(answer) == {"qa_align": row["qa_align"], "content_richness": row["content_richness"],
                                      "qa_difficulty": row["qa_difficulty"]}
    assert judge["judge_model"].str.contains("tiny-qwen2vl").all()


def test_refusals_are_dropped_as_refused(video_run):
    run_dir, _, _ = video_run
    f = manifest(run_dir, "filter")
    kept, dropped = f[f["status"] == "kept"], f[f["status"] == "dropped"]
    scores = ["qa_align", "content_richness", "qa_difficulty"]
    assert (kept[scores] >= 0).all().all()
    for _, row in dropped.iterrows():
        first_refused = next(c for c in scores if row[c] == -1)
        assert row["reason"] == f"{first_refused}:refused"


def test_shards_hold_each_video_once_with_its_kept_qa_pairs(video_run):
    run_dir, data, _ = video_run
    final = manifest(run_dir, "qa_dedup")
    kept = final[final["status"] == "kept"]
    ingest = manifest(run_dir, "ingest").set_index("sample_id")
    index = pd.read_parquet(Path(run_dir) / "shards" / "index.parquet")
    assert sorted(index["sample_id"]) == sorted(kept["sample_id"])
    seen = []
    for tar in sorted((Path(run_dir) / "shards").glob("*.tar")):
        with tarfile.open(tar) as tf:
            members = {m.name: tf.extractfile(m).read() for m in tf.getmembers()}
        for name, data_bytes in members.items():
            if not name.endswith(".json"):
                continue
            meta = json.loads(data_bytes)
            rows = ingest.loc[[q["sample_id"] for q in meta["qa"]]]
            assert rows["video_hash"].nunique() == 1                      # one video per sample
            first = rows.iloc[0]
            original = Path(first["video_path"]).read_bytes()
            assert members[meta["video"]] == original                      # the original bytes
            assert meta["duration_s"] == pytest.approx(first["duration_s"]) and meta["frame_count"] == first["frame_count"]
            assert len(meta["messages"]) == 2 * len(meta["qa"]) and meta["messages"][0]["content"].startswith("<video>\n")
            assert [m["content"] for m in meta["messages"][1::2]] == list(rows["answer"])
            assert meta["tokens"]["frames"] == 16 and meta["tokens"]["visual"] == 16 * 256   # SPEC: 256 per frame
            assert meta["tokens"]["total"] == meta["tokens"]["text"] + meta["tokens"]["visual"]
            assert set(meta["qa"][0]["scores"]) >= {"qa_align", "content_richness", "qa_difficulty"}
            seen += [q["sample_id"] for q in meta["qa"]]
    assert sorted(seen) == sorted(kept["sample_id"])   # every kept QA row exactly once
