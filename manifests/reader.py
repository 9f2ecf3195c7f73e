"""Read a run's manifests and record (pandas); DuckDB and pyarrow read the same files."""
from __future__ import annotations

from typing import Iterator

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import storage


def read_run_record(run_dir: str) -> dict:
    uri = storage.join(run_dir, "run.json")
    if not storage.exists(uri):
        raise FileNotFoundError(f"{run_dir}: no run.json; is this a sailcurate run directory?")
    return storage.read_json(uri)


def stage_order(run_dir: str) -> list[str]:
    return list(read_run_record(run_dir)["order"])


def _manifest_path(run_dir: str, stage: str):
    uri = storage.join(run_dir, "manifests", f"{stage}.parquet")
    if not storage.exists(uri):
        stages = stage_order(run_dir)
        raise FileNotFoundError(f"{run_dir}: no manifest for stage {stage!r}; stages: {', '.join(stages)}")
    return storage.resolve(uri)


def read_manifest(run_dir: str, stage: str) -> pd.DataFrame:
    """A whole manifest in memory: for tests and small runs. The CLI's summary and ``show`` stream
    instead (``manifest_batches``), so a manifest of a billion rows costs them a batch."""
    fs, path = _manifest_path(run_dir, stage)
    return pd.read_parquet(path, filesystem=fs)


def manifest_batches(run_dir: str, stage: str, columns: list[str] | None = None,
                     batch_rows: int = 65_536) -> Iterator[pa.RecordBatch]:
    """A manifest as record batches of at most ``batch_rows`` rows (only ``columns``, if given)."""
    fs, path = _manifest_path(run_dir, stage)
    with fs.open_input_file(path) as f:
        yield from pq.ParquetFile(f).iter_batches(batch_size=batch_rows, columns=columns)


def show_rows(run_dir: str, stage: str, status: str | None = None, reason: str | None = None, limit: int = 20,
              batch_rows: int = 65_536) -> pd.DataFrame:
    """The first ``limit`` rows (all, when ``limit`` is 0 or less) with that status and a reason
    starting with ``reason``, read batch by batch until that many are found."""
    parts, found = [], 0
    for batch in manifest_batches(run_dir, stage, batch_rows=batch_rows):
        df = batch.to_pandas()
        if status:
            df = df[df["status"] == status]
        if reason:
            df = df[df["reason"].fillna("").str.startswith(reason)]
        parts.append(df)
        found += len(df)
        if limit and limit > 0 and found >= limit:
            break
    if not parts:  # a manifest with no rows: its columns all the same
        fs, path = _manifest_path(run_dir, stage)
        return pq.read_schema(path, filesystem=fs).empty_table().to_pandas()
    df = pd.concat(parts, ignore_index=True)
    return df.head(limit) if limit and limit > 0 else df
