"""One message schema for every instruction sample: roles, content parts, several images.

A sample is a list of messages (``system`` / ``user`` / ``assistant``), each with content parts:
``{"type": "text", "text": ...}`` or ``{"type": "image"}``. The k-th image part, counting across
the whole conversation, shows the sample's k-th image. This is the OpenAI / Hugging Face chat
form, and exactly what the caption-to-QA exporter writes::

    {"id": ..., "source": ..., "images": ["images/<id>.jpg"],
     "messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q"}]},
                  {"role": "assistant", "content": [{"type": "text", "text": "A"}]}],
     "meta": {...}}

so a sample read from that form and written back with :meth:`Conversation.to_record` is the same
record. A message may carry ``"loss": true/false`` (the think-fusion split marks which turns the
trainer learns from); it is omitted when unset.

Structural problems a sample must not have (:func:`structure_problems`): no turns, empty turns,
system messages after the first turn, turns that do not alternate user/assistant starting with the
user and ending with the assistant, and image parts that do not match the images one to one.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

import pyarrow as pa

ROLES = ("system", "user", "assistant")
PartType = Literal["text", "image"]

# Arrow type of the per-sample image list (encoded bytes, in image-part order); a media type, so
# manifests never copy it (stages.base.is_media_type).
IMAGES_TYPE = pa.list_(pa.binary())


class SchemaError(ValueError):
    """A record that does not follow the message schema; the message says where."""


@dataclass(frozen=True)
class Part:
    type: PartType
    text: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"type": "image"} if self.type == "image" else {"type": "text", "text": self.text or ""}


@dataclass
class Message:
    role: str
    content: list[Part]
    loss: bool | None = None

    @property
    def text(self) -> str:
        """The message's text parts joined by newlines (image parts left out)."""
        return "\n".join(p.text for p in self.content if p.type == "text" and p.text)

    @property
    def image_count(self) -> int:
        return sum(1 for p in self.content if p.type == "image")

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"role": self.role, "content": [p.to_dict() for p in self.content]}
        if self.loss is not None:
            d["loss"] = self.loss
        return d


@dataclass
class Conversation:
    """Messages plus the references (paths, keys) of the images their image parts show, in order."""

    messages: list[Message]
    images: list[str] = field(default_factory=list)

    # -- views ---------------------------------------------------------------------------------
    @property
    def turns(self) -> list[Message]:
        """The user and assistant messages, in order (system messages left out)."""
        return [m for m in self.messages if m.role != "system"]

    @property
    def image_parts(self) -> int:
        return sum(m.image_count for m in self.messages)

    def first_user_text(self) -> str:
        return next((m.text for m in self.messages if m.role == "user"), "")

    def first_answer_text(self) -> str:
        """The assistant's reply to the first user turn."""
        turns = self.turns
        return turns[1].text if len(turns) > 1 and turns[1].role == "assistant" else ""

    def last_answer_text(self) -> str:
        return next((m.text for m in reversed(self.messages) if m.role == "assistant"), "")

    def context_and_answer(self) -> tuple[str, str]:
        """(everything before the final assistant turn as a transcript, the final answer): what a
        judge reads for a multi-turn sample. A single-turn sample gives (question, answer)."""
        turns = self.turns
        if len(turns) == 2:
            return turns[0].text, turns[1].text
        head = [m for m in self.messages if m.role != "system"][:-1]
        return transcript(head), self.last_answer_text()

    def transcript(self) -> str:
        return transcript(self.messages)

    # -- (de)serialisation ---------------------------------------------------------------------
    def messages_json(self) -> str:
        return json.dumps([m.to_dict() for m in self.messages], ensure_ascii=False)

    def to_record(self, sample_id: str, source: str, meta: dict[str, Any] | None = None) -> dict[str, Any]:
        """The caption-to-QA / OpenAI-messages record form (see the module docstring)."""
        return {"id": sample_id, "source": source, "images": list(self.images),
                "messages": [m.to_dict() for m in self.messages], "meta": dict(meta or {})}

    @classmethod
    def from_messages(cls, messages: Any, images: list[str] | None = None) -> "Conversation":
        """Strict reader of the canonical form (a list of message dicts, or its JSON text)."""
        if isinstance(messages, str):
            try:
                messages = json.loads(messages)
            except ValueError as e:
                raise SchemaError(f"messages are not JSON: {e}") from None
        if not isinstance(messages, list):
            raise SchemaError(f"messages must be a list, got {type(messages).__name__}")
        out = []
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise SchemaError(f"message {i}: needs 'role' and 'content'")
            if m["role"] not in ROLES:
                raise SchemaError(f"message {i}: unknown role {m['role']!r}")
            parts = []
            for j, p in enumerate(m["content"] if isinstance(m["content"], list) else []):
                if not isinstance(p, dict) or p.get("type") not in ("text", "image"):
                    raise SchemaError(f"message {i} part {j}: type must be 'text' or 'image'")
                parts.append(Part("image") if p["type"] == "image" else Part("text", str(p.get("text") or "")))
            if isinstance(m["content"], str):
                parts = [Part("text", m["content"])]
            loss = m.get("loss")
            out.append(Message(m["role"], parts, loss if isinstance(loss, bool) else None))
        return cls(out, list(images or []))


def transcript(messages: list[Message]) -> str:
    """``role: text`` lines, one block per message, images shown as ``<image>``: the plain text
    form used for near-duplicate detection and for judges that read a whole conversation."""
    blocks = []
    for m in messages:
        body = "".join("<image>\n" if p.type == "image" else (p.text or "") for p in m.content).strip()
        blocks.append(f"{m.role}: {body}")
    return "\n".join(blocks)


def structure_problems(conv: Conversation, n_images: int | None = None) -> list[str]:
    """Structural errors, each ``code: detail`` (empty when the sample is well formed).

    ``n_images``: how many images the sample carries (default: its references)."""
    problems: list[str] = []
    n_images = len(conv.images) if n_images is None else n_images
    if conv.image_parts != n_images:
        problems.append(f"image_token_mismatch: {conv.image_parts} image reference(s) in the text, "
                        f"{n_images} image(s)")
    turns = conv.turns
    if not turns:
        problems.append("role_order: no user or assistant turn")
        return problems
    seen_turn = False
    for i, m in enumerate(conv.messages):
        if m.role == "system":
            if seen_turn:
                problems.append(f"role_order: system message at position {i} after the conversation started")
            continue
        seen_turn = True
        if not m.text.strip() and not (m.role == "user" and m.image_count):
            problems.append(f"empty_turn: message {i} ({m.role}) has no text")
    for k, m in enumerate(turns):
        want = "user" if k % 2 == 0 else "assistant"
        if m.role != want:
            problems.append("role_order: the first turn is an assistant turn" if k == 0 else
                            f"role_order: turn {k} is {m.role} after {turns[k - 1].role} (turns must alternate user, assistant)")
            break
    else:
        if turns[-1].role != "assistant":
            problems.append("role_order: the last turn is a user turn with no answer")
    for m in conv.messages:
        if m.role == "assistant" and m.image_count:
            problems.append("role_order: an assistant turn holds an image")
            break
    return problems
