"""Small Ray building blocks shared by the resample stages.

- ``per_block``: run a function on every block and bring back its few output
  rows (partial sums the caller adds up). ``ds.sum``/``ds.aggregate`` would
  shuffle for a number.
- ``sum_by_key``: exact sums of integer columns grouped by integer key columns,
  distributed, moving only those columns:

  1. the input is projected to the keys and values and coalesced into batches
     of ~``COALESCE_BYTES`` (thousands of tiny upstream blocks would each be a
     task, and a shuffle's pieces grow with blocks x partitions);
  2. each batch pre-sums its rows (Arrow ``group_by``, vectorised);
  3. the partition count comes from the pre-summed bytes (~``PARTITION_BYTES``
     each), never from the input block count; each pre-summed block is cut by
     a hash of the key, and one task per partition sums its pieces again.

  The exchange is plain Ray tasks, 1 CPU each: Ray Data's ``groupby().map_groups``
  finds its group boundaries with a multi-threaded Arrow ``group_by`` inside Ray's
  own code (``ArrowBlockAccessor._get_group_boundaries_sorted``), which fails as below.

Every Arrow ``group_by`` here runs with ``use_threads=False``. Acero sizes a
group-by's per-thread states once per process (``ThreadIndexer::Capacity``, a
static: CPU pool + IO pool + 1 threads when the first plan ran; 1 + 8 + 1 = 10
in a Ray worker, where Ray sets ``OMP_NUM_THREADS=1``). Ray Data's Parquet read
task then calls ``pa.set_cpu_count(32)`` in the same, reused worker, and the next
threaded group-by there runs on more threads than it has states for:
``ArrowIndexError: thread index 10 is out of range [0, 10)``. A task works on one
block on one core anyway, so threads only oversubscribe the node.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import pyarrow as pa

COALESCE_BYTES = 64 << 20
PARTITION_BYTES = 128 << 20
_MIX = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93], dtype=np.uint64)


def partitions(n_bytes: int, partition_bytes: int = PARTITION_BYTES) -> int:
    """Partitions of ~``partition_bytes`` for ``n_bytes`` of shuffled rows (at least one)."""
    return max(1, math.ceil(n_bytes / partition_bytes))


def coalesce_rows(width: int, target_bytes: int = COALESCE_BYTES) -> int:
    """Rows per coalesced batch for rows of ``width`` bytes."""
    return max(1024, target_bytes // max(1, width))


def per_block(ds, fn: Callable[..., pa.Table], *args: Any) -> list[dict]:
    """``fn(table, *args)`` on every block; its output rows (a few per block) come back."""
    return ds.map_batches(fn, fn_args=args, batch_format="pyarrow", batch_size=None).take_all()


def group_sum(table: pa.Table, keys: list[str], values: list[str]) -> pa.Table:
    """Exact sums of ``values`` per distinct ``keys`` (single-threaded Arrow; columns keep their names)."""
    summed = table.select(keys + values).group_by(keys, use_threads=False).aggregate([(v, "sum") for v in values])
    return summed.rename_columns([c[:-4] if c.endswith("_sum") and c[:-4] in values else c for c in summed.column_names])


def _presum(table: pa.Table, keys: list[str], values: list[str]) -> pa.Table:
    return group_sum(table, keys, values)


def key_partition(table: pa.Table, keys: list[str], parts: int) -> np.ndarray:
    """Partition of each row, from a mix of its integer keys (the same for a key wherever it is)."""
    h = np.zeros(table.num_rows, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for i, k in enumerate(keys):
            h += table.column(k).to_numpy(zero_copy_only=False).astype(np.uint64) * _MIX[i % len(_MIX)]
        h ^= h >> np.uint64(31)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(29)
    return (h % np.uint64(parts)).astype(np.int64)


def _split(table: pa.Table, keys: list[str], parts: int) -> tuple[pa.Table, ...]:
    """One piece of the table per partition (a stable order inside each piece)."""
    part = key_partition(table, keys, parts)
    order = np.argsort(part, kind="stable")
    bounds = np.searchsorted(part[order], np.arange(parts + 1))
    ordered = table.take(pa.array(order))
    return tuple(ordered.slice(int(bounds[j]), int(bounds[j + 1] - bounds[j])) for j in range(parts))


def _resum(keys: list[str], values: list[str], schema: pa.Schema, *pieces: pa.Table) -> pa.Table:
    tables = [t for t in pieces if t.num_rows] or [schema.empty_table()]
    return group_sum(pa.concat_tables(tables, promote_options="permissive"), keys, values)


def presummed(ds, keys: list[str], values: list[str], coalesce_bytes: int = COALESCE_BYTES):
    """Coalesced, pre-summed (keys + values) blocks, materialized: what the exchange moves."""
    cols = keys + values
    rows = coalesce_rows(8 * len(cols), coalesce_bytes)  # integer columns, 8 bytes each
    return ds.select_columns(cols).map_batches(_presum, fn_args=(keys, values), batch_format="pyarrow", batch_size=rows).materialize()


def exchange_sum(pre, keys: list[str], values: list[str], partition_bytes: int = PARTITION_BYTES):
    """Sum pre-summed blocks again by key across blocks: ``partitions(bytes)`` reduce tasks, each fed
    one piece of every block. Returns a materialized dataset, one block per partition."""
    import ray
    import ray.data as rd

    schema = _schema(pre, keys + values)
    refs = pre.to_arrow_refs()
    if not refs:
        return rd.from_arrow(schema.empty_table())
    parts = partitions(pre.size_bytes(), partition_bytes)
    reduce = ray.remote(num_cpus=1, max_retries=3)(_resum)
    if parts == 1:
        out = [reduce.remote(keys, values, schema, *refs)]
    else:
        split = ray.remote(num_cpus=1, max_retries=3, num_returns=parts)(_split)
        pieces = [split.remote(r, keys, parts) for r in refs]
        del refs
        out = [reduce.remote(keys, values, schema, *[p[j] for p in pieces]) for j in range(parts)]
        del pieces
    return rd.from_arrow_refs(out)


def _schema(ds, columns: list[str]) -> pa.Schema:
    """The dataset's Arrow schema for ``columns`` (int64 where an empty dataset has none)."""
    s = ds.schema()
    s = getattr(s, "base_schema", s)
    if s is None:
        return pa.schema([(c, pa.int64()) for c in columns])
    return pa.schema([s.field(c) for c in columns])


def sum_by_key(ds, keys: list[str], values: list[str], n_rows: int | None = None,
               partition_bytes: int = PARTITION_BYTES, coalesce_bytes: int = COALESCE_BYTES):
    """One row per distinct key with the summed values (exact; the result is a materialized dataset).
    ``n_rows`` is accepted for callers of the row-count version; partitions now follow bytes."""
    del n_rows
    return exchange_sum(presummed(ds, keys, values, coalesce_bytes), keys, values, partition_bytes)
