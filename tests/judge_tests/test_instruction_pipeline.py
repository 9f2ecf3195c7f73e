"""configs/instruction2.yaml and configs/cot.yaml end to end on tiny local models (``--smoke``).

The models are random, so the verdicts, phrases and policy answers are noise; what must hold is
the machinery: every row ends with a schema-valid verdict or a recorded reason, the two
validation verdicts sit side by side in the manifest, the category phrases come out of the same
model answer and are bucketed, policy samples are extracted and verified with the deciding path
recorded (the model judge included), routing follows the recorded numbers exactly, and the three
CoT outputs are shards of their own. Conservation is checked at every stage.

One vLLM engine per pipeline (the instruction judge; the policy + verifier). The guided CoT
generation runs on the transformers engine here: a random model's reasoning fails the format
check on any engine, and the LLaVA-CoT rows bring reasoning of their own that passes it. The
verification judge samples (``verifier_temperature=1``) so that a random judge's verdicts spread
over solved and unsolved; in production it is greedy.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from conftest import ROOT, run_config
from helpers import assert_conservation, manifest
from instruction_data import build_cot_sources, build_instruction_sources


def _samples(shard_dir: Path) -> list[dict]:
    out = []
    for tar in sorted(shard_dir.glob("*.tar")):
        with tarfile.open(tar) as tf:
            out += [json.loads(tf.extractfile(n).read()) for n in tf.getnames() if n.endswith(".json")]
    return out


@pytest.fixture(scope="module")
def instruction_run(ray_local, tmp_path_factory):
    os.environ.setdefault("SAILCURATE_CACHE", str(tmp_path_factory.mktemp("cache")))
    sources, expect = build_instruction_sources(tmp_path_factory.mktemp("inst_src"))
    run_dir = tmp_path_factory.mktemp("inst_smoke") / "run"
    record = run_config(ROOT / "configs" / "instruction2.yaml", run_dir, smoke=True,
                        inputs=[f"{k}={v}" for k, v in sources.items()],
                        overrides=["gate.min_source_rows=1", "gate.min_source_pass_rate=0.34",
                                   "balance.buckets_per_source=1", "balance.per_bucket_cap=1"])
    return run_dir, record, expect


def _first_reasons(run_dir, record) -> dict[str, str]:
    """source_key -> the reason of the stage that dropped it (or made it an error)."""
    out: dict[str, str] = {}
    for stage in record["order"]:
        m = manifest(run_dir, stage)
        if len(m) and "source_key" in m.columns:
            for _, row in m[m["status"] != "kept"].iterrows():
                out.setdefault(row["source_key"], row["reason"])
    return out


def test_instruction2_malformed_rows_and_rule_verdicts(instruction_run):
    run_dir, record, expect = instruction_run
    counts = assert_conservation(run_dir)
    assert sum(counts[f"ingest_{s}"]["in"] for s in ("llava", "sharegpt", "openai", "caption_qa", "text")) == len(expect)
    reasons = _first_reasons(run_dir, record)
    v = manifest(run_dir, "validate").set_index("source_key")
    for key, outcome in expect.items():
        if outcome in ("image_token_mismatch", "missing_image", "empty_turn", "role_order", "bad_json", "unknown_role"):
            assert reasons[key].startswith(outcome), (key, reasons.get(key))   # an ingest error row
        elif outcome.startswith("rules: "):
            check = outcome.split(": ", 1)[1]
            assert v.loc[key, "rule_ok"] == False and v.loc[key, "rule_reasons"].startswith(check), key  # noqa: E712
            assert reasons[key].startswith(outcome), (key, reasons[key])
        else:
            assert v.loc[key, "rule_ok"] == True, (key, v.loc[key, "rule_reasons"])  # noqa: E712


def test_instruction2_dual_validation_on_a_real_engine(instruction_run):
    """Both verdicts recorded side by side; kept only when both pass; whole sources rejected below
    the pass rate, with the rates in the run record matching the manifest."""
    run_dir, record, _ = instruction_run
    v = manifest(run_dir, "validate")
    assert (v["validate_model"].str.contains("tiny-qwen2vl")).all()        # the smoke swap happened
    judged = v[v["rule_ok"] == True]  # noqa: E712
    assert len(judged) >= 10
    assert v.loc[v["rule_ok"] == False, "instruction_valid"].isna().all()  # noqa: E712 (rule failures are not judged)
    for _, row in judged.iterrows():
        if row["status"] == "kept":   # a schema-valid answer: the verdict, its rationale, the category phrase
            assert row["instruction_valid"] in (True, False) and row["instruction_rationale"]
            assert 3 <= len(row["category"]) <= 80
        else:
            assert row["status"] == "error" and row["reason"].startswith("judge"), row["reason"]
    validated = v[v["status"] == "kept"]
    stats = record["stages"]["gate"]["stats"]["sources"]
    for src, rows in validated.groupby("source"):
        both = ((rows["rule_ok"] == True) & (rows["instruction_valid"] == True)).sum()  # noqa: E712
        s = stats[src]
        assert (s["validated"], s["passed"]) == (len(rows), both)
        assert s["rejected"] == (both / len(rows) < 0.34)
    assert stats["text_only"]["rejected"]          # 2 of its 3 samples fail the rules: at most 1/3 pass
    gate = manifest(run_dir, "gate").set_index("sample_id")
    vv = validated.set_index("sample_id")
    for sid, row in gate.iterrows():
        passed = vv.loc[sid, "rule_ok"] == True and vv.loc[sid, "instruction_valid"] == True  # noqa: E712
        rejected = stats[row["source"]]["rejected"]
        assert (row["status"] == "kept") == (passed and not rejected), row["reason"]
        if row["status"] != "kept":
            expected = ("rules: ", "instruction_valid=no") if not passed else (f"source_rejected: {row['source']} pass rate",)
            assert row["reason"].startswith(expected), row["reason"]


def test_instruction2_dedup_buckets_and_shards(instruction_run):
    run_dir, record, _ = instruction_run
    dedup = manifest(run_dir, "dedup_exact").set_index("source_key")
    if {"l1", "l8"} <= set(dedup.index):     # both passed validation: same image and first question
        first, second = sorted(["l1", "l8"], key=lambda k: dedup.loc[k, "sample_id"])
        assert dedup.loc[second, "reason"] == f"exact_dup_of:{dedup.loc[first, 'sample_id']}"
    cat = manifest(run_dir, "category")   # phrases came with the verdicts: nobody was asked again
    assert (cat["status"] == "kept").all() and cat["category_raw"].isna().all() and cat["category"].notna().all()
    stats = record["stages"]["balance"]["stats"]
    bal = manifest(run_dir, "balance")
    kept = bal[bal["status"] == "kept"]
    assert stats["cap"] == 1 and stats["rows_before"] == len(bal) == sum(b["before"] for b in stats["buckets"])
    assert stats["num_buckets"] <= stats["sources"] and stats["rows_after"] == len(kept)
    assert all(b["after"] == min(b["before"], 1) for b in stats["buckets"])
    if len(kept):
        assert kept.groupby("bucket").size().max() == 1
    for _, row in bal[bal["status"] == "dropped"].iterrows():
        assert row["reason"].startswith(f"bucket_cap: bucket {row['bucket']} has ")
    samples = _samples(Path(run_dir) / "shards")
    assert sorted(s["sample_id"] for s in samples) == sorted(kept["sample_id"])
    for tar in sorted((Path(run_dir) / "shards").glob("*.tar")):
        with tarfile.open(tar) as tf:
            for n in tf.getnames():
                if n.endswith(".json"):
                    s = json.loads(tf.extractfile(n).read())
                    parts = sum(p["type"] == "image" for m in s["messages"] for p in m["content"])
                    assert parts == len(s["images"]) == s["tokens"]["images"]
                    assert s["tokens"]["visual"] == 256 * len(s["images"])     # 64x48 px: one tile each
                    for member in s["images"]:
                        Image.open(io.BytesIO(tf.extractfile(member).read())).verify()
                    assert s["messages"][-1]["role"] == "assistant" and s["bucket"] is not None


def test_category_phrase_stage_asks_only_rows_without_a_phrase(tiny_models):
    """The stand-alone phrase stage on the transformers engine (which does not constrain JSON, so a
    random model's answer is a recorded parse error, or a phrase when it happens to be valid)."""
    import pandas as pd

    from instruction_data import assistant, image_bytes, user
    from judges.config import EngineConfig
    from stages.category import CategoryPhraseParams, CategoryPhraseStage

    stage = CategoryPhraseStage(CategoryPhraseParams(engine=EngineConfig(kind="hf", model=str(tiny_models["tiny-qwen2vl"])),
                                                     temperature=1.0), "category")
    stage.setup()
    msgs = json.dumps([user("What colour is the square?", 1), assistant("Purple.")])
    batch = pd.DataFrame({"sample_id": ["a", "b"], "status": ["kept", "kept"], "reason": [None, None],
                          "messages": [msgs, msgs], "images": [[image_bytes(1)], [image_bytes(2)]],
                          "category": ["colour recognition of shapes", None]})
    try:
        out = stage.process(batch.copy())
    finally:
        stage.teardown()
    assert out.loc[0, "category"] == "colour recognition of shapes" and pd.isna(out.loc[0, "category_raw"])
    assert out.loc[0, "status"] == "kept" and stage.engine is not None      # row b needed the model
    assert isinstance(out.loc[1, "category_raw"], str)
    if out.loc[1, "status"] == "kept":
        assert 3 <= len(out.loc[1, "category"]) <= 80
    else:
        assert out.loc[1, "status"] == "error" and out.loc[1, "reason"].startswith("judge_parse: ")


@pytest.fixture(scope="module")
def cot_run(ray_local, tmp_path_factory):
    os.environ.setdefault("SAILCURATE_CACHE", str(tmp_path_factory.mktemp("cache")))
    sources = build_cot_sources(tmp_path_factory.mktemp("cot_src"))
    run_dir = tmp_path_factory.mktemp("cot_smoke") / "run"
    record = run_config(ROOT / "configs" / "cot.yaml", run_dir, smoke=True,
                        inputs=[f"{k}={v}" for k, v in sources.items()],
                        overrides=["generate.engine.kind=hf", "generate.max_tokens=24",
                                   "difficulty.max_tokens=6", "difficulty.verifier_temperature=1.0",
                                   "difficulty.resources.batch_size=64"])
    return run_dir, record


def test_cot_cleaning_and_dedup(cot_run):
    run_dir, _ = cot_run
    assert_conservation(run_dir)
    clean = manifest(run_dir, "clean").set_index("source_key")
    assert clean.loc["m0", "question"] == "What is the area of the shaded rectangle?"
    assert (clean.loc["m0", "reference"], clean.loc["m0", "mc_conversion"]) == ("24", "converted")
    assert clean.loc["m1", "question"] == "How many sides does the shape have?" and clean.loc["m1", "hints_removed"] == 1
    assert clean.loc["m3", "mc_conversion"] == "options_are_text" and clean.loc["m3", "answer_kind"] == "choice"
    assert clean.loc["m5", "reference"] == "20 cm" and clean.loc["v2", "answer_kind"] == "short_text"
    assert clean.loc["m_noref", "reason"].startswith("no_reference")
    dedup = manifest(run_dir, "dedup").set_index("source_key")
    assert dedup.loc["m_dup", "reason"] == f"exact_dup_of:{dedup.loc['m1', 'sample_id']}" or \
        dedup.loc["m1", "reason"] == f"exact_dup_of:{dedup.loc['m_dup', 'sample_id']}"


def test_cot_generation_format_and_answer_checks(cot_run):
    run_dir, _ = cot_run
    gen = manifest(run_dir, "generate").set_index("source_key")
    for key in ("k0", "k1"):       # LLaVA-CoT reasoning, reused and checked like a generated one
        assert (gen.loc[key, "cot_origin"], gen.loc[key, "cot_status"], gen.loc[key, "cot_decided_by"]) == \
            ("source", "ok", "numeric")
    assert gen.loc["k2", "cot_repetition"] > 0.5
    generated = gen[gen["cot_origin"] == "generated"]
    assert len(generated) >= 8
    assert generated["cot_status"].str.match(r"^(ok|format: |answer_mismatch: |engine: )").all()


def test_difficulty_samples_are_verified_and_the_deciding_path_recorded(cot_run):
    run_dir, _ = cot_run
    d = manifest(run_dir, "difficulty")
    verifiable = d[d["difficulty_k"].notna()]
    assert len(verifiable) >= 8 and (verifiable["difficulty_k"] == 4).all()
    paths = set()
    for _, row in verifiable.iterrows():
        samples = json.loads(row["difficulty_samples"])
        assert len(samples) == 4
        assert row["difficulty_solved"] == sum(s["match"] is True for s in samples)
        assert row["pass_rate"] == pytest.approx(row["difficulty_solved"] / 4)
        assert json.loads(row["difficulty_decided_by"]) == {
            k: sum(s["decided_by"] == k for s in samples) for k in {s["decided_by"] for s in samples}}
        for s in samples:
            assert s["decided_by"] in ("numeric", "symbolic", "choice", "string", "model", "no_answer", "undecided")
            assert (s["extracted"] is None) == (s["decided_by"] == "no_answer")
            paths.add(s["decided_by"])
    assert "model" in paths        # the answer_verification judge decided some answers


def test_routing_follows_the_recorded_numbers(cot_run):
    run_dir, record = cot_run
    route = manifest(run_dir, "route")
    gen = manifest(run_dir, "generate").set_index("sample_id")
    diff = manifest(run_dir, "difficulty").set_index("sample_id")
    clean = manifest(run_dir, "clean").set_index("sample_id")
    for _, row in route.iterrows():
        sid = row["sample_id"]
        k, solved = diff.loc[sid, "difficulty_k"], diff.loc[sid, "difficulty_solved"]
        rl = (clean.loc[sid, "answer_kind"] in ("choice", "numeric", "symbolic", "list", "short_text") and k == k and k > 0
              and solved < k and not (solved == 0 and clean.loc[sid, "task_category"] == "math"))
        assert bool(row["split_rl"]) == bool(rl), (row["rl_why"], k, solved)
        lc = (gen.loc[sid, "cot_status"] == "ok" and gen.loc[sid, "cot_answer_overlap"] <= 0.6
              and gen.loc[sid, "cot_repetition"] <= 0.3 and gen.loc[sid, "cot_tokens"] >= 16)
        assert bool(row["split_longcot"]) == bool(lc), row["longcot_why"]
        if row["status"] != "kept":
            assert row["reason"].startswith("no_output: longcot (") and not row["split_longcot"] and not row["split_rl"]
    stats = record["stages"]["route"]["stats"]
    assert stats["longcot_sft"] == 2 and stats["reasons"]["longcot:redundant"] >= 1
    fusion = stats["think_fusion_sft"]
    assert (fusion["cot"], fusion["direct"]) == (1, 9)      # 1:9 of the ~12 routed items


def test_three_outputs_with_their_own_shards(cot_run):
    run_dir, record = cot_run
    route = manifest(run_dir, "route")
    longcot = _samples(Path(run_dir) / "longcot_sft")
    kept_lc = manifest(run_dir, "balance_length").query("status == 'kept'")
    assert sorted(s["sample_id"] for s in longcot) == sorted(kept_lc["sample_id"]) and longcot
    for s in longcot:
        reply = s["messages"][-1]["content"][0]["text"]
        assert reply.startswith("<think>") and "\\boxed{" in reply.split("</think>")[1]
        assert s["reference"] and s["cot_tokens"] >= 16 and len(s["images"]) == 1
    fusion = _samples(Path(run_dir) / "think_fusion_sft")
    modes = sorted(s["think_mode"] for s in fusion)
    assert modes == ["cot"] + ["direct"] * 9
    for s in fusion:
        u, a = s["messages"]
        assert (u["loss"], a["loss"]) == (False, True)
        text = a["content"][0]["text"]
        if s["think_mode"] == "direct":
            assert text.startswith("<think>\n\n</think>\n\n") and "\\boxed" not in text
        else:
            assert text.startswith("<think>\n") and len(text) > 40
    rl = _samples(Path(run_dir) / "rl")
    assert sorted(s["sample_id"] for s in rl) == sorted(route.query("split_rl == True")["sample_id"])
    for s in rl:
        assert [m["role"] for m in s["messages"]] == ["user"] and s["reference"]
        assert 0 <= s["pass_rate"] < 1 and s["difficulty_k"] == 4
    assert record["stages"]["shard_rl"]["counts"]["in"] == len(rl)
