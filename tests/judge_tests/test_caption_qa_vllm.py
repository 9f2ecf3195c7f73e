"""recaption and caption_qa on the real vLLM engine (tiny random Qwen2-VL, built locally).

A random model's words are noise, so these tests check what must hold whatever it writes: every row
ends kept, dropped or error with a reason; structured output makes the QA answer schema-valid JSON
(so a row is never kept on an invalid answer); an answer cut off by the token budget is a
``qa_parse`` error row with the raw text kept; recaptions land beside the original caption.
One engine serves both stages (a VL model also answers text-only prompts)."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import skimage

from stages.caption_qa import CaptionQAStage
from stages.recaption import RecaptionStage

CAPTIONS = [
    "Portrait of astronaut Eileen Collins in an orange flight suit, smiling in front of an American flag.",
    "Grayscale photo of twenty-four old coins arranged in rows on a dark background.",
    "A red motorcycle parked indoors in front of shelves and a cluttered workbench.",
]
IMAGES = [(Path(skimage.__file__).parent / "data" / n).read_bytes() for n in ("astronaut.png", "coins.png", "motorcycle_left.png")]


def rows() -> pd.DataFrame:
    n = len(CAPTIONS)
    return pd.DataFrame({
        "sample_id": [f"s{i}" for i in range(n)], "source": "t", "source_key": [f"k{i}" for i in range(n)],
        "status": "kept", "reason": None, "_chunk": "c", "_decided_at": None, "text": CAPTIONS, "image": IMAGES,
    })


@pytest.fixture(scope="module")
def engine(vllm_engines, tiny_models):
    return vllm_engines.get(tiny_models["tiny-qwen2vl"], max_model_len=4096, seed=0)


def stage(cls, engine, **params):
    s = cls(cls.Params(engine={"kind": "vllm", "model": engine.model}, **params), cls.kind)
    s.setup(engine)   # the shared live engine instead of a second model start
    return s


def test_caption_qa_on_vllm_gives_schema_valid_pairs_or_reasoned_rows(engine):
    out = stage(CaptionQAStage, engine, count=2, max_tokens=256).process(rows())
    assert len(out) == 3 and list(out["sample_id"]) == ["s0", "s1", "s2"]
    for _, row in out.iterrows():
        assert row["qa_raw"]                                    # what the model wrote is kept
        if row["status"] == "error":
            assert row["reason"].startswith("qa_parse: ")       # only a budget cut-off can break guided JSON
            assert pd.isna(row["qa_pairs"])
            continue
        answer = json.loads(row["qa_raw"])                      # guided decoding: the schema holds
        assert len(answer["qa_pairs"]) == 2
        kept, rejected = json.loads(row["qa_pairs"]), json.loads(row["qa_rejected"])
        assert len(kept) + len(rejected) == 2 and all(r["reason"] for r in rejected)
        if row["status"] == "dropped":
            assert row["reason"] == "qa_unsupported: 0 of 2 pairs supported"
        else:
            assert row["status"] == "kept" and kept


def test_caption_qa_on_vllm_answer_cut_off_by_the_budget_is_an_error_row(engine):
    out = stage(CaptionQAStage, engine, count=2, max_tokens=6).process(rows())
    assert out["status"].eq("error").all()
    assert out["reason"].eq("qa_parse: truncated JSON").all()
    assert out["qa_raw"].str.startswith("{").all()              # the raw (partial) answer is kept


def test_recaption_on_vllm_writes_beside_the_original(engine):
    out = stage(RecaptionStage, engine, max_tokens=24, min_chars=1, truncated="keep", temperature=1.0).process(rows())
    assert list(out["text"]) == CAPTIONS                        # the original is untouched
    for _, row in out.iterrows():
        if row["status"] == "kept":
            assert isinstance(row["recaption"], str) and row["recaption"].strip() and pd.isna(row["recaption_raw"])
        else:
            assert row["status"] == "error" and row["reason"].startswith("recaption_parse: ")
    assert (out["status"] == "kept").any()
    strict = stage(RecaptionStage, engine, max_tokens=8, min_chars=1).process(rows())
    cut = strict[strict["status"] == "error"]
    assert len(cut) and cut["reason"].str.match(r"recaption_parse: (cut off at the token budget|empty answer)").all()
