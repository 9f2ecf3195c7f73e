"""Smoke runs: a real config, every model swapped for a tiny local random one, few rows.

``sailcurate run CONFIG --smoke [--limit N]`` checks a cluster config end to
end on a laptop: the same stages, engines and code paths, on tiny models built
locally on first use (no download) and at most N input rows per ingest stage.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def tiny_model_cache() -> Path:
    root = os.environ.get("SAILCURATE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "sailcurate")
    return Path(root) / "tiny-models"


# Model stages whose answers a random tiny model would give as one constant when greedy.
_SAMPLED_IN_SMOKE = {"judge", "instruction_validate", "category_phrase"}


def reads_source(kind) -> bool:
    """True for source stage kinds (ingest, instruction_ingest, video_ingest...) that take a ``limit``."""
    from stages.registry import stage_kinds

    cls = stage_kinds().get(kind)
    return cls is not None and cls.mode == "source" and "limit" in cls.Params.model_fields


def apply_smoke(raw: dict[str, Any], limit: int | None, cache: Path | None = None) -> dict[str, Any]:
    """Rewrite a raw pipeline dict in place: tiny models everywhere, ingest limited to ``limit`` rows."""
    from judges.tiny_models import TINY_CLIP, TINY_CLIP_MODEL_NAME, TINY_QWEN2, TINY_QWEN2VL, build_all

    paths = build_all(cache or tiny_model_cache())
    for stage in raw.get("stages") or []:
        if not isinstance(stage, dict):
            continue
        kind = stage.get("kind")
        if limit is not None and reads_source(kind):
            stage["limit"] = limit
        engine = stage.get("engine")
        if isinstance(engine, dict):
            text_only = "image_column" in stage and stage["image_column"] in (None, "", "null")
            engine["model"] = str(paths[TINY_QWEN2 if text_only else TINY_QWEN2VL])
            if engine.get("kind") == "openai":  # no server here: the same requests through the local engine
                engine["kind"] = "vllm"
                for key in ("base_url", "api_key_env"):
                    engine.pop(key, None)
            engine["max_model_len"] = min(int(engine.get("max_model_len", 4096)), 4096)
            engine["enforce_eager"] = True  # tiny models: start fast, nothing to gain from compilation
            # On the CPU backend this is the share of host memory vLLM insists is free at start.
            engine["gpu_memory_utilization"] = min(float(engine.get("gpu_memory_utilization", 0.85)), 0.3)
            res = stage.setdefault("resources", {})
            res["num_gpus"] = 0
            if kind in _SAMPLED_IN_SMOKE:
                # A random model answers greedily with one constant; sampling (seeded, so still
                # reproducible) spreads its answers so every later stage sees both outcomes.
                stage["temperature"] = 1.0
        if kind == "clip_score":
            clip = stage.setdefault("clip", {})
            clip.update({"model": TINY_CLIP_MODEL_NAME, "config_dir": str(paths[TINY_CLIP]),
                         "pretrained": str(paths[TINY_CLIP] / "open_clip_model.safetensors")})
            stage.setdefault("resources", {})["num_gpus"] = 0
    return raw
