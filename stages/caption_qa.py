"""caption_qa: a language model turns each caption into question-answer pairs about its image.

SAIL-Caption2 captions also become instruction data: a model writes ``count`` question-answer
pairs from the caption (rubric ``caption_to_qa``: strict JSON, exactly ``count`` pairs), and each
pair must be **supported by the caption**, since the caption is all that is known about the image.
``instruction_export`` then writes the surviving pairs as multi-turn instruction samples.

Run it on a branch of the caption pipeline (``after: <caption stage>``): it drops rows (captions
with no supported pair), and on a branch those drops never touch the caption line's own funnel.

Support check (``support``):
- ``lexical`` (default): ``judges/support.py``; the answer's content words and numbers must occur
  in the caption (share >= ``min_support``, every number present). Deterministic, free, and strict
  in the right direction for extractive QA: an answer that brings in words the caption lacks is
  exactly the hallucination to remove. Its limits: it accepts caption words given to the wrong
  question and rejects paraphrases with new words, and cannot confirm a bare "no".
- ``model``: the ``qa_support`` yes/no rubric through the same engine, one short request per pair
  (it reads meaning, costs a second model call per pair, and is itself a model).
- ``both``: lexical first, then the model on the pairs that passed (the model call is only paid
  for plausible pairs; a pair must pass both).
``answer_verification`` is not used for this: it decides whether two *answers* are equivalent,
while this check asks whether a *passage* supports an answer.

Per row: ``qa_pairs`` (JSON list of the supported ``{question, answer}``), ``qa_rejected`` (JSON
list of the rejected pairs, each with its ``reason``), their counts, the caption used
(``qa_caption``) and the raw answer (``qa_raw``). Fewer than ``min_pairs`` supported pairs:
``dropped``, reason ``qa_unsupported: k of n pairs supported``. An answer that is not exactly one
schema-valid JSON object: ``error``, reason ``qa_parse: ...``, raw answer kept. Engine failures:
``qa_engine: ...``. An empty caption: ``dropped``, ``qa_no_caption``.
"""
from __future__ import annotations

import json
import re
from typing import Literal

import pandas as pd
import pyarrow as pa
from pydantic import Field, model_validator

from judges.config import EngineConfig
from stages.base import DROPPED, ERROR, KEPT, Params, Resources
from stages.generation import EngineStage, restate

_COLUMN = r"^[A-Za-z_][A-Za-z0-9_]*$"
AUTO_CAPTION_COLUMNS = ("recaption", "text")


class CaptionQAParams(Params):
    engine: EngineConfig
    caption_column: str | None = Field(
        None, pattern=_COLUMN,
        description="column holding the caption; None: `recaption` when the rows have it, else `text`")
    count: int = Field(3, ge=1, le=10, description="question-answer pairs asked for per caption")
    min_pairs: int = Field(1, ge=1, description="a row with fewer supported pairs is dropped (qa_unsupported)")
    support: Literal["lexical", "model", "both"] = Field("lexical", description="how an answer's support by the caption is checked")
    min_support: float = Field(0.75, ge=0, le=1, description="lexical: share of the answer's content terms found in the caption")
    rubric: str = Field("caption_to_qa", description="generate rubric with a qa_pairs list field")
    support_rubric: str = Field("qa_support", description="yes/no rubric over caption, question, answer (support: model/both)")
    rubric_dirs: list[str] = Field(default_factory=list, description="folders of extra rubric YAML files")
    max_tokens: int | None = Field(None, ge=1, description="override the rubric's answer budget")
    temperature: float | None = Field(None, ge=0, description="override the rubric's temperature")

    @model_validator(mode="after")
    def _check(self):
        from judges.rubric import RubricError, load_rubric

        if self.min_pairs > self.count:
            raise ValueError(f"min_pairs: {self.min_pairs} > count {self.count}; no row could ever be kept")
        try:
            qa = load_rubric(self.rubric, extra_dirs=tuple(self.rubric_dirs))
            check = load_rubric(self.support_rubric, extra_dirs=tuple(self.rubric_dirs)) if self.support != "lexical" else None
        except RubricError as e:
            raise ValueError(f"rubric: {e}") from None
        pairs = {f.name: f for f in qa.fields}.get("qa_pairs")
        if pairs is None or pairs.type != "list" or not isinstance(pairs.items, dict) or \
                set(pairs.items) != {"question", "answer"}:
            raise ValueError(f"rubric: {self.rubric!r} must answer with a field qa_pairs: list of {{question, answer}}")
        if set(qa.placeholders()) != {"caption", "count"} or qa.media != "none":
            raise ValueError(f"rubric: {self.rubric!r} must be a text-only template over {{caption}} and {{count}}")
        if check is not None:
            if not check.keep or not set(check.placeholders()) <= {"caption", "question", "answer"} or check.media != "none":
                raise ValueError(f"support_rubric: {self.support_rubric!r} must be a text-only rubric with a keep rule "
                                 "over {caption}, {question} and {answer}")
        return self


class CaptionQAStage(EngineStage):
    kind = "caption_qa"
    Params = CaptionQAParams
    description = "An LLM writes N question-answer pairs per caption (JSON); pairs whose answer the caption does not support are removed."
    default_resources = Resources(num_cpus=1, num_gpus=0, batch_size=64)

    def input_columns(self) -> dict[str, pa.DataType]:
        return {self.params.caption_column or "text": pa.string()}

    def output_columns(self) -> dict[str, pa.DataType]:
        return {
            "qa_caption": pa.string(), "qa_pairs": pa.string(), "qa_rejected": pa.string(),
            "qa_pairs_kept": pa.int32(), "qa_pairs_rejected": pa.int32(),
            "qa_raw": pa.string(), "qa_model": pa.string(),
        }

    def manifest_columns(self) -> list[str]:
        return ["qa_caption", "qa_pairs_kept", "qa_pairs_rejected", "qa_pairs", "qa_rejected", "qa_raw", "qa_model"]

    def load_rubrics(self) -> None:
        from judges.rubric import load_rubric

        p = self.params
        self.rubric = load_rubric(p.rubric, extra_dirs=tuple(p.rubric_dirs))
        self.support_rubric = load_rubric(p.support_rubric, extra_dirs=tuple(p.rubric_dirs)) if p.support != "lexical" else None

    def caption_column(self, batch: pd.DataFrame) -> str:
        if self.params.caption_column:
            return self.params.caption_column
        return next(c for c in AUTO_CAPTION_COLUMNS if c in batch.columns)

    def process(self, batch: pd.DataFrame) -> pd.DataFrame:
        from judges.engines.base import Sampling

        p = self.params
        r = self.rubric
        n = len(batch)
        col = self.caption_column(batch)
        captions = [None if v is None or (isinstance(v, float) and pd.isna(v)) else str(v).strip() for v in batch[col]]
        sampling = Sampling(max_tokens=p.max_tokens or r.max_tokens,
                            temperature=r.temperature if p.temperature is None else p.temperature)
        status: list[tuple[str, str] | None] = [None] * n
        requests, where = [], []
        for i, cap in enumerate(captions):
            if not cap:
                status[i] = (DROPPED, "qa_no_caption")
                continue
            requests.append(r.build_request({"caption": cap, "count": p.count}, sampling=sampling))
            where.append(i)
        results = self.engine.generate(requests) if requests else []
        raw: list[str | None] = [None] * n
        candidates: list[list[dict]] = [[] for _ in range(n)]
        rejected: list[list[dict]] = [[] for _ in range(n)]
        for i, res in zip(where, results):
            raw[i] = res.text
            if res.error:
                status[i] = (ERROR, restate(res.error, "qa"))
                continue
            parsed = r.parse(res.text, {"caption": captions[i], "count": p.count})
            if not parsed.ok:
                status[i] = (ERROR, restate(parsed.error, "qa"))
                continue
            candidates[i], rejected[i] = self._screen(parsed.values["qa_pairs"], captions[i])
        if self.support_rubric is not None:
            self._model_check(captions, candidates, rejected, status)
        batch["qa_caption"] = captions
        checked = [s is None or s[0] == DROPPED for s in status]  # error rows have no verdict on pairs
        batch["qa_pairs"] = [json.dumps(c, ensure_ascii=False) if ok else None for c, ok in zip(candidates, checked)]
        batch["qa_rejected"] = [json.dumps(rj, ensure_ascii=False) if ok else None for rj, ok in zip(rejected, checked)]
        batch["qa_pairs_kept"] = [len(c) if ok else None for c, ok in zip(candidates, checked)]
        batch["qa_pairs_rejected"] = [len(rj) if ok else None for rj, ok in zip(rejected, checked)]
        batch["qa_raw"] = raw
        batch["qa_model"] = p.engine.model
        for i in range(n):
            if status[i] is None and len(candidates[i]) < p.min_pairs:
                total = len(candidates[i]) + len(rejected[i])
                need = f" (min_pairs {p.min_pairs})" if p.min_pairs > 1 else ""
                status[i] = (DROPPED, f"qa_unsupported: {len(candidates[i])} of {total} pairs supported{need}")
            if status[i] is not None and batch["status"].iloc[i] == KEPT:
                batch.iloc[i, batch.columns.get_loc("status")] = status[i][0]
                batch.iloc[i, batch.columns.get_loc("reason")] = status[i][1]
        return batch

    def _screen(self, pairs: list[dict], caption: str) -> tuple[list[dict], list[dict]]:
        """Tidy the pairs, reject empty and repeated questions, and (lexical/both) unsupported answers."""
        from judges.support import lexical_support

        kept, rejected, seen = [], [], set()
        for pair in pairs:
            q, a = _clean(pair["question"]), _clean(pair["answer"])
            key = re.sub(r"\W+", " ", q.casefold()).strip()
            reason = None
            if not q or not a:
                reason = "empty question or answer"
            elif key in seen:
                reason = "repeats an earlier question"
            elif self.params.support in ("lexical", "both"):
                verdict = lexical_support(a, caption, question=q, min_support=self.params.min_support)
                if not verdict.supported:
                    reason = f"unsupported: {verdict.reason}"
            seen.add(key)
            if reason:
                rejected.append({"question": q, "answer": a, "reason": reason})
            else:
                kept.append({"question": q, "answer": a})
        return kept, rejected

    def _model_check(self, captions, candidates, rejected, status) -> None:
        """Ask the support rubric about every pair still standing; a 'no' or an unreadable verdict
        rejects the pair, an engine failure makes the row an error (its pairs were never checked)."""
        from judges.engines.base import Sampling

        r = self.support_rubric
        sampling = Sampling(max_tokens=r.max_tokens, temperature=0.0)
        requests, where = [], []
        for i, pairs in enumerate(candidates):
            if status[i] is not None:
                continue
            for j, pair in enumerate(pairs):
                sample = {"caption": captions[i], **pair}
                requests.append(r.build_request({k: sample[k] for k in r.placeholders()}, sampling=sampling))
                where.append((i, j))
        results = self.engine.generate(requests) if requests else []
        verdicts: dict[tuple[int, int], str | None] = {}
        for (i, j), res in zip(where, results):
            if res.error:
                status[i] = status[i] or (ERROR, restate(res.error, "qa_support"))
                continue
            _, decision, why = r.judge(res.text)
            verdicts[(i, j)] = None if decision == KEPT else (
                f"unverified: {restate(why, 'qa_support')}" if decision == ERROR else f"unsupported: model says {why}")
        for i, pairs in enumerate(candidates):
            if status[i] is not None or not pairs:
                continue
            keep = []
            for j, pair in enumerate(pairs):
                why = verdicts.get((i, j))
                if why is None:
                    keep.append(pair)
                else:
                    rejected[i].append({**pair, "reason": why})
            candidates[i] = keep


def _clean(text: str) -> str:
    return re.sub(r"\s+", " ", str(text)).strip()
