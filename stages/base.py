"""The stage contract every pipeline step follows.

A stage is a small class: its parameters are a pydantic model, its input and
output columns are declared with Arrow types, its resources are data, and its
work is a batch function over a pandas DataFrame. Filters never delete rows:
they set ``status``/``reason``. The runner (``pipeline.runner``) relies on
this to prove conservation (rows in = kept + dropped + error) at every stage
and to commit work in chunks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import pandas as pd
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

KEPT, DROPPED, ERROR = "kept", "dropped", "error"
STATUSES = (KEPT, DROPPED, ERROR)

# Columns every row carries from ingest to shard.
BASE_COLUMNS: dict[str, pa.DataType] = {
    "sample_id": pa.string(),
    "source": pa.string(),
    "source_key": pa.string(),
    "status": pa.string(),
    "reason": pa.string(),
}
# Bookkeeping columns the runner owns: the commit unit a row belongs to and the
# stage that decided a non-kept status (so per-stage manifests can be derived).
CHUNK_COLUMN = "_chunk"
DECIDED_AT_COLUMN = "_decided_at"
RUNNER_COLUMNS: dict[str, pa.DataType] = {
    CHUNK_COLUMN: pa.string(),
    DECIDED_AT_COLUMN: pa.string(),
}


class Params(BaseModel):
    """Base for stage parameters: unknown fields are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Resources(BaseModel):
    """What one worker of a stage needs; the runner turns this into Ray arguments."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    batch_size: int = Field(64, ge=1)
    # Actor-pool size for stateful stages: None = autoscale from 1 to what the
    # cluster's resources allow.
    concurrency: int | None = Field(None, ge=1)


@dataclass(frozen=True)
class StageContext:
    """Run-level facts a stage may need at setup (never mutable global state)."""

    run_dir: str
    stage_name: str
    sources: dict[str, Any]


class Stage:
    """Base class. Subclasses set ``kind``, ``Params`` and the column maps.

    ``mode``:
      - ``map``: row-preserving batch function, streamed by Ray Data;
      - ``source``: lists input units on the driver and reads each in a task;
      - ``global``: sees the whole upstream dataset (dedup, resample, shard).
    ``stateful`` stages (models) run in an actor pool and ``setup()`` runs once
    per actor; stateless ones run as fused Ray tasks.
    """

    kind: ClassVar[str] = ""
    mode: ClassVar[Literal["map", "source", "global"]] = "map"
    stateful: ClassVar[bool] = False
    sink: ClassVar[bool] = False  # writes final outputs; nothing may follow it
    # Packages whose code (and data files) shape this stage's output, beyond its own module:
    # part of its fingerprint, so changing an engine or a rubric reruns the stage.
    code_deps: ClassVar[tuple[str, ...]] = ()
    Params: ClassVar[type[Params]] = Params
    requires: ClassVar[dict[str, pa.DataType]] = {}
    produces: ClassVar[dict[str, pa.DataType]] = {}
    default_resources: ClassVar[Resources] = Resources()
    description: ClassVar[str] = ""

    def __init__(self, params: Params, name: str, context: StageContext | None = None):
        self.params = params
        self.name = name
        self.context = context

    # -- columns -----------------------------------------------------------
    def output_columns(self) -> dict[str, pa.DataType]:
        """Columns this stage adds; overridden where they depend on params."""
        return dict(self.produces)

    def input_columns(self) -> dict[str, pa.DataType]:
        return dict(self.requires)

    def manifest_columns(self) -> list[str]:
        """Produced columns worth a manifest row: scalars, never media bytes."""
        return [
            c for c, t in self.output_columns().items()
            if not is_media_type(t) and not c.startswith("_")
        ]

    # -- lifecycle ---------------------------------------------------------
    def setup(self) -> None:
        """Load models or other heavy state; called once per worker."""

    # Global stages may fill ``self.run_stats`` (a JSON-able dict) while ``transform`` or
    # ``run_global`` runs on the driver (eagerly: figures computed inside lazy Ray tasks
    # never reach it). The runner stores it in the completion record and in run.json
    # under ``stages.<name>.stats``.
    run_stats: dict[str, Any] | None = None

    def process(self, batch: pd.DataFrame) -> pd.DataFrame:
        """Return the same rows, in order, with outputs filled and statuses set.

        Only rows with ``status == 'kept'`` are passed in.
        """
        raise NotImplementedError(f"stage kind {self.kind!r} defines no process()")


def mark(batch: pd.DataFrame, mask: Any, status: str, reason: str | pd.Series) -> None:
    """Set status/reason on rows selected by ``mask`` that are still kept."""
    mask = pd.Series(mask, index=batch.index).fillna(False).astype(bool) & (batch["status"] == KEPT)
    if not mask.any():
        return
    batch.loc[mask, "status"] = status
    if isinstance(reason, pd.Series):
        batch.loc[mask, "reason"] = reason[mask]
    else:
        batch.loc[mask, "reason"] = reason


def mark_arrow(table: pa.Table, hit: Any, reason: Any, stage: str) -> pa.Table:
    """Arrow twin of ``mark`` for global stages: rows in ``hit`` that are still kept become
    dropped with ``reason`` (a scalar or one value per row) and ``_decided_at = stage``."""
    import pyarrow.compute as pc

    hit = pc.and_(pa.array(hit, pa.bool_()) if not isinstance(hit, (pa.Array, pa.ChunkedArray)) else hit,
                  pc.equal(table.column("status"), KEPT))
    reason = reason if isinstance(reason, (pa.Array, pa.ChunkedArray)) else (
        pa.array(reason, pa.string()) if isinstance(reason, list) else pa.scalar(reason, pa.string()))
    cols = {
        "status": pc.if_else(hit, pa.scalar(DROPPED), table.column("status")),
        "reason": pc.if_else(hit, reason, table.column("reason").cast(pa.string())),
        DECIDED_AT_COLUMN: pc.if_else(hit, pa.scalar(stage), table.column(DECIDED_AT_COLUMN).cast(pa.string())),
    }
    for name, arr in cols.items():
        table = table.set_column(table.column_names.index(name), name, arr)
    return table


def limit_units(units: list[dict[str, Any]], limit: int | None) -> list[dict[str, Any]]:
    """The first source units up to ``limit`` rows, each told (``max_rows``) how many it may still
    read. A unit whose row count is unknown until read (``rows`` missing or None) takes the rest."""
    if limit is None:
        return units
    out, left = [], limit
    for u in units:
        if left <= 0:
            break
        out.append({**u, "max_rows": left})
        known = u.get("rows")
        left -= known if known is not None else left
    return out


def is_media_type(t: pa.DataType) -> bool:
    """Bytes, or a list of bytes (video frames): kept out of manifests."""
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        t = t.value_type
    return pa.types.is_binary(t) or pa.types.is_large_binary(t)


def format_number(value: float) -> str:
    """Thresholds in reasons read like the config: 3 not 3.0, 0.25 not 0.250000."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return str(int(value))
    return f"{value:g}"
