"""`sailcurate manifest diff` and `manifest query`: what a threshold change did, and SQL over manifests.

Run A is the shared demo run; run B is a copy of it rerun with a stricter caption-length rule
(resuming from the decode checkpoint, as a user changing one threshold would).
"""
from __future__ import annotations

import io
import json

import pandas as pd
import pytest

from conftest import ROOT, copy_run, run_config
from helpers import assert_conservation, manifest

STRICT_RULES = 'filter.rules=[{column: "len(text)", min: 100}, {column: aspect_ratio, max: 3.0}]'


@pytest.fixture(scope="module")
def runs(demo_run, demo_input, tmp_path_factory):
    run_b = copy_run(demo_run, tmp_path_factory.mktemp("diff") / "run_b")
    record = run_config(ROOT / "configs" / "demo.yaml", run_b, inputs=[str(demo_input)], overrides=[STRICT_RULES])
    assert record["stages"]["decode"]["ran"] is False  # the checkpoint before the filter was reused
    assert_conservation(run_b)
    return demo_run, run_b


def _expected_changes(run_a, run_b, stage: str) -> pd.DataFrame:
    """The oracle, in pandas: an outer join of the two manifests of one stage."""
    a = manifest(run_a, stage)[["sample_id", "status", "reason"]]
    b = manifest(run_b, stage)[["sample_id", "status", "reason"]]
    m = a.merge(b, on="sample_id", how="outer", suffixes=("_a", "_b"))
    m[["status_a", "status_b"]] = m[["status_a", "status_b"]].fillna("absent")
    same = (m["status_a"] == m["status_b"]) & (m["reason_a"].fillna("\0") == m["reason_b"].fillna("\0"))
    return m[~same]


def test_diff_names_the_samples_a_stricter_threshold_dropped(runs):
    from manifests.diff import diff_runs, transitions

    run_a, run_b = runs
    diff = diff_runs(str(run_a), str(run_b))
    # exactly the rows the oracle finds, stage by stage; stages before the filter did not change
    for stage in ("ingest", "decode", "filter", "shard"):
        got = diff[diff["stage"] == stage]
        want = _expected_changes(run_a, run_b, stage)
        assert sorted(got["sample_id"]) == sorted(want["sample_id"]), stage
    assert not len(diff[diff["stage"].isin(["ingest", "decode"])])

    filt = diff[diff["stage"] == "filter"]
    newly = filt[filt["status_a"] == "kept"]
    assert len(newly) > 0 and (newly["status_b"] == "dropped").all() and (newly["reason_b"] == "len(text)<100").all()
    # the already-short caption keeps its status but its reason now names the new rule
    restated = filt[filt["status_a"] == "dropped"]
    assert list(restated["reason_a"]) == ["len(text)<20"] and list(restated["reason_b"]) == ["len(text)<100"]
    # what the filter newly dropped never reached the shards of B
    shard = diff[diff["stage"] == "shard"]
    assert set(shard["sample_id"]) == set(newly["sample_id"]) and set(shard["status_b"]) == {"absent"}

    t = transitions(diff)
    assert {(r.stage, r.status_a, r.status_b): r.samples for r in t.itertuples()} == {
        ("filter", "kept", "dropped"): len(newly), ("filter", "dropped", "dropped"): 1, ("shard", "kept", "absent"): len(newly)}
    only_status = diff_runs(str(run_a), str(run_b), status_only=True)
    assert "dropped" not in set(only_status.loc[only_status["stage"] == "filter", "status_a"])


def test_diff_cli_table_csv_json(runs, capsys):
    from manifests.diff import diff_runs
    from pipeline.cli import main

    run_a, run_b = runs
    want = diff_runs(str(run_a), str(run_b))
    assert main(["manifest", "diff", str(run_a), str(run_b), "--format", "json"]) == 0
    got = pd.read_json(io.StringIO(capsys.readouterr().out), lines=True)
    assert list(got["sample_id"]) == list(want["sample_id"]) and list(got["stage"]) == list(want["stage"])
    assert main(["manifest", "diff", str(run_a), str(run_b), "--format", "csv", "--stage", "filter"]) == 0
    got = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert set(got["stage"]) == {"filter"} and len(got) == int((want["stage"] == "filter").sum())
    assert main(["manifest", "diff", str(run_a), str(run_b)]) == 0
    out = capsys.readouterr().out
    assert f"{want['sample_id'].nunique()} sample(s) changed" in out
    assert "len(text)<100" in out and "│ filter │ kept     │ dropped  │" in out

    assert main(["manifest", "diff", str(run_a), str(run_a)]) == 0
    assert "no sample changed" in capsys.readouterr().out


def test_query_views_per_stage_all_manifests_and_stages(demo_run):
    from manifests.query import run_query, view_names

    record = json.loads((demo_run / "run.json").read_text())
    assert set(view_names(str(demo_run))) == set(record["order"]) | {"manifests", "stages"}
    counts = assert_conservation(demo_run)
    for stage in record["order"]:
        df = run_query(str(demo_run), f'SELECT status, count(*) AS n FROM "{stage}" GROUP BY status')
        assert {r.status: r.n for r in df.itertuples()} == {k: v for k, v in counts[stage].items() if k != "in" and v}
    stacked = run_query(str(demo_run), "SELECT stage, count(*) AS n FROM manifests GROUP BY stage")
    assert dict(zip(stacked["stage"], stacked["n"])) == {s: c["in"] for s, c in counts.items()}
    stages = run_query(str(demo_run), "SELECT stage, kind FROM stages ORDER BY position")
    assert list(stages["stage"]) == record["order"]
    # a stage's scalar columns are there: the decode sizes behind the min_side rule
    small = run_query(str(demo_run), "SELECT source_key, min_side FROM decode WHERE reason LIKE 'min_side<%'")
    assert list(small["source_key"]) == ["tiny_cat"] and small["min_side"].iloc[0] < 32


def test_query_cli_pretty_table_and_errors(demo_run, capsys):
    from pipeline.cli import main

    assert main(["manifest", "query", str(demo_run),
                 "SELECT status, count(*) AS n FROM filter GROUP BY status ORDER BY status"]) == 0
    out = capsys.readouterr().out
    n_kept = int((manifest(demo_run, "filter")["status"] == "kept").sum())
    assert out.splitlines()[0].startswith("┌") and f"│ kept    │ {n_kept:>2} │" in out and out.rstrip().endswith("(2 rows)")
    assert main(["manifest", "query", str(demo_run), "SELECT * FROM decode", "--format", "json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == len(manifest(demo_run, "decode"))
    assert main(["manifest", "query", str(demo_run), "SELECT * FROM no_such_stage"]) == 2
    assert "no_such_stage" in capsys.readouterr().err
