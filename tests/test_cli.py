"""The command line a user types: run output, manifest summary/show, stages, config errors."""
from __future__ import annotations

import json

import pytest

from conftest import ROOT
from pipeline.cli import main


def test_manifest_summary_prints_the_funnel_reasons_and_sources(demo_run, capsys):
    assert main(["manifest", "summary", str(demo_run)]) == 0
    out = capsys.readouterr().out
    assert "decode" in out and "corrupt_image (1)" in out and "min_side<32 (1)" in out
    assert "per source" in out and "images: 15/0/0" in out


def test_manifest_summary_json_matches_the_manifests(demo_run, capsys):
    assert main(["manifest", "summary", str(demo_run), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    stages = {s["stage"]: s for s in summary["stages"]}
    assert [s["stage"] for s in summary["stages"]] == ["ingest", "decode", "filter", "shard"]
    assert (stages["decode"]["in"], stages["decode"]["kept"], stages["decode"]["dropped"], stages["decode"]["error"]) == (18, 16, 1, 1)
    assert dict(stages["ingest"]["top_reasons"]) == {"bad_json": 1, "missing_image": 1}
    assert stages["shard"]["sources"] == {"images": {"kept": 15, "dropped": 0, "error": 0}}


def test_manifest_show_filters_by_status_and_reason(demo_run, capsys):
    assert main(["manifest", "show", str(demo_run), "--stage", "decode", "--status", "dropped", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert [(r["source_key"], r["reason"]) for r in rows] == [("tiny_cat", "min_side<32")]
    assert main(["manifest", "show", str(demo_run), "--stage", "ingest", "--reason", "missing_image"]) == 0
    assert "missing" in capsys.readouterr().out
    assert main(["manifest", "show", str(demo_run), "--stage", "decode", "--limit", "3"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 4  # header + 3 rows


def test_manifest_commands_name_what_is_missing(demo_run, tmp_path, capsys):
    assert main(["manifest", "show", str(demo_run), "--stage", "judge"]) == 2
    assert "no manifest for stage 'judge'" in capsys.readouterr().err
    assert main(["manifest", "summary", str(tmp_path)]) == 2
    assert "no run.json" in capsys.readouterr().err


def test_stages_lists_every_kind_with_its_parameters(capsys):
    assert main(["stages"]) == 0
    out = capsys.readouterr().out
    for kind in ("ingest", "decode", "filter", "shard"):
        assert f"{kind}  [" in out
    assert "min_side: int (default 32)" in out and "samples_per_shard" in out


def test_run_with_a_bad_config_exits_2_with_the_message(tmp_path, capsys):
    assert main(["run", str(ROOT / "configs" / "demo.yaml"), "--set", "decode.min_sid=3", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "config error" in err and "stage 'decode'" in err and "min_sid" in err
    assert main(["run", str(ROOT / "configs" / "demo.yaml"), "--input", str(tmp_path / "none"), "--out", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_run_prints_where_things_are_and_the_counts(ray_local, demo_input, tmp_path, capsys):
    run_dir = tmp_path / "cli_run"
    assert main(["run", str(ROOT / "configs" / "demo.yaml"), "--input", str(demo_input), "--out", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert f"run directory: {run_dir}" in out and "shards.json" in out and "manifests" in out
    assert "filter  filter  16    15        1      0  len(text)<20 (1)" in out
