"""Read a run's manifests and record (pandas); DuckDB and pyarrow read the same files."""
from __future__ import annotations

import pandas as pd

from pipeline import storage


def read_run_record(run_dir: str) -> dict:
    uri = storage.join(run_dir, "run.json")
    if not storage.exists(uri):
        raise FileNotFoundError(f"{run_dir}: no run.json; is this a sailcurate run directory?")
    return storage.read_json(uri)


def stage_order(run_dir: str) -> list[str]:
    return list(read_run_record(run_dir)["order"])


def read_manifest(run_dir: str, stage: str) -> pd.DataFrame:
    uri = storage.join(run_dir, "manifests", f"{stage}.parquet")
    if not storage.exists(uri):
        stages = stage_order(run_dir)
        raise FileNotFoundError(f"{run_dir}: no manifest for stage {stage!r}; stages: {', '.join(stages)}")
    fs, path = storage.resolve(uri)
    return pd.read_parquet(path, filesystem=fs)


def show_rows(run_dir: str, stage: str, status: str | None = None, reason: str | None = None, limit: int = 20) -> pd.DataFrame:
    df = read_manifest(run_dir, stage)
    if status:
        df = df[df["status"] == status]
    if reason:
        df = df[df["reason"].fillna("").str.startswith(reason)]
    return df.head(limit) if limit and limit > 0 else df
