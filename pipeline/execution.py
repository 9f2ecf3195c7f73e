"""The callables Ray Data runs on workers: source reads, stage calls, fragment writes.

They hold only what they were constructed with (stage kind, params, paths),
never driver state, so they pickle to any node of a cluster.
"""
from __future__ import annotations

import hashlib
import json
import time

import pandas as pd
import pyarrow as pa

from pipeline import media, storage
from pipeline.checkpoint import Checkpoint
from stages.base import (
    CHUNK_COLUMN, DECIDED_AT_COLUMN, ERROR, KEPT, Params, Stage, StageContext,
)
from stages.registry import get_stage_kind


def build_stage(kind: str, params: dict, name: str, context: StageContext | None) -> Stage:
    cls = get_stage_kind(kind)
    return cls(cls.Params(**params), name, context)


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Select, order and cast columns to the segment's declared schema."""
    arrays = []
    for f in schema:
        if f.name in table.column_names:
            col = table.column(f.name)
            if col.type != f.type:
                try:
                    col = col.cast(f.type)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                    raise TypeError(f"column {f.name!r}: cannot cast {col.type} to declared {f.type}: {e}") from None
            arrays.append(col)
        else:
            arrays.append(pa.nulls(table.num_rows, f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def error_row_id(source: str, what: str) -> str:
    return hashlib.blake2b(f"{source}\0{what}".encode(), digest_size=16).hexdigest()


class SourceRead:
    """Reads one input unit per call and records how many rows it produced."""

    def __init__(self, kind: str, params: dict, name: str, context: StageContext, run_dir: str,
                 checkpoint: str, schema: pa.Schema):
        self.stage = build_stage(kind, params, name, context)
        self.ckpt = Checkpoint(run_dir, checkpoint)
        self.schema = schema

    def frames(self, units: pa.Table):
        """(chunk, frame) per unit, as the reader made it: the frame still holds the media bytes as
        Python objects, so stages fused behind the read (``SourceChain``) use them without the
        copy into an Arrow buffer and back."""
        for chunk, unit_json in zip(units.column("chunk").to_pylist(), units.column("unit").to_pylist()):
            unit = json.loads(unit_json)
            try:
                df = self.stage.read_unit(unit)
            except Exception as e:  # a unit that cannot be read at all becomes one error row
                what = json.dumps(unit, sort_keys=True)
                df = pd.DataFrame([{
                    "sample_id": error_row_id(self.stage.name, what),
                    "source": unit.get("source", ""), "source_key": unit.get("label", what),
                    "status": ERROR, "reason": f"ingest_failed: {type(e).__name__}: {e}",
                }])
            df[CHUNK_COLUMN] = chunk
            df[DECIDED_AT_COLUMN] = [None if s == KEPT else self.stage.name for s in df["status"]]
            self.ckpt.write_source_count(chunk, len(df))
            yield chunk, df

    def __call__(self, units: pa.Table) -> pa.Table:
        tables = [conform(pa.Table.from_pandas(df, preserve_index=False, nthreads=1), self.schema)
                  for _, df in self.frames(units)]
        return pa.concat_tables(tables) if tables else self.schema.empty_table()


class StageCall:
    """Applies one map stage to the kept rows of a batch; others pass through untouched.

    A batch that raises is split in halves and retried, down to single rows;
    a single row that still raises becomes an error row with the exception as
    its reason. The rest of the batch goes on.
    """

    def __init__(self, kind: str, params: dict, name: str, context: StageContext, columns: dict,
                 timing_dir: str | None = None):
        self.stage = build_stage(kind, params, name, context)
        self.columns = columns  # declared outputs: name -> arrow type
        # Media the stage reads (fetched by reference when a row has only the reference) and media
        # it writes (a changed value loses its reference, so the fragment writer stores it).
        self.media_in = media.referenced_columns(self.stage.input_columns())
        self.media_out = media.referenced_columns(columns)
        self._ready = False
        self._timing = None
        if self.stage.stateful:
            t0 = time.monotonic()
            self._setup()
            if timing_dir:
                from pipeline.actor_timing import ActorTiming

                self._timing = ActorTiming(timing_dir, name, time.monotonic() - t0)

    def _setup(self) -> None:
        if not self._ready:
            self.stage.setup()
            self._ready = True

    def _process_safely(self, rows: pd.DataFrame) -> pd.DataFrame:
        try:
            out = self.stage.process(rows.copy())
        except Exception as e:
            if len(rows) == 1:
                out = rows.copy()
                out["status"] = ERROR
                out["reason"] = f"{self.stage.kind}_failed: {type(e).__name__}: {e}"
                return out
            mid = len(rows) // 2
            return pd.concat([self._process_safely(rows.iloc[:mid]), self._process_safely(rows.iloc[mid:])])
        if len(out) != len(rows) or list(out["sample_id"]) != list(rows["sample_id"]):
            raise RuntimeError(
                f"stage {self.stage.name!r} ({self.stage.kind}) broke the stage contract: it must return "
                "the rows it was given, in order (mark them dropped instead of deleting them)"
            )
        return out

    def __call__(self, batch: pd.DataFrame, shed: list[str] | tuple = ()) -> pa.Table:
        """``shed``: media columns whose bytes are dropped (where a reference holds them) before
        the frame becomes Arrow: bytes no later stage reads are never copied into a buffer."""
        started = time.monotonic()
        out = self._to_arrow(shed_frame(self._call(batch), shed))
        if self._timing is not None:
            self._timing.batch(started, time.monotonic(), int((batch["status"] == KEPT).sum()))
        return out

    def _call(self, batch: pd.DataFrame) -> pd.DataFrame:
        self._setup()
        batch = batch.reset_index(drop=True)
        for col in self.columns:
            if col not in batch.columns:
                batch[col] = None
        active = batch["status"] == KEPT
        if active.any() and self.media_in:
            active = self._fetch_media(batch, active)
        if active.any():
            before = batch.loc[active]
            after = self._process_safely(before)
            after.index = before.index
            self._drop_stale_refs(before, after)
            if active.all():  # the common case: the stage's frame is the batch (no per-column writes)
                batch = pd.DataFrame({c: (after[c].values if c in after.columns else batch[c].values)
                                      for c in batch.columns})
                decided = batch["status"] != KEPT
                batch[DECIDED_AT_COLUMN] = batch[DECIDED_AT_COLUMN].astype(object)
                batch.loc[decided, DECIDED_AT_COLUMN] = self.stage.name
                return batch
            for col in after.columns:
                if col in batch.columns or col in self.columns:
                    if col not in batch.columns:
                        batch[col] = None
                    batch[col] = batch[col].astype(object)
                    batch.loc[active, col] = after[col].astype(object).values
            decided = active & (batch["status"] != KEPT)
            batch[DECIDED_AT_COLUMN] = batch[DECIDED_AT_COLUMN].astype(object)
            batch.loc[decided, DECIDED_AT_COLUMN] = self.stage.name
        return batch

    def _fetch_media(self, batch: pd.DataFrame, active: pd.Series) -> pd.Series:
        """Bytes for kept rows that carry only a reference (rows read from a checkpoint); a
        reference that cannot be served makes its row an error naming the file."""
        for col in self.media_in:
            rcol = media.ref_column(col)
            if rcol not in batch.columns:
                continue
            if col not in batch.columns:
                batch[col] = None
            need = active & batch[col].isna() & batch[rcol].notna()
            if not need.any():
                continue
            got = media.fetch(list(batch.loc[need, rcol]))
            values = list(batch[col])
            for pos, g in zip(need.to_numpy().nonzero()[0], got):
                if isinstance(g, media.MediaError):
                    i = batch.index[pos]
                    batch.at[i, "status"], batch.at[i, "reason"] = ERROR, str(g)
                    batch.at[i, DECIDED_AT_COLUMN] = self.stage.name
                else:
                    values[pos] = g
            batch[col] = pd.Series(values, index=batch.index, dtype=object)
            active = active & (batch["status"] == KEPT)
        return active

    def _drop_stale_refs(self, before: pd.DataFrame, after: pd.DataFrame) -> None:
        """A stage that rewrote a media value (a re-encode) or made one (a chart) leaves it without
        a reference: the fragment writer then stores the new bytes once."""
        for col in self.media_out:
            if col not in after.columns:
                continue
            rcol = media.ref_column(col)
            old = before[col] if col in before.columns else pd.Series([None] * len(after), index=after.index)
            refs = after[rcol] if rcol in after.columns else pd.Series([None] * len(after), index=after.index)
            after[rcol] = [r if media.same_value(a, b) else None for a, b, r in zip(after[col], old, refs)]

    def _to_arrow(self, batch: pd.DataFrame) -> pa.Table:
        """Arrow with declared types, so blocks from different batches share one schema."""
        types = {**{c: pa.string() for c in ("status", "reason", DECIDED_AT_COLUMN)}, **self.columns}
        declared = {**self.stage.input_columns(), **self.columns}
        for col in self.media_in + self.media_out:
            if col in batch.columns:
                types[col] = declared[col]
            if media.ref_column(col) in batch.columns:
                types[media.ref_column(col)] = pa.string()
        for col, t in types.items():
            if col in batch.columns and batch[col].dtype == object:
                batch[col] = batch[col].where(batch[col].notna(), None)
        table = pa.Table.from_pandas(batch, preserve_index=False, nthreads=1)
        for col, t in types.items():
            if col in table.column_names and table.schema.field(col).type != t and not pa.types.is_null(t):
                try:
                    table = table.set_column(table.column_names.index(col), col, table.column(col).cast(t))
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as e:
                    raise TypeError(
                        f"stage {self.stage.name!r} ({self.stage.kind}): column {col!r} holds {table.schema.field(col).type}, "
                        f"declared {t}: {e}"
                    ) from None
        return table


class FragmentWrite:
    """Commits each batch as one fragment per chunk; returns per-chunk counts to the driver."""

    def __init__(self, run_dir: str, stage: str, schema: pa.Schema, media_store: str | None = None):
        self.ckpt = Checkpoint(run_dir, stage)
        self.schema = schema
        self.media_store = media_store or storage.join(run_dir, "media")
        # Referenced media: bytes a row holds in flight are written as their reference only.
        self.media = [n[: -len(media.REF_SUFFIX)] for n in schema.names if n.endswith(media.REF_SUFFIX)
                      and n[: -len(media.REF_SUFFIX)] not in schema.names]

    def __call__(self, table: pa.Table) -> pa.Table:
        if self.media:
            table = media.externalize(table, self.media, self.media_store)
        table = conform(table, self.schema)
        chunks, rows, kept = [], [], []
        if table.num_rows:
            import pyarrow.compute as pc

            for chunk in sorted(set(table.column(CHUNK_COLUMN).to_pylist())):
                sub = table.filter(pc.equal(table.column(CHUNK_COLUMN), chunk))
                sub = sub.sort_by("sample_id")
                self.ckpt.write_fragment(chunk, sub)
                chunks.append(chunk)
                rows.append(sub.num_rows)
                kept.append(pc.sum(pc.equal(sub.column("status"), KEPT)).as_py() or 0)
        return pa.table({"chunk": pa.array(chunks, pa.string()), "rows": pa.array(rows, pa.int64()),
                         "kept": pa.array(kept, pa.int64())})


def shed_media(table: pa.Table, columns: list[str]) -> pa.Table:
    """Drop the bytes of rows that hold a reference to them; bytes a stage made (no reference yet)
    stay, so the fragment writer can store them."""
    import pyarrow.compute as pc

    for col in columns:
        rcol = media.ref_column(col)
        if col not in table.column_names or rcol not in table.column_names:
            continue
        values = table.column(col)
        kept = pc.if_else(pc.is_valid(table.column(rcol)), pa.nulls(table.num_rows, values.type), values)
        table = table.set_column(table.column_names.index(col), col, kept)
    return table


def shed_frame(frame: pd.DataFrame, columns) -> pd.DataFrame:
    """``shed_media`` on a pandas frame, before its conversion to Arrow."""
    for col in columns:
        rcol = media.ref_column(col)
        if col in frame.columns and rcol in frame.columns:
            frame[col] = frame[col].where(frame[rcol].isna(), None)
    return frame


class StageChain:
    """Consecutive stateless stages applied to one block in one task, each in its own batch size.

    Why not one Ray Data ``map_batches`` per stage: Ray fuses them into one task anyway, but a
    fused operator bundles its *input* up to the largest downstream ``batch_size``. Behind a source
    read whose rows are work units (one tar each), decode's 32 or 256 bundled that many tars into
    one task, so a segment of fewer units than that ran on one core however many the cluster had.
    Here the chain takes whole blocks (``batch_size=None``), so each unit stays one task, and the
    stages still see the batch sizes they declare.

    ``steps``: per stage, the ``StageCall`` arguments, its batch size and the media columns to shed
    after it (``shed_media``)."""

    def __init__(self, steps: list[tuple[tuple, int, list[str]]], shed_first: list[str] | None = None):
        self.steps = steps
        self.shed_first = shed_first or []
        self._calls: list[StageCall] | None = None

    def _ready_calls(self) -> list["StageCall"]:
        if self._calls is None:
            self._calls = [StageCall(*args) for args, _, _ in self.steps]
        return self._calls

    def __call__(self, table: pa.Table) -> pa.Table:
        if self.shed_first:
            table = shed_media(table, self.shed_first)
        return self._steps_from(0, table)

    def run_frame(self, frame: pd.DataFrame) -> pa.Table:
        """The chain on a reader's frame: the first stage takes slices of it as they are."""
        calls = self._ready_calls()
        frame = shed_frame(frame, self.shed_first)
        _, batch_size, shed = self.steps[0]
        table = _joined([calls[0](frame.iloc[at:at + batch_size], shed) for at in range(0, len(frame), batch_size)]
                        or [calls[0](frame, shed)])
        return self._steps_from(1, table)

    def _steps_from(self, start: int, table: pa.Table) -> pa.Table:
        from ray.data.block import BlockAccessor  # Ray Data's own pandas conversion, as map_batches uses

        for call, (_, batch_size, shed) in zip(self._ready_calls()[start:], self.steps[start:]):
            table = _joined([call(BlockAccessor.for_block(table.slice(at, batch_size)).to_pandas(), shed)
                             for at in range(0, table.num_rows, batch_size)]
                            or [call(BlockAccessor.for_block(table).to_pandas(), shed)])
        return table


def _joined(parts: list[pa.Table]) -> pa.Table:
    return parts[0] if len(parts) == 1 else pa.concat_tables(parts, promote_options="permissive")


class SourceChain:
    """A source read and the task stages right behind it, in one call per unit.

    Why: between a read and decode, the media bytes are the bulk of a block. Handing the reader's
    pandas frame straight to the first stage (and shedding the bytes before its output becomes
    Arrow) saves two copies of every image per row; on a 2-core VM, each fresh copy of a tar's
    worth of images into one Arrow buffer cost as much as decoding them (BENCHMARKS.md)."""

    def __init__(self, read_args: tuple, steps: list, shed_first: list[str] | None, schema: pa.Schema):
        self.read = SourceRead(*read_args)
        self.chain = StageChain(steps, shed_first)
        self.schema = schema  # what the chain's last stage hands on: every block the same

    def __call__(self, units: pa.Table) -> pa.Table:
        tables = [conform(self.chain.run_frame(df), self.schema) for _, df in self.read.frames(units)]
        return pa.concat_tables(tables) if tables else self.schema.empty_table()


def run_stage_chain(table: pa.Table, steps: list, shed_first: list[str]) -> pa.Table:
    return StageChain(steps, shed_first)(table)


def read_and_chain(units: pa.Table, read_args: tuple, steps: list, shed_first: list[str],
                   schema: pa.Schema) -> pa.Table:
    return SourceChain(read_args, steps, shed_first, schema)(units)


def read_units(units: pa.Table, kind: str, params: dict, name: str, context: StageContext,
               run_dir: str, checkpoint: str, schema: pa.Schema) -> pa.Table:
    return SourceRead(kind, params, name, context, run_dir, checkpoint, schema)(units)


def run_stage_batch(batch: pd.DataFrame, kind: str, params: dict, name: str, context: StageContext,
                    columns: dict) -> pa.Table:
    """Task form of StageCall for stateless stages (their setup is cheap)."""
    return StageCall(kind, params, name, context, columns)(batch)


def write_fragments(table: pa.Table, run_dir: str, stage: str, schema: pa.Schema,
                    media_store: str | None = None) -> pa.Table:
    return FragmentWrite(run_dir, stage, schema, media_store)(table)


__all__ = ["SourceRead", "SourceChain", "read_and_chain", "shed_frame", "StageCall", "FragmentWrite", "conform", "build_stage", "Params",
           "read_units", "run_stage_batch", "run_stage_chain", "shed_media", "StageChain", "write_fragments"]
