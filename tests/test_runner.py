"""The runner end to end on real sample images: funnel, manifests, checkpoints, reruns, DAGs."""
from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow.parquet as pq
import pytest

from conftest import ROOT, run_config
from helpers import assert_conservation, manifest

DEMO = ROOT / "configs" / "demo.yaml"


def test_demo_funnel_adds_up_and_every_drop_says_why(demo_run):
    counts = assert_conservation(demo_run)
    assert counts["ingest"] == {"in": 20, "kept": 18, "dropped": 0, "error": 2}   # bad JSON line, missing file
    assert counts["decode"] == {"in": 18, "kept": 16, "dropped": 1, "error": 1}   # 16 px thumbnail, truncated JPEG
    assert counts["filter"] == {"in": 16, "kept": 15, "dropped": 1, "error": 0}   # a 17-character caption
    assert counts["shard"]["in"] == counts["shard"]["kept"] == 15
    reasons = dict(zip(manifest(demo_run, "decode")["source_key"], manifest(demo_run, "decode")["reason"]))
    assert reasons["tiny_cat"] == "min_side<32"
    assert reasons["broken_rocket"].startswith("corrupt_image:")
    ingest = manifest(demo_run, "ingest").set_index("source_key")
    assert ingest.loc["missing", "reason"].startswith("missing_image:")
    assert any(r.startswith("bad_json: line 20") for r in ingest["reason"].dropna())
    assert manifest(demo_run, "filter").query("status == 'dropped'")["reason"].tolist() == ["len(text)<20"]


def test_manifests_read_with_pandas_pyarrow_and_duckdb(demo_run):
    path = Path(demo_run) / "manifests" / "decode.parquet"
    df = pd.read_parquet(path)
    table = pq.read_table(path)
    assert table.num_rows == len(df) == 18
    assert {"sample_id", "source", "source_key", "status", "reason", "width", "height", "image_hash"} <= set(table.column_names)
    assert "image" not in table.column_names  # no media bytes in manifests
    by_status = dict(duckdb.sql(f"select status, count(*) from read_parquet('{path}') group by status").fetchall())
    assert by_status == {"kept": 16, "dropped": 1, "error": 1}
    astronaut = df.set_index("source_key").loc["astronaut"]
    assert (astronaut["width"], astronaut["height"]) == (512, 512)


def test_run_record_says_what_ran(demo_run):
    rec = json.loads((Path(demo_run) / "run.json").read_text())
    assert rec["status"] == "succeeded" and rec["pipeline"] == "demo"
    assert rec["config"]["stages"][1]["kind"] == "decode"
    assert {"sailcurate", "ray", "pyarrow"} <= set(rec["versions"])
    assert rec["order"] == ["ingest", "decode", "filter", "shard"]
    for stage in rec["order"]:
        info = rec["stages"][stage]
        assert info["fingerprint"] and info["counts"]["in"] >= info["counts"]["kept"]
        assert info["seconds"] >= 0
    for stage in ("decode", "filter", "shard"):  # checkpoints with completion records
        done = json.loads((Path(demo_run) / "checkpoints" / stage / "_SUCCESS.json").read_text())
        assert done["fingerprint"] == rec["stages"][stage]["fingerprint"]


def test_shards_are_numbered_without_gaps_and_indexed(demo_run):
    shards = Path(demo_run) / "shards"
    info = json.loads((shards / "shards.json").read_text())
    names = sorted(p.name for p in shards.glob("*.tar"))
    assert names == [f"demo-{i:06d}.tar" for i in range(3)] == [s["name"] for s in info["shards"]]
    assert [s["samples"] for s in info["shards"]] == [5, 5, 5]
    index = pd.read_parquet(shards / "index.parquet")
    kept = set(manifest(demo_run, "filter").query("status == 'kept'")["sample_id"])
    assert set(index["sample_id"]) == kept and index["sample_id"].is_unique
    assert set(index["shard"]) == set(names)


def test_rerun_with_nothing_changed_skips_every_segment(ray_local, demo_run, demo_input, tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(demo_run, run_dir)
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*.parquet")}
    rec = run_config(DEMO, run_dir, inputs=[str(demo_input)])
    assert not any(s.get("ran") for s in rec["stages"].values())
    assert before == {p: p.stat().st_mtime_ns for p in run_dir.rglob("*.parquet")}


def test_threshold_change_reruns_the_filter_and_after_not_decode(ray_local, demo_run, demo_input, tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(demo_run, run_dir)
    decode_done = (run_dir / "checkpoints" / "decode" / "_SUCCESS.json").stat().st_mtime_ns
    rec = run_config(DEMO, run_dir, inputs=[str(demo_input)],
                     overrides=["filter.rules=[{column: len(text), min: 20}, {column: width, min: 600}]"])
    assert rec["stages"]["decode"]["ran"] is False and rec["stages"]["ingest"]["ran"] is False
    assert rec["stages"]["filter"]["ran"] is True and rec["stages"]["shard"]["ran"] is True
    assert (run_dir / "checkpoints" / "decode" / "_SUCCESS.json").stat().st_mtime_ns == decode_done
    f = manifest(run_dir, "filter")
    assert (f.query("status == 'dropped'")["reason"] == "width<600").sum() >= 1
    counts = assert_conservation(run_dir)
    assert counts["shard"]["kept"] == counts["filter"]["kept"] < 15


def test_from_reruns_a_stage_and_everything_after(ray_local, demo_run, demo_input, tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(demo_run, run_dir)
    rec = run_config(DEMO, run_dir, inputs=[str(demo_input)], from_stage="filter")
    ran = {k for k, v in rec["stages"].items() if v.get("ran")}
    assert ran == {"filter", "shard"}
    assert_conservation(run_dir)


def test_only_reruns_one_stage_from_its_upstream_checkpoint(ray_local, demo_run, demo_input, tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(demo_run, run_dir)
    shard_done = (run_dir / "checkpoints" / "shard" / "_SUCCESS.json").stat().st_mtime_ns
    rec = run_config(DEMO, run_dir, inputs=[str(demo_input)], only_stage="filter")
    assert {k for k, v in rec["stages"].items() if v.get("ran")} == {"filter"}
    assert (run_dir / "checkpoints" / "shard" / "_SUCCESS.json").stat().st_mtime_ns == shard_done


def test_only_without_upstream_checkpoint_fails_clearly(ray_local, demo_input, tmp_path):
    from pipeline.config import ConfigError

    with pytest.raises(ConfigError, match="not complete"):
        run_config(DEMO, tmp_path / "fresh", inputs=[str(demo_input)], only_stage="shard")


def _parquet_source(path: Path) -> Path:
    """A second, differently shaped source: Parquet with image bytes, `caption` and `uid` columns."""
    import pyarrow as pa
    import skimage

    data = Path(skimage.__file__).parent / "data"
    rows = [
        {"uid": "p-coffee", "caption": "A cup of coffee on a saucer, photographed from above.", "jpg": (data / "coffee.png").read_bytes()},
        {"uid": "p-moon", "caption": "The surface of the moon with craters, in grayscale.", "jpg": (data / "moon.png").read_bytes()},
        {"uid": "p-text", "caption": "Handwritten and printed text on a page.", "jpg": (data / "text.png").read_bytes()},
        {"uid": "p-bad", "caption": "Bytes that are not an image at all.", "jpg": b"not an image"},
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_a_dag_with_two_sources_a_union_and_two_branches(ray_local, demo_input, tmp_path):
    parquet = _parquet_source(tmp_path / "more" / "extra.parquet")
    cfg = tmp_path / "dag.yaml"
    cfg.write_text(textwrap.dedent(f"""
        name: dag
        sources:
          photos: {{path: {demo_input}}}
          extra: {{path: {parquet}, text_column: caption, key_column: uid, image_column: jpg}}
        stages:
          - {{name: read_photos, kind: ingest, source: photos, chunk_rows: 6}}
          - {{name: read_extra, kind: ingest, source: extra}}
          - {{name: decode, kind: decode, after: [read_photos, read_extra]}}
          - name: small
            kind: filter
            rules: [{{column: width, max: 512}}]
          - {{name: small_shards, kind: shard, corpus: small, samples_per_shard: 4}}
          - name: large
            kind: filter
            after: decode
            rules: [{{column: width, min: 513}}]
          - {{name: large_shards, kind: shard, corpus: large, samples_per_shard: 4}}
    """))
    run_dir = tmp_path / "run"
    rec = run_config(cfg, run_dir)
    counts = assert_conservation(run_dir)
    assert counts["read_extra"] == {"in": 4, "kept": 4, "dropped": 0, "error": 0}
    assert counts["decode"]["in"] == counts["read_photos"]["kept"] + 4
    # the two branches split decode's kept rows between them, without overlap
    small_kept = set(manifest(run_dir, "small").query("status == 'kept'")["sample_id"])
    large_kept = set(manifest(run_dir, "large").query("status == 'kept'")["sample_id"])
    decode_kept = set(manifest(run_dir, "decode").query("status == 'kept'")["sample_id"])
    assert small_kept | large_kept == decode_kept and not (small_kept & large_kept)
    assert set(manifest(run_dir, "small_shards")["sample_id"]) == small_kept
    assert set(manifest(run_dir, "large_shards")["sample_id"]) == large_kept
    sources = set(manifest(run_dir, "decode")["source"])
    assert sources == {"photos", "extra"}
    assert rec["stages"]["decode"]["checkpoint"] is True  # a branch point is always a checkpoint
