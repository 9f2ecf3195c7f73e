"""Export judge labels as chat-format JSONL, to fine-tune a small judge on a big judge's answers.

SPEC.md: zero-shot small VLMs judge badly; the report distils a strong judge
into small ones. So a run judged by a large model can be exported as training
data: one line per sample whose answer was schema-valid, with the exact
system and user text the judge saw, the image written beside the file, and
the answer as the assistant turn.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq

from pipeline import storage
from pipeline.checkpoint import Checkpoint


def export_judge_labels(run_dir: str, rubric: str, out_dir: str, stage: str | None = None) -> dict:
    from judges.rubric import load_rubric
    from manifests.reader import read_run_record
    from stages.judge import JudgeParams, shrink_image

    record = read_run_record(run_dir)
    judges = [s for s, info in record["stages"].items() if info["kind"] == "judge"]
    if stage:
        if stage not in judges:
            raise FileNotFoundError(f"{run_dir}: no judge stage {stage!r}; judge stages: {', '.join(judges) or 'none'}")
        judges = [stage]
    cfg = {s["name"]: s for s in record["config"]["stages"]}
    matches = []
    for j in judges:
        params = JudgeParams(**{k: v for k, v in cfg[j].items() if k not in ("name", "kind", "after", "checkpoint", "resources")})
        for name in params.rubrics:
            if name == rubric or name.split("_")[0] == rubric:
                matches.append((j, params, name))
    if not matches:
        raise FileNotFoundError(f"{run_dir}: no judge stage scored a rubric matching {rubric!r}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    written = skipped = 0
    with open(out / "labels.jsonl", "w", encoding="utf-8") as fh:
        for j, params, name in matches:
            r = load_rubric(name, extra_dirs=tuple(params.rubric_dirs))
            ckpt = Checkpoint(run_dir, record["stages"][j]["segment"])
            for frag in ckpt.fragments():
                fs, path = storage.resolve(frag.uri)
                rows = pq.read_table(path, filesystem=fs).to_pylist()
                if params.image_column:  # checkpoints hold image references (pipeline/media.py)
                    from stages.shard import with_media

                    with_media(rows, params.image_column)
                for row in rows:
                    raw = json.loads(row.get("judge_raw") or "{}").get(name)
                    parsed = r.parse(raw, {f: row.get(c) or "" for f, c in params.fields.items()}) if raw else None
                    if parsed is None or parsed.error:
                        skipped += 1
                        continue
                    sample = {f: row.get(c) or "" for f, c in params.fields.items()}
                    user: list[dict] = []
                    if params.image_column and row.get(params.image_column):
                        img = out / "images" / f"{row['sample_id']}.jpg"
                        img.write_bytes(shrink_image(row[params.image_column], params.image_max_side))
                        user.append({"type": "image", "image": os.path.join("images", img.name)})
                    user.append({"type": "text", "text": r.user_text(sample)})
                    fh.write(json.dumps({
                        "sample_id": row["sample_id"], "rubric": name, "judge_model": row.get("judge_model"),
                        "messages": [
                            {"role": "system", "content": r.system_prompt()},
                            {"role": "user", "content": user},
                            {"role": "assistant", "content": json.dumps(parsed.values, separators=(",", ":"))},
                        ],
                    }, ensure_ascii=False) + "\n")
                    written += 1
    return {"labels": written, "skipped": skipped, "path": str(out / "labels.jsonl")}
