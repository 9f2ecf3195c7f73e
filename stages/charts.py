"""Chart captions (SAIL-Caption2): spec -> image -> caption and QA pairs, English and Chinese.

Stage kinds:
- ``chart_spec`` (stateful): a language model writes a chart specification as JSON for the topic
  in each row. Chart type, language (English/Chinese at a configurable ratio) and number of points
  are drawn per row from the seed and sample id; they are pinned in the prompt and in the JSON
  schema of the answer (structured output). The answer is validated (``charts.spec``): an invalid
  one is an ``error`` row whose reason names the problem, with the raw answer in ``chart_raw``.
- ``chart_render`` (map): validates the spec again (specs may also come from files), draws it
  with matplotlib (``charts.render``: headless Agg, CJK font for Chinese, no tofu), and derives
  the caption (``text``) and QA pairs (``qa``, JSON) from the spec's values (``charts.derive``).
- ``chart_rephrase`` (stateful, optional): a model rewords caption and answers; each rewording is
  checked against the spec's values (``charts.check``) and, where it disagrees, the derived text
  is kept (``on_mismatch: fallback``) or the row is dropped (``drop``), with the reason.
- ``chart_language`` (map): just the per-row language choice, for recaptioning existing chart
  datasets with the ``chart_caption`` rubric (its ``language`` input takes ``language_name``).

Nothing a model writes is executed: a spec is JSON data checked against a schema and drawn by
fixed code; labels are drawn as plain text (mathtext and TeX off).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from typing import Any, Literal

import pandas as pd
import pyarrow as pa
from pydantic import Field, field_validator, model_validator

from charts.spec import CHART_TYPES, LANGUAGE_NAMES, ChartType, SpecLimits
from judges.config import EngineConfig
from stages.base import DROPPED, ERROR, KEPT, Params, Resources, Stage
from stages.generation import EngineStage

LanguageWeights = dict[Literal["en", "zh"], float]


def _hash64(seed: int, sample_id: str, salt: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}\0{salt}\0{sample_id}".encode(), digest_size=8).digest(), "big")


def row_rng(seed: int, sample_id: str, salt: str) -> random.Random:
    """A random stream for one row: the same seed and sample id always give the same choices."""
    return random.Random(_hash64(seed, sample_id, salt))


def choose_language(seed: int, sample_id: str, weights: dict[str, float]) -> str:
    """'en' or 'zh' with probability proportional to ``weights``, fixed by seed and sample id."""
    total = sum(weights.values())
    u = _hash64(seed, sample_id, "language") / 2.0 ** 64 * total
    acc, last = 0.0, None
    for lang in ("en", "zh"):
        w = weights.get(lang, 0.0)
        if w > 0:
            acc += w
            last = lang
            if u < acc:
                return lang
    return last or "en"


def _check_weights(v: dict[str, float]) -> dict[str, float]:
    if any(w < 0 for w in v.values()) or sum(v.values()) <= 0:
        raise ValueError("language weights are >= 0 and at least one is > 0, e.g. {en: 1, zh: 1}")
    return v


def _row_status(batch: pd.DataFrame, decisions: list[tuple[str, str] | None]) -> None:
    """Apply per-row (status, reason) decisions to rows that are still kept."""
    for i, d in enumerate(decisions):
        if d is not None and batch["status"].iloc[i] == KEPT:
            batch.iloc[i, batch.columns.get_loc("status")] = d[0]
            batch.iloc[i, batch.columns.get_loc("reason")] = d[1]


# --------------------------------------------------------------------------------------------------
# chart_language
# --------------------------------------------------------------------------------------------------

class ChartLanguageParams(Params):
    languages: LanguageWeights = Field(default_factory=lambda: {"en": 1.0, "zh": 1.0},
                                       description="relative shares of English and Chinese rows (default 1:1)")
    seed: int = Field(0, description="with the sample id, fixes each row's language")

    @field_validator("languages")
    @classmethod
    def _weights(cls, v):
        return _check_weights(v)


class ChartLanguageStage(Stage):
    kind = "chart_language"
    Params = ChartLanguageParams
    description = "Choose English or Chinese per row (configurable ratio, fixed by seed and sample id)."
    produces = {"chart_language": pa.string(), "language_name": pa.string()}
    default_resources = Resources(num_cpus=0.25, batch_size=1024)

    def process(self, batch: pd.DataFrame) -> pd.DataFrame:
        p = self.params
        langs = [choose_language(p.seed, sid, p.languages) for sid in batch["sample_id"]]
        batch["chart_language"] = langs
        batch["language_name"] = [LANGUAGE_NAMES[x] for x in langs]
        return batch


# --------------------------------------------------------------------------------------------------
# chart_spec
# --------------------------------------------------------------------------------------------------

class ChartSpecParams(Params):
    engine: EngineConfig
    rubric: str = Field("chart_spec", description="rubric (prompt) the model gets; a name or a YAML path")
    rubric_dirs: list[str] = Field(default_factory=list, description="folders of extra rubric YAML files")
    topic_column: str = Field("text", description="column holding each row's topic")
    chart_types: list[ChartType] = Field(default_factory=lambda: list(CHART_TYPES), min_length=1,
                                         description="chart types drawn uniformly per row")
    languages: LanguageWeights = Field(default_factory=lambda: {"en": 1.0, "zh": 1.0},
                                       description="relative shares of English and Chinese charts (default 1:1)")
    points: tuple[int, int] = Field((4, 8), description="range of categories / pie slices / heatmap columns / "
                                                        "scatter points per series, drawn per row")
    samples: tuple[int, int] = Field((20, 40), description="range of observations per series for histogram and box")
    limits: SpecLimits = Field(default_factory=SpecLimits)
    max_tokens: int | None = Field(None, ge=1, description="answer budget; default: the rubric's")
    temperature: float | None = Field(None, ge=0, description="default: the rubric's")
    seed: int = Field(0, description="with the sample id, fixes each row's chart type, language and size")

    @field_validator("languages")
    @classmethod
    def _weights(cls, v):
        return _check_weights(v)

    @model_validator(mode="after")
    def _ranges(self):
        for name in ("points", "samples"):
            lo, hi = getattr(self, name)
            if not 1 <= lo <= hi:
                raise ValueError(f"{name}: a range [low, high] with 1 <= low <= high, got [{lo}, {hi}]")
        if len(set(self.chart_types)) != len(self.chart_types):
            raise ValueError("chart_types: listed twice")
        return self


def plan_chart(p: ChartSpecParams, sample_id: str) -> tuple[str, str, int]:
    """The (chart type, language, points) a row asks for: fixed by seed and sample id."""
    from charts.spec import SAMPLE_TYPES, points_bounds

    rng = row_rng(p.seed, sample_id, "chart")
    chart_type = rng.choice(p.chart_types)
    lo, hi = p.samples if chart_type in SAMPLE_TYPES else p.points
    blo, bhi = points_bounds(chart_type, p.limits)
    points = min(max(rng.randint(lo, hi), blo), bhi)
    return chart_type, choose_language(p.seed, sample_id, p.languages), points


class ChartSpecStage(EngineStage):
    """``setup(engine=None)`` builds the engine from config, or takes a live one (tests, benchmarks)."""

    kind = "chart_spec"
    code_deps = ("judges", "charts")
    Params = ChartSpecParams
    description = "A language model writes a declarative chart spec (JSON, schema-constrained) per topic; invalid -> error row."
    requires = {"text": pa.string()}   # the default topic_column; input_columns() follows the config
    produces = {
        "chart_spec": pa.string(), "chart_type": pa.string(), "chart_language": pa.string(),
        "chart_topic": pa.string(), "chart_raw": pa.string(), "chart_model": pa.string(),
    }
    default_resources = Resources(num_cpus=1, num_gpus=0, batch_size=64)

    def input_columns(self) -> dict[str, pa.DataType]:
        return {self.params.topic_column: pa.string()}

    def load_rubrics(self) -> None:
        from judges.rubric import load_rubric

        self.rubric = load_rubric(self.params.rubric, extra_dirs=tuple(self.params.rubric_dirs))

    def process(self, batch: pd.DataFrame) -> pd.DataFrame:
        from charts.spec import SpecError, parse_spec, request_schema
        from judges.engines.base import Sampling

        p = self.params
        n = len(batch)
        decisions: list[tuple[str, str] | None] = [None] * n
        out: dict[str, list[Any]] = {c: [None] * n for c in self.produces}
        requests, where = [], []
        for i, (sid, topic) in enumerate(zip(batch["sample_id"], batch[p.topic_column])):
            chart_type, lang, points = plan_chart(p, sid)
            out["chart_type"][i], out["chart_language"][i] = chart_type, lang
            topic = "" if topic is None or (isinstance(topic, float) and pd.isna(topic)) else str(topic).strip()
            out["chart_topic"][i] = topic
            if not topic:
                decisions[i] = (ERROR, f"chart_spec: empty topic in column {p.topic_column!r}")
                continue
            sample = {"topic": topic, "chart_type": chart_type, "language": LANGUAGE_NAMES[lang], "points": points}
            seed = _hash64(p.seed, sid, "sampling") >> 33   # a per-request sampling seed (where the engine takes one)
            sampling = Sampling(max_tokens=p.max_tokens or self.rubric.max_tokens,
                                temperature=self.rubric.temperature if p.temperature is None else p.temperature,
                                seed=seed)
            req = self.rubric.build_request(sample, sampling=sampling)
            requests.append(dataclasses.replace(req, json_schema=request_schema(chart_type, lang, points, p.limits)))
            where.append(i)
        results = self.engine.generate(requests) if requests else []
        for i, res in zip(where, results):
            out["chart_raw"][i] = res.text
            if res.error:
                decisions[i] = (ERROR, f"chart_spec: engine: {res.error}")
                continue
            try:
                spec = parse_spec(res.text or "", p.limits)
            except SpecError as e:
                decisions[i] = (ERROR, f"chart_spec: {e}")
                continue
            if (spec.chart_type, spec.language) != (out["chart_type"][i], out["chart_language"][i]):
                decisions[i] = (ERROR, f"chart_spec: asked for a {out['chart_type'][i]} chart in "
                                       f"{out['chart_language'][i]}, got {spec.chart_type} in {spec.language}")
                continue
            out["chart_spec"][i] = spec.to_json()
        out["chart_model"] = [p.engine.model] * n
        for c, vals in out.items():
            batch[c] = vals
        _row_status(batch, decisions)
        return batch


# --------------------------------------------------------------------------------------------------
# chart_render
# --------------------------------------------------------------------------------------------------

class ChartRenderParams(Params):
    spec_column: str = Field("chart_spec", description="column holding the spec JSON")
    width: int = Field(800, ge=64, le=4096, description="image width in pixels")
    height: int = Field(600, ge=64, le=4096, description="image height in pixels")
    dpi: int = Field(100, ge=50, le=600)
    cjk_font: str = Field("auto", description="font file for Chinese charts; 'auto' finds an installed CJK font")
    max_qa: int = Field(5, ge=0, le=20, description="QA pairs kept per chart (chosen per row from the candidates)")
    limits: SpecLimits = Field(default_factory=SpecLimits)
    seed: int = Field(0, description="with the sample id, fixes which values the QA pairs ask about")


class ChartRenderStage(Stage):
    kind = "chart_render"
    code_deps = ("charts",)
    Params = ChartRenderParams
    description = "Render a chart spec to PNG (matplotlib Agg, CJK font) and derive caption + QA pairs from its values."
    requires = {"chart_spec": pa.string()}   # the default spec_column; input_columns() follows the config
    produces = {
        "image": pa.binary(), "image_name": pa.string(), "image_format": pa.string(),
        "width": pa.int32(), "height": pa.int32(), "text": pa.string(), "qa": pa.string(),
        "chart_spec": pa.string(), "chart_type": pa.string(), "chart_language": pa.string(), "meta": pa.string(),
    }
    default_resources = Resources(num_cpus=1, batch_size=16)

    def input_columns(self) -> dict[str, pa.DataType]:
        return {self.params.spec_column: pa.string()}

    def process(self, batch: pd.DataFrame) -> pd.DataFrame:
        from charts.derive import derive, select_qa
        from charts.fonts import FontMissing, chart_fonts
        from charts.render import RenderError, render_png
        from charts.spec import SpecError, parse_spec

        p = self.params
        n = len(batch)
        decisions: list[tuple[str, str] | None] = [None] * n
        # Error rows keep what they came with (the spec text stays readable in the manifest).
        out: dict[str, list[Any]] = {c: list(batch[c]) if c in batch.columns else [None] * n for c in self.produces}
        metas = list(out["meta"])
        for i, (sid, raw) in enumerate(zip(batch["sample_id"], batch[p.spec_column])):
            if isinstance(raw, str):   # an error row shows (the start of) the spec it was given
                shown = raw if len(raw) <= 4000 else raw[:4000] + "..."
                out["chart_spec"][i] = shown
                if p.spec_column in out:
                    out[p.spec_column][i] = shown
            if raw is None or (isinstance(raw, float) and pd.isna(raw)):
                decisions[i] = (ERROR, f"chart_spec: no spec in column {p.spec_column!r}")
                continue
            try:
                spec = parse_spec(raw, p.limits)
            except SpecError as e:
                decisions[i] = (ERROR, f"chart_spec: {e}")
                continue
            try:
                png = render_png(spec, chart_fonts(spec.language, p.cjk_font), p.width, p.height, p.dpi)
            except (RenderError, FontMissing) as e:
                decisions[i] = (ERROR, f"chart_render: {e}")
                continue
            derived = derive(spec, row_rng(p.seed, sid, "qa"))
            qa = [q.to_dict() for q in select_qa(derived.qa, p.max_qa, row_rng(p.seed, sid, "qa-pick"))]
            out["image"][i] = png
            out["image_name"][i] = f"{sid}.png"
            out["image_format"][i] = "png"
            out["width"][i], out["height"][i] = p.width, p.height
            out["text"][i] = derived.caption
            out["qa"][i] = json.dumps(qa, ensure_ascii=False)
            out["chart_spec"][i] = spec.to_json()
            out["chart_type"][i], out["chart_language"][i] = spec.chart_type, spec.language
            out["meta"][i] = _with_chart_meta(metas[i], spec.model_dump(mode="json", exclude_none=True), qa)
        for c, vals in out.items():
            batch[c] = vals
        _row_status(batch, decisions)
        return batch


def _with_chart_meta(meta: Any, spec: dict, qa: list[dict]) -> str:
    """The row's meta with the spec and QA pairs under "chart", so shards carry the whole triple."""
    base: dict[str, Any] = {}
    if isinstance(meta, str) and meta:
        try:
            loaded = json.loads(meta)
            base = loaded if isinstance(loaded, dict) else {"meta": loaded}
        except ValueError:
            base = {"meta": meta}
    base["chart"] = {"spec": spec, "qa": qa}
    return json.dumps(base, ensure_ascii=False)


# --------------------------------------------------------------------------------------------------
# chart_rephrase
# --------------------------------------------------------------------------------------------------

class ChartRephraseParams(Params):
    engine: EngineConfig
    rubric: str = Field("chart_rephrase", description="rubric (prompt) for the rewording; a name or a YAML path")
    rubric_dirs: list[str] = Field(default_factory=list)
    on_mismatch: Literal["fallback", "drop"] = Field(
        "fallback", description="a rewording that disagrees with the spec: keep the derived text (fallback) "
                                "or drop the row (drop); an unparsable answer is then an error row")
    limits: SpecLimits = Field(default_factory=SpecLimits)
    max_tokens: int | None = Field(None, ge=1, description="answer budget; default: the rubric's")
    temperature: float | None = Field(None, ge=0, description="default: the rubric's")


class ChartRephraseStage(EngineStage):
    kind = "chart_rephrase"
    code_deps = ("judges", "charts")
    Params = ChartRephraseParams
    description = "A model rewords chart captions and QA answers; each rewording is checked against the spec's values."
    requires = {"text": pa.string(), "qa": pa.string(), "chart_spec": pa.string()}
    produces = {"text": pa.string(), "qa": pa.string(), "text_derived": pa.string(), "rephrase_note": pa.string(),
                "rephrase_raw": pa.string(), "meta": pa.string()}
    default_resources = Resources(num_cpus=1, num_gpus=0, batch_size=64)

    def load_rubrics(self) -> None:
        from judges.rubric import load_rubric

        self.rubric = load_rubric(self.params.rubric, extra_dirs=tuple(self.params.rubric_dirs))

    def process(self, batch: pd.DataFrame) -> pd.DataFrame:
        from charts.check import check_answer, check_caption, reference
        from charts.derive import derive
        from charts.spec import SpecError, parse_spec
        from judges.engines.base import Sampling

        p = self.params
        n = len(batch)
        decisions: list[tuple[str, str] | None] = [None] * n
        texts, qas = list(batch["text"]), list(batch["qa"])
        metas = list(batch["meta"]) if "meta" in batch.columns else [None] * n
        notes: list[str | None] = [None] * n
        raws: list[str | None] = [None] * n
        ctx: dict[int, tuple[Any, list[dict], Any, dict]] = {}
        requests, where = [], []
        for i in range(n):
            try:
                spec = parse_spec(batch["chart_spec"].iloc[i], p.limits)
                pairs = json.loads(qas[i]) if isinstance(qas[i], str) else []
                if not isinstance(pairs, list) or not all(isinstance(q, dict) and {"question", "answer", "value"} <= set(q)
                                                          for q in pairs):
                    raise ValueError("qa is not a list of {question, answer, value} pairs")
            except (SpecError, ValueError) as e:
                decisions[i] = (ERROR, f"chart_rephrase: {e}")
                continue
            if not pairs or len(pairs) > 20 or not isinstance(texts[i], str):
                notes[i] = "rephrase_skipped: no caption or 1..20 QA pairs to reword"
                continue
            derived_text = texts[i] + " " + " ".join(q["answer"] for q in pairs)
            known = reference(spec, derive(spec).known_numbers, derived_text)
            sample = {"caption": texts[i], "count": len(pairs), "language": LANGUAGE_NAMES[spec.language],
                      "qa": "\n".join(f"{k + 1}. Q: {q['question']}\n   A: {q['answer']}" for k, q in enumerate(pairs))}
            ctx[i] = (spec, pairs, known, sample)
            sampling = Sampling(max_tokens=p.max_tokens or self.rubric.max_tokens,
                                temperature=self.rubric.temperature if p.temperature is None else p.temperature)
            requests.append(self.rubric.build_request(sample, sampling=sampling))
            where.append(i)
        results = self.engine.generate(requests) if requests else []
        new_texts, new_qas = list(texts), list(qas)
        for i, res in zip(where, results):
            spec, pairs, known, sample = ctx[i]
            raws[i] = res.text
            parsed = None if res.error else self.rubric.parse(res.text, sample)
            failure = res.error or (parsed.error if parsed is not None else None)
            if failure:
                if p.on_mismatch == "drop":
                    decisions[i] = (ERROR, f"chart_rephrase: {failure}")
                else:
                    notes[i] = f"rephrase_failed: {failure}"
                continue
            problems = []
            caption = parsed.values["caption"].strip()
            bad = check_caption(caption, known)
            if bad:
                problems.append(bad)
                caption = texts[i]
            new_pairs = []
            for k, (q, answer) in enumerate(zip(pairs, parsed.values["answers"])):
                bad = check_answer(answer, q, known)
                if bad:
                    problems.append(f"answer {k + 1}: {bad}")
                    new_pairs.append(q)
                else:
                    new_pairs.append({**q, "answer": answer.strip()})
            if problems and p.on_mismatch == "drop":
                decisions[i] = (DROPPED, "chart_rephrase: " + "; ".join(problems[:3]))
                continue
            notes[i] = ("rephrase_rejected: " + "; ".join(problems)) if problems else None
            new_texts[i] = caption
            new_qas[i] = json.dumps(new_pairs, ensure_ascii=False)
            if isinstance(metas[i], str):
                metas[i] = _with_chart_meta(metas[i], spec.model_dump(mode="json", exclude_none=True), new_pairs)
        batch["text_derived"] = texts
        batch["text"] = new_texts
        batch["qa"] = new_qas
        batch["rephrase_note"] = notes
        batch["rephrase_raw"] = raws
        batch["meta"] = metas
        _row_status(batch, decisions)
        return batch
