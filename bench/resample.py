"""ngram_resample's decision step at 100k and 1M caption rows, against a one-process reference.

What it builds
    Seeded synthetic captions: 6-19 words drawn from a 20,000-word Zipf vocabulary, and in
    30% of the rows one of 8 boilerplate openings ("a close up photo of", "stock photo of" ...):
    the controlled duplicate n-grams the stage is there to down-weight. Rows go to Ray as
    blocks of ``--block-rows`` (default 2,000: many small blocks, as a global stage sees them
    after upstream stages).

What it runs, in the same invocation
    (a) the stage (``NgramResampleStage.transform`` on the session's local Ray, all its cores):
        the decision (exact corpus n-gram counts, weights, the distributed K-th key) and the
        mark pass over the rows, timed apart, at each ``--rows`` size;
    (b) the baseline, on the first ``--subset`` rows: one Python process, no Ray, the same
        definition written plainly (``collections.Counter`` of distinct word 3-gram tuples per
        document = document frequencies, numpy weights, the same seeded keys, the K smallest
        kept); the stage is run on that subset too and the kept sets compared row by row.

What it prints
    rows/s and rows/s per core (the stage's wall time over Ray's CPUs; the baseline uses one
    core), the decision/mark split, whether the kept sets are identical, and the Ray worker
    processes sampled every 0.2 s during each run (peak; Ray's own agents and actors apart
    from the task workers, whose expected number is the CPU count). The machine's load
    average is printed before and after: other jobs on a shared machine slow both sides.
    Nothing is asserted.

    .venv/bin/python bench/resample.py                      # 100k and 1M rows, subset 100k
    .venv/bin/python bench/resample.py --rows 100000 --subset 20000
"""
from __future__ import annotations

import argparse
import collections
import math
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TEMPLATES = ["a close up photo of", "high quality image of", "in the style of", "on a white background",
             "this image shows", "a picture of", "stock photo of", "digital art of"]
SYSTEM = ("ray::DashboardAgent", "ray::RuntimeEnvAgent", "ray::_StatsActor", "ray::_AutoscalingCoordinatorActor")


def captions(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    vocab = np.array([f"w{i}" for i in range(20000)])
    p = 1.0 / np.arange(1, len(vocab) + 1) ** 1.05
    words = vocab[rng.choice(len(vocab), int(n * 13), p=p / p.sum())]
    lens = rng.integers(6, 20, n)
    ends = np.cumsum(lens)
    words = words if len(words) >= ends[-1] else np.concatenate([words, words[: ends[-1] - len(words)]])
    tmpl, plant = rng.integers(0, len(TEMPLATES), n), rng.random(n) < 0.3
    return [(TEMPLATES[tmpl[i]] + " " if plant[i] else "") + " ".join(words[e - lens[i]:e]) for i, e in enumerate(ends)]


def rows_table(texts: list[str]) -> pa.Table:
    n = len(texts)
    return pa.table({"sample_id": [f"c{i:08d}" for i in range(n)], "source": ["captions"] * n,
                     "status": ["kept"] * n, "reason": pa.nulls(n, pa.string()), "text": texts,
                     "_decided_at": pa.nulls(n, pa.string())})


class WorkerSampler:
    """Peak Ray processes under this one (the local cluster's), every 0.2 s."""

    def __init__(self) -> None:
        self.peak_total, self.peak_tasks, self.peak_titles = 0, 0, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.is_set():
            titles: collections.Counter = collections.Counter()
            for p in me.children(recursive=True):
                try:
                    cl = p.cmdline()
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue
                if cl and cl[0].startswith("ray::"):
                    titles[cl[0].split("(")[0].split(".")[0]] += 1
                elif any("default_worker.py" in a for a in cl):
                    titles["(starting)"] += 1
            tasks = sum(n for t, n in titles.items() if t not in SYSTEM)
            if sum(titles.values()) > self.peak_total:
                self.peak_total, self.peak_titles = sum(titles.values()), dict(titles)
            self.peak_tasks = max(self.peak_tasks, tasks)
            self._stop.wait(0.2)


def run_stage(table: pa.Table, block_rows: int, seed: int) -> dict:
    import pyarrow.compute as pc
    import ray
    import ray.data as rd

    from stages.resample import NgramResampleStage

    ds = rd.from_arrow([table.slice(i, block_rows) for i in range(0, table.num_rows, block_rows)]).materialize()
    stage = NgramResampleStage(NgramResampleStage.Params(column="text", n=3, keep_fraction=0.9), "resample")
    with WorkerSampler() as workers:
        t0 = time.perf_counter()
        marked = stage.transform(ds, seed=seed, log=lambda _: None)
        t1 = time.perf_counter()
        kept = marked.map_batches(
            lambda t: t.filter(pc.equal(t.column("status"), "kept")).select(["sample_id"]),
            batch_format="pyarrow", batch_size=None).to_arrow_refs()
        kept_ids = set(pa.concat_tables(ray.get(kept)).column("sample_id").to_pylist()) if kept else set()
        t2 = time.perf_counter()
    return {"decide_s": t1 - t0, "mark_s": t2 - t1, "kept": kept_ids, "stats": stage.run_stats, "workers": workers,
            "blocks": ds.num_blocks()}


def reference(texts: list[str], ids: list[str], seed: int, n: int = 3, keep_fraction: float = 0.9,
              alpha: float = 1.0, share: float = 0.001, salt: str = "resample") -> tuple[set[str], collections.Counter]:
    """The stage's definition, plainly: document frequencies by Counter, weights, seeded keys, K smallest."""
    from resample.keys import es_keys, row_hashes
    from resample.ngrams import tokens

    grams_of = []
    for t in texts:
        tok = tokens(t)
        grams_of.append(set(zip(*(tok[k:] for k in range(n)))) if len(tok) >= n else ({tuple(tok)} if tok else set()))
    df = collections.Counter(g for gs in grams_of for g in gs)
    pool = [i for i, gs in enumerate(grams_of) if gs]
    tau = max(1.0, share * len(pool))
    w = np.array([math.exp(-sum(alpha * math.log(df[g] / tau) for g in grams_of[i] if df[g] > tau) / len(grams_of[i]))
                  for i in pool])
    keys = es_keys(row_hashes([ids[i] for i in pool], seed, salt), w)
    k = int(math.floor(keep_fraction * len(pool) + 0.5))
    order = np.argsort(keys, kind="stable")[:k]
    return {ids[pool[j]] for j in order}, df


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", default="100000,1000000", help="comma-separated corpus sizes for the stage")
    ap.add_argument("--subset", type=int, default=100_000, help="rows the one-process reference runs on")
    ap.add_argument("--block-rows", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    sizes = [int(x) for x in args.rows.split(",") if x]

    import ray

    from pipeline.runner import ensure_ray

    print(f"machine: {os.cpu_count()} cores; load average before: {os.getloadavg()}")
    t = time.perf_counter()
    texts = captions(max(sizes + [args.subset]), args.seed)
    print(f"corpus: {len(texts)} captions built in {time.perf_counter() - t:.1f} s")
    ensure_ray()
    cpus = int(ray.cluster_resources().get("CPU", 1))

    # (b) the baseline and the stage on the same subset: same kept set?
    sub = texts[:args.subset]
    ids = [f"c{i:08d}" for i in range(len(sub))]
    t = time.perf_counter()
    ref_kept, df = reference(sub, ids, args.seed)
    ref_s = time.perf_counter() - t
    got = run_stage(rows_table(sub), args.block_rows, args.seed)
    top = got["stats"]["top_ngrams"][:3]
    same_df = all(df[tuple(x["ngram"].split())] == x["docs"] for x in got["stats"]["top_ngrams"])
    print(f"\nsubset of {len(sub)} rows")
    print(f"  baseline (1 process, Counter + numpy): {ref_s:6.1f} s  {len(sub) / ref_s:8.0f} rows/s on 1 core")
    print(f"  stage  decision {got['decide_s']:6.1f} s + mark {got['mark_s']:5.1f} s  "
          f"{len(sub) / (got['decide_s'] + got['mark_s']):8.0f} rows/s on {cpus} cores, "
          f"{len(sub) / (got['decide_s'] + got['mark_s']) / cpus:8.0f} per core")
    print(f"  same kept set: {got['kept'] == ref_kept} ({len(got['kept'])} stage, {len(ref_kept)} baseline, "
          f"{len(got['kept'] ^ ref_kept)} differ); top n-gram document frequencies equal: {same_df} "
          f"(e.g. {[(x['ngram'], x['docs']) for x in top]})")

    for n in sizes:
        r = got if n == len(sub) else run_stage(rows_table(texts[:n]), args.block_rows, args.seed)
        total = r["decide_s"] + r["mark_s"]
        w = r["workers"]
        print(f"\nstage on {n} rows ({r['blocks']} input blocks): decision {r['decide_s']:.1f} s, mark {r['mark_s']:.1f} s; "
              f"{n / total:.0f} rows/s on {cpus} cores = {n / total / cpus:.0f} rows/s per core "
              f"(decision alone {n / r['decide_s'] / cpus:.0f} per core); baseline {len(sub) / ref_s:.0f} rows/s on 1 core")
        print(f"  kept {len(r['kept'])}/{n}; distinct 3-grams {r['stats']['before']['distinct_ngrams']}, "
              f"over-used {r['stats']['overused_ngrams']}")
        print(f"  Ray worker processes: peak task workers {w.peak_tasks} (expected {cpus}), "
              f"peak all Ray processes {w.peak_total}: {w.peak_titles}")
    print(f"\nload average after: {os.getloadavg()}")
    ray.shutdown()


if __name__ == "__main__":
    main()
