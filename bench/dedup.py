"""Near-duplicate removal, measured: our minhash_dedup stage against datasketch and DataTrove.

What it builds
    A corpus of real prose nobody here wrote: the paragraphs (>= 30 words) of the
    stdlib's ``pydoc_data.topics`` and of the long descriptions of the installed
    distributions (``importlib.metadata``; this project's own excluded), made
    unique after normalisation. A share of them ("families") get 1-3 planted
    variants by known edits (adjacent word swaps, insertions of corpus words,
    deletions, truncation of the tail, or a mix), each edited step by step until
    its true Jaccard to the original falls below a target drawn uniformly from
    [0.5, 1.0). Jaccard is always over the same shingles the stage uses
    (``dedup.minhash.shingles``: lowercased, whitespace-collapsed 5-word n-grams).

Ground truth
    Exact, all pairs: the document x shingle incidence matrix times its
    transpose gives every pair's intersection, so every pair's Jaccard is known
    (planted and natural near-duplicates alike; no sampling).

Quality (printed with these definitions)
    recall    = share of true pairs (J >= 0.8) the method resolved: NOT both
                documents of the pair are kept;
    precision = share of dropped documents that have at least one true partner
                (J >= 0.8) anywhere in the corpus;
    precision (kept partner), stricter: the partner is also in the kept output,
                so the dropped text is still represented by a near-copy.
    Methods on the same corpus: (1) our exact_dedup -> minhash_dedup through the
    real runner (``configs/dedup_text.yaml`` on a Parquet of id,text, in a child
    process with its own local Ray), as shipped and with candidate verification
    (``verify=true candidate_threshold=0.6``: 18 x 7 banding, a candidate pair is
    kept only if its exact Jaccard >= 0.8); (2) ``datasketch.MinHashLSH`` (threshold
    0.8, 128 perms: the same 9 x 13 banding), used the standard streaming way:
    a document is dropped when its query hits an already kept one, else
    inserted; (3) DataTrove's 4-step MinHash pipeline (signatures, buckets,
    cluster, filter) with its ``LocalPipelineExecutor``, once with its default
    MinhashConfig (14 buckets x 8 hashes) and once with our 9 x 13 banding.
    DataTrove shingles its own way (punctuation stripped, spaCy words, xxhash),
    so it is scored against our ground truth and, beside it, against its own.

Speed
    Signatures per CPU second on ONE core (the process pinned to one CPU and
    single-threaded, so its CPU time is one core's work even when other jobs
    share the machine; per wall second printed beside it), from raw text to a
    128-permutation signature, shingling included, on the same documents: ours
    (``dedup.minhash.signatures`` in batches of 1024, the stage's batch),
    datasketch's per-document ``MinHash(...)`` + ``update`` loop, datasketch's
    ``MinHash.bulk``, and DataTrove's signature step (``get_shingles`` +
    ``get_signature`` of ``MinhashDedupSignature``, 16 x 8 = 128 hashes).

Memory
    The runner (verified config) is run at 1x and at ``--scale`` x (default 10x) the corpus; the
    larger corpus is made of copies whose words go through a different random
    bijection of the vocabulary per copy (every Jaccard inside a copy is kept
    exactly, copies share no shingles), and is scored against its own exact
    ground truth too. Peak RSS of the driver (VmHWM of the child process that
    runs the pipeline) and, sampled every 0.2 s with psutil, the largest Ray
    worker, the sum of all Ray workers (RSS includes the shared-memory object
    store pages a worker touched) and Ray's own processes; and the CPU seconds
    of the driver and of the workers (robust to other jobs on the machine).

Nothing is asserted on time; each target is printed as met or not.

Wall times depend on what else runs on the machine: the load average is printed with each.

    python bench/dedup.py [--quick] [--scale K] [--no-datatrove] [--json PATH]
    python bench/dedup.py --docs 1000000     # only ours against DataTrove at about N documents
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dedup.minhash import collision_probability, normalize, optimal_bands, shingles, signatures  # noqa: E402

CONFIG = ROOT / "configs" / "dedup_text.yaml"
THRESHOLD = 0.8
NUM_PERM, SEED, NGRAM = 128, 1, 5
EDITS = ("swap", "insert", "delete", "truncate", "mixed")
BINS = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0)


# -- corpus ------------------------------------------------------------------------------------
@dataclass
class Doc:
    id: str
    text: str
    family: int          # index of the original in the base list; -1 for a base without variants
    role: str            # "base" or "variant"
    edit: str = ""       # the edit that made a variant
    planted_j: float = 1.0  # a variant's exact Jaccard to its base


def _paragraphs(text: str, min_words: int) -> list[str]:
    out = []
    for p in re.split(r"\n\s*\n", text or ""):
        p = " ".join(p.split())
        if len(p.split()) >= min_words:
            out.append(p)
    return out


def real_paragraphs(min_words: int = 30) -> tuple[list[str], dict]:
    """Unique (after normalisation) paragraphs of pydoc topics and installed packages' descriptions."""
    import importlib.metadata as md
    from pydoc_data.topics import topics

    found = [(f"pydoc:{k}", p) for k in sorted(topics) for p in _paragraphs(topics[k], min_words)]
    seen_names = set()
    dists = sorted(md.distributions(), key=lambda d: (d.metadata.get("Name") or "").lower())
    for d in dists:
        name = (d.metadata.get("Name") or "").lower()
        if not name or name in seen_names or name == "sailcurate":
            continue
        seen_names.add(name)
        desc = d.metadata.get_payload() or d.metadata.get("Description") or ""
        found += [(f"pkg:{name}", p) for p in _paragraphs(desc, min_words)]
    out, norms, by_source = [], set(), {"pydoc": 0, "pkg": 0}
    for origin, p in found:
        n = normalize(p)
        if n not in norms:
            norms.add(n)
            out.append(p)
            by_source[origin.split(":")[0]] += 1
    return out, {"paragraphs": len(out), "from_pydoc": by_source["pydoc"],
                 "from_packages": by_source["pkg"], "packages": len(seen_names)}


def jaccard_sets(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if (a or b) else 1.0


def _edit_step(words: list[str], kind: str, rng: random.Random, vocab: list[str]) -> list[str]:
    words = list(words)
    if kind == "mixed":
        kind = rng.choice(("swap", "insert", "delete"))
    if kind == "swap" and len(words) > 2:
        i = rng.randrange(len(words) - 1)
        words[i], words[i + 1] = words[i + 1], words[i]
    elif kind == "insert":
        words.insert(rng.randrange(len(words) + 1), rng.choice(vocab))
    elif kind == "delete" and len(words) > NGRAM + 1:
        del words[rng.randrange(len(words))]
    elif kind == "truncate" and len(words) > NGRAM + 1:
        words = words[:-1]
    return words


def plant_variant(base: str, kind: str, target: float, rng: random.Random, vocab: list[str]) -> tuple[str, float] | None:
    """Edit ``base`` one step at a time until its Jaccard to ``base`` is <= target (< 1)."""
    ref = set(shingles(base, NGRAM))
    words = base.split(" ")
    for _ in range(2000):
        words = _edit_step(words, kind, rng, vocab)
        text = " ".join(words)
        j = jaccard_sets(set(shingles(text, NGRAM)), ref)
        if j <= target:
            return text, j
    return None


def build_corpus(bases: list[str], families: int, seed: int, lo: float = 0.5, hi: float = 1.0) -> list[Doc]:
    """The bases plus 1-3 planted variants for ``families`` of them, shuffled, ids d000000..."""
    rng = random.Random(seed)
    vocab = [w for b in bases for w in b.split(" ")]
    eligible = [i for i, b in enumerate(bases) if len(b.split()) >= 40]
    chosen = set(rng.sample(eligible, min(families, len(eligible))))
    norms = {normalize(b) for b in bases}
    rows: list[Doc] = []
    for i, b in enumerate(bases):
        rows.append(Doc("", b, i if i in chosen else -1, "base"))
        if i not in chosen:
            continue
        for _ in range(rng.randint(1, 3)):
            kind = rng.choice(EDITS)
            made = plant_variant(b, kind, rng.uniform(lo, hi), rng, vocab)
            if made is None or normalize(made[0]) in norms:
                continue  # no exact copies: exact_dedup would take them first
            norms.add(normalize(made[0]))
            rows.append(Doc("", made[0], i, "variant", kind, round(made[1], 6)))
    rng.shuffle(rows)
    for k, d in enumerate(rows):
        d.id = f"d{k:06d}"
    return rows


def scale_corpus(docs: list[Doc], copies: int, seed: int) -> list[Doc]:
    """``copies`` versions of the corpus: copy 0 as is, copy k with every (normalised) word mapped by
    a random vocabulary bijection of its own. Jaccard inside a copy is unchanged; copies share
    (almost surely) no shingle."""
    out = list(docs)
    vocab = sorted({w for d in docs for w in normalize(d.text).split(" ")})
    for k in range(1, copies):
        rng = random.Random(seed * 1000 + k)
        perm = list(vocab)
        rng.shuffle(perm)
        mapping = dict(zip(vocab, perm))
        for d in docs:
            text = " ".join(mapping[w] for w in normalize(d.text).split(" "))
            out.append(Doc(f"{d.id}~{k}", text, d.family, d.role, d.edit, d.planted_j))
    return out


# -- ground truth ------------------------------------------------------------------------------
def all_pairs(shingle_sets: list[set], min_j: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair (i < j) with exact Jaccard >= min_j, from the sparse incidence product."""
    from scipy import sparse

    index: dict = {}
    indptr, cols = [0], []
    for s in shingle_sets:
        cols.extend(index.setdefault(x, len(index)) for x in s)
        indptr.append(len(cols))
    x = sparse.csr_matrix((np.ones(len(cols), dtype=np.int32), np.array(cols, dtype=np.int64), np.array(indptr)),
                          shape=(len(shingle_sets), max(1, len(index))))
    inter = sparse.triu(x @ x.T, k=1).tocoo()
    sizes = np.diff(np.array(indptr))
    j = inter.data / (sizes[inter.row] + sizes[inter.col] - inter.data)
    keep = j >= min_j
    return inter.row[keep], inter.col[keep], j[keep]


@dataclass
class Truth:
    ids: list[str]
    pairs: list[tuple[str, str, float]]          # every pair with J >= 0.5
    planted: list[tuple[str, str, float]]        # (base, variant, J) as planted
    single: list[tuple[str, str, float]]         # the planted pairs of families with one variant

    def partners(self, threshold: float) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for a, b, j in self.pairs:
            if j >= threshold:
                out.setdefault(a, set()).add(b)
                out.setdefault(b, set()).add(a)
        return out


def ground_truth(docs: list[Doc], shingle_sets: list[set] | None = None) -> Truth:
    sets = shingle_sets if shingle_sets is not None else [set(shingles(d.text, NGRAM)) for d in docs]
    r, c, j = all_pairs(sets, 0.5)
    ids = [d.id for d in docs]
    pairs = [(ids[a], ids[b], float(v)) for a, b, v in zip(r, c, j)]
    base_of = {}
    for d in docs:
        if d.role == "base" and d.family >= 0:
            base_of[(d.family, d.id.split("~")[1] if "~" in d.id else "")] = d.id
    planted = []
    for d in docs:
        if d.role == "variant":
            base = base_of[(d.family, d.id.split("~")[1] if "~" in d.id else "")]
            planted.append((base, d.id, d.planted_j))
    per_base: dict[str, int] = {}
    for base, _, _ in planted:
        per_base[base] = per_base.get(base, 0) + 1
    return Truth(ids, pairs, planted, [t for t in planted if per_base[t[0]] == 1])


def replicate_truth(truth: Truth, copies: int) -> Truth:
    """The exact truth of ``scale_corpus(docs, copies)`` from the 1x truth: a copy keeps every
    Jaccard of the original (a bijection of the vocabulary) and shares no shingle with another
    copy, so its pairs are the 1x pairs under the copy's ids. Exact, and no 1M-row all-pairs."""
    ids, pairs, planted, single = [], [], [], []
    for k in range(copies):
        sfx = f"~{k}" if k else ""  # scale_corpus's ids: copy 0 as is, copy k suffixed
        ids += [i + sfx for i in truth.ids]
        pairs += [(a + sfx, b + sfx, j) for a, b, j in truth.pairs]
        planted += [(a + sfx, b + sfx, j) for a, b, j in truth.planted]
        single += [(a + sfx, b + sfx, j) for a, b, j in truth.single]
    return Truth(ids, pairs, planted, single)


def score(truth: Truth, dropped: set[str], threshold: float = THRESHOLD) -> dict:
    """Recall of true pairs and precision of the dropped set (definitions in the module docstring)."""
    kept = set(truth.ids) - dropped
    true_pairs = [(a, b) for a, b, j in truth.pairs if j >= threshold]
    resolved = sum(1 for a, b in true_pairs if not (a in kept and b in kept))
    partners = truth.partners(threshold)
    good = sum(1 for d in dropped if partners.get(d))
    good_kept = sum(1 for d in dropped if partners.get(d, set()) & kept)
    bins = []
    for lo, hi in zip(BINS[:-1], BINS[1:]):
        sel = [(a, b) for a, b, j in truth.single if lo <= j < hi or (hi == 1.0 and j == 1.0)]
        hit = sum(1 for a, b in sel if not (a in kept and b in kept))
        bins.append({"lo": lo, "hi": hi, "pairs": len(sel), "resolved": hit})
    return {
        "dropped": len(dropped), "true_pairs": len(true_pairs), "resolved_pairs": resolved,
        "recall": resolved / len(true_pairs) if true_pairs else float("nan"),
        "precision": good / len(dropped) if dropped else float("nan"),
        "precision_kept_partner": good_kept / len(dropped) if dropped else float("nan"),
        "false_drops": len(dropped) - good, "planted_bins": bins,
    }


# -- memory sampling ---------------------------------------------------------------------------
class RssSampler:
    """Samples the RSS of this process's Ray workers (descendants titled ray::*) and of Ray's own
    processes every ``interval`` s, and the CPU seconds each has used (last sample per process)."""

    def __init__(self, interval: float = 0.2):
        import psutil

        self._psutil = psutil
        self.interval = interval
        self.worker_max = 0
        self.workers_sum_max = 0
        self.system_sum_max = 0
        self.driver_max = 0
        self.cpu: dict[int, tuple[bool, float]] = {}  # pid -> (is worker, user + system seconds)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        me = self._psutil.Process()
        while not self._stop.is_set():
            self.sample(me)
            self._stop.wait(self.interval)

    def sample(self, me):
        workers, system = [], []
        try:
            self.driver_max = max(self.driver_max, me.memory_info().rss)
            children = me.children(recursive=True)
        except self._psutil.Error:
            return
        for p in children:
            try:
                cmd = " ".join(p.cmdline())
                rss = p.memory_info().rss
                cpu = p.cpu_times()
            except self._psutil.Error:
                continue
            is_worker = "ray::" in cmd or "default_worker" in cmd
            (workers if is_worker else system).append(rss)
            self.cpu[p.pid] = (is_worker, cpu.user + cpu.system)
        if workers:
            self.worker_max = max(self.worker_max, max(workers))
            self.workers_sum_max = max(self.workers_sum_max, sum(workers))
        self.system_sum_max = max(self.system_sum_max, sum(system))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.sample(self._psutil.Process())

    def cpu_seconds(self, workers: bool) -> float:
        return sum(c for w, c in self.cpu.values() if w == workers)


def peak_rss() -> int:
    """This process's peak RSS in bytes (VmHWM: per address space, so unlike ``ru_maxrss`` it does not
    carry the parent's high-water mark across fork + exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _mib(n: float) -> float:
    return round(n / 2**20, 1)


# -- (1) our stage through the runner, in a child process -------------------------------------
def write_parquet(docs: list[Doc], path: Path, row_group: int = 500) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": [d.id for d in docs], "text": [d.text for d in docs]}), path,
                   row_group_size=row_group)


def runner_child(spec: dict) -> dict:
    """Run configs/dedup_text.yaml on spec['parquet']; return dropped ids, timings and memory."""
    import pandas as pd

    from pipeline.config import load_config
    from pipeline.runner import RunOptions, ensure_ray, run_pipeline

    def own_cpu() -> float:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return ru.ru_utime + ru.ru_stime

    with RssSampler() as mem:
        t0 = time.perf_counter()
        ensure_ray()
        ray_start = time.perf_counter() - t0
        driver_after_init = peak_rss()
        cfg = load_config(CONFIG, overrides=[f"ingest.chunk_rows={spec['chunk_rows']}"] + spec.get("overrides", []),
                          inputs=[spec["parquet"]])
        log: list[str] = []
        mem.sample(mem._psutil.Process())
        cpu0_workers, cpu0_system, cpu0_driver = mem.cpu_seconds(True), mem.cpu_seconds(False), own_cpu()
        t0 = time.perf_counter()
        record = run_pipeline(cfg, RunOptions(run_dir=spec["run_dir"], log=log.append))
        seconds = time.perf_counter() - t0
        driver_peak = peak_rss()
        cpu_driver = own_cpu() - cpu0_driver
    manifests = Path(spec["run_dir"]) / "manifests"
    ex = pd.read_parquet(manifests / "exact_dedup.parquet", columns=["source_key", "status"])
    mh = pd.read_parquet(manifests / "minhash_dedup.parquet", columns=["source_key", "status", "reason"])
    return {
        "seconds": seconds, "ray_start_s": ray_start,
        "exact_dropped": ex.loc[ex["status"] == "dropped", "source_key"].tolist(),
        "near_dropped": mh.loc[mh["status"] == "dropped", "source_key"].tolist(),
        "rows_in": int(len(ex)),
        "rounds": ((record["stages"]["minhash_dedup"].get("stats") or {}).get("rounds")),
        "log": [line for line in log if "minhash_dedup" in line][:12],
        "driver_rss_after_ray_init_mib": _mib(driver_after_init), "driver_peak_rss_mib": _mib(driver_peak),
        "driver_sampled_peak_rss_mib": _mib(mem.driver_max),
        "worker_peak_rss_mib": _mib(mem.worker_max), "workers_sum_peak_rss_mib": _mib(mem.workers_sum_max),
        "ray_system_sum_peak_rss_mib": _mib(mem.system_sum_max),
        "cpu_s_driver": round(cpu_driver, 2), "cpu_s_workers": round(mem.cpu_seconds(True) - cpu0_workers, 2),
        "cpu_s_ray_system": round(mem.cpu_seconds(False) - cpu0_system, 2),
    }


def run_child(mode: str, spec: dict, work: Path, timeout: float) -> dict:
    spec_path, out_path, log_path = work / f"{mode}.spec.json", work / f"{mode}.out.json", work / f"{mode}.log"
    spec_path.write_text(json.dumps(spec))
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1")
    with open(log_path, "wb") as logf:
        proc = subprocess.run([sys.executable, __file__, "--_child", mode, str(spec_path), str(out_path)],
                              stdout=logf, stderr=subprocess.STDOUT, env=env, timeout=timeout, cwd=str(ROOT))
    if proc.returncode != 0 or not out_path.exists():
        tail = log_path.read_text(errors="replace")[-4000:]
        raise RuntimeError(f"{mode} child failed (rc {proc.returncode}); log tail:\n{tail}")
    return json.loads(out_path.read_text())


# -- (2) datasketch MinHashLSH -------------------------------------------------------------------
def datasketch_lsh(docs: list[Doc]) -> dict:
    """Streaming dedup, in id order: drop a document whose query hits a kept one, else insert it."""
    import datasketch

    t0 = time.perf_counter()
    order = sorted(docs, key=lambda d: d.id)
    mhs = datasketch.MinHash.bulk([[s.encode("utf8") for s in shingles(d.text, NGRAM)] for d in order],
                                  num_perm=NUM_PERM, seed=SEED)
    lsh = datasketch.MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM)
    dropped = set()
    for d, m in zip(order, mhs):
        if lsh.query(m):
            dropped.add(d.id)
        else:
            lsh.insert(d.id, m)
    return {"seconds": time.perf_counter() - t0, "dropped": dropped, "bands": lsh.b, "rows": lsh.r}


# -- (3) DataTrove, in a child process -----------------------------------------------------------
def datatrove_child(spec: dict) -> dict:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster,
                                                   MinhashDedupFilter, MinhashDedupSignature)
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    w = Path(spec["work"])
    cfg = MinhashConfig(n_grams=NGRAM, num_buckets=spec["buckets"], hashes_per_bucket=spec["rows"], seed=SEED)
    tasks, workers = spec["tasks"], spec["workers"]

    def reader():
        return JsonlReader(spec["input"], text_key="text", id_key="id")

    steps = [
        ("signatures", [reader(), MinhashDedupSignature(str(w / "sigs"), config=cfg)], tasks),
        ("buckets", [MinhashDedupBuckets(str(w / "sigs"), str(w / "buckets"), config=cfg)], cfg.num_buckets),
        ("cluster", [MinhashDedupCluster(str(w / "buckets"), str(w / "remove"), config=cfg)], 1),
        ("filter", [reader(), MinhashDedupFilter(str(w / "remove"),
                                                 exclusion_writer=JsonlWriter(str(w / "removed"), compression=None)),
                    JsonlWriter(str(w / "kept"), compression=None)], tasks),
    ]
    times = {}
    for name, pipeline, n in steps:
        t0 = time.perf_counter()
        LocalPipelineExecutor(pipeline=pipeline, tasks=n, workers=min(workers, n),
                              logging_dir=str(w / "logs" / name), skip_completed=False).run()
        times[name] = time.perf_counter() - t0
    dropped = []
    for f in sorted((w / "removed").glob("*.jsonl")):
        dropped += [json.loads(line)["id"] for line in f.read_text().splitlines() if line.strip()]
    return {"seconds": sum(times.values()), "step_seconds": times, "dropped": dropped}


def datatrove_shingle_sets(docs: list[Doc]) -> list[set]:
    """DataTrove's own shingles (its normalisation, spaCy words, xxhash) for its own ground truth."""
    from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature

    step = MinhashDedupSignature(tempfile.mkdtemp(prefix="dt-shingles-"), config=MinhashConfig(n_grams=NGRAM))
    return [set(step.get_shingles(d.text).reshape(-1).tolist()) for d in docs]


def run_datatrove(docs: list[Doc], work: Path, buckets: int, rows: int, workers: int, timeout: float = 1200) -> dict:
    inp = work / "dt_input"
    if not inp.exists():
        inp.mkdir(parents=True)
        half = (len(docs) + 1) // 2
        for k, part in enumerate((docs[:half], docs[half:])):
            with open(inp / f"part{k}.jsonl", "w", encoding="utf-8") as f:
                for d in part:
                    f.write(json.dumps({"id": d.id, "text": d.text}) + "\n")
    out = work / f"dt_{buckets}x{rows}"
    spec = {"input": str(inp), "work": str(out), "buckets": buckets, "rows": rows, "tasks": 2, "workers": workers}
    res = run_child("datatrove", spec, work, timeout=timeout)
    res["dropped"] = set(res["dropped"])
    return res


# -- signatures per second per core --------------------------------------------------------------
def _one_core():
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpus[0]})
    return cpus


def throughput(texts: list[str], reps: int, with_datatrove: bool) -> dict:
    """Signatures per CPU second (and per wall second) of each implementation on one core,
    text in, 128-value signature out."""
    import datasketch

    prev = _one_core()
    results = {}
    try:
        def best(fn):
            """(docs per CPU second, docs per wall second), best of ``reps``; the process is
            single-threaded and pinned, so its CPU time is one core's work even on a busy host."""
            cpu, wall = [], []
            for _ in range(reps):
                c0, t0 = time.process_time(), time.perf_counter()
                fn()
                cpu.append(time.process_time() - c0)
                wall.append(time.perf_counter() - t0)
            return len(texts) / min(cpu), len(texts) / min(wall)

        def ours():
            for lo in range(0, len(texts), 1024):
                signatures(texts[lo:lo + 1024], num_perm=NUM_PERM, seed=SEED, ngram=NGRAM)

        def ds_loop():
            for t in texts:
                m = datasketch.MinHash(num_perm=NUM_PERM, seed=SEED)
                for s in shingles(t, NGRAM):
                    m.update(s.encode("utf8"))

        def ds_bulk():
            datasketch.MinHash.bulk([[s.encode("utf8") for s in shingles(t, NGRAM)] for t in texts],
                                    num_perm=NUM_PERM, seed=SEED)

        results["ours (signatures, batch 1024)"] = best(ours)
        results.update(stage_map_steps(texts, best))
        results["datasketch MinHash.update loop"] = best(ds_loop)
        results["datasketch MinHash.bulk"] = best(ds_bulk)
        if with_datatrove:
            from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature

            step = MinhashDedupSignature(tempfile.mkdtemp(prefix="dt-speed-"),
                                         config=MinhashConfig(n_grams=NGRAM, num_buckets=16, hashes_per_bucket=8, seed=SEED))
            step.get_signature(step.get_shingles(texts[0]))  # loads spaCy once, outside the timing

            def dt():
                for t in texts:
                    sh = step.get_shingles(t)
                    if sh.size:
                        step.get_signature(sh)

            results["DataTrove signature step (16x8)"] = best(dt)
    finally:
        os.sched_setaffinity(0, set(prev))
    return results


def stage_map_steps(texts: list[str], best) -> dict:
    """The stage's whole map step (signatures, band hashes, Arrow rows) as the runner calls it."""
    import pyarrow as pa

    from stages.dedup import _band_rows

    n = len(texts)
    table = pa.table({"sample_id": [f"s{i:07d}" for i in range(n)], "status": ["kept"] * n, "text": texts})

    def step(bands: int, rows: int, verify: bool):
        def run():
            for lo in range(0, n, 1024):
                _band_rows(table.slice(lo, 1024), "text", NUM_PERM, SEED, NGRAM, "words", bands, rows, None, verify)
        return run

    b, r = optimal_bands(THRESHOLD, NUM_PERM)
    vb, vr = optimal_bands(0.6, NUM_PERM)
    return {f"ours stage map step ({b}x{r} band rows)": best(step(b, r, False)),
            f"ours stage map step ({vb}x{vr} + verify sets)": best(step(vb, vr, True))}


def check_equal_to_datasketch(texts: list[str]) -> bool:
    import datasketch

    ours = signatures(texts, num_perm=NUM_PERM, seed=SEED, ngram=NGRAM)
    ref = datasketch.MinHash.bulk([[s.encode("utf8") for s in shingles(t, NGRAM)] for t in texts],
                                  num_perm=NUM_PERM, seed=SEED)
    return all(np.array_equal(ours[i], m.hashvalues) for i, m in enumerate(ref))


# -- report ------------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _fmt(x: float) -> str:
    return "n/a" if x != x else f"{x:.4f}"


def print_quality(rows: list[tuple[str, dict, float]]) -> None:
    print(f"{'method':44}{'dropped':>8}{'true pairs':>11}{'recall':>9}{'precision':>10}{'prec(kept)':>11}"
          f"{'false drops':>12}{'seconds':>9}")
    for name, s, secs in rows:
        print(f"{name:44}{s['dropped']:>8}{s['true_pairs']:>11}{_fmt(s['recall']):>9}{_fmt(s['precision']):>10}"
              f"{_fmt(s['precision_kept_partner']):>11}{s['false_drops']:>12}{secs:>9.1f}")


def print_bins(rows: list[tuple[str, dict]], bands: int, r: int) -> None:
    """Share of planted pairs resolved per true-Jaccard bin, next to the LSH collision curve."""
    head = f"{'planted J bin':14}{'pairs':>6}{'P(cand) ' + str(bands) + 'x' + str(r):>15}"
    print(head + "".join(f"{n[:18]:>20}" for n, _ in rows))
    first = rows[0][1]["planted_bins"]
    for k, b in enumerate(first):
        mid = (b["lo"] + b["hi"]) / 2
        line = f"[{b['lo']:.2f},{b['hi']:.2f}){'':2}{b['pairs']:>6}{collision_probability(mid, bands, r):>15.3f}"
        for _, s in rows:
            bb = s["planted_bins"][k]
            line += f"{(bb['resolved'] / bb['pairs'] if bb['pairs'] else float('nan')):>20.3f}"
        print(line)


VERIFY = ["minhash_dedup.verify=true", "minhash_dedup.candidate_threshold=0.6"]


def load() -> str:
    return "load average " + " ".join(f"{x:.1f}" for x in os.getloadavg())


def run_ours(parquet: Path, work: Path, name: str, chunk: int, overrides: list[str]) -> dict:
    spec = {"parquet": str(parquet), "run_dir": str(work / f"run_{name}"), "chunk_rows": chunk,
            "overrides": overrides}
    res = run_child("runner", spec, work, timeout=3600)
    res["dropped"] = set(res["exact_dropped"]) | set(res["near_dropped"])
    return res


def signature_speed(docs: list[Doc], fig: dict, reps: int, with_dt: bool) -> None:
    """Signatures per second on one core: ours against datasketch (and DataTrove), printed."""
    texts = [d.text for d in docs]
    equal = check_equal_to_datasketch(texts)
    speed = throughput(texts, reps=reps, with_datatrove=with_dt)
    n_shingles = sum(len(shingles(t, NGRAM)) for t in texts)
    fig["shingles"] = n_shingles
    print(f"== signatures/s on one core ({len(texts)} docs, {n_shingles} shingles, {NUM_PERM} perms, text in; "
          f"ours == datasketch on every doc: {equal}; {load()}) ==")
    print(f"{'':40}{'per CPU s':>12}{'vs loop':>9}{'per wall s':>12}")
    loop = speed["datasketch MinHash.update loop"][0]
    for name, (cpu_rate, wall_rate) in speed.items():
        print(f"{name:40}{cpu_rate:>12,.0f}{cpu_rate / loop:>8.1f}x{wall_rate:>12,.0f}")
    fig["signatures_per_cpu_s_one_core"] = {k: round(v[0], 1) for k, v in speed.items()}
    fig["signatures_per_wall_s_one_core"] = {k: round(v[1], 1) for k, v in speed.items()}
    fig["ours_equals_datasketch"] = equal


def at_scale(docs: list[Doc], truth: Truth, n: int, work: Path, with_dt: bool, seed: int) -> dict:
    """Ours (the shipped config) against DataTrove's default pipeline on ~n documents, same cores,
    same run; docs/s, recall and precision at J >= THRESHOLD on our shingles."""
    copies = max(1, -(-n // len(docs)))
    t0 = time.perf_counter()
    big = scale_corpus(docs, copies, seed=seed)
    big_truth = replicate_truth(truth, copies)
    pq_big = work / f"docs_{copies}x.parquet"
    write_parquet(big, pq_big, row_group=10_000)
    print(f"== at scale: {len(big):,} documents ({copies} copies of the corpus), built in "
          f"{time.perf_counter() - t0:.0f} s; {sum(1 for *_, j in big_truth.pairs if j >= THRESHOLD):,} true pairs; {load()} ==",
          flush=True)
    out: dict = {"docs": len(big), "copies": copies}
    rows = []
    ours = run_ours(pq_big, work, f"{copies}x", 10_000, [])
    s_ = score(big_truth, ours["dropped"])
    rows.append(("ours: configs/dedup_text.yaml via the runner", ours["seconds"], s_))
    out["ours"] = {k: v for k, v in ours.items() if k not in ("dropped", "exact_dropped", "near_dropped", "log")}
    print(f"   ours: {ours['seconds']:.1f} s (+ Ray start {ours['ray_start_s']:.1f} s), {ours['rounds']} rounds, "
          f"driver peak {ours['driver_peak_rss_mib']:.0f} MiB, largest worker {ours['worker_peak_rss_mib']:.0f} MiB, "
          f"worker CPU s {ours['cpu_s_workers']:.0f}; {load()}", flush=True)
    if with_dt:
        dt = run_datatrove(big, work, 14, 8, workers=min(2, os.cpu_count() or 1), timeout=6 * 3600)
        rows.append(("DataTrove 14x8 (its default), LocalPipelineExecutor, 2 tasks", dt["seconds"],
                     score(big_truth, dt["dropped"])))
        out["datatrove_step_seconds"] = dt["step_seconds"]
        print(f"   DataTrove steps: {', '.join(f'{k} {v:.1f} s' for k, v in dt['step_seconds'].items())}; {load()}")
    print(f"{'':62}{'docs/s':>9}{'dropped':>9}{'recall':>8}{'precision':>10}")
    for name, secs, sc in rows:
        print(f"{name:62}{len(big) / secs:>9,.0f}{sc['dropped']:>9,}{_fmt(sc['recall']):>8}{_fmt(sc['precision']):>10}")
    out["rows"] = {name: {"seconds": round(secs, 1), "docs_per_s": round(len(big) / secs, 1),
                          **{k: v for k, v in sc.items() if k != "planted_bins"}} for name, secs, sc in rows}
    if len(rows) == 2:
        (_, a_s, a), (_, b_s, b) = rows
        ratio = b_s / a_s
        ok = ratio >= 5 and a["recall"] >= b["recall"] and a["precision"] >= b["precision"]
        print(f"  {'MET    ' if ok else 'NOT MET'}  >= 5x DataTrove's docs/s with recall and precision at least as "
              f"good: {ratio:.2f}x, recall {_fmt(a['recall'])} vs {_fmt(b['recall'])}, precision "
              f"{_fmt(a['precision'])} vs {_fmt(b['precision'])}")
        out["ratio_to_datatrove"] = round(ratio, 3)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller corpus (800 paragraphs), --scale 3, one DataTrove config")
    ap.add_argument("--scale", type=int, default=None, help="corpus multiple for the memory run (default 10; quick: 3)")
    ap.add_argument("--families", type=float, default=0.3, help="share of paragraphs that get planted variants")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-datatrove", action="store_true", help="skip DataTrove (if it is not installed)")
    ap.add_argument("--json", help="also write the figures to this file")
    ap.add_argument("--keep", action="store_true", help="keep the work dir and print its path")
    ap.add_argument("--signatures-only", action="store_true", help="only the one-core signature speed section")
    ap.add_argument("--docs", type=int, default=None,
                    help="only the scale comparison: configs/dedup_text.yaml through the runner against DataTrove's "
                         "default 4-step pipeline on about N documents (whole copies of the corpus, see scale_corpus), "
                         "scored against the exact truth of every copy")
    ap.add_argument("--_child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args._child:
        mode, spec_path, out_path = args._child
        spec = json.loads(Path(spec_path).read_text())
        res = {"runner": runner_child, "datatrove": datatrove_child}[mode](spec)
        Path(out_path).write_text(json.dumps(res))
        return 0

    scale = args.scale or (3 if args.quick else 10)
    work = Path(tempfile.mkdtemp(prefix="sailcurate-dedup-bench-"))
    fig: dict = {"bench": "dedup", "threshold": THRESHOLD, "num_perm": NUM_PERM, "ngram": NGRAM, "scale": scale,
                 "quick": args.quick, "cpu_model": cpu_model(),
                 "cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                 "load_at_start": os.getloadavg()}
    try:
        t_all = time.perf_counter()
        bands, r = optimal_bands(THRESHOLD, NUM_PERM)
        bases, origin = real_paragraphs()
        if args.quick:
            bases = random.Random(args.seed).sample(bases, min(800, len(bases)))
        docs = build_corpus(bases, int(len(bases) * args.families), seed=args.seed)
        truth = ground_truth(docs)
        n_true = sum(1 for *_, j in truth.pairs if j >= THRESHOLD)
        planted_ids = {(a, b) for a, b, _ in truth.planted} | {(b, a) for a, b, _ in truth.planted}
        natural = sum(1 for a, b, j in truth.pairs if j >= THRESHOLD and (a, b) not in planted_ids)
        edits = {k: sum(1 for d in docs if d.edit == k) for k in EDITS}
        words = sum(len(d.text.split()) for d in docs)
        below = sum(1 for *_, j in truth.planted if j < THRESHOLD)
        fig["corpus"] = {**origin, "paragraphs_used": len(bases), "docs": len(docs), "words": words, "variants": len(truth.planted), "edits": edits,
                         "planted_below_threshold": below, "true_pairs_ge_0.8": n_true,
                         "of_which_not_base_variant": natural}
        print(f"machine : {platform.platform()} | {cpu_model()} | {os.cpu_count()} logical CPUs | {load()}")
        print(f"corpus  : {len(bases)} of {origin['paragraphs']} real paragraphs ({origin['from_pydoc']} pydoc topics, "
              f"{origin['from_packages']} from {origin['packages']} package descriptions) + {len(truth.planted)} "
              f"planted variants ({below} of them below J={THRESHOLD}) = {len(docs)} docs, {words} words; edits {edits}")
        print(f"truth   : exact all-pairs Jaccard over 5-word shingles: {n_true} pairs with J >= {THRESHOLD} "
              f"({natural} of them not base<->variant: variant<->variant and natural near-copies)")
        print(f"banding : {bands} bands x {r} rows (ours = datasketch MinHashLSH(0.8, 128)); "
              f"P(candidate) at J=0.8: {collision_probability(0.8, bands, r):.3f}, at 0.9: "
              f"{collision_probability(0.9, bands, r):.3f}; with verify, candidate_threshold 0.6 -> "
              f"{'x'.join(map(str, optimal_bands(0.6, NUM_PERM)))}: "
              f"{collision_probability(0.8, *optimal_bands(0.6, NUM_PERM)):.3f} at J=0.8")
        print("definitions: recall = true pairs (J>=0.8) not both kept / true pairs; precision = dropped docs "
              "with a J>=0.8 partner in the corpus / dropped; prec(kept) = ... with that partner kept")
        print()
        if args.signatures_only:
            with_dt = not args.no_datatrove and importlib.util.find_spec("datatrove") is not None
            signature_speed(docs, fig, reps=1 if args.quick else 2, with_dt=with_dt)
            return 0
        if args.docs:
            with_dt = not args.no_datatrove and importlib.util.find_spec("datatrove") is not None
            fig["at_scale"] = at_scale(docs, truth, args.docs, work, with_dt, args.seed)
            if args.json:
                Path(args.json).write_text(json.dumps(fig, indent=1, default=float))
            return 0

        # Quality at 1x: our stage through the runner (as shipped, and with verification), datasketch, DataTrove.
        pq_1x = work / "docs_1x.parquet"
        write_parquet(docs, pq_1x)
        chunk = max(250, len(docs) // 8)
        ours = {
            "ours: minhash_dedup via runner": run_ours(pq_1x, work, "1x", chunk, []),
            "ours + verify, candidate_threshold 0.6": run_ours(pq_1x, work, "1x_verify", chunk, VERIFY),
        }
        quality = []
        for name, o in ours.items():
            quality.append((name, score(truth, o["dropped"]), o["seconds"]))
            print(f"{name}: {o['rows_in']} rows, exact_dedup dropped {len(o['exact_dropped'])}, minhash_dedup "
                  f"dropped {len(o['near_dropped'])}; {o['rounds']} label-propagation rounds; {o['seconds']:.1f} s "
                  f"(+ Ray start {o['ray_start_s']:.1f} s); CPU s: driver {o['cpu_s_driver']:.1f}, Ray workers "
                  f"{o['cpu_s_workers']:.1f}, Ray system {o['cpu_s_ray_system']:.1f}; {load()}")

        ds = datasketch_lsh(docs)
        quality.append((f"datasketch MinHashLSH ({ds['bands']}x{ds['rows']}, streaming)",
                        score(truth, ds["dropped"]), ds["seconds"]))

        dt_runs = []
        with_dt = not args.no_datatrove and importlib.util.find_spec("datatrove") is not None
        if not with_dt and not args.no_datatrove:
            print("DataTrove is not installed (pip install -e '.[bench]'): its rows are left out")
        if with_dt:
            configs = [(14, 8)] if args.quick else [(14, 8), (bands, r)]
            for b_, r_ in configs:
                res = run_datatrove(docs, work, b_, r_, workers=min(2, os.cpu_count() or 1))
                label = f"DataTrove {b_}x{r_}" + (" (its default)" if (b_, r_) == (14, 8) else " (our banding)")
                quality.append((label, score(truth, res["dropped"]), res["seconds"]))
                dt_runs.append((label, res))
            dt_truth = ground_truth(docs, datatrove_shingle_sets(docs))
        print()
        print(f"== quality at true J >= {THRESHOLD} (our shingles), {len(docs)} docs; {load()} ==")
        print_quality(quality)
        for label, res in dt_runs:
            s_ = score(dt_truth, res["dropped"])
            print(f"   {label} against its own shingles: true pairs {s_['true_pairs']}, recall {_fmt(s_['recall'])}, "
                  f"precision {_fmt(s_['precision'])}; steps "
                  f"{', '.join(f'{k} {v:.1f}s' for k, v in res['step_seconds'].items())}")
        print()
        print("== planted pairs of one-variant families: share with one of the two dropped, per true-Jaccard bin, "
              "vs the 9x13 candidate probability ==")
        print_bins([(n, s_) for n, s_, _ in quality], bands, r)
        fig["quality"] = {n: dict(s_) | {"seconds": round(secs, 2)} for n, s_, secs in quality}
        if dt_runs:
            fig["datatrove_step_seconds"] = {label: res["step_seconds"] for label, res in dt_runs}
        fig["ours_log"] = {n: o["log"] for n, o in ours.items()}
        print()

        # Throughput, one core.
        signature_speed(docs, fig, reps=1 if args.quick else 2, with_dt=with_dt)
        for label, res in dt_runs:
            st = res["step_seconds"]["signatures"]
            print(f"   {label} signature step via its executor (2 tasks, read + sign + write + sort): "
                  f"{len(docs) / st:,.0f} docs per wall s on {min(2, os.cpu_count() or 1)} workers")
        print()

        # Memory: the verified stage through the runner at 1x and scale x.
        big = scale_corpus(docs, scale, seed=args.seed)
        pq_big = work / f"docs_{scale}x.parquet"
        write_parquet(big, pq_big)
        big_truth = ground_truth(big)
        ours_big = run_ours(pq_big, work, f"{scale}x_verify", chunk, VERIFY)
        small = ours["ours + verify, candidate_threshold 0.6"]
        print(f"== memory and scale: minhash_dedup (verify, candidate 0.6) via the runner at 1x and {scale}x "
              f"(chunk_rows {chunk}); {load()} ==")
        print(f"{'':6}{'docs':>8}{'seconds':>9}{'docs/s':>8}{'rounds':>7}{'driver after init':>18}{'driver peak':>12}"
              f"{'max worker':>11}{'sum workers':>12}{'ray system':>11}{'worker CPU s':>13}{'recall':>8}{'precision':>10}")
        mem_rows = [("1x", len(docs), small, score(truth, small["dropped"])),
                    (f"{scale}x", len(big), ours_big, score(big_truth, ours_big["dropped"]))]
        for name, n, o, s_ in mem_rows:
            print(f"{name:6}{n:>8}{o['seconds']:>9.1f}{n / o['seconds']:>8.0f}{o['rounds']:>7}"
                  f"{o['driver_rss_after_ray_init_mib']:>15.0f}MiB{o['driver_peak_rss_mib']:>9.0f}MiB"
                  f"{o['worker_peak_rss_mib']:>8.0f}MiB{o['workers_sum_peak_rss_mib']:>9.0f}MiB"
                  f"{o['ray_system_sum_peak_rss_mib']:>8.0f}MiB{o['cpu_s_workers']:>13.1f}"
                  f"{_fmt(s_['recall']):>8}{_fmt(s_['precision']):>10}")
        growth = ours_big["driver_peak_rss_mib"] / small["driver_peak_rss_mib"]
        print(f"driver peak RSS {scale}x / 1x: {growth:.2f}")
        fig["memory"] = {name: {k: v for k, v in o.items()
                                if k.endswith("_mib") or k.startswith("cpu_s") or k in ("seconds", "rounds")}
                         | {"docs": n, "recall": s_["recall"], "precision": s_["precision"]}
                         for name, n, o, s_ in mem_rows}
        print()

        # Targets.
        ours_rate = speed["ours (signatures, batch 1024)"][0]
        fig["ours_cpu_seconds"] = {n: {k: v for k, v in o.items() if k.startswith("cpu_s")} for n, o in ours.items()}
        targets = []
        for name, s_, _ in quality[:2]:
            targets.append((f"recall >= 0.95 at J >= 0.8 ({name})", s_["recall"] >= 0.95, f"{s_['recall']:.4f}"))
            targets.append((f"precision >= 0.99 at J >= 0.8 ({name})", s_["precision"] >= 0.99,
                            f"{s_['precision']:.4f}"))
        targets.append(("signatures >= 10x datasketch update loop", ours_rate >= 10 * loop, f"{ours_rate / loop:.1f}x"))
        if "DataTrove signature step (16x8)" in speed:
            dtv = speed["DataTrove signature step (16x8)"][0]
            targets.append(("signatures no slower than DataTrove's", ours_rate >= dtv, f"{ours_rate / dtv:.1f}x"))
        targets.append((f"driver peak RSS roughly flat 1x -> {scale}x (<= 1.25x)", growth <= 1.25, f"{growth:.2f}x"))
        print("== targets ==")
        for name, ok, val in targets:
            print(f"  {'MET    ' if ok else 'NOT MET'}  {name}: {val}")
        fig["targets"] = {name: {"met": bool(ok), "value": val} for name, ok, val in targets}
        fig["total_seconds"] = round(time.perf_counter() - t_all, 1)
        fig["load_at_end"] = os.getloadavg()
        print(f"\ntotal {fig['total_seconds']:.0f} s; {load()}")
        print(json.dumps(fig, default=float))
        if args.json:
            Path(args.json).write_text(json.dumps(fig, indent=1, default=float))
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
