"""instruction_shard: WebDataset shards of conversations with any number of images per sample.

The shard machinery is ``shard``'s (deterministic order, N samples per shard, atomic writes,
resume, ``index.parquet``, ``shards.json``; ``directory`` names the output folder, so one
pipeline can write several splits). What differs is the sample:

- ``KEY.json``: ``messages`` (the message schema of ``instructions/schema.py``, read from
  ``messages_column``; a message may carry ``loss``), ``images`` (the member names, in image-part
  order), the ``extra_columns`` asked for (e.g. ``reference``, ``pass_rate``, ``think_mode``),
  numeric scores, ``meta``, ``bucket`` and the packing counts (SPEC.md): text tokens over all
  messages, images, tiles and visual tokens summed over the images (dynamic 448 px tiles, see
  ``stages/shard.py``), total;
- ``KEY.<i>.<ext>``: image *i*'s bytes as ingested (``ext`` from the bytes' magic number).
"""
from __future__ import annotations

import io
import json
import math

import pyarrow as pa
from pydantic import Field

from pipeline import storage
from stages.tar_write import TarWriter
from stages.shard import (
    INDEX_SCHEMA, ShardParams, ShardStage, TokenCounter, _NOT_SCORES, visual_tokens, with_media,
)

_EXT = {"image/png": "png", "image/jpeg": "jpg", "image/gif": "gif", "image/webp": "webp", "image/bmp": "bmp",
        "image/tiff": "tif"}
_SKIP = _NOT_SCORES | {"images", "messages", "image_names", "num_images", "num_turns", "question", "answer"}


class InstructionShardParams(ShardParams):
    messages_column: str = Field("messages", description="column holding the conversation (JSON list of messages)")
    images_column: str = Field("images", description="list<binary> column of the sample's images")
    extra_columns: list[str] = Field(default_factory=list, description="columns copied into each sample's .json")


def _image_size(data: bytes) -> tuple[int | None, int | None]:
    from PIL import Image

    try:
        return Image.open(io.BytesIO(data)).size
    except Exception:  # noqa: BLE001 (validated upstream; an unreadable one counts no tiles)
        return None, None


def write_instruction_shard(index: int, name: str, out_dir: str, pieces: list[tuple[int, int]], params: dict,
                            *blocks: pa.Table) -> dict:
    """Write one shard (atomically), then its index part, which marks it complete."""
    from judges.engines.base import image_mime

    p = InstructionShardParams(**params)
    counter = TokenCounter(p.tokenizer)
    rows: list[dict] = []
    for (lo, hi), block in zip(pieces, blocks):
        rows.extend(block.slice(lo, hi - lo).to_pylist())
    with_media(rows, p.images_column)  # checkpoints hold references (pipeline/media.py)
    index_rows = []
    with storage.open_output_atomic(storage.join(out_dir, name)) as out:
        with TarWriter(out) as tf:
            for pos, row in enumerate(rows):
                key = row["sample_id"]
                messages = json.loads(row.get(p.messages_column) or "[]")
                images = [bytes(b) for b in (row.get(p.images_column) or [])]
                members, names = [], []
                tiles = vtok = 0
                for i, data in enumerate(images):
                    member = f"{key}.{i}.{_EXT.get(image_mime(data), 'bin')}"
                    names.append(member)
                    members.append((member, data))
                    t, v = visual_tokens(*_image_size(data), p)
                    tiles, vtok = tiles + t, vtok + v
                text = "\n".join(part.get("text", "") for m in messages for part in m.get("content", [])
                                 if isinstance(part, dict) and part.get("type") == "text")
                ttok = counter(text)
                meta = None
                if row.get("meta"):
                    try:
                        meta = json.loads(row["meta"])
                    except ValueError:
                        meta = row["meta"]
                extra = set(p.extra_columns)
                sample = {
                    "sample_id": key, "source": row.get("source"), "source_key": row.get("source_key"),
                    "messages": messages, "images": names, "meta": meta, "bucket": row.get("bucket"),
                    **{c: row.get(c) for c in p.extra_columns},
                    "scores": {k: v for k, v in row.items() if k not in _SKIP and k not in extra and not k.startswith("_")
                               and isinstance(v, (int, float, bool)) and not (isinstance(v, float) and math.isnan(v))},
                    "tokens": {"text": ttok, "images": len(images), "tiles": tiles, "visual": vtok,
                               "total": ttok + vtok, "tokenizer": p.tokenizer},
                }
                members.insert(0, (f"{key}.json", json.dumps(sample, ensure_ascii=False, sort_keys=True,
                                                              default=str).encode("utf-8")))
                for mname, data in members:
                    tf.add(mname, data)
                index_rows.append({"sample_id": key, "source": row.get("source"), "source_key": row.get("source_key"),
                                   "shard": name, "key": key, "position": pos, "text_tokens": ttok, "visual_tokens": vtok})
    storage.write_parquet(storage.join(out_dir, "_index", f"{index:06d}.parquet"),
                          pa.Table.from_pylist(index_rows, schema=INDEX_SCHEMA))
    return {"index": index, "name": name, "samples": len(rows)}


class InstructionShardStage(ShardStage):
    kind = "instruction_shard"
    Params = InstructionShardParams
    description = "Write conversation samples (messages + several images each) as WebDataset shards, one folder per split."
    writer = staticmethod(write_instruction_shard)
    member_suffixes = ("json", "<i>.<image ext>")

    def input_columns(self) -> dict[str, pa.DataType]:
        return {self.params.messages_column: pa.string(), self.params.images_column: pa.list_(pa.binary()),
                **{c: pa.null() for c in self.params.extra_columns}}
