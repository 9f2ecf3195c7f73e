"""SQL over a run's manifests with DuckDB.

``manifest_connection(run_dir)`` returns a DuckDB connection with:

- one view per stage, named after the stage (``SELECT * FROM decode``; quote names that
  are not plain identifiers: ``SELECT * FROM "my-stage"``), holding that stage's manifest:
  one row per row that entered it (``sample_id, source, source_key, status, reason`` plus
  the stage's scalar columns);
- ``manifests``: every stage's manifest stacked, with a ``stage`` column (columns a stage
  lacks are NULL);
- ``stages``: the run record per stage (``stage, kind, segment, position, ran, seconds``).

Manifests are opened as pyarrow datasets (local or any filesystem ``pipeline.storage``
resolves), so DuckDB streams them with projection and filter pushdown; nothing is loaded
up front.
"""
from __future__ import annotations

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pds

from manifests.reader import read_run_record
from manifests.writer import manifest_uri
from pipeline import storage

HELPER_VIEWS = ("manifests", "stages")


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _stages_table(record: dict) -> pa.Table:
    rows = []
    for i, name in enumerate(record.get("order") or []):
        info = record["stages"].get(name) or {}
        rows.append({"stage": name, "kind": info.get("kind"), "segment": info.get("segment"), "position": i,
                     "ran": bool(info.get("ran")), "seconds": info.get("seconds")})
    schema = pa.schema([("stage", pa.string()), ("kind", pa.string()), ("segment", pa.string()),
                        ("position", pa.int32()), ("ran", pa.bool_()), ("seconds", pa.float64())])
    return pa.Table.from_pylist(rows, schema=schema)


def manifest_connection(run_dir: str, threads: int | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with a view per stage, ``manifests`` and ``stages`` (see module doc)."""
    record = read_run_record(run_dir)
    con = duckdb.connect()
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    present = []
    for stage in record["order"]:
        uri = manifest_uri(run_dir, stage)
        if not storage.exists(uri):
            continue  # a stage that never ran has no manifest (e.g. a run stopped early)
        fs, path = storage.resolve(uri)
        con.register(stage, pds.dataset(path, filesystem=fs, format="parquet"))
        present.append(stage)
    if "stages" not in present:
        con.register("stages", _stages_table(record))
    if present and "manifests" not in present:
        union = " UNION ALL BY NAME ".join(
            f"SELECT {_sql_str(s)} AS stage, * FROM {quote_ident(s)}" for s in present)
        con.execute(f"CREATE VIEW manifests AS {union}")
    return con


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def run_query(run_dir: str, sql: str) -> pd.DataFrame:
    """Run one SQL statement over the run's views and return the result."""
    con = manifest_connection(run_dir)
    try:
        rel = con.sql(sql)
        return rel.df() if rel is not None else pd.DataFrame()
    finally:
        con.close()


def view_names(run_dir: str) -> list[str]:
    con = manifest_connection(run_dir)
    try:
        return [r[0] for r in con.execute("SELECT table_name FROM information_schema.tables ORDER BY 1").fetchall()]
    finally:
        con.close()


def format_frame(df: pd.DataFrame, fmt: str = "table", max_width: int = 60) -> str:
    """Pretty output for a terminal (``table``), or ``csv`` / ``json`` (JSON lines) for tools."""
    if fmt == "csv":
        return df.to_csv(index=False).rstrip("\n")
    if fmt == "json":
        return df.to_json(orient="records", lines=True, force_ascii=False).rstrip("\n")
    if fmt != "table":
        raise ValueError(f"unknown format {fmt!r}: use table, csv or json")
    if not len(df.columns):
        return "(no result)"
    cells = [[_cell(v, max_width) for v in row] for row in df.itertuples(index=False, name=None)]
    header = [str(c) for c in df.columns]
    numeric = [pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c]) for c in df.columns]
    widths = [max([len(header[i])] + [len(r[i]) for r in cells]) for i in range(len(header))]

    def line(values):
        return "│ " + " │ ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)) + " │"

    out = ["┌─" + "─┬─".join("─" * w for w in widths) + "─┐", line(header),
           "├─" + "─┼─".join("─" * w for w in widths) + "─┤"]
    out += [line(r) for r in cells]
    out.append("└─" + "─┴─".join("─" * w for w in widths) + "─┘")
    out.append(f"({len(df)} row{'s' if len(df) != 1 else ''})")
    return "\n".join(out)


def _cell(value, max_width: int) -> str:
    if value is None or (isinstance(value, float) and value != value) or value is pd.NA:
        text = "NULL"
    elif isinstance(value, float):
        text = f"{value:.6g}"
    else:
        text = str(value)
    text = text.replace("\n", "⏎").replace("\t", " ")
    return text if len(text) <= max_width else text[: max_width - 1] + "…"
