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

# KV cache of each tiny vLLM engine, in bytes. On the CPU backend vLLM otherwise sizes it from
# gpu_memory_utilization as a share of *host* RAM (0.3 of 24 GiB = 7 GiB per engine) and refuses to
# start when that much is not free. The tiny Qwen2 / Qwen2-VL models (judges/tiny_models.py) hold
# 2 layers x 2 KV heads x head_dim 64 x (K, V) x 2 bytes (bf16) = 1 KiB per token, so 128 MiB is
# 131,072 tokens: 32 sequences of the longest smoke max_model_len (4096). VLLM_CPU_KVCACHE_SPACE
# (GiB), when set, still wins: vLLM's CPU platform replaces kv_cache_memory_bytes with it.
SMOKE_KV_CACHE_BYTES = 128 * 1024 * 1024
_ENGINE_KEYS = ("engine", "verifier_engine")  # every engine block a stage may hold


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
        engines = [stage[k] for k in _ENGINE_KEYS if isinstance(stage.get(k), dict)]
        for engine in engines:
            text_only = "image_column" in stage and stage["image_column"] in (None, "", "null")
            engine["model"] = str(paths[TINY_QWEN2 if text_only else TINY_QWEN2VL])
            if engine.get("kind") == "openai":  # no server here: the same requests through the local engine
                engine["kind"] = "vllm"
                for key in ("base_url", "api_key_env"):
                    engine.pop(key, None)
            engine["max_model_len"] = min(int(engine.get("max_model_len", 4096)), 4096)
            engine["enforce_eager"] = True  # tiny models: start fast, nothing to gain from compilation
            if engine.get("kind", "vllm") == "vllm":  # sized for the tiny model, like max_model_len
                engine["kv_cache_memory_bytes"] = SMOKE_KV_CACHE_BYTES
            # Unused for the KV cache once its size is given; kept low for a GPU host.
            engine["gpu_memory_utilization"] = min(float(engine.get("gpu_memory_utilization", 0.85)), 0.3)
        if engines:
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
