"""shard: write kept rows as WebDataset tar shards for a training job.

Shards are ``{corpus}-{index:06d}.tar``, numbered without gaps, a fixed number
of samples each, in a deterministic order (a seeded hash of ``sample_id``, so
the same kept set gives the same shards whatever the block or worker count).
Tar headers are normalised (mtime 0, uid 0, no user names), so a rerun writes
byte-identical files. Beside them: ``index.parquet`` (sample_id -> shard,
member key) and ``shards.json`` (shard list with sample counts).

Each sample carries its media bytes as ingested and a ``.json`` with the
text, scores, source and the counts a packing trainer needs (SPEC.md): text
tokens, images, tiles, visual tokens and total length.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import time
from typing import Any, Callable, Iterator

import pyarrow as pa
from pydantic import Field

from pipeline import media, storage
from pipeline.remote_call import off_driver
from stages.base import KEPT, Params, Resources, Stage
from stages.tar_write import TarWriter

_REGEX_TOKEN = re.compile(r"\w+|[^\w\s]", re.UNICODE)
_NOT_SCORES = {"sample_id", "source", "source_key", "status", "reason", "text", "image", "image_name", "meta",
               "image_hash", "image_format", "image_ref", "_chunk", "_decided_at", "_order"}


class ShardParams(Params):
    corpus: str = Field("corpus", pattern=r"^[A-Za-z0-9_.-]+$", description="shard name prefix: {corpus}-000000.tar")
    samples_per_shard: int = Field(1000, ge=1)
    seed: int | None = Field(None, description="shuffle seed; defaults to the pipeline's seed")
    tokenizer: str = Field("regex", description="'regex' (words and punctuation, offline) or a tokenizer.json path, local folder or hub id")
    tile_size: int = Field(448, ge=1, description="visual tile side in pixels (SPEC.md: 448)")
    tokens_per_tile: int = Field(256, ge=1, description="visual tokens per tile after 2x2 merge (SPEC.md: 256)")
    max_tiles: int = Field(12, ge=1, description="cap on dynamic tiles per image")
    thumbnail: bool = Field(True, description="add a global thumbnail tile when an image spans several tiles")
    text_field: str = Field("caption", description="name of the text field in each sample's .json")
    directory: str = Field("shards", pattern=r"^[A-Za-z0-9_.-]+$",
                           description="output folder under the run directory (one per sink when a pipeline writes several)")


class TokenCounter:
    """Counts text tokens with the configured tokenizer; loaded once per writer task."""

    def __init__(self, spec: str):
        self.spec = spec
        self._tok = None
        if spec != "regex":
            if spec.endswith(".json"):
                from tokenizers import Tokenizer

                self._tok = Tokenizer.from_file(spec)
                self._encode = lambda t: len(self._tok.encode(t, add_special_tokens=False).ids)
            else:
                from transformers import AutoTokenizer

                self._tok = AutoTokenizer.from_pretrained(spec)
                self._encode = lambda t: len(self._tok(t, add_special_tokens=False)["input_ids"])

    def __call__(self, text: str | None) -> int:
        if not text:
            return 0
        if self._tok is None:
            return len(_REGEX_TOKEN.findall(text))
        return self._encode(text)


def visual_tokens(width: int | None, height: int | None, p: ShardParams) -> tuple[int, int]:
    """(tiles, visual tokens) for one image under dynamic tiling (see docs/architecture.md)."""
    if not width or not height:
        return 0, 0
    tiles = min(p.max_tiles, math.ceil(width / p.tile_size) * math.ceil(height / p.tile_size))
    if tiles > 1 and p.thumbnail:
        tiles += 1
    return tiles, tiles * p.tokens_per_tile


def order_key(seed: int, sample_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}\0{sample_id}".encode(), digest_size=8).digest(), "big") >> 1


PARTITION_BYTES = 256 * 1024 * 1024


def sort_by_order(ds, rows_per_file: int) -> list:
    """Block references sorted by ``_order``.

    Ray's default sort runs one reduce task per input block, and every map task cuts its block
    into one piece per reduce: blocks x blocks objects, all tracked by the driver (1,811 blocks of a
    64,000-row demo run made 3.3 million). The keys are uniform 63-bit hashes, so fixed boundaries
    split them evenly without sampling, into partitions of about ``PARTITION_BYTES`` and never
    more than one per output file. The order, and so every output byte, is the same whatever the
    partitioning."""
    ds = ds.materialize()
    total, nbytes = ds.count(), ds.size_bytes()
    parts = max(1, min(math.ceil(total / rows_per_file), math.ceil(nbytes / PARTITION_BYTES)))
    step = (1 << 63) // parts
    boundaries = [step * i for i in range(1, parts)] or [(1 << 63) - 1]
    return ds.sort("_order", boundaries=boundaries).to_arrow_refs()


def _add_order(table: pa.Table, seed: int) -> pa.Table:
    keys = [order_key(seed, s) for s in table.column("sample_id").to_pylist()]
    return table.append_column("_order", pa.array(keys, pa.int64()))


def _sample_json(row: dict, p: ShardParams, counter: TokenCounter, media_name: str | None) -> dict:
    tiles, vtok = visual_tokens(row.get("width"), row.get("height"), p)
    ttok = counter(row.get("text"))
    scores = {k: v for k, v in row.items() if k not in _NOT_SCORES and not k.startswith("_")
              and isinstance(v, (int, float, bool)) and not (isinstance(v, float) and math.isnan(v))}
    meta = None
    if row.get("meta"):
        try:
            meta = json.loads(row["meta"])
        except ValueError:
            meta = row["meta"]
    return {
        "sample_id": row["sample_id"], "source": row.get("source"), "source_key": row.get("source_key"),
        p.text_field: row.get("text"), "image": media_name, "scores": scores, "meta": meta,
        "tokens": {"text": ttok, "images": 1 if media_name else 0, "tiles": tiles, "visual": vtok, "total": ttok + vtok,
                   "tokenizer": p.tokenizer},
        "bucket": row.get("bucket"),
    }


def write_shard(index: int, name: str, out_dir: str, pieces: list[tuple[int, int]], params: dict, *blocks: pa.Table) -> dict:
    """Write one shard (atomically), then its index part, which marks it complete."""
    p = ShardParams(**params)
    counter = TokenCounter(p.tokenizer)
    rows: list[dict] = []
    for (lo, hi), block in zip(pieces, blocks):
        rows.extend(block.slice(lo, hi - lo).to_pylist())
    with_media(rows, "image")
    index_rows = []
    with storage.open_output_atomic(storage.join(out_dir, name)) as out:
        with TarWriter(out) as tf:
            for pos, row in enumerate(rows):
                key = row["sample_id"]
                media_name = None
                members: list[tuple[str, bytes]] = []
                if row.get("image") is not None:
                    ext = (row.get("image_format") or (row.get("image_name") or "").rsplit(".", 1)[-1] or "bin").lower()
                    ext = {"jpeg": "jpg"}.get(ext, ext)
                    if not re.fullmatch(r"[a-z0-9]{1,5}", ext):
                        ext = "bin"
                    media_name = f"{key}.{ext}"
                    members.append((media_name, row["image"]))
                meta = _sample_json(row, p, counter, media_name)
                members.insert(0, (f"{key}.json", json.dumps(meta, ensure_ascii=False, sort_keys=True).encode("utf-8")))
                if row.get("text") is not None:
                    members.append((f"{key}.txt", row["text"].encode("utf-8")))
                for mname, data in members:
                    tf.add(mname, data)
                index_rows.append({"sample_id": key, "source": row.get("source"), "source_key": row.get("source_key"),
                                   "shard": name, "key": key, "position": pos,
                                   "text_tokens": meta["tokens"]["text"], "visual_tokens": meta["tokens"]["visual"]})
    table = pa.Table.from_pylist(index_rows, schema=INDEX_SCHEMA)
    storage.write_parquet(storage.join(out_dir, "_index", f"{index:06d}.parquet"), table)
    return {"index": index, "name": name, "samples": len(rows)}


def with_media(rows: list[dict], column: str) -> None:
    """Fill ``column`` from its reference where a row has only that (checkpoints hold references,
    pipeline/media.py): the shard is where media bytes are written, once. A reference whose bytes
    changed stops the write with the file's name; a shard never holds other bytes than ingested."""
    rcol = media.ref_column(column)
    need = [i for i, r in enumerate(rows) if r.get(column) is None and r.get(rcol) is not None]
    if not need:
        return
    got = media.fetch([rows[i][rcol] for i in need])
    for i, g in zip(need, got):
        if isinstance(g, media.MediaError):
            raise media.MediaError(f"sample {rows[i].get('sample_id')}: {g}; rerun from ingest (--from) after "
                                   "restoring the file, or with the changed file to re-read it")
        rows[i][column] = g


def _file_pieces(counts: list[int], per_file: int, skip: set[int]) -> Iterator[tuple[int, list, list[int]]]:
    """For each file not in ``skip``: (file number, [(start, end) rows of each block it takes], block
    numbers). Files and blocks are both in row order, so one pass over the blocks serves all files."""
    starts = [0]
    for c in counts:
        starts.append(starts[-1] + c)
    total = starts[-1]
    first = 0  # the first block that still holds rows at or past this file's start
    for i in range(math.ceil(total / per_file)):
        lo, hi = i * per_file, min(total, (i + 1) * per_file)
        while starts[first + 1] <= lo:
            first += 1
        if i in skip:
            continue
        pieces, blocks = [], []
        b = first
        while b < len(counts) and starts[b] < hi:
            if counts[b]:
                pieces.append((max(lo, starts[b]) - starts[b], min(hi, starts[b + 1]) - starts[b]))
                blocks.append(b)
            b += 1
        yield i, pieces, blocks


def write_files(refs: list, per_file: int, file_name: Callable[[int], str], out_dir: str, writer,
                params: dict, prefix: str, noun: str, log: Callable[[str], None]) -> tuple[int, int]:
    """Cut ordered blocks into files of ``per_file`` rows and write each with the remote ``writer``,
    skipping files a killed run completed (its ``_index`` part is written last, so it marks a whole
    file). Returns (rows, files). Shards, video shards and instruction files all go through here.

    Writers are submitted a window at a time (twice the cluster's CPUs): the driver holds a task
    spec for every task in flight, and submitting all of them at once made it grow with the number
    of files (3,200 five-sample shards held 16 MiB)."""
    import ray

    counts = ray.get([ray.remote(num_cpus=1)(_num_rows).remote(r) for r in refs])
    total = sum(counts)
    n_files = math.ceil(total / per_file)
    done = {i.base_name for i in storage.list_files(storage.join(out_dir, "_index"), ".parquet")}
    skip = {i for i in range(n_files) if f"{i:06d}.parquet" in done and storage.exists(storage.join(out_dir, file_name(i)))}
    if skip:
        log(f"{prefix}resuming, {len(skip)} of {n_files} {noun} already written")
    jobs = _file_pieces(counts, per_file, skip)
    window = max(4, 2 * int(ray.cluster_resources().get("CPU", 1)))
    pending: list = []

    def submit_one() -> bool:
        for i, pieces, blocks in jobs:
            pending.append(writer.remote(i, file_name(i), out_dir, pieces, params, *(refs[b] for b in blocks)))
            return True
        return False

    while len(pending) < window and submit_one():
        pass
    finished, to_write, last = 0, n_files - len(skip), time.time()
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        try:
            ray.get(ready)
        except Exception:
            # Let the other writers finish or fail (removing their temporaries) before reporting
            # the first error: none is cut off mid-write when the driver exits.
            for ref in pending:
                try:
                    ray.get(ref)
                except Exception:
                    pass
            raise
        finished += 1
        submit_one()
        if time.time() - last > 5 or finished == to_write:
            log(f"{prefix}{finished} {noun} written, {to_write - finished} to go")
            last = time.time()
    return total, n_files


INDEX_SCHEMA = pa.schema([
    ("sample_id", pa.string()), ("source", pa.string()), ("source_key", pa.string()), ("shard", pa.string()),
    ("key", pa.string()), ("position", pa.int32()), ("text_tokens", pa.int64()), ("visual_tokens", pa.int64()),
])


class ShardStage(Stage):
    kind = "shard"
    mode = "global"
    sink = True
    Params = ShardParams
    description = "Write WebDataset tar shards (deterministic order, N per shard) + index.parquet + shards.json."
    default_resources = Resources(num_cpus=1, batch_size=1000)

    def manifest_columns(self) -> list[str]:
        return ["shard", "key", "position", "text_tokens", "visual_tokens"]

    # What a subclass (video_shard) changes: how rows are ordered and how one shard is written.
    writer = staticmethod(write_shard)
    member_suffixes = ("json", "<image ext>", "txt")

    def order(self, seed: int) -> tuple[Callable, tuple]:
        """(function adding the int64 ``_order`` column to an Arrow block, its extra arguments)."""
        return _add_order, (seed,)

    def run_global(self, ds, run_dir: str, seed: int, resume: bool, log: Callable[[str], None]) -> list[str]:
        """Returns the index part URIs, from which the runner writes this stage's manifest."""
        import ray

        p = self.params
        out_dir = storage.join(run_dir, p.directory)
        if not resume:
            storage.rmtree(out_dir)
        storage.makedirs(storage.join(out_dir, "_index"))
        seed = p.seed if p.seed is not None else seed
        order_fn, order_args = self.order(seed)
        ds = ds.map_batches(order_fn, fn_args=order_args, batch_format="pyarrow", batch_size=None)
        refs = sort_by_order(ds, p.samples_per_shard)
        writer = ray.remote(num_cpus=self.default_resources.num_cpus)(self.writer)
        total, n_shards = write_files(refs, p.samples_per_shard, lambda i: f"{p.corpus}-{i:06d}.tar", out_dir, writer,
                                      p.model_dump(mode="json"), f"{self.name}: ", "shards", log)
        remove_past_end(out_dir, p.corpus, ".tar", n_shards)
        parts = [storage.join(out_dir, "_index", f"{i:06d}.parquet") for i in range(n_shards)]
        samples = off_driver(_concat_parquet, parts, storage.join(out_dir, "index.parquet"), INDEX_SCHEMA)
        shard_list = [{"name": f"{p.corpus}-{i:06d}.tar", "samples": n} for i, n in enumerate(samples)]
        storage.write_json(storage.join(out_dir, "shards.json"), {
            "corpus": p.corpus, "samples_per_shard": p.samples_per_shard, "seed": seed,
            "total_samples": total, "num_shards": n_shards, "shards": shard_list,
            "index": "index.parquet", "member_suffixes": list(self.member_suffixes),
        })
        return parts


def remove_past_end(out_dir: str, corpus: str, suffix: str, n_files: int) -> None:
    """Files numbered past the end (and their index parts) belong to an earlier, larger run."""
    for info in storage.list_files(out_dir, suffix):
        m = re.fullmatch(rf"{re.escape(corpus)}-(\d+){re.escape(suffix)}", info.base_name)
        if not m or int(m.group(1)) >= n_files:
            storage.remove(storage.join(out_dir, info.base_name))
    for info in storage.list_files(storage.join(out_dir, "_index"), ".parquet"):
        if int(info.base_name.split(".")[0]) >= n_files:
            storage.remove(storage.join(out_dir, "_index", info.base_name))


def _num_rows(table: pa.Table) -> int:
    return table.num_rows


def _concat_parquet(parts: list[str], out: str, schema: pa.Schema,
                    summarize: Callable[[pa.Table], Any] = _num_rows) -> list:
    """One index file from the per-file parts, in large row groups (pipeline/parquet_sink.py).
    Returns ``summarize`` of each part (its rows by default), from the same single read. Runs off
    the driver (pipeline/remote_call.py)."""
    import pyarrow.parquet as pq

    from pipeline.parquet_sink import ParquetSink

    summaries = []
    with ParquetSink(out) as sink:
        sink.write(schema.empty_table())
        for part in parts:
            fs, path = storage.resolve(part)
            table = pq.read_table(path, filesystem=fs).cast(schema)
            sink.write(table)
            summaries.append(summarize(table))
    return summaries
