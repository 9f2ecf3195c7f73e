"""Connected components: large-star/small-star (dedup/components.py) against the min-label
propagation it replaced (``min_label_components``, the baseline), same edges, same run.

Part 1, per graph: rounds (each a shuffle and a barrier) and seconds for both, and whether both
give the same components (checked against union-find here too). The baseline needs diameter + 1
rounds, so on long paths it is stopped at ``--old-max-rounds`` and reported as not converged.
Graphs (ids are random hex, as sample_ids are): a path; many small stars (what one LSH bucket
gives); chained stars (buckets sharing a member, as near-dup graphs chain); a random graph at
0.5 edges per node (many components, long thin ones near the critical density).

Part 2: bytes moved by every shuffle (the datasets given to ``Dataset.sort``) per input row, for
``exact_dedup`` and ``minhash_dedup``, with and without a 100 KB binary column in the rows. The
figure must not change with the media.

    .venv/bin/python bench/components.py                 # ~5 min on 2 busy cores (old: ~2 s per 1k nodes per round)
    .venv/bin/python bench/components.py --nodes 1000000 --skip-old   # new algorithm at 1M nodes
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyarrow as pa  # noqa: E402


def union_find(pairs) -> dict[str, str]:
    from dedup.components import union_find_labels

    return union_find_labels(pairs)


def graphs(n: int, path_len: int, seed: int = 0):
    rng = random.Random(seed)

    def ids(k):
        return [f"{rng.getrandbits(128):032x}" for _ in range(k)]

    p = ids(path_len)
    yield f"path of {path_len:,} nodes", [(p[i], p[i + 1]) for i in range(path_len - 1)]
    s = ids(n)
    yield f"stars of 5, {n:,} nodes", [(s[c], s[c + j]) for c in range(0, n - 4, 5) for j in range(1, 5)]
    c = ids(n)
    chained = [(c[c0], c[c0 + j]) for c0 in range(0, n - 4, 5) for j in range(1, 5)]
    chained += [(c[c0 - 1], c[c0]) for c0 in range(5, n - 4, 5 * 20) for _ in [0]]  # 1 in 20 stars links on
    chained += [(c[c0 + 4], c[c0 + 5]) for c0 in range(0, n - 9, 5) if rng.random() < 0.3]
    yield f"chained stars (30% linked), {n:,} nodes", chained
    r = ids(n)
    yield f"random, {n:,} nodes, 0.5 edges/node", [(a, b) for a, b in
                                                   ((rng.choice(r), rng.choice(r)) for _ in range(n // 2)) if a != b]


def edges_ds(pairs):
    import ray.data as rd

    from dedup.components import edge_table

    src = [a for a, b in pairs] + [b for a, b in pairs]
    dst = [b for a, b in pairs] + [a for a, b in pairs]
    table = edge_table(src, dst, [0.0] * len(src))
    return rd.from_arrow(table).repartition(max(1, table.num_rows // 50_000)).materialize()


def labels_of(state, label_col: str | None) -> dict[str, str]:
    """{node: label}: the baseline's label column, or the smaller end of each star row."""
    out: dict[str, str] = {}
    for t in state.iter_batches(batch_format="pyarrow", batch_size=None):
        nodes = t.column("node").to_pylist()
        if label_col:
            out.update(zip(nodes, t.column(label_col).to_pylist()))
            continue
        for a, b in zip(nodes, t.column("nbr").to_pylist()):
            lo = a if a < b else b
            out[a] = min(out.get(a, a), lo)
            out[b] = min(out.get(b, b), lo)
    return out


def part1(args) -> None:
    from dedup.components import components, min_label_components

    print(f"{'graph':42}{'edges':>10}  {'old rounds':>10}{'old s':>8}{'s/round':>8}  {'new rounds':>10}{'new s':>8}"
          f"{'s/round':>8}  same")
    for name, pairs in graphs(args.nodes, args.path):
        ds = edges_ds(pairs)
        ref = union_find(pairs)
        t = time.perf_counter()
        state, new_rounds = components(ds, 200, lambda m: None, "bench")
        new_s = time.perf_counter() - t
        new = labels_of(state, None)
        ok_new = new == ref
        if args.skip_old:
            old_txt, old_s, ran, same = "skipped", float("nan"), 1, "n/a"
        else:
            t = time.perf_counter()
            try:
                old_state, old_rounds = min_label_components(ds, args.old_max_rounds, lambda m: None)
                old_txt, ran = str(old_rounds), old_rounds
                same = str(labels_of(old_state, "label") == new)
            except RuntimeError:
                old_txt, ran, same = f">{args.old_max_rounds}", args.old_max_rounds, "n/a (old not converged)"
            old_s = time.perf_counter() - t
        print(f"{name:42}{len(pairs):>10,}  {old_txt:>10}{old_s:>8.1f}{old_s / ran:>8.1f}  {new_rounds:>10}{new_s:>8.1f}"
              f"{new_s / new_rounds:>8.1f}  {same}"
              f"{'' if ok_new else '  NEW != UNION-FIND'}", flush=True)


def shuffle_rows(n: int, media_bytes: int) -> pa.Table:
    rng = random.Random(1)
    words = [f"w{i}" for i in range(400)]
    base = [" ".join(rng.choice(words) for _ in range(40)) for _ in range(n)]
    for i in range(0, n, 10):  # 10% exact copies, 10% near copies
        base[i + 1] = base[i]
        base[i + 2] = base[i] + " tail"
    return pa.table({
        "sample_id": [f"{rng.getrandbits(128):032x}" for _ in range(n)], "source": ["t"] * n,
        "source_key": [str(i) for i in range(n)], "status": ["kept"] * n, "reason": pa.nulls(n, pa.string()),
        "text": base, "image": pa.array([rng.randbytes(media_bytes) for _ in range(n)], pa.binary()),
        "_chunk": [f"ingest-{i // 500:06d}" for i in range(n)], "_decided_at": pa.nulls(n, pa.string()),
    })


def part2(args) -> None:
    import ray.data as rd
    from ray.data import Dataset

    from stages.dedup import ExactDedupStage, MinHashDedupStage

    recorded: list[int] = []  # bytes of each shuffle's input, in call order
    sort = Dataset.sort

    def rec(self, *a, **k):
        recorded.append(self.size_bytes())
        return sort(self, *a, **k)

    Dataset.sort = rec
    try:
        print(f"\nbytes moved by shuffles per input row ({args.rows:,} rows, 10% exact and 10% near copies)")
        print(f"{'stage':16}{'no media':>12}{'100 KB image':>14}  shuffles: bytes per row of each (with media)")
        for stage in (ExactDedupStage(ExactDedupStage.Params(), "exact_dedup"),
                      MinHashDedupStage(MinHashDedupStage.Params(), "minhash_dedup")):
            per = []
            for media in (0, 100_000):
                recorded.clear()
                ds = rd.from_arrow(shuffle_rows(args.rows, media)).repartition(8).materialize()
                stage.transform(ds, seed=0, log=lambda m: None).materialize()
                per.append((sum(recorded) / args.rows, len(recorded)))
            print(f"{stage.name:16}{per[0][0]:>12.1f}{per[1][0]:>14.1f}  {per[0][1]}: "
                  + ", ".join(f"{b / args.rows:.1f}" for b in recorded), flush=True)
    finally:
        Dataset.sort = sort


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=10_000, help="nodes of the star, chained and random graphs")
    ap.add_argument("--path", type=int, default=10_000, help="nodes of the path")
    ap.add_argument("--old-max-rounds", type=int, default=6, help="stop the baseline after this many rounds")
    ap.add_argument("--skip-old", action="store_true", help="new algorithm only (the baseline is slow at 1M)")
    ap.add_argument("--rows", type=int, default=2000, help="rows of the shuffle-bytes measurement")
    ap.add_argument("--skip-shuffle-bytes", action="store_true")
    args = ap.parse_args()

    from pipeline.runner import ensure_ray

    ensure_ray()
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    part1(args)
    if not args.skip_shuffle_bytes:
        part2(args)


if __name__ == "__main__":
    main()
