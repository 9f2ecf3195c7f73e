"""One interface over every model engine: a batch of requests in, a batch of results out.

Engines know nothing about rubrics or rows: they turn chat requests (system
text, user content with images or video frames, an optional JSON schema,
sampling settings) into text. Parsing and scoring live in the rubric layer,
so every engine is judged by the same strict parser.
"""
from __future__ import annotations

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
