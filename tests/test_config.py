"""Pipeline files are validated before Ray starts; every error names the file, the stage and the field."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from pipeline.config import ConfigError, load_config
from pipeline.graph import build_plan
from pipeline.runner import Runner, RunOptions

GOOD = """
name: t
sources:
  images: {path: PATH, format: jsonl_images}
stages:
  - {name: ingest, kind: ingest, source: images}
  - {name: decode, kind: decode, min_side: 32}
  - name: filter
    kind: filter
    rules: [{column: width, min: 64}]
  - {name: shard, kind: shard, samples_per_shard: 4}
"""


def write(tmp_path: Path, text: str, data_dir: Path | None = None) -> Path:
    p = tmp_path / "pipe.yaml"
    p.write_text(textwrap.dedent(text).replace("PATH", str(data_dir or tmp_path)))
    return p


def error_of(path, **kw) -> str:
    with pytest.raises(ConfigError) as e:
        cfg = load_config(path, **kw)
        Runner(cfg, RunOptions(run_dir=str(Path(path).parent / "run")))
    return str(e.value)


def test_a_valid_file_loads_with_defaults_filled(tmp_path):
    cfg = load_config(write(tmp_path, GOOD))
    assert cfg.stage_names() == ["ingest", "decode", "filter", "shard"]
    assert cfg.stage("decode").params.max_pixels > 0
    assert cfg.stage("decode").resources.num_cpus == 1


def test_unknown_stage_kind_lists_known_kinds(tmp_path):
    msg = error_of(write(tmp_path, GOOD.replace("kind: decode", "kind: decodee")))
    assert "pipe.yaml" in msg and "'decode'" in msg and "decodee" in msg and "known kinds" in msg


def test_misspelt_parameter_names_file_stage_and_field(tmp_path):
    msg = error_of(write(tmp_path, GOOD.replace("min_side: 32", "min_sid: 32")))
    assert "pipe.yaml" in msg and "stage 'decode'" in msg and "'min_sid'" in msg and "unknown field" in msg


def test_wrong_type_names_the_field(tmp_path):
    msg = error_of(write(tmp_path, GOOD.replace("min_side: 32", "min_side: big")))
    assert "stage 'decode'" in msg and "'min_side'" in msg


def test_nested_rule_error_names_the_path(tmp_path):
    msg = error_of(write(tmp_path, GOOD.replace("{column: width, min: 64}", "{column: width, minimum: 64}")))
    assert "stage 'filter'" in msg and "minimum" in msg


def test_missing_input_path_names_source_field_and_stage(tmp_path):
    msg = error_of(write(tmp_path, GOOD, data_dir=tmp_path / "nope"))
    assert "source 'images'" in msg and "'path'" in msg and "nope" in msg and "'ingest'" in msg


def test_set_overrides_are_validated_like_the_file(tmp_path):
    path = write(tmp_path, GOOD)
    cfg = load_config(path, overrides=["decode.min_side=100", "shard.resources.batch_size=7", "seed=3"])
    assert cfg.stage("decode").params.min_side == 100
    assert cfg.stage("shard").resources.batch_size == 7
    assert cfg.seed == 3
    assert "'min_side'" in error_of(path, overrides=["decode.min_side=-1"])
    assert "no stage 'decod'" in error_of(path, overrides=["decod.min_side=1"])
    assert "unknown field" in error_of(path, overrides=["decode.colour=1"])


def test_input_replaces_the_source_path(tmp_path):
    path = write(tmp_path, GOOD, data_dir=tmp_path / "nope")
    other = tmp_path / "elsewhere"
    other.mkdir()
    assert load_config(path, inputs=[str(other)]).sources["images"].path == str(other)
    assert load_config(path, inputs=[f"images={other}"]).sources["images"].path == str(other)
    assert "no source 'imgs'" in error_of(path, inputs=[f"imgs={other}"])


def test_input_without_name_is_ambiguous_with_two_sources(tmp_path):
    text = GOOD.replace("sources:\n", "sources:\n  docs: {path: PATH}\n")
    assert "use --input NAME=PATH" in error_of(write(tmp_path, text), inputs=[str(tmp_path)])


def test_after_must_name_an_earlier_stage(tmp_path):
    msg = error_of(write(tmp_path, GOOD.replace("- {name: shard, kind: shard,", "- {name: shard, kind: shard, after: nowhere,")))
    assert "stage 'shard'" in msg and "'after'" in msg and "nowhere" in msg


def test_nothing_may_follow_a_sink(tmp_path):
    text = GOOD + "  - {name: late, kind: filter, rules: [{column: width, min: 1}]}\n"
    msg = error_of(write(tmp_path, text))
    assert "'late'" in msg and "follows 'shard'" in msg


def test_a_stage_needing_a_column_nobody_produces_fails_before_running(tmp_path):
    msg = error_of(write(tmp_path, GOOD.replace("column: width", "column: vir")))
    assert "stage 'filter'" in msg and "vir" in msg and "no upstream stage produces" in msg


def test_duplicate_names_and_bad_yaml(tmp_path):
    assert "duplicate stage name" in error_of(write(tmp_path, GOOD.replace("name: filter", "name: decode")))
    p = tmp_path / "bad.yaml"
    p.write_text("stages: [unclosed")
    assert "not valid YAML" in error_of(p)


def test_checkpoints_are_placed_where_the_graph_needs_them(tmp_path):
    plan = build_plan(load_config(write(tmp_path, GOOD)))
    ck = {n: node.checkpoint for n, node in plan.nodes.items()}
    # filter feeds a global stage (shard), shard is a leaf; nothing marked decode
    assert ck == {"ingest": False, "decode": False, "filter": True, "shard": True}
    assert [s.name for s in plan.segments] == ["filter", "shard"]
    assert [n.name for n in plan.segments[0].nodes] == ["ingest", "decode", "filter"]


def test_fingerprints_change_downstream_of_a_change_only(tmp_path):
    path = write(tmp_path, GOOD)
    a = build_plan(load_config(path)).nodes
    b = build_plan(load_config(path, overrides=["filter.rules=[{column: width, min: 99}]"])).nodes
    assert a["ingest"].fingerprint == b["ingest"].fingerprint
    assert a["decode"].fingerprint == b["decode"].fingerprint
    assert a["filter"].fingerprint != b["filter"].fingerprint
    assert a["shard"].fingerprint != b["shard"].fingerprint


def test_shipped_configs_validate(tmp_path):
    root = Path(__file__).resolve().parent.parent
    for cfg in sorted((root / "configs").glob("*.yaml")):
        build_plan(load_config(cfg))
