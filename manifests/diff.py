"""Which samples changed status or reason between two runs, stage by stage.

Typical use: rerun a pipeline with one threshold changed (``--set filter.rules=...``) and
ask what that did. For every stage both runs have, the two manifests are joined on
``sample_id`` (a full outer join in DuckDB, so memory stays flat); a sample changed when
its status or its reason differs, or it entered the stage in one run only (status
``absent``: an upstream stage decided it differently).
"""
from __future__ import annotations

import duckdb
import pandas as pd
import pyarrow.dataset as pds

from manifests.reader import read_run_record
from manifests.writer import manifest_uri
from pipeline import storage

ABSENT = "absent"
DIFF_COLUMNS = ["stage", "sample_id", "source", "source_key", "status_a", "reason_a", "status_b", "reason_b"]


def _dataset(run_dir: str, stage: str):
    uri = manifest_uri(run_dir, stage)
    if not storage.exists(uri):
        return None
    fs, path = storage.resolve(uri)
    return pds.dataset(path, filesystem=fs, format="parquet")


def common_stages(run_a: str, run_b: str) -> tuple[list[str], list[str], list[str]]:
    """(stages in both runs in A's order, stages only in A, stages only in B)."""
    a, b = read_run_record(run_a)["order"], read_run_record(run_b)["order"]
    return [s for s in a if s in b], [s for s in a if s not in b], [s for s in b if s not in a]


_SQL = f"""
SELECT
  ? AS stage,
  coalesce(a.sample_id, b.sample_id) AS sample_id,
  coalesce(a.source, b.source) AS source,
  coalesce(a.source_key, b.source_key) AS source_key,
  coalesce(a.status, '{ABSENT}') AS status_a, a.reason AS reason_a,
  coalesce(b.status, '{ABSENT}') AS status_b, b.reason AS reason_b
FROM man_a a FULL OUTER JOIN man_b b ON a.sample_id = b.sample_id
WHERE a.sample_id IS NULL OR b.sample_id IS NULL
   OR a.status IS DISTINCT FROM b.status {{reason_test}}
ORDER BY sample_id
"""


def diff_runs(run_a: str, run_b: str, stages: list[str] | None = None, status_only: bool = False) -> pd.DataFrame:
    """One row per (stage, sample) whose status or reason (only status with ``status_only``)
    differs between the runs, in the order of A's stages, then by sample_id."""
    both, _, _ = common_stages(run_a, run_b)
    if stages:
        unknown = [s for s in stages if s not in both]
        if unknown:
            raise ValueError(f"stage(s) {unknown} not in both runs; common stages: {', '.join(both)}")
        both = [s for s in both if s in stages]
    sql = _SQL.format(reason_test="" if status_only else "OR a.reason IS DISTINCT FROM b.reason")
    frames = []
    con = duckdb.connect()
    try:
        for stage in both:
            da, db = _dataset(run_a, stage), _dataset(run_b, stage)
            if da is None or db is None:
                continue
            con.register("man_a", da)
            con.register("man_b", db)
            frames.append(con.execute(sql, [stage]).df())
            con.unregister("man_a")
            con.unregister("man_b")
    finally:
        con.close()
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype="object") for c in DIFF_COLUMNS})
    return pd.concat(frames, ignore_index=True)[DIFF_COLUMNS]


def transitions(diff: pd.DataFrame) -> pd.DataFrame:
    """Counts per stage and (status_a -> status_b), e.g. ``filter: kept -> dropped: 3``."""
    if not len(diff):
        return pd.DataFrame({"stage": [], "status_a": [], "status_b": [], "samples": []})
    order = {s: i for i, s in enumerate(dict.fromkeys(diff["stage"]))}
    out = diff.groupby(["stage", "status_a", "status_b"], sort=False).size().reset_index(name="samples")
    return out.sort_values(["stage", "samples"], key=lambda c: c.map(order) if c.name == "stage" else -c,
                           kind="stable").reset_index(drop=True)


def format_diff(run_a: str, run_b: str, diff: pd.DataFrame, limit: int = 50) -> str:
    """Terminal view: the transition counts per stage, then the changed samples."""
    from manifests.query import format_frame

    both, only_a, only_b = common_stages(run_a, run_b)
    lines = [f"A: {run_a}", f"B: {run_b}"]
    if only_a or only_b:
        lines.append(f"stages only in A: {', '.join(only_a) or '-'}; only in B: {', '.join(only_b) or '-'}")
    if not len(diff):
        lines.append(f"no sample changed status or reason in {len(both)} common stage(s)")
        return "\n".join(lines)
    lines.append(f"{diff['sample_id'].nunique()} sample(s) changed; per stage:")
    lines.append(format_frame(transitions(diff)))
    shown = diff if not limit or limit <= 0 else diff.head(limit)
    lines.append("")
    lines.append(format_frame(shown.drop(columns=["source"])))
    if len(shown) < len(diff):
        lines.append(f"... {len(diff) - len(shown)} more rows (--limit 0 for all, or --format csv|json)")
    return "\n".join(lines)
