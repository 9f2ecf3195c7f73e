"""instruction_export: write question-answer rows as instruction samples for SAIL-Instruction2.

The output is the instruction-corpus format that the Instruction2 ingest reads (keep the two in
step). Under ``RUN_DIR/instructions/<corpus>/``:

- ``<corpus>-000000.jsonl``, ``<corpus>-000001.jsonl``, ...: ``samples_per_file`` samples each, in
  a deterministic order (a seeded hash of ``sample_id``, as ``shard`` orders shards). One sample
  per line::

    {"id": <sample_id>, "source": <source>, "images": ["images/<sample_id>.<ext>"],
     "messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": Q1}]},
                  {"role": "assistant", "content": [{"type": "text", "text": A1}]},
                  {"role": "user", "content": [{"type": "text", "text": Q2}]}, ...],
     "meta": {"origin": "caption_qa", "caption": <caption>}}

  The ``{"type": "image"}`` parts refer to ``images`` in order; image paths are relative to the
  JSONL file. A row without image bytes becomes a text-only sample (``images: []``, no image part).
- ``images/<sample_id>.<ext>``: the image bytes as ingested (``ext`` from the decoded format).
- ``_index/<file number>.parquet`` (written after the file and its images, so a rerun skips a
  finished file), ``index.parquet`` (sample_id -> file, line, image, turns) and
  ``instructions.json`` (file list and counts).

Every file is written atomically with fixed content and order, so a rerun writes byte-identical
files. Samples are multi-turn: all supported pairs of one image form one conversation.
"""
from __future__ import annotations

import json
import re
from typing import Callable

import pyarrow as pa
from pydantic import Field

from pipeline import storage
from pipeline.remote_call import off_driver
from stages.base import Params, Resources, Stage

FORMAT = "sailcurate-instruction-jsonl/1"


class InstructionExportParams(Params):
    corpus: str = Field("caption_qa", pattern=r"^[A-Za-z0-9_.-]+$", description="file name prefix and folder: instructions/<corpus>/")
    samples_per_file: int = Field(1000, ge=1)
    seed: int | None = Field(None, description="order seed; defaults to the pipeline's seed")
    pairs_column: str = Field("qa_pairs", description="JSON list of {question, answer}")
    caption_column: str = Field("qa_caption", description="caption recorded in meta.caption")
    image_column: str | None = Field("image", description="image bytes; None writes text-only samples")
    origin: str = Field("caption_qa", description="meta.origin of every sample")


INDEX_SCHEMA = pa.schema([
    ("sample_id", pa.string()), ("source", pa.string()), ("source_key", pa.string()), ("file", pa.string()),
    ("line", pa.int32()), ("image", pa.string()), ("turns", pa.int32()),
])


def image_ext(row: dict) -> str:
    """The file extension of a row's image: its decoded format, else its ingested name, else bin."""
    ext = (row.get("image_format") or (row.get("image_name") or "").rsplit(".", 1)[-1] or "bin").lower()
    ext = {"jpeg": "jpg"}.get(ext, ext)
    return ext if re.fullmatch(r"[a-z0-9]{1,5}", ext) else "bin"


def messages_for(pairs: list[dict], with_image: bool) -> list[dict]:
    """One multi-turn conversation: the image in the first user turn, then Q/A alternating."""
    out: list[dict] = []
    for k, pair in enumerate(pairs):
        content = [{"type": "image"}] if (k == 0 and with_image) else []
        content.append({"type": "text", "text": pair["question"]})
        out.append({"role": "user", "content": content})
        out.append({"role": "assistant", "content": [{"type": "text", "text": pair["answer"]}]})
    return out


def write_file(index: int, name: str, out_dir: str, pieces: list[tuple[int, int]], params: dict, *blocks: pa.Table) -> dict:
    """Write one JSONL file and its images (each atomically), then its index part, which marks it done."""
    p = InstructionExportParams(**params)
    rows: list[dict] = []
    for (lo, hi), block in zip(pieces, blocks):
        rows.extend(block.slice(lo, hi - lo).to_pylist())
    if p.image_column:
        from stages.shard import with_media

        with_media(rows, p.image_column)
    lines, index_rows = [], []
    for line, row in enumerate(rows):
        sid = row["sample_id"]
        pairs = json.loads(row[p.pairs_column]) if row.get(p.pairs_column) else []
        data = row.get(p.image_column) if p.image_column else None
        image = f"images/{sid}.{image_ext(row)}" if data is not None else None
        if image:
            storage.write_bytes(storage.join(out_dir, image), data)
        sample = {
            "id": sid, "source": row.get("source"), "images": [image] if image else [],
            "messages": messages_for(pairs, with_image=image is not None),
            "meta": {"origin": p.origin, "caption": row.get(p.caption_column)},
        }
        lines.append(json.dumps(sample, ensure_ascii=False))
        index_rows.append({"sample_id": sid, "source": row.get("source"), "source_key": row.get("source_key"),
                           "file": name, "line": line, "image": image, "turns": len(pairs)})
    storage.write_bytes(storage.join(out_dir, name), ("\n".join(lines) + "\n" if lines else "").encode("utf-8"))
    storage.write_parquet(storage.join(out_dir, "_index", f"{index:06d}.parquet"),
                          pa.Table.from_pylist(index_rows, schema=INDEX_SCHEMA))
    return {"index": index, "name": name, "samples": len(rows)}


class InstructionExportStage(Stage):
    kind = "instruction_export"
    mode = "global"
    sink = True
    Params = InstructionExportParams
    description = "Write QA rows as instruction samples (JSONL + images/, deterministic order) for SAIL-Instruction2."
    default_resources = Resources(num_cpus=1, batch_size=1000)

    def input_columns(self) -> dict[str, pa.DataType]:
        p = self.params
        cols = {p.pairs_column: pa.string(), p.caption_column: pa.string()}
        if p.image_column:
            cols[p.image_column] = pa.binary()
        return cols

    def manifest_columns(self) -> list[str]:
        return ["file", "line", "image", "turns"]

    def run_global(self, ds, run_dir: str, seed: int, resume: bool, log: Callable[[str], None]) -> list[str]:
        """Returns the index part URIs, from which the runner writes this stage's manifest."""
        import ray

        from stages.shard import _add_order, sort_by_order, write_files

        p = self.params
        out_dir = storage.join(run_dir, "instructions", p.corpus)
        if not resume:
            storage.rmtree(out_dir)
        storage.makedirs(storage.join(out_dir, "_index"))
        seed = p.seed if p.seed is not None else seed
        ds = ds.map_batches(_add_order, fn_args=(seed,), batch_format="pyarrow", batch_size=None)
        refs = sort_by_order(ds, p.samples_per_file)
        writer = ray.remote(num_cpus=self.default_resources.num_cpus)(write_file)
        total, n_files = write_files(refs, p.samples_per_file, lambda i: f"{p.corpus}-{i:06d}.jsonl", out_dir, writer,
                                     p.model_dump(mode="json"), f"{self.name}: ", "files", log)
        parts = [storage.join(out_dir, "_index", f"{i:06d}.parquet") for i in range(n_files)]
        # Reading every index part is data work: a task's, not the driver's (pipeline/remote_call.py).
        files, turns = off_driver(_publish_index, out_dir, p.corpus, n_files, parts)
        storage.write_json(storage.join(out_dir, "instructions.json"), {
            "format": FORMAT, "corpus": p.corpus, "origin": p.origin, "samples_per_file": p.samples_per_file,
            "seed": seed, "total_samples": total, "total_turns": turns, "num_files": n_files, "files": files,
            "images": "images/", "index": "index.parquet",
        })
        self.run_stats = {"samples": total, "turns": turns, "files": n_files}
        return parts


def _publish_index(out_dir: str, corpus: str, n_files: int, parts: list[str]) -> tuple[list[dict], int]:
    """index.parquet, and instructions.json's file list and turn total, from one read of each
    index part; files numbered past the end, and images no sample refers to, belong to an earlier
    run and are removed. Runs off the driver: the images in use are a set as long as the corpus."""
    from stages.shard import _concat_parquet, remove_past_end

    remove_past_end(out_dir, corpus, ".jsonl", n_files)
    summaries = _concat_parquet(parts, storage.join(out_dir, "index.parquet"), INDEX_SCHEMA, _part_summary)
    used = set().union(*(images for _, _, images in summaries))
    for info in storage.list_files(storage.join(out_dir, "images")):
        if f"images/{info.base_name}" not in used:
            storage.remove(storage.join(out_dir, "images", info.base_name))
    files = [{"name": f"{corpus}-{i:06d}.jsonl", "samples": rows} for i, (rows, _, _) in enumerate(summaries)]
    return files, sum(turns for _, turns, _ in summaries)


def _part_summary(table: pa.Table) -> tuple[int, int, set[str]]:
    """(samples, turns, images referred to) of one file's index part."""
    return (table.num_rows, sum(table.column("turns").to_pylist()),
            {x for x in table.column("image").to_pylist() if x})
