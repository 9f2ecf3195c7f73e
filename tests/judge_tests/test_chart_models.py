"""The model stages of chart captions on the real vLLM engine with the tiny random Qwen2.

chart_spec: the chart type and language drawn for a row are pinned in the answer's JSON schema,
so even a random model's answer starts with them (xgrammar); what it writes inside is arbitrary,
and the validator must turn every such answer into a valid spec or an error row with the reason.
chart_rephrase: a random model's rewordings almost never agree with the chart; every reworded
text that survives must pass the check against the spec, and the rest fall back (or drop)."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from charts.check import check_answer, check_caption, reference
from charts.derive import derive
from charts.spec import CHART_TYPES, parse_spec
from conftest import ROOT


@pytest.fixture(scope="module")
def engine(vllm_engines, tiny_models):
    return vllm_engines.get(tiny_models["tiny-qwen2"])


def _batch(column: str, values: list) -> pd.DataFrame:
    return pd.DataFrame({"sample_id": [f"row{i}" for i in range(len(values))], "status": "kept", "reason": None,
                         column: values})


def test_chart_spec_answers_are_valid_specs_or_error_rows(engine, tiny_models):
    from stages.charts import ChartSpecParams, ChartSpecStage, plan_chart

    topics = [json.loads(x)["text"] for x in (ROOT / "data" / "charts" / "topics.jsonl").read_text().splitlines()]
    params = ChartSpecParams(engine={"model": str(tiny_models["tiny-qwen2"])}, points=(3, 4), samples=(5, 6),
                             max_tokens=768)
    stage = ChartSpecStage(params, "chart_spec")
    stage.setup(engine)
    out = stage.process(_batch("text", topics + ["  "]))

    plans = [plan_chart(params, sid) for sid in out["sample_id"]]
    assert {p[1] for p in plans} == {"en", "zh"} and len({p[0] for p in plans}) >= 5
    assert list(zip(out["chart_type"], out["chart_language"])) == [p[:2] for p in plans]
    last = out.iloc[-1]
    assert (last["status"], last["reason"]) == ("error", "chart_spec: empty topic in column 'text'")
    for (_, row), (chart_type, language, _) in zip(out.iloc[:-1].iterrows(), plans):
        assert row["chart_raw"].startswith(f'{{"chart_type":"{chart_type}","language":"{language}","title":')
        if row["status"] == "kept":
            spec = parse_spec(row["chart_spec"])
            assert (spec.chart_type, spec.language) == (chart_type, language)
        else:
            assert row["status"] == "error" and row["reason"].startswith("chart_spec: ") and pd.isna(row["chart_spec"])
    assert out["chart_model"].str.contains("tiny-qwen2").all()
    assert set(out["chart_type"]) <= set(CHART_TYPES)


@pytest.mark.parametrize("on_mismatch", ["fallback", "drop"])
def test_chart_rephrase_keeps_only_rewordings_that_agree(engine, tiny_models, on_mismatch):
    from stages.charts import ChartRenderParams, ChartRenderStage, ChartRephraseParams, ChartRephraseStage

    specs = [json.loads(x)["text"] for x in (ROOT / "data" / "charts" / "specs.jsonl").read_text().splitlines()]
    specs = [s for s in specs if s["chart_type"] in ("bar", "pie")]   # two per language
    rendered = ChartRenderStage(ChartRenderParams(max_qa=3), "chart_render").process(
        _batch("chart_spec", [json.dumps(s, ensure_ascii=False) for s in specs]))
    assert (rendered["status"] == "kept").all()
    stage = ChartRephraseStage(ChartRephraseParams(engine={"model": str(tiny_models["tiny-qwen2"])}, max_tokens=384,
                                                   on_mismatch=on_mismatch), "chart_rephrase")
    stage.setup(engine)
    out = stage.process(rendered.copy())

    for (_, before), (_, after) in zip(rendered.iterrows(), out.iterrows()):
        spec = parse_spec(before["chart_spec"])
        old = json.loads(before["qa"])
        ref = reference(spec, derive(spec).known_numbers, before["text"] + " " + " ".join(q["answer"] for q in old))
        assert after["text_derived"] == before["text"]
        if after["status"] != "kept":
            assert on_mismatch == "drop" and after["reason"].startswith("chart_rephrase: ")
            continue
        if after["text"] != before["text"]:
            assert check_caption(after["text"], ref) is None
        new = json.loads(after["qa"])
        assert [(q["question"], q["value"]) for q in new] == [(q["question"], q["value"]) for q in old]
        for q_new, q_old in zip(new, old):
            if q_new["answer"] != q_old["answer"]:
                assert check_answer(q_new["answer"], q_new, ref) is None
        note = after["rephrase_note"]
        assert note is None or note.startswith(("rephrase_rejected: ", "rephrase_failed: "))
        assert json.loads(after["meta"])["chart"]["qa"] == new
    if on_mismatch == "fallback":
        assert (out["status"] == "kept").all()
        assert out["rephrase_note"].notna().any()   # a random model's rewordings disagree somewhere
