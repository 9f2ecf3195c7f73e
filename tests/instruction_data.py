"""Small instruction and chain-of-thought inputs in every supported format, good and broken rows,
with real (generated) images: what tests/test_instructions.py and the pipeline tests read.

Each builder returns the folder per source and, for every record, what should happen to it
(``EXPECT``: sample key -> the reason prefix of its error/drop, or "kept")."""
from __future__ import annotations

import io
import json
from pathlib import Path


def image_bytes(seed: int, size=(64, 48), fmt="JPEG") -> bytes:
    """A small real image, different for each seed."""
    from PIL import Image, ImageDraw

    im = Image.new("RGB", size, ((seed * 53) % 256, (seed * 97) % 256, (seed * 31) % 256))
    d = ImageDraw.Draw(im)
    d.rectangle([seed % 20, seed % 15, 20 + seed % 30, 18 + seed % 20], fill=(255 - (seed * 7) % 256, 40, 200))
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def _write_jsonl(path: Path, lines: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x, ensure_ascii=False) for x in lines) + "\n",
                    encoding="utf-8")


def user(text=None, images=0):
    return {"role": "user", "content": [{"type": "image"}] * images + ([{"type": "text", "text": text}] if text else [])}


def assistant(text):
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def build_instruction_sources(root: Path) -> tuple[dict[str, Path], dict[str, str]]:
    """Five sources (llava, sharegpt, openai_chat, caption_qa, text_only) -> folders, and the
    expected outcome of each record by source key (prefix of the reason, or 'kept' after
    validation)."""
    root = Path(root)
    expect: dict[str, str] = {}

    # -- LLaVA: conversations with <image> tokens, one image -------------------------------------
    d = root / "llava"
    (d / "img").mkdir(parents=True, exist_ok=True)
    for i in range(1, 8):
        (d / "img" / f"{i}.jpg").write_bytes(image_bytes(i))
    llava = [
        {"id": "l1", "image": "img/1.jpg", "conversations": [
            {"from": "human", "value": "<image>\nWhat color is the square in the picture?"},
            {"from": "gpt", "value": "The square is a shade of purple."}]},
        {"id": "l2", "image": "img/2.jpg", "conversations": [
            {"from": "human", "value": "<image>\nHow many shapes are there?"}, {"from": "gpt", "value": "There is one shape."},
            {"from": "human", "value": "Where is it?"}, {"from": "gpt", "value": "It is near the top left corner."}]},
        {"id": "l3", "image": "img/3.jpg", "conversations": [
            {"from": "human", "value": "<image>\n<image>\nCompare the two images."}, {"from": "gpt", "value": "They differ."}]},
        {"id": "l4", "image": "img/missing.jpg", "conversations": [
            {"from": "human", "value": "<image>\nWhat is shown?"}, {"from": "gpt", "value": "A square."}]},
        {"id": "l5", "image": "img/4.jpg", "conversations": [
            {"from": "human", "value": "<image>\nDescribe the image."}, {"from": "gpt", "value": "   "}]},
        {"id": "l6", "image": "img/5.jpg", "conversations": [
            {"from": "gpt", "value": "<image>\nHello."}, {"from": "human", "value": "Hi."}]},
        "{this line is not json",
        {"id": "l8", "image": "img/1.jpg", "conversations": [          # same image + question as l1: one is a duplicate
            {"from": "human", "value": "<image>\nWhat color is the square in the picture?"},
            {"from": "gpt", "value": "It is purple."}]},
        {"id": "l9", "image": "img/6.jpg", "conversations": [
            {"from": "human", "value": "<image>\nWhat is the total shown on the receipt?"}, {"from": "gpt", "value": "N/A"}]},
        {"id": "l10", "image": "img/7.jpg", "conversations": [
            {"from": "human", "value": "<image>\nWhat is the main object in this picture?"},
            {"from": "gpt", "value": "图片中是一个紫色的正方形，位于左上角。"}]},
    ]
    _write_jsonl(d / "llava.jsonl", llava)
    expect.update({"l1": "kept", "l2": "kept", "l3": "image_token_mismatch", "l4": "missing_image", "l5": "empty_turn",
                   "l6": "role_order", "llava.jsonl:7": "bad_json", "l8": "kept", "l9": "rules: answer",
                   "l10": "rules: language"})

    # -- ShareGPT: a JSON array; system prompt; two images -----------------------------------------
    d = root / "sharegpt"
    (d / "pics").mkdir(parents=True, exist_ok=True)
    for i in range(10, 14):
        (d / "pics" / f"{i}.png").write_bytes(image_bytes(i, fmt="PNG"))
    sharegpt = [
        {"id": "s1", "system": "You are a helpful assistant.", "images": ["pics/10.png", "pics/11.png"],
         "conversations": [{"from": "human", "value": "<image>\n<image>\nWhich image is brighter, the first or the second?"},
                           {"from": "gpt", "value": "The second image is brighter than the first one."}]},
        {"id": "s2", "images": ["pics/12.png"], "conversations": [
            {"role": "user", "content": "<image>\nWhat shape is drawn here?"},
            {"role": "assistant", "content": "A filled rectangle."}]},
        {"id": "s3", "images": ["pics/13.png"], "conversations": [
            {"from": "human", "value": "<image>\nName it."}, {"from": "narrator", "value": "A box."}]},
        {"id": "s4", "images": [], "conversations": [
            {"from": "human", "value": "What is the capital of France?"}, {"from": "gpt", "value": "Paris is the capital of France."},
            {"from": "human", "value": "What is the capital of France?"}, {"from": "gpt", "value": "It is Paris, as said before."}]},
    ]
    (d / "train.json").write_text(json.dumps(sharegpt), encoding="utf-8")
    expect.update({"s1": "kept", "s2": "kept", "s3": "unknown_role", "s4": "rules: duplicate_turn"})

    # -- OpenAI messages: content parts, images list or inline data URL ----------------------------
    import base64

    d = root / "openai"
    (d / "im").mkdir(parents=True, exist_ok=True)
    (d / "im" / "20.jpg").write_bytes(image_bytes(20))
    (d / "im" / "21.jpg").write_bytes(image_bytes(21))
    data_url = "data:image/png;base64," + base64.b64encode(image_bytes(22, fmt="PNG")).decode()
    openai = [
        {"id": "o1", "images": ["im/20.jpg"], "messages": [
            {"role": "system", "content": "Answer briefly."}, user("What color is the background of this photo?", 1),
            assistant("The background is a muted teal colour.")]},
        {"id": "o2", "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url}},
                                         {"type": "text", "text": "Is there a rectangle in the image?"}]},
            {"role": "assistant", "content": "Yes, there is one rectangle."}]},
        {"id": "o3", "images": ["im/21.jpg"], "messages": [user("What is in the image?", 1)]},
        {"id": "o4", "images": ["im/21.jpg"], "messages": [
            user("Read the text.", 1), assistant("<|im_end|> The text says hello.")]},
    ]
    _write_jsonl(d / "chat.jsonl", openai)
    expect.update({"o1": "kept", "o2": "kept", "o3": "role_order", "o4": "rules: format"})

    # -- the caption-to-QA exporter's output (instruction_export) ---------------------------------
    d = root / "caption_qa"
    (d / "images").mkdir(parents=True, exist_ok=True)
    (d / "_index").mkdir(parents=True, exist_ok=True)
    cq = []
    for i, q, a in ((30, "What is the dominant colour of the image?", "The image is mostly a dark olive colour."),
                    (31, "Is there a rectangle in the upper part?", "Yes, a magenta rectangle is near the top.")):
        (d / "images" / f"c{i}.jpg").write_bytes(image_bytes(i))
        cq.append({"id": f"c{i}", "source": "captions", "images": [f"images/c{i}.jpg"],
                   "messages": [user(q, 1), assistant(a), user("And its size?"), assistant("It is small, about a third of the width.")],
                   "meta": {"origin": "caption_qa", "caption": "A small image with a rectangle."}})
        expect[f"c{i}"] = "kept"
    _write_jsonl(d / "caption_qa-000000.jsonl", cq)
    (d / "instructions.json").write_text(json.dumps({"files": ["caption_qa-000000.jsonl"]}))
    (d / "_index" / "000000.parquet").write_bytes(b"not a data file")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"sample_id": ["c30", "c31"], "file": ["caption_qa-000000.jsonl"] * 2}), d / "index.parquet")

    # -- pure text (Alpaca); 2 of 3 fail the rules -> the source is rejected ----------------------
    d = root / "text"
    text = [
        {"id": "t1", "instruction": "Give a synonym for the word below.", "input": "happy",
         "output": "A common synonym for happy is joyful."},
        {"id": "t2", "instruction": "What is shown in the image above?", "output": "A cat sitting on a chair."},
        {"id": "t3", "instruction": "Write a haiku about autumn leaves.", "output": "I'm sorry, I cannot help with that."},
    ]
    _write_jsonl(d / "alpaca.jsonl", text)
    expect.update({"t1": "source_rejected", "t2": "rules: image", "t3": "rules: answer"})

    return ({"llava": root / "llava", "sharegpt": root / "sharegpt", "openai_chat": root / "openai",
             "caption_qa": root / "caption_qa", "text_only": root / "text"}, expect)


def build_cot_sources(root: Path) -> dict[str, Path]:
    """Three CoT sources: MathV360K-style (LLaVA, hints, multiple choice), VisualWebInstruct-style
    question/answer, and LLaVA-CoT (reasoning already there)."""
    root = Path(root)
    d = root / "mathv360k"
    (d / "images").mkdir(parents=True, exist_ok=True)
    recs = []
    problems = [
        ("Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the end.\n"
         "Question: What is the area of the shaded rectangle?\nChoices:\n(A) 12\n(B) 24\n(C) 36\n(D) 48", "B"),
        ("Hint: Please answer the question requiring an integer answer and provide the final value, e.g., 1, 2, 3, at the end.\n"
         "Question: How many sides does the shape have?", "4"),
        ("What fraction of the figure is shaded?\nAnswer the question using a single word or phrase.", "3/4"),
        ("Which of the following shapes is shown?\nA. circle\nB. square\nC. triangle", "B"),
        ("Solve for x in the equation shown: 2x + 6 = 14.", "x = 4"),
        ("What is the perimeter of the square in the image?", "The perimeter is 4 times the side, so the answer is 20 cm."),
    ]
    for i, (q, a) in enumerate(problems):
        (d / "images" / f"m{i}.jpg").write_bytes(image_bytes(40 + i))
        recs.append({"id": f"m{i}", "image": f"images/m{i}.jpg",
                     "conversations": [{"from": "human", "value": "<image>\n" + q}, {"from": "gpt", "value": a}]})
    recs.append({"id": "m_dup", "image": "images/m1.jpg",      # same image and question as m1 after cleaning
                 "conversations": [{"from": "human", "value": "<image>\nHow many sides does the shape have?"},
                                   {"from": "gpt", "value": "4"}]})
    recs.append({"id": "m_noref", "image": "images/m2.jpg", "conversations": [
        {"from": "human", "value": "<image>\nExplain the figure."},
        {"from": "gpt", "value": "The figure shows a shape.\nIt has several parts.\nEach part is coloured."}]})
    _write_jsonl(d / "train.jsonl", recs)

    d = root / "visualwebinstruct"
    (d / "images").mkdir(parents=True, exist_ok=True)
    vwi = []
    for i, (q, a) in enumerate([("What is 15% of 80?", "12"), ("Compute 1.2 \\times 10^{3} divided by 4.", "300"),
                                ("Name the capital city of Japan.", "Tokyo")]):
        rec = {"id": f"v{i}", "question": q, "answer": a}
        if i < 2:
            (d / "images" / f"v{i}.png").write_bytes(image_bytes(60 + i, fmt="PNG"))
            rec["image"] = f"images/v{i}.png"
        vwi.append(rec)
    _write_jsonl(d / "data.jsonl", vwi)

    d = root / "llava_cot"
    (d / "images").mkdir(parents=True, exist_ok=True)
    cot = []
    reasonings = [
        ("How many red squares are in the image?", "3",
         "I will count the red squares one by one, scanning the image from left to right.",
         "The image shows a grid of coloured squares; some are red and some are blue.",
         "Scanning the top row I find one red square on the left. The middle row holds a second red square next to "
         "a blue one. The bottom row has a third red square in its right corner. No other square is red."),
        ("What is the sum of the two numbers written on the board?", "17",
         "I need to read both numbers and add them.", "A board with the numbers 8 and 9 written in chalk.",
         "Reading the board gives the numbers eight and nine. Adding eight and nine: eight plus two is ten, and the "
         "remaining seven makes seventeen in total."),
        ("Is the door open or closed?", "closed",
         "I look at the door.", "A door.", "closed " * 20),
    ]
    for i, (q, ref, summary, caption, reasoning) in enumerate(reasonings):
        (d / "images" / f"k{i}.jpg").write_bytes(image_bytes(70 + i))
        answer = (f"<SUMMARY>{summary}</SUMMARY><CAPTION>{caption}</CAPTION><REASONING>{reasoning}</REASONING>"
                  f"<CONCLUSION>{ref}</CONCLUSION>")
        cot.append({"id": f"k{i}", "image": f"images/k{i}.jpg",
                    "conversations": [{"from": "human", "value": "<image>\n" + q}, {"from": "gpt", "value": answer}]})
    _write_jsonl(d / "train.jsonl", cot)
    return {"mathv360k": root / "mathv360k", "visualwebinstruct": root / "visualwebinstruct", "llava_cot": root / "llava_cot"}
