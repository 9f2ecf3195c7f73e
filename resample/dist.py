"""Small Ray Data building blocks shared by the resample stages.

- ``per_block``: run a function on every block and bring back its few output
  rows (partial sums the caller adds up). ``ds.sum``/``ds.aggregate`` would
  shuffle for a number.
- ``sum_by_key``: exact sums of integer columns grouped by integer key columns,
  distributed: each block pre-sums its rows (Arrow ``group_by``, vectorised),
  rows are spread over ``ceil(rows / rows_per_partition)`` partitions by a hash
  of the key, and one ``map_groups`` call per partition sums them again with
  Arrow. Ray Data's own ``groupby(key).aggregate`` calls Python once per
  distinct key, far too slow for millions of n-grams.
- The shuffles run with Ray Data's pull-based sort shuffle (tasks), set on
  these intermediate datasets only: the actor-based hash shuffle (Ray 2.60's
  default) starts aggregator actors for every groupby, seconds each, which
  dominates at the sizes where the driver-free path must still be tested.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import pyarrow as pa

_PART = "_rs_part"
_MIX = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93], dtype=np.uint64)


def task_shuffled(ds):
    """The same dataset, its shuffles run by tasks (pull-based sort shuffle) instead of actors."""
    from ray.data.context import ShuffleStrategy

    ds.context.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    return ds


def partitions(n_rows: int, rows_per_partition: int = 2_000_000) -> int:
    return max(1, math.ceil(n_rows / rows_per_partition))


def per_block(ds, fn: Callable[..., pa.Table], *args: Any) -> list[dict]:
    """``fn(table, *args)`` on every block; its output rows (a few per block) come back."""
    return ds.map_batches(fn, fn_args=args, batch_format="pyarrow", batch_size=None).take_all()


def _presum(table: pa.Table, keys: list[str], values: list[str], parts: int) -> pa.Table:
    summed = table.select(keys + values).group_by(keys).aggregate([(v, "sum") for v in values])
    summed = summed.rename_columns([c[:-4] if c.endswith("_sum") and c[:-4] in values else c for c in summed.column_names])
    h = np.zeros(summed.num_rows, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for i, k in enumerate(keys):
            h += summed.column(k).to_numpy(zero_copy_only=False).astype(np.uint64) * _MIX[i % len(_MIX)]
        h ^= h >> np.uint64(31)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(29)
    return summed.append_column(_PART, pa.array((h % np.uint64(parts)).astype(np.int64)))


def _resum(table: pa.Table, keys: list[str], values: list[str]) -> pa.Table:
    return _presum(table, keys, values, 1).drop_columns([_PART])


def sum_by_key(ds, keys: list[str], values: list[str], n_rows: int, rows_per_partition: int = 2_000_000):
    """One row per distinct key with the summed values (exact; the result is a materialized dataset)."""
    parts = partitions(n_rows, rows_per_partition)
    pre = task_shuffled(ds.map_batches(_presum, fn_args=(keys, values, parts), batch_format="pyarrow", batch_size=None))
    return (pre.groupby(_PART, num_partitions=min(parts, 200))
            .map_groups(_resum, fn_args=(keys, values), batch_format="pyarrow").materialize())
