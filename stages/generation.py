"""What the model-writing stages (recaption, caption_qa) share: an engine per actor and reasons.

Judging (``stages/judge.py``) stores scores; these stages store text a model wrote, so the same
engines and rubrics serve both. The engine comes from the stage's ``engine`` config in ``setup()``;
a test or benchmark that already holds a live engine passes it in instead (``setup(engine)``),
which avoids a second model start.
"""
from __future__ import annotations

from typing import Any

from judges.rubric import PARSE_PREFIX
from stages.base import Stage


class EngineStage(Stage):
    """A stateful stage whose ``params.engine`` names the model that writes its output."""

    stateful = True
    code_deps = ("judges",)

    def setup(self, engine: Any | None = None) -> None:
        from judges.config import make_engine

        self._owns_engine = engine is None
        self.engine = engine if engine is not None else make_engine(self.params.engine)
        self.engine.setup()
        self.load_rubrics()

    def load_rubrics(self) -> None:
        """Load the rubrics the stage uses (once per actor)."""

    def teardown(self) -> None:
        if getattr(self, "_owns_engine", False) and getattr(self, "engine", None) is not None:
            self.engine.close()
        self.engine = None


def restate(error: str, prefix: str) -> str:
    """A rubric parse error ("judge_parse: truncated JSON") in this stage's words
    ("qa_parse: truncated JSON"), so manifests group reasons by the stage that decided them."""
    if error.startswith(PARSE_PREFIX):
        return f"{prefix}_parse: {error[len(PARSE_PREFIX):]}"
    return f"{prefix}_engine: {error}"
