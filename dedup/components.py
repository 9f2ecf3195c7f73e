"""Near-duplicate clusters on Ray Data: edges -> connected components -> one kept row per cluster.

Shared by ``minhash_dedup`` (text) and ``phash_dedup`` (images, videos). A dedup stage
only has to produce **edges**: rows built by ``edge_table`` / ``star_edges`` (both
directions of each pair, with the node's ``prefer`` value). ``resolve_clusters`` then:

1. finds connected components by alternating **large-star / small-star** (Kiveris et al.,
   "Connected Components in MapReduce and Beyond", 2014). The state is an undirected edge
   set, stored as both directed rows (node, nbr) with both ends' ``prefer``. A round is one
   shuffle by node and a vectorised pass over each partition; with m = the smallest of a
   node u and its neighbours:
   - large-star: every neighbour v > u is re-linked to m;
   - small-star: u and every neighbour v < u are linked to the smallest of them.
   Both keep connectivity and never add edges; a node whose step changes something counts
   one (the only figure that reaches the driver). Two consecutive rounds with no change
   mean every component is a star around its smallest sample_id, which is the label.
   Rounds grow with log of the component size (O(log^2 n) proven, ~2 log2 n measured on
   paths) where min-label propagation needed the diameter (bench/components.py). Each step
   depends only on a node's neighbourhood, so rounds and labels do not depend on the block
   layout or the partition count.
2. one more shuffle by star centre picks each cluster's representative (highest ``prefer``,
   then smallest sample_id) and emits a decision (sample_id, rep, cluster size) for the
   others: only dropped rows get one.
3. ``apply_decisions`` marks those rows without moving the full rows: a map over the rows
   where each task loads only the decisions it needs. Decisions up to ``BROADCAST_BYTES``
   are one object every task reads; larger ones are tagged with their row's ``_chunk``
   (every row carries its commit unit), range-partitioned by chunk, and each task fetches
   only the parts whose chunk range covers its block's chunks.

Every shuffle here sorts narrow rows (ids, keys, prefer, chunk) on a uniform 63-bit hash
with fixed boundaries (``hash_shuffle``): partitions come from bytes (``PARTITION_BYTES``)
and the input is coalesced to blocks of ``COALESCE_ROWS`` first, so the pieces a sort makes
(input blocks x partitions) stay few whatever the upstream block count. Sorted partitions
hold whole groups (equal keys share a hash), so each is processed with numpy in one call.
The driver only sees counts, sizes and the decision parts' chunk ranges.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stages.base import CHUNK_COLUMN, mark_arrow

PREF = "_dedup_prefer"
_REP, _SIZE, _DECISION = "_dedup_rep", "_dedup_size", "_dedup_decision"
PART = "_dedup_part"            # uniform non-negative int64: the sort key of every shuffle here
PREF_NBR = "_dedup_prefer_nbr"
CHANGED = "changed"

PARTITION_BYTES = 128 * 1024 * 1024   # bytes per shuffle partition
COALESCE_ROWS = 1 << 19               # narrow rows per block before a shuffle (~50 MiB at 100 B/row)
BROADCAST_BYTES = 16 * 1024 * 1024    # decisions up to this size: one object every task reads
DECISION_PART_BYTES = 8 * 1024 * 1024  # larger decisions: range parts of about this size

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def prefer_values(table: pa.Table, prefer: str | None) -> pa.Array:
    """Float64 ranking value: the prefer column (missing/NaN -> -inf), or 0 for every row."""
    if prefer is None:
        return pa.array(np.zeros(table.num_rows), pa.float64())
    vals = table.column(prefer).cast(pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)
    vals = np.where(np.isnan(vals), -np.inf, vals)
    return pa.array(vals, pa.float64())


def representative_order(sample_ids: list[str], prefs: np.ndarray) -> np.ndarray:
    """Indices sorted best first: highest prefer, then smallest sample_id."""
    return np.array(sorted(range(len(sample_ids)), key=lambda i: (-prefs[i], sample_ids[i])), dtype=np.int64)


# -- hashing and shuffles ------------------------------------------------------------------
def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser (uint64 in, uint64 out)."""
    with np.errstate(over="ignore"):
        h = h.astype(np.uint64)
        h ^= h >> np.uint64(30)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(27)
        h *= np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(31)
    return h


def as_bytes(values) -> np.ndarray:
    """Strings -> a numpy ``S`` array (UTF-8): compares and sorts like the Python strings."""
    arr = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    if not isinstance(arr, pa.Array):
        arr = pa.array(list(arr), pa.string())
    if len(arr) == 0:
        return np.array([], dtype="S1")
    return arr.cast(pa.binary()).to_numpy(zero_copy_only=False).astype("S")


def hash_bytes(ids: np.ndarray) -> np.ndarray:
    """A uniform non-negative int64 per ``S`` value, the same whatever the array's width."""
    n, w = len(ids), max(ids.dtype.itemsize, 1)
    if n == 0:
        return np.zeros(0, np.int64)
    mat = np.ascontiguousarray(ids).view(np.uint8).reshape(n, w)
    weights = _mix(np.arange(1, w + 1, dtype=np.uint64)) | np.uint64(1)
    h = np.zeros(n, np.uint64)
    with np.errstate(over="ignore"):
        for j in range(w):  # padding bytes are 0 and add nothing: the width does not matter
            h += mat[:, j].astype(np.uint64) * weights[j]
    return (_mix(h) >> np.uint64(1)).astype(np.int64)


def hash_ints(*cols: np.ndarray) -> np.ndarray:
    """A uniform non-negative int64 per row of integer columns."""
    h = np.zeros(len(cols[0]), np.uint64)
    for c in cols:
        h = _mix(h ^ np.asarray(c).astype(np.int64).view(np.uint64))
    return (h >> np.uint64(1)).astype(np.int64)


def partitions_for(nbytes: int, per_partition: int = PARTITION_BYTES) -> int:
    return max(1, math.ceil(nbytes / per_partition))


def narrow_input(ds):
    """Coalesce narrow rows into blocks of ``COALESCE_ROWS`` and materialise them (so their
    size is known without reading them), whatever the upstream block count."""
    return ds.repartition(target_num_rows_per_block=COALESCE_ROWS).materialize()


def hash_shuffle(ds, partitions: int | None = None):
    """Sort materialised narrow rows on ``PART`` into ``partitions`` (default: from bytes)
    ranges of equal width: each output block holds whole groups of equal keys."""
    parts = partitions or partitions_for(ds.size_bytes())
    step = (1 << 63) // parts
    boundaries = [step * i for i in range(1, parts)] or [(1 << 63) - 1]
    return ds.sort(PART, boundaries=boundaries)


def map_partitions(ds, fn, *args):
    """``fn(table, *args)`` once per sorted partition (the whole block: groups are whole)."""
    return ds.map_batches(fn, fn_args=args, batch_format="pyarrow", batch_size=None)


class UnionFind:
    """Union by smallest member, with path halving: the root of a set is its smallest item, the
    label the distributed components give. In-memory: for a bucket's pairs, and the reference the
    tests and benches check the distributed components against."""

    def __init__(self, items=()):
        self.parent = {x: x for x in items}

    def find(self, x):
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a, b) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def labels(self) -> dict:
        return {x: self.find(x) for x in list(self.parent)}


def union_find_labels(pairs, nodes=()) -> dict:
    """Every node (those in ``nodes`` and in ``pairs``) -> the smallest node of its component."""
    uf = UnionFind(nodes)
    for a, b in pairs:
        uf.union(a, b)
    return uf.labels()


# -- edges -------------------------------------------------------------------------------
def edge_table(node, nbr, pref) -> pa.Table:
    """Directed edge rows (label = node). Columns past node, nbr and prefer are kept for
    callers that append their own; ``resolve_clusters`` reads node, nbr and prefer."""
    return pa.table({"node": pa.array(node, pa.string()), "nbr": pa.array(nbr, pa.string()),
                     "label": pa.array(node, pa.string()), PREF: pa.array(pref, pa.float64()),
                     "msg": pa.array([False] * len(node), pa.bool_()),
                     "changed": pa.array([0] * len(node), pa.int64())})


def star_edges(members: list[str], prefs: dict[str, float]) -> pa.Table:
    """Members of one group -> edges to its smallest member, both directions (same
    connectivity as all pairs, linear in the group size, diameter 2)."""
    ids = sorted(set(members))
    if len(ids) < 2:
        return edge_table([], [], [])
    center = ids[0]
    src, dst = [], []
    for other in ids[1:]:
        src += [center, other]
        dst += [other, center]
    return edge_table(src, dst, [prefs[s] for s in src])


# -- components: large-star / small-star ---------------------------------------------------
_STATE = pa.schema([("node", pa.string()), ("nbr", pa.string()), (PREF, pa.float64()), (PREF_NBR, pa.float64()),
                    (PART, pa.int64()), (CHANGED, pa.int64())])


def _state_rows(table: pa.Table) -> pa.Table:
    """Caller edge rows (node, nbr, prefer of node) -> state rows: both directions, both prefers."""
    node, nbr = table.column("node"), table.column("nbr")
    pref = table.column(PREF).cast(pa.float64())
    keep = pc.not_equal(node, nbr)
    node, nbr, pref = node.filter(keep), nbr.filter(keep), pref.filter(keep)
    # The nbr's prefer is not in the row: -inf for now, filled from the node's own rows in round 1.
    low = pa.array(np.full(len(node), -np.inf), pa.float64())
    a = pa.table({"node": node, "nbr": nbr, PREF: pref, PREF_NBR: low})
    b = pa.table({"node": nbr, "nbr": node, PREF: low, PREF_NBR: pref})
    out = pa.concat_tables([a, b])
    n = out.num_rows
    return (out.append_column(PART, pa.array(hash_bytes(as_bytes(out.column("node"))), pa.int64()))
            .append_column(CHANGED, pa.array(np.zeros(n, np.int64))))


def _codes(table: pa.Table):
    """Node codes in sample_id order, deduplicated directed pairs (sorted by node, nbr) and
    each code's prefer (the maximum seen: a node's own rows carry it, the others -inf)."""
    ids = np.concatenate([as_bytes(table.column("node")), as_bytes(table.column("nbr"))])
    uniq, inv = np.unique(ids, return_inverse=True)
    n = table.num_rows
    u, v = inv[:n].astype(np.int64), inv[n:].astype(np.int64)
    pref = np.full(len(uniq), -np.inf)
    np.maximum.at(pref, u, table.column(PREF).to_numpy(zero_copy_only=False))
    np.maximum.at(pref, v, table.column(PREF_NBR).to_numpy(zero_copy_only=False))
    pairs = np.unique(u * len(uniq) + v)
    return uniq, pairs // len(uniq), pairs % len(uniq), pref


def _emit(uniq: np.ndarray, a: np.ndarray, b: np.ndarray, pref: np.ndarray, changed: int) -> pa.Table:
    """Undirected edges (a, b) -> deduplicated state rows in both directions."""
    k = len(uniq)
    pairs = np.unique(np.concatenate([a * k + b, b * k + a]))
    src, dst = pairs // k, pairs % k
    strings = pa.array(uniq.astype(object), pa.binary()).cast(pa.string()) if k else pa.array([], pa.string())
    hashes = hash_bytes(uniq)
    flag = np.zeros(len(src), np.int64)
    if len(flag):
        flag[0] = changed
    return pa.table({"node": strings.take(pa.array(src)), "nbr": strings.take(pa.array(dst)),
                     PREF: pa.array(pref[src], pa.float64()), PREF_NBR: pa.array(pref[dst], pa.float64()),
                     PART: pa.array(hashes[src], pa.int64()), CHANGED: pa.array(flag)}, schema=_STATE)


def _star_step(table: pa.Table, large: bool) -> pa.Table:
    """One round on one partition (whole neighbourhoods): large-star or small-star."""
    if table.num_rows == 0:
        return _STATE.empty_table()
    uniq, u, v, pref = _codes(table)
    if large:
        m = np.arange(len(uniq))
        np.minimum.at(m, u, v)
        up = v > u
        moved = up & (m[u] < u)
        return _emit(uniq, v[up], m[u[up]], pref, int(len(np.unique(u[moved]))))
    down = v < u
    m = np.arange(len(uniq))
    np.minimum.at(m, u[down], v[down])
    lower = np.bincount(u[down], minlength=len(uniq))
    a = v[down]
    keep = a != m[u[down]]
    heads = np.flatnonzero(m < np.arange(len(uniq)))  # nodes with a lower neighbour: (u, m)
    src = np.concatenate([a[keep], heads])
    dst = np.concatenate([m[u[down]][keep], m[heads]])
    return _emit(uniq, src, dst, pref, int((lower >= 2).sum()))


def components(edges, max_rounds: int, log: Callable[[str], None], name: str, partitions: int | None = None):
    """Edges -> (materialised star rows: node, nbr = the component's smallest sample_id for
    every other member, both directions; or None when there are no edges, rounds run)."""
    state = narrow_input(map_partitions(edges.select_columns(["node", "nbr", PREF]), _state_rows))
    if state.count() == 0:
        return None, 0
    parts = partitions or partitions_for(state.size_bytes())
    quiet = 0
    for rnd in range(1, max_rounds + 1):
        large = rnd % 2 == 1
        state = map_partitions(hash_shuffle(state, parts), _star_step, large).materialize()
        changed = int(state.sum(CHANGED) or 0)
        log(f"{name}: components round {rnd} ({'large' if large else 'small'}-star): {changed} nodes changed "
            f"({state.count()} directed edges)")
        quiet = quiet + 1 if changed == 0 else 0
        if quiet == 2:  # unchanged by both steps: every component is a star around its smallest id
            return state, rnd
    raise RuntimeError(f"{name}: components did not converge in {max_rounds} rounds")


def _component_decisions(table: pa.Table) -> pa.Table:
    """Star rows (centre, member) of whole components: a decision for every member but the
    best (highest prefer, then smallest sample_id)."""
    empty = pa.table({"sample_id": pa.array([], pa.string()), _REP: pa.array([], pa.string()),
                      _SIZE: pa.array([], pa.int64())})
    if table.num_rows == 0:
        return empty
    uniq, u, v, pref = _codes(table)
    centre = u < v
    comp = np.concatenate([np.unique(u[centre]), u[centre]])
    member = np.concatenate([np.unique(u[centre]), v[centre]])
    order = np.lexsort((member, -pref[member], comp))
    comp, member = comp[order], member[order]
    first = np.ones(len(comp), bool)
    first[1:] = comp[1:] != comp[:-1]
    starts = np.flatnonzero(first)
    sizes = np.diff(np.append(starts, len(comp)))
    rep = np.repeat(member[starts], sizes)
    size = np.repeat(sizes, sizes)
    strings = pa.array(uniq.astype(object), pa.binary()).cast(pa.string())
    out = ~first
    return pa.table({"sample_id": strings.take(pa.array(member[out])), _REP: strings.take(pa.array(rep[out])),
                     _SIZE: pa.array(size[out], pa.int64())})


# -- the old algorithm, kept for bench/components.py ----------------------------------------
def _with_messages(table: pa.Table) -> pa.Table:
    msgs = pa.table({"node": table.column("nbr"), "nbr": table.column("nbr"), "label": table.column("label"),
                     PREF: pa.array([0.0] * table.num_rows, pa.float64()),
                     "msg": pa.array([True] * table.num_rows, pa.bool_()),
                     "changed": pa.array([0] * table.num_rows, pa.int64())})
    state = table.set_column(table.column_names.index("msg"), "msg", pa.array([False] * table.num_rows, pa.bool_()))
    return pa.concat_tables([state, msgs.select(state.column_names)])


def _propagate(group: pa.Table) -> pa.Table:
    new = min(group.column("label").to_pylist())
    is_msg = group.column("msg").to_numpy(zero_copy_only=False)
    state = group.filter(pa.array(~is_msg))
    _, first = np.unique(np.array(state.column("nbr").to_pylist(), dtype=object), return_index=True)
    if len(first) < state.num_rows:
        state = state.take(pa.array(np.sort(first)))
    old = state.column("label")[0].as_py()
    changed = [0] * state.num_rows
    if new != old:
        changed[0] = 1
    state = state.set_column(state.column_names.index("label"), "label", pa.array([new] * state.num_rows, pa.string()))
    return state.set_column(state.column_names.index("changed"), "changed", pa.array(changed, pa.int64()))


def min_label_components(edges, max_rounds: int, log: Callable[[str], None] = print, partitions: int | None = None):
    """The min-label propagation this module used before large-star/small-star (rounds ~
    diameter + 1): ``(state rows with label = smallest sample_id, rounds)``. Bench baseline only."""
    from ray.data.aggregate import Count, Sum

    state = edges.select_columns(["node", "nbr", "label", PREF, "msg", "changed"])
    for rnd in range(1, max_rounds + 1):
        state = (state.map_batches(_with_messages, batch_format="pyarrow", batch_size=None)
                 .groupby("node", num_partitions=partitions).map_groups(_propagate, batch_format="pyarrow").materialize())
        if state.count() == 0:
            return None, rnd
        agg = state.aggregate(Sum("changed"), Count())
        if not (agg["sum(changed)"] or 0):
            return state, rnd
    raise RuntimeError(f"min-label propagation did not converge in {max_rounds} rounds")


# -- applying decisions --------------------------------------------------------------------
def _chunk_span(table: pa.Table) -> tuple[str | None, str | None, int]:
    """(smallest chunk, largest chunk, rows) of one decision part; (None, None, n) when any
    row has no chunk (that part is read by every task)."""
    if table.num_rows == 0:  # an empty sort partition may have no columns at all
        return "", "", 0
    col = table.column(CHUNK_COLUMN)
    if col.null_count:
        return None, None, table.num_rows
    mm = pc.min_max(col)
    return mm["min"].as_py(), mm["max"].as_py(), table.num_rows


def _with_chunks(table: pa.Table) -> pa.Table:
    """One partition of decisions (``_REP`` set) and narrow rows (``_chunk`` set): the decisions with their chunk."""
    is_dec = pc.is_valid(table.column(_REP))
    dec = table.filter(is_dec).select(["sample_id", _REP])
    rows = table.filter(pc.invert(is_dec)).select(["sample_id", CHUNK_COLUMN])
    return dec.join(rows, "sample_id", join_type="left outer", use_threads=False).select(["sample_id", _REP, CHUNK_COLUMN])


def _narrow_ids(table: pa.Table) -> pa.Table:
    sid = table.column("sample_id")
    chunk = table.column(CHUNK_COLUMN) if CHUNK_COLUMN in table.column_names else pa.nulls(table.num_rows, pa.string())
    return pa.table({"sample_id": sid, _REP: pa.nulls(table.num_rows, pa.string()), CHUNK_COLUMN: chunk.cast(pa.string()),
                     PART: pa.array(hash_bytes(as_bytes(sid)), pa.int64())})


def _dec_rows(table: pa.Table) -> pa.Table:
    sid = table.column("sample_id")
    return pa.table({"sample_id": sid, _REP: table.column(_REP).cast(pa.string()),
                     CHUNK_COLUMN: pa.nulls(table.num_rows, pa.string()),
                     PART: pa.array(hash_bytes(as_bytes(sid)), pa.int64())})


def attach_chunks(ds, decisions, partitions: int | None = None):
    """Decisions (sample_id, rep) -> (sample_id, rep, _chunk): a shuffle of narrow rows only
    (sample_id and chunk of every row, plus the decisions)."""
    rows = ds.select_columns(["sample_id"] + ([CHUNK_COLUMN] if CHUNK_COLUMN in ds.columns() else []))
    both = narrow_input(map_partitions(rows, _narrow_ids).union(map_partitions(decisions, _dec_rows)))
    return map_partitions(hash_shuffle(both, partitions), _with_chunks).materialize()


def decision_index(ds, decisions, partitions: int | None = None, broadcast_bytes: int | None = None) -> list:
    """Materialised decisions -> [(smallest chunk, largest chunk, block ref)]: one entry with
    no range (read by every task) when small, else parts range-partitioned by chunk."""
    import ray

    limit = BROADCAST_BYTES if broadcast_bytes is None else broadcast_bytes
    nbytes = decisions.size_bytes()
    if nbytes <= limit:
        small = decisions.select_columns(["sample_id", _REP]).repartition(1).materialize()
        return [(None, None, ref) for ref in small.to_arrow_refs()]
    if CHUNK_COLUMN not in decisions.columns():
        decisions = attach_chunks(ds, decisions, partitions)
    parts = partitions or partitions_for(nbytes, DECISION_PART_BYTES)
    ranged = decisions.select_columns(["sample_id", _REP, CHUNK_COLUMN]).repartition(parts).sort(CHUNK_COLUMN).materialize()
    refs = ranged.to_arrow_refs()
    span = ray.remote(_chunk_span)
    spans = ray.get([span.remote(r) for r in refs])
    return [(lo, hi, ref) for (lo, hi, n), ref in zip(spans, refs) if n]


def _apply_block(table: pa.Table, index: list, stage: str, reason_prefix: str) -> pa.Table:
    """Rows of one block: those named by a decision become dropped (``reason_prefix<rep>``).
    Loads only the decision parts whose chunk range covers a chunk of the block."""
    import ray

    if table.num_rows == 0 or not index:
        return table
    chunks = None
    if CHUNK_COLUMN in table.column_names and not table.column(CHUNK_COLUMN).null_count:
        chunks = pc.unique(table.column(CHUNK_COLUMN)).to_pylist()
    parts = [ref for lo, hi, ref in index
             if lo is None or chunks is None or any(lo <= c <= hi for c in chunks)]
    if not parts:
        return table
    dec = pa.concat_tables([t.select(["sample_id", _REP]) for t in ray.get(parts)])
    pos = pc.index_in(table.column("sample_id"), value_set=dec.column("sample_id"))
    hit = pc.is_valid(pos)
    if not pc.any(hit).as_py():
        return table
    reps = pc.take(dec.column(_REP), pos)
    reasons = pc.binary_join_element_wise(pa.scalar(reason_prefix), reps.cast(pa.string()), pa.scalar(""))
    return mark_arrow(table, hit, reasons, stage)


def apply_decisions(ds, decisions, stage: str, reason_prefix: str = "near_dup_of:", partitions: int | None = None,
                    broadcast_bytes: int | None = None):
    """Mark the rows named in ``decisions`` (sample_id, ``_dedup_rep``[, ``_chunk``]) dropped;
    row-preserving, and the full rows are never shuffled (a map; see the module docstring)."""
    decisions = decisions.materialize()
    if decisions.count() == 0:
        return ds
    index = decision_index(ds, decisions, partitions, broadcast_bytes)
    return ds.map_batches(_apply_block, fn_args=(index, stage, reason_prefix), batch_format="pyarrow", batch_size=None)


def size_bin(size: int) -> str:
    """Histogram bin of a cluster size: 2, 3, 4 exactly, then powers of two (5-8, 9-16, ...)."""
    if size <= 4:
        return str(size)
    hi = 1 << (int(size) - 1).bit_length()
    return f"{hi // 2 + 1}-{hi}"


def _size_counts(table: pa.Table) -> pa.Table:
    sizes, rows = np.unique(table.column(_SIZE).to_numpy(zero_copy_only=False), return_counts=True)
    return pa.table({_SIZE: pa.array(sizes, pa.int64()), "rows": pa.array(rows, pa.int64())})


def cluster_stats(decisions) -> dict:
    """Clusters, rows dropped and the cluster-size histogram, from decision rows counted per
    size in each block (what reaches the driver: blocks x distinct sizes small rows)."""
    per_size: dict[int, int] = {}
    for row in decisions.map_batches(_size_counts, batch_format="pyarrow", batch_size=None).take_all():
        per_size[int(row[_SIZE])] = per_size.get(int(row[_SIZE]), 0) + int(row["rows"])
    hist: dict[str, int] = {}
    clusters = dropped = largest = 0
    for size, rows in sorted(per_size.items()):
        n = rows // (size - 1)  # each cluster of size s has s-1 decision rows
        clusters += n
        dropped += rows
        largest = max(largest, size)
        hist[size_bin(size)] = hist.get(size_bin(size), 0) + n
    return {"clusters": clusters, "rows_dropped": dropped, "largest_cluster": largest, "cluster_sizes": hist}


def _centre_rows(table: pa.Table) -> pa.Table:
    """Star rows from the centre's side only (node < nbr), keyed by the centre."""
    return table.filter(pc.less(table.column("node"), table.column("nbr")))


def resolve_clusters(ds, edges, stage: str, max_rounds: int, log: Callable[[str], None],
                     partitions: int | None = None) -> tuple[object, dict]:
    """Rows + edges -> (the rows with every non-representative cluster member dropped, stats).
    Stats: clusters, rows_dropped, largest_cluster, cluster_sizes, rounds (component shuffles)."""
    state, rounds = components(edges, max_rounds, log, stage, partitions)
    empty = {"clusters": 0, "rows_dropped": 0, "largest_cluster": 0, "cluster_sizes": {}, "rounds": rounds}
    if state is None:
        return ds, empty
    centres = narrow_input(map_partitions(state, _centre_rows))
    decisions = map_partitions(hash_shuffle(centres, partitions), _component_decisions).materialize()
    stats = {**cluster_stats(decisions), "rounds": rounds}
    if not stats["rows_dropped"]:
        return ds, {**empty, "rounds": rounds}
    return apply_decisions(ds, decisions.select_columns(["sample_id", _REP]), stage, partitions=partitions), stats
