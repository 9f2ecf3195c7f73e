"""One interface over every model engine: a batch of requests in, a batch of results out.

Engines know nothing about rubrics or rows: they turn chat requests (system
text, user content with images or video frames, an optional JSON schema,
sampling settings) into text. Parsing and scoring live in the rubric layer,
so every engine is judged by the same strict parser.
"""
from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class Sampling:
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = 0


@dataclass(frozen=True)
class JudgeRequest:
    """A chat request. Order matters for prefix caching: system (rubric) text first, then the
    images, then the sample's own text, so requests on the same rubric share a prefix."""

    system: str
    user_text: str
    images: tuple[bytes, ...] = ()          # encoded image bytes (JPEG/PNG), or sampled video frames
    json_schema: dict[str, Any] | None = None
    sampling: Sampling = field(default_factory=Sampling)


@dataclass
class JudgeResult:
    text: str | None                         # the model's raw answer (None when the call failed)
    error: str | None = None                 # transport / engine failure after retries, else None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0


class Engine(Protocol):
    def setup(self) -> None:
        """Load the model / open connections; once per actor."""

    def generate(self, requests: list[JudgeRequest]) -> list[JudgeResult]:
        """One result per request, in order. Raises only for failures of the whole batch
        (e.g. out of memory), which the judge stage retries with smaller batches."""

    def close(self) -> None:
        """Release the model or connections."""


class ModelNotFound(RuntimeError):
    """A model name that is neither a local path nor a reachable hub id; the message says how to fix it."""


def image_mime(data: bytes) -> str:
    """The MIME type of encoded image bytes, by their magic number (JPEG when unknown)."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:2] == b"BM":
        return "image/bmp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "image/tiff"
    return "image/jpeg"


def image_data_url(data: bytes) -> str:
    """`data:<mime>;base64,...` for encoded image bytes."""
    return f"data:{image_mime(data)};base64,{base64.b64encode(data).decode('ascii')}"


def chat_messages(req: JudgeRequest) -> list[dict[str, Any]]:
    """OpenAI-style messages, shared prefix first: system text; user = images (data URLs), then the text."""
    messages: list[dict[str, Any]] = []
    if req.system:
        messages.append({"role": "system", "content": req.system})
    content: list[dict[str, Any]] = [
        {"type": "image_url", "image_url": {"url": image_data_url(img)}} for img in req.images
    ]
    content.append({"type": "text", "text": req.user_text})
    messages.append({"role": "user", "content": content})
    return messages


def release_accelerator_memory() -> None:
    """After an engine is dropped: collect it and return cached GPU memory (best effort)."""
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # pragma: no cover - best effort
        pass
