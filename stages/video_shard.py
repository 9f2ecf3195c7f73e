"""video_shard: WebDataset shards of videos with their kept QA pairs, for a video training job.

The shard machinery is ``shard``'s (deterministic order, N rows per shard, atomic writes,
resume, ``index.parquet``); what differs is the sample. Rows are QA pairs; rows that share
``group_column`` (default ``video_hash``: the same video file) become ONE sample, so the video
bytes are stored once with all its kept QA pairs as conversation turns:

- ``KEY.<ext>``: the original video bytes as ingested (read from ``video_path`` / the tar
  member's byte range at write time, streamed into the shard, never held whole in a row);
- ``KEY.json``: ``messages`` (user: ``<video>`` + question, assistant: answer, one pair per
  kept QA row), ``qa`` (each pair with its sample_id and judge scores), ``video`` (member
  name), ``duration_s``, ``fps``, ``frame_count``, ``width``, ``height``, ``num_frames`` and the
  packing counts (SPEC.md): text tokens, frames, visual tokens = frames x 256 (a 448x448
  frame is one tile of 256 tokens after the 2x2 merge), total.

KEY is the smallest sample_id of the sample's rows. The order key hashes the group value, so a
video's rows are adjacent; a video whose rows straddle a shard boundary appears in both shards,
each with its own QA pairs (every QA row is still in exactly one shard). ``index.parquet`` has
one row per QA row (its shard, member key and text tokens); a sample's visual tokens are
counted on its first row only, so sums over the index are the shards' totals.
"""
from __future__ import annotations

import json
import math
import re
from typing import Any, Callable

import pyarrow as pa
from pydantic import Field

from pipeline import storage
from stages.tar_write import TarWriter
from stages.shard import INDEX_SCHEMA, ShardParams, ShardStage, TokenCounter, _NOT_SCORES, order_key


class VideoShardParams(ShardParams):
    group_column: str | None = Field("video_hash", description="rows with the same value form one sample (one video, "
                                                               "several QA turns); None: one sample per QA row")
    video_token: str = Field("<video>", description="placeholder for the video in the first user turn")


def _video_order(table: pa.Table, seed: int, group_column: str | None) -> pa.Table:
    """The order key hashes the group (a video's rows end adjacent); the frames, which the shard
    does not store, are dropped before the sort moves the rows."""
    table = table.drop_columns([c for c in ("frames", "frames_ref") if c in table.column_names])
    ids = table.column("sample_id").to_pylist()
    groups = table.column(group_column).to_pylist() if group_column else [None] * len(ids)
    keys = [order_key(seed, f"group\0{g}" if g is not None else s) for g, s in zip(groups, ids)]
    return table.append_column("_order", pa.array(keys, pa.int64()))


def _video_columns() -> set[str]:
    from stages.video_ingest import VideoIngestStage

    return set(VideoIngestStage.produces)


def _scores(row: dict, skip: set[str]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in skip and not k.startswith("_")
            and isinstance(v, (int, float, bool)) and not (isinstance(v, float) and math.isnan(v))}


def _ext(row: dict) -> str:
    ext = (row.get("video_name") or "").rsplit(".", 1)[-1].lower() if "." in (row.get("video_name") or "") else "mp4"
    return ext if re.fullmatch(r"[a-z0-9]{1,5}", ext) else "bin"


def _open_video(row: dict):
    """(file object positioned at the video's first byte, its size)."""
    fs, p = storage.resolve(row["video_path"])
    f = fs.open_input_file(p)
    if row.get("video_offset") is not None:
        f.seek(int(row["video_offset"]))
        return f, int(row["video_size"])
    return f, fs.get_file_info(p).size


def write_video_shard(index: int, name: str, out_dir: str, pieces: list[tuple[int, int]], params: dict,
                      *blocks: pa.Table) -> dict:
    """One shard of video samples (atomically), then its index part (which marks it complete)."""
    p = VideoShardParams(**params)
    counter = TokenCounter(p.tokenizer)
    rows: list[dict] = []
    for (lo, hi), block in zip(pieces, blocks):
        rows.extend(block.slice(lo, hi - lo).to_pylist())
    groups: dict[Any, list[dict]] = {}
    for r in rows:  # adjacent after the sort; a dict also survives an order-key collision
        g = r.get(p.group_column) if p.group_column else None
        groups.setdefault(("g", g) if g is not None else ("row", r["sample_id"]), []).append(r)
    skip = _NOT_SCORES | _video_columns()
    index_rows = []
    with storage.open_output_atomic(storage.join(out_dir, name)) as out:
        with TarWriter(out) as tf:
            for pos, members in enumerate(groups.values()):
                members.sort(key=lambda r: (r.get("qa_index") or 0, r["sample_id"]))
                first = members[0]
                key = min(r["sample_id"] for r in members)
                media = f"{key}.{_ext(first)}"
                messages, qa, text_tokens = [], [], []
                for i, r in enumerate(members):
                    q = (f"{p.video_token}\n" if i == 0 and p.video_token else "") + (r.get("question") or "")
                    messages += [{"role": "user", "content": q}, {"role": "assistant", "content": r.get("answer") or ""}]
                    text_tokens.append(counter(r.get("question")) + counter(r.get("answer")))
                    qa.append({"sample_id": r["sample_id"], "source_key": r.get("source_key"),
                               "question": r.get("question"), "answer": r.get("answer"),
                               "options": json.loads(r["options"]) if r.get("options") else None,
                               "scores": _scores(r, skip)})
                frames = int(first.get("num_frames") or 0)
                visual = frames * p.tokens_per_tile  # one 448x448 tile per frame (SPEC.md)
                meta = {
                    "sample_id": key, "source": first.get("source"), "video_key": first.get("video_key"),
                    "video": media, "video_hash": first.get("video_hash"), "messages": messages, "qa": qa,
                    "duration_s": first.get("duration_s"), "fps": first.get("fps"), "frame_count": first.get("frame_count"),
                    "width": first.get("width"), "height": first.get("height"), "num_frames": frames,
                    "tokens": {"text": sum(text_tokens), "images": 0, "frames": frames, "tiles": frames,
                               "visual": visual, "total": sum(text_tokens) + visual, "tokenizer": p.tokenizer},
                    "bucket": first.get("bucket"),
                }
                data = json.dumps(meta, ensure_ascii=False, sort_keys=True).encode("utf-8")
                tf.add(f"{key}.json", data)
                f, size = _open_video(first)
                with f:
                    tf.add_file(media, size, f)
                for i, r in enumerate(members):
                    index_rows.append({"sample_id": r["sample_id"], "source": r.get("source"),
                                       "source_key": r.get("source_key"), "shard": name, "key": key, "position": pos,
                                       "text_tokens": text_tokens[i], "visual_tokens": visual if i == 0 else 0})
    table = pa.Table.from_pylist(index_rows, schema=INDEX_SCHEMA)
    storage.write_parquet(storage.join(out_dir, "_index", f"{index:06d}.parquet"), table)
    return {"index": index, "name": name, "samples": len(rows)}


class VideoShardStage(ShardStage):
    kind = "video_shard"
    Params = VideoShardParams
    description = ("Write WebDataset shards of videos: original video bytes + .json with the kept QA pairs as "
                   "messages, duration, frame count and visual tokens (frames x 256); one sample per video.")
    writer = staticmethod(write_video_shard)
    member_suffixes = ("json", "<video ext>")

    def input_columns(self) -> dict[str, pa.DataType]:
        cols = {"question": pa.string(), "answer": pa.string(), "video_path": pa.string(),
                "video_offset": pa.int64(), "video_size": pa.int64(), "num_frames": pa.int32()}
        if self.params.group_column:
            cols[self.params.group_column] = pa.string()
        return cols

    def order(self, seed: int) -> tuple[Callable, tuple]:
        return _video_order, (seed, self.params.group_column)
