"""Near-duplicate clusters on Ray Data: edges -> connected components -> one kept row per cluster.

Shared by ``minhash_dedup`` (text) and ``phash_dedup`` (images, videos). A dedup stage
only has to produce **edges**: rows built by ``edge_table`` / ``star_edges`` (both
directions of each pair, with the node's ``prefer`` value). ``resolve_clusters`` then:

1. finds connected components by min-label propagation, all in Ray Data: the state is
   one row per directed edge (node, nbr, label = label of node). A round emits each row
   plus a message (node=nbr, label) and groups by node; a node's new label is the
   minimum of its own and its messages, and repeated edges (several buckets may give
   the same one) collapse there. The number of labels that changed is summed (one
   aggregate: a count reaches the driver); rounds stop when it is 0 (at most
   ``max_rounds``, else the stage fails loudly). Labels end as the smallest sample_id
   of the component; rounds ~ component diameter + 1, two when edges are stars;
2. ``groupby(label)`` picks the representative (highest ``prefer``, then smallest
   sample_id) and emits (sample_id, rep, cluster size) for the others;
3. applies the decisions without a join (Ray's join needs polars): the rows and the
   decisions, padded to one schema, are grouped by sample_id; each group is one row
   plus at most one decision; decided rows become ``dropped`` with
   ``reason=near_dup_of:<rep>`` and ``_decided_at=<stage>``.

The driver only ever sees counts (changed labels, rows per cluster size). Decisions
depend only on sample ids, the edges and ``prefer``: the same kept set whatever the
block layout.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stages.base import mark_arrow

PREF = "_dedup_prefer"
_REP, _SIZE, _DECISION = "_dedup_rep", "_dedup_size", "_dedup_decision"


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


# -- edges -------------------------------------------------------------------------------
def edge_table(node, nbr, pref) -> pa.Table:
    """Directed edge rows in the state schema label propagation works on (label = node)."""
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


# -- components ----------------------------------------------------------------------------
def _with_messages(table: pa.Table) -> pa.Table:
    """Each state row (node, nbr, label) also sends its label to nbr."""
    msgs = pa.table({"node": table.column("nbr"), "nbr": table.column("nbr"), "label": table.column("label"),
                     PREF: pa.array([0.0] * table.num_rows, pa.float64()),
                     "msg": pa.array([True] * table.num_rows, pa.bool_()),
                     "changed": pa.array([0] * table.num_rows, pa.int64())})
    state = table.set_column(table.column_names.index("msg"), "msg", pa.array([False] * table.num_rows, pa.bool_()))
    return pa.concat_tables([state, msgs.select(state.column_names)])


def _propagate(group: pa.Table) -> pa.Table:
    """One node: new label = min(own label, neighbours' labels); keep its edge rows only."""
    new = min(group.column("label").to_pylist())
    is_msg = group.column("msg").to_numpy(zero_copy_only=False)
    state = group.filter(pa.array(~is_msg))
    _, first = np.unique(np.array(state.column("nbr").to_pylist(), dtype=object), return_index=True)
    if len(first) < state.num_rows:  # one row per distinct (node, nbr): repeated edges are identical
        state = state.take(pa.array(np.sort(first)))
    old = state.column("label")[0].as_py()
    changed = [0] * state.num_rows
    if new != old:
        changed[0] = 1  # one count per node
    state = state.set_column(state.column_names.index("label"), "label", pa.array([new] * state.num_rows, pa.string()))
    return state.set_column(state.column_names.index("changed"), "changed", pa.array(changed, pa.int64()))


def _component_decisions(group: pa.Table) -> pa.Table:
    """One component (all state rows with one label): the best node stays, the others point at it."""
    nodes: dict[str, float] = {}
    for n, p in zip(group.column("node").to_pylist(), group.column(PREF).to_pylist()):
        nodes[n] = p
    ids = sorted(nodes)
    order = representative_order(ids, np.array([nodes[i] for i in ids], dtype=np.float64))
    rep = ids[order[0]]
    others = [i for i in ids if i != rep]
    return pa.table({"sample_id": pa.array(others, pa.string()), _REP: pa.array([rep] * len(others), pa.string()),
                     _SIZE: pa.array([len(ids)] * len(others), pa.int64())})


def components(edges, max_rounds: int, log: Callable[[str], None], name: str, partitions: int | None = None):
    """Edges -> materialised state rows whose ``label`` is the smallest sample_id of the
    node's component, or None when there are no edges. ``partitions``: shuffle partitions
    of each groupby (None: Ray Data's default)."""
    from ray.data.aggregate import Count, Sum

    state = edges
    for rnd in range(1, max_rounds + 1):
        state = (state.map_batches(_with_messages, batch_format="pyarrow", batch_size=None)
                 .groupby("node", num_partitions=partitions).map_groups(_propagate, batch_format="pyarrow").materialize())
        if state.count() == 0:
            return None
        agg = state.aggregate(Sum("changed"), Count())
        changed = agg["sum(changed)"] or 0
        log(f"{name}: label propagation round {rnd}: {changed} labels changed ({agg['count()']} directed edges)")
        if changed == 0:
            return state
    raise RuntimeError(f"{name}: components did not converge in {max_rounds} rounds")


# -- applying decisions --------------------------------------------------------------------
def _tag_rows(table: pa.Table) -> pa.Table:
    n = table.num_rows
    return (table.append_column(_REP, pa.nulls(n, pa.string()))
            .append_column(_DECISION, pa.array([False] * n, pa.bool_())))


def _pad_decisions(dec: pa.Table, schema: pa.Schema) -> pa.Table:
    n = dec.num_rows
    cols = {f.name: (dec.column("sample_id") if f.name == "sample_id" else pa.nulls(n, f.type)) for f in schema}
    cols[_REP] = dec.column(_REP).cast(pa.string())
    cols[_DECISION] = pa.array([True] * n, pa.bool_())
    return pa.table(cols)


def _apply_near(table: pa.Table, stage: str, reason_prefix: str) -> pa.Table:
    """One sample_id: its row, and the decision row when it is a near duplicate."""
    is_dec = table.column(_DECISION).to_numpy(zero_copy_only=False)
    rep = None
    if is_dec.any():
        rep = table.filter(pa.array(is_dec)).column(_REP)[0].as_py()
    table = table.filter(pa.array(~is_dec)).drop_columns([_DECISION])
    n = table.num_rows
    table = table.set_column(table.column_names.index(_REP), _REP, pa.array([rep] * n, pa.string()))
    reps = table.column(_REP)
    dropped = pc.fill_null(pc.is_valid(reps), False).to_numpy(zero_copy_only=False)
    reasons = [f"{reason_prefix}{r}" if r is not None else None for r in reps.to_pylist()]
    return mark_arrow(table, dropped, reasons, stage).drop_columns([_REP])


def apply_decisions(ds, decisions, stage: str, reason_prefix: str = "near_dup_of:", partitions: int | None = None):
    """Mark the rows named in ``decisions`` (sample_id, rep) dropped; row-preserving."""
    schema = ds.schema().base_schema
    rows = ds.map_batches(_tag_rows, batch_format="pyarrow", batch_size=None)
    decs = decisions.map_batches(_pad_decisions, fn_args=(schema,), batch_format="pyarrow", batch_size=None)
    return (rows.union(decs).groupby("sample_id", num_partitions=partitions)
            .map_groups(_apply_near, fn_args=(stage, reason_prefix), batch_format="pyarrow"))


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


def resolve_clusters(ds, edges, stage: str, max_rounds: int, log: Callable[[str], None],
                     partitions: int | None = None) -> tuple[object, dict]:
    """Rows + edges -> (the rows with every non-representative cluster member dropped, stats)."""
    state = components(edges, max_rounds, log, stage, partitions)
    empty = {"clusters": 0, "rows_dropped": 0, "largest_cluster": 0, "cluster_sizes": {}}
    if state is None:
        return ds, empty
    decisions = state.groupby("label", num_partitions=partitions).map_groups(_component_decisions, batch_format="pyarrow").materialize()
    stats = cluster_stats(decisions)
    if not stats["rows_dropped"]:
        return ds, empty
    return apply_decisions(ds, decisions, stage, partitions=partitions), stats
