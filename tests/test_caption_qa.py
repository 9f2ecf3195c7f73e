"""Caption-to-QA (issue 5): captions become question-answer pairs, only pairs the caption supports
survive, and they are written as instruction samples for SAIL-Instruction2.

The model is the real OpenAI-compatible engine talking to a scripted HTTP server on 127.0.0.1, so
each test knows exactly what "the model" answered (the vLLM engine runs these stages for real in
judge_tests/test_caption_qa_vllm.py). The pipeline test runs the demo images through the runner
with caption_qa on a branch."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
import skimage

from conftest import ROOT, run_config
from helpers import assert_conservation, manifest
from judge_tests.test_openai_engine import ScriptedServer, ok, status
from judges.support import lexical_support
from pipeline.execution import StageCall
from stages.caption_qa import CaptionQAStage
from stages.recaption import RecaptionStage

IMG = (Path(skimage.__file__).parent / "data" / "astronaut.png").read_bytes()

ASTRONAUT = ("Portrait of astronaut Eileen Collins in an orange flight suit, smiling in front of an American flag, "
             "with a model of the space shuttle beside her.")
COFFEE = ("Top-down view of a cup of coffee with latte art on a white saucer, a silver spoon resting on the right "
          "side, on a wooden table.")
COINS = "Grayscale photo of twenty-four old coins arranged in rows on a dark background."
MOTORCYCLE = ("A red motorcycle parked indoors in front of shelves and a cluttered workbench, seen from the left "
              "camera of a stereo pair.")
CAMERA = ("Black and white photo of a man in a dark coat operating a camera on a tripod in an open field, "
          "buildings in the distance.")
CHELSEA = ("Close-up of a tabby cat named Chelsea looking to the left, with striped orange and brown fur and long "
           "white whiskers.")
BUS_ZH = "一辆红色的公交车停在雨中的街道上。"


# -- the lexical support check ------------------------------------------------------------------

@pytest.mark.parametrize("caption,question,answer,supported", [
    (ASTRONAUT, "What colour is her suit?", "Orange", True),
    (ASTRONAUT, "What is behind her?", "An American flag", True),
    (ASTRONAUT, "What is beside her?", "A model of the space shuttle", True),
    (ASTRONAUT, "What is she holding?", "A helmet", False),                       # invented object
    (COINS, "How many coins are there?", "24", True),                              # digits vs words
    (COINS, "How many coins are there?", "Twenty-four", True),
    (COINS, "How many coins are there?", "12", False),                             # wrong count
    (COINS, "How many old coins are in rows?", "24 coins in 3 rows", False),       # one number invented
    (COFFEE, "Where is the spoon?", "On the right side of the saucer", True),
    (COFFEE, "What is the spoon made of?", "Silver", True),
    (COFFEE, "What is the spoon made of?", "Gold", False),
    (CHELSEA, "Which way is the cat looking?", "It looks to the left", True),     # inflection
    (CHELSEA, "Is the cat's fur striped?", "Yes", True),                           # bare yes: the question's terms
    (CHELSEA, "Is the cat sleeping on a sofa?", "Yes", False),
    (CHELSEA, "Is there a dog?", "No", False),                                     # an absence cannot be read off
    (MOTORCYCLE, "Is the motorcycle parked outdoors?", "No, it is parked indoors.", True),
    (CAMERA, "What is the man wearing?", "A dark coat", True),
    (CAMERA, "What is the man doing?", "Holding an umbrella in a dark coat", False),  # 2 of 4 terms invented
    (BUS_ZH, "公交车是什么颜色?", "红色", True),                                   # CJK bigrams
    (BUS_ZH, "公交车是什么颜色?", "蓝色", False),
    (ASTRONAUT, "What is she doing?", "", False),
])
def test_lexical_support_on_real_captions(caption, question, answer, supported):
    verdict = lexical_support(answer, caption, question=question, min_support=0.75)
    assert verdict.supported is supported, verdict
    assert (verdict.reason is None) is supported


def test_lexical_support_says_what_is_missing_and_the_threshold_is_the_config():
    v = lexical_support("A man in a dark coat holding an umbrella", CAMERA, min_support=0.75)
    assert not v.supported and v.score == pytest.approx(0.6)
    assert v.missing == ("holding", "umbrella") and "not in caption: holding, umbrella" in v.reason
    assert lexical_support("A man in a dark coat holding an umbrella", CAMERA, min_support=0.5).supported
    assert lexical_support("12", COINS).reason == "number(s) not in caption: 12"


# -- the stages against a scripted model ------------------------------------------------------

def pairs(*qa):
    return json.dumps({"qa_pairs": [{"question": q, "answer": a} for q, a in qa]})


# What "the model" answers to caption_to_qa, by caption (count = 2).
QA_ANSWERS = {
    ASTRONAUT: ok(pairs(("What colour is her suit?", "Orange"), ("What is she holding?", "A helmet"))),
    COFFEE: ok(pairs(("Where is the spoon?", "On the right side of the saucer"), ("What is under the cup?", "A white saucer"))),
    COINS: ok(pairs(("How many coins are there?", "12"), ("What are the coins made of?", "Gold"))),
    CHELSEA: ok("Sure! Here are the pairs: " + pairs(("What animal is it?", "A cat"), ("Fur?", "Striped"))),
    MOTORCYCLE: ok(pairs(("What colour is the motorcycle?", "Red"))),                 # 1 pair, 2 asked
    CAMERA: ok('{"qa_pairs": [{"question": "What is the man operating?", "answer": "A camera"}'),  # cut off
    BUS_ZH: status(503, body=b"overloaded"),
}


def _field(text: str, name: str) -> str | None:
    m = re.search(rf"<{name}>\n(.*?)\n</{name}>", text, re.S)
    return m.group(1) if m else None


def scripted_model(n, body):
    """caption_to_qa answers from QA_ANSWERS (else two pairs quoting the caption); qa_support says
    yes unless the answer mentions a 'side'; detailed_caption describes the astronaut."""
    system = body["messages"][0]["content"]
    text = body["messages"][-1]["content"][-1]["text"]
    if "SUPPORTED by the caption" in system:
        return ok(json.dumps({"answer_supported": "side" not in _field(text, "answer")}))
    if "detailed, faithful descriptions" in system:
        return ok("A woman in an orange flight suit smiles in front of an American flag.", completion_tokens=16)
    caption = _field(text, "caption")
    if caption in QA_ANSWERS:
        return QA_ANSWERS[caption]
    words = caption.rstrip(".").split()
    return ok(pairs(("What is shown?", " ".join(words[:5])), ("What else?", " ".join(words[-4:]))))


@pytest.fixture(scope="module")
def server():
    s = ScriptedServer(scripted_model)
    yield s
    s.stop()


def engine(server) -> dict:
    return {"kind": "openai", "model": "scripted", "base_url": server.url, "api_key_env": None,
            "max_retries": 1, "timeout_s": 10}


def rows(captions, column="text") -> pd.DataFrame:
    n = len(captions)
    return pd.DataFrame({
        "sample_id": [f"s{i}" for i in range(n)], "source": "t", "source_key": [f"k{i}" for i in range(n)],
        "status": "kept", "reason": None, "_chunk": "ingest-000000", "_decided_at": None,
        column: captions, "image": [IMG] * n,
    })


def run_stage(stage_cls, params: dict, df: pd.DataFrame) -> pd.DataFrame:
    """Through StageCall, the wrapper the runner uses (contract and output types enforced)."""
    stage = stage_cls(stage_cls.Params(**params), stage_cls.kind)
    call = StageCall(stage_cls.kind, stage.params.model_dump(mode="json"), stage_cls.kind, None, stage.output_columns())
    return call(df).to_pandas().set_index("source_key")


def test_caption_qa_keeps_supported_pairs_and_records_each_rejection(server):
    out = run_stage(CaptionQAStage, {"engine": engine(server), "count": 2},
                    rows([ASTRONAUT, COFFEE, COINS, "   "]))
    astro = out.loc["k0"]
    assert astro["status"] == "kept" and astro["qa_caption"] == ASTRONAUT
    assert json.loads(astro["qa_pairs"]) == [{"question": "What colour is her suit?", "answer": "Orange"}]
    [rej] = json.loads(astro["qa_rejected"])
    assert rej["answer"] == "A helmet" and rej["reason"].startswith("unsupported: support 0.00 < 0.75")
    assert (astro["qa_pairs_kept"], astro["qa_pairs_rejected"]) == (1, 1)
    assert json.loads(astro["qa_raw"])["qa_pairs"][1]["answer"] == "A helmet"   # the raw answer is kept
    assert out.loc["k1", "status"] == "kept" and out.loc["k1", "qa_pairs_kept"] == 2
    # no supported pair: the row is dropped, and every pair says why
    coins = out.loc["k2"]
    assert (coins["status"], coins["reason"]) == ("dropped", "qa_unsupported: 0 of 2 pairs supported")
    assert [r["reason"] for r in json.loads(coins["qa_rejected"])] == [
        "unsupported: number(s) not in caption: 12", "unsupported: support 0.00 < 0.75; not in caption: gold"]
    assert (out.loc["k3", "status"], out.loc["k3", "reason"]) == ("dropped", "qa_no_caption")
    assert out["qa_model"].eq("scripted").all()


def test_caption_qa_malformed_or_failed_model_output_is_an_error_row(server):
    out = run_stage(CaptionQAStage, {"engine": engine(server), "count": 2},
                    rows([CHELSEA, MOTORCYCLE, CAMERA, BUS_ZH]))
    assert out["status"].eq("error").all()
    assert out.loc["k0", "reason"] == "qa_parse: text before the JSON object"
    assert out.loc["k1", "reason"] == "qa_parse: qa_pairs: wrong number of items (1; minItems 2)"
    assert out.loc["k2", "reason"] == "qa_parse: truncated JSON"
    assert out.loc["k3", "reason"].startswith("qa_engine: judge_http: 503")
    assert out.loc["k0", "qa_raw"].startswith("Sure! Here are the pairs")     # kept for a human
    assert out.loc["k2", "qa_raw"].endswith('"A camera"}')
    assert out[["qa_pairs", "qa_rejected", "qa_pairs_kept"]].isna().all().all()  # nothing invented


def test_caption_qa_model_support_asks_the_support_rubric_per_pair(server):
    before = len(server.requests)
    out = run_stage(CaptionQAStage, {"engine": engine(server), "count": 2, "support": "both"},
                    rows([COFFEE, ASTRONAUT]))
    coffee = out.loc["k0"]
    # both answers are lexically supported; the model rejects the one about the side
    assert json.loads(coffee["qa_pairs"]) == [{"question": "What is under the cup?", "answer": "A white saucer"}]
    reasons = {r["answer"]: r["reason"] for r in json.loads(coffee["qa_rejected"])}
    assert reasons["On the right side of the saucer"] == "unsupported: model says answer_supported=no"
    astro = out.loc["k1"]
    assert json.loads(astro["qa_pairs"]) == [{"question": "What colour is her suit?", "answer": "Orange"}]
    # lexical first: the helmet pair never reached the model; 2 generations + 1 + 2 checks
    checks = [r for r in server.requests[before:] if "SUPPORTED by the caption" in r["body"]["messages"][0]["content"]]
    assert sorted(_field(r["body"]["messages"][-1]["content"][-1]["text"], "answer") for r in checks) == [
        "A white saucer", "On the right side of the saucer", "Orange"]


def test_recaption_writes_a_new_column_and_keeps_the_original(server):
    out = run_stage(RecaptionStage, {"engine": engine(server)}, rows(["astronaut"]))
    row = out.loc["k0"]
    assert row["status"] == "kept" and row["text"] == "astronaut"
    assert row["recaption"] == "A woman in an orange flight suit smiles in front of an American flag."
    assert pd.isna(row["recaption_raw"])                         # raw is only kept when something is wrong
    replaced = run_stage(RecaptionStage, {"engine": engine(server), "replace_text": True}, rows(["astronaut"])).loc["k0"]
    assert replaced["text"] == row["recaption"] and replaced["text_original"] == "astronaut"


def test_recaption_malformed_answers_are_error_rows_with_the_raw_answer(server):
    cut = run_stage(RecaptionStage, {"engine": engine(server), "max_tokens": 16}, rows(["x"])).loc["k0"]
    assert (cut["status"], cut["reason"]) == ("error", "recaption_parse: cut off at the token budget (16 tokens)")
    assert cut["recaption_raw"].startswith("A woman") and pd.isna(cut["recaption"])
    short = run_stage(RecaptionStage, {"engine": engine(server), "min_chars": 500}, rows(["x"])).loc["k0"]
    assert short["status"] == "error" and short["reason"].startswith("recaption_parse: too short")


def test_configs_are_checked_before_anything_runs(server):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="needs input"):
        RecaptionStage.Params(engine=engine(server), rubric="chart_caption")
    with pytest.raises(ValidationError, match="free-text generate rubric"):
        RecaptionStage.Params(engine=engine(server), rubric="caption_to_qa")
    with pytest.raises(ValidationError, match="min_pairs"):
        CaptionQAStage.Params(engine=engine(server), count=2, min_pairs=3)
    with pytest.raises(ValidationError, match="support_rubric"):
        CaptionQAStage.Params(engine=engine(server), support="model", support_rubric="vir_score")


# -- the pipeline: caption_qa on a branch, instruction samples out ----------------------------

@pytest.fixture(scope="module")
def qa_run(ray_local, demo_input, server, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("caption_qa") / "run"
    overrides = [f"caption_qa.engine={json.dumps(engine(server))}", "caption_qa.count=2",
                 "caption_qa.resources.num_gpus=0", "caption_qa.resources.concurrency=1"]
    record = run_config(ROOT / "configs" / "demo_caption_qa.yaml", run_dir, inputs=[str(demo_input)], overrides=overrides)
    return run_dir, record, overrides


def test_branch_conserves_rows_and_leaves_the_caption_line_alone(qa_run):
    run_dir, record, _ = qa_run
    counts = assert_conservation(run_dir)
    assert record["stages"]["caption_qa"]["parents"] == ["filter"]
    filtered = manifest(run_dir, "filter").query("status == 'kept'")
    qa = manifest(run_dir, "caption_qa")
    assert set(qa["sample_id"]) == set(filtered["sample_id"])
    # the branch drops and errors rows (coins: unsupported; chelsea: malformed) ...
    by_key = qa.set_index("source_key")
    assert by_key.loc["coins", "status"] == "dropped" and by_key.loc["coins", "reason"].startswith("qa_unsupported")
    assert by_key.loc["chelsea", "status"] == "error" and by_key.loc["chelsea", "reason"].startswith("qa_parse:")
    # ... yet the main line shards every caption the filter kept, those two included
    shards = pd.read_parquet(Path(run_dir) / "shards" / "index.parquet")
    assert set(shards["sample_id"]) == set(filtered["sample_id"])
    assert counts["instructions"]["in"] == counts["caption_qa"]["kept"] == len(by_key.query("status == 'kept'"))


def test_instruction_samples_read_back_in_the_instruction2_format(qa_run):
    run_dir, record, _ = qa_run
    out = Path(run_dir) / "instructions" / "demo_caption_qa"
    qa = manifest(run_dir, "caption_qa").query("status == 'kept'").set_index("sample_id")
    files = sorted(out.glob("*.jsonl"))
    assert [f.name for f in files] == [f"demo_caption_qa-{i:06d}.jsonl" for i in range(len(files))]
    samples = [json.loads(line) for f in files for line in f.read_text(encoding="utf-8").splitlines()]
    assert all(len(f.read_text().splitlines()) <= 4 for f in files) and len(samples) == len(qa)
    for s in samples:
        assert list(s) == ["id", "source", "images", "messages", "meta"]
        supported = json.loads(qa.loc[s["id"], "qa_pairs"])
        [image] = s["images"]
        assert re.fullmatch(rf"images/{s['id']}\.(png|jpg)", image) and (out / image).is_file()
        assert s["meta"] == {"origin": "caption_qa", "caption": qa.loc[s["id"], "qa_caption"]}
        msgs = s["messages"]
        assert [m["role"] for m in msgs] == ["user", "assistant"] * len(supported)
        assert msgs[0]["content"][0] == {"type": "image"}
        assert sum(c["type"] == "image" for m in msgs for c in m["content"]) == 1
        assert [(msgs[2 * k]["content"][-1]["text"], msgs[2 * k + 1]["content"][0]["text"])
                for k in range(len(supported))] == [(p["question"], p["answer"]) for p in supported]
    astro = next(s for s in samples if "Eileen Collins" in s["meta"]["caption"])
    assert len(astro["messages"]) == 2                          # the helmet pair did not make it
    index = pd.read_parquet(out / "index.parquet")
    assert sorted(index["sample_id"]) == sorted(s["id"] for s in samples)
    summary = json.loads((out / "instructions.json").read_text())
    assert summary["total_samples"] == len(samples) and summary["num_files"] == len(files)
    assert record["stages"]["instructions"]["stats"]["turns"] == sum(len(s["messages"]) // 2 for s in samples)


def test_instruction_export_rerun_is_byte_identical(qa_run, demo_input):
    run_dir, _, overrides = qa_run
    out = Path(run_dir) / "instructions"
    before = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    run_config(ROOT / "configs" / "demo_caption_qa.yaml", run_dir, inputs=[str(demo_input)], overrides=overrides,
               only_stage="instructions", force=True)
    after = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    assert after == before


def test_the_instruction2_ingest_reads_every_exported_sample(qa_run):
    """The format contract, checked from the reading side (stages/instruction_ingest.py)."""
    from pipeline.config import SourceConfig
    from stages.instruction_ingest import InstructionIngestStage

    run_dir, record, _ = qa_run
    reader = InstructionIngestStage(InstructionIngestStage.Params(source="qa"), "instruction_ingest")
    units = reader.list_units({"qa": SourceConfig(path=str(Path(run_dir) / "instructions" / "demo_caption_qa"))})
    read = pd.concat([reader.read_unit(u) for u in units])
    assert len(read) == record["stages"]["instructions"]["counts"]["kept"]
    assert read["status"].eq("kept").all(), read[["source_key", "reason"]]
    assert read["num_images"].eq(1).all()
    qa = manifest(run_dir, "caption_qa").query("status == 'kept'")
    assert sorted(read["num_turns"]) == sorted(2 * qa["qa_pairs_kept"])
