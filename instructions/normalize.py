"""Read the common instruction-data formats into the message schema (``instructions.schema``).

Formats (``detect_format`` picks one per record from its keys):

- ``llava``: ``{"id", "image": "a.jpg" | [...], "conversations": [{"from": "human"|"gpt", "value":
  "<image>\\nQ"}, ...]}`` -- each ``<image>`` token is an image part, in order.
- ``sharegpt``: the same ``conversations`` list (``from``/``value`` or ``role``/``content``), images
  in ``images``, an optional top-level ``system`` prompt.
- ``openai``: ``{"messages": [{"role", "content": str | [parts]}], "images": [...]}``; parts are
  ``{"type": "text"}``, ``{"type": "image"}`` (optionally with ``"image"``/``"url"``/``"path"``),
  ``{"type": "image_url", "image_url": {"url"}}``. A string content may hold ``<image>`` tokens.
  The caption-to-QA exporter's output is this form.
- ``cauldron``: ``{"images": [...], "texts": [{"user", "assistant"}, ...]}``; the images go before
  the first user text.
- ``alpaca``: ``{"instruction", "input", "output"}`` (pure-text instruction data, or with images).
- ``qa``: ``{"question", "answer"}`` (+ ``options``/``choices``), optionally ``image``/``images``.

For ``alpaca`` and ``qa`` records without ``<image>`` tokens, the images go before the question.
Elsewhere the number of image tokens/parts must equal the number of images: a mismatch is an
error (``implicit_image_tokens`` puts token-less images before the first user turn instead).

Errors are :class:`NormalizeError` with a reason ``code: detail``: ``bad_format``,
``unknown_role``, ``unsupported_media``, ``image_token_mismatch``, ``empty_turn``, ``role_order``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from instructions.schema import Conversation, Message, Part, structure_problems

FORMATS = ("llava", "sharegpt", "openai", "cauldron", "alpaca", "qa")
IMAGE_TOKEN = "<image>"
_TOKEN_RE = re.compile(r"\n?<image>\n?")
_ROLE_MAP = {
    "human": "user", "user": "user", "question": "user",
    "gpt": "assistant", "assistant": "assistant", "bot": "assistant", "model": "assistant",
    "chatgpt": "assistant", "answer": "assistant",
    "system": "system",
}
_KEY_NAMES = ("id", "key", "uid", "sample_id", "question_id")


class NormalizeError(ValueError):
    """A record that cannot become a well-formed conversation; ``str(e)`` is the row's reason."""


ImageSource = str | bytes  # a path / URL / data URL, or encoded bytes (Parquet)


@dataclass
class Normalized:
    conversation: Conversation
    image_sources: list[ImageSource]   # what to load for each image, in image-part order
    key: str | None                    # the record's own id, when it has one
    format: str
    meta: dict[str, Any]


def detect_format(rec: dict[str, Any]) -> str:
    if "messages" in rec:
        return "openai"
    if "conversations" in rec:
        return "llava" if "image" in rec and "images" not in rec else "sharegpt"
    if "texts" in rec:
        return "cauldron"
    if "instruction" in rec and "output" in rec:
        return "alpaca"
    if "question" in rec and "answer" in rec:
        return "qa"
    raise NormalizeError("bad_format: no 'messages', 'conversations', 'texts', 'instruction'/'output' or "
                         f"'question'/'answer' field (fields: {', '.join(sorted(rec))[:200]})")


def normalize_record(rec: dict[str, Any], fmt: str = "auto", implicit_image_tokens: bool = False) -> Normalized:
    """One raw record -> a well-formed conversation, or NormalizeError naming the problem."""
    if not isinstance(rec, dict):
        raise NormalizeError(f"bad_format: a record is a JSON object, got {type(rec).__name__}")
    fmt = detect_format(rec) if fmt == "auto" else fmt
    if fmt not in FORMATS:
        raise NormalizeError(f"bad_format: unknown format {fmt!r}")
    reader = {"llava": _from_conversations, "sharegpt": _from_conversations, "openai": _from_openai,
              "cauldron": _from_cauldron, "alpaca": _from_alpaca, "qa": _from_qa}[fmt]
    messages, sources, used = reader(rec)
    if implicit_image_tokens and sources and not sum(m.image_count for m in messages):
        _prepend_images(messages, len(sources))
    conv = Conversation(messages, [_ref_name(s, i) for i, s in enumerate(sources)])
    problems = structure_problems(conv, len(sources))
    if problems:
        raise NormalizeError(problems[0] if len(problems) == 1 else "; ".join(problems[:3]))
    key = next((str(rec[k]) for k in _KEY_NAMES if rec.get(k) is not None), None)
    used = set(used) | set(_KEY_NAMES)
    meta = {k: v for k, v in rec.items() if k not in used and not isinstance(v, (bytes, bytearray))}
    return Normalized(conv, sources, key, fmt, meta)


# -- images ----------------------------------------------------------------------------------

def _image_list(rec: dict[str, Any]) -> list[ImageSource]:
    """The record's images from ``images`` (a list) or ``image`` (one or a list); Parquet gives
    bytes or ``{"bytes", "path"}`` structs."""
    raw = rec.get("images", rec.get("image"))
    if raw is None:
        return []
    items = raw if isinstance(raw, (list, tuple)) else [raw]
    out: list[ImageSource] = []
    for i, it in enumerate(items):
        if isinstance(it, dict):
            it = it.get("bytes") or it.get("path") or it.get("url")
        if isinstance(it, (bytes, bytearray)):
            out.append(bytes(it))
        elif isinstance(it, str) and it.strip():
            out.append(it.strip())
        else:
            raise NormalizeError(f"bad_format: image {i} is neither a path nor bytes ({type(it).__name__})")
    return out


def _ref_name(src: ImageSource, i: int) -> str:
    if isinstance(src, bytes):
        return f"inline:{i}"
    return src if not src.startswith("data:") else f"data-url:{i}"


def _prepend_images(messages: list[Message], n: int) -> None:
    first = next((m for m in messages if m.role == "user"), None)
    if first is not None:
        first.content[:0] = [Part("image") for _ in range(n)]


# -- text with <image> tokens ----------------------------------------------------------------

def _text_parts(text: Any) -> list[Part]:
    """``"<image>\\nWhat is it?"`` -> [image, text]; newlines around a token are layout, not text."""
    if text is None:
        return []
    if not isinstance(text, str):
        raise NormalizeError(f"bad_format: turn text is {type(text).__name__}, not a string")
    if "<video>" in text:
        raise NormalizeError("unsupported_media: <video> token (video samples belong to the video pipeline)")
    parts: list[Part] = []
    pieces = _TOKEN_RE.split(text)
    for k, piece in enumerate(pieces):
        if k:
            parts.append(Part("image"))
        if piece.strip():
            parts.append(Part("text", piece.strip()))
    return parts


def _role(raw: Any, i: int) -> str:
    role = _ROLE_MAP.get(str(raw).strip().lower()) if raw is not None else None
    if role is None:
        raise NormalizeError(f"unknown_role: turn {i} has role {raw!r}")
    return role


# -- readers: each returns (messages, image sources, record fields consumed) -----------------

def _from_conversations(rec):
    conv = rec["conversations"]
    if not isinstance(conv, list):
        raise NormalizeError("bad_format: 'conversations' is not a list")
    messages: list[Message] = []
    if isinstance(rec.get("system"), str) and rec["system"].strip():
        messages.append(Message("system", [Part("text", rec["system"].strip())]))
    for i, turn in enumerate(conv):
        if not isinstance(turn, dict):
            raise NormalizeError(f"bad_format: turn {i} is not an object")
        role = _role(turn.get("from", turn.get("role")), i)
        messages.append(Message(role, _text_parts(turn.get("value", turn.get("content")))))
    return messages, _image_list(rec), ("conversations", "image", "images", "system")


def _from_openai(rec):
    msgs = rec["messages"]
    if not isinstance(msgs, list):
        raise NormalizeError("bad_format: 'messages' is not a list")
    listed = _image_list(rec)
    inline: list[ImageSource] = []
    bare_image_parts = 0
    messages: list[Message] = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise NormalizeError(f"bad_format: message {i} is not an object")
        role = _role(m.get("role"), i)
        content = m.get("content")
        if isinstance(content, str) or content is None:
            parts = _text_parts(content)
            bare_image_parts += sum(p.type == "image" for p in parts)
        elif isinstance(content, list):
            parts = []
            for j, p in enumerate(content):
                if isinstance(p, str):
                    tp = _text_parts(p)
                    bare_image_parts += sum(x.type == "image" for x in tp)
                    parts.extend(tp)
                    continue
                if not isinstance(p, dict):
                    raise NormalizeError(f"bad_format: message {i} part {j} is not an object")
                kind = p.get("type")
                if kind == "text":
                    tp = _text_parts(p.get("text"))
                    bare_image_parts += sum(x.type == "image" for x in tp)
                    parts.extend(tp)
                elif kind in ("image", "image_url", "input_image"):
                    ref = p.get("image_url", p.get("image", p.get("url", p.get("path"))))
                    if isinstance(ref, dict):
                        ref = ref.get("url") or ref.get("path") or ref.get("bytes")
                    parts.append(Part("image"))
                    if ref:
                        inline.append(bytes(ref) if isinstance(ref, (bytes, bytearray)) else str(ref))
                    else:
                        bare_image_parts += 1
                elif kind in ("video", "video_url", "input_audio", "audio"):
                    raise NormalizeError(f"unsupported_media: {kind} part (message {i})")
                else:
                    raise NormalizeError(f"bad_format: message {i} part {j} has unknown type {kind!r}")
        else:
            raise NormalizeError(f"bad_format: message {i} content is {type(content).__name__}")
        loss = m.get("loss")
        messages.append(Message(role, parts, loss if isinstance(loss, bool) else None))
    if inline and (listed or bare_image_parts):
        raise NormalizeError("bad_format: image parts mix inline references with the 'images' list")
    return messages, inline or listed, ("messages", "image", "images")


def _from_cauldron(rec):
    texts = rec["texts"]
    if not isinstance(texts, list):
        raise NormalizeError("bad_format: 'texts' is not a list")
    messages: list[Message] = []
    for i, t in enumerate(texts):
        if not isinstance(t, dict):
            raise NormalizeError(f"bad_format: texts[{i}] is not an object")
        messages.append(Message("user", _text_parts(t.get("user"))))
        messages.append(Message("assistant", _text_parts(t.get("assistant"))))
    sources = _image_list(rec)
    if sources and not sum(m.image_count for m in messages):
        _prepend_images(messages, len(sources))
    return messages, sources, ("texts", "images", "image")


def _from_alpaca(rec):
    q = str(rec.get("instruction") or "").strip()
    extra = str(rec.get("input") or "").strip()
    question = f"{q}\n\n{extra}" if q and extra else (q or extra)
    return _single_turn(rec, question, rec.get("output"), ("instruction", "input", "output", "image", "images", "system"))


def _from_qa(rec):
    question = rec.get("question")
    options = rec.get("options", rec.get("choices"))
    if isinstance(question, str) and isinstance(options, list) and options:
        letters = "ABCDEFGH"
        lines = [f"{letters[i]}. {o}" for i, o in enumerate(options[:8])]
        question = question.rstrip() + "\n" + "\n".join(lines)
    answer = rec.get("answer")
    if answer is not None and not isinstance(answer, str):
        answer = str(answer)
    return _single_turn(rec, question, answer, ("question", "answer", "options", "choices", "image", "images", "system"))


def _single_turn(rec, question, answer, used):
    messages: list[Message] = []
    if isinstance(rec.get("system"), str) and rec["system"].strip():
        messages.append(Message("system", [Part("text", rec["system"].strip())]))
    user = _text_parts(question)
    sources = _image_list(rec)
    messages.append(Message("user", user))
    messages.append(Message("assistant", _text_parts(answer)))
    if sources and not sum(p.type == "image" for p in user):
        _prepend_images(messages, len(sources))
    return messages, sources, used
