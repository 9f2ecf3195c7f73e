"""The K-th smallest key per group, over a Ray Dataset, without collecting rows anywhere.

Radix select on uint64 keys, 16 bits a pass. The dataset holds a group column
(rows whose group is null take no part) and a uint64 key column. For every
target (group, k) the driver keeps a prefix (the key bits fixed so far) and
the rank still to find inside it. A pass is one Ray Data job:

1. ``map_batches``: each block counts, per probe (group, prefix), how many of
   its keys fall on each value of the next 16 bits (a sparse histogram);
2. ``dist.sum_by_key``: the histograms (24 bytes a row, never the rows
   themselves) summed across blocks by (probe, digit); at most 65,536
   (digit, count) rows per probe reach the driver;
3. the driver walks the cumulative counts to the digit holding the rank and
   extends the prefix.

Once the bin holding the rank has at most ``collect_limit`` keys (or the
group itself is that small) one last job returns those keys (8 bytes each)
and the driver sorts them. Uniform keys need one histogram pass below ~4e9
rows; any key set needs at most four. The result is exact: the same value
whatever the block layout, since only counts and key values are combined.
"""
from __future__ import annotations

from typing import Any, Callable, Hashable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from resample.dist import per_block, sum_by_key
from resample.keys import ALL_ONES

DIGIT_BITS = 16
_MASK = np.uint64((1 << DIGIT_BITS) - 1)


def group_sizes(ds, group_col: str, key_col: str) -> dict[Hashable, int]:
    """Rows per group with a non-null group and key (per-block counts, one row per group and block)."""
    sizes: dict[Hashable, int] = {}
    for r in per_block(ds, _group_counts, group_col, key_col):
        sizes[r["group"]] = sizes.get(r["group"], 0) + int(r["n"])
    return sizes


def _group_counts(table: pa.Table, group_col: str, key_col: str) -> pa.Table:
    ok = pc.and_(pc.is_valid(table.column(group_col)), pc.is_valid(table.column(key_col)))
    t = table.filter(ok)
    # use_threads=False: see resample/dist.py (Acero's per-process thread states vs Ray Data's pool resize).
    counts = t.group_by(group_col, use_threads=False).aggregate([(key_col, "count")])
    return pa.table({"group": counts.column(group_col), "n": counts.column(f"{key_col}_count").cast(pa.int64())})


def _probe_mask(groups: pa.ChunkedArray | pa.Array, keys: np.ndarray, group: Any, shift: int, prefix: int) -> np.ndarray:
    m = pc.fill_null(pc.equal(groups, pa.scalar(group, groups.type)), False).to_numpy(zero_copy_only=False)
    if shift:
        m &= (keys >> np.uint64(64 - shift)) == np.uint64(prefix)
    return m


def _keys_of(table: pa.Table, key_col: str) -> np.ndarray:
    return pc.fill_null(table.column(key_col), 0).cast(pa.uint64()).to_numpy(zero_copy_only=False)


def _histograms(table: pa.Table, group_col: str, key_col: str, probes: list[tuple[Any, int, int]]) -> pa.Table:
    groups = pc.if_else(pc.is_valid(table.column(key_col)), table.column(group_col),
                        pa.nulls(table.num_rows, table.schema.field(group_col).type))
    keys = _keys_of(table, key_col)
    pid, dig, cnt = [], [], []
    for i, (group, shift, prefix) in enumerate(probes):
        m = _probe_mask(groups, keys, group, shift, prefix)
        digits = ((keys[m] >> np.uint64(64 - DIGIT_BITS - shift)) & _MASK).astype(np.int64)
        u, c = np.unique(digits, return_counts=True)
        pid.append(np.full(len(u), i, np.int64))
        dig.append(u)
        cnt.append(c.astype(np.int64))
    cat = (lambda xs: np.concatenate(xs) if xs else np.zeros(0, np.int64))
    return pa.table({"probe": cat(pid), "digit": cat(dig), "n": cat(cnt)})


def _collect(table: pa.Table, group_col: str, key_col: str, probes: list[tuple[Any, int, int]]) -> pa.Table:
    groups = pc.if_else(pc.is_valid(table.column(key_col)), table.column(group_col),
                        pa.nulls(table.num_rows, table.schema.field(group_col).type))
    keys = _keys_of(table, key_col)
    pid, out = [], []
    for i, (group, shift, prefix) in enumerate(probes):
        k = keys[_probe_mask(groups, keys, group, shift, prefix)]
        pid.append(np.full(len(k), i, np.int64))
        out.append(k)
    return pa.table({"probe": np.concatenate(pid) if pid else np.zeros(0, np.int64),
                     "key": pa.array(np.concatenate(out) if out else np.zeros(0, np.uint64), pa.uint64())})


def kth_smallest(ds, targets: list[tuple[Hashable, int]], sizes: dict[Hashable, int], group_col: str, key_col: str,
                 collect_limit: int = 1 << 16, log: Callable[[str], None] | None = None) -> dict[tuple[Hashable, int], int | None]:
    """For each (group, k): the k-th smallest key of the group (k is 1-based).

    ``None`` when k <= 0 (nothing is kept), ``ALL_ONES`` when k >= the group size (everything
    is). Rows with key <= the result are the group's k smallest (more only on tied keys).
    ``ds`` should be materialized: every pass reads it again.
    """
    result: dict[tuple[Hashable, int], int | None] = {}
    # state: target -> [group, shift, prefix, rank within prefix, keys under prefix]
    state: dict[tuple[Hashable, int], list] = {}
    for group, k in targets:
        size = sizes.get(group, 0)
        if k <= 0:
            result[(group, k)] = None
        elif k >= size:
            result[(group, k)] = ALL_ONES
        else:
            state[(group, k)] = [group, 0, 0, k, size]
    passes = 0
    while state:
        collect = {t: s for t, s in state.items() if s[4] <= collect_limit or s[1] == 64}
        narrow = {t: s for t, s in state.items() if t not in collect}
        if narrow:
            probes = sorted({(s[0], s[1], s[2]) for s in narrow.values()}, key=repr)
            index = {p: i for i, p in enumerate(probes)}
            hist_rows = ds.map_batches(_histograms, fn_args=(group_col, key_col, probes), batch_format="pyarrow",
                                       batch_size=None)
            rows = sum_by_key(hist_rows, ["probe", "digit"], ["n"]).take_all()
            hist: dict[int, list[tuple[int, int]]] = {}
            for r in rows:
                hist.setdefault(int(r["probe"]), []).append((int(r["digit"]), int(r["n"])))
            for s in narrow.values():
                below = 0
                for digit, n in sorted(hist[index[(s[0], s[1], s[2])]]):
                    if below + n >= s[3]:
                        s[2] = (s[2] << DIGIT_BITS) | digit
                        s[1] += DIGIT_BITS
                        s[3] -= below
                        s[4] = n
                        break
                    below += n
                else:  # the histogram disagrees with the size: the dataset changed under us
                    raise RuntimeError(f"radix select: group {s[0]!r} has fewer keys than its size said")
            passes += 1
        if collect:
            probes = sorted({(s[0], s[1], s[2]) for s in collect.values()}, key=repr)
            index = {p: i for i, p in enumerate(probes)}
            got = ds.map_batches(_collect, fn_args=(group_col, key_col, probes), batch_format="pyarrow",
                                 batch_size=None).take_all()
            keys: dict[int, list[int]] = {}
            for r in got:
                keys.setdefault(int(r["probe"]), []).append(int(r["key"]))
            for t, s in collect.items():
                ks = sorted(keys.get(index[(s[0], s[1], s[2])], []))
                if len(ks) < s[3]:
                    raise RuntimeError(f"radix select: group {s[0]!r} has fewer keys than its size said")
                result[t] = ks[s[3] - 1]
                del state[t]
            passes += 1
    if log and passes:
        log(f"radix select: {len(targets)} target(s) in {passes} pass(es)")
    return result


def count_at_or_below(ds, thresholds: dict[Hashable, int | None], group_col: str, key_col: str) -> dict[Hashable, int]:
    """Rows per group whose key is <= the group's threshold (what a cut at those thresholds keeps)."""
    kept: dict[Hashable, int] = {}
    for r in per_block(ds, _kept_counts, thresholds, group_col, key_col):
        kept[r["group"]] = kept.get(r["group"], 0) + int(r["n"])
    return kept


def _kept_counts(table: pa.Table, thresholds: dict[Hashable, int | None], group_col: str, key_col: str) -> pa.Table:
    groups = table.column(group_col)
    keys = _keys_of(table, key_col)
    valid = pc.is_valid(table.column(key_col)).to_numpy(zero_copy_only=False)
    out_g, out_n = [], []
    for group, thr in thresholds.items():
        m = _probe_mask(groups, keys, group, 0, 0) & valid
        n = int((keys[m] <= np.uint64(thr)).sum()) if thr is not None else 0
        out_g.append(group)
        out_n.append(n)
    return pa.table({"group": pa.array(out_g, groups.type), "n": pa.array(out_n, pa.int64())})
