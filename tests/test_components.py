"""Connected components by large-star/small-star, and decisions applied without moving rows.

The spec: labels are the smallest sample_id of each component (checked against union-find);
rounds depend on the graph only (not on partitions or blocks) and grow with log of the size, not
with the diameter; a dedup stage's shuffles see narrow rows only, whatever the width of the
other columns; decisions give the same rows whether they are broadcast or split by chunk."""
from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pytest

from dedup.components import (_REP, PART, _component_decisions, _star_step, _state_rows, edge_table,
                              representative_order, union_find_labels)


def union_find(pairs, nodes) -> dict[str, str]:
    """The plain in-memory answer (smallest member of each component) the rounds must reach."""
    labels = union_find_labels(pairs, nodes)
    return {v: labels[v] for v in nodes}


def as_edges(pairs, prefs) -> pa.Table:
    src = [a for a, b in pairs] + [b for a, b in pairs]
    dst = [b for a, b in pairs] + [a for a, b in pairs]
    return edge_table(src, dst, [prefs[s] for s in src])


def graphs():
    rng = random.Random(5)
    ids = [f"{rng.getrandbits(48):012x}" for _ in range(600)]
    yield "path, ids in order", [(f"n{i:04d}", f"n{i + 1:04d}") for i in range(299)]
    yield "path, random ids", [(ids[i], ids[i + 1]) for i in range(299)]
    yield "stars", [(ids[c], ids[c + j]) for c in range(0, 600, 6) for j in range(1, 6)]
    yield "random", [p for p in ((rng.choice(ids), rng.choice(ids)) for _ in range(400)) if p[0] != p[1]]
    yield "chained stars", ([(ids[5 * s], ids[5 * s + j]) for s in range(100) for j in range(1, 5)]
                            + [(ids[5 * s - 1], ids[5 * s]) for s in range(1, 100)])


def local_components(table: pa.Table, partitions: int, max_rounds: int = 64):
    """The Ray rounds with the shuffle done here: rows split by their hash range."""
    state, quiet = _state_rows(table), 0
    for rnd in range(1, max_rounds + 1):
        part = state.column(PART).to_numpy() // ((1 << 63) // partitions) if partitions > 1 else np.zeros(state.num_rows)
        part = np.minimum(part, partitions - 1)
        outs = [_star_step(state.filter(pa.array(part == k)), rnd % 2 == 1) for k in range(partitions)]
        state = pa.concat_tables(outs)
        quiet = quiet + 1 if sum(t.column("changed").to_numpy().sum() for t in outs) == 0 else 0
        if quiet == 2:
            return state, rnd
    raise AssertionError("no convergence")


def labels(state: pa.Table) -> dict[str, str]:
    out: dict[str, str] = {}
    for a, b in zip(state.column("node").to_pylist(), state.column("nbr").to_pylist()):
        out[a] = min(out.get(a, a), b)
        out[b] = min(out.get(b, b), a)
    return out


@pytest.mark.parametrize("name,pairs", list(graphs()), ids=[g[0] for g in graphs()])
def test_labels_are_the_smallest_id_and_rounds_do_not_depend_on_partitions(name, pairs):
    nodes = {x for p in pairs for x in p}
    ref = union_find(pairs, nodes)
    table = as_edges(pairs, dict.fromkeys(nodes, 0.0))
    rounds = set()
    for partitions in (1, 3, 8):
        state, rnd = local_components(table, partitions)
        assert labels(state) == ref
        # Every non-centre node has exactly one edge, to its centre: the state is stars.
        lab = labels(state)
        assert state.num_rows == 2 * sum(1 for v in lab if lab[v] != v)
        rounds.add(rnd)
    assert len(rounds) == 1, rounds


def test_rounds_grow_with_log_of_a_path_not_its_length():
    rounds = {}
    for n in (64, 1024):
        pairs = [(f"n{i:05d}", f"n{i + 1:05d}") for i in range(n - 1)]
        _, rounds[n] = local_components(as_edges(pairs, {f"n{i:05d}": 0.0 for i in range(n)}), 2)
    # min-label propagation needed n rounds here (the smallest id sits at one end)
    assert rounds[64] <= 4 * 6 and rounds[1024] <= 4 * 10, rounds
    assert rounds[1024] - rounds[64] <= 2 * 4 + 2, rounds


def test_decisions_keep_the_highest_prefer_then_the_smallest_id():
    pairs = [("b", "a"), ("c", "b"), ("d", "c"), ("x", "y")]
    prefs = {"a": 0.1, "b": 0.9, "c": 0.9, "d": -np.inf, "x": 0.0, "y": 0.0}
    state, _ = local_components(as_edges(pairs, prefs), 1)
    centres = state.filter(pa.compute.less(state.column("node"), state.column("nbr")))
    dec = _component_decisions(centres)
    got = dict(zip(dec.column("sample_id").to_pylist(), dec.column(_REP).to_pylist()))
    assert got == {"a": "b", "c": "b", "d": "b", "y": "x"}
    assert sorted(dec.column("_dedup_size").to_pylist()) == [2, 4, 4, 4]
    order = representative_order(["a", "b", "c", "d"], np.array([0.1, 0.9, 0.9, -np.inf]))
    assert order[0] == 1  # the shared ranking rule


# -- through Ray ------------------------------------------------------------------------------
def test_components_through_ray_match_union_find_whatever_the_partitions(ray_local):
    import ray.data as rd

    from dedup.components import components

    name, pairs = list(graphs())[4]
    nodes = {x for p in pairs for x in p}
    ref = union_find(pairs, nodes)
    table = as_edges(pairs, dict.fromkeys(nodes, 0.0))
    seen = set()
    for partitions, blocks in ((None, 1), (4, 9)):
        state, rounds = components(rd.from_arrow(table).repartition(blocks), 64, print, "t", partitions)
        assert labels(pa.Table.from_pandas(state.to_pandas())) == ref
        seen.add(rounds)
    assert len(seen) == 1


def _rows(n: int, media_bytes: int) -> pa.Table:
    rng = random.Random(1)
    words = "the a of image caption photo dog cat sits runs on under blue red green".split()
    base = [" ".join(rng.choice(words) for _ in range(30)) for _ in range(n // 2)]
    texts = base + [t.upper() for t in base[: n // 4]] + [t + " extra" for t in base[: n - n // 2 - n // 4]]
    return pa.table({
        "sample_id": [f"s{i:04d}" for i in range(n)], "source": ["t"] * n, "source_key": [str(i) for i in range(n)],
        "status": ["kept"] * n, "reason": pa.nulls(n, pa.string()), "text": texts,
        "image": pa.array([bytes([i % 251]) * media_bytes for i in range(n)], pa.binary()),
        "_chunk": [f"ingest-{i // 10:06d}" for i in range(n)], "_decided_at": pa.nulls(n, pa.string()),
    })


@pytest.fixture
def shuffle_inputs(monkeypatch):
    """The columns of every dataset a sort or a keyed group-by receives (both shuffle rows;
    ``groupby(None)`` is a global aggregate, as ``Dataset.sum`` uses)."""
    from ray.data import Dataset

    seen: list[tuple[str, set]] = []
    sort, groupby = Dataset.sort, Dataset.groupby

    def rec_sort(self, *a, **k):
        seen.append(("sort", set(self.columns())))
        return sort(self, *a, **k)

    def rec_groupby(self, key, *a, **k):
        if key is not None:
            seen.append(("groupby", set(self.columns())))
        return groupby(self, key, *a, **k)

    monkeypatch.setattr(Dataset, "sort", rec_sort)
    monkeypatch.setattr(Dataset, "groupby", rec_groupby)
    return seen


NARROW = {"sample_id", "_chunk", "_dedup_key", "_dedup_prefer", "_dedup_prefer_nbr", "_dedup_part", "_dedup_rep",
          "band", "bhash", "node", "nbr", "changed"}


@pytest.mark.parametrize("broadcast", [True, False])
def test_dedup_shuffles_move_narrow_rows_only(ray_local, shuffle_inputs, broadcast, monkeypatch):
    import ray.data as rd

    import dedup.components as comp
    from stages.dedup import ExactDedupStage, MinHashDedupStage

    if not broadcast:  # decisions split by chunk: the path large runs take
        monkeypatch.setattr(comp, "BROADCAST_BYTES", 0)
        monkeypatch.setattr(comp, "DECISION_PART_BYTES", 64)
    table = _rows(80, 20_000)
    ds = rd.from_arrow(table).repartition(6)
    ex = ExactDedupStage(ExactDedupStage.Params(), "exact").transform(ds, seed=0, log=print).to_pandas()
    kept = rd.from_pandas(ex[ex["status"] == "kept"][table.column_names]).repartition(4)
    mh = MinHashDedupStage(MinHashDedupStage.Params(threshold=0.7), "near").transform(kept, seed=0, log=print).to_pandas()
    assert len(shuffle_inputs) >= 5  # exact: keys; near: bands, component rounds, centres (+ chunks, ranges)
    for kind, cols in shuffle_inputs:
        assert cols <= NARROW, cols - NARROW
    # The decisions: 20 upper-case copies are exact duplicates, 20 "+ extra" copies near ones.
    assert (ex["status"] == "dropped").sum() == 20
    assert set(ex.loc[ex["status"] == "dropped", "reason"].str.slice(0, 13)) == {"exact_dup_of:"}
    dropped = mh[mh["status"] == "dropped"]
    assert len(dropped) >= 15 and dropped["reason"].str.startswith("near_dup_of:").all()
    assert len(mh) == len(kept.to_pandas()) and all(len(b) == 20_000 for b in mh["image"])


def test_chunked_decisions_equal_broadcast_ones(ray_local):
    import ray.data as rd

    from dedup.components import apply_decisions, decision_index

    table = _rows(200, 10)
    ds = rd.from_arrow(table).repartition(7)
    ids = table.column("sample_id").to_pylist()
    dec = pa.table({"sample_id": ids[1::3], _REP: ids[0::3][: len(ids[1::3])]})
    outs = []
    for limit in (None, 0):
        out = apply_decisions(ds, rd.from_arrow(dec).repartition(3), "st", broadcast_bytes=limit, partitions=4)
        outs.append(out.to_pandas().sort_values("sample_id").reset_index(drop=True))
    assert outs[0].equals(outs[1])
    d = outs[0][outs[0]["status"] == "dropped"]
    assert dict(zip(d["sample_id"], d["reason"])) == {s: f"near_dup_of:{r}" for s, r in zip(dec["sample_id"].to_pylist(),
                                                                                          dec[_REP].to_pylist())}
    index = decision_index(ds, rd.from_arrow(dec).materialize(), partitions=4, broadcast_bytes=0)
    spans = sorted((lo, hi) for lo, hi, _ in index)
    assert len(spans) > 1 and all(a[1] < b[0] for a, b in zip(spans, spans[1:]))  # disjoint chunk ranges
