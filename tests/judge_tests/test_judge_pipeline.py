"""A real judge pipeline end to end: CLIP cut and VIR/ITA judging on the vLLM engine, through the runner.

`--smoke` swaps the config's real models (ViT-L-14, Qwen2.5-VL-7B) for tiny local random ones,
so the real loading and inference code runs here on the CPU; the scores are random but every
row must end with a schema-valid score or a recorded error."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import ROOT, run_config
from helpers import assert_conservation, manifest


@pytest.fixture(scope="module")
def judged_run(ray_local, demo_input, tmp_path_factory):
    import os

    os.environ["SAILCURATE_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    run_dir = tmp_path_factory.mktemp("judged") / "run"
    record = run_config(ROOT / "configs" / "demo_judge.yaml", run_dir, inputs=[str(demo_input)], smoke=True)
    return run_dir, record


def test_every_judged_row_has_a_valid_score_or_a_recorded_error(judged_run):
    run_dir, record = judged_run
    counts = assert_conservation(run_dir)
    assert counts["judge"]["in"] > 0
    j = manifest(run_dir, "judge")
    for _, row in j.iterrows():
        if row["status"] == "kept":
            assert 1 <= row["vir"] <= 5 and 1 <= row["ita"] <= 5
            raw = json.loads(row["judge_raw"])
            assert set(raw) == {"vir_score", "ita_score"}
        else:
            assert row["status"] == "error" and row["reason"].startswith("judge")
            assert row["judge_raw"] is not None or row["reason"].startswith("judge_image")
    assert (j["judge_model"].str.contains("tiny-qwen2vl")).all()  # the smoke swap happened


def test_clip_scores_and_the_percentile_cut(judged_run):
    run_dir, _ = judged_run
    scored = manifest(run_dir, "clip_score")
    assert scored.query("status == 'kept'")["clip_sim"].between(-1, 1).all()
    cut = manifest(run_dir, "clip_filter")
    dropped = cut.query("status == 'dropped'")
    assert len(cut) == (scored["status"] == "kept").sum()
    # top 90% kept: the lowest tenth (rounded down, ties kept) goes, each saying where the cut was
    assert len(dropped) == len(cut) // 10 or len(dropped) <= len(cut) // 10
    assert all(r.startswith("clip_sim<p10(") for r in dropped["reason"])
    if len(dropped):
        assert dropped["clip_sim"].max() < cut.query("status == 'kept'")["clip_sim"].min()


def test_thresholds_then_shards(judged_run):
    run_dir, _ = judged_run
    f = manifest(run_dir, "filter")
    kept = f.query("status == 'kept'")
    assert len(kept) and (f["status"] == "dropped").any()  # smoke sampling spreads the random judge's answers
    assert (kept["vir"] >= 3).all() and (kept["ita"] >= 3).all()
    assert set(f.query("status == 'dropped'")["reason"]) <= {"vir<3", "ita<3"}
    index = __import__("pandas").read_parquet(Path(run_dir) / "shards" / "index.parquet")
    assert set(index["sample_id"]) == set(kept["sample_id"])


def test_judge_labels_export_as_chat_jsonl(judged_run, tmp_path):
    from judges.labels import export_judge_labels

    run_dir, _ = judged_run
    result = export_judge_labels(str(run_dir), "ita", str(tmp_path / "labels"))
    lines = [json.loads(x) for x in (tmp_path / "labels" / "labels.jsonl").read_text().splitlines()]
    valid = manifest(run_dir, "judge")["judge_raw"].dropna().map(lambda r: json.loads(r).get("ita_score")).dropna()
    assert result["labels"] == len(lines) > 0
    for line in lines:
        system, user, answer = line["messages"]
        assert system["role"] == "system" and "ALIGNMENT" in system["content"].upper()
        assert user["content"][0]["type"] == "image" and (tmp_path / "labels" / user["content"][0]["image"]).exists()
        assert "<caption>" in user["content"][1]["text"]
        assert set(json.loads(answer["content"])) == {"ita"}
    assert len(lines) <= len(valid)
