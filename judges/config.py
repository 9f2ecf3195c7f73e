"""Engine settings as validated data, and the factory that turns them into engines."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from stages.base import Params


class EngineConfig(Params):
    """Which model serves a judge, and how. ``model`` is a hub id or a local path."""

    kind: Literal["vllm", "openai", "hf"] = "vllm"
    model: str = Field(..., description="hub id or local path (openai: the served model name)")
    # vllm
    max_model_len: int = Field(4096, ge=128)
    tensor_parallel_size: int = Field(1, ge=1)
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1)
    kv_cache_memory_bytes: int | None = Field(
        None, ge=1, description="KV cache size in bytes instead of a gpu_memory_utilization share "
                                "(on CPU, VLLM_CPU_KVCACHE_SPACE in GiB wins when set)")
    dtype: str = "auto"
    enable_prefix_caching: bool = True
    max_images: int = Field(8, ge=1, description="images (or video frames) per prompt")
    enforce_eager: bool = Field(False, description="skip CUDA graphs / torch.compile: faster start, slower steady state")
    # openai-compatible servers
    base_url: str | None = Field(None, description="e.g. http://127.0.0.1:8000/v1")
    api_key_env: str | None = Field(None, description="name of the environment variable holding the key (never the key)")
    max_concurrency: int = Field(16, ge=1)
    timeout_s: float = Field(60, gt=0)
    max_retries: int = Field(5, ge=0)
    backoff_s: float = Field(0.5, ge=0, description="first retry delay; doubles per attempt, with jitter")
    max_backoff_s: float = Field(30, ge=0, description="cap on one retry delay (and on a server's Retry-After)")
    # transformers
    device: str = "auto"
    trust_remote_code: bool = False
    batch_size: int = Field(8, ge=1)


def make_engine(cfg: EngineConfig, seed: int = 0):
    """Build (not yet set up) the engine a config names."""
    if cfg.kind == "vllm":
        from judges.engines.vllm_engine import VLLMEngine

        extra: dict = {}
        if cfg.enforce_eager:
            extra["enforce_eager"] = True
        if cfg.kv_cache_memory_bytes:
            extra["kv_cache_memory_bytes"] = cfg.kv_cache_memory_bytes
        return VLLMEngine(cfg.model, max_model_len=cfg.max_model_len, tensor_parallel_size=cfg.tensor_parallel_size,
                          gpu_memory_utilization=cfg.gpu_memory_utilization, dtype=cfg.dtype,
                          enable_prefix_caching=cfg.enable_prefix_caching, max_images=cfg.max_images, seed=seed,
                          extra=extra or None)
    if cfg.kind == "openai":
        from judges.engines.openai_engine import OpenAIEngine

        if not cfg.base_url:
            raise ValueError("engine kind 'openai' needs 'base_url'")
        return OpenAIEngine(cfg.model, base_url=cfg.base_url, api_key_env=cfg.api_key_env,
                            max_concurrency=cfg.max_concurrency, timeout_s=cfg.timeout_s, max_retries=cfg.max_retries,
                            backoff_s=cfg.backoff_s, max_backoff_s=cfg.max_backoff_s)
    from judges.engines.hf_engine import HFEngine

    return HFEngine(cfg.model, device=cfg.device, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code,
                    batch_size=cfg.batch_size)
