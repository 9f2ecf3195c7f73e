"""judge: score rows with a VLM (or LLM) against one or more rubrics.

The judge computes and stores scores; thresholds are applied by a ``filter``
stage after it, so changing a threshold never reruns the model. Output is
untrusted: only schema-valid answers count. A row whose answer does not parse
becomes ``error`` with reason ``judge_parse: ...`` and the raw answer kept in
``judge_raw``; a refusal is stored as -1 where the rubric allows it. No score
is ever invented or clamped.

Requests are ordered so shared parts come first (rubric text, then the image,
then the sample's text), and when several rubrics judge one image their
requests are sent together, adjacent, so vLLM's prefix cache computes the
image once. ``combine: true`` scores all dimensions in one answer instead. With
``frames_column`` (a list<binary> column, e.g. a video's sampled frames) all frames of a row are
sent in order as its images.
"""
from __future__ import annotations

import io
import json

import pandas as pd
import pyarrow as pa
from pydantic import Field

from judges.config import EngineConfig, make_engine
from stages.base import ERROR, KEPT, Params, Resources, Stage

_ARROW = {"integer": pa.int32(), "boolean": pa.bool_(), "string": pa.string(), "number": pa.float32()}


class JudgeParams(Params):
    engine: EngineConfig
    rubrics: list[str] = Field(default_factory=lambda: ["vir_score", "ita_score"], min_length=1)
    combine: bool = Field(False, description="score all rubrics in one answer (one schema with a field per dimension)")
    rubric_dirs: list[str] = Field(default_factory=list, description="folders of extra rubric YAML files")
    fields: dict[str, str] = Field(default_factory=lambda: {"caption": "text"},
                                   description="rubric template field -> column holding it")
    image_column: str | None = Field("image", description="column with image bytes; None for text-only rubrics")
    image_max_side: int | None = Field(448, ge=32, description="downscale images to this side before judging (None: as is)")
    frames_column: str | None = Field(None, description="list<binary> column of video frames (JPEG), all sent in order "
                                                        "as the sample's images; replaces image_column")
    max_tokens: int | None = Field(None, ge=1, description="override the rubrics' answer budget")
    temperature: float = Field(0.0, ge=0)


def load_rubrics(params: JudgeParams):
    from judges.rubric import combine_rubrics, load_rubric

    rubrics = [load_rubric(name, extra_dirs=tuple(params.rubric_dirs)) for name in params.rubrics]
    if params.combine and len(rubrics) > 1:
        rubrics = [combine_rubrics(rubrics, name="+".join(params.rubrics))]
    return rubrics


def shrink_image(data: bytes, max_side: int | None) -> bytes:
    """Judge-sized JPEG: the model sees at most max_side pixels, so don't ship more."""
    from PIL import Image

    if max_side is None:
        return data
    im = Image.open(io.BytesIO(data))
    if max(im.size) <= max_side and im.format in ("JPEG", "PNG"):
        return data
    if im.format == "JPEG":
        im.draft("RGB", (max_side, max_side))
    im = im.convert("RGB")
    im.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


class JudgeStage(Stage):
    kind = "judge"
    stateful = True
    code_deps = ("judges",)
    Params = JudgeParams
    description = "Score rows with a VLM/LLM against rubrics (vLLM, OpenAI-compatible or transformers); strict JSON parsing."
    default_resources = Resources(num_cpus=1, num_gpus=0, batch_size=64)

    def input_columns(self) -> dict[str, pa.DataType]:
        cols = {c: pa.string() for c in self.params.fields.values()}
        if self.params.frames_column:
            cols[self.params.frames_column] = pa.list_(pa.binary())
        elif self.params.image_column:
            cols[self.params.image_column] = pa.binary()
        return cols

    def output_columns(self) -> dict[str, pa.DataType]:
        out: dict[str, pa.DataType] = {}
        for rubric in load_rubrics(self.params):
            for f in rubric.fields:
                out[f.name] = _ARROW.get(f.type, pa.string())
        out["judge_raw"] = pa.string()
        out["judge_model"] = pa.string()
        return out

    def setup(self) -> None:
        self.rubrics = load_rubrics(self.params)
        self.engine = make_engine(self.params.engine)
        self.engine.setup()

    def process(self, batch: pd.DataFrame) -> pd.DataFrame:
        from judges.engines.base import Sampling

        p = self.params
        n = len(batch)
        images: list[tuple[bytes, ...]] = [()] * n
        row_error: list[str | None] = [None] * n
        if p.frames_column:
            for i, frames in enumerate(batch[p.frames_column]):
                try:
                    images[i] = tuple(shrink_image(bytes(f), p.image_max_side) for f in (frames if frames is not None else ()))
                    if not images[i]:
                        row_error[i] = "judge_image: no frames"
                except Exception as e:
                    row_error[i] = f"judge_image: {type(e).__name__}: {e}"
        elif p.image_column:
            for i, data in enumerate(batch[p.image_column]):
                try:
                    images[i] = (shrink_image(bytes(data), p.image_max_side),)
                except Exception as e:
                    row_error[i] = f"judge_image: {type(e).__name__}: {e}"
        requests, where = [], []
        samples: list[dict] = [{} for _ in range(n)]
        for i in range(n):  # all rubrics of one image adjacent: the image prefix is computed once
            if row_error[i]:
                continue
            sample = {f: ("" if pd.isna(batch[c].iloc[i]) else str(batch[c].iloc[i])) for f, c in p.fields.items()}
            samples[i] = sample
            for r in self.rubrics:
                sampling = Sampling(max_tokens=p.max_tokens or r.max_tokens, temperature=p.temperature)
                requests.append(r.build_request(sample, images=images[i], sampling=sampling))
                where.append((i, r))
        results = self.engine.generate(requests) if requests else []
        values: dict[str, list] = {c: [None] * n for c in self.output_columns() if c not in ("judge_raw", "judge_model")}
        raw: list[dict] = [{} for _ in range(n)]
        for (i, rubric), res in zip(where, results):
            raw[i][rubric.name] = res.text
            if res.error:
                row_error[i] = row_error[i] or res.error
                continue
            parsed = rubric.parse(res.text, samples[i])
            if parsed.error:
                row_error[i] = row_error[i] or parsed.error
                continue
            for k, v in parsed.values.items():
                if k in values:
                    values[k][i] = json.dumps(v, ensure_ascii=False) if isinstance(v, (list, dict)) else v
        for col, vals in values.items():
            batch[col] = vals
        batch["judge_raw"] = [json.dumps(r, ensure_ascii=False) if r else None for r in raw]
        batch["judge_model"] = p.engine.model
        for i, err in enumerate(row_error):
            if err and batch["status"].iloc[i] == KEPT:
                batch.iloc[i, batch.columns.get_loc("status")] = ERROR
                batch.iloc[i, batch.columns.get_loc("reason")] = err
        return batch

    def teardown(self) -> None:
        if getattr(self, "engine", None) is not None:
            self.engine.close()
