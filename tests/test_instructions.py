"""SAIL-Instruction2 and CoT data without a model: one message schema for every input format,
malformed conversations as error rows with reasons, rule checks, CoT cleaning and the gate's
decision. The pipelines run end to end in tests/judge_tests/test_instruction_pipeline.py.
"""
from __future__ import annotations

import json

import pytest

from instructions.cot import (
    choice_to_free_response, parse_choices, reasoning_stats, reference_from_answer, source_reasoning, strip_hints,
)
from instructions.normalize import NormalizeError, normalize_record
from instructions.rules import RuleConfig, check_rules, detect_language
from instructions.schema import Conversation
from instruction_data import assistant, build_instruction_sources, image_bytes, user

# -- one schema for every format ---------------------------------------------------------------

CANONICAL = [user("What is in the picture?", 1), assistant("A red square.")]
SAME_SAMPLE = {
    "llava": {"id": "x", "image": "a.jpg", "conversations": [
        {"from": "human", "value": "<image>\nWhat is in the picture?"}, {"from": "gpt", "value": "A red square."}]},
    "sharegpt": {"id": "x", "images": ["a.jpg"], "conversations": [
        {"role": "user", "content": "<image>What is in the picture?"}, {"role": "assistant", "content": "A red square."}]},
    "openai_parts": {"id": "x", "images": ["a.jpg"], "messages": CANONICAL},
    "openai_image_url": {"id": "x", "messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "a.jpg"}},
                                     {"type": "text", "text": "What is in the picture?"}]},
        {"role": "assistant", "content": "A red square."}]},
    "openai_string_tokens": {"id": "x", "images": ["a.jpg"], "messages": [
        {"role": "user", "content": "<image>\nWhat is in the picture?"}, {"role": "assistant", "content": "A red square."}]},
    "cauldron": {"id": "x", "images": ["a.jpg"], "texts": [{"user": "What is in the picture?", "assistant": "A red square."}]},
    "qa": {"id": "x", "image": "a.jpg", "question": "What is in the picture?", "answer": "A red square."},
    "alpaca": {"id": "x", "images": ["a.jpg"], "instruction": "What is in the picture?", "output": "A red square."},
}


@pytest.mark.parametrize("form", sorted(SAME_SAMPLE))
def test_every_format_normalises_to_the_same_conversation(form):
    n = normalize_record(SAME_SAMPLE[form])
    assert [m.to_dict() for m in n.conversation.messages] == CANONICAL
    assert n.image_sources == ["a.jpg"] and n.key == "x"


def test_caption_to_qa_records_round_trip():
    """The exporter's record (OpenAI messages, image parts by order, paths relative to the JSONL) is
    read and written back unchanged."""
    rec = {"id": "c1", "source": "captions", "images": ["images/c1.jpg", "images/c1b.png"],
           "messages": [user("Compare the two images.", 2), assistant("The second is brighter."),
                        user("Which is larger?"), assistant("They are the same size.")],
           "meta": {"origin": "caption_qa", "caption": "two crops"}}
    n = normalize_record(rec)
    assert n.format == "openai" and n.conversation.image_parts == 2
    assert n.conversation.to_record(n.key, rec["source"], n.meta["meta"]) == rec
    again = Conversation.from_messages(n.conversation.messages_json(), n.conversation.images)
    assert again.to_record("c1", "captions", rec["meta"]) == rec


def test_several_images_in_several_turns_keep_their_order():
    rec = {"images": ["1.jpg", "2.jpg", "3.jpg"], "conversations": [
        {"from": "human", "value": "<image>\n<image>\nWhat changed?"}, {"from": "gpt", "value": "The colour."},
        {"from": "human", "value": "And here? <image>"}, {"from": "gpt", "value": "Nothing."}]}
    conv = normalize_record(rec).conversation
    assert [m.image_count for m in conv.messages] == [2, 0, 1, 0]
    assert conv.transcript().startswith("user: <image>\n<image>\nWhat changed?")


def test_pure_text_samples_have_no_images():
    n = normalize_record({"instruction": "Summarise.", "input": "A long text.", "output": "Short."})
    assert n.image_sources == [] and n.conversation.messages[0].text == "Summarise.\n\nA long text."


MALFORMED = [
    ("two tokens, one image", {"image": "a.jpg", "conversations": [
        {"from": "human", "value": "<image><image>Q"}, {"from": "gpt", "value": "A"}]}, "image_token_mismatch"),
    ("one image, no token", {"image": "a.jpg", "conversations": [
        {"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]}, "image_token_mismatch"),
    ("a token, no image", {"conversations": [
        {"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}]}, "image_token_mismatch"),
    ("image parts vs images list", {"images": ["a.jpg", "b.jpg"], "messages": [user("Q", 1), assistant("A")]},
     "image_token_mismatch"),
    ("empty answer", {"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": " \n"}]}, "empty_turn"),
    ("empty question", {"messages": [{"role": "user", "content": ""}, assistant("A")]}, "empty_turn"),
    ("assistant first", {"conversations": [{"from": "gpt", "value": "A"}, {"from": "human", "value": "Q"}]}, "role_order"),
    ("two user turns", {"messages": [user("Q1"), user("Q2"), assistant("A")]}, "role_order"),
    ("no answer", {"messages": [user("Q")]}, "role_order"),
    ("system in the middle", {"messages": [user("Q"), {"role": "system", "content": "S"}, assistant("A")]}, "role_order"),
    ("no turns", {"messages": []}, "role_order"),
    ("unknown role", {"conversations": [{"from": "human", "value": "Q"}, {"from": "robot", "value": "A"}]}, "unknown_role"),
    ("video token", {"conversations": [{"from": "human", "value": "<video>\nQ"}, {"from": "gpt", "value": "A"}]},
     "unsupported_media"),
    ("unknown part type", {"messages": [{"role": "user", "content": [{"type": "audio_clip"}]}, assistant("A")]}, "bad_format"),
    ("no known fields", {"prompt_text": "Q", "completion_text": "A"}, "bad_format"),
    ("inline and listed images", {"images": ["a.jpg"], "messages": [
        {"role": "user", "content": [{"type": "image", "image": "b.jpg"}, {"type": "image"}, {"type": "text", "text": "Q"}]},
        assistant("A")]}, "bad_format"),
]


@pytest.mark.parametrize("what, rec, code", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_conversations_are_errors_with_reasons(what, rec, code):
    with pytest.raises(NormalizeError) as e:
        normalize_record(rec)
    assert str(e.value).startswith(code + ":"), str(e.value)


def test_implicit_image_tokens_is_an_option():
    rec = {"image": "a.jpg", "conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]}
    assert normalize_record(rec, implicit_image_tokens=True).conversation.messages[0].image_count == 1


def test_ingest_reads_every_file_kind_and_turns_bad_records_into_error_rows(tmp_path):
    """Read through the stage's own unit reader: each record is one row, errors name their cause,
    and the exporter's index files beside its JSONL are not read as data."""
    from pipeline.config import SourceConfig
    from stages.instruction_ingest import InstructionIngestParams, InstructionIngestStage

    sources, expect = build_instruction_sources(tmp_path)
    seen = {}
    for name, path in sources.items():
        stage = InstructionIngestStage(InstructionIngestParams(source=name, chunk_rows=4), "ingest")
        units = stage.list_units({name: SourceConfig(path=str(path))})
        for unit in units:
            df = stage.read_unit(unit)
            assert len(df) == len(set(df["sample_id"]))
            for _, row in df.iterrows():
                seen[row["source_key"]] = row
    assert set(seen) == set(expect)            # every record is exactly one row; nothing else was read
    for key, outcome in expect.items():
        row = seen[key]
        if outcome in ("image_token_mismatch", "missing_image", "empty_turn", "role_order", "bad_json", "unknown_role"):
            assert row["status"] == "error" and row["reason"].startswith(outcome), (key, row["reason"])
        else:
            assert row["status"] == "kept", (key, row["reason"])
    s1 = seen["s1"]
    assert s1["num_images"] == 2 and [bytes(b) for b in s1["images"]] == [
        (sources["sharegpt"] / "pics" / f"{i}.png").read_bytes() for i in (10, 11)]
    assert json.loads(s1["messages"])[0] == {"role": "system", "content": [{"type": "text", "text": "You are a helpful assistant."}]}
    assert seen["o2"]["num_images"] == 1 and bytes(seen["o2"]["images"][0]) == image_bytes(22, fmt="PNG")
    assert seen["t1"]["num_images"] == 0 and seen["t1"]["image_hash"] is None
    assert seen["l1"]["image_hash"] == seen["l8"]["image_hash"] and seen["l1"]["question"] == seen["l8"]["question"]


def test_parquet_with_image_bytes(tmp_path):
    """HF-style Parquet: a conversations column and the image bytes in {bytes, path} structs."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.config import SourceConfig
    from stages.instruction_ingest import InstructionIngestParams, InstructionIngestStage

    img = image_bytes(5)
    pq.write_table(pa.table({
        "id": ["p1", "p2"],
        "image": [{"bytes": img, "path": "x.jpg"}, None],
        "conversations": [[{"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "Grey."}],
                          [{"from": "human", "value": "Say hi."}, {"from": "gpt", "value": "Hi."}]],
    }), tmp_path / "part.parquet")
    stage = InstructionIngestStage(InstructionIngestParams(source="p"), "ingest")
    (unit,) = stage.list_units({"p": SourceConfig(path=str(tmp_path))})
    df = stage.read_unit(unit).set_index("source_key")
    assert bytes(df.loc["p1", "images"][0]) == img and df.loc["p2", "num_images"] == 0
    assert (df["status"] == "kept").all()


# -- rule checks ---------------------------------------------------------------------------------

def _conv(q, a, images=0, more=()):
    msgs = [user(q, images), assistant(a)] + [m for pair in more for m in (user(pair[0]), assistant(pair[1]))]
    return Conversation.from_messages(msgs, [f"{i}.jpg" for i in range(images)])


RULES = [
    ("good", _conv("What is the capital of France?", "Paris is the capital of France."), None),
    ("good multi-turn", _conv("Name a colour.", "Blue.", more=[("Another one?", "Green.")]), None),
    ("chat token in an answer", _conv("Read it.", "It says hi<|im_end|>"), "format"),
    ("image placeholder token", _conv("Look <ImageHere> please.", "Okay, it is a dog."), "format"),
    ("answer in another language", _conv("What is the colour of the sky today?", "天空今天是蓝色的，非常晴朗。"), "language"),
    ("too short an answer", _conv("What is two plus two?", " "), "length"),
    ("too long a turn", _conv("Tell me.", "word " * 5000), "length"),
    ("refers to a missing image", _conv("What is shown in the image?", "A dog on a couch."), "image"),
    ("placeholder answer", _conv("What is written on the sign?", "N/A"), "answer"),
    ("refusal", _conv("Describe the weather in Paris.", "I'm sorry, but I cannot help with that."), "answer"),
    ("question asked twice", _conv("What is 2+2?", "It is 4.", more=[("What is 2+2?", "Still 4.")]), "duplicate_turn"),
    ("answer echoes the question", _conv("The quick brown fox.", "The quick brown fox."), "duplicate_turn"),
]


@pytest.mark.parametrize("what, conv, code", RULES, ids=[r[0] for r in RULES])
def test_rule_checks(what, conv, code):
    problems = check_rules(conv, [], RuleConfig())
    if code is None:
        assert problems == []
    else:
        assert problems and problems[0].split(":")[0] == code, problems


def test_image_rules_decode_and_count():
    conv = _conv("What colour is it?", "It is purple.", images=2)
    good = [image_bytes(1), image_bytes(2, fmt="PNG")]
    assert check_rules(conv, good, RuleConfig()) == []
    assert check_rules(conv, [good[0], good[1][:40]], RuleConfig())[0].startswith("image: image 1 does not decode")
    assert check_rules(conv, [image_bytes(1, size=(8, 8)), good[1]], RuleConfig())[0] == "image: image 0 8x8 is smaller than 16 px"
    assert check_rules(conv, good, RuleConfig(max_images=1))[0] == "image: 2 images > 1"


def test_allowed_languages_and_detection():
    assert detect_language("What is the colour of the car in front?") == "en"
    assert detect_language("这是一只在沙发上睡觉的猫。") == "zh"
    assert detect_language("これは猫です。ソファの上で寝ています。") == "ja"
    assert detect_language("Это кошка, которая спит на диване.") == "ru"
    assert detect_language("Le chat dort sur le canapé depuis ce matin.") == "latin"
    assert detect_language("42") is None                     # too little text to tell
    conv = _conv("Это кошка на диване?", "Да, это кошка на диване.")
    assert check_rules(conv, [], RuleConfig(languages=["en", "zh"]))[0].startswith("language: ru")
    assert check_rules(conv, [], RuleConfig()) == []


# -- chain-of-thought cleaning -----------------------------------------------------------------------

def test_conflicting_hints_are_stripped():
    q = ("Hint: Please answer the question requiring an integer answer and provide the final value, e.g., 1, 2, 3, "
         "at the end.\nQuestion: How many sides does the shape have?")
    assert strip_hints(q) == ("How many sides does the shape have?", 1)
    assert strip_hints("What colour is the car?\nAnswer the question using a single word or phrase.") == (
        "What colour is the car?", 1)
    assert strip_hints("Which option is right?\nAnswer with the option's letter from the given choices directly.")[1] == 1
    assert strip_hints("Let's think step by step. What is 3+4?") == ("What is 3+4?", 1)
    assert strip_hints("What is 3+4?") == ("What is 3+4?", 0)


@pytest.mark.parametrize("question, reference, status, new_question, new_reference", [
    ("What is the area?\nChoices:\n(A) 12\n(B) 24\n(C) 36", "B", "converted", "What is the area?", "24"),
    ("What is the area? (A) 12 cm (B) 24 cm", "(B)", "converted", "What is the area?", "24 cm"),
    ("Simplify the expression.\nA. 2x+2\nB. x^2", "A", "converted", "Simplify the expression.", "2x+2"),
    ("What is the value of y?\nA. 3\nB. 5", "5", "converted", "What is the value of y?", "5"),
    ("Which of the following is largest?\nA. 3\nB. 5", "B", "refers_to_options", None, "B"),
    ("What animal is it?\nA. cat\nB. dog", "A", "options_are_text", None, "A"),
    ("How many apples?", "3", "not_choice", None, "3"),
])
def test_multiple_choice_to_free_response(question, reference, status, new_question, new_reference):
    fr = choice_to_free_response(question, reference)
    assert fr.status == status
    assert fr.question == (new_question if new_question is not None else question)
    assert fr.reference == new_reference


def test_parse_choices_forms():
    assert parse_choices("Q?\nA: red\nB: blue\nC: green").options == {"A": "red", "B": "blue", "C": "green"}
    assert parse_choices("Pick: (A) 1, (B) 2").options == {"A": "1", "B": "2"}
    assert parse_choices("A. only one option") is None


def test_reference_answers_and_existing_reasoning():
    assert reference_from_answer("The perimeter is 20, so the answer is 20 cm.") == "20 cm"
    assert reference_from_answer("Tokyo") == "Tokyo"
    assert reference_from_answer(r"... thus \boxed{\frac{1}{2}}") == r"\frac{1}{2}"
    assert reference_from_answer("A long explanation.\nOn several lines.\nWith no final answer.") is None
    cot = source_reasoning("<SUMMARY>Count.</SUMMARY><CAPTION>Three dots.</CAPTION><REASONING>One, two, three."
                           "</REASONING><CONCLUSION>3</CONCLUSION>", "3")
    assert cot == "<think>\nCount.\n\nThree dots.\n\nOne, two, three.\n</think>\nThe answer is \\boxed{3}."
    assert source_reasoning("<think>2+2 is 4.</think> So it is 4.", "4") == (
        "<think>\n2+2 is 4.\n</think>\nSo it is 4. The answer is \\boxed{4}.")
    assert source_reasoning("Just 4.", "4") is None


def test_redundancy_measures():
    restated = reasoning_stats("The answer is 42. So the answer is 42.", r"The answer is \boxed{42}.", "42")
    real = reasoning_stats("The base is 6 and the height is 8; half of 6 times 8 gives the area 24.",
                           r"The area is \boxed{24}.", "24")
    loop = reasoning_stats("check the side again " * 10, r"\boxed{4}", "4")
    assert restated["answer_overlap"] == 1.0 and real["answer_overlap"] < 0.3
    assert loop["repetition"] > 0.8 and real["repetition"] == 0.0
    assert real["tokens"] == 20    # words and punctuation marks


# -- the gate's decision (the stage runs it per block; tests/judge_tests runs the whole pipeline) --

def test_gate_keeps_only_rows_passing_both_checks_and_rejects_weak_sources():
    import pyarrow as pa

    from stages.base import DECIDED_AT_COLUMN
    from stages.instruction_validate import _apply_gate, _verdict_counts

    rows = [  # source, rule_ok, rule_reasons, instruction_valid
        ("a", True, None, True), ("a", False, "length: answer 0 has 0 characters < 1; answer: no final answer", None),
        ("a", True, None, False), ("a", True, None, True),
        ("b", True, None, True), ("b", False, "format: token '<img>' in message 0 (user)", None), ("b", True, None, None),
    ]
    t = pa.table({"sample_id": [str(i) for i in range(len(rows))], "source": [r[0] for r in rows],
                  "status": ["kept"] * len(rows), "reason": pa.nulls(len(rows), pa.string()),
                  DECIDED_AT_COLUMN: pa.nulls(len(rows), pa.string()),
                  "rule_ok": [r[1] for r in rows], "rule_reasons": [r[2] for r in rows],
                  "instruction_valid": [r[3] for r in rows]})
    counts = _verdict_counts(t, ["rule_ok", "instruction_valid"], "source").to_pylist()
    assert counts == [
        {"group": "a", "pass:rule_ok": 3, "pass:instruction_valid": 2, "pass:all": 2, "rows": 4},
        {"group": "b", "pass:rule_ok": 2, "pass:instruction_valid": 1, "pass:all": 1, "rows": 3},
    ]
    out = _apply_gate(t, ["rule_ok", "instruction_valid"], {"rule_ok": "rule_reasons"}, "source",
                      {"b": 1 / 3}, 0.5, "gate")
    assert out.column("reason").to_pylist() == [
        None, "rules: length: answer 0 has 0 characters < 1", "instruction_valid=no", None,
        "source_rejected: b pass rate 0.333 < 0.5", "rules: format: token '<img>' in message 0 (user)",
        "instruction_valid:missing"]
    assert out.column("status").to_pylist() == ["kept", "dropped", "dropped", "kept", "dropped", "dropped", "dropped"]
    assert out.column(DECIDED_AT_COLUMN).to_pylist() == [None, "gate", "gate", None, "gate", "gate", "gate"]


def test_water_filling_cap():
    from stages.category import water_fill_cap

    assert water_fill_cap([10, 3, 1], 9) == 5          # 5 + 3 + 1
    assert water_fill_cap([10, 3, 1], 100) == 10       # all rows
    assert water_fill_cap([4, 4], 1) == 1 and water_fill_cap([], 5) == 0


def test_fusion_cuts_are_the_nth_smallest_keys_over_all_blocks(ray_local):
    """cot_route picks the CoT and direct rows of think-fusion by the n-th smallest hash key; the
    keys are gathered in a task, never on the driver. Checked against a plain sort."""
    import numpy as np
    import pyarrow as pa
    import ray.data as rd

    from stages.cot import _nth_smallest

    rng = np.random.default_rng(7)
    keys = rng.integers(-2**62, 2**62, size=900)
    lc = rng.random(900) < 0.4
    blocks = [pa.table({"_route_key": keys[i:i + 100], "split_longcot": lc[i:i + 100]}) for i in range(0, 900, 100)]
    ds = rd.from_arrow(blocks)
    cot = np.sort(keys[lc])
    assert _nth_smallest(ds, "cot", None, 25) == cot[24]
    assert _nth_smallest(ds, "cot", None, 10**6) == cot[-1]  # more than there are: the largest
    direct = np.sort(keys[~(lc & (keys <= cot[24]))])
    assert _nth_smallest(ds, "direct", int(cot[24]), 300) == direct[299]
    assert _nth_smallest(ds, "cot", None, 0) is None
    assert _nth_smallest(rd.from_arrow([blocks[0].slice(0, 0)]), "cot", None, 5) is None
