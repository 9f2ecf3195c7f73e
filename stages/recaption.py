"""recaption: a VLM writes a detailed caption of each image; the original caption is kept.

SAIL-Caption2 rewrites web alt-text into detailed, faithful descriptions. The prompt is a
free-text ``kind: generate`` rubric (``detailed_caption`` by default; ``chart_caption`` for chart
datasets, whose ``chart_spec`` and ``language`` inputs come from columns named in ``fields``).

Which caption do later stages read?
- ``replace_text: false`` (default): ``text`` keeps the original caption and the new one goes to
  ``output_column`` (``recaption``). Point a judge at it with ``fields: {caption: recaption}``;
  ``caption_qa`` picks ``recaption`` by itself when it exists.
- ``replace_text: true``: ``text`` becomes the new caption (so every judge, filter, dedup and the
  shards read it unchanged), the original moves to ``original_column`` (``text_original``), and
  ``output_column`` holds the new caption too.

Output is untrusted: an empty answer, a refusal, one shorter than ``min_chars`` or one cut off at
the token budget (``truncated: error``) makes the row ``error`` with reason ``recaption_parse: ...``
and the raw answer kept in ``recaption_raw`` (which is only filled for such rows); an engine failure
is ``recaption_engine: ...``.
"""
from __future__ import annotations

import re
from typing import Literal

import pandas as pd
import pyarrow as pa
from pydantic import Field, model_validator

from stages.base import ERROR, KEPT, Params, Resources
from stages.generation import EngineStage, restate
from judges.config import EngineConfig

_COLUMN = r"^[A-Za-z_][A-Za-z0-9_]*$"


class RecaptionParams(Params):
    engine: EngineConfig
    rubric: str = Field("detailed_caption", description="a free-text generate rubric: detailed_caption, chart_caption, or a file")
    rubric_dirs: list[str] = Field(default_factory=list, description="folders of extra rubric YAML files")
    fields: dict[str, str] = Field(default_factory=dict,
                                   description="rubric template input -> column holding it (chart_caption: chart_spec, language)")
    image_column: str = Field("image", pattern=_COLUMN)
    image_max_side: int | None = Field(896, ge=32, description="downscale images to this side before captioning (None: as is)")
    output_column: str = Field("recaption", pattern=_COLUMN, description="column that receives the new caption")
    replace_text: bool = Field(False, description="also write the new caption into `text` (original kept in original_column)")
    original_column: str = Field("text_original", pattern=_COLUMN, description="with replace_text: where the original text goes")
    min_chars: int = Field(20, ge=1, description="a shorter answer is malformed (error row)")
    truncated: Literal["error", "keep"] = Field(
        "error", description="an answer that used the whole token budget is cut off: error row, or keep it")
    max_tokens: int | None = Field(None, ge=1, description="override the rubric's answer budget")
    temperature: float | None = Field(None, ge=0, description="override the rubric's temperature")

    @model_validator(mode="after")
    def _check(self):
        from judges.rubric import RubricError, load_rubric

        try:
            rubric = load_rubric(self.rubric, extra_dirs=tuple(self.rubric_dirs))
        except RubricError as e:
            raise ValueError(f"rubric: {e}") from None
        if rubric.kind != "generate" or rubric.fields:
            raise ValueError(f"rubric: {self.rubric!r} is a {rubric.kind} rubric with JSON fields; "
                             "recaption needs a free-text generate rubric such as detailed_caption")
        if rubric.media != "image":
            raise ValueError(f"rubric: {self.rubric!r} takes media {rubric.media!r}; recaption captions images")
        needed = set(rubric.placeholders())
        missing, extra = sorted(needed - set(self.fields)), sorted(set(self.fields) - needed)
        if missing:
            raise ValueError(f"fields: rubric {self.rubric!r} needs input(s) {missing}; map each to a column")
        if extra:
            raise ValueError(f"fields: rubric {self.rubric!r} has no input(s) {extra} (its inputs: {sorted(needed) or 'none'})")
        if self.output_column in {"text", self.image_column, *self.fields.values()}:
            raise ValueError(f"output_column: {self.output_column!r} would overwrite an input column")
        if self.replace_text and self.original_column in {"text", self.image_column, self.output_column}:
            raise ValueError(f"original_column: {self.original_column!r} would overwrite a column this stage needs")
        return self


class RecaptionStage(EngineStage):
    kind = "recaption"
    Params = RecaptionParams
    description = "A VLM writes a detailed caption (detailed_caption / chart_caption rubric); the original text is kept beside it."
    default_resources = Resources(num_cpus=1, num_gpus=0, batch_size=32)

    def input_columns(self) -> dict[str, pa.DataType]:
        cols: dict[str, pa.DataType] = {self.params.image_column: pa.binary()}
        if self.params.replace_text:
            cols["text"] = pa.string()
        cols.update({c: pa.string() for c in self.params.fields.values()})
        return cols

    def output_columns(self) -> dict[str, pa.DataType]:
        p = self.params
        out = {p.output_column: pa.string(), "recaption_raw": pa.string(), "recaption_model": pa.string()}
        if p.replace_text:
            out[p.original_column] = pa.string()
        return out

    def load_rubrics(self) -> None:
        from judges.rubric import load_rubric

        self.rubric = load_rubric(self.params.rubric, extra_dirs=tuple(self.params.rubric_dirs))

    def process(self, batch: pd.DataFrame) -> pd.DataFrame:
        from judges.engines.base import Sampling
        from stages.judge import shrink_image

        p = self.params
        r = self.rubric
        n = len(batch)
        budget = p.max_tokens or r.max_tokens
        sampling = Sampling(max_tokens=budget, temperature=r.temperature if p.temperature is None else p.temperature)
        errors: list[str | None] = [None] * n
        requests, where = [], []
        for i in range(n):
            try:
                image = shrink_image(bytes(batch[p.image_column].iloc[i]), p.image_max_side)
                sample = {f: _text(batch[c].iloc[i]) for f, c in p.fields.items()}
                requests.append(r.build_request(sample, images=(image,), sampling=sampling))
                where.append(i)
            except Exception as e:  # an undecodable image or a sample field the template rejects
                errors[i] = f"recaption_input: {type(e).__name__}: {e}"
        results = self.engine.generate(requests) if requests else []
        captions: list[str | None] = [None] * n
        raw: list[str | None] = [None] * n
        for i, res in zip(where, results):
            if res.error:
                errors[i] = restate(res.error, "recaption")
                continue
            parsed = r.parse(res.text)
            text = parsed.values["text"] if parsed.ok else None
            if not parsed.ok:
                errors[i] = restate(parsed.error, "recaption")
            elif len(text) < p.min_chars:
                errors[i] = f"recaption_parse: too short ({len(text)} < {p.min_chars} characters)"
            elif p.truncated == "error" and res.completion_tokens >= budget:
                errors[i] = f"recaption_parse: cut off at the token budget ({budget} tokens)"
            if errors[i]:
                raw[i] = res.text
            else:
                captions[i] = _tidy(text)
        batch[p.output_column] = captions
        batch["recaption_raw"] = raw
        batch["recaption_model"] = p.engine.model
        ok = [c is not None for c in captions]
        if p.replace_text:
            batch[p.original_column] = batch["text"]
            batch["text"] = [c if good else t for c, t, good in zip(captions, batch["text"], ok)]
        for i, err in enumerate(errors):
            if err and batch["status"].iloc[i] == KEPT:
                batch.iloc[i, batch.columns.get_loc("status")] = ERROR
                batch.iloc[i, batch.columns.get_loc("reason")] = err
        return batch


def _text(value) -> str | None:
    return None if value is None or (isinstance(value, float) and pd.isna(value)) else str(value)


def _tidy(text: str) -> str:
    """Trailing spaces per line and runs of blank lines go; paragraphs stay."""
    lines = [ln.rstrip() for ln in text.strip().splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines))
