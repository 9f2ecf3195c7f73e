"""Rule checks on a normalised sample: the intrinsic half of SAIL-Instruction2's dual validation.

Each check is cheap and explainable; a failing sample gets reasons ``check: detail``:

- ``format``: chat-template or placeholder tokens left in the text (``<|im_end|>``, ``<img>``,
  ``[IMG]``...), which would corrupt training prompts;
- ``language``: a language outside ``languages``, or an answer in another language than its
  question (``same_language``); detection is by script plus English function words
  (:func:`detect_language`), so it separates en / zh / ja / ko / ru / ar / ... but not two Latin
  languages other than English;
- ``length``: too short a question or answer, too long a turn or sample, too many turns;
- ``image``: too many images, an image that does not decode or is smaller than ``min_image_side``,
  or a text-only sample whose text talks about "the image" (a reference to a missing image);
- ``answer``: the final answer is missing, a placeholder (``N/A``, ``<answer>``) or a refusal;
- ``duplicate_turn``: a user question asked twice, an answer given twice, or an answer that only
  repeats its question.
"""
from __future__ import annotations

import io
import re
import unicodedata
from typing import Sequence

from pydantic import BaseModel, ConfigDict, Field

from instructions.schema import Conversation


class RuleConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    languages: list[str] | None = Field(None, description="allowed languages (detect_language codes, e.g. [en, zh]); None allows any")
    same_language: bool = Field(True, description="an answer must be in the language of its question (when both are detected)")
    min_question_chars: int = Field(2, ge=0, description="shortest user turn (text characters); an image-only turn counts as its image")
    min_answer_chars: int = Field(1, ge=1, description="shortest assistant turn")
    max_turn_chars: int = Field(20_000, ge=1)
    max_total_chars: int = Field(60_000, ge=1)
    max_turns: int = Field(40, ge=2, description="user + assistant messages")
    max_images: int = Field(16, ge=0)
    decode_images: bool = Field(True, description="open every image (header and pixels) and check its size")
    min_image_side: int = Field(16, ge=1)
    refusals: bool = Field(True, description="an answer that is a refusal ('I'm sorry, I cannot...') fails")
    duplicate_turns: bool = True
    dangling_image_reference: bool = Field(True, description="a text-only sample that talks about 'the image' fails")


_SPECIAL_TOKENS = re.compile(
    r"<\|(?:im_start|im_end|endoftext|image_pad|vision_start|vision_end|video_pad|eot_id|start_header_id)\|>"
    r"|<ImageHere>|<img>|</img>|\[IMG\]|<video>|<\/?s>(?=\s|$)|<image_\d+>")
_PLACEHOLDERS = {"n/a", "na", "none", "null", "nan", "todo", "tbd", "<answer>", "[answer]", "answer", "...",
                 "…", "-", "?", "xxx", "placeholder", "your answer here"}
_REFUSAL = re.compile(
    r"^\W*(?:i['\u2019]?m sorry|i am sorry|sorry,? (?:but )?i|i (?:cannot|can['\u2019]?t|can not|am unable|"
    r"['\u2019]m unable|won['\u2019]?t be able)|as an ai\b|unfortunately,? i (?:cannot|can['\u2019]?t|am unable))",
    re.I)
_IMAGE_TALK = re.compile(
    r"\b(?:in|on|from|of|at) (?:the|this|these|given|provided|attached|above) "
    r"(?:image|images|picture|pictures|photo|photos|photograph|figure|screenshot|diagram|chart)\b"
    r"|\b(?:shown|depicted|pictured|visible) in the (?:image|picture|photo|figure)\b"
    r"|(?:图中|图片中|这张图|如图)", re.I)
_EN_WORDS = frozenset(
    "the a an of and to in is are was were be been it this that what which who how why when where with for "
    "on at by from as or not do does did can could would should will there their they you your we our he she "
    "his her its have has had i me my".split())
_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)


def _script(ch: str) -> str | None:
    o = ord(ch)
    if 0x4E00 <= o <= 0x9FFF or 0x3400 <= o <= 0x4DBF or 0xF900 <= o <= 0xFAFF:
        return "han"
    if 0x3040 <= o <= 0x30FF:
        return "kana"
    if 0xAC00 <= o <= 0xD7AF or 0x1100 <= o <= 0x11FF:
        return "hangul"
    if 0x0400 <= o <= 0x04FF:
        return "cyrillic"
    if 0x0600 <= o <= 0x06FF:
        return "arabic"
    if 0x0900 <= o <= 0x097F:
        return "devanagari"
    if 0x0E00 <= o <= 0x0E7F:
        return "thai"
    if 0x0370 <= o <= 0x03FF:
        return "greek"
    if 0x0590 <= o <= 0x05FF:
        return "hebrew"
    if ch.isalpha() and unicodedata.name(ch, "").startswith("LATIN"):
        return "latin"
    return None


_SCRIPT_LANG = {"hangul": "ko", "cyrillic": "ru", "arabic": "ar", "devanagari": "hi", "thai": "th",
                "greek": "el", "hebrew": "he"}


def detect_language(text: str | None, min_letters: int = 12) -> str | None:
    """A language code from the dominant script: ``zh`` (Han), ``ja`` (kana present), ``ko``, ``ru``
    (Cyrillic), ``ar``, ``hi``, ``th``, ``el``, ``he``; Latin script is ``en`` when English function
    words make up at least 10% of its words, else ``latin``. None when there are fewer than
    ``min_letters`` letters (a number, a formula, a single word: no evidence)."""
    if not text:
        return None
    counts: dict[str, int] = {}
    for ch in text:
        s = _script(ch)
        if s:
            counts[s] = counts.get(s, 0) + 1
    total = sum(counts.values())
    if total < min_letters and counts.get("han", 0) + counts.get("kana", 0) + counts.get("hangul", 0) < 4:
        return None
    if counts.get("kana", 0) >= 0.1 * total:
        return "ja"
    top = max(counts, key=counts.get)
    if top in ("han", "kana"):
        return "zh"
    if top == "latin":
        words = [w.lower() for w in _WORD.findall(text) if all(_script(c) == "latin" for c in w)]
        if words and sum(w in _EN_WORDS for w in words) >= max(1, 0.1 * len(words)):
            return "en"
        return "latin"
    return _SCRIPT_LANG.get(top, top)


def _norm(s: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", s.lower()).split())


def image_problem(data: bytes | None, min_side: int) -> str | None:
    """None when the bytes decode to an image with both sides >= min_side, else why not."""
    from PIL import Image

    from stages.png_chunks import png_stream_problem

    if not data:
        return "no bytes"
    try:
        im = Image.open(io.BytesIO(data))
        w, h = im.size
        broken = png_stream_problem(data) if im.format == "PNG" else None  # Pillow fills in a cut PNG
        if broken:
            return f"does not decode ({broken})"
        if im.format == "JPEG":
            im.draft("RGB", (max(1, w // 8), max(1, h // 8)))
        im.load()
    except Exception as e:  # Pillow raises many types for bad data
        return f"does not decode ({type(e).__name__})"
    if min(w, h) < min_side:
        return f"{w}x{h} is smaller than {min_side} px"
    return None


def check_rules(conv: Conversation, images: Sequence[bytes] | None, cfg: RuleConfig) -> list[str]:
    """Every failing check of one sample, as ``check: detail`` (empty: all pass)."""
    out: list[str] = []
    turns = conv.turns
    users = [m for m in turns if m.role == "user"]
    answers = [m for m in turns if m.role == "assistant"]
    n_images = len(images) if images is not None else len(conv.images)

    # format
    for i, m in enumerate(conv.messages):
        hit = _SPECIAL_TOKENS.search(m.text)
        if hit:
            out.append(f"format: token {hit.group(0)!r} in message {i} ({m.role})")
            break

    # language
    if cfg.languages is not None or cfg.same_language:
        for q, a in zip(users, answers):
            lq, la = detect_language(q.text), detect_language(a.text)
            bad = [x for x in (lq, la) if x is not None and cfg.languages is not None and x not in cfg.languages]
            if bad:
                out.append(f"language: {bad[0]} is not one of {cfg.languages}")
                break
            if cfg.same_language and lq and la and lq != la:
                out.append(f"language: answer in {la}, question in {lq}")
                break

    # length
    for k, q in enumerate(users):
        if len(q.text.strip()) < cfg.min_question_chars and not q.image_count:
            out.append(f"length: question {k} has {len(q.text.strip())} characters < {cfg.min_question_chars}")
            break
    for k, a in enumerate(answers):
        if len(a.text.strip()) < cfg.min_answer_chars:
            out.append(f"length: answer {k} has {len(a.text.strip())} characters < {cfg.min_answer_chars}")
            break
    longest = max((len(m.text) for m in conv.messages), default=0)
    if longest > cfg.max_turn_chars:
        out.append(f"length: a turn of {longest} characters > {cfg.max_turn_chars}")
    total = sum(len(m.text) for m in conv.messages)
    if total > cfg.max_total_chars:
        out.append(f"length: {total} characters in the sample > {cfg.max_total_chars}")
    if len(turns) > cfg.max_turns:
        out.append(f"length: {len(turns)} turns > {cfg.max_turns}")

    # images
    if n_images > cfg.max_images:
        out.append(f"image: {n_images} images > {cfg.max_images}")
    elif cfg.decode_images and images is not None:
        for i, data in enumerate(images):
            why = image_problem(data, cfg.min_image_side)
            if why:
                out.append(f"image: image {i} {why}")
                break
    if cfg.dangling_image_reference and n_images == 0:
        hit = next((m for m in users if _IMAGE_TALK.search(m.text)), None)
        if hit is not None:
            out.append(f"image: text-only sample refers to an image ({_IMAGE_TALK.search(hit.text).group(0)!r})")

    # answer present
    final = conv.last_answer_text().strip()
    if not final:
        out.append("answer: no final answer")
    elif _norm(final) in _PLACEHOLDERS or final.lower() in _PLACEHOLDERS:
        out.append(f"answer: placeholder {final[:20]!r}")
    elif cfg.refusals and any(_REFUSAL.match(a.text) for a in answers):
        out.append("answer: a refusal")

    # duplicated turns
    if cfg.duplicate_turns:
        qs = [_norm(q.text) for q in users]
        as_ = [_norm(a.text) for a in answers]
        dq = _first_repeat(qs)
        da = _first_repeat(as_) if len(as_) > 1 else None
        if dq is not None:
            out.append(f"duplicate_turn: user turns {dq[0]} and {dq[1]} are the same")
        elif da is not None and len(as_[da[0]]) > 20:
            out.append(f"duplicate_turn: answers {da[0]} and {da[1]} are the same")
        else:
            echo = next((k for k, (q, a) in enumerate(zip(qs, as_)) if q and q == a), None)
            if echo is not None:
                out.append(f"duplicate_turn: answer {echo} repeats its question")
    return out


def _first_repeat(items: list[str]) -> tuple[int, int] | None:
    seen: dict[str, int] = {}
    for i, x in enumerate(items):
        if not x:
            continue
        if x in seen:
            return seen[x], i
        seen[x] = i
    return None
