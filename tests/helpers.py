"""Assertions shared by tests: conservation and manifest invariants, read from the files."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd


def manifest(run_dir, stage) -> pd.DataFrame:
    return pd.read_parquet(Path(run_dir) / "manifests" / f"{stage}.parquet")


def assert_conservation(run_dir) -> dict[str, dict[str, int]]:
    """Every stage: in = kept + dropped + error; each stage's input is exactly its parents' kept rows;
    every non-kept row says why. Returns the counts per stage."""
    record = json.loads((Path(run_dir) / "run.json").read_text())
    counts = {}
    kept_ids = {}
    for stage in record["order"]:
        info = record["stages"][stage]
        df = manifest(run_dir, stage)
        assert df["sample_id"].is_unique, f"{stage}: a sample appears twice in its manifest"
        assert set(df["status"]) <= {"kept", "dropped", "error"}, stage
        not_kept = df[df["status"] != "kept"]
        assert not_kept["reason"].notna().all() and (not_kept["reason"].str.len() > 0).all(), \
            f"{stage}: a dropped/error row has no reason"
        if info["parents"]:
            upstream = set().union(*(kept_ids[p] for p in info["parents"]))
            assert set(df["sample_id"]) == upstream, f"{stage}: rows in != kept rows of {info['parents']}"
        c = df["status"].value_counts().to_dict()
        counts[stage] = {"in": len(df), **{k: int(c.get(k, 0)) for k in ("kept", "dropped", "error")}}
        assert counts[stage]["in"] == counts[stage]["kept"] + counts[stage]["dropped"] + counts[stage]["error"]
        kept_ids[stage] = set(df.loc[df["status"] == "kept", "sample_id"])
    return counts


def pydoc_paragraphs(min_words: int = 40) -> list[str]:
    """Real prose nobody here wrote: the stdlib's pydoc topics, as whitespace-collapsed paragraphs
    of at least ``min_words`` words, unique, in a fixed order."""
    import re

    from pydoc_data.topics import topics

    out: list[str] = []
    seen: set[str] = set()
    for key in sorted(topics):
        for p in re.split(r"\n\s*\n", topics[key]):
            p = " ".join(p.split())
            if len(p.split()) >= min_words and p not in seen:
                seen.add(p)
                out.append(p)
    return out
