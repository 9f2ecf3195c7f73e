"""The summary `sailcurate run` prints at the end, and `sailcurate manifest show`, read a manifest a
batch at a time (three columns for the summary), so their memory does not grow with the run. Read
in batches of 7 rows or all at once, they must say exactly what pandas says of the whole file."""
from __future__ import annotations

import json
import random
from collections import Counter

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from manifests.reader import read_manifest, show_rows
from manifests.summary import summarize
from manifests.writer import reason_key

REASONS = ["decode_error: cannot identify image file", "ita<3", "vir<2", "duplicate_of:abc", "duplicate_of:def",
           "judge_http: 503 after 3 attempts", None]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    rng = random.Random(0)
    root = tmp_path_factory.mktemp("run")
    (root / "manifests").mkdir()
    rows = []
    for i in range(1000):
        status = rng.choice(["kept", "kept", "dropped", "error"])
        rows.append({"sample_id": f"s{i:04d}", "source": rng.choice(["laion", "coyo", None]), "status": status,
                     "reason": None if status == "kept" and i % 3 else rng.choice(REASONS), "score": rng.random()})
    pq.write_table(pa.Table.from_pylist(rows), root / "manifests" / "judge.parquet", row_group_size=64)
    record = {"pipeline": "t", "status": "succeeded", "order": ["judge", "shard"],
              "stages": {"judge": {"kind": "judge"}, "shard": {"kind": "shard"}}}
    (root / "run.json").write_text(json.dumps(record))
    return root


def test_the_summary_read_in_small_batches_counts_what_the_whole_file_holds(run_dir):
    df = read_manifest(str(run_dir), "judge")
    small, whole = summarize(str(run_dir), top=10, batch_rows=7), summarize(str(run_dir), top=10)
    assert small == whole
    judge, shard = small["stages"]
    assert shard == {"stage": "shard", "kind": "shard", "missing": True}
    status = Counter(df["status"])
    assert (judge["in"], judge["kept"], judge["dropped"], judge["error"]) == (
        len(df), status["kept"], status["dropped"], status["error"])
    not_kept = df[(df["status"] != "kept") & df["reason"].notna()]
    assert dict(judge["top_reasons"]) == dict(Counter(reason_key(r) for r in not_kept["reason"]))
    assert "duplicate_of" in dict(judge["top_reasons"])  # two reasons, one key
    expected = {}
    for (src, st), n in df.fillna({"source": "<none>"}).groupby(["source", "status"]).size().items():
        expected.setdefault(None if src == "<none>" else src, {"kept": 0, "dropped": 0, "error": 0})[st] = int(n)
    assert judge["sources"] == expected  # rows without a source are counted too


@pytest.mark.parametrize("status, reason, limit", [("dropped", None, 5), (None, "duplicate_of", 3),
                                                   ("error", "judge_http", 0), ("kept", "nothing-like-this", 4)])
def test_show_reads_batches_until_it_has_the_first_matching_rows(run_dir, status, reason, limit):
    df = read_manifest(str(run_dir), "judge")
    if status:
        df = df[df["status"] == status]
    if reason:
        df = df[df["reason"].fillna("").str.startswith(reason)]
    want = (df.head(limit) if limit else df).reset_index(drop=True)
    got = show_rows(str(run_dir), "judge", status=status, reason=reason, limit=limit, batch_rows=7)
    pd.testing.assert_frame_equal(got.reset_index(drop=True), want)
    assert list(got.columns) == ["sample_id", "source", "status", "reason", "score"]
