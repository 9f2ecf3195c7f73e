"""Fixtures for the judge engines: tiny local models built once per session (nothing downloaded),
and one shared vLLM engine at a time (an engine binds CPU cores; two would fight over them)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """name -> folder of the tiny random models (tiny-qwen2, tiny-qwen2vl, tiny-clip)."""
    from judges.tiny_models import build_all

    return build_all(tmp_path_factory.mktemp("tiny_models"))


class VLLMEngines:
    """Keeps at most one live VLLMEngine: `get(path)` reuses it, or closes it and starts another.
    Group tests by model so each engine starts once per session."""

    def __init__(self) -> None:
        self.engine = None
        self.key = None
        self.starts = 0

    def get(self, model: str | Path, **kwargs):
        from judges.engines.vllm_engine import VLLMEngine

        kwargs.setdefault("max_model_len", 2048)
        kwargs.setdefault("extra", {"enforce_eager": True})  # skips ~20 s of torch.compile on CPU
        key = (str(model), repr(sorted(kwargs.items())))
        if self.key != key:
            self.close()
            engine = VLLMEngine(str(model), **kwargs)
            engine.setup()
            self.engine, self.key = engine, key
            self.starts += 1
        return self.engine

    def close(self) -> None:
        if self.engine is not None:
            engine, self.engine, self.key = self.engine, None, None
            engine.close()


@pytest.fixture(scope="module")
def vllm_engines():
    """Module-scoped: the engine is gone before the next module (e.g. a pipeline that starts its own)."""
    engines = VLLMEngines()
    yield engines
    engines.close()
